"""A sweep file and the runs it describes: the schema (SweepConfig), the expansion of grid x named
variants x seeds into runs, and the run config of each (the base config with its overrides).
The sweep file's keys are described in sweep.py."""
import difflib
import itertools
import re
from pathlib import Path
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from harness.config import ConfigError, apply_override, load_with_bases, load_config
from helpers.names import validation_error_line


class Variant(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    set: dict[str, Any] = Field(default_factory=dict)
    reference: Optional[str] = None  # the variant this one is read against (default: the sweep's)

    @field_validator("name")
    @classmethod
    def _folder_safe(cls, value):
        # The name is the results folder and the table label, and must be both unchanged.
        if not re.fullmatch(r"[A-Za-z0-9_.,=+-]+", value) or "__" in value:
            raise ValueError("a variant name may hold only letters, digits and _ . , = + - (no '__', which "
                             "separates swept keys), so that it names its folder exactly")
        return value


class SlurmSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    partition: Optional[str] = None
    gpus_per_node: int = 0
    cpus_per_task: int = 8
    mem_gb: int = 64
    timeout_min: int = 24 * 60
    array_parallelism: int = 16
    additional_parameters: dict[str, Any] = Field(default_factory=dict)


class SweepConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Optional[str] = None
    base: str
    set: dict[str, Any] = Field(default_factory=dict)
    grid: dict[str, list[Any]] = Field(default_factory=dict)
    variants: list[Variant] = Field(default_factory=list)
    seeds: Optional[list[int]] = None
    reference: Optional[str] = None
    launcher: Literal["local", "slurm"] = "local"
    slurm: SlurmSettings = Field(default_factory=SlurmSettings)


def value_label(value) -> str:
    """A swept value as text, in full: a results table must never shorten `DBF.DBF_conv9.lrelu_dup1`
    or `w4_start_end_kd0.1`. A mapping is named by its keys (its values are in the variant's config.yaml)."""
    if isinstance(value, list):
        return ",".join(value_label(v) for v in value)
    if isinstance(value, dict):
        return "+".join(f"{k}" for k in value)
    return str(value)


def _variant_name(named: Optional[Variant], point: dict) -> str:
    # Swept values may hold characters a folder name cannot (a path's '/'): those become '-' in the
    # name; the value columns of the summary keep the full text.
    parts = [re.sub(r"[^A-Za-z0-9_.,=+-]", "-", f"{key.rsplit('.', 1)[-1]}={value_label(value)}")
             for key, value in point.items()]
    return "__".join(([named.name] if named else []) + parts) or "base"


def expand(sweep: SweepConfig) -> list[dict]:
    """Every variant: its name, the overrides it applies, the values of the swept keys, its reference."""
    keys = list(sweep.grid)
    points = [dict(zip(keys, values)) for values in itertools.product(*(sweep.grid[k] for k in keys))] or [{}]
    named = sweep.variants or [None]
    variants = []
    for variant in named:
        for point in points:
            overrides = {**sweep.set, **(variant.set if variant else {}), **point}
            reference = (variant.reference if variant else None) or sweep.reference
            variants.append({"name": _variant_name(variant, point), "overrides": overrides,
                             "named": variant.name if variant else None, "swept": point, "reference": reference})
    names = [v["name"] for v in variants]
    if len(set(names)) != len(names):
        raise ConfigError(f"sweep: variants share a name ({names}); give named variants distinct names")
    for variant in variants:
        wanted = variant["reference"]
        if wanted is not None and wanted not in names:
            close = difflib.get_close_matches(wanted, names, n=3, cutoff=0.3)
            raise ConfigError(f"sweep: reference {wanted!r} is not a variant of this sweep; "
                              f"{'did you mean ' + ', '.join(close) if close else 'variants: ' + ', '.join(names)}")
        if wanted == variant["name"]:
            variant["reference"] = None  # the reference is not compared with itself
    return variants


def expand_runs(sweep: SweepConfig, variants: list[dict]) -> list[dict]:
    """One run per variant, or per variant and seed: {variant, seed, name (its folder), overrides}."""
    if not sweep.seeds:
        return [{"variant": v["name"], "seed": None, "name": v["name"], "overrides": v["overrides"]} for v in variants]
    if len(set(sweep.seeds)) != len(sweep.seeds):
        raise ConfigError(f"sweep: seeds {sweep.seeds} repeat a seed; list each seed once")
    return [{"variant": v["name"], "seed": seed, "name": f"{v['name']}__seed={seed}",
             "overrides": {**v["overrides"], "seed": seed}} for v in variants for seed in sweep.seeds]


def load_sweep(path, overrides=()) -> SweepConfig:
    raw = load_with_bases(Path(path))
    for assignment in overrides:
        apply_override(raw, assignment)
    try:
        sweep = SweepConfig.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(f"{path}: {validation_error_line(error, SweepConfig, noun='sweep key', show_input=False)}") from None
    sweep.name = sweep.name or Path(path).stem
    return sweep


def _flatten(overrides: dict, prefix: str = "") -> list[tuple[str, Any]]:
    """Nested mappings become dotted keys, so `quant_scheme: {weight: {bits: 4}}` changes one key
    rather than replacing the section; a special_layer mapping is one value (it is replaced whole)."""
    pairs = []
    for key, value in overrides.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value and not dotted.endswith("special_layer"):
            pairs += _flatten(value, dotted + ".")
        else:
            pairs.append((dotted, value))
    return pairs


def variant_config(sweep: SweepConfig, run: dict, results_dir: Path):
    """The run config of one variant (or variant and seed): `run` is an entry of expand / expand_runs."""
    assignments = _flatten(run["overrides"])
    # Weights (<sweep>/<variant>.pth) and ONNX exports (into the variant's folder) stay with the sweep:
    # variants of different sweeps share names, and one run never replaces another's weights.
    assignments += [("output.results_dir", str(results_dir)), ("output.experiment", run["name"]),
                    ("output.artifacts_dir", str(results_dir))]
    try:
        return load_config(sweep.base, assignments)
    except ConfigError as error:
        raise ConfigError(f"sweep variant {run['name']}: {error}") from None
