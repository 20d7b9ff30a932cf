"""The `speed` config section and `deterministic: true`: mixed precision, channels_last, torch.compile,
and reproducible CUDA kernels, for full-precision and QAT runs. train.py calls three things:

    speed = Speed(config, device)             # before any CUDA work: determinism settings
    model = speed.prepare(model)              # channels_last weights, deterministic pooling
    network = speed.wrap(network)             # forward under autocast, channels_last, compiled
    speed.backward(loss); speed.step(optimizer, model.parameters(), grad_clip)

What runs in which precision with `mixed_precision: bf16 | fp16`: convolutions and matrix products
in the reduced type (torch.autocast's lists); the network outputs are cast to float32, so the task
loss, the distillation loss on top of float32 outputs, the optimizer and the weights stay float32.
Fake quantizers compute in float32 (LSQ in quant/fast_quantizers.py explicitly; MQBench's other
quantizers by type promotion against their float32 scales) and an 8-bit grid is therefore exact
before the next convolution casts it. Validation and test run in float32 on the plain model.
fp16 scales the loss with torch.amp.GradScaler (its state goes into checkpoints); bf16 needs none.
"""
from __future__ import annotations

import contextlib
import os
from typing import Optional

import torch
import torch.nn as nn

from harness.config import ConfigError
from quant.fast_quantizers import refresh_compiled_flags

REDUCED_TYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
# cuBLAS picks reduction splits at run time unless given a fixed workspace (CUDA docs, "Results
# reproducibility"); ":4096:8" is the setting they name, costing about 24 MiB of GPU memory.
CUBLAS_WORKSPACE = ":4096:8"


def _to_float32(outputs):
    if torch.is_tensor(outputs):
        return outputs.float() if outputs.is_floating_point() else outputs
    if isinstance(outputs, (tuple, list)):
        return type(outputs)(_to_float32(o) for o in outputs)
    if isinstance(outputs, dict):
        return {k: _to_float32(v) for k, v in outputs.items()}
    return outputs


class _FastForward(nn.Module):
    """Runs the wrapped network under autocast with channels_last inputs; float32 outputs."""

    def __init__(self, network: nn.Module, device_type: str, dtype: Optional[torch.dtype], channels_last: bool):
        super().__init__()
        self.network = network
        self.device_type = device_type
        self.dtype = dtype
        self.channels_last = channels_last

    def forward(self, x):
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        context = torch.autocast(self.device_type, dtype=self.dtype) if self.dtype is not None \
            else contextlib.nullcontext()
        with context:
            outputs = self.network(x)
        return _to_float32(outputs)


class _CompiledForward(nn.Module):
    """torch.compile of `network`, with the quantizers' flags read eagerly before each call, so the
    compiled region has no device reads in it (quant/fast_quantizers.py: refresh_compiled_flags)."""

    def __init__(self, network: nn.Module):
        super().__init__()
        self.compiled = torch.compile(network)
        self.network = network

    def forward(self, x):
        refresh_compiled_flags(self.network)
        return self.compiled(x)


class Speed:
    def __init__(self, config, device: torch.device):
        self.settings = settings = config.speed
        self.deterministic = config.deterministic
        self.device = torch.device(device)
        if self.deterministic:
            make_deterministic()
        self.dtype = REDUCED_TYPES.get(settings.mixed_precision)
        if self.dtype is torch.float16 and self.device.type != "cuda":
            raise ConfigError("speed.mixed_precision: fp16 needs a CUDA device (CPU autocast computes in bf16); "
                              "use bf16 or none")
        # A disabled scaler passes everything through, so one code path serves all precisions.
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.dtype is torch.float16)

    @property
    def active(self) -> bool:
        return self.dtype is not None or self.settings.channels_last or self.settings.compile

    def prepare(self, model: nn.Module) -> nn.Module:
        """channels_last weights, in place (the model keeps its parameter objects, so optimizer groups
        built before or after hold), and deterministic pooling under `deterministic: true`."""
        if self.settings.channels_last:
            model.to(memory_format=torch.channels_last)
        if self.deterministic:
            use_deterministic_pooling(model)
        return model

    def wrap(self, network: nn.Module) -> nn.Module:
        """The module train.py calls forward on (after any DDP wrapper): autocast, channels_last, compile."""
        if not self.active:
            return network
        wrapped = _FastForward(network, self.device.type, self.dtype, self.settings.channels_last)
        return _CompiledForward(wrapped) if self.settings.compile else wrapped

    def backward(self, loss: torch.Tensor) -> None:
        self.scaler.scale(loss).backward()

    def step(self, optimizer: torch.optim.Optimizer, parameters, grad_clip: Optional[float]) -> None:
        """Optimizer step; with fp16 the gradients are unscaled before clipping, and a step whose
        gradients overflowed is skipped (the scale then shrinks)."""
        if grad_clip:
            self.scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(parameters, grad_clip)
        self.scaler.step(optimizer)
        self.scaler.update()

    def state_dict(self) -> dict:
        return self.scaler.state_dict()

    def load_state_dict(self, state: Optional[dict]) -> None:
        if state:
            self.scaler.load_state_dict(state)


# ----------------------------------------------------------------------------- determinism

class DeterministicGlobalAveragePool(nn.AdaptiveAvgPool2d):
    """AdaptiveAvgPool2d(1) as a mean: CUDA's adaptive-pool backward adds with atomics and has no
    deterministic variant (use_deterministic_algorithms refuses it); a mean's backward is a broadcast.
    Still an AdaptiveAvgPool2d, so tiled evaluation finds it."""

    def forward(self, x):
        return x.mean(dim=(-2, -1), keepdim=True)


def make_deterministic() -> None:
    """`deterministic: true`: deterministic cuDNN/cuBLAS kernels and algorithms, no autotuning; an op
    with no deterministic version then raises instead of silently varying. Call before the first CUDA
    matrix product (cuBLAS reads its workspace setting once)."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    torch.use_deterministic_algorithms(True)


def use_deterministic_pooling(model: nn.Module) -> int:
    """Global AdaptiveAvgPool2d modules become DeterministicGlobalAveragePool, in place."""
    switched = 0
    for module in model.modules():
        if type(module) is nn.AdaptiveAvgPool2d and module.output_size in (1, (1, 1)):
            module.__class__ = DeterministicGlobalAveragePool
            switched += 1
    return switched
