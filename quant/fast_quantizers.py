"""Sync-free LSQ / LSQ+ fake quantizers with the gradient the LSQ paper defines, on every torch.

The estimator (LSQ, Esser et al. 2020, eq. 1-3; its learnable offset as in LSQ+, Bhalgat et al.
2020), in MQBench's parametrisation with scale s, zero point z and the integer range [qmin, qmax]:

    v = x / s + round(z)                         (the zero point is an integer in the forward)
    q = clamp(round(v), qmin, qmax)  ( = round(clamp(v, qmin, qmax)), the paper's order )
    y = (q - round(z)) * s

    inside = qmin <= v <= qmax                   (the closed clip interval, unrounded v)
    dy/dx  = 1 inside, 0 outside                 (round is straight-through; clip passes inside)
    dy/ds  = q - v inside, q - round(z) outside  (paper eq. 3: -v/s + round(v/s), or the clip bound)
    dy/dz  = 0 inside, -s outside                (round(z) straight-through; LSQ+'s offset gradient)

and the scale and zero-point gradients are multiplied by LSQ's gradient scale g = 1/sqrt(N * qmax)
(N: elements per scale) when `use_grad_scaling` is on. The clip test is on v, as the paper clips
before rounding. A value exactly on a bound counts as inside (clip is the identity there); the paper
leaves that measure-zero case open, except that an exact zero at an affine zero point lands on it.

Why explicit: MQBench's per-channel path gets its gradients from autograd through `torch.clamp`
after `round`, so every value that rounds onto qmin or qmax sits exactly on the clamp bound, and
torch changed clamp's gradient there in 2.14 (1 before, 0 since). ATen's fused per-tensor kernel
tests the rounded value instead of v. Both therefore differ from the definition above in the
half-step bands next to the bounds, the first one differently per torch version. The Functions here
state the estimator in their backward, so the same config trains the same way on torch 2.11-2.15.

Speed: MQBench's LearnableFakeQuantize stalls a GPU three to five times per quantizer per step (its
forward tests `observer_enabled[0]` and `fake_quant_enabled[0]` in Python, clamps the scale with
`eps.item()`, and its per-tensor ATen kernel reads scale and zero point with `.item()`); its
per-channel path is about ten autograd nodes. The class here keeps everything MQBench stores (it
*is* a LearnableFakeQuantize: same parameters, buffers, state-dict keys, per-channel load hook, class
name) and replaces the forward:

* the two flags are read from Python booleans cached against the buffers' version counters, so a
  flag is read from the device once after it changes (enable_observer(), load_state_dict(), a copy_
  into the buffer) and never in a step;
* the scale clamp uses the `eps` tensor; no `.item()` anywhere in the QAT forward or backward;
* the fake quantization is one autograd Function per granularity: the forward computes what
  MQBench's forward computes (the same values, so checkpoints and exports are unchanged), the
  backward is the estimator above.

The math runs in float32 whatever the input dtype (under bf16/fp16 autocast MQBench's ops promote
to float32 too: an 8-bit grid does not survive bf16's 8-bit mantissa); the output is float32 and the
input gradient has the input's dtype. Element-wise ops keep the input's memory format
(channels_last stays channels_last). With the observer on (calibration, `observers_during_qat`) the
forward is MQBench's own, syncs included: observers compute ranges on the host.

`use_fast_quantizers(model)` switches every MQBench LearnableFakeQuantize of a prepared model to this
class in place (quant_scheme.fast_quantizers, default true; false keeps MQBench's class, whose
gradients follow the installed torch: see `mqbench_gradient_note`).
"""
from __future__ import annotations

import warnings
from typing import Optional

import torch
import torch.nn as nn
from mqbench.fake_quantize.lsq import LearnableFakeQuantize as MQBenchLearnableFakeQuantize
from torch.torch_version import TorchVersion

# torch.clamp's gradient at its bounds: 1 up to 2.13, 0 since 2.14 (what MQBench's own LSQ inherits).
CLAMP_BOUND_GRADIENT_CHANGED = TorchVersion(torch.__version__) >= (2, 14)
_warned_mqbench_gradients = False


def _grad_scaled_value(t: torch.Tensor, factor: float) -> torch.Tensor:
    """The forward value of MQBench's grad_scale(t, factor) = (t - t*factor).detach() + t*factor,
    computed the same way (it differs from t by float rounding, and rounding decisions see it)."""
    scaled = t * factor
    return (t - scaled) + scaled


class _PerTensorLSQ(torch.autograd.Function):
    """Per-tensor LSQ with tensor qparams (no host reads): ATen's forward, the estimator's backward.
    Like ATen's kernel it computes in float32 and returns the input's dtype."""

    @staticmethod
    def forward(ctx, x, scale, zero_point, quant_min, quant_max, grad_factor):
        # ATen rounds the zero point half to even and clamps it into the range. The tensor-qparams
        # kernel is the very kernel MQBench's op ends in (one pass; on CUDA it reads scale and zero
        # point in the kernel, no host read).
        zero = torch.clamp(torch.round(zero_point), quant_min, quant_max).to(torch.int32)
        y = torch.fake_quantize_per_tensor_affine(x, scale, zero, quant_min, quant_max)
        # Only x is kept (its storage is shared with whoever else saved it); the rest is recomputed.
        ctx.save_for_backward(x, scale, zero_point)
        ctx.constants = (quant_min, quant_max, grad_factor)
        return y

    @staticmethod
    def backward(ctx, dy):
        x, scale, zero_point = ctx.saved_tensors
        quant_min, quant_max, grad_factor = ctx.constants
        input_dtype, x, dy = x.dtype, x.float(), dy.float()
        zero = torch.clamp(torch.round(zero_point), quant_min, quant_max)
        # v as the forward forms it (x times the reciprocal, as ATen's kernel does).
        v = x * (1.0 / scale) + zero
        dx, dscale, dzero = _lsq_gradients(dy, v, scale, zero, quant_min, quant_max, None)
        return dx.to(input_dtype), dscale.reshape(1) * grad_factor, dzero.reshape(1) * grad_factor, None, None, None


def _lsq_gradients(dy, v, scale, zero, quant_min, quant_max, dims):
    """The estimator's gradients (module docstring) given v = x/s + round(z); sums over `dims`
    (None: all) before the gradient scale."""
    inside = (v >= quant_min) & (v <= quant_max)
    q = torch.clamp(torch.round(v), quant_min, quant_max)
    dx = dy * inside
    per_element = torch.where(inside, q - v, q - zero)
    outside = dy - dx
    if dims is None:
        return dx, (dy * per_element).sum(), -(outside * scale).sum()
    return dx, (dy * per_element).sum(dims, keepdim=True), -(outside * scale).sum(dims, keepdim=True)


class _PerChannelLSQ(torch.autograd.Function):
    """Per-channel LSQ as one node: MQBench's composite forward, the estimator's backward."""

    @staticmethod
    def forward(ctx, x, scale, zero_point, axis, quant_min, quant_max, grad_factor):
        input_dtype = x.dtype
        x = x.float()
        shape = [1] * x.dim()
        shape[axis] = x.shape[axis]
        scale_value = _grad_scaled_value(scale, grad_factor).reshape(shape)
        zero_value = _grad_scaled_value(torch.round(zero_point), grad_factor).reshape(shape)
        v = x / scale_value + zero_value
        y = (torch.clamp(torch.round(v), quant_min, quant_max) - zero_value) * scale_value
        ctx.save_for_backward(v, scale_value, zero_value)
        ctx.constants = (axis, quant_min, quant_max, grad_factor, input_dtype)
        return y

    @staticmethod
    def backward(ctx, dy):
        v, scale_value, zero_value = ctx.saved_tensors
        axis, quant_min, quant_max, grad_factor, input_dtype = ctx.constants
        dims = [d for d in range(v.dim()) if d != axis]
        dx, dscale, dzero = _lsq_gradients(dy.float(), v, scale_value, zero_value, quant_min, quant_max, dims)
        return (dx.to(input_dtype), (dscale * grad_factor).flatten(), (dzero * grad_factor).flatten(),
                None, None, None, None)


def _cached_flag(module: nn.Module, name: str) -> bool:
    """The buffer's value as a bool, read from the device only when the buffer was replaced or
    written in place since the last read (its version counter moved)."""
    tensor = getattr(module, name)
    cache = module.__dict__.setdefault("_flag_cache", {})
    seen = cache.get(name)
    if seen is not None and seen[0] is tensor and seen[1] == tensor._version:
        return seen[2]
    value = bool(tensor[0] == 1)
    cache[name] = (tensor, tensor._version, value)
    return value


FLAGS = ("observer_enabled", "fake_quant_enabled")


def _flag(module: nn.Module, name: str) -> bool:
    """A flag as a Python bool. Inside a torch.compile region reading the buffer (even once after a
    change) breaks the graph at every quantizer, and dynamo then recompiles the quantizer's forward
    for each parameter shape until it hits its recompile limit and runs the rest eagerly. There the
    value `refresh_compiled_flags` read just before the compiled call is used: a constant that dynamo
    guards on, so a changed flag (calibration on/off) recompiles once."""
    if torch.compiler.is_compiling():
        flags = module.__dict__.get("_compiled_flags")
        if flags is not None:
            return flags[name]
    return _cached_flag(module, name)


def refresh_compiled_flags(model: nn.Module) -> None:
    """Read every sync-free quantizer's flags (from the device only where they changed) for the
    compiled forward that follows; harness/speed.py calls it before each compiled call."""
    for module in model.modules():
        if isinstance(module, LearnableFakeQuantize):
            module.__dict__["_compiled_flags"] = {name: _cached_flag(module, name) for name in FLAGS}


# Named like MQBench's class on purpose: quant plans, checkpoints ("class" field) and ONNX export
# messages name the quantizer by type name, and the two are interchangeable.
class LearnableFakeQuantize(MQBenchLearnableFakeQuantize):
    """MQBench's LSQ / LSQ+ quantizer with a sync-free, single-node QAT forward and the LSQ estimator's
    gradients on every torch (module docstring)."""

    def __getstate__(self):
        # Copies (deepcopy, pickle) read their flags afresh: the cache refers to this module's buffers.
        state = self.__dict__.copy()
        state.pop("_flag_cache", None)
        state.pop("_compiled_flags", None)
        return state

    def forward(self, X):
        if _flag(self, "observer_enabled"):
            return super().forward(X)
        # In place on .data, as MQBench does: no autograd version bump on the parameters.
        self.scale.data.abs_().clamp_(min=self.eps)
        if not _flag(self, "fake_quant_enabled"):
            return X
        if self.is_symmetric_quant:
            self.zero_point.data.zero_()
        else:
            self.zero_point.data.clamp_(self.quant_min, self.quant_max)
        if self.is_per_channel:
            grad_factor = 1.0 / (X.numel() / X.shape[self.ch_axis] * self.quant_max) ** 0.5 \
                if self.use_grad_scaling else 1.0
            return _PerChannelLSQ.apply(X, self.scale, self.zero_point, self.ch_axis, self.quant_min,
                                        self.quant_max, grad_factor)
        grad_factor = 1.0 / (X.numel() * self.quant_max) ** 0.5 if self.use_grad_scaling else 1.0
        return _PerTensorLSQ.apply(X, self.scale, self.zero_point, self.quant_min, self.quant_max, grad_factor)


def use_fast_quantizers(model: nn.Module) -> int:
    """Switch every MQBench LearnableFakeQuantize in `model` to the sync-free class, in place (same
    state, nothing copied); returns how many were switched."""
    switched = 0
    for module in model.modules():
        if type(module) is MQBenchLearnableFakeQuantize:
            module.__class__ = LearnableFakeQuantize
            switched += 1
    return switched


def is_fast_quantizer(module: nn.Module) -> bool:
    return isinstance(module, LearnableFakeQuantize)


def mqbench_gradient_note(model: nn.Module) -> Optional[str]:
    """One line saying how MQBench's own LSQ quantizers in `model` differ on this torch, or None.

    Only torch >= 2.14 gets a note: there MQBench's per-channel LSQ gradients (autograd through
    torch.clamp after round) are zero for every value that rounds onto a clip bound, where torch 2.13
    passed them, so the same config trains differently than it did on 2.13."""
    if not CLAMP_BOUND_GRADIENT_CHANGED:
        return None
    if not any(type(module) is MQBenchLearnableFakeQuantize and module.is_per_channel for module in model.modules()):
        return None
    return (f"quant_scheme.fast_quantizers: false on torch {torch.__version__}: MQBench's own LSQ gets its "
            "per-channel gradients from torch.clamp, which since torch 2.14 passes none at the clip bounds, so "
            "this run trains differently from the same config on torch 2.13; fast_quantizers: true follows the "
            "LSQ estimator on every torch (docs/engines.md)")


def warn_mqbench_gradients_once(model: nn.Module) -> None:
    """Warn (once per process) when `model` keeps MQBench's LSQ class on a torch that changed it."""
    global _warned_mqbench_gradients
    note = mqbench_gradient_note(model)
    if note is not None and not _warned_mqbench_gradients:
        _warned_mqbench_gradients = True
        warnings.warn(note, stacklevel=3)
