"""An exported ONNX model run by one of the runtimes of deploy.runtimes behind the torch module
interface, so that the project's tiling (harness.evaluate.predict) and scoring (harness.evaluate.evaluate)
run it unchanged; and the choice of runtime for a model from its export report."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import torch

from deploy.runtimes import check_runtime, open_session

REPORT_NAME = "export_report.json"  # deploy.onnx_export.REPORT_FILE, without importing torch.onnx here


class OnnxNetwork(torch.nn.Module):
    """Calls a CPU session of `runtime` on (B, C, H, W) tensors; returns what the graph returns.

    Channel attention inside the graph cannot be hooked, so tiled prediction must average per tile
    (harness.evaluate.predict with statistics_passes=0); untiled prediction is exact."""

    def __init__(self, path, threads: int = 0, runtime: str = "onnxruntime", precision: Optional[str] = None):
        super().__init__()
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"ONNX model not found: {path}")
        self.session = open_session(path, runtime, threads, precision=precision)
        self.runtime = self.session.info
        self.input_kind = "mosaic" if self.session.input_shape[1] == 1 else "packed"

    def forward(self, x):
        outputs = [torch.from_numpy(o) for o in self.session.run(x.detach().cpu().numpy())]
        return tuple(outputs) if len(outputs) > 1 else outputs[0]


def choose_runtime(model_path, requested: str = "auto") -> tuple[str, str]:
    """(runtime, why) for running `model_path`: `requested` when it names one; for "auto", the
    fastest runtime whose check passed for this model in the export report beside it
    (export_report.json, `deployment`), else onnxruntime."""
    if requested != "auto":
        return check_runtime(requested), "asked for"
    path = Path(model_path)
    report_path = path.parent / REPORT_NAME
    if not report_path.is_file():
        return "onnxruntime", f"no {REPORT_NAME} beside the model to choose from"
    report = json.loads(report_path.read_text())
    kind = next((kind for kind, info in report.get("models", {}).items()
                 if Path(info.get("path", "")).name == path.name), None)
    row = report.get("deployment", {}).get(kind or "", {})
    fastest = row.get("fastest_passed")
    if fastest:
        timed = report.get("latency", {}).get("ms", {}).get(fastest, {}).get(kind, {})
        detail = f", {timed['median_ms']:.1f} ms at {'x'.join(map(str, report['latency']['input_shape']))}" if timed else ""
        return check_runtime(fastest), f"fastest that passed its export check ({report_path}{detail})"
    if kind is None:
        return "onnxruntime", f"{report_path} does not describe {path.name}"
    if row.get("passed_in"):
        return check_runtime(row["passed_in"][0]), f"passed its export check, not timed ({report_path})"
    return "onnxruntime", f"no runtime passed its export check in {report_path}; running it anyway"
