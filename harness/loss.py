"""The task loss: the DBF/DBLE authors' objective, L1 on the mono image plus L1 on RGB, end to end
(the mono branch is not detached). Training uses it as it is; the Hessian ranking uses the same
weighted sum with MSE, since L1's curvature is zero almost everywhere."""
import torch.nn.functional as F

from models import split_outputs

DISTANCES = {"l1": F.l1_loss, "mse": F.mse_loss}


def task_loss(outputs, batch, loss_config, distance: str = "l1"):
    """`loss_config` is the config's `loss` section (rgb_weight, mono_weight)."""
    measure = DISTANCES[distance]
    mono, rgb = split_outputs(outputs)
    loss = loss_config.rgb_weight * measure(rgb, batch["rgb"])
    if mono is not None:
        loss = loss + loss_config.mono_weight * measure(mono, batch["mono"])
    return loss
