"""Stops a run whose loss explodes, as a non-finite loss does.

A too-large learning rate can send the L1 loss from 0.1 to 1e5 within an epoch while it stays
finite: the run then trains on for hours and ends with a 5 dB network and no message. The guard
compares each step's loss with the median of the recent ones and raises FloatingPointError (which
harness/runner.py reports as one line, exit status 2) naming epoch, step and the last good checkpoint.
The median, not the mean, so that the explosion itself and ordinary noisy batches barely move it.
"""
from __future__ import annotations

import collections
import statistics

import torch

EXPLOSION_FACTOR = 100.0
# Few steps are enough: early in training the loss falls, and an explosion is a rise.
MINIMUM_HISTORY = 5
HISTORY = 200


class DivergenceGuard:
    def __init__(self, factor: float = EXPLOSION_FACTOR, minimum_history: int = MINIMUM_HISTORY, history: int = HISTORY):
        self.factor = factor
        self.minimum_history = minimum_history
        self.recent: collections.deque[float] = collections.deque(maxlen=history)

    def check(self, loss: torch.Tensor | float, epoch: int, step: int, last_checkpoint, ddp=None) -> None:
        """Raises FloatingPointError when `loss` is more than `factor` times the running median.
        With a DDP handle every rank learns whether any rank's loss exploded, so all stop together.
        `last_checkpoint` may be a callable (e.g. CheckpointSaver.latest), called only on failure."""
        value = float(loss.detach() if isinstance(loss, torch.Tensor) else loss)
        median = statistics.median(self.recent) if len(self.recent) >= self.minimum_history else None
        exploded = median is not None and value > self.factor * median
        if ddp is not None and ddp.enabled:
            exploded = not ddp.all_finite(torch.tensor(float("nan") if exploded else 0.0))
        if exploded:
            detail = f"{value:.4g} is more than {self.factor:g}x the running median {median:.4g}" if median else \
                "another process's loss exploded"
            if callable(last_checkpoint):
                last_checkpoint = last_checkpoint()
            raise FloatingPointError(f"loss exploded at epoch {epoch}, step {step}: {detail} (lower optim.lr); "
                                     f"last good checkpoint: {last_checkpoint}")
        self.recent.append(value)
