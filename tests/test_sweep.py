"""Sweeps: one folder per variant, summary files and plots, finished variants skipped on re-run,
and the submitit launcher path (its local executor stands in for Slurm)."""
import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from test_train import REPOSITORY_ROOT, write_run_config


def write_sweep(folder: Path, data_root: Path, **extra) -> Path:
    base = write_run_config(folder, data_root, schedule__epochs=1, schedule__iters_per_epoch=2)
    sweep = {"base": str(base), "grid": {"optim.lr": [1e-3, 3e-3]}, **extra}
    path = folder / "tiny_sweep.yaml"
    path.write_text(yaml.safe_dump(sweep))
    return path


def run_sweep_cli(folder, sweep_path, *args):
    result = subprocess.run([sys.executable, str(REPOSITORY_ROOT / "sweep.py"), "--config", str(sweep_path), *args],
                            cwd=folder, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def test_two_variant_sweep_writes_summary_and_skips_finished_variants(synthetic_sid_root, tmp_path):
    sweep_path = write_sweep(tmp_path, synthetic_sid_root)
    first = run_sweep_cli(tmp_path, sweep_path)
    results = tmp_path / "results" / "tiny_sweep"
    variants = sorted(p.name for p in results.iterdir() if p.is_dir())
    assert variants == ["lr=0.001", "lr=0.003"]
    rows = list(csv.DictReader((results / "summary.csv").open()))
    assert {r["variant"] for r in rows} == set(variants)
    psnrs = [float(r["best_val_psnr"]) for r in rows]
    assert psnrs == sorted(psnrs, reverse=True)
    assert "| variant |" in (results / "summary.md").read_text()
    for plot in ("best_psnr.png", "psnr_curves.png"):
        assert (results / plot).read_bytes()[:4] == b"\x89PNG"
    assert "best_val_psnr" in first

    stamp = {v: (results / v / "summary.json").stat().st_mtime_ns for v in variants}
    second = run_sweep_cli(tmp_path, sweep_path)
    assert second.count("finished earlier, skipped") == 2
    assert stamp == {v: (results / v / "summary.json").stat().st_mtime_ns for v in variants}


def test_bad_variant_key_stops_the_sweep_before_any_training(synthetic_sid_root, tmp_path):
    sweep_path = write_sweep(tmp_path, synthetic_sid_root, set={"optim.lrr": 1.0})
    result = subprocess.run([sys.executable, str(REPOSITORY_ROOT / "sweep.py"), "--config", str(sweep_path)],
                            cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert "unknown config key 'optim.lrr'; did you mean 'optim.lr'?" in result.stderr
    assert not list((tmp_path / "results").glob("*/*/metrics.csv"))


def test_submitit_launcher_runs_each_variant_as_a_job(synthetic_sid_root, tmp_path, monkeypatch):
    submitit = pytest.importorskip("submitit")
    import sweep as sweep_module
    monkeypatch.chdir(tmp_path)
    # Jobs are new Python processes that unpickle sweep.run_variant: they need the repository on the path.
    monkeypatch.setenv("PYTHONPATH", str(REPOSITORY_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    sweep = sweep_module.load_sweep(write_sweep(tmp_path, synthetic_sid_root))
    executor = submitit.LocalExecutor(folder=str(tmp_path / "jobs"))
    executor.update_parameters(timeout_min=20)
    rows = sweep_module.run_sweep(sweep, executor=executor)
    assert len(rows) == 2
    assert all((tmp_path / "results" / "tiny_sweep" / r["variant"] / "summary.json").exists() for r in rows)
    assert list((tmp_path / "jobs").glob("*_result.pkl"))
