"""Post-training quantization baselines: how good is the full-precision model quantized without any
training, at the run config's bits? The answer QAT must beat.

    python tools/ptq.py --config configfile/X.yaml [--weights PATH] [--qat-checkpoint PATH] [--onnx PATH ...] [--runtime R ...]
                  [--bits 8 6 4] [--skip-onnxruntime] [--out DIR] [--set key=value ...]

For each bit width (default: the config's quant_scheme bits; `--bits 8 6 4` sweeps W=A at each) it
scores on the test split (test.py's protocol and tiling):
  * fp32            the full-precision model (`--weights`, default load_model)
  * mqbench_ptq     MQBench calibration only: the config's quant_scheme, backend, special layers and
                    quantize_output, observers run on `calibration_batches` training batches, no QAT
  * onnxruntime_ptq onnxruntime `quantize_static` (QDQ, per-channel weights, MinMax) of the FP32 ONNX
                    export, calibrated on the same batches (no special layers), run in each runtime
                    of `deploy.runtime` (onnxruntime, openvino; `--runtime` overrides)
  * qat             with `--qat-checkpoint`, the QAT model for comparison
  * onnx ...        with `--onnx PATH` (repeatable), an exported model run in each of those runtimes
The `runtime` column says what ran each row (pytorch, or the runtime with its version).
Writes ptq_summary.csv / .md and per-image rows under results/<experiment>/ptq/ and prints the table.
"""
import argparse
import copy
import json
import math
import sys
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python tools/<name>.py` finds the packages

import harness.runner
from harness.config import load_config
from harness.evaluate import evaluate
from helpers.files import check_writable, write_csv_atomic, write_text_atomic
from harness.records import format_table
from harness.runner import run_entry_point
from harness.setup import build_eval_dataset, build_float_model, build_train_loader, ensure_data
from models import input_kind
from quant.scheme import MAX_BITS, MIN_BITS


def calibration_inputs(config, kind, count):
    """The first `count` training batches' network inputs (the crops train.py calibrates on)."""
    batches = []
    for batch in build_train_loader(config, kind, config.seed):
        batches.append(batch["input"])
        if len(batches) >= count:
            break
    return batches


def mqbench_ptq(float_model, config, scheme, inputs):
    from quant import calibrate, prepare_quantized_model
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the special-layer notes are the training run's business
        qmodel = prepare_quantized_model(copy.deepcopy(float_model), scheme,
                                         config.extra_quantizer_dict.special_layer, config.quantize_output)
    calibrate(qmodel, inputs, torch.device("cpu"), num_batches=len(inputs))
    return qmodel.eval()


def onnxruntime_ptq(float_model, bits, inputs, folder: Path) -> Path:
    from deploy import export_full_precision
    from deploy.ort_ptq import quantize_static_onnx
    fp32 = export_full_precision(float_model, folder / "model_fp32.onnx", check=False)
    return quantize_static_onnx(fp32.path, folder / f"onnxruntime_ptq_w{bits}a{bits}.onnx",
                                [x.numpy() for x in inputs], weight_bits=bits, activation_bits=bits)


def score(model, dataset, config, label, bits, statistics_passes=None, runtime="pytorch"):
    means, rows = evaluate(model, dataset, torch.device("cpu"), config.val.ssim, config.val.tile_size,
                           config.val.tile_overlap, description=f"{label} [{runtime}]",
                           statistics_passes=statistics_passes if config.val.tile_size else None)
    return {"method": label, "bits": bits, "runtime": runtime, "psnr": means["psnr"], "ssim": means["ssim"],
            "images": means["images"]}, [{"method": label, "bits": bits, "runtime": runtime, **row} for row in rows]


def score_onnx(path, dataset, config, label, bits, runtimes) -> tuple[list, list]:
    """One row per runtime; a runtime that cannot run the model gives a row with its error."""
    from deploy.onnx_network import OnnxNetwork
    summary, per_image = [], []
    for runtime in runtimes:
        try:
            network = OnnxNetwork(path, runtime=runtime)
            row, rows = score(network, dataset, config, label, bits, statistics_passes=0,
                              runtime=f"{runtime} {str(network.runtime['version']).split('-')[0]}")
        except Exception as error:  # noqa: BLE001 - a runtime refusing a model is a result to report
            summary.append({"method": label, "bits": bits, "runtime": runtime, "psnr": math.nan, "ssim": math.nan,
                            "images": 0, "note": f"{type(error).__name__}: {str(error).strip().splitlines()[0]}"})
            continue
        summary.append(row)
        per_image += rows
    return summary, per_image


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--weights", help="full-precision weights (default: the config's load_model)")
    parser.add_argument("--qat-checkpoint", help="a QAT checkpoint to score beside the baselines")
    parser.add_argument("--onnx", action="append", default=[], metavar="PATH",
                        help="also score an exported model run by onnxruntime (e.g. the QAT run's model_qdq.onnx)")
    parser.add_argument("--bits", type=int, nargs="+", help="weight = activation bits to sweep (default: the "
                                                            "config's quant_scheme bits)")
    parser.add_argument("--skip-onnxruntime", action="store_true", help="MQBench PTQ only")
    parser.add_argument("--runtime", nargs="+", help="runtimes for the ONNX rows (default: deploy.runtime)")
    parser.add_argument("--out", help="output folder (default results/<experiment>/ptq)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    config = load_config(args.config, args.set, check_files=False)
    harness.runner.post_mortem = config.pdb_debug
    # Every flag and file is checked here, before the float and PTQ scoring (hours on SID).
    for bits in args.bits or []:
        if not MIN_BITS <= bits <= MAX_BITS:
            raise ValueError(f"--bits {bits}: out of range; valid: {MIN_BITS}..{MAX_BITS}")
    from deploy.runtimes import normalise_runtimes
    runtimes = normalise_runtimes(args.runtime) if args.runtime else config.deploy.runtime
    weights = args.weights or config.load_model
    if not weights:
        raise ValueError("no full-precision weights: give --weights PATH or set load_model")
    if not Path(weights).is_file():
        raise FileNotFoundError(f"--weights: file not found: {weights}")
    qat = None
    if args.qat_checkpoint:
        from harness.evaluate_run import load_network
        try:
            qat = load_network(config, args.qat_checkpoint, torch.device("cpu"))
        except (ValueError, OSError) as error:
            raise type(error)(f"--qat-checkpoint: {str(error).strip().splitlines()[0]}") from None
    for path in args.onnx:  # loaded once here so that a bad file stops the run before any scoring
        from deploy.onnx_network import OnnxNetwork
        for runtime in runtimes:
            try:
                OnnxNetwork(path, runtime=runtime)
            except (ValueError, OSError) as error:
                raise type(error)(f"--onnx: {str(error).strip().splitlines()[0]}") from None
    out_dir = Path(args.out or config.run_dir / "ptq")
    check_writable(out_dir)
    ensure_data(config)
    kind = input_kind(config.model.name)
    float_model = build_float_model(config, weights).eval()
    dataset = build_eval_dataset(config, "test", kind)
    inputs = calibration_inputs(config, kind, config.quant_scheme.calibration_batches)
    summary, per_image = [], []
    row, rows = score(float_model, dataset, config, "fp32", 32)
    summary.append(row)
    per_image += rows
    for bits in args.bits or [config.quant_scheme.weight.bits]:
        scheme = config.quant_scheme.model_copy(deep=True)
        if args.bits:
            scheme.weight.bits = scheme.activation.bits = bits
        label_bits = f"w{scheme.weight.bits}a{scheme.activation.bits}"
        row, rows = score(mqbench_ptq(float_model, config, scheme, inputs), dataset, config,
                          f"mqbench_ptq ({scheme.backend})", label_bits)
        summary.append(row)
        per_image += rows
        if not args.skip_onnxruntime:
            try:
                path = onnxruntime_ptq(float_model, scheme.weight.bits, inputs, out_dir)
            except Exception as error:  # noqa: BLE001 - onnxruntime refusing a bit width is a result to report
                summary.append({"method": "onnxruntime_ptq", "bits": label_bits, "runtime": "", "psnr": math.nan,
                                "ssim": math.nan, "images": 0,
                                "note": f"{type(error).__name__}: {str(error).strip().splitlines()[0]}"})
            else:
                # e.g. 4-bit activations: quantize_static writes them, but onnxruntime's MaxPool takes no uint4.
                rows, images = score_onnx(path, dataset, config, "onnxruntime_ptq", label_bits, runtimes)
                summary += rows
                per_image += images
    if qat is not None:
        row, rows = score(qat, dataset, config, "qat", "checkpoint")
        summary.append(row)
        per_image += rows
    for path in args.onnx:
        rows, images = score_onnx(path, dataset, config, f"onnx {Path(path).parent.name}/{Path(path).name}",
                                  "as exported", runtimes)
        summary += rows
        per_image += images
    columns = ["method", "bits", "runtime", "psnr", "ssim", "images"]
    write_csv_atomic(out_dir / "ptq_summary.csv", summary)
    write_csv_atomic(out_dir / "ptq_per_image.csv", per_image)
    table = format_table([{k: r.get(k) for k in columns} for r in summary], columns)
    write_text_atomic(out_dir / "ptq_summary.md", table + "\n")
    write_text_atomic(out_dir / "ptq_summary.json", json.dumps(summary, indent=2, default=str))
    print(f"\ntest split, {summary[0]['images']} images, weights {weights}")
    print(table)
    for row in summary:
        if row.get("note"):
            print(f"{row['method']} {row['bits']} {row.get('runtime', '')}: {row['note']}")
    print(f"results: {out_dir}")
    return summary


if __name__ == "__main__":
    sys.exit(run_entry_point(main, sys.argv[1:]))
