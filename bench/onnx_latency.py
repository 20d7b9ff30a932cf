"""CPU latency of the exported networks in each runtime (onnxruntime, OpenVINO), full width, one
512x512 mosaic, 2 threads, median of interleaved runs: FP32 (OpenVINO also in bf16 where the CPU
has bf16 instructions); the harness's W8A8 QDQ export for each MQBench placement
(`quant_scheme.backend`: academic, onnx_qnn, snpe, tensorrt); academic with the user's 10-bit special
layers; the user's thesis scheme (W4A4 + 10-bit special layers, academic) and its nearest deployable
scheme (harness/export_run.py: nearest_deployable, snpe W8A8 + the same 10-bit layers); and onnxruntime's
own static PTQ (`quantize_static`, QDQ, per channel) of the same FP32 model.

    python bench/onnx_latency.py [--size 512] [--runs 10] [--threads 2] [--width 1.0] [--weights PATH]
                                 [--backends academic onnx_qnn snpe tensorrt] [--runtimes onnxruntime openvino]
                                 [--out DIR] [--json PATH] [--profile] [--full-frame]

Every model runs in every runtime inside one loop, one run of each in turn, so that load from other
users of a shared machine falls on all alike; compare rows of one run only. The CPU's model name
and instruction-set flags are printed with the table. Each QDQ export is checked against the
fake-quantized PyTorch model in every runtime (the export check, deploy/onnx_export.py), and the
table says how each runtime ran it: onnxruntime's executed graph (SessionOptions.optimized_model_filepath)
counted as fused integer kernels or float Conv; OpenVINO's per-layer performance counters counted by
execution type (convolutions that ran I8, bf16 or f32, and the op types where the time went).
`agree` is the PSNR of OpenVINO's output against onnxruntime's on the timing input.
Weights are random (the same for every row: one network) unless --weights names full-precision weights;
latency does not depend on them. --json also keeps each QDQ export's check, every run in every runtime.
--profile adds, per model, onnxruntime's kernel time per op type. --full-frame adds one run per
runtime at 4256x2848 (a full Sony frame, no tiling) of FP32 and the W8A8 export fastest in that
runtime (and FP32 in OpenVINO bf16), one session at a time (not interleaved: compare them loosely): slow, and several GB per session.
"""
import argparse
import json
import sys
import tempfile
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
import yaml
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from deploy import export_full_precision, export_qdq, psnr_db  # noqa: E402
from deploy.latency import cpu_description, interleaved  # noqa: E402
from deploy.onnx_export import FASTER_THAN_FP32  # noqa: E402
from deploy.ort_ptq import quantize_static_onnx  # noqa: E402
from deploy.runtimes import normalise_runtimes, open_session, runtime_version  # noqa: E402
from models import build_model  # noqa: E402

SCHEME_W8A8 = {
    "weight": {"quantizer": "lsq", "bits": 8, "symmetric": True, "per_channel": True},
    "activation": {"quantizer": "lsq", "bits": 8, "symmetric": False, "per_channel": False},
    "calibration_batches": 2,
}
SCHEME_THESIS = {  # configfile/aba_config.yaml: the user's W4A4 LSQ
    "weight": {"quantizer": "lsq", "bits": 4, "symmetric": True, "per_channel": True},
    "activation": {"quantizer": "lsq", "bits": 4, "symmetric": False, "per_channel": False},
    "calibration_batches": 2,
}
SEED_CONFIG = Path(__file__).resolve().parents[1] / "configfile" / "seed_aba.yaml"
INTEGER_KERNELS = ("QLinearConv", "QLinearConvTranspose", "ConvInteger", "QLinearAdd", "QLinearMul",
                   "QLinearLeakyRelu", "QLinearSigmoid", "QLinearConcat", "QLinearAveragePool",
                   "QLinearGlobalAveragePool")


def calibration_inputs(count=2, size=128):
    generator = torch.Generator().manual_seed(0)
    return [torch.rand(1, 1, size, size, generator=generator) for _ in range(count)]


def quantized(model, special, backend="academic", scheme=None):
    from quant import calibrate, prepare_quantized_model
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        qmodel = prepare_quantized_model(model, {**(scheme or SCHEME_W8A8), "backend": backend}, special)
    calibrate(qmodel, calibration_inputs())
    return qmodel.eval()


def session(path, threads, optimized_path=None, profile_prefix=None):
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # buffer-reuse notices for each new input size drown the table
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if optimized_path:
        options.optimized_model_filepath = str(optimized_path)
    if profile_prefix:
        options.enable_profiling = True
        options.profile_file_prefix = str(profile_prefix)
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def kernel_time_by_op(path, size, threads, folder, runs=3) -> dict:
    """Milliseconds of kernel time per op type per run, from onnxruntime's own profiler."""
    sess = session(path, threads, profile_prefix=Path(folder) / f"profile_{Path(path).stem}")
    x = np.random.default_rng(0).random((1, 1, size, size), dtype=np.float32)
    sess.run(None, {"raw": x})  # the first run allocates and picks kernels: not part of the picture
    for _ in range(runs):
        sess.run(None, {"raw": x})
    events = json.loads(Path(sess.end_profiling()).read_text())
    first_run = min((e for e in events if e.get("name") == "model_run"), key=lambda e: e["ts"], default=None)
    skip = first_run["ts"] + first_run["dur"] if first_run else 0
    totals = Counter()
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time") and event["ts"] >= skip:
            totals[event["args"]["op_name"]] += event["dur"]
    return {op: microseconds / runs / 1000 for op, microseconds in totals.most_common()}


def executed_graph(path, threads, folder):
    """Op counts of the graph onnxruntime runs after its optimizations."""
    optimized = Path(folder) / f"{Path(path).stem}.optimized.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        session(path, threads, optimized)
    model = onnx.load(str(optimized), load_external_data=False)
    return Counter(node.op_type for node in model.graph.node)


def integer_convs(ops: Counter) -> int:
    return sum(n for op, n in ops.items() if op in ("QLinearConv", "QLinearConvTranspose", "ConvInteger"))


def describe_execution(ops: Counter) -> str:
    fused = {op: n for op, n in ops.items() if op in INTEGER_KERNELS}
    float_convs = sum(n for op, n in ops.items() if op in ("Conv", "FusedConv", "ConvTranspose", "NchwcConv"))
    parts = [", ".join(f"{op} x{n}" for op, n in sorted(fused.items())) or "no integer kernels"]
    parts.append(f"float conv x{float_convs}")
    parts.append(f"Q/DQ left x{ops.get('QuantizeLinear', 0) + ops.get('DequantizeLinear', 0)}")
    return "; ".join(parts)



def _precision_of(exec_type: str) -> str:
    tail = exec_type.rsplit("_", 1)[-1].lower()
    return {"i8": "int8", "u8": "int8", "bf16": "bf16", "f32": "f32", "f16": "f16"}.get(tail, tail)


def openvino_execution(path, threads, size, precision) -> dict:
    """How OpenVINO's CPU plugin ran a model: convolutions per execution precision, and the op types
    (with their precision) that took the most time in one run, from its performance counters."""
    sess = open_session(path, "openvino", threads, precision=precision, profile=True)
    x = np.random.default_rng(0).random((1, 1, size, size), dtype=np.float32)
    sess.run(x)
    sess.run(x)
    convs, time_by = Counter(), Counter()
    for row in sess.profile():
        kind = _precision_of(row["exec_type"])
        if "Convolution" in row["type"] or "Deconvolution" in row["type"]:
            convs[kind] += 1
        time_by[f"{row['type']} {row['exec_type']}"] += row["ms"]
    return {"convs": dict(convs), "ms_by_op": {op: round(ms, 2) for op, ms in time_by.most_common(6)}}


def describe_openvino(execution: dict) -> str:
    convs = ", ".join(f"{kind} x{n}" for kind, n in sorted(execution["convs"].items()))
    top = ", ".join(f"{op} {ms:.0f}" for op, ms in list(execution["ms_by_op"].items())[:3])
    return f"conv {convs}; ms: {top}"


def has_bf16(cpu: dict) -> bool:
    return any(flag in cpu["flags"] for flag in ("avx512_bf16", "amx_bf16"))


def _ratio(a, b) -> str:
    return f"{a / b:.2f}x"


def targets(rows: list, runtimes: list) -> list[str]:
    """The issue's targets, each with its measured ratio and whether it was met."""
    def find(model, runtime):
        return next((r for r in rows if r["model"] == model and r["runtime"] == runtime), None)
    lines = []
    fp_ort, snpe_ort = find("fp32", "onnxruntime f32"), find("harness QDQ w8a8, snpe", "onnxruntime f32")
    ptq_ort = find("onnxruntime quantize_static w8a8", "onnxruntime f32")
    if fp_ort and snpe_ort:
        ratio = fp_ort["median_ms"] / snpe_ort["median_ms"]
        lines.append(f"onnxruntime snpe INT8 >= 2x onnxruntime FP32: {ratio:.2f}x, "
                     f"{'met' if ratio >= 2 else 'NOT met'}")
    if ptq_ort and snpe_ort:
        ratio = ptq_ort["median_ms"] / snpe_ort["median_ms"]
        lines.append(f"onnxruntime snpe INT8 at least as fast as quantize_static: {ratio:.2f}x, "
                     f"{'met' if ratio >= 1 else 'NOT met'}")
    if "openvino" in runtimes:
        int8 = [r for r in rows if r["runtime"] == "openvino f32" and r["model"].startswith("harness QDQ w8a8,")
                and r["passed"] is True]
        best = min(int8, key=lambda r: r["median_ms"], default=None)
        for reference in ("openvino bf16", "openvino f32"):
            fp = find("fp32", reference)
            if best and fp:
                ratio = fp["median_ms"] / best["median_ms"]
                goal = 1.5 if reference.endswith("bf16") else 1.0
                lines.append(f"OpenVINO's fastest passing harness INT8 ({best['model']}) vs FP32 in {reference}: "
                             f"{ratio:.2f}x{', target 1.5x: ' + ('met' if ratio >= goal else 'NOT met') if goal > 1 else ''}")
            elif reference.endswith("bf16") and not fp:
                lines.append("OpenVINO bf16: not measured (this CPU has neither avx512_bf16 nor amx_bf16)")
        if not best:
            lines.append("OpenVINO: no harness INT8 export passed its check in OpenVINO")
    for model in ("thesis W4A4 + 10-bit special, academic", "deployable: snpe w8a8 + 10-bit special"):
        faster = [r["runtime"] for r in rows if r["model"] == model and r["passed"] is True
                  and (fp := find("fp32", r["runtime"])) and fp["median_ms"] >= FASTER_THAN_FP32 * r["median_ms"]]
        lines.append(f"{model}: faster than FP32 (same runtime, by {FASTER_THAN_FP32:g}x or more) while passing its check in: "
                     f"{', '.join(faster) or 'none'}")
    return lines


def full_frame_rows(rows, exports, runtimes, threads, bf16: bool) -> list:
    """One 4256x2848 frame in each runtime: FP32 and the W8A8 harness export that was fastest in that
    runtime while passing its check there (and FP32 in OpenVINO bf16 where the CPU has it). One session
    at a time, each freed before the next: at full width four sessions held together took 20 GB."""
    import gc
    by_label = {e[0]: e for e in exports}
    jobs = []
    for runtime in runtimes:
        best = min((r for r in rows if r["model"].startswith("harness QDQ w8a8,") and r["passed"]
                    and r["runtime"] == f"{runtime} f32"), key=lambda r: r["median_ms"], default=None)
        jobs += [(by_label["fp32"], runtime, "f32")] + ([(by_label[best["model"]], runtime, "f32")] if best else [])
    if "openvino" in runtimes and bf16:
        jobs.append((by_label["fp32"], "openvino", "bf16"))
    frame = np.random.default_rng(0).random((1, 1, 2848, 4256), dtype=np.float32)
    full = []
    for export, runtime, precision in tqdm(jobs, desc="full frames", leave=False):
        session = open_session(export[1], runtime, threads, precision=precision)
        timing = interleaved([session], frame, 1, warmup=1)[0]
        full.append({"model": export[0], "runtime": f"{runtime} {precision}", "input": "1x1x2848x4256", **timing})
        del session
        gc.collect()
    return full


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--weights", help="full-precision weights to load (default: random init)")
    parser.add_argument("--backends", nargs="+", default=["academic", "onnx_qnn", "snpe", "tensorrt"],
                        help="quant_scheme.backend values to export (W8A8)")
    parser.add_argument("--runtimes", nargs="+", help="runtimes to time (default: every one installed)")
    parser.add_argument("--out", help="keep the exported models here (default: a temporary folder)")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--profile", action="store_true", help="also print onnxruntime's kernel time per op type")
    parser.add_argument("--full-frame", action="store_true", help="also time FP32 and the fastest W8A8 export "
                                                                  "on one 4256x2848 frame in each runtime (slow)")
    args = parser.parse_args(argv)
    runtimes = normalise_runtimes(args.runtimes)
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    cpu = cpu_description()
    special = yaml.safe_load(SEED_CONFIG.read_text())["extra_quantizer_dict"]["special_layer"]

    def float_model():
        torch.manual_seed(0)  # every row is the same network with the same weights
        model = build_model("dbf_dble", args.width)
        if args.weights:
            from checkpoints.weights import load_weights
            load_weights(model, args.weights)
        return model.eval()

    def qdq(label, qmodel, name):
        info = export_qdq(qmodel, out / name, runtimes=runtimes)
        checks[label] = info.checks
        rows = info.checks["runtimes"]
        exports.append((label, info.path, info.opset, {r: rows[r]["passed"] for r in rows},
                        {r: rows[r].get("min_psnr_db") for r in rows}))

    checks = {}  # the export check of each QDQ model, every run in every runtime (--json)
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(args.out or scratch)
        out.mkdir(parents=True, exist_ok=True)
        fp32 = export_full_precision(float_model(), out / "fp32.onnx", runtimes=runtimes)
        exports = [("fp32", fp32.path, fp32.opset, {r: v["passed"] for r, v in fp32.checks["runtimes"].items()}, {})]
        for backend in tqdm(args.backends, desc="export QDQ", leave=False):
            qdq(f"harness QDQ w8a8, {backend}", quantized(float_model(), None, backend), f"qdq_w8a8_{backend}.onnx")
        qdq("harness QDQ w8a8 + 10-bit special, academic", quantized(float_model(), special),
            "qdq_w8a8_special10.onnx")
        qdq("thesis W4A4 + 10-bit special, academic", quantized(float_model(), special, scheme=SCHEME_THESIS),
            "qdq_thesis_w4a4_special10.onnx")
        qdq("deployable: snpe w8a8 + 10-bit special", quantized(float_model(), special, "snpe"),
            "qdq_deployable_snpe_w8a8_special10.onnx")
        ptq_path = quantize_static_onnx(fp32.path, out / "ort_ptq_w8a8.onnx",
                                        [x.numpy() for x in calibration_inputs()])
        exports.append(("onnxruntime quantize_static w8a8", str(ptq_path), 17, {}, {}))

        specs = [(runtime, "f32") for runtime in runtimes]
        jobs = [(e, runtime, precision) for e in exports for runtime, precision in specs]
        if "openvino" in runtimes and has_bf16(cpu):
            jobs.append((exports[0], "openvino", "bf16"))  # the float network at OpenVINO's own default
        sessions = [open_session(e[1], runtime, args.threads, precision=precision) for e, runtime, precision in jobs]
        x = np.random.default_rng(0).random((1, 1, args.size, args.size), dtype=np.float32)
        outputs = [session.run(x) for session in sessions]
        timings = interleaved(sessions, x, args.runs, progress=True)
        reference = {e[0]: got for (e, runtime, precision), got in zip(jobs, outputs) if runtime == "onnxruntime"}
        rows = []
        for (export, runtime, precision), got, timing in zip(jobs, outputs, timings):
            label, path, opset, passed, min_psnr = export
            if runtime == "onnxruntime":
                ops = executed_graph(path, args.threads, scratch)
                how = describe_execution(ops) if label != "fp32" else "float"
                extra = {"integer_convs": integer_convs(ops), "executed_ops": dict(ops)}
            else:
                execution = openvino_execution(path, args.threads, args.size, precision)
                how, extra = describe_openvino(execution), {"openvino_execution": execution}
            agree = (min(psnr_db(r, g) for r, g in zip(reference[label], got))
                     if label in reference and runtime != "onnxruntime" else None)
            rows.append({"model": label, "runtime": f"{runtime} {precision}", "opset": opset,
                         "file_mb": Path(path).stat().st_size / 1e6, **timing,
                         "passed": passed.get(runtime) if precision == "f32" else None,
                         "min_psnr_vs_pytorch": min_psnr.get(runtime) if precision == "f32" else None,
                         "psnr_vs_onnxruntime": agree, "execution": how, **extra})
            if args.profile and runtime == "onnxruntime":
                rows[-1]["kernel_ms_by_op"] = kernel_time_by_op(path, args.size, args.threads, scratch)
        full = []
        if args.full_frame:
            del sessions, outputs  # a full frame needs the memory more than the 512x512 sessions
            full = full_frame_rows(rows, exports, runtimes, args.threads, has_bf16(cpu))
    versions = ", ".join(f"{r} {runtime_version(r).split('-')[0]}" for r in runtimes)
    print(f"CPU: {cpu['model']} ({cpu['logical_cpus']} logical CPUs); flags: {' '.join(cpu['flags']) or 'none of note'}"
          f"{'' if has_bf16(cpu) else '; no bf16: OpenVINO bf16 not measured'}"
          f"{'' if any(f.startswith('amx') for f in cpu['flags']) else '; no AMX'}")
    print(f"{versions}; {args.threads} threads, 1x1x{args.size}x{args.size}, width {args.width}, "
          f"median of {args.runs} runs interleaved across all rows")
    fp_ort = next((r["median_ms"] for r in rows if r["model"] == "fp32" and r["runtime"] == "onnxruntime f32"), None)
    print(f"{'model':44s} {'runtime':16s} {'MB':>6s} {'median':>8s} {'min':>7s} {'vs ORT':>7s} {'vs own':>7s} "
          f"{'check':>6s} {'agree':>6s}  how it ran")
    for row in rows:
        own = next(r["median_ms"] for r in rows if r["model"] == "fp32" and r["runtime"] == row["runtime"])
        check = {True: "pass", False: "FAIL", None: "-"}[row["passed"]]
        agree = f"{row['psnr_vs_onnxruntime']:.1f}" if row["psnr_vs_onnxruntime"] is not None else "-"
        print(f"{row['model']:44s} {row['runtime']:16s} {row['file_mb']:6.2f} {row['median_ms']:8.1f} "
              f"{row['min_ms']:7.1f} {_ratio(fp_ort, row['median_ms']) if fp_ort else '-':>7s} "
              f"{_ratio(own, row['median_ms']):>7s} {check:>6s} {agree:>6s}  {row['execution']}")
    print("(vs ORT: onnxruntime FP32 / this; vs own: FP32 in the same runtime and precision / this; check: the "
          "export check against fake-quant PyTorch in that runtime; agree: PSNR dB of this output against "
          "onnxruntime's, same model)")
    for row in full:
        print(f"full frame {row['input']}: {row['model']:40s} {row['runtime']:16s} {row['median_ms'] / 1e3:8.2f} s")
    print("\ntargets:")
    for line in targets(rows, runtimes):
        print(f"  {line}")
    if args.profile:
        print("\nkernel time per run by op type (onnxruntime profiler; the rest of a run is scheduling and memory):")
        for row in rows:
            profile = row.get("kernel_ms_by_op")
            if profile:
                top = ", ".join(f"{op} {ms:.1f}" for op, ms in list(profile.items())[:6])
                print(f"  {row['model']:46s} {sum(profile.values()):7.1f} ms: {top}")
    if args.json:
        Path(args.json).write_text(json.dumps({"cpu": cpu, "versions": versions, "rows": rows, "full_frame": full,
                                               "targets": targets(rows, runtimes), "checks": checks}, indent=2, default=str))
    return rows


if __name__ == "__main__":
    main()
