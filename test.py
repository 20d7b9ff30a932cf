"""Evaluate a checkpoint on a split of the data named by a run config.

    python test.py --config configfile/demo_fp.yaml [--checkpoint PATH] [--split test|val]
                   [--tile-size 512 --tile-overlap 32] [--save-images] [--set key=value ...]

Writes per_image.csv (file, ratio, group, PSNR, SSIM, mono PSNR/SSIM) and summary.json (overall and per
exposure group: psnr_x100, ... on SID and camera pairs, psnr_0x00ff, ... (shutter widths) on MCR; the
data root and list) under
results/<experiment>/eval_<split>_<checkpoint name>/, never over the training run's own test_results/;
an existing evaluation folder is kept unless --overwrite is given. Both files, and the printed table,
name the metric mode (`val.metric_precision`) and the SSIM variant (`val.ssim`).
Without --checkpoint it takes the run's best checkpoint (then its latest, then load_model).
`--tile-size` evaluates full 4256x2848 frames in bounded memory.
"""
import argparse
import sys

from harness import run_lock
from harness.evaluate_run import default_checkpoint, evaluate_checkpoint, evaluation_folder
from harness.runner import load_entry_config, run_entry_point


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--checkpoint", help="checkpoint or weights file (default: the run's best)")
    parser.add_argument("--split", default="test", choices=["test", "val"])
    parser.add_argument("--tile-size", type=int, help="evaluate in tiles of this size (multiple of 32)")
    parser.add_argument("--tile-overlap", type=int, help="pixels of context kept on each tile side")
    parser.add_argument("--save-images", action="store_true", help="write the predicted RGB as PNG")
    parser.add_argument("--baseline", action="store_true", help="also score the naive amplified-exposure baseline")
    parser.add_argument("--out", help="output folder (default results/<experiment>/eval_<split>_<checkpoint name>)")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier evaluation in the output folder")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument(run_lock.TAKE_OVER_FLAG, action="store_true",
                        help="take over the run folder's lock from a process on another host that is gone")
    args = parser.parse_args(argv)
    overrides = list(args.set)
    if args.tile_size is not None:
        overrides.append(f"val.tile_size={args.tile_size}")
    if args.tile_overlap is not None:
        overrides.append(f"val.tile_overlap={args.tile_overlap}")
    config = load_entry_config(args.config, overrides, check_files=False)
    checkpoint = args.checkpoint or default_checkpoint(config)
    out_dir = evaluation_folder(config, args.split, checkpoint, args.out, args.overwrite)
    # An evaluation inside the run folder waits its turn with the training that writes that folder.
    inside_run = out_dir.resolve().is_relative_to(config.run_dir.resolve())
    with run_lock.held(config.run_dir if inside_run else out_dir, "test.py", args.take_over):
        return evaluate_checkpoint(config, checkpoint, split=args.split, with_baseline=args.baseline,
                                   save_images=args.save_images or None, out_dir=out_dir)


if __name__ == "__main__":
    sys.exit(run_entry_point(main, sys.argv[1:]))
