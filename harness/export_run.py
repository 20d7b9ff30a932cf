"""Export a trained run: what tools/export_onnx.py, demo.py and train.py (`onnx: true`) call. It joins the
harness (config, checkpoint) to the deploy/ library, which itself knows nothing of either."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch

from harness.evaluate_run import load_network
from helpers.files import write_text_atomic
from deploy.onnx_export import FASTER_THAN_FP32, export_model
from deploy.onnx_report import REPORT_FILE, write_report

DEPLOYABLE_FILE = "deployable_config.yaml"
# Placements whose QDQ graph leaves convolution outputs unquantized: onnxruntime then runs them in
# float (docs/deployment.md); snpe quantizes every convolution output and pool (quant/deploy_placement.py).
FLOAT_OUTPUT_PLACEMENTS = ("academic", "tensorrt")


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
    size = config.deploy.latency_size
    report = export_model(model, out_dir, opset=opset or config.onnx_export.opset, example_hw=example_hw,
                          source=source, runtimes=config.deploy.runtime, latency_hw=(size, size),
                          latency_runs=config.deploy.latency_runs,
                          wide_activations=config.onnx_export.wide_activations)
    qdq = report.get("deployment", {}).get("qdq")
    if qdq is not None and config.deploy.latency_runs and not qdq.get("faster_than_fp32_in"):
        overrides = nearest_deployable(config)
        if overrides:
            path = write_deployable_config(config, overrides, out_dir / DEPLOYABLE_FILE)
            qdq["nearest_deployable"] = {"overrides": overrides, "config": str(path)}
            write_report(out_dir / REPORT_FILE, report)
    if verbose:
        print(format_summary(report, out_dir))
    return report


def nearest_deployable(config) -> dict:
    """The fewest changes to the run's quant_scheme that give a graph both runtimes execute on
    integer kernels: full-range 8-bit weights and activations (narrower ranges are written as
    Mul -> Clip -> QuantizeLinear, which no runtime fuses; 4-bit weights are dequantized to float)
    and a placement that quantizes convolution outputs (snpe). Special layers stay as they are:
    they run in float, at the ends of the network where the thesis wants them. {} when nothing
    is to change. The bench (bench/onnx_latency.py) times this scheme beside the user's."""
    scheme = config.quant_scheme
    overrides = {}
    if scheme.backend in FLOAT_OUTPUT_PLACEMENTS:
        overrides["quant_scheme.backend"] = "snpe"
    for part in ("weight", "activation"):
        if getattr(scheme, part).bits != 8:
            overrides[f"quant_scheme.{part}.bits"] = 8
    return overrides


def write_deployable_config(config, overrides: dict, path) -> Path:
    """The run's whole config with `overrides` applied, as a YAML file train.py runs as it is."""
    import yaml
    raw = config.model_dump(mode="json")
    for key, value in overrides.items():
        *parents, leaf = key.split(".")
        section = raw
        for name in parents:
            section = section[name]
        section[leaf] = value
    raw["output"]["experiment"] = f"{config.experiment}_deployable"
    header = (f"# The nearest deployable scheme to {config.experiment} (harness/export_run.py: nearest_deployable):\n"
              f"# {', '.join(f'{k}: {v}' for k, v in overrides.items())}; everything else as that run.\n"
              f"# Train it with: python train.py --config {path}\n")
    write_text_atomic(Path(path), header + yaml.safe_dump(raw, sort_keys=False))
    return Path(path)


def _db(value) -> str:
    return value if isinstance(value, str) else f"{value:.1f}"


def format_summary(report: dict, out_dir) -> str:
    lines = []
    for kind, info in report["models"].items():
        checks = info["checks"]
        for runtime, row in checks.get("runtimes", {}).items():
            runs = checks.get(runtime, [])
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
                rescued = [run["rounding"] for run in runs if run.get("rounding", {}).get("explained")]
                if rescued:  # below target on these inputs, but only by amplified rounding flips
                    measure += (f"; below it on {len(rescued)} of {len(runs)} inputs by float rounding alone: "
                                f"{sum(r['elements_flipped'] for r in rescued)} element(s) one step off, each within "
                                f"{max(r['max_tie_distance_steps'] for r in rescued):.1e} steps of a rounding tie "
                                f"(deploy.onnx_verify.rounding_explanation)")
            else:
                worst = max((v for run in runs for v in run["max_abs_err"].values()), default=None)
                measure = f"max abs err vs PyTorch {worst:.2e}" if worst is not None else "not run"
            lines.append(f"{kind} in {runtime} {str(row.get('version', '')).split('-')[0]} ({row.get('precision')}): "
                         f"{measure}, {'passed' if row['passed'] else 'FAILED'}")
        lines.append(f"{kind}: {info['path']} ({info['file_bytes'] / 1e6:.2f} MB, opset {info['opset']}): "
                     f"checker {'ok' if checks['checker']['ok'] else 'FAILED'}, {'passed' if info['passed'] else 'FAILED'}")
    latency = report.get("latency")
    if latency:
        shape = "x".join(map(str, latency["input_shape"]))
        for runtime, models in latency["ms"].items():
            lines.append(f"latency {runtime} ({shape}, median of {latency['runs']} interleaved): " +
                         ", ".join(f"{kind} {row['median_ms']:.1f} ms" for kind, row in models.items()))
    for kind, row in report.get("deployment", {}).items():
        line = f"{kind}: passed in {', '.join(row['passed_in']) or 'no runtime'}"
        if row.get("fastest_passed"):
            line += f"; fastest that passed: {row['fastest_passed']}"
        if "faster_than_fp32_in" in row:
            speedups = ", ".join(f"{name} {value:.2f}x" for name, value in row.get("speedup_vs_fp32", {}).items())
            line += (f"; faster than FP32 (by {FASTER_THAN_FP32:g}x or more) in {', '.join(row['faster_than_fp32_in'])}"
                     if row["faster_than_fp32_in"] else
                     f"; faster than FP32 (by {FASTER_THAN_FP32:g}x or more) in no runtime that passed ({speedups})")
        lines.append(line)
        nearest = row.get("nearest_deployable")
        if nearest:
            lines.append("nearest deployable scheme (8-bit integer kernels in both runtimes): " +
                         ", ".join(f"--set {k}={v}" for k, v in nearest["overrides"].items()) +
                         f"; ready config: {nearest['config']}")
    if report.get("error"):
        lines.append(f"not exported: {report['error']}")
    lines.append(f"report: {Path(out_dir) / REPORT_FILE}")
    return "\n".join(lines)


__all__ = ["export_run", "format_summary", "nearest_deployable", "write_deployable_config"]
