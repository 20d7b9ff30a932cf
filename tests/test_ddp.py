"""DistributedDataParallel on CPU: 2 gloo processes under torchrun see the same global batches as
one process, so the first-epoch loss matches; quantized + distilled training works under DDP."""
import csv
import subprocess
import sys

import pytest

from test_train import REPOSITORY_ROOT, run_cli, write_run_config

# Gradients are averaged over ranks in another order than one process sums them: losses agree to
# float32 rounding, far inside this tolerance.
LOSS_TOLERANCE = 1e-4
# LSQ scales its quantizer-scale gradient by 1/sqrt(elements x Qp) of the tensor a process sees, and a
# rank sees half the batch: quantizer scales take slightly different steps than in one process.
QAT_LOSS_TOLERANCE = 1e-3


def first_epoch(folder, experiment):
    rows = list(csv.DictReader((folder / "results" / experiment / "metrics.csv").open()))
    return rows[0]


def torchrun(folder, config_path, *overrides):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(REPOSITORY_ROOT / "train.py"), "--config", str(config_path)]
    for override in overrides:
        command += ["--set", override]
    result = subprocess.run(command, cwd=folder, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def teacher(synthetic_sid_root, tmp_path_factory):
    folder = tmp_path_factory.mktemp("ddp")
    config_path = write_run_config(folder, synthetic_sid_root, batch_size=4, schedule__epochs=1,
                                   schedule__iters_per_epoch=3, optim__lr=2e-3)
    run_cli("train.py", "--config", config_path, "--set", "output.experiment=single", cwd=folder)
    torchrun(folder, config_path, "output.experiment=ddp")
    return folder, config_path


def test_ddp_first_epoch_loss_matches_single_process(teacher):
    folder, _ = teacher
    single, ddp = first_epoch(folder, "single"), first_epoch(folder, "ddp")
    assert float(ddp["loss"]) == pytest.approx(float(single["loss"]), rel=LOSS_TOLERANCE)
    assert float(ddp["psnr"]) == pytest.approx(float(single["psnr"]), abs=1e-3)
    # Rank 0 alone writes: one metrics row per epoch, one set of checkpoints.
    assert len(list(csv.DictReader((folder / "results" / "ddp" / "metrics.csv").open()))) == 1
    assert (folder / "results" / "ddp" / "checkpoints" / "latest_epoch0001.pth").exists()


def test_quantized_distilled_training_under_ddp_matches_single_process(teacher):
    folder, config_path = teacher
    weights = folder / "onnx" / "single.pth"
    overrides = ["quant=true", "quant_teacher=true", f"load_model={weights}", f"load_teacher_model={weights}",
                 "distill_config=[DBLE.dual_conv9.lrelu_dup1, DBF.DBF_conv9.lrelu_dup1]", "distill_coeff=0.1",
                 "quant_scheme.calibration_batches=1", "optim.lr=1e-4"]
    run_cli("train.py", "--config", config_path, *[a for o in overrides for a in ("--set", o)],
            "--set", "output.experiment=qat_single", cwd=folder)
    torchrun(folder, config_path, *overrides, "output.experiment=qat_ddp")
    single, ddp = first_epoch(folder, "qat_single"), first_epoch(folder, "qat_ddp")
    assert float(ddp["loss"]) == pytest.approx(float(single["loss"]), rel=QAT_LOSS_TOLERANCE)
    distill_columns = [c for c in single if c.startswith("distill[")]
    assert len(distill_columns) == 2
    for column in distill_columns:
        # The feature distance is a small difference of quantized features (about 5e-4): the slightly
        # different quantizer-scale steps show up more in it than in the loss.
        assert float(ddp[column]) == pytest.approx(float(single[column]), rel=0.05)
    assert (folder / "results" / "qat_ddp" / "quant_plan.csv").exists()
