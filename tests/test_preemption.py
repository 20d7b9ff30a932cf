"""A stop signal (scancel's SIGTERM, Slurm's pre-timeout SIGUSR1) ends training on a checkpoint that
--resume continues exactly; the handlers last only while training runs."""
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from harness import preemption
from harness.distributed import Distributed
from resume_checks import assert_resumed, resume_point
from test_train import REPOSITORY_ROOT, run_cli, write_run_config


def test_sigterm_stops_after_the_epoch_checkpoint_and_resume_matches_an_uninterrupted_run(synthetic_sid_root,
                                                                                          tmp_path):
    reference_dir, stopped_dir = tmp_path / "reference", tmp_path / "stopped"
    for folder in (reference_dir, stopped_dir):
        folder.mkdir()
    reference = write_run_config(reference_dir, synthetic_sid_root, schedule__epochs=2, schedule__iters_per_epoch=2)
    run_cli("train.py", "--config", reference, cwd=reference_dir)

    stopped = write_run_config(stopped_dir, synthetic_sid_root, schedule__epochs=2, schedule__iters_per_epoch=2,
                               output__keep_best=10)
    process = subprocess.Popen([sys.executable, str(REPOSITORY_ROOT / "train.py"), "--config", str(stopped)],
                               cwd=stopped_dir, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    run_dir = stopped_dir / "results" / "tiny"
    deadline = time.time() + 300
    # config.yaml is written once the handlers are in place and before the first epoch starts.
    while not (run_dir / "config.yaml").exists() and time.time() < deadline and process.poll() is None:
        time.sleep(0.02)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 130, stderr[-2000:]
    assert "stopped by SIGTERM; checkpoint" in stderr and "continue with --resume" in stderr
    assert sorted(p.name for p in (run_dir / "checkpoints").glob("latest_*.pth")) == ["latest_epoch0001.pth"]
    assert not (run_dir / "summary.json").exists()

    point = resume_point(run_dir)
    resumed = run_cli("train.py", "--config", stopped, "--resume", cwd=stopped_dir)
    assert point["epoch"] == 1
    assert_resumed(resumed.stdout, run_dir, point)
    final = lambda folder: torch.load(folder / "results" / "tiny" / "checkpoints" / "latest_epoch0002.pth",
                                      weights_only=True)
    a, b = final(reference_dir), final(stopped_dir)
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert (run_dir / "summary.json").exists()


def test_pre_timeout_signal_sets_the_flag_a_second_signal_stops_at_once_and_handlers_are_restored():
    before = signal.getsignal(signal.SIGUSR1)
    with preemption.stop_signals_handled():
        preemption.stop_if_requested("unused", Distributed())  # no signal yet: training goes on
        os.kill(os.getpid(), signal.SIGUSR1)
        with pytest.raises(preemption.Preempted, match="SIGUSR1"):
            preemption.stop_if_requested("latest_epoch0001.pth", Distributed())
        with pytest.raises(preemption.Preempted, match="second SIGTERM"):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)  # the handler runs in the main thread between bytecodes; it raises here
    assert signal.getsignal(signal.SIGUSR1) is before
