"""`make demo`: the main job end to end on the embedded synthetic SID set.

1. generate the SID-format data set (real DNG files, read back with rawpy) and train the
   full-precision DBF/DBLE teacher; print its test PSNR/SSIM next to the naive baseline;
2. W8A8 LSQ quantization of those weights with the deployment placement: calibration only (PTQ),
   then quantization-aware training without and with distillation from the teacher: a three-variant
   sweep whose table reads each against PTQ;
3. export the best QAT model to ONNX (FP32 and the integer QDQ graph) and check it in onnxruntime.

`--set key=value` changes every run of the demo, e.g. `python demo.py --set data.dataset=mcr` runs it
on the MCR-format stand-in (`make demo ARGS="--set data.dataset=mcr"`; docs/datasets.md).
"""
import argparse
import csv
import json
import shutil
import sys
import time
from pathlib import Path

from harness.config import load_config
from harness.export_run import export_run
from harness.records import format_table
from harness.runner import run_entry_point
from harness.training import run as train_run
from helpers.ratios import group_of, group_sort_key
from sweeps.run import run_sweep, sweep_results_dir
from sweeps.variants import load_sweep


def per_ratio(per_image_csv):
    """Mean PSNR/SSIM of the model and of the naive baseline for each exposure ratio."""
    rows = list(csv.DictReader(Path(per_image_csv).read_text().splitlines()))
    table = []
    for group in sorted({group_of(row) for row in rows}, key=group_sort_key):
        chosen = [row for row in rows if group_of(row) == group]
        table.append({"ratio": group, "pairs": len(chosen),
                      **{key: sum(float(row[key]) for row in chosen) / len(chosen)
                         for key in ("psnr", "baseline_psnr", "ssim", "baseline_ssim")}})
    return table


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a config change for every run of the demo (e.g. data.dataset=mcr)")
    overrides = parser.parse_args(argv).set
    started = time.time()

    print("=== 1/3 full-precision teacher (configfile/demo_fp.yaml)")
    teacher_config = load_config("configfile/demo_fp.yaml", overrides)
    teacher = train_run(teacher_config, overwrite=True)

    print("\n=== 2/3 W8A8 PTQ, QAT, QAT with distillation (configfile/demo_sweep.yaml)")
    demo_sweep = load_sweep("configfile/demo_sweep.yaml", [f"set.{assignment}" for assignment in overrides])
    # A re-run of the demo trains its variants again, from the teacher just trained.
    shutil.rmtree(sweep_results_dir(demo_sweep), ignore_errors=True)
    rows = run_sweep(demo_sweep)

    print("\n=== 3/3 ONNX export of the best quantized model")
    best = max((row for row in rows if row["variant"] != "ptq"), key=lambda row: row["best_val_psnr"])
    variant_dir = sweep_results_dir(demo_sweep) / best["variant"]
    summary = json.loads((variant_dir / "summary.json").read_text())
    variant_config = load_config(variant_dir / "config.yaml", check_files=False)
    export_run(variant_config, summary["checkpoint"], teacher_config.artifacts_dir / "demo_w8a8")

    print("\n=== demo summary (test split, SSIM variant: skimage)")
    table = [{"model": "naive baseline (amplified short exposure)", "PSNR (dB)": teacher["test_baseline_psnr"],
              "SSIM": teacher["test_baseline_ssim"]},
             {"model": "full precision (teacher)", "PSNR (dB)": teacher["test_psnr"], "SSIM": teacher["test_ssim"]}]
    labels = {"ptq": "W8A8 PTQ (calibration only)", "qat": "W8A8 QAT",
              "qat_distill0.1": "W8A8 QAT + distillation 0.1"}
    by_variant = {row["variant"]: row for row in rows}
    for variant, label in labels.items():
        row, gain = by_variant[variant], ""
        if row["variant"] != "ptq" and "d_test_psnr" in row:  # paired per test image against PTQ
            gain = f"{row['d_test_psnr']:+.2f} [{row['d_test_psnr_ci_low']:+.2f}, {row['d_test_psnr_ci_high']:+.2f}]"
        table.append({"model": label, "PSNR (dB)": row["test_psnr"],
                      "SSIM": row["test_ssim"], "vs PTQ (dB, 95% CI)": gain})
    print(format_table(table, ["model", "PSNR (dB)", "SSIM", "vs PTQ (dB, 95% CI)"]))
    print("\nfull-precision teacher against the naive baseline, per exposure ratio (test split):")
    print(format_table(per_ratio(teacher_config.run_dir / "test_results" / "per_image.csv"),
                       ["ratio", "pairs", "psnr", "baseline_psnr", "ssim", "baseline_ssim"]))
    print(f"results: {teacher_config.run_dir}, {sweep_results_dir(demo_sweep)}; "
          f"ONNX: {teacher_config.artifacts_dir / 'demo_w8a8'}")
    print(f"demo finished in {(time.time() - started) / 60:.1f} min")


if __name__ == "__main__":
    sys.exit(run_entry_point(main, sys.argv[1:]))
