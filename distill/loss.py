"""Feature distillation loss: the student's named layer outputs pulled toward the teacher's.

Kinds (each averaged over all elements of the layer, batch included):
- `mse` (default): mean squared difference. The standard feature-matching distance (FitNets
  and most QAT distillation work); here the student starts from the teacher's own weights at
  the same width, so both produce features on the same scale and nothing needs normalising.
- `l1`: mean absolute difference; less dominated by a few large activations.
- `scale_invariant`: MSE after dividing each sample's feature map by its own RMS,
  s / rms(s) vs t / rms(t) with rms(f) = sqrt(mean over C,H,W of f^2) (+1e-8). It compares
  the pattern, not the magnitude: it exists for students whose activation scale legitimately
  departs from the teacher's (a clipping quantizer such as PACT, other initialisations), where
  matching raw values would fight the quantizer's range, and it makes terms of layers with very
  different magnitudes comparable, so one coefficient means about the same at every layer.
  Its value lies in [0, 4].
"""
import math
import numbers

import torch
import torch.nn as nn
import torch.nn.functional as F

from helpers.names import nearest

FEATURE_LOSS_KINDS = ("mse", "l1", "scale_invariant")
_RMS_FLOOR = 1e-8  # keeps an all-zero feature map (dead layer) from dividing by zero


def _check_kind(kind):
    if kind not in FEATURE_LOSS_KINDS:
        close = nearest(kind, FEATURE_LOSS_KINDS, count=3, cutoff=0.3)
        raise ValueError(f"distill loss kind {kind!r} is unknown; nearest: {', '.join(close or FEATURE_LOSS_KINDS)}")


def _per_sample_rms_normalised(features):
    flat = features.reshape(features.shape[0], -1)
    rms = flat.pow(2).mean(dim=1, keepdim=True).sqrt() + _RMS_FLOOR
    return flat / rms


def feature_distance(student, teacher, kind="mse"):
    """Scalar distance between a student and a teacher feature tensor of the same shape."""
    _check_kind(kind)
    # Features tapped under bf16/fp16 autocast (speed.mixed_precision) are compared in float32.
    student, teacher = student.float(), teacher.float()
    if kind == "mse":
        return F.mse_loss(student, teacher)
    if kind == "l1":
        return F.l1_loss(student, teacher)
    return F.mse_loss(_per_sample_rms_normalised(student), _per_sample_rms_normalised(teacher))


def _plural(count, word):
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


class DistillationLoss(nn.Module):
    """`total, terms = loss(student_features, teacher_features)` for dicts `{layer name: tensor}`.

    total = sum of coefficient * distance over layers with a nonzero coefficient (a 0-d tensor;
    exactly 0 when every coefficient is 0, so `task_loss + total` equals `task_loss` bit for bit).
    terms = `{name: distance}`, UN-weighted and detached, for logging: comparable across runs
    with different coefficients. Layers with coefficient 0 are left out of `total` altogether
    (no gradient, no arithmetic), but their distance is still reported, computed without
    autograd, so such a layer serves as a monitored-only layer. Teacher features are detached: no
    gradient ever reaches the teacher, frozen or not.
    """

    def __init__(self, layer_names, coefficients, kind="mse"):
        super().__init__()
        layer_names, coefficients = list(layer_names), list(coefficients)
        if len(layer_names) != len(coefficients):
            raise ValueError(f"distill_coeff has {_plural(len(coefficients), 'value')} but distill_config "
                             f"names {_plural(len(layer_names), 'layer')}")
        duplicates = sorted({name for name in layer_names if layer_names.count(name) > 1})
        if duplicates:
            raise ValueError(f"distill_config names {', '.join(duplicates)} more than once")
        for name, value in zip(layer_names, coefficients):
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value < 0:
                raise ValueError(f"distill_coeff for {name}: {value!r} is not a finite number >= 0")
        _check_kind(kind)
        self.layer_names = layer_names
        self.coefficients = [float(value) for value in coefficients]
        self.kind = kind

    def forward(self, student_features, teacher_features):
        total = None
        terms = {}
        for name, coefficient in zip(self.layer_names, self.coefficients):
            student = self._feature(student_features, name, "student")
            teacher = self._feature(teacher_features, name, "teacher").detach()
            if student.shape != teacher.shape:
                raise ValueError(f"distill layer {name}: student output {tuple(student.shape)} but teacher "
                                 f"output {tuple(teacher.shape)}")
            if coefficient == 0.0:
                with torch.no_grad():
                    terms[name] = feature_distance(student, teacher, self.kind)
                continue
            distance = feature_distance(student, teacher, self.kind)
            terms[name] = distance.detach()
            weighted = coefficient * distance
            total = weighted if total is None else total + weighted
        if total is None:
            device = next((t.device for t in student_features.values()), torch.device("cpu"))
            total = torch.zeros((), device=device)
        return total, terms

    @staticmethod
    def _feature(features, name, role):
        if name not in features:
            close = nearest(name, features, count=3)
            raise ValueError(f"{role} features have no layer {name!r} (tap it with FeatureTaps); "
                             f"nearest: {', '.join(close) if close else ', '.join(list(features)[:3]) or 'none tapped'}")
        return features[name]

    def extra_repr(self):
        return f"kind={self.kind}, " + ", ".join(f"{n}={c}" for n, c in zip(self.layer_names, self.coefficients))
