"""Checkpoints in `results/<experiment>/checkpoints/`, in the manner of timm's saver: the latest one
(`latest_epoch0012.pth`) and the best k by validation PSNR (`best_epoch0010_psnr31.42.pth`), every
name carrying its epoch. Each file holds what resume needs: weights (or the quantized state),
optimizer, scheduler, epoch, best-so-far and the RNG states of Python, NumPy and torch."""
import random
import re
from pathlib import Path

import numpy as np
import torch

from core.files import torch_save_atomic

_EPOCH = re.compile(r"_epoch(\d+)")


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def epoch_of(path: Path) -> int:
    match = _EPOCH.search(Path(path).name)
    return int(match.group(1)) if match else -1


class CheckpointSaver:
    def __init__(self, folder, keep_best: int = 1):
        self.folder = Path(folder)
        self.keep_best = keep_best
        self.folder.mkdir(parents=True, exist_ok=True)

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
        torch_save_atomic(payload, path)
        # Older "latest" files go only after the new one is safely on disk.
        for old in self.folder.glob("latest_epoch*.pth"):
            if old != path:
                old.unlink(missing_ok=True)
        return path

    def save_best(self, payload: dict, epoch: int, psnr: float) -> Path:
        path = self.folder / f"best_epoch{epoch:04d}_psnr{psnr:.4f}.pth"
        torch_save_atomic(payload, path)
        for _, old in self._best_files()[self.keep_best:]:
            old.unlink(missing_ok=True)
        return path

    def drop_after(self, epoch: int) -> None:
        """On resume: best files newer than the resumed epoch belong to lost work."""
        for path in self.folder.glob("*_epoch*.pth"):
            if epoch_of(path) > epoch:
                path.unlink(missing_ok=True)
