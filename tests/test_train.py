"""The full-precision pipeline end to end: train.py, resume, test.py, results files, bad input."""
import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from resume_checks import assert_resumed, resume_point

REPOSITORY_ROOT = Path(__file__).resolve().parents[1]


def write_run_config(folder: Path, data_root: Path, **overrides) -> Path:
    """A narrow DBF/DBLE on the tiny synthetic set: the real code path in seconds."""
    config = {
        "device": "cpu",
        "batch_size": 2,
        "seed": 0,
        "data": {"root": str(data_root), "synthetic": None, "patch_size": 64, "num_workers": 0,
                 "decode_workers": 0, "val_protocol": "all", "test_protocol": "all"},
        "model": {"name": "dbf_dble", "width": 0.25},
        "optim": {"lr": 1e-3},
        "schedule": {"epochs": 3, "iters_per_epoch": 3},
        "output": {"results_dir": str(folder / "results"), "experiment": "tiny", "tensorboard": False},
    }
    for dotted, value in overrides.items():
        node = config
        *parents, last = dotted.split("__")
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = value
    path = folder / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def run_cli(script, *args, cwd=None, check=True):
    result = subprocess.run([sys.executable, str(REPOSITORY_ROOT / script), *map(str, args)],
                            cwd=cwd or REPOSITORY_ROOT, capture_output=True, text=True, timeout=600)
    if check and result.returncode != 0:
        raise AssertionError(f"{script} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


@pytest.fixture(scope="module")
def trained_run(synthetic_sid_root, tmp_path_factory):
    folder = tmp_path_factory.mktemp("fp_run")
    config_path = write_run_config(folder, synthetic_sid_root, schedule__epochs=3, schedule__iters_per_epoch=8,
                                   optim__lr=2e-3)
    result = run_cli("train.py", "--config", config_path, cwd=folder)
    return folder, config_path, result


def test_training_writes_every_result_file_and_lowers_loss(trained_run):
    folder, _, result = trained_run
    run_dir = folder / "results" / "tiny"
    rows = list(csv.DictReader((run_dir / "metrics.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    # Crops differ from batch to batch, so the training loss is noisy; validation frames are fixed.
    assert float(rows[-1]["loss"]) < float(rows[0]["loss"])
    assert float(rows[-1]["psnr"]) > float(rows[0]["psnr"]) + 0.25
    for column in ("loss", "psnr", "ssim", "lr", "seconds", "ssim_variant"):
        assert rows[0][column] != "", column
    assert "epoch" in (run_dir / "metrics.txt").read_text().splitlines()[0]
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["model"]["width"] == 0.25
    checkpoints = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert "latest_epoch0003.pth" in checkpoints
    assert any(name.startswith("best_epoch") for name in checkpoints)
    per_image = list(csv.DictReader((run_dir / "best_per_image.csv").open()))
    assert per_image and {"file", "ratio", "psnr", "ssim"} <= set(per_image[0])
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["test_images"] > 0 and "test_baseline_psnr" in summary
    assert "naive baseline" in result.stdout and str(run_dir) in result.stdout
    # The stable full-precision weights that quantized runs name as load_model.
    weights = torch.load(folder / "onnx" / "tiny.pth", weights_only=True)
    assert set(weights) == {"model"}


def test_test_py_reproduces_validation_psnr_of_best_checkpoint(trained_run):
    folder, config_path, _ = trained_run
    run_dir = folder / "results" / "tiny"
    best = next((run_dir / "checkpoints").glob("best_epoch*.pth"))
    saved_psnr = torch.load(best, weights_only=True)["psnr"]
    run_cli("test.py", "--config", config_path, "--split", "val", "--save-images", cwd=folder)
    evaluation = run_dir / f"eval_val_{best.stem}"
    report = json.loads((evaluation / "summary.json").read_text())
    assert report["psnr"] == pytest.approx(saved_psnr, abs=1e-4)
    assert report["data_root"] == str(Path(report["data_root"]).resolve())
    assert any((evaluation / "images").glob("*.png"))


def test_tiled_evaluation_runs_and_matches_whole_frame_closely(trained_run):
    folder, config_path, _ = trained_run
    whole = run_cli("test.py", "--config", config_path, "--out", folder / "whole", cwd=folder)
    tiled = run_cli("test.py", "--config", config_path, "--tile-size", 64, "--tile-overlap", 16,
                    "--out", folder / "tiled", cwd=folder)
    a = json.loads((folder / "whole" / "summary.json").read_text())
    b = json.loads((folder / "tiled" / "summary.json").read_text())
    assert a["images"] == b["images"] > 0
    # Frame-wide channel-attention averages are gathered over all tiles; what is left is the context
    # cut off at tile borders, small even with 64-pixel tiles on this tiny frame.
    assert abs(a["psnr"] - b["psnr"]) < 0.05, (a["psnr"], b["psnr"])


def test_rerun_refuses_to_destroy_earlier_results(trained_run):
    folder, config_path, _ = trained_run
    result = run_cli("train.py", "--config", config_path, cwd=folder, check=False)
    assert result.returncode == 2
    assert "already holds a run" in result.stderr and "--resume" in result.stderr
    assert (folder / "results" / "tiny" / "metrics.csv").exists()


def test_resume_after_kill_matches_uninterrupted_run(synthetic_sid_root, tmp_path):
    reference_dir, killed_dir = tmp_path / "reference", tmp_path / "killed"
    for folder in (reference_dir, killed_dir):
        folder.mkdir()
    reference = write_run_config(reference_dir, synthetic_sid_root, schedule__epochs=3)
    run_cli("train.py", "--config", reference, cwd=reference_dir)

    # keep_best: every best checkpoint stays, so the resume can be seen to leave the earlier ones alone.
    killed = write_run_config(killed_dir, synthetic_sid_root, schedule__epochs=3, output__keep_best=10)
    process = subprocess.Popen([sys.executable, str(REPOSITORY_ROOT / "train.py"), "--config", str(killed)],
                               cwd=killed_dir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoints = killed_dir / "results" / "tiny" / "checkpoints"
    deadline = time.time() + 300
    while not list(checkpoints.glob("latest_epoch0001.pth")) and time.time() < deadline and process.poll() is None:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not list(checkpoints.glob("latest_epoch0003.pth")), "the run finished before it could be killed"
    point = resume_point(killed_dir / "results" / "tiny")
    resumed = run_cli("train.py", "--config", killed, "--resume", cwd=killed_dir)
    assert_resumed(resumed.stdout, killed_dir / "results" / "tiny", point)

    final = lambda folder: torch.load(folder / "results" / "tiny" / "checkpoints" / "latest_epoch0003.pth",
                                      weights_only=True)
    a, b = final(reference_dir), final(killed_dir)
    for key in a["model"]:
        assert torch.allclose(a["model"][key], b["model"][key], atol=1e-6), key
    epochs = [int(r["epoch"]) for r in csv.DictReader((killed_dir / "results" / "tiny" / "metrics.csv").open())]
    assert epochs == [1, 2, 3]


@pytest.mark.parametrize("override, expected", [
    ("schedule.epoch=3", "unknown config key 'schedule.epoch'; did you mean 'schedule.epochs'?"),
    ("batch_size=many", "config key 'batch_size'"),
    ("load_model=missing_weights.pth", "load_model: file not found: missing_weights.pth"),
    ("data.patch_size=100", "config key 'data.patch_size': must be a positive multiple of 32"),
    ("device=cuda:7", "CUDA"),
])
def test_bad_input_gives_one_line_error(synthetic_sid_root, tmp_path, override, expected):
    if override.startswith("device") and torch.cuda.device_count() > 7:
        pytest.skip("this machine has 8 GPUs")
    config_path = write_run_config(tmp_path, synthetic_sid_root)
    result = run_cli("train.py", "--config", config_path, "--set", override, cwd=tmp_path, check=False)
    assert result.returncode == 2
    assert expected in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not (tmp_path / "results" / "tiny" / "metrics.csv").exists()


def test_missing_config_and_missing_data_root_are_named(tmp_path):
    result = run_cli("train.py", "--config", tmp_path / "nope.yaml", cwd=tmp_path, check=False)
    assert result.returncode == 2 and "config file not found" in result.stderr
    config_path = write_run_config(tmp_path, tmp_path / "no_such_sid")
    result = run_cli("train.py", "--config", config_path, cwd=tmp_path, check=False)
    assert result.returncode == 2 and "data.root: folder not found" in result.stderr


def test_quantized_training_refuses_random_weights(synthetic_sid_root, tmp_path):
    config_path = write_run_config(tmp_path, synthetic_sid_root, quant=True)
    result = run_cli("train.py", "--config", config_path, cwd=tmp_path, check=False)
    assert result.returncode == 2 and "allow_random_init" in result.stderr
