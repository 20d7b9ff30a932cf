"""`make ablation`: the thesis ablation on the embedded synthetic SID set, one command.

1. the full-precision teacher (configfile/ablation_teacher.yaml), skipped when already trained;
2. the sweep configfile/sweep_ablation.yaml: full precision fine-tuned for the same steps (the fair
   reference), W8A8, W4A4, W4A4 with the user's start/end special layers, the same calibrated only
   (PTQ), and that plus distillation at 0.1 and 0.7, each with seeds 0, 1, 2. Finished runs are skipped, so an interrupted ablation
   resumes where it stopped.
The table printed at the end (mean ± std over seeds, per-ratio test PSNR, differences with 95%
confidence intervals) is results/sweep_ablation/summary.md; the figures lie beside it.
"""
import json
import sys
import time

from harness.config import load_config
from harness.runner import run_entry_point
from harness.training import run as train_run
from sweeps.run import run_sweep
from sweeps.variants import load_sweep


def main(argv):
    started = time.time()

    teacher_config = load_config("configfile/ablation_teacher.yaml")
    summary = teacher_config.run_dir / "summary.json"
    if summary.exists() and (teacher_config.artifacts_dir / f"{teacher_config.experiment}.pth").exists():
        print(f"=== 1/2 full-precision teacher: trained earlier ({summary}), test PSNR "
              f"{json.loads(summary.read_text())['test_psnr']:.2f} dB")
    else:
        print("=== 1/2 full-precision teacher (configfile/ablation_teacher.yaml)")
        train_run(teacher_config, overwrite=True)

    print("\n=== 2/2 ablation sweep, 7 variants x 3 seeds (configfile/sweep_ablation.yaml)")
    run_sweep(load_sweep("configfile/sweep_ablation.yaml"))
    print(f"ablation finished in {(time.time() - started) / 60:.1f} min")


if __name__ == "__main__":
    sys.exit(run_entry_point(main, sys.argv[1:]))
