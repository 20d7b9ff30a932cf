"""Per-exposure-ratio means. SID mixes x100, x250 and x300 inputs whose difficulty differs by
several dB, so a change can help one ratio and hurt another while the overall mean hardly moves;
every report therefore shows each ratio beside the overall (image-weighted) mean.

A row's group is its `group` column when it has one (data sets name it: SID and camera pairs x100,
MCR its exposure group, the shutter width 0x00ff), else the label of its ratio (older results)."""
import math
import re

import numpy as np

# x100, x2.5 (ratios) or 0x00ff (MCR shutter widths): what may follow `psnr_` in a per-group column.
_GROUP_LABEL = re.compile(r"^(x\d+(\.\d+)?|0x[0-9a-f]+)$")


def ratio_label(ratio) -> str:
    """100.0 -> 'x100' (the column suffix used in every report)."""
    return f"x{float(ratio):g}"


def is_group_label(label: str) -> bool:
    return bool(_GROUP_LABEL.match(label))


def group_sort_key(label: str):
    """Ratios ascending; shutter widths descending (the longest exposure, least amplified, first)."""
    if label.startswith("0x"):
        return (1, -int(label, 16))
    return (0, float(label[1:]))


def group_of(row: dict) -> str:
    return row.get("group") or ratio_label(row["ratio"])


def group_columns(rows: list[dict], prefix: str) -> list[str]:
    """The group labels of the `<prefix><label>` columns in rows (std columns excluded), in table order."""
    labels = {key[len(prefix):] for row in rows for key in row if key.startswith(prefix)}
    return sorted((label for label in labels if is_group_label(label)), key=group_sort_key)


def means_by_ratio(rows: list[dict], keys=("psnr", "ssim")) -> dict:
    """{'psnr_x100': mean, ..., 'images_x100': n} over the rows of each group (ratio or exposure group),
    in table order. The image-weighted average of the per-group means is the overall mean."""
    means = {}
    # Images without a group or a known ratio (NaN, e.g. API batches without one: "xnan") count only
    # in the overall means.
    labels = {label for label in map(group_of, rows) if is_group_label(label)}
    for label in sorted(labels, key=group_sort_key):
        selected = [row for row in rows if group_of(row) == label]
        for key in keys:
            values = [float(row[key]) for row in selected if row.get(key) not in (None, "")]
            means[f"{key}_{label}"] = float(np.mean(values)) if values else math.nan
        means[f"images_{label}"] = len(selected)
    return means
