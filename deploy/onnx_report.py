"""What an export leaves beside the graphs: one ExportInfo per graph and the JSON report
(export_report.json) with the versions that made it."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import onnx
import torch

from helpers.files import write_text_atomic
from deploy.onnx_build import _publish
from deploy.runtimes import runtime_version

FP_FILE, QDQ_FILE, REPORT_FILE = "model_fp32.onnx", "model_qdq.onnx", "export_report.json"


@dataclass
class ExportInfo:
    kind: str  # "full_precision" | "qdq"
    path: str
    opset: int
    inputs: list
    outputs: list
    dynamic_axes: dict
    shape_rule: str
    file_bytes: int
    checks: dict
    passed: bool
    quantizers: Optional[dict] = None
    notes: list = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def _versions(runtimes: list[str]) -> dict:
    versions = {"torch": torch.__version__, "onnx": onnx.__version__}
    versions.update({runtime: runtime_version(runtime) for runtime in runtimes})
    try:
        from importlib.metadata import version
        versions["mqbench"] = version("mqbench-torch2")
    except Exception:  # noqa: BLE001 - only informative
        pass
    return versions


def write_report(path, report: dict) -> None:
    write_text_atomic(Path(path), json.dumps(report, indent=2, default=str) + "\n")
    _publish(Path(path))
