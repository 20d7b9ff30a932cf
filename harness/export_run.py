"""Export a trained run: what tools/export_onnx.py, demo.py and train.py (`onnx: true`) call. It joins the
harness (config, checkpoint) to the deploy/ library, which itself knows nothing of either."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch

from harness.evaluate_run import load_network
from deploy.onnx_export import export_model
from deploy.onnx_report import REPORT_FILE


def export_run(config, checkpoint_path, out_dir=None, height: Optional[int] = None, width: Optional[int] = None,
               opset: Optional[int] = None, verbose: bool = True) -> dict:
    """Full-precision ONNX (and QDQ ONNX for a quantized checkpoint) plus the report in `out_dir`
    (default onnx/<experiment>). Raises ExportError (one line) after writing the full-precision model
    and the report when a quantizer has no QDQ form.

    The network is rebuilt the way test.py does it (harness.evaluate_run.load_network): a checkpoint
    with 'quantized': True is prepared with the quant_scheme/special_layer/quantize_output stored in
    its own config and loaded with quant.load_quantized_state; anything else loads as float weights.
    """
    out_dir = Path(out_dir) if out_dir is not None else config.artifacts_dir / config.experiment
    model = load_network(config, checkpoint_path, torch.device("cpu"))
    example_hw = (height or config.onnx_export.height, width or config.onnx_export.width)
    source = {"experiment": config.experiment, "checkpoint": str(checkpoint_path),
              "model": config.model.name, "width": config.model.width,
              "kwargs": config.model.kwargs}
    report = export_model(model, out_dir, opset=opset or config.onnx_export.opset, example_hw=example_hw,
                          source=source)
    if verbose:
        print(format_summary(report, out_dir))
    return report


def _db(value) -> str:
    return value if isinstance(value, str) else f"{value:.1f}"


def format_summary(report: dict, out_dir) -> str:
    lines = []
    for kind, info in report["models"].items():
        checks = info["checks"]
        runs = checks.get("onnxruntime", [])
        if kind == "qdq":
            worst = min((v for run in runs for v in run["psnr_db"].values()),
                        key=lambda v: float("inf") if v == "inf" else v, default=None)
            measure = f"min PSNR vs fake-quant PyTorch {_db(worst)} dB (target {checks.get('psnr_target_db')}"
            floor = checks.get("float_noise_floor_db", {})
            lowered = {name: value for name, value in checks.get("effective_target_db", {}).items()
                       if value != checks.get("psnr_target_db")}
            if lowered:  # the model itself moves that much under float rounding (deploy.onnx_verify.float_noise_db)
                measure += ("; lowered to " + ", ".join(f"{name} {_db(value)}" for name, value in lowered.items()) +
                            " by the model's own float noise floor (PyTorch against itself, convolutions summed in another order): " +
                            ", ".join(f"{name} {_db(floor[name])}" for name in lowered))
            measure += ")"
        else:
            worst = max((v for run in runs for v in run["max_abs_err"].values()), default=None)
            measure = f"max abs err vs PyTorch {worst:.2e}" if worst is not None else "not run"
        lines.append(f"{kind}: {info['path']} ({info['file_bytes'] / 1e6:.2f} MB, opset {info['opset']}): "
                     f"checker {'ok' if checks['checker']['ok'] else 'FAILED'}, {measure}, "
                     f"{'passed' if info['passed'] else 'FAILED'}")
    if report.get("error"):
        lines.append(f"not exported: {report['error']}")
    lines.append(f"report: {Path(out_dir) / REPORT_FILE}")
    return "\n".join(lines)


__all__ = ["export_run", "format_summary"]
