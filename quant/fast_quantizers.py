"""Sync-free LSQ / LSQ+ fake quantizers, numerically equal to MQBench's LearnableFakeQuantize.

MQBench's LearnableFakeQuantize stalls a GPU three to five times per quantizer per step: its forward
tests `observer_enabled[0]` and `fake_quant_enabled[0]` in Python and clamps the scale with
`eps.item()`, and the per-tensor ATen kernel it calls (`_fake_quantize_learnable_per_tensor_affine`
and its backward) reads the scale and zero point with `.item()` again. Its per-channel path is a
composite of about ten autograd nodes. The class here keeps everything MQBench stores (it *is* a
LearnableFakeQuantize: same parameters, buffers, state-dict keys, per-channel load hook, class
name), and replaces the forward:

* the two flags are read from Python booleans cached against the buffers' version counters, so a
  flag is read from the device once after it changes (enable_observer(), load_state_dict(), a copy_
  into the buffer) and never in a step;
* the scale clamp uses the `eps` tensor; no `.item()` anywhere in the QAT forward or backward;
* the fake quantization is one autograd Function per granularity with an analytic backward that
  reproduces, operation for operation, what MQBench's path computes: the per-tensor ATen kernel's
  forward (x * (1/s), round half to even, + z, clamp, - z, * s) and gradients, and the per-channel
  composite's forward and the gradients autograd derives for it (including its grad-scale
  arithmetic), so outputs and gradients agree to float rounding of the reductions (tested). On a
  CPU the per-tensor case calls ATen's fused op itself (faster there; a CPU has no device to wait for).

The math runs in float32 whatever the input dtype (under bf16/fp16 autocast MQBench's ops promote
to float32 too: an 8-bit grid does not survive bf16's 8-bit mantissa); the output is float32 and the
input gradient has the input's dtype. Element-wise ops keep the input's memory format
(channels_last stays channels_last). With the observer on (calibration, `observers_during_qat`) the
forward is MQBench's own, syncs included: observers compute ranges on the host.

`use_fast_quantizers(model)` switches every MQBench LearnableFakeQuantize of a prepared model to this
class in place (quant_scheme.fast_quantizers, default true; false keeps MQBench's class).
"""
from __future__ import annotations

import torch
import torch.nn as nn
from mqbench.fake_quantize.lsq import LearnableFakeQuantize as MQBenchLearnableFakeQuantize


# On a CPU, ATen's fused per-tensor forward and backward (two passes) beat the portable Function
# (measured: 31-54 ms against 68-76 ms forward + backward of a 2x32x256x256 activation, one thread), and
# their scalar reads cost nothing there. Tests set this to check the portable path that GPUs run.
PORTABLE_PER_TENSOR_ON_CPU = False


def _grad_scaled_value(t: torch.Tensor, factor: float) -> torch.Tensor:
    """The forward value of MQBench's grad_scale(t, factor) = (t - t*factor).detach() + t*factor,
    computed the same way (it differs from t by float rounding, and rounding decisions see it)."""
    scaled = t * factor
    return (t - scaled) + scaled


class _PerTensorLSQ(torch.autograd.Function):
    """ATen's learnable per-tensor fake quantization with tensor qparams (no host reads). Like ATen's
    kernel it computes in float32 and returns the input's dtype."""

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
        inverse = 1.0 / scale
        # ATen's backward takes the zero point as int(clamp(z + 0.5)), truncated.
        zero = torch.trunc(torch.clamp(zero_point + 0.5, quant_min, quant_max))
        unclamped = torch.round(x * inverse + zero)
        clamped = torch.clamp(unclamped, quant_min, quant_max)
        inside = clamped == unclamped
        dx = dy * inside
        levels = clamped - zero
        # d y / d scale: (y - x) / s inside the range, (q_limit - z) where clamped.
        per_element = torch.where(inside, (levels * scale - x) * inverse, levels)
        dscale = (dy * per_element).sum().reshape(1) * grad_factor
        dzero = (dy - dx).sum().reshape(1) * (-scale * grad_factor)
        return dx.to(input_dtype), dscale, dzero, None, None, None


class _PerChannelLSQ(torch.autograd.Function):
    """MQBench's per-channel LSQ composite as one node, gradients as autograd derives them."""

    @staticmethod
    def forward(ctx, x, scale, zero_point, axis, quant_min, quant_max, grad_factor):
        input_dtype = x.dtype
        x = x.float()
        shape = [1] * x.dim()
        shape[axis] = x.shape[axis]
        scale_value = _grad_scaled_value(scale, grad_factor).reshape(shape)
        zero_value = _grad_scaled_value(torch.round(zero_point), grad_factor).reshape(shape)
        rounded = torch.round(x / scale_value + zero_value)
        y = (torch.clamp(rounded, quant_min, quant_max) - zero_value) * scale_value
        ctx.save_for_backward(x, rounded, scale_value, zero_value)
        ctx.constants = (axis, quant_min, quant_max, grad_factor, input_dtype)
        return y

    @staticmethod
    def backward(ctx, dy):
        x, rounded, scale_value, zero_value = ctx.saved_tensors
        axis, quant_min, quant_max, grad_factor, input_dtype = ctx.constants
        dy = dy.float()
        dims = [d for d in range(x.dim()) if d != axis]
        # y = (clamp(r) - z) * s
        d_clamped = dy * scale_value
        dscale = (dy * (torch.clamp(rounded, quant_min, quant_max) - zero_value)).sum(dims, keepdim=True)
        dzero = -d_clamped.sum(dims, keepdim=True)
        # clamp passes the gradient where qmin <= r <= qmax; round is straight-through.
        dv = d_clamped * ((rounded >= quant_min) & (rounded <= quant_max))
        # v = x / s + z
        dzero = dzero + dv.sum(dims, keepdim=True)
        dscale = dscale + (-dv * ((x / scale_value) / scale_value)).sum(dims, keepdim=True)
        dx = dv / scale_value
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


# Named like MQBench's class on purpose: quant plans, checkpoints ("class" field) and ONNX export
# messages name the quantizer by type name, and the two are interchangeable.
class LearnableFakeQuantize(MQBenchLearnableFakeQuantize):
    """MQBench's LSQ / LSQ+ quantizer with a sync-free, single-node QAT forward (module docstring)."""

    def __getstate__(self):
        # Copies (deepcopy, pickle) read their flags afresh: the cache refers to this module's buffers.
        state = self.__dict__.copy()
        state.pop("_flag_cache", None)
        return state

    def forward(self, X):
        if _cached_flag(self, "observer_enabled"):
            return super().forward(X)
        # In place on .data, as MQBench does: no autograd version bump on the parameters.
        self.scale.data.abs_().clamp_(min=self.eps)
        if not _cached_flag(self, "fake_quant_enabled"):
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
        if X.device.type == "cpu" and not PORTABLE_PER_TENSOR_ON_CPU:
            # ATen's fused kernels (MQBench's own op): its .item() reads are host reads on a CPU.
            return torch._fake_quantize_learnable_per_tensor_affine(X, self.scale, self.zero_point, self.quant_min,
                                                                    self.quant_max, grad_factor)
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
