"""Post-training quantization baselines: how good is the full-precision model quantized without any
training, at the run config's bits? The answer QAT must beat.

    python ptq.py --config configfile/X.yaml [--weights PATH] [--qat-checkpoint PATH] [--onnx PATH ...]
                  [--bits 8 6 4] [--skip-onnxruntime] [--out DIR] [--set key=value ...]

For each bit width (default: the config's quant_scheme bits; `--bits 8 6 4` sweeps W=A at each) it
scores on the test split (test.py's protocol and tiling):
  * fp32            the full-precision model (`--weights`, default load_model)
  * mqbench_ptq     MQBench calibration only: the config's quant_scheme, backend, special layers and
                    quantize_output, observers run on `calibration_batches` training batches, no QAT
  * onnxruntime_ptq onnxruntime `quantize_static` (QDQ, per-channel weights, MinMax) of the FP32 ONNX
                    export, calibrated on the same batches, run by onnxruntime (no special layers)
  * qat             with `--qat-checkpoint`, the QAT model for comparison
  * onnx ...        with `--onnx PATH` (repeatable), an exported model run by onnxruntime
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

import core.runner
from core.config import load_config
from core.evaluate import evaluate
from core.files import check_writable, write_csv_atomic, write_text_atomic
from core.records import format_table
from core.runner import run_entry_point
from core.setup import build_eval_dataset, build_float_model, build_train_loader, ensure_data
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


def onnxruntime_ptq(float_model, bits, inputs, folder: Path):
    from deploy import export_full_precision
    from deploy.onnx_network import OnnxNetwork
    from deploy.ort_ptq import quantize_static_onnx
    fp32 = export_full_precision(float_model, folder / "model_fp32.onnx", check=False)
    path = quantize_static_onnx(fp32.path, folder / f"onnxruntime_ptq_w{bits}a{bits}.onnx",
                                [x.numpy() for x in inputs], weight_bits=bits, activation_bits=bits)
    return OnnxNetwork(path)


def score(model, dataset, config, label, bits, statistics_passes=None):
    means, rows = evaluate(model, dataset, torch.device("cpu"), config.val.ssim, config.val.tile_size,
                           config.val.tile_overlap, description=label,
                           statistics_passes=statistics_passes if config.val.tile_size else None)
    return {"method": label, "bits": bits, "psnr": means["psnr"], "ssim": means["ssim"],
            "images": means["images"]}, [{"method": label, "bits": bits, **row} for row in rows]


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
    parser.add_argument("--out", help="output folder (default results/<experiment>/ptq)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    config = load_config(args.config, args.set, check_files=False)
    core.runner.post_mortem = config.pdb_debug
    # Every flag and file is checked here, before the float and PTQ scoring (hours on SID).
    for bits in args.bits or []:
        if not MIN_BITS <= bits <= MAX_BITS:
            raise ValueError(f"--bits {bits}: out of range; valid: {MIN_BITS}..{MAX_BITS}")
    weights = args.weights or config.load_model
    if not weights:
        raise ValueError("no full-precision weights: give --weights PATH or set load_model")
    if not Path(weights).is_file():
        raise FileNotFoundError(f"--weights: file not found: {weights}")
    qat = None
    if args.qat_checkpoint:
        from core.checkpoint_eval import load_network
        try:
            qat = load_network(config, args.qat_checkpoint, torch.device("cpu"))
        except (ValueError, OSError) as error:
            raise type(error)(f"--qat-checkpoint: {str(error).strip().splitlines()[0]}") from None
    exported = []
    for path in args.onnx:
        from deploy.onnx_network import OnnxNetwork
        try:
            exported.append((path, OnnxNetwork(path)))
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
                network = onnxruntime_ptq(float_model, scheme.weight.bits, inputs, out_dir)
            except Exception as error:  # noqa: BLE001 - onnxruntime refusing a bit width is a result to report
                # e.g. 4-bit activations: quantize_static writes them, but onnxruntime's MaxPool takes no uint4.
                summary.append({"method": "onnxruntime_ptq", "bits": label_bits, "psnr": math.nan,
                                "ssim": math.nan, "images": 0,
                                "note": f"{type(error).__name__}: {str(error).strip().splitlines()[0]}"})
            else:
                row, rows = score(network, dataset, config, "onnxruntime_ptq", label_bits, statistics_passes=0)
                summary.append(row)
                per_image += rows
    if qat is not None:
        row, rows = score(qat, dataset, config, "qat", "checkpoint")
        summary.append(row)
        per_image += rows
    for path, network in exported:
        row, rows = score(network, dataset, config, f"onnx {Path(path).parent.name}/{Path(path).name}",
                          "as exported", statistics_passes=0)
        summary.append(row)
        per_image += rows
    columns = ["method", "bits", "psnr", "ssim", "images"]
    write_csv_atomic(out_dir / "ptq_summary.csv", summary)
    write_csv_atomic(out_dir / "ptq_per_image.csv", per_image)
    table = format_table([{k: r.get(k) for k in columns} for r in summary], columns)
    write_text_atomic(out_dir / "ptq_summary.md", table + "\n")
    write_text_atomic(out_dir / "ptq_summary.json", json.dumps(summary, indent=2, default=str))
    print(f"\ntest split, {summary[0]['images']} images, weights {weights}")
    print(table)
    for row in summary:
        if row.get("note"):
            print(f"{row['method']} {row['bits']}: {row['note']}")
    print(f"results: {out_dir}")
    return summary


if __name__ == "__main__":
    sys.exit(run_entry_point(main, sys.argv[1:]))
