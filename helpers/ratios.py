"""Per-exposure-ratio means. SID mixes x100, x250 and x300 inputs whose difficulty differs by
several dB, so a change can help one ratio and hurt another while the overall mean hardly moves;
every report therefore shows each ratio beside the overall (image-weighted) mean."""
import math

import numpy as np


def ratio_label(ratio) -> str:
    """100.0 -> 'x100' (the column suffix used in every report)."""
    return f"x{float(ratio):g}"


def means_by_ratio(rows: list[dict], keys=("psnr", "ssim")) -> dict:
    """{'psnr_x100': mean, ..., 'images_x100': n} over the rows of each ratio, ratios in ascending order.
    The image-weighted average of the per-ratio means is the overall mean."""
    means = {}
    # Images without a known ratio (NaN, e.g. API batches without one) count only in the overall means.
    ratios = {float(row["ratio"]) for row in rows}
    for ratio in sorted(r for r in ratios if not math.isnan(r)):
        selected = [row for row in rows if float(row["ratio"]) == ratio]
        label = ratio_label(ratio)
        for key in keys:
            values = [float(row[key]) for row in selected if row.get(key) not in (None, "")]
            means[f"{key}_{label}"] = float(np.mean(values)) if values else math.nan
        means[f"images_{label}"] = len(selected)
    return means
