"""Checkpoints in `results/<experiment>/checkpoints/`, in the manner of timm's saver: the latest one
(`latest_epoch0012.pth`) and the best k by validation PSNR (`best_epoch0010_psnr31.42.pth`), every
name carrying its epoch. Each file holds what resume needs: weights (or the quantized state),
optimizer, scheduler, epoch, best-so-far and the RNG states of Python, NumPy and torch.

Everything in a checkpoint is a type that `torch.load(weights_only=True)` accepts (tensors, numbers,
strings, lists, tuples, dicts), so resume never needs the unsafe unpickler (checkpoints/safe_load.py)."""
import math
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch

from helpers.files import torch_save_atomic
from checkpoints.safe_load import CheckpointError, load_torch_file

_EPOCH = re.compile(r"_epoch(\d+)")


def rng_state() -> dict:
    # NumPy's state is a tuple holding an ndarray, which the safe loader refuses: store its parts.
    generator, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    state = {"python": random.getstate(),
             "numpy": {"generator": generator, "keys": torch.from_numpy(keys.astype(np.int64)),
                       "position": int(position), "has_gauss": int(has_gauss),
                       "cached_gaussian": float(cached_gaussian)},
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    numpy_state = state["numpy"]
    np.random.set_state((numpy_state["generator"], numpy_state["keys"].numpy().astype(np.uint32),
                         numpy_state["position"], numpy_state["has_gauss"], numpy_state["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def epoch_of(path: Path) -> int:
    match = _EPOCH.search(Path(path).name)
    return int(match.group(1)) if match else -1


def training_payload(*, model_state: dict, quantized: bool, optimizer, scheduler, epoch: int, config: dict,
                     psnr: float, ssim: float, best_psnr: float, best_epoch, grad_scaler=None) -> dict:
    """What one checkpoint holds: enough to evaluate it alone and to resume training exactly."""
    return {"model": model_state, "quantized": quantized, "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "epoch": epoch, "rng": rng_state(), "config": config,
            "psnr": psnr, "ssim": ssim, "best_psnr": best_psnr, "best_epoch": best_epoch,
            "grad_scaler": grad_scaler}


def restore_training(payload: dict, optimizer, scheduler) -> tuple[int, float, int | None]:
    """Puts optimizer, scheduler and RNG back; returns (first epoch to run, best PSNR, best epoch)."""
    optimizer.load_state_dict(payload["optimizer"])
    scheduler.load_state_dict(payload["scheduler"])
    restore_rng_state(payload["rng"])
    best_psnr = payload.get("best_psnr")
    return payload["epoch"] + 1, (-math.inf if best_psnr is None else best_psnr), payload.get("best_epoch")


@dataclass
class TrainState:
    """What the training loop changes, and what a checkpoint must hold to resume it."""
    model: torch.nn.Module          # the student as built (float or quantized): its weights are saved
    network: torch.nn.Module        # what the forward runs: the model behind the DDP / AMP / compile wrappers
    optimizer: torch.optim.Optimizer
    scheduler: Any
    epoch: int = 0                  # the last finished epoch (0: none yet)
    best_psnr: float = -math.inf    # the best validation PSNR so far, and its epoch
    best_epoch: Optional[int] = None

    def restore(self, payload: dict) -> None:
        """Optimizer, scheduler, epoch, best and the RNG states of a training checkpoint."""
        next_epoch, self.best_psnr, self.best_epoch = restore_training(payload, self.optimizer, self.scheduler)
        self.epoch = next_epoch - 1


class CheckpointSaver:
    """The files of one run's checkpoints. Given how to read the model's state (a quantized model has its
    own, quant/state.py), the saver builds each payload from a TrainState itself and keeps the best."""

    def __init__(self, folder, keep_best: int = 1, create: bool = True, *,
                 model_state: Callable[[torch.nn.Module], dict] = lambda model: model.state_dict(),
                 quantized: bool = False, config: Optional[dict] = None,
                 grad_scaler: Callable[[], Optional[dict]] = lambda: None):
        self.folder = Path(folder)
        self.keep_best = keep_best
        self.model_state, self.quantized, self.config, self.grad_scaler = model_state, quantized, config, grad_scaler
        # Stored in every checkpoint saved, beside the payload (e.g. data_cameras: the training data's cameras).
        self.metadata: dict = {}
        if create:
            self.folder.mkdir(parents=True, exist_ok=True)

    def remove_stale_temporaries(self) -> None:
        """A kill during an atomic write leaves `.latest_epochNNNN.pth.XXXX.tmp`; nothing will finish it."""
        for stale in self.folder.glob(".*_epoch*.pth.*.tmp"):
            stale.unlink(missing_ok=True)

    def load_for_resume(self) -> tuple[Path, dict]:
        """The newest intact checkpoint (latest, else best, newest epoch first) and its payload. A damaged
        one (a truncated file after a crash, a disk that filled up) is set aside as `<name>.damaged` and
        the next newest is used, with a note; a file holding objects other than weights stops the run."""
        candidates = sorted(self.folder.glob("*_epoch*.pth"), key=lambda p: (epoch_of(p), p.name.startswith("latest")),
                            reverse=True)
        if not candidates:
            raise CheckpointError(f"--resume: no checkpoint (latest_epoch*.pth or best_epoch*.pth) in {self.folder}")
        for path in candidates:
            try:
                payload = load_torch_file(path, what="resume checkpoint")
            except CheckpointError as error:
                if "holds objects other than weights" in str(error) or "older lowlight-qat" in str(error):
                    raise
                damaged = path.with_name(path.name + ".damaged")
                path.replace(damaged)
                print(f"warning: {error}; kept as {damaged.name}, trying an older checkpoint")
                continue
            if not (isinstance(payload, dict) and {"optimizer", "scheduler", "epoch", "rng"} <= set(payload)):
                raise CheckpointError(f"resume checkpoint {path}: not a training checkpoint of this harness "
                                      "(no optimizer/scheduler/epoch/rng state)")
            return path, payload
        raise CheckpointError(f"--resume: every checkpoint in {self.folder} is damaged (kept as *.damaged); "
                              "start again with --overwrite")

    def latest(self) -> Path | None:
        found = sorted(self.folder.glob("latest_epoch*.pth"), key=epoch_of)
        return found[-1] if found else None

    def best(self) -> Path | None:
        found = self._best_files()
        return found[0][1] if found else None

    def _best_files(self):
        ranked = []
        for path in self.folder.glob("best_epoch*_psnr*.pth"):
            psnr = float(path.stem.rsplit("_psnr", 1)[1])
            ranked.append((-psnr, path))
        return sorted(ranked)

    def save_latest(self, payload: dict, epoch: int) -> Path:
        path = self.folder / f"latest_epoch{epoch:04d}.pth"
        torch_save_atomic({**payload, **self.metadata}, path)
        # Older "latest" files go only after the new one is safely on disk.
        for old in self.folder.glob("latest_epoch*.pth"):
            if old != path:
                old.unlink(missing_ok=True)
        return path

    def save_best(self, payload: dict, epoch: int, psnr: float) -> Path:
        path = self.folder / f"best_epoch{epoch:04d}_psnr{psnr:.4f}.pth"
        torch_save_atomic({**payload, **self.metadata}, path)
        for _, old in self._best_files()[self.keep_best:]:
            old.unlink(missing_ok=True)
        return path

    def payload(self, state: TrainState, psnr: float, ssim: float) -> dict:
        return training_payload(model_state=self.model_state(state.model), quantized=self.quantized,
                                optimizer=state.optimizer, scheduler=state.scheduler, epoch=state.epoch,
                                config=self.config, psnr=psnr, ssim=ssim, best_psnr=state.best_psnr,
                                best_epoch=state.best_epoch, grad_scaler=self.grad_scaler())

    def save_if_best(self, state: TrainState, psnr: float, ssim: float) -> bool:
        """When `psnr` beats the best so far, `state.epoch` becomes the best and is written as such."""
        if math.isnan(psnr) or psnr <= state.best_psnr:
            return False
        state.best_psnr, state.best_epoch = psnr, state.epoch
        self.save_best(self.payload(state, psnr, ssim), state.epoch, psnr)
        return True

    def save_epoch(self, state: TrainState, psnr: float, ssim: float) -> Path:
        """The latest checkpoint, `state` at the end of its epoch."""
        return self.save_latest(self.payload(state, psnr, ssim), state.epoch)

    def drop_after(self, epoch: int) -> None:
        """On resume: best files newer than the resumed epoch belong to lost work."""
        for path in self.folder.glob("*_epoch*.pth"):
            if epoch_of(path) > epoch:
                path.unlink(missing_ok=True)
