"""The user's own thesis config (../shared/spec/seed_aba_config.yaml) runs as it is, with only its
weight paths changed to weights made by the full-precision pipeline (here in debug mode)."""
import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from test_train import REPOSITORY_ROOT, run_cli

SHARED_SEED = REPOSITORY_ROOT.parent / "shared" / "spec" / "seed_aba_config.yaml"
SEED = SHARED_SEED if SHARED_SEED.exists() else REPOSITORY_ROOT / "configfile" / "seed_aba.yaml"


@pytest.fixture(scope="module")
def seed_run(synthetic_sid_root, tmp_path_factory):
    folder = tmp_path_factory.mktemp("seed")
    data = [f"data.root={synthetic_sid_root}", "data.synthetic=null", "data.decode_workers=0",
            "data.num_workers=0", "device=cpu", f"output.results_dir={folder / 'results'}", "debug=true"]
    # 1. Full-precision weights from the pipeline itself (the base config of the user's file, unquantized).
    teacher_config = folder / "teacher.yaml"
    teacher_config.write_text(yaml.safe_dump({"config_file_path": str(REPOSITORY_ROOT / "configfile" / "aba_config.yaml")}))
    run_cli("train.py", "--config", teacher_config, *[a for o in data for a in ("--set", o)], cwd=folder)
    weights = folder / "onnx" / "teacher.pth"
    assert weights.exists()
    # 2. The user's file, weight paths changed and nothing else; run from the repository root, where
    #    its `config_file_path: ./configfile/aba_config.yaml` points.
    text = SEED.read_text()
    for key in ("load_model", "load_teacher_model"):
        lines = [line for line in text.splitlines() if line.split(":")[0].strip() == key]
        assert lines, key
        text = text.replace(lines[0], f"{key} : {weights}")
    seed = folder / "seed_aba_config.yaml"
    seed.write_text(text)
    result = run_cli("train.py", "--config", seed, *[a for o in data for a in ("--set", o)])
    return folder, seed, data, result


def test_seed_config_trains_quantized_and_distilled(seed_run):
    folder, _, _, result = seed_run
    run_dir = folder / "results" / "seed_aba_config"
    # Weight entries on LeakyReLU layers are reported, not fatal.
    assert "warning: extra_quantizer_dict.special_layer.DBF.DBF_conv1.lrelu.weight: ignored" in result.stderr
    plan = {row["quantizer"]: row for row in csv.DictReader((run_dir / "quant_plan.csv").open())}
    assert plan["DBF.DBF_conv1.Conv1.weight_fake_quant"]["bits"] == "10"
    assert plan["DBLE.color_conv2.Conv1.weight_fake_quant"]["bits"] == "4"
    assert plan["x_post_act_fake_quantizer"]["bits"] == "10"  # input_layer: 10, downshuffle input included
    rows = list(csv.DictReader((run_dir / "metrics.csv").open()))
    distill_columns = [c for c in rows[0] if c.startswith("distill[")]
    assert sorted(distill_columns) == ["distill[DBF.DBF_conv9.lrelu_dup1]", "distill[DBLE.dual_conv9.lrelu_dup1]"]
    assert float(rows[0]["loss"]) > float(rows[0]["task_loss"])  # coefficients 0.7 add to the task loss
    assert "quant plan" in result.stdout


def test_quantized_checkpoint_reproduces_its_psnr_in_test_py(seed_run):
    folder, seed, data, _ = seed_run
    run_dir = folder / "results" / "seed_aba_config"
    best = next((run_dir / "checkpoints").glob("best_epoch*.pth"))
    saved = torch.load(best, weights_only=True)
    assert saved["quantized"] is True
    run_cli("test.py", "--config", seed, "--checkpoint", best, "--split", "val",
            *[a for o in data for a in ("--set", o)])
    report = json.loads((run_dir / f"eval_val_{best.stem}" / "summary.json").read_text())
    assert report["psnr"] == pytest.approx(saved["psnr"], abs=1e-4)


def test_load_quant_model_continues_from_a_quantized_checkpoint(seed_run):
    folder, seed, data, _ = seed_run
    best = next((folder / "results" / "seed_aba_config" / "checkpoints").glob("best_epoch*.pth"))
    saved = torch.load(best, weights_only=True)
    # No training (epochs: 0): the run validates exactly what it loaded, so a load that re-calibrated,
    # dropped the learned scales or started from the float weights would show in both checks below.
    result = run_cli("train.py", "--config", seed, "--set", f"load_quant_model={best}", "--set", "schedule.epochs=0",
                     "--set", "output.experiment=continued", *[a for o in data for a in ("--set", o)])
    assert "quant plan" in result.stdout
    run_dir = folder / "results" / "continued"
    first = next(csv.DictReader((run_dir / "metrics.csv").open()))
    assert int(first["epoch"]) == 0 and float(first["psnr"]) == pytest.approx(saved["psnr"], abs=1e-4)
    loaded = torch.load(next((run_dir / "checkpoints").glob("best_epoch0000*.pth")), weights_only=True)["model"]
    saved_state, loaded_state = saved["model"]["state_dict"], loaded["state_dict"]
    scales = [key for key in saved_state if key.endswith((".scale", ".zero_point"))]
    assert len(scales) > 20  # every fake quantizer's learned scale and zero point...
    assert saved_state.keys() == loaded_state.keys()
    for key in saved_state:  # ...and every weight, exactly as saved
        assert torch.equal(loaded_state[key], saved_state[key]), key
