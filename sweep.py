"""Ablation sweeps: one base run config, a grid over any keys, one results folder per variant.

    python sweep.py --config configfile/sweep_distill_coeff.yaml [--launcher local|slurm] [--set k=v ...]

A sweep file holds:
    base: configfile/seed_aba.yaml      # the run config every variant starts from
    set: {schedule.epochs: 4}           # overrides common to all variants (dotted keys)
    grid: {distill_coeff: [0, 0.1, 0.5]}   # every combination of these values is a variant
    variants:                           # optional named variants, each crossed with the grid
      - {name: end, set: {distill_config: [...], distill_coeff: 0.1}}
    launcher: local                     # or slurm (each variant a job of a Slurm array, via submitit)
    slurm: {partition: gpu, gpus_per_node: 1, timeout_min: 1440}

Variants land in results/<sweep>/<variant>/. A finished variant (its summary.json exists) is skipped
on re-run, and an interrupted one resumes from its latest checkpoint, so a killed sweep picks up
where it stopped. The sweep ends with summary.csv, summary.md and PNG plots in results/<sweep>/.
"""
import argparse
import io
import itertools
import json
import math
import re
import sys
from pathlib import Path
from typing import Any, Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from core import slurm
from core.config import ConfigError, apply_override, load_with_bases, load_config
from core.files import read_csv, write_bytes_atomic, write_csv_atomic, write_text_atomic
from core.names import validation_error_line
from core.records import format_table
from core.runner import run_entry_point


class Variant(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    set: dict[str, Any] = Field(default_factory=dict)


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
    launcher: Literal["local", "slurm"] = "local"
    slurm: SlurmSettings = Field(default_factory=SlurmSettings)


def _label(value) -> str:
    if isinstance(value, list):
        return ",".join(_label(v) for v in value)
    if isinstance(value, dict):
        return "+".join(f"{k}" for k in value)
    text = str(value)
    return text.rsplit(".", 1)[-1] if "." in text and not re.fullmatch(r"[\d.e+-]+", text) else text


def _variant_name(named: Optional[Variant], point: dict) -> str:
    parts = [named.name] if named else []
    parts += [f"{key.rsplit('.', 1)[-1]}={_label(value)}" for key, value in point.items()]
    name = "__".join(parts) or "base"
    return re.sub(r"[^A-Za-z0-9_.,=+-]", "-", name)


def expand(sweep: SweepConfig) -> list[dict]:
    """Every variant: its name, the overrides it applies, and the values of the swept keys."""
    keys = list(sweep.grid)
    points = [dict(zip(keys, values)) for values in itertools.product(*(sweep.grid[k] for k in keys))] or [{}]
    named = sweep.variants or [None]
    variants = []
    for variant in named:
        for point in points:
            overrides = {**sweep.set, **(variant.set if variant else {}), **point}
            variants.append({"name": _variant_name(variant, point), "overrides": overrides,
                             "swept": {**({"variant": variant.name} if variant else {}), **point}})
    names = [v["name"] for v in variants]
    if len(set(names)) != len(names):
        raise ConfigError(f"sweep: variants share a name ({names}); give named variants distinct names")
    return variants


def load_sweep(path, overrides=()) -> SweepConfig:
    raw = load_with_bases(Path(path))
    for assignment in overrides:
        apply_override(raw, assignment)
    try:
        sweep = SweepConfig.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(f"{path}: sweep {validation_error_line(error, SweepConfig)}") from None
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


def variant_config(sweep: SweepConfig, variant: dict, results_dir: Path):
    assignments = _flatten(variant["overrides"])
    assignments += [("output.results_dir", str(results_dir)), ("output.experiment", variant["name"])]
    try:
        return load_config(sweep.base, assignments)
    except ConfigError as error:
        raise ConfigError(f"sweep variant {variant['name']}: {error}") from None


def run_variant(config) -> dict:
    """Train one variant: skip it when finished, resume it when interrupted."""
    import train
    summary_path = config.run_dir / "summary.json"
    if summary_path.exists():
        print(f"variant {config.experiment}: finished earlier, skipped")
        return json.loads(summary_path.read_text())
    resume = any((config.run_dir / "checkpoints").glob("latest_epoch*.pth"))
    return train.run(config, resume=resume, overwrite=not resume)


def summarise(sweep: SweepConfig, variants: list[dict], results_dir: Path) -> list[dict]:
    rows = []
    for variant in variants:
        run_dir = results_dir / variant["name"]
        summary_path = run_dir / "summary.json"
        if not summary_path.exists():
            continue
        summary = json.loads(summary_path.read_text())
        row = {"variant": variant["name"], **{k: _label(v) for k, v in variant["swept"].items()},
               "best_val_psnr": summary.get("best_val_psnr"), "best_epoch": summary.get("best_epoch"),
               "test_psnr": summary.get("test_psnr"), "test_ssim": summary.get("test_ssim"),
               "ssim_variant": summary.get("test_ssim_variant")}
        rows.append(row)
    rows.sort(key=lambda r: -(r["best_val_psnr"] if r["best_val_psnr"] is not None else -math.inf))
    columns = list(dict.fromkeys(k for r in rows for k in r))
    write_csv_atomic(results_dir / "summary.csv", rows, columns)
    markdown = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        markdown.append("| " + " | ".join(f"{v:.4f}" if isinstance(v, float) else str(v) for v in
                                          (row.get(c, "") for c in columns)) + " |")
    write_text_atomic(results_dir / "summary.md",
                      f"# Sweep {sweep.name}\n\nBase: `{sweep.base}`; sorted by best validation PSNR; "
                      f"SSIM variant: {rows[0]['ssim_variant'] if rows else '-'}.\n\n" + "\n".join(markdown) + "\n")
    _plot(sweep, variants, rows, results_dir)
    return rows


def _plot(sweep, variants, rows, results_dir: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")  # no display: plots only go to files
    import matplotlib.pyplot as plt

    def save(figure, name):
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
        plt.close(figure)
        write_bytes_atomic(results_dir / name, buffer.getvalue())

    ordered = sorted(rows, key=lambda r: r["variant"])
    figure, axis = plt.subplots(figsize=(max(5, 0.9 * len(ordered) + 2), 3.5))
    keys = list(sweep.grid)
    numeric = (len(keys) == 1 and not sweep.variants
               and all(isinstance(v["swept"].get(keys[0]), (int, float)) for v in variants))
    if numeric:
        points = sorted((float(next(v for v in variants if v["name"] == r["variant"])["swept"][keys[0]]),
                         r["best_val_psnr"]) for r in ordered)
        axis.plot([p[0] for p in points], [p[1] for p in points], "o-")
        axis.set_xlabel(keys[0])
    else:
        axis.bar(range(len(ordered)), [r["best_val_psnr"] for r in ordered])
        axis.set_xticks(range(len(ordered)), [r["variant"] for r in ordered], rotation=30, ha="right", fontsize=8)
    axis.set_ylabel("best validation PSNR (dB)")
    axis.set_title(f"sweep {sweep.name}")
    save(figure, "best_psnr.png")

    figure, axis = plt.subplots(figsize=(6, 4))
    for row in ordered:
        history = [r for r in read_csv(results_dir / row["variant"] / "metrics.csv") if r.get("psnr") not in ("", "nan")]
        axis.plot([int(r["epoch"]) for r in history], [float(r["psnr"]) for r in history], marker=".",
                  label=row["variant"])
    axis.set_xlabel("epoch")
    axis.set_ylabel("validation PSNR (dB)")
    axis.legend(fontsize=7)
    save(figure, "psnr_curves.png")


def run_sweep(sweep: SweepConfig, launcher: Optional[str] = None, executor=None) -> list[dict]:
    variants = expand(sweep)
    configs = [variant_config(sweep, v, Path("results") / sweep.name) for v in variants]  # every error up front
    results_dir = configs[0].run_dir.parent
    results_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(results_dir / "sweep.yaml", yaml.safe_dump(sweep.model_dump(), sort_keys=False))
    print(f"sweep {sweep.name}: {len(variants)} variant(s) -> {results_dir}")
    launcher = launcher or sweep.launcher
    failed = []
    if launcher == "local" and executor is None:
        for index, config in enumerate(configs, start=1):
            print(f"=== variant {index}/{len(configs)}: {config.experiment}")
            run_variant(config)
    else:
        executor = executor or _slurm_executor(sweep, results_dir)
        failed = slurm.run_jobs(executor, run_variant, configs, results_dir)  # waits on all; never submits twice
    rows = summarise(sweep, variants, results_dir)
    columns = [c for c in ("variant", *sweep.grid, "best_val_psnr", "best_epoch", "test_psnr", "test_ssim")
               if any(c in r for r in rows)]
    print(format_table(rows, columns))
    print(f"sweep summary: {results_dir / 'summary.md'} (plots: best_psnr.png, psnr_curves.png)")
    slurm.raise_if_failed(failed)
    return rows


def _slurm_executor(sweep: SweepConfig, results_dir: Path):
    return slurm.make_executor(sweep.slurm, results_dir / "slurm_logs", f"sweep-{sweep.name}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="sweep YAML (see configfile/sweep_*.yaml)")
    parser.add_argument("--launcher", choices=["local", "slurm"], help="override the sweep file's launcher")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a sweep key, e.g. --set set.schedule.epochs=2")
    args = parser.parse_args(argv)
    sweep = load_sweep(args.config, args.set)
    return run_sweep(sweep, args.launcher)


if __name__ == "__main__":
    sys.exit(run_entry_point(main, sys.argv[1:]))
