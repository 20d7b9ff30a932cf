"""Loading weights never runs code: every path that reads a .pth file refuses a crafted pickle with one
line, and the harness's own checkpoints (resume state included) load with weights_only=True."""
import os
import shutil

import numpy as np
import pytest
import torch

from clitools import assert_one_line_error, run_here
from checkpoints.safe_load import CheckpointError, load_torch_file
from test_train import write_run_config


class _RunsCommand:
    """Pickles as a call to os.system: what a malicious "checkpoint" does when it is unpickled."""

    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


@pytest.fixture
def crafted(tmp_path):
    marker = tmp_path / "code_ran"
    path = tmp_path / "crafted.pth"
    torch.save({"model": _RunsCommand(f"touch {marker}")}, path)
    return path, marker


@pytest.fixture(scope="module")
def small_run(synthetic_sid_root, tmp_path_factory):
    """A finished two-epoch full-precision run: real checkpoints and weights of this harness."""
    folder = tmp_path_factory.mktemp("safe_run")
    config_path = write_run_config(folder, synthetic_sid_root, schedule__epochs=2, schedule__iters_per_epoch=2)
    from clitools import entry_point
    from harness.runner import run_entry_point
    previous = os.getcwd()
    os.chdir(folder)
    try:
        assert run_entry_point(entry_point("train.py").main, ["--config", str(config_path)]) == 0
    finally:
        os.chdir(previous)
    return folder, config_path


@pytest.mark.parametrize("key", ["load_model", "load_quant_model", "load_teacher_model"])
def test_crafted_pickle_in_a_config_key_never_runs(key, crafted, small_run, tmp_path, capsys):
    path, marker = crafted
    folder, config_path = small_run
    weights = str(folder / "onnx" / "tiny.pth")
    settings = {"load_model": {"load_model": str(path)},
                "load_quant_model": {"quant": True, "load_quant_model": str(path)},
                "load_teacher_model": {"quant": True, "load_model": weights, "quant_teacher": True,
                                       "distill_config": ["DBLE.lrelu"], "distill_coeff": 0.1,
                                       "load_teacher_model": str(path)}}[key]
    config = write_run_config(tmp_path, _data_root(config_path), **settings)
    status, _, stderr = run_here(capsys, "train.py", "--config", config, cwd=tmp_path)
    assert_one_line_error(status, stderr, str(path), "holds objects other than weights")
    assert not marker.exists(), "the pickle's code ran"
    assert not (tmp_path / "results" / "tiny" / "config.yaml").exists()


def _data_root(config_path):
    import yaml
    return yaml.safe_load(config_path.read_text())["data"]["root"]


def test_crafted_pickle_as_test_checkpoint_never_runs(crafted, small_run, capsys):
    path, marker = crafted
    folder, config_path = small_run
    status, _, stderr = run_here(capsys, "test.py", "--config", config_path, "--checkpoint", path,
                                 "--out", folder / "crafted_eval", cwd=folder)
    assert_one_line_error(status, stderr, str(path), "holds objects other than weights")
    assert not marker.exists()


def test_crafted_pickle_as_resume_checkpoint_never_runs(crafted, small_run, tmp_path, capsys):
    path, marker = crafted
    folder, config_path = small_run
    run_copy = tmp_path / "results"
    shutil.copytree(folder / "results", run_copy)
    checkpoints = run_copy / "tiny" / "checkpoints"
    for old in checkpoints.glob("*.pth"):
        old.unlink()
    shutil.copy(path, checkpoints / "latest_epoch0002.pth")
    config = write_run_config(tmp_path, _data_root(config_path), schedule__epochs=3)
    status, _, stderr = run_here(capsys, "train.py", "--config", config, "--resume", cwd=tmp_path)
    assert_one_line_error(status, stderr, "latest_epoch0002.pth", "holds objects other than weights")
    assert not marker.exists()


def test_own_checkpoints_and_weights_load_safely(small_run):
    folder, _ = small_run
    checkpoint = load_torch_file(next((folder / "results" / "tiny" / "checkpoints").glob("latest_epoch*.pth")))
    assert {"model", "optimizer", "scheduler", "rng", "epoch", "config"} <= set(checkpoint)
    assert isinstance(checkpoint["rng"]["numpy"]["keys"], torch.Tensor)
    weights = load_torch_file(folder / "onnx" / "tiny.pth")
    assert set(weights) == {"model"}  # the authors' format, as their code reads it
    from_safetensors = load_torch_file(folder / "onnx" / "tiny.safetensors")
    assert all(torch.equal(from_safetensors[k], v) for k, v in weights["model"].items())


def test_safetensors_weights_evaluate_like_the_pth(small_run, capsys):
    folder, config_path = small_run
    scores = []
    for suffix in ("pth", "safetensors"):
        status, _, stderr = run_here(capsys, "test.py", "--config", config_path, "--checkpoint",
                                     folder / "onnx" / f"tiny.{suffix}", "--out", folder / f"eval_{suffix}", cwd=folder)
        assert status == 0, stderr[-2000:]
        import json
        scores.append(json.loads((folder / f"eval_{suffix}" / "summary.json").read_text())["psnr"])
    assert scores[0] == scores[1]


def test_checkpoint_of_the_earlier_format_names_the_converter_and_converts(small_run, tmp_path, capsys):
    folder, config_path = small_run
    current = torch.load(next((folder / "results" / "tiny" / "checkpoints").glob("latest_epoch*.pth")),
                         weights_only=True)
    old = dict(current, rng=dict(current["rng"], numpy=np.random.get_state()))  # how it was stored before
    old_path = tmp_path / "old.pth"
    torch.save(old, old_path)
    with pytest.raises(CheckpointError) as error:
        load_torch_file(old_path)
    assert "tools/convert_checkpoint.py" in str(error.value) and "\n" not in str(error.value)

    status, _, stderr = run_here(capsys, "tools/convert_checkpoint.py", old_path)
    assert_one_line_error(status, stderr, "--trust")  # converting needs the user's word
    status, stdout, _ = run_here(capsys, "tools/convert_checkpoint.py", old_path, "--trust")
    assert status == 0 and "converted" in stdout
    converted = load_torch_file(old_path)
    for key, value in current["model"].items():
        assert torch.equal(converted["model"][key], value)
    np.random.seed(1)
    from checkpoints.training import restore_rng_state
    restore_rng_state(converted["rng"])
    first = np.random.rand()
    np.random.set_state(old["rng"]["numpy"])
    assert np.random.rand() == first  # the converted NumPy state continues the same stream
