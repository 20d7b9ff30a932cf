"""tools/ptq.py: post-training quantization baselines of a float model, scored on the test split."""
import math
from pathlib import Path

import pytest
import torch

from tools import ptq
from models import build_model
from test_train import write_run_config


@pytest.fixture(scope="module")
def float_weights(tmp_path_factory):
    path = tmp_path_factory.mktemp("ptq_weights") / "fp.pth"
    torch.manual_seed(0)
    torch.save({"model": build_model("dbf_dble", 0.125).state_dict()}, path)
    return path


def test_ptq_baselines_are_scored_on_the_test_split(synthetic_sid_root, float_weights, tmp_path):
    config = write_run_config(tmp_path, synthetic_sid_root, model__width=0.125, quant=True,
                              quant_scheme={"backend": "snpe", "calibration_batches": 1})
    summary = ptq.main(["--config", str(config), "--weights", str(float_weights), "--bits", "8", "4"])
    # Exported models are scored in each runtime of deploy.runtime (both by default), one row each.
    onnx_rows = [row for row in summary if row["method"] == "onnxruntime_ptq"]
    assert sorted(row["runtime"].split()[0] for row in onnx_rows) == ["onnxruntime", "onnxruntime", "openvino",
                                                                      "openvino"]
    w8a8 = {row["runtime"].split()[0]: row for row in onnx_rows if row["bits"] == "w8a8"}
    assert w8a8["openvino"]["images"] == w8a8["onnxruntime"]["images"]
    assert abs(w8a8["openvino"]["psnr"] - w8a8["onnxruntime"]["psnr"]) < 0.1  # the same model, two runtimes
    by_method = {(row["method"], row["bits"]): row for row in summary
                 if not row["runtime"].startswith("openvino")}
    assert set(by_method) == {("fp32", 32), ("mqbench_ptq (snpe)", "w8a8"), ("onnxruntime_ptq", "w8a8"),
                              ("mqbench_ptq (snpe)", "w4a4"), ("onnxruntime_ptq", "w4a4")}
    images = by_method["fp32", 32]["images"]
    assert images > 0
    for key in [("mqbench_ptq (snpe)", "w8a8"), ("onnxruntime_ptq", "w8a8"), ("mqbench_ptq (snpe)", "w4a4")]:
        assert by_method[key]["images"] == images and math.isfinite(by_method[key]["psnr"])
    # Quantizing costs fidelity: 4 bits without training is further from the float model than 8 bits.
    fp_psnr = by_method["fp32", 32]["psnr"]
    assert abs(by_method["mqbench_ptq (snpe)", "w8a8"]["psnr"] - fp_psnr) < \
        abs(by_method["mqbench_ptq (snpe)", "w4a4"]["psnr"] - fp_psnr)
    # onnxruntime has no kernels for 4-bit activations through MaxPool: reported, not a crash.
    ort_4bit = by_method["onnxruntime_ptq", "w4a4"]
    assert math.isfinite(ort_4bit["psnr"]) or "MaxPool" in ort_4bit["note"]
    assert (tmp_path / "results" / "tiny" / "ptq" / "ptq_summary.csv").is_file()


def test_zero_epochs_is_calibration_only_ptq_scored_like_ptq_py(synthetic_sid_root, float_weights, tmp_path):
    # A sweep variant {schedule.epochs: 0} is how a table puts PTQ beside QAT: train.py then only
    # calibrates, validates and saves "epoch 0", and its test score is tools/ptq.py's MQBench PTQ row.
    import train
    from harness.config import load_config
    config_path = write_run_config(tmp_path, synthetic_sid_root, model__width=0.125, quant=True,
                                   load_model=str(float_weights), schedule__epochs=0,
                                   quant_scheme={"backend": "snpe", "calibration_batches": 1})
    summary = train.run(load_config(config_path))
    assert summary["best_epoch"] == 0 and "epoch000" in Path(summary["checkpoint"]).name
    rows = (tmp_path / "results" / "tiny" / "metrics.csv").read_text().splitlines()
    assert len(rows) == 2 and rows[1].startswith("0,")
    ptq_rows = ptq.main(["--config", str(config_path), "--skip-onnxruntime"])
    mqbench = next(row for row in ptq_rows if row["method"].startswith("mqbench_ptq"))
    assert summary["test_psnr"] == pytest.approx(mqbench["psnr"], abs=1e-4)


def test_zero_epochs_without_weights_is_refused(synthetic_sid_root, tmp_path):
    from harness.config import ConfigError, load_config
    config_path = write_run_config(tmp_path, synthetic_sid_root, schedule__epochs=0)
    with pytest.raises(ConfigError, match="schedule.epochs: 0"):
        load_config(config_path)
