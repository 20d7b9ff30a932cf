"""The task loss: the DBF/DBLE authors' objective, L1 on the mono image plus L1 on RGB, end to end
(the mono branch is not detached), plus L1 on the denoised packed raw for networks with a raw
output. Training uses it as it is; the Hessian ranking uses the same weighted sum with MSE, since L1's curvature is zero almost everywhere."""
import torch.nn.functional as F

from models.contract import named_outputs

DISTANCES = {"l1": F.l1_loss, "mse": F.mse_loss}


def task_loss(outputs, batch, loss_config, distance: str = "l1", declared=None):
    """`loss_config` is the config's `loss` section (rgb_weight, mono_weight, raw_weight); `declared`
    the network's `outputs` names (models/contract.py; None reads a pair as (mono, rgb)). Each
    supervised output is compared with the batch entry of the same name; ignored ones are not."""
    measure = DISTANCES[distance]
    loss = None
    for name, prediction in named_outputs(outputs, declared).items():
        if name not in batch:
            raise ValueError(f"the network's {name!r} output has no target in the batch (keys: "
                             f"{', '.join(k for k in batch if not k.startswith('_'))}); declare it 'ignore' "
                             "in the network's outputs or give the target")
        term = getattr(loss_config, f"{name}_weight") * measure(prediction, batch[name])
        loss = term if loss is None else loss + term
    return loss
