"""Distillation as one object: a frozen full-precision teacher beside the quantized student, taps on
the same named layers of both, and the weighted feature loss. What train.py assembles from
`quant_teacher`, `distill_config`, `distill_coeff` and `distill.feature_loss`, for Python users:

    distillation = Distillation(qmodel, teacher, ["decoder1.act2"], coefficients=0.1)
    outputs = qmodel(x)                      # the student's forward fills its taps
    distill_total, terms = distillation(x)   # runs the teacher on x, compares the taps
    (task_loss + distill_total).backward()
"""
import numbers

import torch

from distill.features import FeatureTaps, check_same_architecture, prepare_teacher
from distill.loss import DistillationLoss


def _device_of(model):
    for tensor in list(model.parameters()) + list(model.buffers()):
        return tensor.device
    return torch.device("cpu")


class Distillation:
    """`student`: an MQBench-prepared model (quant.prepare_quantized_model); `teacher`: the float
    network with the same architecture (traced, put in eval mode and frozen here; keep it a separate
    instance from the one the student was prepared from, whose weights the student shares).
    `layers`: traced layer names (see distill/features.py); `coefficients`: one number for all or one
    per layer; `feature_loss`: 'mse', 'l1' or 'scale_invariant'. Call `remove()` (or use `with`) to
    take the hooks off."""

    def __init__(self, student, teacher, layers, coefficients=0.1, feature_loss="mse", extra_layers=(),
                 after_fake_quantizer=True):
        layers = list(layers)
        if isinstance(coefficients, numbers.Real):
            coefficients = [float(coefficients)] * len(layers)
        self.loss = DistillationLoss(layers, coefficients, feature_loss)  # checks lengths and values first
        self.teacher = prepare_teacher(teacher).to(_device_of(student))
        check_same_architecture(student, self.teacher)
        self.student_taps = FeatureTaps(student, layers, role="student", extra_layer_names=extra_layers,
                                        after_fake_quantizer=after_fake_quantizer)
        self.teacher_taps = FeatureTaps(self.teacher, layers, role="teacher")

    def __call__(self, inputs):
        """(weighted total, {layer: distance}) for the student's last forward, which must have been
        on `inputs`: the teacher runs on them here, without building an autograd graph."""
        if not self.student_taps.outputs:
            raise RuntimeError("distillation: run the student on the batch before calling the distillation")
        with torch.no_grad():
            self.teacher(inputs)
        return self.loss(self.student_taps.outputs, self.teacher_taps.outputs)

    def remove(self):
        self.student_taps.remove()
        self.teacher_taps.remove()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.remove()
        return False
