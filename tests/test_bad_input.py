"""Bad input and hostile conditions: each gets one line naming what is at fault, exit status 2, and the
results already on disk stay byte-identical. Everything a config names is checked before any work."""
import json
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from clitools import REPOSITORY_ROOT, assert_one_line_error, run_here
from test_safe_loading import small_run  # noqa: F401 - the shared finished run
from test_train import write_run_config


def snapshot(folder: Path) -> dict:
    return {path.relative_to(folder): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def data_root_of(config_path) -> str:
    return yaml.safe_load(Path(config_path).read_text())["data"]["root"]


@pytest.fixture
def fresh_data(synthetic_sid_root, tmp_path):
    """A copy of the tiny SID set with nothing decoded yet, to edit and to see whether decoding began."""
    root = tmp_path / "sid"
    shutil.copytree(synthetic_sid_root, root, ignore=shutil.ignore_patterns(".decoded_cache"))
    return root


def run_limited(arguments, cwd, max_file_bytes):
    """A real process whose files cannot grow past max_file_bytes: writes fail as on a full disk."""
    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # fail the write with EFBIG instead of killing
        resource.setrlimit(resource.RLIMIT_FSIZE, (max_file_bytes, max_file_bytes))
    return subprocess.run([sys.executable, *map(str, arguments)], cwd=cwd, capture_output=True, text=True,
                          timeout=600, preexec_fn=limit)


# ----------------------------------------------------------------------------- damaged checkpoints

def test_truncated_checkpoint_is_one_line_for_test_and_load_quant_model(small_run, tmp_path, capsys):
    folder, config_path = small_run
    latest = next((folder / "results" / "tiny" / "checkpoints").glob("latest_epoch*.pth"))
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(latest.read_bytes()[: latest.stat().st_size // 2])
    status, _, stderr = run_here(capsys, "test.py", "--config", config_path, "--checkpoint", truncated,
                                 "--out", tmp_path / "eval", cwd=folder)
    assert_one_line_error(status, stderr, str(truncated), "truncated or damaged")
    config = write_run_config(tmp_path, data_root_of(config_path), quant=True, load_quant_model=str(truncated))
    status, _, stderr = run_here(capsys, "train.py", "--config", config, cwd=tmp_path)
    assert_one_line_error(status, stderr, str(truncated), "truncated or damaged")


def test_resume_with_truncated_latest_falls_back_to_the_newest_intact_checkpoint(small_run, tmp_path, capsys):
    folder, config_path = small_run
    shutil.copytree(folder / "results", tmp_path / "results")
    checkpoints = tmp_path / "results" / "tiny" / "checkpoints"
    latest = next(checkpoints.glob("latest_epoch*.pth"))
    latest.write_bytes(latest.read_bytes()[:1000])
    best = next(checkpoints.glob("best_epoch*.pth"))
    config = write_run_config(tmp_path, data_root_of(config_path), schedule__epochs=3, schedule__iters_per_epoch=2)
    status, stdout, stderr = run_here(capsys, "train.py", "--config", config, "--resume", cwd=tmp_path)
    assert status == 0, stderr[-2000:]
    assert f"{latest.name}" in stdout and "truncated or damaged" in stdout and f"resuming from {best}" in stdout
    assert (checkpoints / f"{latest.name}.damaged").exists()  # set aside, not deleted
    assert (checkpoints / "latest_epoch0003.pth").exists()


# ----------------------------------------------------------------------------- full disk

def test_full_disk_while_writing_a_checkpoint_names_it_and_keeps_earlier_ones(small_run, tmp_path):
    folder, config_path = small_run
    shutil.copytree(folder / "results", tmp_path / "results")
    checkpoints = tmp_path / "results" / "tiny" / "checkpoints"
    before = snapshot(checkpoints)
    config = write_run_config(tmp_path, data_root_of(config_path), schedule__epochs=3, schedule__iters_per_epoch=2)
    # Checkpoints of this network are about 11 MB; every other file stays far below 2 MB.
    result = run_limited([REPOSITORY_ROOT / "train.py", "--config", config, "--resume"], tmp_path, 2_000_000)
    message = result.stderr.strip().splitlines()[-1]
    assert result.returncode == 2, result.stderr[-2000:]
    assert message.startswith("error: cannot write ") and str(checkpoints) in message and "_epoch0003" in message
    assert snapshot(checkpoints) == before
    assert not list(checkpoints.glob(".*.tmp"))


def test_full_disk_while_saving_images_names_the_png_and_leaves_none_truncated(small_run, tmp_path):
    folder, config_path = small_run
    out = tmp_path / "eval"
    result = run_limited([REPOSITORY_ROOT / "test.py", "--config", config_path, "--save-images", "--out", out],
                         folder, 20_000)
    message = result.stderr.strip().splitlines()[-1]
    assert result.returncode == 2, result.stderr[-2000:]
    assert message.startswith("error: cannot write ") and ".png" in message and str(out / "images") in message
    assert not list((out / "images").glob("*.png")) and not list((out / "images").glob(".*.tmp"))


# ----------------------------------------------------------------------------- config mistakes

def test_negative_gpu_id_is_refused_at_load(small_run, capsys):
    folder, config_path = small_run
    status, _, stderr = run_here(capsys, "train.py", "--config", config_path, "--set", "gpu_id=-3", cwd=folder)
    assert_one_line_error(status, stderr, "gpu_id", "greater than or equal to 0")


def test_bare_config_name_is_found_in_configfile(tmp_path, capsys):
    status, stdout, stderr = run_here(capsys, "test.py", "--config", "demo_fp.yaml", "--checkpoint",
                                      tmp_path / "none.pth", cwd=tmp_path)
    assert f"found in {REPOSITORY_ROOT / 'configfile'}" in stdout
    assert_one_line_error(status, stderr, "checkpoint not found")
    status, _, stderr = run_here(capsys, "train.py", "--config", "demo_fpp.yaml", cwd=tmp_path)
    assert_one_line_error(status, stderr, "config file not found: demo_fpp.yaml", "demo_fp.yaml")


@pytest.mark.parametrize("special_layer, expected", [
    ({"DBF.no_such_layer": {"weight": "10 per_channel_affine"}}, "no layer 'DBF.no_such_layer'"),
    ({"DBF.DBF_conv1.Conv1": {"weight": "10 per_chanel_affine"}}, "did you mean 'per_channel_affine'"),
    ({"input_layer": 40}, "input_layer"),
])
def test_special_layer_mistakes_stop_before_decoding_and_before_the_run_folder(fresh_data, tmp_path, capsys,
                                                                            special_layer, expected):
    config = write_run_config(tmp_path, fresh_data, quant=True, allow_random_init=True,
                              extra_quantizer_dict={"special_layer": special_layer})
    status, _, stderr = run_here(capsys, "train.py", "--config", config, cwd=tmp_path)
    assert_one_line_error(status, stderr, expected)
    assert not (fresh_data / ".decoded_cache").exists() and not (tmp_path / "results").exists()


def test_missing_val_list_stops_before_anything_is_decoded(fresh_data, tmp_path, capsys):
    (fresh_data / "Sony_val_list.txt").unlink()
    config = write_run_config(tmp_path, fresh_data)
    status, _, stderr = run_here(capsys, "train.py", "--config", config, cwd=tmp_path)
    assert_one_line_error(status, stderr, "Sony_val_list.txt", "not found")
    assert not (fresh_data / ".decoded_cache").exists()


def test_unparseable_test_list_line_stops_before_training(fresh_data, tmp_path, capsys):
    with (fresh_data / "Sony_test_list.txt").open("a") as stream:
        stream.write("./Sony/short/IMG_0001.ARW ./Sony/long/IMG_0002.ARW ISO200 F8\n")
    config = write_run_config(tmp_path, fresh_data)
    status, _, stderr = run_here(capsys, "train.py", "--config", config, cwd=tmp_path)
    assert_one_line_error(status, stderr, "Sony_test_list.txt:", "10003_00_0.1s.ARW")
    assert not (fresh_data / ".decoded_cache").exists() and not (tmp_path / "results").exists()


def test_lsq_fake_quantize_spelling_suggests_lsq_not_dsq():
    from quant.scheme import parse_quant_scheme
    with pytest.raises(ValueError) as error:
        parse_quant_scheme({"weight": {"quantizer": "LSQFakeQuantize"}})
    assert "did you mean 'lsq' (LearnableFakeQuantize)?" in str(error.value)


def test_raw_file_with_almost_no_levels_between_black_and_white_is_refused(fresh_data, tmp_path, capsys):
    import rawpy
    from data.sid import read_list
    from data.synthetic import write_dng
    pair = read_list(fresh_data / "Sony_train_list.txt", fresh_data)[0]
    with rawpy.imread(str(pair.short_path)) as raw:
        mosaic = np.array(raw.raw_image_visible, dtype=np.uint16)
    write_dng(pair.short_path, np.clip(mosaic, 16382, 16383), white_balance_gains=(2.0, 1.0, 1.5),
              exposure_time=pair.input_exposure, iso=int(pair.iso[3:]), f_number=float(pair.aperture[1:]),
              black_level=16382, white_level=16383)
    config = write_run_config(tmp_path, fresh_data)
    status, _, stderr = run_here(capsys, "train.py", "--config", config, cwd=tmp_path)
    line = stderr.strip().splitlines()[-1]
    assert status == 2 and str(pair.short_path) in line and "usable levels" in line
    assert not (tmp_path / "results" / "tiny" / "metrics.csv").exists()


# ----------------------------------------------------------------------------- results kept

def test_test_py_never_replaces_the_training_runs_test_results(small_run, capsys):
    folder, config_path = small_run
    run_dir = folder / "results" / "tiny"
    before = snapshot(run_dir / "test_results")
    status, stdout, stderr = run_here(capsys, "test.py", "--config", config_path, cwd=folder)
    assert status == 0, stderr[-2000:]
    assert snapshot(run_dir / "test_results") == before
    evaluation = next(run_dir.glob("eval_test_best_epoch*"))
    summary = json.loads((evaluation / "summary.json").read_text())
    assert summary["data_root"] == str(Path(data_root_of(config_path)).resolve())
    status, _, stderr = run_here(capsys, "test.py", "--config", config_path, cwd=folder)
    assert_one_line_error(status, stderr, str(evaluation), "--overwrite")


def test_weights_of_another_run_are_never_replaced(small_run, tmp_path, capsys):
    folder, config_path = small_run
    weights = folder / "onnx" / "tiny.pth"
    before = weights.read_bytes()
    other = write_run_config(tmp_path, data_root_of(config_path), output__artifacts_dir=str(folder / "onnx"))
    status, _, stderr = run_here(capsys, "train.py", "--config", other, cwd=tmp_path)
    assert_one_line_error(status, stderr, str(weights), "another run", "output.experiment")
    assert weights.read_bytes() == before and not (tmp_path / "results").exists()


def test_weights_go_to_the_configured_artifacts_folder(small_run):
    folder, config_path = small_run
    assert json.loads((folder / "results" / "tiny" / "summary.json").read_text())["weights"] == "onnx/tiny.pth"
    assert (folder / "onnx" / "tiny.safetensors").exists()


def test_stale_temporary_files_are_removed_on_resume(small_run, tmp_path, capsys):
    folder, config_path = small_run
    shutil.copytree(folder / "results", tmp_path / "results")
    run_dir = tmp_path / "results" / "tiny"
    stale = [run_dir / "checkpoints" / ".latest_epoch0003.pth.k2j4.tmp", run_dir / ".metrics.csv.x8f.tmp"]
    for path in stale:
        path.write_bytes(b"half a file")
    config = write_run_config(tmp_path, data_root_of(config_path), schedule__epochs=3, schedule__iters_per_epoch=2)
    status, _, stderr = run_here(capsys, "train.py", "--config", config, "--resume", cwd=tmp_path)
    assert status == 0, stderr[-2000:]
    assert not any(path.exists() for path in stale)


def test_overwrite_of_a_folder_that_cannot_be_removed_names_it_and_keeps_it(small_run, tmp_path, capsys):
    folder, config_path = small_run
    shutil.copytree(folder / "results", tmp_path / "results")
    run_dir = tmp_path / "results" / "tiny"
    before = snapshot(run_dir)
    # Immutable parent folder: even root cannot rename or delete inside it (a read-only mount acts alike).
    if subprocess.run(["chattr", "+i", str(tmp_path / "results")], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not supported on this file system")
    try:
        config = write_run_config(tmp_path, data_root_of(config_path))
        status, _, stderr = run_here(capsys, "train.py", "--config", config, "--overwrite", cwd=tmp_path)
    finally:
        subprocess.run(["chattr", "-i", str(tmp_path / "results")], check=True)
    assert_one_line_error(status, stderr, "--overwrite", str(run_dir))
    assert snapshot(run_dir) == before


def test_unwritable_test_output_fails_before_evaluating(small_run, tmp_path, capsys):
    folder, config_path = small_run
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    status, _, stderr = run_here(capsys, "test.py", "--config", config_path, "--out", blocker / "eval", cwd=folder)
    line = assert_one_line_error(status, stderr, "not writable", str(blocker))
    assert "test (" not in stderr and line
