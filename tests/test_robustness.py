"""Runs that last days must survive faults: kills at random moments, a diverging loss, an
unwritable results folder."""
import csv
import random
import signal
import subprocess
import sys
import time

import torch

from resume_checks import assert_resumed, resume_point
from test_train import REPOSITORY_ROOT, run_cli, write_run_config


def test_kills_at_random_points_then_resume_end_like_an_uninterrupted_run(synthetic_sid_root, tmp_path):
    reference_dir, killed_dir = tmp_path / "reference", tmp_path / "killed"
    for folder in (reference_dir, killed_dir):
        folder.mkdir()
    settings = dict(schedule__epochs=4, schedule__iters_per_epoch=3)
    reference = write_run_config(reference_dir, synthetic_sid_root, **settings)
    started = time.monotonic()
    run_cli("train.py", "--config", reference, cwd=reference_dir)
    # Kill moments are drawn relative to how long a whole run takes on this machine, so they land
    # inside the run (start-up, an epoch, validation or a checkpoint write) however fast it is.
    whole_run = time.monotonic() - started

    # keep_best: every best checkpoint stays, so each resume can be seen to leave the earlier ones alone.
    killed = write_run_config(killed_dir, synthetic_sid_root, output__keep_best=10, **settings)
    run_dir = killed_dir / "results" / "tiny"
    checkpoints = run_dir / "checkpoints"

    def start(attempt):
        """A training process (resuming when there is a checkpoint) logging to its own file."""
        point = resume_point(run_dir) if list(checkpoints.glob("latest_epoch*.pth")) else None
        log = killed_dir / f"attempt{attempt}.log"
        with log.open("w") as stream:
            process = subprocess.Popen([sys.executable, str(REPOSITORY_ROOT / "train.py"), "--config", str(killed),
                                        "--resume" if point else "--overwrite"],
                                       cwd=killed_dir, stdout=stream, stderr=subprocess.DEVNULL)
        return process, point, log

    # One kill certainly lands after a checkpoint, so the resumes below continue real progress.
    process, _, _ = start(0)
    deadline = time.time() + 300
    while not list(checkpoints.glob("latest_epoch*.pth")) and time.time() < deadline and process.poll() is None:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert list(checkpoints.glob("latest_epoch*.pth")) and not list(checkpoints.glob("latest_epoch0004.pth"))
    kills_after_checkpoint = 1
    # Then kills at random moments (start-up, an epoch, validation or a checkpoint write), each attempt resuming.
    chooser = random.Random(7)
    finishing = None
    for attempt in range(1, 4):
        process, point, log = start(attempt)
        time.sleep(chooser.uniform(0.2, 0.6) * whole_run)
        if process.poll() is not None:
            assert process.returncode == 0, log.read_text()[-2000:]
            finishing = (point, log.read_text())  # this attempt finished before its kill moment
            break
        process.send_signal(signal.SIGKILL)
        process.wait()
        kills_after_checkpoint += 1  # every attempt here started from a checkpoint
    print(f"killed {kills_after_checkpoint} time(s) after a checkpoint; whole run {whole_run:.1f} s")
    assert kills_after_checkpoint >= 1
    if finishing is None:
        point = resume_point(run_dir)
        finishing = (point, run_cli("train.py", "--config", killed, "--resume", cwd=killed_dir).stdout)
    assert_resumed(finishing[1], run_dir, finishing[0])  # the last attempt continued, it did not start over

    final = lambda folder: torch.load(folder / "results" / "tiny" / "checkpoints" / "latest_epoch0004.pth",
                                      weights_only=True)
    a, b = final(reference_dir), final(killed_dir)
    for key in a["model"]:
        assert torch.allclose(a["model"][key], b["model"][key], atol=1e-6), key
    for folder in (reference_dir, killed_dir):
        epochs = [int(r["epoch"]) for r in csv.DictReader((folder / "results" / "tiny" / "metrics.csv").open())]
        assert epochs == [1, 2, 3, 4]
    assert not list(checkpoints.glob(".*.tmp")), "a temporary checkpoint was left behind"


def test_diverging_loss_stops_with_epoch_and_step_and_keeps_last_good_checkpoint(synthetic_sid_root, tmp_path):
    # Epoch 1 trains normally; the step schedule then multiplies the learning rate by 1e15.
    config_path = write_run_config(tmp_path, synthetic_sid_root, schedule__epochs=3, schedule__iters_per_epoch=3,
                                   schedule__scheduler="step", schedule__step_size=1, schedule__gamma=1e15)
    result = run_cli("train.py", "--config", config_path, cwd=tmp_path, check=False)
    assert result.returncode == 2, result.stderr[-2000:]
    message = result.stderr.strip().splitlines()[-1]
    assert "loss is not finite at epoch" in message and "step" in message and "latest_epoch0001.pth" in message
    assert (tmp_path / "results" / "tiny" / "checkpoints" / "latest_epoch0001.pth").exists()


def test_unwritable_results_folder_fails_before_training(synthetic_sid_root, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    config_path = write_run_config(tmp_path, synthetic_sid_root, output__results_dir=str(blocker / "results"))
    result = run_cli("train.py", "--config", config_path, cwd=tmp_path, check=False)
    assert result.returncode == 2
    assert "results folder not writable" in result.stderr and str(blocker) in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
