"""Issue 24: nothing is lost when runs collide or input is bad. One test per failure found by the
new-user round (numbered as in the issue), with real processes, real DNGs and real networks."""
import csv
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import enhance
from clitools import REPOSITORY_ROOT, assert_one_line_error, run_here
from harness import run_lock
from data.synthetic import write_dng
from models import build_model
from test_train import run_cli, write_run_config

WIDTH = 0.125


def snapshot(folder: Path) -> dict:
    return {path.relative_to(folder): path.read_bytes() for path in sorted(Path(folder).rglob("*")) if path.is_file()}


@pytest.fixture
def fresh_data(synthetic_sid_root, tmp_path):
    """The tiny SID set with nothing decoded: whether `.decoded_cache` appears shows whether work began."""
    root = tmp_path / "sid"
    shutil.copytree(synthetic_sid_root, root, ignore=shutil.ignore_patterns(".decoded_cache"))
    return root


@pytest.fixture(scope="module")
def plain_weights(tmp_path_factory):
    """A narrow float network as the harness's own plain weights ({'model': state_dict}) and its config."""
    folder = tmp_path_factory.mktemp("plain_weights")
    torch.manual_seed(0)
    torch.save({"model": build_model("dbf_dble", WIDTH).state_dict()}, folder / "tiny.pth")
    (folder / "run.yaml").write_text(yaml.safe_dump({"model": {"name": "dbf_dble", "width": WIDTH}}))
    return folder / "tiny.pth", folder / "run.yaml"


def listed_pairs(root, count=2):
    from data.sid import read_list
    return read_list(Path(root) / "Sony_test_list.txt", root)[:count]


def constant_dng(path, value=0):
    return write_dng(path, np.full((64, 96), value, np.uint16), white_balance_gains=(2.0, 1.0, 1.5),
                     exposure_time=0.1, iso=100, f_number=4.0)


def hold_lock_elsewhere(run_dir) -> subprocess.Popen:
    """Another process (this host) that owns `run_dir` until it is stopped."""
    program = textwrap.dedent(f"""
        import sys, time
        from harness import run_lock
        with run_lock.held({str(run_dir)!r}, "holder.py"):
            print("held", flush=True)
            time.sleep(600)
    """)
    holder = subprocess.Popen([sys.executable, "-c", program], cwd=REPOSITORY_ROOT, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


# ----------------------------------------------------------------------------- 1. run locks

def test_1_second_training_of_one_experiment_is_refused_and_the_first_folder_stays_one_run(synthetic_sid_root,
                                                                                          tmp_path):
    config = write_run_config(tmp_path, synthetic_sid_root, schedule__epochs=2, schedule__iters_per_epoch=2,
                              optim__lr=2e-3)
    run_dir = tmp_path / "results" / "tiny"
    first = subprocess.Popen([sys.executable, str(REPOSITORY_ROOT / "train.py"), "--config", str(config)],
                             cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 300
        while not run_lock.lock_path(run_dir).exists():  # the first owns the folder from its start
            assert first.poll() is None and time.time() < deadline, first.communicate()
            time.sleep(0.05)
        # Frozen (not finished) while the second starts: the collision is certain, whatever the machine's speed.
        os.kill(first.pid, signal.SIGSTOP)
        second = run_cli("train.py", "--config", config, "--set", "optim.lr=5e-4", "--overwrite", cwd=tmp_path,
                         check=False)
        os.kill(first.pid, signal.SIGCONT)
        line = assert_one_line_error(second.returncode, second.stderr, str(run_dir), "in use by train.py",
                                     f"pid {first.pid}", f"tail --pid={first.pid}", f"kill {first.pid}")
        assert line.startswith("error: ")
        stdout, stderr = first.communicate(timeout=600)
        assert first.returncode == 0, stderr[-3000:]
    finally:
        if first.poll() is None:
            os.kill(first.pid, signal.SIGCONT)
            first.kill()
    # Everything in the folder comes from the first run (lr 2e-3), none from the refused one (lr 5e-4).
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["optim"]["lr"] == 2e-3
    assert [int(row["epoch"]) for row in csv.DictReader((run_dir / "metrics.csv").open())] == [1, 2]
    checkpoints = sorted((run_dir / "checkpoints").glob("*.pth"))
    assert checkpoints
    for path in checkpoints:
        assert torch.load(path, weights_only=False)["config"]["optim"]["lr"] == 2e-3, path.name
    assert json.loads((run_dir / "summary.json").read_text())["best_epoch"] in (1, 2)
    assert not run_lock.lock_path(run_dir).exists()  # released at the end


def test_1_stale_lock_of_a_killed_process_is_reported_and_taken_over(tmp_path, capsys):
    run_dir = tmp_path / "results" / "tiny"
    holder = hold_lock_elsewhere(run_dir)
    holder.kill()  # SIGKILL: nothing unwinds, the record stays
    holder.wait()
    assert json.loads(run_lock.lock_path(run_dir).read_text())["pid"] == holder.pid
    with run_lock.held(run_dir, "test"):
        assert json.loads(run_lock.lock_path(run_dir).read_text())["pid"] == os.getpid()
    warning = capsys.readouterr().err
    assert "stale lock" in warning and f"pid {holder.pid}" in warning and "no longer runs" in warning
    assert not run_lock.lock_path(run_dir).exists()


def test_1_lock_of_another_host_is_refused_until_stale_and_then_only_with_take_over(tmp_path, capsys):
    run_dir = tmp_path / "results" / "tiny"
    run_dir.parent.mkdir(parents=True)
    record = run_lock.lock_path(run_dir)
    record.write_text(json.dumps({"host": "gpu-node-7", "pid": 4242, "started": time.time() - 3600,
                                  "command": "train.py"}))
    with pytest.raises(run_lock.RunLocked, match="in use by train.py .host gpu-node-7, pid 4242.*--take-over"):
        with run_lock.held(run_dir, "test"):
            pass
    silent = time.time() - run_lock.STALE_AFTER_SECONDS - 60
    os.utime(record, (silent, silent))
    with pytest.raises(run_lock.RunLocked, match="looks stale .not refreshed for 16 min, limit 15 min.*--take-over"):
        with run_lock.held(run_dir, "test"):
            pass
    assert json.loads(record.read_text())["pid"] == 4242  # reported, never silently broken
    with run_lock.held(run_dir, "test", take_over=True):
        assert json.loads(record.read_text())["pid"] == os.getpid()
    assert "taking over" in capsys.readouterr().err and not record.exists()


def test_1_lock_is_released_on_exception_and_on_sigterm(tmp_path):
    run_dir = tmp_path / "results" / "tiny"
    with pytest.raises(RuntimeError):
        with run_lock.held(run_dir, "test"):
            raise RuntimeError("boom")
    assert not run_lock.lock_path(run_dir).exists()
    holder = hold_lock_elsewhere(run_dir)
    holder.terminate()
    assert holder.wait(timeout=60) == 128 + signal.SIGTERM
    assert not run_lock.lock_path(run_dir).exists()


@pytest.fixture
def sweep_file(synthetic_sid_root, tmp_path):
    base = write_run_config(tmp_path, synthetic_sid_root, schedule__epochs=1, schedule__iters_per_epoch=1)
    path = tmp_path / "sw.yaml"
    path.write_text(yaml.safe_dump({"base": str(base), "variants": [{"name": "a"}]}))
    return path, tmp_path / "results" / "sw"


def test_1_two_sweeps_over_one_folder_and_a_sweep_beside_a_hand_run_never_share_a_variant(sweep_file, tmp_path,
                                                                                          capsys):
    path, results = sweep_file
    holder = hold_lock_elsewhere(results)  # another sweep over the same folder
    try:
        status, _, stderr = run_here(capsys, "sweep.py", "--config", path, cwd=tmp_path)
        assert_one_line_error(status, stderr, str(results), "in use by holder.py", f"pid {holder.pid}")
    finally:
        holder.kill()
        holder.wait()
    holder = hold_lock_elsewhere(results / "a")  # a hand-started run of variant a
    try:
        status, _, stderr = run_here(capsys, "sweep.py", "--config", path, cwd=tmp_path)
    finally:
        holder.kill()
        holder.wait()
    assert status == 2
    assert "variant a: not run" in stderr and f"pid {holder.pid}" in stderr
    assert not (results / "a" / "metrics.csv").exists()  # the sweep never trained it beside its owner


# ----------------------------------------------------------------------------- 2. enhance never overwrites

def test_2_enhance_keeps_same_named_inputs_apart_and_never_overwrites(plain_weights, synthetic_sid_root, tmp_path,
                                                                     capsys):
    weights, config = plain_weights
    pairs = listed_pairs(synthetic_sid_root)
    for folder, pair in zip(("a", "b"), pairs):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "frame.dng").symlink_to(pair.short_path)
    out = tmp_path / "out"
    flags = ["--checkpoint", weights, "--config", config, "--out", out, "--ratio", "100"]
    status, stdout, stderr = run_here(capsys, "enhance.py", tmp_path / "a", tmp_path / "b", *flags)
    assert status == 0, stderr
    written = {path.relative_to(out) for path in out.rglob("*.png")}
    assert written == {Path("a/frame.png"), Path("b/frame.png")}
    assert (out / "a" / "frame.png").read_bytes() != (out / "b" / "frame.png").read_bytes()  # two images kept
    assert "2 of 2 image(s) written" in stdout
    before = snapshot(out)
    status, stdout, stderr = run_here(capsys, "enhance.py", tmp_path / "a", tmp_path / "b", *flags)
    assert_one_line_error(status, stderr, "frame.png", "already exist", "--overwrite")
    assert snapshot(out) == before
    status, stdout, _ = run_here(capsys, "enhance.py", tmp_path / "a", *flags, "--overwrite")
    assert status == 0 and "1 of 1 image(s) written" in stdout
    # Two inputs that would still meet (same stem, same folder) are refused before any work.
    (tmp_path / "a" / "frame.ARW").symlink_to(pairs[1].short_path)
    status, _, stderr = run_here(capsys, "enhance.py", tmp_path / "a", *flags[:-4], "--out", tmp_path / "new",
                                 "--ratio", "100")
    assert_one_line_error(status, stderr, "frame.ARW", "frame.dng", "would both be written")
    assert not (tmp_path / "new").exists()


# ----------------------------------------------------------------------------- 3. tools/ptq.py checks first

@pytest.mark.parametrize("flag", ["--qat-checkpoint", "--onnx"])
def test_3_ptq_refuses_a_bad_model_flag_before_any_scoring(flag, plain_weights, fresh_data, tmp_path, capsys):
    weights, _ = plain_weights
    config = write_run_config(tmp_path, fresh_data, model__width=WIDTH, quant=True,
                              quant_scheme={"backend": "snpe", "calibration_batches": 1})
    damaged = tmp_path / ("model.onnx" if flag == "--onnx" else "qat.pth")
    damaged.write_bytes(Path(weights).read_bytes()[:5000])  # truncated
    status, _, stderr = run_here(capsys, "tools/ptq.py", "--config", config, "--weights", weights, flag, damaged,
                                 cwd=tmp_path)
    assert_one_line_error(status, stderr, flag, str(damaged))
    assert not (fresh_data / ".decoded_cache").exists()  # nothing was decoded, let alone scored
    assert not (tmp_path / "results").exists()


# ----------------------------------------------------------------------------- 4. artifacts_dir before training

def test_4_unwritable_artifacts_dir_is_named_before_training(fresh_data, tmp_path, capsys):
    blocker = tmp_path / "artifacts"
    blocker.write_text("a file where the weights folder should be")
    config = write_run_config(tmp_path, fresh_data, output__artifacts_dir=str(blocker))
    status, _, stderr = run_here(capsys, "train.py", "--config", config, cwd=tmp_path)
    assert_one_line_error(status, stderr, "output.artifacts_dir", str(blocker), "not writable")
    assert not (tmp_path / "results" / "tiny").exists() and not (fresh_data / ".decoded_cache").exists()


# ----------------------------------------------------------------------------- 5. ratios

@pytest.mark.parametrize("ratio", ["inf", "nan", "0", "-1", "-inf"])
def test_5_enhance_refuses_a_ratio_that_is_not_finite_and_positive(ratio, plain_weights, synthetic_sid_root, tmp_path,
                                                                   capsys):
    weights, config = plain_weights
    pair = listed_pairs(synthetic_sid_root, 1)[0]
    status, _, stderr = run_here(capsys, "enhance.py", pair.short_path, "--checkpoint", weights, "--config", config,
                                 "--out", tmp_path / "out", f"--ratio={ratio}")
    assert_one_line_error(status, stderr, "--ratio", "finite number above 0")
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- 6. --set values

@pytest.mark.parametrize("assignment, expected", [
    ("schedule.epochs=[1,", "--set schedule.epochs: not valid YAML"),
    ("schedule.epochs=!!python/object/apply:os.system ['touch PWNED']", "YAML tags are not accepted"),
    ("schedule.epochs={a: 1, a: 2}", "duplicate key 'a'"),
    ("schedule.epochs.inner=1", "schedule.epochs is a value"),
    ("schedule..epochs=1", "not a dotted config key"),
])
def test_6_malformed_set_value_is_one_line(assignment, expected, fresh_data, tmp_path, capsys):
    config = write_run_config(tmp_path, fresh_data)
    status, _, stderr = run_here(capsys, "train.py", "--config", config, "--set", assignment, cwd=tmp_path)
    assert_one_line_error(status, stderr, expected)
    assert not (tmp_path / "PWNED").exists() and not (tmp_path / "results").exists()


# ----------------------------------------------------------------------------- 7. constant raws

def test_7_constant_input_raw_is_named_at_decode_and_constant_ground_truth_is_an_error(tmp_path, capfd):
    from data.raw_cache import RawCache
    blank = constant_dng(tmp_path / "00001_00_0.1s.dng")
    cache = RawCache(tmp_path / "cache")
    cache.build([blank], [], workers=0)
    assert cache.is_cached(blank, "mosaic")  # used as it is...
    warning = capfd.readouterr().err
    assert f"warning: {blank}: every pixel of this raw is 0" in warning  # ...but named
    ground_truth = constant_dng(tmp_path / "00001_00_10s.dng", value=700)
    with pytest.raises(ValueError, match=f"{ground_truth}: every pixel of this ground-truth raw is 700"):
        cache.build([], [ground_truth], workers=0)
    assert not cache.is_cached(ground_truth, "rgb")


# ----------------------------------------------------------------------------- 8. duplicate YAML keys

def test_8_duplicate_yaml_keys_name_the_key_and_both_lines(fresh_data, tmp_path, capsys):
    base = write_run_config(tmp_path, fresh_data)
    config = tmp_path / "mine.yaml"
    config.write_text(f"config_file_path: {base}\nschedule:\n  epochs: 2\n  iters_per_epoch: 1\n  epochs: 100\n")
    status, _, stderr = run_here(capsys, "train.py", "--config", config, cwd=tmp_path)
    assert_one_line_error(status, stderr, str(config), "duplicate key 'epochs'", "lines 3 and 5")
    sweep = tmp_path / "sw.yaml"
    sweep.write_text(f"base: {base}\ngrid:\n  seed: [0, 1]\n  seed: [2]\n")
    status, _, stderr = run_here(capsys, "sweep.py", "--config", sweep, cwd=tmp_path)
    assert_one_line_error(status, stderr, str(sweep), "duplicate key 'seed'", "lines 3 and 4")


# ----------------------------------------------------------------------------- 9. ptq --bits

@pytest.mark.parametrize("bits", ["1", "17", "0"])
def test_9_ptq_bits_out_of_range_names_the_flag_and_valid_range(bits, plain_weights, fresh_data, tmp_path, capsys):
    weights, _ = plain_weights
    config = write_run_config(tmp_path, fresh_data, model__width=WIDTH, quant=True)
    status, _, stderr = run_here(capsys, "tools/ptq.py", "--config", config, "--weights", weights, "--bits", "8", bits,
                                 cwd=tmp_path)
    assert_one_line_error(status, stderr, f"--bits {bits}", "valid: 2..16")
    assert not (fresh_data / ".decoded_cache").exists()


# ----------------------------------------------------------------------------- 10. non-UTF-8 config

def test_10_non_utf8_config_names_the_file_and_the_encoding(fresh_data, tmp_path, capsys):
    config = write_run_config(tmp_path, fresh_data)
    config.write_bytes(config.read_bytes() + "# résumé\n".encode("latin-1"))
    status, _, stderr = run_here(capsys, "train.py", "--config", config, cwd=tmp_path)
    assert_one_line_error(status, stderr, str(config), "not utf-8 text", "byte 0xe9")


# ----------------------------------------------------------------------------- 11. byte-order marks

def test_11_byte_order_mark_in_list_and_config_files_is_accepted(fresh_data, tmp_path, capsys):
    from data.sid import read_list
    listed = fresh_data / "Sony_test_list.txt"
    plain = read_list(listed, fresh_data)
    listed.write_bytes(b"\xef\xbb\xbf" + listed.read_bytes())
    assert read_list(listed, fresh_data) == plain
    config = write_run_config(tmp_path, fresh_data, schedule__epochs=7)
    config.write_bytes(b"\xef\xbb\xbf" + config.read_bytes())
    status, stdout, stderr = run_here(capsys, "train.py", "--config", config, "--check", cwd=tmp_path)
    assert status == 0, stderr
    assert "checks passed" in stdout and "epochs: 7" in stdout


# ----------------------------------------------------------------------------- 12. enhance hint

def test_12_enhance_on_plain_weights_of_another_width_hints_at_config(plain_weights, synthetic_sid_root, tmp_path,
                                                                     capsys):
    weights, config = plain_weights
    pair = listed_pairs(synthetic_sid_root, 1)[0]
    status, _, stderr = run_here(capsys, "enhance.py", pair.short_path, "--checkpoint", weights, "--out",
                                 tmp_path / "out", "--ratio", "100")
    assert_one_line_error(status, stderr, str(weights), "shape mismatch", "pass --config", "model.width")
    assert not list((tmp_path / "out").glob("*.png"))
    status, _, _ = run_here(capsys, "enhance.py", pair.short_path, "--checkpoint", weights, "--config", config,
                            "--out", tmp_path / "out", "--ratio", "100")
    assert status == 0 and (tmp_path / "out" / f"{pair.short_path.stem}.png").is_file()


# ----------------------------------------------------------------------------- 13. disk full

def test_13_full_disk_says_no_space_left_and_keeps_the_previous_file(tmp_path):
    """A real full filesystem: a 256 KiB tmpfs in a private mount namespace (root, or skipped)."""
    if shutil.which("unshare") is None or subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode:
        pytest.skip("no private mount namespace here (needs root and unshare)")
    mount = tmp_path / "small_disk"
    mount.mkdir()
    program = textwrap.dedent(f"""
        import torch
        from helpers.files import torch_save_atomic
        torch_save_atomic({{"w": torch.zeros(10)}}, {str(mount / 'latest.pth')!r})
        before = open({str(mount / 'latest.pth')!r}, "rb").read()
        try:
            torch_save_atomic({{"w": torch.zeros(200_000)}}, {str(mount / 'latest.pth')!r})
        except OSError as error:
            print(error)
        import os
        print(open({str(mount / 'latest.pth')!r}, "rb").read() == before, sorted(os.listdir({str(mount)!r})))
    """)
    (tmp_path / "fill.py").write_text(program)
    script = f"mount -t tmpfs -o size=256k tmpfs {mount} && exec {sys.executable} {tmp_path / 'fill.py'}"
    result = subprocess.run(["unshare", "-m", "sh", "-c", script], cwd=REPOSITORY_ROOT, capture_output=True,
                            text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(REPOSITORY_ROOT)})
    if "mount:" in result.stderr:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
    assert result.returncode == 0, result.stderr[-2000:]
    message, kept = result.stdout.strip().splitlines()
    assert message.startswith(f"no space left on device: {mount / 'latest.pth'}"), result.stdout + result.stderr
    assert kept == "True ['latest.pth']"  # the previous version intact, no temporary left


# ----------------------------------------------------------------------------- 14. GPU asked for, none present

@pytest.mark.skipif(torch.cuda.is_available(), reason="the fallback happens only without CUDA")
def test_14_requested_gpu_absent_warns_once_and_runs_on_cpu(capsys):
    from harness.config import Config
    from harness.setup import resolve_device
    assert resolve_device(Config.model_validate({"gpu_id": 3})) == torch.device("cpu")
    warning = capsys.readouterr().err.strip().splitlines()
    assert warning == ["warning: gpu_id: 3 asked for, but no CUDA device is present; device: auto runs on the CPU"]
    assert resolve_device(Config.model_validate({})) == torch.device("cpu")  # nothing asked, nothing said
    assert capsys.readouterr().err == ""
