"""Sensitivity of every fake quantizer (weights and activations): PSNR drop and Hessian estimate.

    python tools/sensitivity.py --config configfile/seed_aba.yaml [--checkpoint PATH] [--low 4 --high 8]
                          [--bits 4,6,8,10] [--batches 2] [--calibration-batches 2] [--probes 8]
                          [--probe-batch 4] [--crop 256] [--split val] [--measures psnr,hessian]
                          [--out DIR] [--seed 0] [--device cpu] [--set key=value ...]

The network is the config's quant_scheme (its quantizer classes, granularity and symmetry) on the
float weights (--checkpoint, else load_model), without special_layer entries, calibrated on
--calibration-batches train frames; then every quantizer is put at --high bits. See
quant/sensitivity.py for the two measures. Writes into --out (default results/<experiment>/sensitivity):

  sensitivity.csv   one row per quantizer in network order: PSNR drop, Hessian trace, noise power
                    and Hessian score per bit width of --bits, both ranks, and the cost figures
                    (elements, MACs, input quantizer) that quant/allocate.py needs
  sensitivity.png   both measures as bars in network order
  sensitivity.json  settings, the all-high PSNR, the Spearman rank correlations (PSNR drop vs the
                    noise-shaped Hessian score, and vs HAWQ's trace x noise power), the time taken

Frames are center-cropped to --crop pixels (0 = whole frames) to bound the cost: the PSNR drop
takes (quantizers x batches) forwards, the Hessian (quantizers x probes x batches) double backwards.
"""
import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path

# Thousands of short forwards: with OpenMP's default spinning, a thread waiting for a descheduled peer
# burns its core, and on a shared machine each forward took 10-100x its CPU time (see bench/distill_step.py).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python tools/<name>.py` finds the packages

import harness.runner
from harness.config import ConfigError, load_config
from helpers.files import write_bytes_atomic, write_csv_atomic, write_text_atomic
from harness.runner import run_entry_point
from harness.hessian_inputs import CROP_MULTIPLE, center_crop, ranking_loss
from harness.setup import build_eval_batches, build_float_model, ensure_data, resolve_device
from quant import calibrate, prepare_quantized_model
from quant.scheme import MAX_BITS, MIN_BITS, parse_bits_option
from quant.sensitivity import csv_rows, describe_quantizers, hessian_scores, plot_png, psnr_drops, rank

MEASURES = ("psnr", "hessian")


def parse_arguments(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="YAML run config (see configfile/)")
    parser.add_argument("--checkpoint", help="full-precision weights (default: the config's load_model)")
    parser.add_argument("--low", type=int, default=4, help="bits of the one quantizer lowered (default 4)")
    parser.add_argument("--high", type=int, default=8, help="bits of all the others (default 8)")
    parser.add_argument("--bits", default="4,6,8,10", help="bit widths scored by the Hessian measure (default 4,6,8,10)")
    parser.add_argument("--batches", type=int, default=2, help="validation frames (default 2)")
    parser.add_argument("--calibration-batches", type=int, default=2, help="train frames for calibration (default 2)")
    parser.add_argument("--probes", type=int, default=8, help="Rademacher probes per frame (default 8)")
    parser.add_argument("--probe-batch", type=int, default=4, help="probes per batched double backward (default 4)")
    parser.add_argument("--crop", type=int, default=256,
                        help=f"center crop in pixels, a multiple of {CROP_MULTIPLE}; 0 = whole frames (default 256)")
    parser.add_argument("--split", default="val", choices=["val", "test"], help="frames scored (default val)")
    parser.add_argument("--measures", default="psnr,hessian", help="psnr, hessian or both (default both)")
    parser.add_argument("--out", help="output folder (default results/<experiment>/sensitivity)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the probes (default 0)")
    parser.add_argument("--device", help="cpu, cuda or cuda:N (default: the config's device)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    args = parser.parse_args(argv)
    for name in ("batches", "calibration_batches", "probes", "probe_batch"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')}: {getattr(args, name)} must be at least 1")
    if args.crop < 0 or args.crop % CROP_MULTIPLE:
        raise ValueError(f"--crop: {args.crop} must be 0 or a positive multiple of {CROP_MULTIPLE}")
    args.bits = parse_bits_option(args.bits)
    for name in ("low", "high"):
        if not MIN_BITS <= getattr(args, name) <= MAX_BITS:
            raise ValueError(f"--{name}: {getattr(args, name)} bits; choose {MIN_BITS}..{MAX_BITS}")
    if args.low >= args.high:
        raise ValueError(f"--low {args.low} must be below --high {args.high}")
    args.measures = [m.strip() for m in args.measures.split(",") if m.strip()]
    unknown = [m for m in args.measures if m not in MEASURES]
    if unknown or not args.measures:
        raise ValueError(f"--measures: unknown {unknown[0] if unknown else 'empty'!r}; valid: {', '.join(MEASURES)}")
    if "hessian" in args.measures and args.low not in args.bits:
        args.bits = sorted(set(args.bits) | {args.low})
    return args


def main(argv=None):
    args = parse_arguments(argv)
    config = load_config(args.config, args.set, check_files=False)
    harness.runner.post_mortem = config.pdb_debug
    if config.quant_scheme.engine != "mqbench":  # the probes read MQBench's FX graph (quant/sensitivity.py)
        raise ConfigError(f"quant_scheme.engine: {config.quant_scheme.engine}: per-quantizer sensitivity is "
                          "MQBench-only; run it with --set quant_scheme.engine=mqbench (the same quantizers)")
    device = torch.device(args.device) if args.device else resolve_device(config)
    weights = args.checkpoint or config.load_model
    if weights is None and not config.allow_random_init:
        raise ConfigError(f"{args.config}: no weights to measure (pass --checkpoint PATH or set load_model)")
    ensure_data(config)
    batches = [center_crop(b, args.crop) for b in build_eval_batches(config, split=args.split, count=args.batches)]
    calibration = [center_crop(b, args.crop)["input"] for b in
                   build_eval_batches(config, split="train", count=args.calibration_batches)]
    if not batches or not calibration:
        raise ConfigError(f"{args.config}: no frames in the {args.split if not batches else 'train'} split")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # special layers are not applied here
        qmodel = prepare_quantized_model(build_float_model(config, weights), config.quant_scheme, None,
                                         config.quantize_output).to(device)
    calibrate(qmodel, calibration, device, num_batches=len(calibration))
    started = time.time()
    entries = describe_quantizers(qmodel)
    timings, baseline = {}, None
    if "psnr" in args.measures:
        began = time.time()
        baseline = psnr_drops(qmodel, entries, batches, args.low, args.high, device)
        timings["psnr_seconds"] = time.time() - began
    if "hessian" in args.measures:
        began = time.time()
        hessian_scores(qmodel, entries, batches, ranking_loss("mse", config), args.bits, probes=args.probes,
                       seed=args.seed, device=device, probe_batch=args.probe_batch)
        timings["hessian_seconds"] = time.time() - began
    correlation = rank(entries, args.low)
    hawq_correlation = None
    if "psnr" in args.measures and "hessian" in args.measures:
        from scipy.stats import spearmanr
        hawq_correlation = float(spearmanr([e.psnr_drop for e in entries],
                                           [e.hawq_score[args.low] for e in entries]).statistic)
    out_dir = Path(args.out) if args.out else config.run_dir / "sensitivity"
    size = "x".join(str(s) for s in batches[0]["rgb"].shape[-2:])
    write_csv_atomic(out_dir / "sensitivity.csv", csv_rows(entries))
    title = (f"{config.experiment}: {len(entries)} quantizers, {len(batches)} {args.split} frame(s) at {size}, "
             f"{args.low} of {args.high} bits; Spearman {correlation if correlation is None else round(correlation, 3)}")
    write_bytes_atomic(out_dir / "sensitivity.png", plot_png(entries, args.low, args.high, title))
    report = {"config": args.config, "weights": str(weights), "low": args.low, "high": args.high, "bits": args.bits,
              "frames": len(batches), "split": args.split, "frame_size": size, "probes": args.probes,
              "quantizers": len(entries), "psnr_all_high": baseline, "spearman_psnr_vs_hessian": correlation,
              "spearman_psnr_vs_hawq_trace": hawq_correlation,
              "device": str(device), "model_width": config.model.width, **timings,
              "total_seconds": time.time() - started}
    write_text_atomic(out_dir / "sensitivity.json", json.dumps(report, indent=2))
    top = sorted(entries, key=lambda e: e.rank_psnr or e.rank_hessian)[:10]
    print(f"{'rank':>4}  {'PSNR drop':>9}  {'Hessian':>10}  quantizer")
    for e in top:
        print(f"{e.rank_psnr or '-':>4}  {e.psnr_drop:>9.3f}  {e.hessian_score.get(args.low, float('nan')):>10.3g}  "
              f"{e.quantizer}")
    print(f"Spearman rank correlation (PSNR drop vs Hessian score at {args.low} bits): {correlation}")
    for name in ("sensitivity.csv", "sensitivity.png", "sensitivity.json"):
        print(f"{name}: {out_dir / name}")
    return entries


if __name__ == "__main__":
    sys.exit(run_entry_point(main, sys.argv[1:]))
