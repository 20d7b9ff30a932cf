"""The numbers of a sweep table: per variant, mean and standard deviation over seeds, per-ratio
means, and the difference to a reference variant with a 95% confidence interval.

The difference statistic (the one documented in docs/ablations.md):
- each test image is paired with the same image scored by the reference trained with the same seed,
  and the per-image differences are averaged within each seed: one mean difference per seed;
- with two or more seeds, the interval is the Student t-interval of those per-seed means
  (scipy.stats.ttest_1samp(...).confidence_interval). The seed is the unit because the images
  scored by one trained network are not independent repeats of the training: counting images x
  seeds as independent pairs would make intervals too narrow for the training noise that the
  question "does distillation help?" is about. Few seeds give wide intervals, honestly so;
- with one seed, the interval is the paired t-interval over images (scipy.stats.ttest_rel); it
  covers image-to-image variation only, and the `ci_over` column says so.
A difference is `distinguishable` from noise when its interval excludes 0.
"""
import json
import math
from pathlib import Path

import numpy as np
from scipy import stats

from helpers.files import read_csv
from helpers.ratios import is_group_label, means_by_ratio

CONFIDENCE = 0.95


def read_run(run_dir: Path) -> dict:
    """What summaries need from one finished run folder (its summary.json must exist)."""
    summary = json.loads((run_dir / "summary.json").read_text())
    validation = read_csv(run_dir / "best_per_image.csv") if (run_dir / "best_per_image.csv").exists() else []
    test_csv = run_dir / "test_results" / "per_image.csv"
    test = read_csv(test_csv) if test_csv.exists() else []
    return {"folder": run_dir, "summary": summary, "val_images": validation, "test_images": test}


def _numbers(rows, key):
    return [float(row[key]) for row in rows if row.get(key) not in (None, "", "nan")]


def _mean(values):
    return float(np.mean(values)) if len(values) else math.nan


def _std(values):
    """Sample standard deviation over seeds (ddof=1); undefined for one seed."""
    return float(np.std(values, ddof=1)) if len(values) > 1 else math.nan


def run_scores(run: dict) -> dict:
    """One run's scores: best-epoch validation and final test means, overall and per ratio."""
    scores = {"best_val_psnr": run["summary"].get("best_val_psnr"), "best_epoch": run["summary"].get("best_epoch")}
    validation, test = run["val_images"], run["test_images"]
    if validation:
        scores["best_val_ssim"] = _mean(_numbers(validation, "ssim"))
        scores.update({f"best_val_{k}": v for k, v in means_by_ratio(validation, ("psnr",)).items()
                       if not k.startswith("images_")})
    keys = [k for k in ("psnr", "ssim", "mono_psnr", "mono_ssim") if test and k in test[0]]
    for key in keys:
        scores[f"test_{key}"] = _mean(_numbers(test, key))
    if test:
        scores.update({f"test_{k}": v for k, v in means_by_ratio(test, ("psnr",)).items()
                       if not k.startswith("images_")})
    return scores


def variant_row(runs_by_seed: dict) -> dict:
    """Mean and std over seeds of every score; `seeds` is how many finished runs went in."""
    per_run = [run_scores(run) for run in runs_by_seed.values()]
    row = {"seeds": len(per_run)}
    keys = list(dict.fromkeys(k for scores in per_run for k in scores if k != "best_epoch"))
    for key in keys:
        values = [s[key] for s in per_run if s.get(key) is not None and not math.isnan(s[key])]
        row[key] = _mean(values)
        if not is_group_label(key.rpartition("_")[2]):  # per-ratio columns: means only, to keep tables readable
            row[f"{key}_std"] = _std(values)
    row["best_epoch"] = ",".join(str(s["best_epoch"]) for s in per_run)
    first = next(iter(runs_by_seed.values()))["summary"]
    row["metric_precision"] = first.get("test_metric_precision", "float")
    row["ssim_variant"] = first.get("test_ssim_variant")
    return row


def paired_difference(variant_images: dict, reference_images: dict, key: str = "psnr") -> dict:
    """Mean of variant - reference over images paired by (seed, file), with a 95% confidence interval.

    `variant_images` / `reference_images`: {seed: per-image rows (with `file` and `key`)}. Only seeds
    and files present in both count. See the module docstring for the statistic."""
    paired_by_seed = []  # per seed: [(variant value, reference value)] over the images both scored
    for seed in sorted(set(variant_images) & set(reference_images), key=str):
        reference = {row["file"]: float(row[key]) for row in reference_images[seed]}
        paired = [(float(row[key]), reference[row["file"]]) for row in variant_images[seed] if row["file"] in reference]
        if paired:
            paired_by_seed.append(paired)
    per_seed = [float(np.mean([a - b for a, b in paired])) for paired in paired_by_seed]
    pairs = sum(len(paired) for paired in paired_by_seed)
    result = {"difference": math.nan, "ci_low": math.nan, "ci_high": math.nan, "ci_over": "", "pairs": pairs}
    if not per_seed:
        return result
    result["difference"] = float(np.mean(per_seed))
    if len(per_seed) >= 2:
        interval = stats.ttest_1samp(per_seed, 0.0).confidence_interval(CONFIDENCE)
        result["ci_over"] = f"{len(per_seed)} seeds"
    elif pairs >= 2:
        interval = stats.ttest_rel(*zip(*paired_by_seed[0])).confidence_interval(CONFIDENCE)
        result["ci_over"] = f"{pairs} images, 1 seed"
    else:
        return result
    result.update(ci_low=float(interval.low), ci_high=float(interval.high))
    return result


def distinguishable(difference: dict) -> str:
    """'yes' when the confidence interval excludes 0, 'no' when it contains it, '' when undefined."""
    low, high = difference["ci_low"], difference["ci_high"]
    if math.isnan(low) or math.isnan(high):
        return ""
    return "yes" if low > 0 or high < 0 else "no"
