"""The divergence guard: a loss that explodes stops the run, naming epoch, step and checkpoint."""
import statistics

import pytest
import torch

from harness.divergence import EXPLOSION_FACTOR, MINIMUM_HISTORY, DivergenceGuard
from test_train import run_cli, write_run_config


def test_guard_fires_on_an_exploding_loss_and_names_the_step():
    guard = DivergenceGuard()
    for step, value in enumerate([0.30, 0.25, 0.2, 0.22, 0.18, 0.15, 0.9, 0.14], start=1):
        guard.check(torch.tensor(value), epoch=1, step=step, last_checkpoint=None)  # a 6x spike is no explosion
    with pytest.raises(FloatingPointError) as error:
        guard.check(torch.tensor(3e5), epoch=2, step=17, last_checkpoint=lambda: "run/latest_epoch0001.pth")
    message = str(error.value)
    assert "epoch 2, step 17" in message and "latest_epoch0001.pth" in message and "\n" not in message


def test_guard_waits_for_a_history_before_judging():
    guard = DivergenceGuard()
    for step in range(1, MINIMUM_HISTORY):
        guard.check(torch.tensor(0.01), epoch=1, step=step, last_checkpoint=None)
    # 5000x the losses so far, but too few of them for a median: no verdict, and the value is kept.
    guard.check(torch.tensor(50.0), epoch=1, step=MINIMUM_HISTORY, last_checkpoint=None)
    assert list(guard.recent) == pytest.approx([0.01] * (MINIMUM_HISTORY - 1) + [50.0])
    # Now the history is long enough (median 0.01): the same jump stops the run.
    with pytest.raises(FloatingPointError, match=f"step {MINIMUM_HISTORY + 1}: 50 is more than 100x"):
        guard.check(torch.tensor(50.0), epoch=1, step=MINIMUM_HISTORY + 1, last_checkpoint=None)


def test_guard_threshold_is_exactly_100x_the_running_median():
    guard = DivergenceGuard()
    assert guard.factor == EXPLOSION_FACTOR == 100.0
    for step in range(1, 8):
        guard.check(torch.tensor(1.0), epoch=1, step=step, last_checkpoint=None)
    guard.check(torch.tensor(99.9), epoch=1, step=8, last_checkpoint=None)  # just below: training goes on
    guard.check(torch.tensor(100.0), epoch=1, step=9, last_checkpoint=None)  # at the threshold: still no
    assert statistics.median(guard.recent) == 1.0
    with pytest.raises(FloatingPointError, match="step 10: 100.1 is more than 100x the running median 1"):
        guard.check(torch.tensor(100.1), epoch=1, step=10, last_checkpoint=None)  # just above: stopped


def test_training_run_stops_when_the_loss_explodes(synthetic_sid_root, tmp_path):
    # Epoch 1 trains at lr 1e-3; the step schedule then raises the learning rate to 0.1.
    config_path = write_run_config(tmp_path, synthetic_sid_root, schedule__epochs=3, schedule__iters_per_epoch=6,
                                   schedule__scheduler="step", schedule__step_size=1, schedule__gamma=100)
    result = run_cli("train.py", "--config", config_path, cwd=tmp_path, check=False)
    assert result.returncode == 2, result.stderr[-2000:]
    message = result.stderr.strip().splitlines()[-1]
    assert "loss exploded at epoch 2, step" in message and "latest_epoch0001.pth" in message, message
