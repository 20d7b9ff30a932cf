"""Ablation sweeps: one base run config, a grid over any keys, one results folder per variant.

    python sweep.py --config configfile/sweep_distill_coeff.yaml [--launcher local|slurm] [--set k=v ...]

A sweep file holds:
    base: configfile/seed_aba.yaml      # the run config every variant starts from
    set: {schedule.epochs: 4}           # overrides common to all variants (dotted keys)
    grid: {distill_coeff: [0, 0.1, 0.5]}   # every combination of these values is a variant
    variants:                           # optional named variants, each crossed with the grid
      - {name: end, set: {distill_config: [...], distill_coeff: 0.1}}
    seeds: [0, 1, 2]                    # optional: every variant once per seed (sets the run's `seed`)
    reference: end                      # optional: every variant's difference to this one, with a 95% CI
    launcher: local                     # or slurm (each variant a job of a Slurm array, via submitit)
    slurm: {partition: gpu, gpus_per_node: 1, timeout_min: 1440}

A named variant may carry its own `reference:` (e.g. distillation read against the same
quantization without it). Variants land in results/<sweep>/<variant>/, or with seeds in
results/<sweep>/<variant>__seed=<k>/. A finished run (its summary.json exists) is skipped on
re-run, and an interrupted one resumes from its latest checkpoint, so a killed sweep picks up where
it stopped. The sweep ends with summary.csv, summary.md and figures in results/<sweep>/: per
variant the mean +- std over seeds of validation and test PSNR/SSIM, test PSNR per exposure ratio,
and the difference to the reference with its confidence interval (the statistic is described in
sweeps/summary.py) and whether that interval excludes 0.
"""
import argparse
import sys

from harness import run_lock
from harness.runner import run_entry_point
from sweeps.run import run_sweep
from sweeps.variants import load_sweep


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="sweep YAML (see configfile/sweep_*.yaml)")
    parser.add_argument("--launcher", choices=["local", "slurm"], help="override the sweep file's launcher")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a sweep key, e.g. --set set.schedule.epochs=2")
    parser.add_argument(run_lock.TAKE_OVER_FLAG, action="store_true",
                        help="take over locks of the sweep or its variants from processes on other hosts that are gone")
    args = parser.parse_args(argv)
    sweep = load_sweep(args.config, args.set)
    return run_sweep(sweep, args.launcher, take_over=args.take_over)


if __name__ == "__main__":
    sys.exit(run_entry_point(main, sys.argv[1:]))
