"""Ablation sweeps: one base run config, a grid over any keys, one results folder per variant.

    python sweep.py --config configfile/sweep_distill_coeff.yaml [--launcher local|slurm] [--set k=v ...]

A sweep file holds:
    base: configfile/seed_aba.yaml      # the run config every variant starts from
    set: {schedule.epochs: 4}           # overrides common to all variants (dotted keys)
    grid: {distill_coeff: [0, 0.1, 0.5]}   # every combination of these values is a variant
    variants:                           # optional named variants, each crossed with the grid
      - {name: end, set: {distill_config: [...], distill_coeff: 0.1}}
    seeds: [0, 1, 2]                    # optional: every variant once per seed (sets the run's `seed`)
    reference: end                      # optional: every variant's difference to this one, with a 95% CI
    launcher: local                     # or slurm (each variant a job of a Slurm array, via submitit)
    slurm: {partition: gpu, gpus_per_node: 1, timeout_min: 1440}

A named variant may carry its own `reference:` (e.g. distillation read against the same
quantization without it). Variants land in results/<sweep>/<variant>/, or with seeds in
results/<sweep>/<variant>__seed=<k>/. A finished run (its summary.json exists) is skipped on
re-run, and an interrupted one resumes from its latest checkpoint, so a killed sweep picks up where
it stopped. The sweep ends with summary.csv, summary.md and figures in results/<sweep>/: per
variant the mean +- std over seeds of validation and test PSNR/SSIM, test PSNR per exposure ratio,
and the difference to the reference with its confidence interval (the statistic is described in
core/sweep_summary.py) and whether that interval excludes 0.
"""
import argparse
import difflib
import itertools
import json
import math
import re
import sys
from pathlib import Path
from typing import Any, Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from core import slurm
from core.config import ConfigError, apply_override, load_with_bases, load_config
from core.files import write_csv_atomic, write_text_atomic
from core.names import validation_error_line
from core.ratios import group_columns
from core.records import format_table
from core.runner import run_entry_point
from core.sweep_plots import SWEEP_FIGURES, plot_sweep
from core.sweep_summary import distinguishable, paired_difference, read_run, variant_row
from quant.cost import sweep_cost_columns


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


def _label(value) -> str:
    """A swept value as text, in full: a results table must never shorten `DBF.DBF_conv9.lrelu_dup1`
    or `w4_start_end_kd0.1`. A mapping is named by its keys (its values are in the variant's config.yaml)."""
    if isinstance(value, list):
        return ",".join(_label(v) for v in value)
    if isinstance(value, dict):
        return "+".join(f"{k}" for k in value)
    return str(value)


def _variant_name(named: Optional[Variant], point: dict) -> str:
    # Swept values may hold characters a folder name cannot (a path's '/'): those become '-' in the
    # name; the value columns of the summary keep the full text.
    parts = [re.sub(r"[^A-Za-z0-9_.,=+-]", "-", f"{key.rsplit('.', 1)[-1]}={_label(value)}")
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
    """One row per variant with at least one finished run; writes summary.csv, summary.md and figures."""
    finished = {}  # variant name -> {seed: run results}
    for run in expand_runs(sweep, variants):
        if (results_dir / run["name"] / "summary.json").exists():
            finished.setdefault(run["variant"], {})[run["seed"]] = read_run(results_dir / run["name"])
    rows = []
    for variant in variants:
        if variant["name"] not in finished:
            continue
        row = {"variant": variant["name"],
               **({"named_variant": variant["named"]} if sweep.variants and sweep.grid else {}),
               **{key: _label(value) for key, value in variant["swept"].items()},
               **variant_row(finished[variant["name"]])}
        reference = variant["reference"]
        if reference in finished:
            row["reference"] = reference
            for metric in ("psnr", "ssim"):
                difference = paired_difference(
                    {seed: run["test_images"] for seed, run in finished[variant["name"]].items()},
                    {seed: run["test_images"] for seed, run in finished[reference].items()}, metric)
                row[f"d_test_{metric}"] = difference["difference"]
                row[f"d_test_{metric}_ci_low"] = difference["ci_low"]
                row[f"d_test_{metric}_ci_high"] = difference["ci_high"]
                row[f"d_test_{metric}_distinguishable"] = distinguishable(difference)
            row["ci_over"] = difference["ci_over"]
        first_run = next(iter(finished[variant["name"]].values()))
        row.update(sweep_cost_columns(first_run["summary"], first_run["folder"]))  # bits, BOPs (quant/cost.py)
        rows.append(row)
    rows.sort(key=lambda r: -(r["best_val_psnr"] if r.get("best_val_psnr") is not None else -math.inf))
    write_csv_atomic(results_dir / "summary.csv", rows, _ordered_columns(rows))
    write_text_atomic(results_dir / "summary.md", _markdown(sweep, rows))
    plot_sweep(sweep, variants, rows, finished, results_dir)
    return rows


def _ordered_columns(rows: list[dict]) -> list[str]:
    present = list(dict.fromkeys(k for r in rows for k in r))
    tail = [c for c in present if c.startswith(("reference", "d_test_", "ci_over"))] + \
           [c for c in ("best_epoch", "metric_precision", "ssim_variant") if c in present]
    return [c for c in present if c not in tail] + tail


def _plus_minus(row, key, digits=2) -> str:
    mean, spread = row.get(key), row.get(f"{key}_std")
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "-"
    if spread is None or math.isnan(spread):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {spread:.{digits}f}"


def _difference_text(row, metric="psnr", digits=3) -> str:
    if f"d_test_{metric}" not in row or math.isnan(row[f"d_test_{metric}"]):
        return ""
    low, high = row[f"d_test_{metric}_ci_low"], row[f"d_test_{metric}_ci_high"]
    interval = "" if math.isnan(low) else f" [{low:+.{digits}f}, {high:+.{digits}f}]"
    return f"{row[f'd_test_{metric}']:+.{digits}f}{interval}"


def display_rows(rows: list[dict]) -> tuple[list[dict], list[str]]:
    """The table people read (printed and in summary.md): mean ± std over seeds, test PSNR per ratio,
    the difference to the reference with its 95% CI."""
    ratios = group_columns(rows, "test_psnr_")
    table = []
    for row in rows:
        line = {"variant": row["variant"], "seeds": row["seeds"],
                "best_val_psnr": _plus_minus(row, "best_val_psnr"), "val SSIM": _plus_minus(row, "best_val_ssim", 4),
                "test PSNR": _plus_minus(row, "test_psnr"), "test SSIM": _plus_minus(row, "test_ssim", 4)}
        if "test_mono_psnr" in row:
            line["test mono PSNR"] = _plus_minus(row, "test_mono_psnr")
        line.update({f"test PSNR {ratio}": f"{row[f'test_psnr_{ratio}']:.2f}" if f"test_psnr_{ratio}" in row else "-"
                     for ratio in ratios})
        if any("reference" in r for r in rows):
            line.update({"reference": row.get("reference", ""), "Δ test PSNR [95% CI]": _difference_text(row),
                         "distinguishable": row.get("d_test_psnr_distinguishable", ""),
                         "CI over": row.get("ci_over", "")})
        table.append(line)
    return table, list(dict.fromkeys(k for line in table for k in line))


def _markdown(sweep: SweepConfig, rows: list[dict]) -> str:
    table, columns = display_rows(rows)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(line.get(c, "")) for c in columns) + " |" for line in table]
    mode = rows[0]["metric_precision"] if rows else "-"
    variant = rows[0]["ssim_variant"] if rows else "-"
    seeds = f"seeds {sweep.seeds}, values are mean ± std over seeds" if sweep.seeds else "one run per variant"
    note = ("\n\nΔ: mean paired difference to the reference on the test images (same images, same seed), "
            "95% CI as described in core/sweep_summary.py; distinguishable = the CI excludes 0."
            if any("reference" in r for r in rows) else "")
    return (f"# Sweep {sweep.name}\n\nBase: `{sweep.base}`; {seeds}; sorted by best validation PSNR "
            f"(best_val_psnr). Metric: {mode} images, SSIM variant: {variant}.{note}\n\n" + "\n".join(lines) + "\n")


def sweep_results_dir(sweep: SweepConfig) -> Path:
    """`<output.results_dir of the base config>/<sweep name>`: the sweep honours the base's results root."""
    return Path(load_config(sweep.base, check_files=False).output.results_dir) / sweep.name


def run_sweep(sweep: SweepConfig, launcher: Optional[str] = None, executor=None) -> list[dict]:
    variants = expand(sweep)
    runs = expand_runs(sweep, variants)
    configs = [variant_config(sweep, run, sweep_results_dir(sweep)) for run in runs]  # every error up front
    results_dir = configs[0].run_dir.parent
    results_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(results_dir / "sweep.yaml", yaml.safe_dump(sweep.model_dump(), sort_keys=False))
    seeds = f" x {len(sweep.seeds)} seed(s)" if sweep.seeds else ""
    print(f"sweep {sweep.name}: {len(variants)} variant(s){seeds} -> {results_dir}")
    launcher = launcher or sweep.launcher
    failed = []
    if launcher == "local" and executor is None:
        for index, config in enumerate(configs, start=1):
            print(f"=== run {index}/{len(configs)}: {config.experiment}")
            run_variant(config)
    else:
        executor = executor or _slurm_executor(sweep, results_dir)
        failed = slurm.run_jobs(executor, run_variant, configs, results_dir)  # waits on all; never submits twice
    rows = summarise(sweep, variants, results_dir)
    table, columns = display_rows(rows)
    mode = f"metric {rows[0]['metric_precision']}, SSIM {rows[0]['ssim_variant']}" if rows else "no finished run"
    print(f"\nsweep {sweep.name} ({mode}; best_val_psnr: validation PSNR at the best epoch"
          f"{'; mean ± std over seeds' if sweep.seeds else ''})")
    print(format_table(table, columns))
    print(f"sweep summary: {results_dir / 'summary.md'} (all columns: summary.csv; figures: "
          f"{', '.join(SWEEP_FIGURES)})")
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
