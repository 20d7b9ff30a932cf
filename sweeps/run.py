"""Running a sweep: every run trained in this process or as a Slurm array job, a finished run skipped
and an interrupted one resumed, then the table (sweeps/report.py)."""
import json
import sys
from pathlib import Path
from typing import Optional

import yaml

from harness import run_lock
from harness.config import load_config
from harness.records import format_table
from harness.training import run as train_run
from helpers.files import write_text_atomic
from sweeps import slurm
from sweeps.plots import SWEEP_FIGURES
from sweeps.report import display_rows, summarise
from sweeps.variants import SweepConfig, expand, expand_runs, variant_config


def run_variant(config, take_over=False) -> dict:
    """Train one variant: skip it when finished, resume it when interrupted. The variant's folder is
    owned for the whole decision (harness/run_lock.py), so a second sweep or a hand-started run never
    trains it at the same time."""
    with run_lock.held(config.run_dir, "sweep.py variant", take_over):
        summary_path = config.run_dir / "summary.json"
        if summary_path.exists():
            print(f"variant {config.experiment}: finished earlier, skipped")
            return json.loads(summary_path.read_text())
        resume = any((config.run_dir / "checkpoints").glob("latest_epoch*.pth"))
        return train_run(config, resume=resume, overwrite=not resume)


def sweep_results_dir(sweep: SweepConfig) -> Path:
    """`<output.results_dir of the base config>/<sweep name>`: the sweep honours the base's results root."""
    return Path(load_config(sweep.base, check_files=False).output.results_dir) / sweep.name


def run_sweep(sweep: SweepConfig, launcher: Optional[str] = None, executor=None, take_over=False) -> list[dict]:
    variants = expand(sweep)
    runs = expand_runs(sweep, variants)
    configs = [variant_config(sweep, run, sweep_results_dir(sweep)) for run in runs]  # every error up front
    results_dir = configs[0].run_dir.parent
    # One sweep at a time over a results folder; each variant's run folder has its own lock as well.
    with run_lock.held(results_dir, "sweep.py", take_over):
        return _run_sweep(sweep, variants, configs, results_dir, launcher, executor, take_over)


def _run_sweep(sweep, variants, configs, results_dir, launcher, executor, take_over) -> list[dict]:
    results_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(results_dir / "sweep.yaml", yaml.safe_dump(sweep.model_dump(), sort_keys=False))
    seeds = f" x {len(sweep.seeds)} seed(s)" if sweep.seeds else ""
    print(f"sweep {sweep.name}: {len(variants)} variant(s){seeds} -> {results_dir}")
    launcher = launcher or sweep.launcher
    failed = []
    if launcher == "local" and executor is None:
        for index, config in enumerate(configs, start=1):
            print(f"=== run {index}/{len(configs)}: {config.experiment}")
            try:
                run_variant(config, take_over)
            except run_lock.RunLocked as error:  # someone else runs it: the other variants go on
                print(f"variant {config.experiment}: not run: {error}", file=sys.stderr)
                failed.append(f"variant {config.experiment}: not run: {error}")
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
