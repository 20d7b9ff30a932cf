"""ONNX export of the networks: full precision, and the MQBench fake-quantized model as a standard
QuantizeLinear/DequantizeLinear (QDQ) graph, each checked right after export in every runtime named
(deploy/runtimes.py: onnxruntime, OpenVINO), timed there, and described in a JSON report.

The export itself: build (deploy/onnx_build.py), check (deploy/onnx_verify.py), report
(deploy/onnx_report.py).
"""
from __future__ import annotations

import copy
import datetime
import math
from collections import Counter
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from deploy.quantizers import ExportError, describe, fake_quantizers, fold_weight
from deploy.latency import cpu_description, interleaved
from deploy.runtimes import DEFAULT_PRECISION, normalise_runtimes, open_session
from deploy.transposed_conv import transposed_convs_as_integer_convs
from deploy.onnx_build import (FP_OPSET, INPUT_NAME, QDQ_OPSET_16BIT, SHAPE_RULE, TORCHSCRIPT_MAX_OPSET, example_input,
                               infer_input_kind, measured_shape_rule, required_opset, _ActivationMarker, _as_tuple, _declared, _dynamic_axes,
                               _frozen_quantized_copy, _io, _materialize_qdq, _observe, WIDE_ACTIVATION_FORMS, _opset_21_type, _output_names,
                               _parent, _pin_static_output_dims, _raise_opset, _save_model, _set_opset, _torch_to_onnx,
                               _WeightMarker, _without_quantizers)
from deploy.onnx_report import ExportInfo, FP_FILE, QDQ_FILE, REPORT_FILE, write_report, _versions
from deploy.onnx_verify import (FLOAT_NOISE_MARGIN_DB, MISMATCH_LIMIT, first_divergence, float_noise_db, probe_run,
                                psnr_db, psnr_targets, rounding_explanation, _check_shapes, _checker, _finite,
                                _runtime_row, _session)

# "Faster than FP32" means by at least this ratio of medians: interleaved medians of a few runs on a
# shared CPU move by several percent between two runs of the same model (a thesis export once read
# 1.001x, which is a tie, not a speed-up worth deploying a 4-bit model for).
FASTER_THAN_FP32 = 1.1
DEFAULT_RUNTIMES = None  # every runtime of deploy.runtimes that is installed


# ----------------------------------------------------------------------------- public API

def export_full_precision(model: torch.nn.Module, path, opset: int = FP_OPSET, example_hw=(64, 64),
                          input_kind: Optional[str] = None, check: bool = True,
                          runtimes=DEFAULT_RUNTIMES) -> ExportInfo:
    """The float network as ONNX: input `raw`, outputs `mono` and `rgb` (DBF/DBLE) or `rgb` (U-Net),
    batch, height and width dynamic. A prepared (fake-quantized) model is exported with its
    quantizers removed, i.e. its trained float weights. `runtimes`: each one named runs the check
    (deploy.runtimes: onnxruntime, openvino)."""
    path = Path(path)
    runtimes = normalise_runtimes(runtimes)
    net = _without_quantizers(model)
    kind = infer_input_kind(model, input_kind)
    x = example_input(kind, 1, *example_hw)
    with torch.no_grad():
        outputs = net(x)
    output_names = _output_names(outputs, _declared(model))
    axes = _dynamic_axes(kind, output_names, outputs, x)
    proto = _set_opset(_torch_to_onnx(net, x, opset, output_names, axes), opset)
    _pin_static_output_dims(proto, outputs, axes)
    checks = {"checker": _checker(proto)}
    passed = checks["checker"]["ok"]
    if check:
        samples = []
        for batch, height, width in _check_shapes(example_hw):
            sample = example_input(kind, batch, height, width, seed=1)
            with torch.no_grad():
                samples.append((sample, [t.numpy() for t in _as_tuple(net(sample))]))
        checks["runtimes"] = {}
        for runtime in runtimes:
            session, runs = _session(proto, runtime), []
            for sample, expected in samples:
                got = session.run(sample.numpy())
                errors = {n: float(np.abs(e - g).max()) for n, e, g in zip(output_names, expected, got)}
                tolerance = 1e-4 * max(1.0, max(float(np.abs(e).max()) for e in expected))
                runs.append({"input_shape": list(sample.shape), "max_abs_err": errors, "tolerance": tolerance,
                             "ok": all(v <= tolerance for v in errors.values())})
            checks[runtime] = runs
            checks["runtimes"][runtime] = _runtime_row(session, runs)
        passed = passed and all(row["passed"] for row in checks["runtimes"].values())
    inputs, outputs = _io(proto)
    size = _save_model(proto, path)
    notes = ["exported from a fake-quantized model with its quantizers removed"] if fake_quantizers(model) else []
    return ExportInfo("full_precision", str(path), opset, inputs, outputs, axes, measured_shape_rule(net, kind), size, checks,
                      passed, notes=notes)


def export_qdq(qmodel: torch.nn.Module, path, opset: Optional[int] = None, example_hw=(64, 64),
               input_kind: Optional[str] = None, check: bool = True, psnr_target: float = 40.0,
               runtimes=DEFAULT_RUNTIMES, wide_activations: str = "round") -> ExportInfo:
    """The MQBench-prepared model as a standard QDQ graph (no custom domains), checked against the
    fake-quantized PyTorch model in each of `runtimes` (deploy.runtimes) with the same target.

    opset None: 17, or 21 when any quantizer needs a 16-bit type. wide_activations: how activation
    quantizers held in 16-bit types are written (see _materialize_qdq). Raises ExportError naming the
    first quantizer that has no faithful QDQ form; nothing is written then."""
    if wide_activations not in WIDE_ACTIVATION_FORMS:
        raise ValueError(f"wide_activations {wide_activations!r}: choose one of {', '.join(WIDE_ACTIVATION_FORMS)}")
    path = Path(path)
    runtimes = normalise_runtimes(runtimes)
    kind = infer_input_kind(qmodel, input_kind)
    x = example_input(kind, 1, *example_hw)
    reference = _frozen_quantized_copy(qmodel, x)
    quantizers = fake_quantizers(reference)
    if not quantizers:
        raise ExportError("the model has no fake quantizers; export it with export_full_precision")
    # 4-bit weight types exist from opset 21; an explicitly lower opset stores them as 8-bit.
    four_bit_weights = opset is None or opset >= QDQ_OPSET_16BIT
    specs = [describe(name, fq, four_bit_weights) for name, fq in quantizers]
    needed = required_opset(specs)
    opset = opset or needed
    if opset < 13:
        raise ValueError(f"opset {opset}: QDQ export needs opset 13 or later (per-channel DequantizeLinear)")
    if opset < needed:
        wide = next(s for s in specs if _opset_21_type(s))
        raise ExportError(f"{wide.name} ({wide.cls}): {wide.bits}-bit range needs {wide.dtype} QuantizeLinear/"
                          f"DequantizeLinear, which exist from opset {QDQ_OPSET_16BIT}; asked for opset {opset}")

    reference_outputs, weights = _observe(reference, quantizers, specs, x)
    output_names = _output_names(reference_outputs, _declared(qmodel))
    for spec in specs:
        if spec.mismatch is not None and spec.mismatch > MISMATCH_LIMIT:
            raise ExportError(f"{spec.name} ({spec.cls}): a QuantizeLinear/DequantizeLinear pair with its scale and "
                              f"zero point differs from its output on {spec.mismatch:.2%} of elements")
    folded = {}
    for spec in specs:
        if spec.role == "weight" and spec.name in weights:
            if spec.axis is not None:
                spec.axis %= weights[spec.name].ndim
            folded[spec.name] = fold_weight(spec, weights[spec.name])

    marked = copy.deepcopy(reference)
    by_id = {}
    for qid, spec in enumerate(specs):
        parent, attr = _parent(marked, spec.name)
        if not spec.enabled:
            setattr(parent, attr, torch.nn.Identity())
        elif spec.role == "weight":
            if spec.name in weights:
                setattr(parent, attr, _WeightMarker(qid, weights[spec.name]))
        else:
            setattr(parent, attr, _ActivationMarker(qid))
        by_id[qid] = spec
    axes = _dynamic_axes(kind, output_names, reference_outputs, x)
    proto = _torch_to_onnx(marked, x, opset, output_names, axes, custom_domain=True)
    _materialize_qdq(proto, by_id, folded, wide_activations)
    # The TorchScript exporter's shape inference gives the markers' outputs made-up symbolic dims
    # that wrongly equate different tensors' sizes (every DBF level shared one height symbol);
    # onnxruntime plans buffers by those names and fails ("Shape mismatch attempting to re-use
    # buffer") or reuses buffers wrongly on other input sizes. It infers shapes itself without them.
    del proto.graph.value_info[:]
    as_integer_convs = transposed_convs_as_integer_convs(proto)
    if opset > TORCHSCRIPT_MAX_OPSET:
        _raise_opset(proto, opset)  # the full checker below validates the result
    _pin_static_output_dims(proto, reference_outputs, axes)
    stray = sorted({n.domain for n in proto.graph.node} - {"", "ai.onnx"})
    checks = {"checker": _checker(proto), "custom_domains": stray,
              "node_counts": dict(Counter(n.op_type for n in proto.graph.node
                                          if n.op_type in ("QuantizeLinear", "DequantizeLinear", "Clip", "Max", "Min",
                                                           "Round", "ConvTranspose"))),
              "wide_activations": wide_activations,
              "transposed_convs_as_integer_convs": as_integer_convs}
    passed = checks["checker"]["ok"] and not stray
    if check:
        measured = []  # (input, PyTorch outputs, float noise) per check input, shared by every runtime
        for batch, height, width in _check_shapes(example_hw):
            sample = example_input(kind, batch, height, width, seed=1)
            with torch.no_grad():
                expected = [t.numpy() for t in _as_tuple(reference(sample))]
            measured.append((sample, expected, dict(zip(output_names, float_noise_db(reference, sample, expected)))))
        floor, targets = psnr_targets([noise for _, _, noise in measured], psnr_target)
        checks["runtimes"] = {}
        for runtime in runtimes:
            session, runs = _session(proto, runtime), []
            for sample, expected, noise in measured:
                got = session.run(sample.numpy())
                values = {n: psnr_db(e, g) for n, e, g in zip(output_names, expected, got)}
                run = {"input_shape": list(sample.shape), "psnr_db": {k: _finite(v) for k, v in values.items()},
                       "max_abs_err": {n: float(np.abs(e - g).max()) for n, e, g in zip(output_names, expected, got)},
                       "float_noise_db": {k: _finite(v) for k, v in noise.items()},
                       "met_target": all(values[n] >= targets[n] for n in output_names)}
                if any(v < psnr_target for v in values.values()):
                    _diagnose(run, proto, reference, specs, sample, runtime, psnr_target)
                # A correct graph may miss its target by chance (one rounding flip, amplified): it
                # passes then only where the replay proves float rounding alone.
                run["ok"] = run["met_target"] or run.get("rounding", {}).get("explained", False)
                runs.append(run)
            checks[runtime] = runs
            checks["runtimes"][runtime] = _runtime_row(session, runs)
            checks["runtimes"][runtime]["min_psnr_db"] = _finite(min(
                psnr for run in runs for psnr in (math.inf if v == "inf" else v for v in run["psnr_db"].values())))
        checks["psnr_target_db"] = psnr_target
        checks["float_noise_floor_db"] = {n: _finite(v) for n, v in floor.items()}
        checks["effective_target_db"] = {n: _finite(v) for n, v in targets.items()}
        checks["psnr_reference"] = "the fake-quantized PyTorch model (eval, observers off); peak = its output range"
        checks["psnr_rule"] = (f"each output reaches psnr_target_db against PyTorch; a model whose own output moves "
                               f"further when its convolutions are summed in another order (float_noise_floor_db: "
                               f"PyTorch with oneDNN against PyTorch without) must come within "
                               f"{FLOAT_NOISE_MARGIN_DB:g} dB of that floor instead; the same in every runtime")
        passed = passed and all(row["passed"] for row in checks["runtimes"].values())
    inputs, outputs = _io(proto)
    size = _save_model(proto, path)
    rows = {s.name: s.report() for s in specs}
    dtypes = Counter(s.dtype for s in specs if s.enabled)
    notes = [f"{count} quantizer(s) as {dtype}" for dtype, count in sorted(dtypes.items())]
    if as_integer_convs:
        notes.append(f"{len(as_integer_convs)} transposed convolution(s) written as a 1x1 Conv and an NHWC block "
                     "shuffle (exact; onnxruntime has no integer ConvTranspose): see deploy/transposed_conv.py")
    if any(s.clip for s in specs if s.enabled):
        notes.append("ranges narrower than their ONNX type (e.g. 10 bits in uint16) are held by a float Clip to "
                     "(quant_min - zp) * scale .. (quant_max - zp) * scale just before QuantizeLinear")
    return ExportInfo("qdq", str(path), opset, inputs, outputs, axes, measured_shape_rule(reference, kind), size, checks, passed,
                      quantizers=rows, notes=notes)


def _diagnose(run: dict, proto, reference, specs, sample, runtime: str, psnr_target: float) -> None:
    """For a run below psnr_target: where the runtime first departs from PyTorch and, when the run
    missed its target, whether float rounding alone explains it, both from one probe run. A runtime
    that cannot run the probe graph (extra outputs) leaves {"error": ...} there: the verdict stays
    the target's, and the export still finishes."""
    try:
        probe = probe_run(proto, runtime, sample)
        run["first_divergence"] = first_divergence(proto, reference, specs, sample, runtime, probe)
        if not run["met_target"]:
            run["rounding"] = rounding_explanation(proto, reference, specs, sample, runtime, psnr_target, probe)
    except Exception as error:  # noqa: BLE001 - runtimes raise their own types; the message is the result
        lines = str(error).strip().splitlines() or [type(error).__name__]
        failure = {"error": f"{type(error).__name__}: {lines[0]}"}
        run.setdefault("first_divergence", failure)
        if not run["met_target"]:
            run.setdefault("rounding", failure)


def measure_latency(paths: dict, kind: str, runtimes: list[str], hw=(256, 256), runs: int = 5,
                    threads: int = 0) -> dict:
    """Median/min milliseconds of each exported model (`paths`: model kind -> file) in each runtime,
    all sessions interleaved in one loop (deploy.latency), on one input of `hw`."""
    x = example_input(kind, 1, *hw, seed=2).numpy()
    keys = [(runtime, model) for runtime in runtimes for model in paths]
    sessions = [open_session(paths[model], runtime, threads, precision=DEFAULT_PRECISION) for runtime, model in keys]
    timed = interleaved(sessions, x, runs)
    table = {runtime: {} for runtime in runtimes}
    for (runtime, model), row in zip(keys, timed):
        table[runtime][model] = row
    return {"input_shape": list(x.shape), "runs": runs, "threads": threads or "runtime default",
            "precision": DEFAULT_PRECISION, "cpu": cpu_description(), "ms": table,
            "how": "every model in every runtime once per round, rounds interleaved (deploy/latency.py)"}


def deployment_summary(report: dict) -> dict:
    """Per exported model: the runtimes whose check passed, the fastest of them (from the report's
    latency, when measured), and for the QDQ model the runtimes where it ran faster than the
    full-precision model in that same runtime."""
    latency = report.get("latency", {}).get("ms", {})
    summary = {}
    for kind, info in report["models"].items():
        passed = [name for name, row in info["checks"].get("runtimes", {}).items() if row["passed"]]
        timed = {name: latency[name][kind]["median_ms"] for name in passed if kind in latency.get(name, {})}
        row = {"passed_in": passed, "fastest_passed": min(timed, key=timed.get) if timed else None}
        if kind == "qdq" and latency:
            row["speedup_vs_fp32"] = {name: round(latency[name]["full_precision"]["median_ms"] /
                                                  latency[name]["qdq"]["median_ms"], 3)
                                      for name in latency if {"qdq", "full_precision"} <= set(latency[name])}
            row["faster_than_fp32_in"] = [name for name in passed
                                          if row["speedup_vs_fp32"].get(name, 0.0) >= FASTER_THAN_FP32]
        summary[kind] = row
    return summary


def export_model(model: torch.nn.Module, out_dir, *, quantized: Optional[bool] = None, opset: Optional[int] = None,
                 example_hw=(64, 64), input_kind: Optional[str] = None, psnr_target: float = 40.0,
                 source: Optional[dict] = None, runtimes=DEFAULT_RUNTIMES, latency_hw=(256, 256),
                 latency_runs: int = 5, wide_activations: str = "round") -> dict:
    """Full precision, then (for a fake-quantized model) QDQ, each checked in every runtime of
    `runtimes`, then their latency in each runtime (`latency_runs` interleaved rounds on one
    `latency_hw` input; 0 skips it), then the report beside them in `out_dir`.

    An unexportable quantizer raises ExportError only after the full-precision model and the report
    (with the error in it) are written. Failed numeric checks do not raise: report['passed'] is False."""
    out_dir = Path(out_dir)
    runtimes = normalise_runtimes(runtimes)
    quantized = bool(fake_quantizers(model)) if quantized is None else quantized
    kind = infer_input_kind(model, input_kind)
    example_input(kind, 1, *example_hw)  # a bad size fails here, before any file is touched
    if latency_runs:
        example_input(kind, 1, *latency_hw)
    report = {"created": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
              "versions": _versions(runtimes), "source": source or {}, "input_kind": kind,
              "example_hw": list(example_hw), "runtimes": runtimes, "models": {}, "error": None}
    error = None
    try:
        fp = export_full_precision(model, out_dir / FP_FILE, opset or FP_OPSET, example_hw, input_kind,
                                   runtimes=runtimes)
        report["models"]["full_precision"] = fp.to_dict()
        if quantized:
            try:
                qdq = export_qdq(model, out_dir / QDQ_FILE, opset, example_hw, input_kind, psnr_target=psnr_target,
                                 runtimes=runtimes, wide_activations=wide_activations)
                report["models"]["qdq"] = qdq.to_dict()
            except ExportError as failure:
                error = failure
        if latency_runs:
            report["latency"] = measure_latency({k: Path(m["path"]) for k, m in report["models"].items()}, kind,
                                                runtimes, latency_hw, latency_runs)
        report["deployment"] = deployment_summary(report)
    except BaseException as failure:
        error = failure
        raise
    finally:
        if error is not None:
            report["error"] = f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}"
        report["passed"] = error is None and all(m["passed"] for m in report["models"].values())
        write_report(out_dir / REPORT_FILE, report)
    if error is not None:
        raise error
    return report
