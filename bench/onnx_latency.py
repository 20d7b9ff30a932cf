"""onnxruntime CPU latency of the exported networks, full width, one 512x512 mosaic, 2 threads,
median of runs: FP32; the harness's W8A8 QDQ export for each MQBench placement
(`quant_scheme.backend`: academic, onnx_qnn, snpe, tensorrt); academic with the user's 10-bit special
layers; and onnxruntime's own static PTQ (`quantize_static`, QDQ, per channel) of the same FP32 model.

    python bench/onnx_latency.py [--size 512] [--runs 10] [--threads 2] [--width 1.0] [--weights PATH]
                                 [--backends academic onnx_qnn snpe tensorrt] [--out DIR] [--json PATH]
                                 [--profile]

It also tells how onnxruntime ran each QDQ graph: the graph it actually executes (saved with
SessionOptions.optimized_model_filepath) is read back and its convolutions counted as fused integer
kernels (QLinearConv and friends) or float Conv fed by DequantizeLinear. Weights are random unless
--weights names full-precision weights; latency does not depend on them, the fusion decisions neither.
--profile adds, per model, where the time goes: onnxruntime's profiler, kernel time per op type.
"""
import argparse
import json
import statistics
import sys
import tempfile
import time
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

from deploy import export_full_precision, export_qdq  # noqa: E402
from deploy.ort_ptq import quantize_static_onnx  # noqa: E402
from models import build_model  # noqa: E402

SCHEME_W8A8 = {
    "weight": {"quantizer": "lsq", "bits": 8, "symmetric": True, "per_channel": True},
    "activation": {"quantizer": "lsq", "bits": 8, "symmetric": False, "per_channel": False},
    "calibration_batches": 2,
}
SEED_CONFIG = Path(__file__).resolve().parents[1] / "configfile" / "seed_aba.yaml"
INTEGER_KERNELS = ("QLinearConv", "QLinearConvTranspose", "ConvInteger", "QLinearAdd", "QLinearMul",
                   "QLinearLeakyRelu", "QLinearSigmoid", "QLinearConcat", "QLinearAveragePool",
                   "QLinearGlobalAveragePool")


def calibration_inputs(count=2, size=128):
    generator = torch.Generator().manual_seed(0)
    return [torch.rand(1, 1, size, size, generator=generator) for _ in range(count)]


def quantized(model, special, backend="academic"):
    from quant import calibrate, prepare_quantized_model
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        qmodel = prepare_quantized_model(model, {**SCHEME_W8A8, "backend": backend}, special)
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


def latencies(paths, size, runs, threads):
    """(median, min) seconds per model. Runs are interleaved across the models (one run of each in
    turn), so that load from other users of a shared machine falls on all of them alike."""
    sessions = [session(path, threads) for path in paths]
    x = np.random.default_rng(0).random((1, 1, size, size), dtype=np.float32)
    for sess in sessions:
        for _ in range(2):  # first runs allocate and pick kernels
            sess.run(None, {"raw": x})
    times = [[] for _ in sessions]
    for _ in tqdm(range(runs), desc="latency rounds", leave=False):
        for sess, kept in zip(sessions, times):
            start = time.perf_counter()
            sess.run(None, {"raw": x})
            kept.append(time.perf_counter() - start)
    return [(statistics.median(kept), min(kept)) for kept in times]


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


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--weights", help="full-precision weights to load (default: random init)")
    parser.add_argument("--backends", nargs="+", default=["academic", "onnx_qnn", "snpe", "tensorrt"],
                        help="quant_scheme.backend values to export (W8A8)")
    parser.add_argument("--out", help="keep the exported models here (default: a temporary folder)")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--profile", action="store_true", help="also print kernel time per op type per model")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    special = yaml.safe_load(SEED_CONFIG.read_text())["extra_quantizer_dict"]["special_layer"]

    def float_model():
        model = build_model("dbf_dble", args.width)
        if args.weights:
            from checkpoints.weights import load_weights
            load_weights(model, args.weights)
        return model.eval()

    with tempfile.TemporaryDirectory() as scratch:
        out = Path(args.out or scratch)
        out.mkdir(parents=True, exist_ok=True)
        base = float_model()
        fp32 = export_full_precision(base, out / "fp32.onnx")
        exports = [("fp32", fp32.path, fp32.opset, fp32.passed)]
        for backend in tqdm(args.backends, desc="export QDQ", leave=False):
            info = export_qdq(quantized(float_model(), None, backend), out / f"qdq_w8a8_{backend}.onnx")
            exports.append((f"harness QDQ w8a8, {backend}", info.path, info.opset, info.passed))
        info = export_qdq(quantized(float_model(), special), out / "qdq_w8a8_special10.onnx")
        exports.append(("harness QDQ w8a8 + 10-bit special, academic", info.path, info.opset, info.passed))
        ptq_path = quantize_static_onnx(fp32.path, out / "ort_ptq_w8a8.onnx",
                                        [x.numpy() for x in calibration_inputs()])
        exports.append(("onnxruntime quantize_static w8a8", str(ptq_path), 17, None))
        rows = []
        timings = latencies([path for _, path, _, _ in exports], args.size, args.runs, args.threads)
        for (label, path, opset, passed), (median, best) in zip(exports, timings):
            ops = executed_graph(path, args.threads, scratch)
            rows.append({"model": label, "opset": opset, "file_mb": Path(path).stat().st_size / 1e6,
                         "median_ms": median * 1e3, "min_ms": best * 1e3, "passed_checks": passed,
                         "integer_convs": integer_convs(ops),
                         "execution": describe_execution(ops) if label != "fp32" else "float",
                         "executed_ops": dict(ops)})
            if args.profile:
                rows[-1]["kernel_ms_by_op"] = kernel_time_by_op(path, args.size, args.threads, scratch)
    fp32_ms = rows[0]["median_ms"]
    print(f"onnxruntime {ort.__version__} CPU, {args.threads} threads, 1x1x{args.size}x{args.size}, "
          f"width {args.width}, median of {args.runs} interleaved runs")
    print(f"{'model':46s} {'MB':>7s} {'median ms':>10s} {'min ms':>8s} {'vs fp32':>8s}  how it ran")
    for row in rows:
        print(f"{row['model']:46s} {row['file_mb']:7.2f} {row['median_ms']:10.1f} {row['min_ms']:8.1f} "
              f"{fp32_ms / row['median_ms']:7.2f}x  {row['execution']}")
    if args.profile:
        print("\nkernel time per run by op type (onnxruntime profiler; the rest of a run is scheduling and memory):")
        for row in rows:
            profile = row["kernel_ms_by_op"]
            top = ", ".join(f"{op} {ms:.1f}" for op, ms in list(profile.items())[:6])
            print(f"  {row['model']:46s} {sum(profile.values()):7.1f} ms: {top}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return rows


if __name__ == "__main__":
    main()
