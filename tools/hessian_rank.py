"""Rank the activations of a full-precision network by the Hessian trace of the loss w.r.t. each.

    python tools/hessian_rank.py --config configfile/X.yaml [--checkpoint PATH] [--batches N] [--probes N]
                           [--top-k K] [--out DIR] [--seed S] [--device cpu] [--crop 256] [--probe-batch 4]
                           [--layers A,B,...] [--loss mse|l1] [--coefficient 0.1]
                           [--special-layers BITS] [--set key=value ...]

A larger trace means a perturbation of that activation (quantization noise, a distillation miss)
moves the loss more: candidates for `distill_config` and for high-bit `special_layer` entries.
Writes hessian_rank.csv (layer, trace, std, stderr, trace_per_element, rank), hessian_rank.png
and hessian_topk.yaml (the top-k as `distill_config` / `distill_coeff`, and with --special-layers
as `extra_quantizer_dict.special_layer` activation entries) into --out (default
results/<experiment>/hessian). Layers are ranked by the total trace; see distill/hessian.py.

The loss is MSE on mono and RGB (weights from the config's `loss` section), not the training L1:
L1 has no curvature on the piecewise-linear tail of the network, so every layer behind the last
channel attention would get a trace of exactly 0. Weights: --checkpoint, else `load_model`.
Batches are validation frames (center-cropped to --crop pixels, 0 = whole frames, to bound the
cost: (probes x layers) second backward passes per batch).
"""
import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python tools/<name>.py` finds the packages

from harness.config import ConfigError
from harness.runner import load_entry_config, run_entry_point
# Glue to the config and data system (harness/): the interface this tool expects from it.
from harness.setup import build_eval_batches, build_float_model, ensure_data, resolve_device
from distill.hessian import rank_layers, ranking_table, write_ranking
from harness.hessian_inputs import CROP_MULTIPLE, center_crop, ranking_loss

def parse_arguments(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="YAML run config (see configfile/)")
    parser.add_argument("--checkpoint", help="full-precision weights (default: the config's load_model)")
    parser.add_argument("--batches", type=int, default=2, help="validation frames to average over (default 2)")
    parser.add_argument("--probes", type=int, default=8, help="Rademacher probes per frame (default 8)")
    parser.add_argument("--probe-batch", type=int, default=4,
                        help="probes per batched double backward: speed vs memory, same result (default 4)")
    parser.add_argument("--top-k", type=int, default=2, help="layers written to hessian_topk.yaml (default 2)")
    parser.add_argument("--out", help="output folder (default results/<experiment>/hessian)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the probes (default 0)")
    parser.add_argument("--device", help="cpu, cuda or cuda:N (default: the config's device)")
    parser.add_argument("--crop", type=int, default=256,
                        help=f"center crop in pixels, a multiple of {CROP_MULTIPLE}; 0 = whole frames (default 256)")
    parser.add_argument("--split", default="val", choices=["val", "test"], help="frames from this split (default val)")
    parser.add_argument("--layers", help="comma-separated layer names: modules or function nodes such as add_3 "
                        "(python tools/layers.py lists them; default: every activation module)")
    parser.add_argument("--loss", default="mse", choices=["mse", "l1"], help="distance in the task loss (default mse)")
    parser.add_argument("--coefficient", type=float, default=0.1, help="distill_coeff written per layer (default 0.1)")
    parser.add_argument("--special-layers", type=int, metavar="BITS",
                        help="also write the top-k as special_layer activation entries at BITS bits")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    args = parser.parse_args(argv)
    for name in ("batches", "probes", "probe_batch", "top_k"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')}: {getattr(args, name)} must be at least 1")
    if args.crop < 0 or args.crop % CROP_MULTIPLE:
        raise ValueError(f"--crop: {args.crop} must be 0 or a positive multiple of {CROP_MULTIPLE}")
    if args.special_layers is not None and not 2 <= args.special_layers <= 16:
        raise ValueError(f"--special-layers: {args.special_layers} bits; choose 2..16")
    return args


def main(argv=None):
    args = parse_arguments(argv)
    config = load_entry_config(args.config, args.set, check_files=False)
    device = torch.device(args.device) if args.device else resolve_device(config)
    weights = args.checkpoint or config.load_model
    if weights is None and not config.allow_random_init:
        raise ConfigError(f"{args.config}: no weights to rank (pass --checkpoint PATH or set load_model); "
                          "a randomly initialised network has no meaningful curvature")
    model = build_float_model(config, weights)
    ensure_data(config)
    batches = [center_crop(batch, args.crop) for batch in build_eval_batches(config, split=args.split, count=args.batches)]
    if not batches:
        raise ConfigError(f"{args.config}: the {args.split} split has no frames")
    layers = [name.strip() for name in args.layers.split(",") if name.strip()] if args.layers else None
    rows = rank_layers(model, batches, ranking_loss(args.loss, config), layer_names=layers, probes=args.probes,
                       seed=args.seed, device=device, probe_batch=args.probe_batch)
    out_dir = Path(args.out) if args.out else config.run_dir / "hessian"
    size = "x".join(str(s) for s in batches[0]["rgb"].shape[-2:])
    comment = (f"Top {min(args.top_k, len(rows))} of {len(rows)} activations by Hessian trace ({args.loss} loss), "
               f"tools/hessian_rank.py --config {args.config}\n"
               f"weights {weights}; {len(batches)} {args.split} frame(s) at {size}; {args.probes} probes; seed {args.seed}")
    paths = write_ranking(rows, out_dir, top_k=args.top_k, coefficient=args.coefficient,
                          special_layer_bits=args.special_layers, comment=comment)
    print(ranking_table(rows))
    for kind, path in paths.items():
        print(f"{kind}: {path}")
    return rows


if __name__ == "__main__":
    sys.exit(run_entry_point(main, sys.argv[1:]))
