"""The frames and the loss the Hessian measures see (tools/hessian_rank.py, tools/sensitivity.py):
a center crop that keeps the Bayer phase, and the run's task loss with a smooth distance."""
import torch

from harness.loss import task_loss
from models import declared_outputs

CROP_MULTIPLE = 32  # keeps the Bayer phase (even offsets) and the network's size constraint


def ranking_loss(kind, config):
    """Loss of (network outputs, batch) used for the curvature: the task loss with MSE (default) or L1."""
    declared = declared_outputs(config.model.name)
    return lambda outputs, batch: task_loss(outputs, batch, config.loss, distance=kind, declared=declared)


def center_crop(batch, size):
    """Cut a size x size window (in target pixels) from the middle of every image of the batch."""
    if not size:
        return batch
    height, width = batch["rgb"].shape[-2:]
    if size > min(height, width):
        return batch
    top = (height - size) // 2 // CROP_MULTIPLE * CROP_MULTIPLE
    left = (width - size) // 2 // CROP_MULTIPLE * CROP_MULTIPLE
    cropped = dict(batch)
    for key, value in batch.items():
        if torch.is_tensor(value) and value.dim() == 4:
            # Packed inputs are at half the target resolution.
            scale = height // value.shape[-2]
            cropped[key] = value[..., top // scale:(top + size) // scale, left // scale:(left + size) // scale]
    return cropped
