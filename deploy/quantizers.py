"""What each MQBench fake quantizer of a prepared model means in ONNX QuantizeLinear/DequantizeLinear
(QDQ) terms: its integer range, the ONNX integer type that holds it, its effective scale and zero
point, and whether a QDQ pair reproduces it at all.

Only the quantizer's own attributes are read (scale, zero_point, quant_min, quant_max, ch_axis,
qscheme), never the config that built it, so special layers at other bit widths, input and output
quantizers and quantizers swapped in by hand are handled the same way.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import ml_dtypes  # numpy's int4/uint4 (the package onnx itself uses for them)
import numpy as np
import torch
from torch.ao.quantization import FakeQuantize, FakeQuantizeBase


class ExportError(ValueError):
    """The model cannot be written as a faithful QDQ graph; the message is one line naming the
    quantizer module and its class. A ValueError so command-line entry points print it as such."""


# (name, lowest, highest, bits): the order is the preference when a range fits several types.
_ONNX_TYPES = (("uint8", 0, 255, 8), ("int8", -128, 127, 8),
               ("uint16", 0, 65535, 16), ("int16", -32768, 32767, 16))
# Weights of at most 4 bits are stored in ONNX's 4-bit types (opset 21): half the bytes of int8, and
# onnxruntime dequantizes them like any other. Activations stay 8-bit: onnxruntime has no 4-bit
# kernels for what follows a QuantizeLinear (MaxPool, Concat, ...).
_WEIGHT_4BIT_TYPES = (("uint4", 0, 15, 4), ("int4", -8, 7, 4))
NUMPY_TYPES = {"uint8": np.uint8, "int8": np.int8, "uint16": np.uint16, "int16": np.int16,
               "uint4": ml_dtypes.uint4, "int4": ml_dtypes.int4}


def _mqbench_classes():
    # Imported lazily: the full-precision path must work even where MQBench is absent.
    from mqbench.fake_quantize import (AdaRoundFakeQuantize, DoReFaFakeQuantize, DSQFakeQuantize,
                                       FixedFakeQuantize, LearnableFakeQuantize, NNIEFakeQuantize,
                                       PACTFakeQuantize, QDropFakeQuantize, TqtFakeQuantize)
    return dict(AdaRound=AdaRoundFakeQuantize, DoReFa=DoReFaFakeQuantize, DSQ=DSQFakeQuantize,
                Fixed=FixedFakeQuantize, LSQ=LearnableFakeQuantize, NNIE=NNIEFakeQuantize,
                PACT=PACTFakeQuantize, QDrop=QDropFakeQuantize, TQT=TqtFakeQuantize)


def fake_quantizers(model: torch.nn.Module) -> list[tuple[str, FakeQuantizeBase]]:
    """Every fake quantizer of `model`, outermost first (nested ones, e.g. an observer's, skipped)."""
    found = []
    for name, module in model.named_modules():
        if isinstance(module, FakeQuantizeBase) and not any(name.startswith(f"{n}.") for n, _ in found):
            found.append((name, module))
    return found


def is_weight_quantizer(name: str) -> bool:
    # torch/MQBench QAT modules call `self.weight_fake_quant(self.weight)`; every other quantizer
    # sits on an activation (graph input, post-activation, output).
    return name.rsplit(".", 1)[-1] == "weight_fake_quant"


@dataclass
class QuantSpec:
    name: str
    cls: str
    role: str  # "weight" | "activation"
    enabled: bool
    quant_min: int
    quant_max: int
    bits: int
    per_channel: bool  # the trained scheme
    axis: Optional[int]  # the ONNX axis; None = one scale for the tensor
    scale: np.ndarray  # float32, shape () or (C,)
    zero_point: np.ndarray  # int64 in the quantizer's integer domain, same shape as scale
    dtype: str = ""  # ONNX integer type of the QDQ pair
    offset: int = 0  # integer stored in ONNX = quantizer integer - offset
    clip: bool = False  # [quant_min, quant_max] narrower than `dtype`: a Clip precedes QuantizeLinear
    mismatch: Optional[float] = None  # activations: fraction of elements where QDQ != the quantizer
    rank: Optional[int] = None  # activations: rank of the quantized tensor, once seen

    @property
    def onnx_zero_point(self) -> np.ndarray:
        return (self.zero_point - self.offset).astype(NUMPY_TYPES[self.dtype])

    @property
    def multiply_by_inverse(self) -> bool:
        """Activations whose QDQ pair cannot fuse into onnxruntime's integer kernels anyway (ranges
        narrower than their type, 16-bit types) are written as Mul(x, 1/scale) -> QuantizeLinear(scale 1):
        PyTorch's fake quantizers round x * (1/scale), ONNX's QuantizeLinear rounds x / scale, and the
        two differ on values within a float32 rounding of a tie (about 1e-4 of 10-bit values, each
        then a step apart, and more at larger input sizes). Full-range 8-bit pairs keep the standard
        form that onnxruntime fuses (QLinearConv requantizes in its own arithmetic anyway)."""
        return self.role == "activation" and (self.clip or self.dtype.endswith("16"))

    @property
    def inverse_scale(self) -> np.ndarray:
        # float32 1/scale, as torch's fake-quantize kernels compute it
        return (np.float32(1.0) / self.scale.astype(np.float32)).astype(np.float32)

    def clip_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """The Clip before QuantizeLinear: in integer units after Mul(1/scale), else in real units."""
        if self.multiply_by_inverse:
            return ((self.quant_min - self.zero_point).astype(np.float32),
                    (self.quant_max - self.zero_point).astype(np.float32))
        return self.float_bounds()

    def float_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """The real interval the quantizer maps onto [quant_min, quant_max]."""
        low = ((self.quant_min - self.zero_point).astype(np.float32) * self.scale).astype(np.float32)
        high = ((self.quant_max - self.zero_point).astype(np.float32) * self.scale).astype(np.float32)
        return low, high

    def report(self) -> dict:
        row = {"role": self.role, "class": self.cls, "enabled": self.enabled, "bits": self.bits,
               "quant_min": self.quant_min, "quant_max": self.quant_max,
               "granularity": "per_channel" if self.per_channel else "per_tensor"}
        if self.enabled:
            row.update(dtype=self.dtype, axis=self.axis, channels=int(self.scale.size),
                       clip_before_quantize=self.clip)
            if self.offset:
                row["integer_offset"] = self.offset
            if self.mismatch is not None:
                row["qdq_mismatch_fraction"] = self.mismatch
        return row


def _onnx_type(name: str, cls: str, quant_min: int, quant_max: int, weight: bool = False) -> tuple[str, int, bool]:
    """(type, offset, clip) for an integer range: the smallest ONNX type that holds it (4-bit types
    for weights only), signed when the range is; a range that fits no type as it is gets shifted
    (q - offset, zp - offset), which leaves (q - zp) * scale unchanged."""
    levels = quant_max - quant_min + 1
    prefer_signed = quant_min < 0
    types = _ONNX_TYPES + (_WEIGHT_4BIT_TYPES if weight else ())
    for type_name, low, high, _ in sorted(types, key=lambda t: (t[3], (t[1] < 0) != prefer_signed)):
        if high - low + 1 < levels:
            continue
        offset = 0 if low <= quant_min and quant_max <= high else quant_min - low
        return type_name, offset, (quant_min - offset, quant_max - offset) != (low, high)
    raise ExportError(f"{name} ({cls}): {levels} integer levels need more than 16 bits; "
                      "QuantizeLinear/DequantizeLinear hold at most int16/uint16")


def _effective_qparams(name: str, fq, kinds) -> tuple[torch.Tensor, torch.Tensor]:
    """The scale and (integer) zero point the quantizer's forward actually uses, 1-D."""
    cls = type(fq).__name__
    if not (hasattr(fq, "scale") and hasattr(fq, "zero_point")):
        raise ExportError(f"{name} ({cls}): no scale/zero_point, so no QuantizeLinear/DequantizeLinear equivalent")
    scale = fq.scale.detach().float().flatten().cpu()
    zero_point = fq.zero_point.detach().float().flatten().cpu()
    if scale.numel() == 0:
        raise ExportError(f"{name} ({cls}): empty scale; the quantizer was never calibrated")
    symmetric = fq.qscheme in (torch.per_tensor_symmetric, torch.per_channel_symmetric)
    if isinstance(fq, kinds["LSQ"]):
        # LSQ's forward takes |scale| clamped at eps, and zeroes the zero point when symmetric.
        scale = scale.abs().clamp(min=float(fq.eps.flatten()[0]))
        if symmetric:
            zero_point = torch.zeros_like(zero_point)
    elif isinstance(fq, kinds["TQT"]):
        # TQT rounds the learned scale to a power of two inside its forward.
        value = float(scale[0])
        scale = torch.tensor([1.0 if value < 2 ** -15 else 1.0 / 2 ** math.floor(math.log2(1.0 / value))])
        zero_point = torch.zeros_like(scale)
    zero_point = zero_point.clamp(fq.quant_min, fq.quant_max).round()
    return scale, zero_point


def _check_activation_class(name: str, fq, kinds) -> None:
    cls = type(fq).__name__
    if isinstance(fq, kinds["DoReFa"]):
        raise ExportError(f"{name} ({cls}): DoReFa's data-dependent tanh/max normalisation of an activation "
                          "has no QuantizeLinear/DequantizeLinear equivalent")
    if isinstance(fq, kinds["QDrop"]) and getattr(fq, "prob", 1.0) < 1.0:
        raise ExportError(f"{name} ({cls}): QDrop with prob={fq.prob} keeps random elements unquantized; "
                          "set prob=1.0 before export")
    if isinstance(fq, kinds["AdaRound"]) and getattr(fq, "adaround", False):
        raise ExportError(f"{name} ({cls}): AdaRound's learned rounding applies to weights only")
    supported = (kinds["LSQ"], kinds["Fixed"], kinds["PACT"], kinds["DSQ"], kinds["QDrop"], kinds["TQT"],
                 kinds["AdaRound"], FakeQuantize)
    if not isinstance(fq, supported):
        raise ExportError(f"{name} ({cls}): no QuantizeLinear/DequantizeLinear mapping is known for this "
                          "quantizer class")


def describe(name: str, fq, four_bit_weights: bool = True) -> QuantSpec:
    """The QDQ description of one fake quantizer, or ExportError when none is faithful.
    four_bit_weights False (an opset below 21) stores weights of <= 4 bits as int8/uint8."""
    kinds = _mqbench_classes()
    cls = type(fq).__name__
    role = "weight" if is_weight_quantizer(name) else "activation"
    quant_min, quant_max = int(fq.quant_min), int(fq.quant_max)
    bits = max(1, math.ceil(math.log2(quant_max - quant_min + 1)))
    per_channel = fq.qscheme in (torch.per_channel_affine, torch.per_channel_symmetric,
                                 torch.per_channel_affine_float_qparams)
    enabled = bool(fq.fake_quant_enabled[0])
    spec = QuantSpec(name, cls, role, enabled, quant_min, quant_max, bits, per_channel, None,
                     np.zeros(0, np.float32), np.zeros(0, np.int64))
    if not enabled:
        return spec  # an identity in the PyTorch model, so nothing in the graph either
    if isinstance(fq, kinds["NNIE"]):
        raise ExportError(f"{name} ({cls}): NNIE's logarithmic quantization has no "
                          "QuantizeLinear/DequantizeLinear equivalent")
    if isinstance(fq, kinds["PACT"]) and per_channel:
        raise ExportError(f"{name} ({cls}): PACT is per-tensor only; a per-channel PACT quantizer "
                          "has no faithful QDQ form")
    if role == "activation":
        _check_activation_class(name, fq, kinds)
    scale, zero_point = _effective_qparams(name, fq, kinds)
    if not torch.isfinite(scale).all() or (scale <= 0).any():
        raise ExportError(f"{name} ({cls}): non-positive or non-finite scale")
    if scale.numel() > 1:
        spec.axis = int(fq.ch_axis)
        spec.scale, spec.zero_point = scale.numpy().astype(np.float32), zero_point.numpy().astype(np.int64)
    else:
        # One channel (or an uncalibrated per-channel quantizer): a per-tensor pair is the same thing.
        spec.scale = np.asarray(scale[0].item(), dtype=np.float32)
        spec.zero_point = np.asarray(int(zero_point[0].item()), dtype=np.int64)
    spec.dtype, spec.offset, spec.clip = _onnx_type(name, cls, quant_min, quant_max,
                                                    weight=role == "weight" and four_bit_weights)
    if role == "weight":
        spec.clip = False  # weights are stored as integers already inside [quant_min, quant_max]
    return spec


def _broadcast(values: np.ndarray, axis: Optional[int], rank: int, device) -> torch.Tensor:
    tensor = torch.as_tensor(values, device=device)
    if axis is None or tensor.ndim == 0:
        return tensor
    shape = [1] * rank
    shape[axis % rank] = -1
    return tensor.reshape(shape)


def qdq_reference(x: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """The exported Q/DQ nodes as ONNX defines them (x / scale, or x * (1/scale) in the Mul form;
    round half to even; saturate to the quantizer range), in float32 like onnxruntime."""
    scale = _broadcast(spec.scale, spec.axis, x.ndim, x.device).float()
    zero_point = _broadcast(spec.zero_point, spec.axis, x.ndim, x.device).float()
    if spec.multiply_by_inverse:  # the Mul(1/scale) -> QuantizeLinear(scale 1) form
        scaled = x.float() * _broadcast(spec.inverse_scale, spec.axis, x.ndim, x.device).float()
    else:
        scaled = x.float() / scale
    q = torch.clamp(torch.round(scaled) + zero_point, spec.quant_min, spec.quant_max)
    return (q - zero_point) * scale


def fold_weight(spec: QuantSpec, fake_quantized: torch.Tensor) -> np.ndarray:
    """The integers (ONNX type) whose DequantizeLinear gives back the quantizer's output exactly.

    Reading them off the quantizer's own output (instead of re-quantizing the float weight) makes
    any weight transform before rounding (DoReFa's tanh normalisation, DSQ's soft steps) part of the
    stored integers, and proves the output lies on the integer grid (AdaRound in its soft,
    still-training mode does not, and is refused here)."""
    w = fake_quantized.detach().float().cpu()
    scale = _broadcast(spec.scale, spec.axis, w.ndim, w.device).float()
    zero_point = _broadcast(spec.zero_point, spec.axis, w.ndim, w.device).float()
    q = torch.round(w / scale) + zero_point
    back = (q - zero_point) * scale
    step = scale.abs().max().item()
    error = (back - w).abs().max().item() if w.numel() else 0.0
    if error > 1e-3 * step or q.min() < spec.quant_min or q.max() > spec.quant_max:
        raise ExportError(f"{spec.name} ({spec.cls}): its output is not on the integer grid of its own "
                          f"scale/zero point (off by {error / step:.3g} steps), so no DequantizeLinear reproduces it")
    return (q.to(torch.int64) - spec.offset).numpy().astype(NUMPY_TYPES[spec.dtype])
