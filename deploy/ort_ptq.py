"""onnxruntime's own post-training static quantization (`quantize_static`) of an exported FP32 model:
the baseline a deployment team would reach for first, used by bench/onnx_latency.py and tools/ptq.py.

It calibrates MinMax ranges on the given inputs and writes a QDQ graph (uint8 activations, int8
weights per output channel by default), which onnxruntime fuses to QLinearConv itself.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Iterable, Optional

import numpy as np

from deploy.onnx_build import INPUT_NAME

# (bits, signed) -> onnxruntime QuantType name; 4-bit activations have no onnxruntime kernels, but
# QDQ with 4-bit types is valid ONNX (opset 21) and runs, so the same bits as a QAT run can be asked.
_TYPES = {(8, False): "QUInt8", (8, True): "QInt8", (16, False): "QUInt16", (16, True): "QInt16",
          (4, False): "QUInt4", (4, True): "QInt4"}


def _quant_type(bits: int, signed: bool, what: str):
    from onnxruntime.quantization import QuantType
    if (bits, signed) not in _TYPES:
        choices = sorted({b for b, _ in _TYPES})
        raise ValueError(f"{what}: onnxruntime quantize_static has no {bits}-bit type; choose one of {choices}")
    return getattr(QuantType, _TYPES[bits, signed])


class _Inputs:
    """onnxruntime's CalibrationDataReader protocol over a list of arrays."""

    def __init__(self, inputs: Iterable[np.ndarray]):
        self._inputs = iter([{INPUT_NAME: np.ascontiguousarray(x, dtype=np.float32)} for x in inputs])

    def get_next(self):
        return next(self._inputs, None)

    def rewind(self):  # part of the protocol; the calibrators here read once
        pass


def quantize_static_onnx(fp32_path, out_path, calibration_inputs: Iterable[np.ndarray], weight_bits: int = 8,
                         activation_bits: int = 8, per_channel: bool = True,
                         method: str = "MinMax", extra_options: Optional[dict] = None) -> Path:
    """onnxruntime `quantize_static` (QDQ format) of `fp32_path` into `out_path`; returns out_path."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    options = {"ActivationSymmetric": False, "WeightSymmetric": True}
    options.update(extra_options or {})
    with tempfile.TemporaryDirectory() as folder:
        # onnxruntime's recommended pre-processing (shape inference, graph clean-up) before quantizing.
        prepared = Path(folder) / "prepared.onnx"
        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
        quantize_static(str(prepared), str(out_path), _Inputs(calibration_inputs), quant_format=QuantFormat.QDQ,
                        per_channel=per_channel, weight_type=_quant_type(weight_bits, True, "weight bits"),
                        activation_type=_quant_type(activation_bits, False, "activation bits"),
                        calibrate_method=getattr(CalibrationMethod, method), extra_options=options)
    return out_path


__all__ = ["quantize_static_onnx"]
