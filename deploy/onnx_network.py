"""An exported ONNX model run by onnxruntime behind the torch module interface, so that the
project's tiling (core.evaluate.predict) and scoring (core.evaluate.evaluate) run it unchanged."""
from __future__ import annotations

from pathlib import Path

import torch


class OnnxNetwork(torch.nn.Module):
    """Calls an onnxruntime CPU session on (B, C, H, W) tensors; returns what the graph returns.

    Channel attention inside the graph cannot be hooked, so tiled prediction must average per tile
    (core.evaluate.predict with statistics_passes=0); untiled prediction is exact."""

    def __init__(self, path, threads: int = 0):
        super().__init__()
        import onnxruntime as ort
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"ONNX model not found: {path}")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.log_severity_level = 3  # buffer-reuse notices for each new input size are expected
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as error:  # noqa: BLE001 - onnxruntime's pybind errors share no base class
            lines = str(error).strip().splitlines() or [type(error).__name__]
            raise ValueError(f"{path}: not an ONNX model onnxruntime can load ({lines[0]})") from None
        self.input_name = self.session.get_inputs()[0].name
        self.input_kind = "mosaic" if self.session.get_inputs()[0].shape[1] == 1 else "packed"

    def forward(self, x):
        outputs = [torch.from_numpy(o) for o in self.session.run(None, {self.input_name: x.detach().cpu().numpy()})]
        return tuple(outputs) if len(outputs) > 1 else outputs[0]
