"""Train (and optionally quantize and distil) a low-light RAW network from one YAML file.

    python train.py --config configfile/demo_fp.yaml [--set schedule.epochs=3 ...] [--resume]

The run itself reads top to bottom in harness/training.py: config -> checks -> networks (float,
quantized, teacher) -> data -> optimizer -> epochs of training with validation and checkpoints ->
weights and a final test-split report. With `test: true` in the config, this only evaluates the
run's checkpoint on the test split (as test.py does).
"""
import argparse
import sys

from harness import run_lock
from harness.config import dump_config
from harness.evaluate_run import default_checkpoint, evaluate_checkpoint, evaluation_folder
from harness.runner import load_entry_config, run_entry_point
from harness.training import run


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="YAML run config (see configfile/)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. --set schedule.epochs=3 (repeatable)")
    parser.add_argument("--resume", action="store_true", help="continue the run from its latest checkpoint")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier run of the same experiment")
    parser.add_argument(run_lock.TAKE_OVER_FLAG, action="store_true",
                        help="take over the run folder's lock from a process on another host that is gone")
    parser.add_argument("--check", action="store_true",
                        help="make every check a run makes before its work (config, files, run folder, lock, "
                             "lists, networks), then stop; nothing is written")
    args = parser.parse_args(argv)
    config = load_entry_config(args.config, args.set)
    print(dump_config(config))
    if config.test and args.check:
        evaluation_folder(config, "test", default_checkpoint(config), overwrite=args.overwrite)
        print(f"checks passed: test: true would evaluate {default_checkpoint(config)}")
        return None
    if config.test:
        with run_lock.held(config.run_dir, "train.py (test: true)", args.take_over):
            checkpoint = default_checkpoint(config)
            evaluate_checkpoint(config, checkpoint, split="test", with_baseline=True,
                                out_dir=evaluation_folder(config, "test", checkpoint, overwrite=args.overwrite))
        return None
    return run(config, resume=args.resume, overwrite=args.overwrite, take_over=args.take_over, check_only=args.check)


if __name__ == "__main__":
    sys.exit(run_entry_point(main, sys.argv[1:]))
