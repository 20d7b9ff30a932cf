"""Sweep figures that do not mislead: error bars are the standard deviation over seeds, epoch axes
have integer ticks, and every y-axis spans at least MINIMUM_SPAN_DB and four standard deviations,
so that differences inside the noise do not fill the plot (one seed: no bars, the minimum span).

- best_psnr.png: validation (best epoch) and test PSNR per variant, the reference's test mean ± std
  shaded;
- psnr_curves.png: validation PSNR per epoch, mean over seeds with a ± std band;
- test_psnr_per_ratio.png: the figure for a thesis: test PSNR against the swept value (or the
  variant), one panel for all images and one per exposure ratio, with error bars.
"""
import io
import math
from pathlib import Path

import numpy as np

from helpers.files import read_csv, write_bytes_atomic
from helpers.ratios import group_columns
from sweeps.summary import run_scores

SWEEP_FIGURES = ("best_psnr.png", "psnr_curves.png", "test_psnr_per_ratio.png")
MINIMUM_SPAN_DB = 0.5


def noise_aware_limits(means, spreads, minimum_span=MINIMUM_SPAN_DB) -> tuple[float, float]:
    """y-limits holding every mean ± spread with a margin, at least `minimum_span` and four of the
    largest spread wide."""
    means = np.asarray([m for m in means if m is not None and not math.isnan(m)], dtype=float)
    if means.size == 0:
        return 0.0, 1.0
    spreads = np.asarray([s if s is not None and not math.isnan(s) else 0.0 for s in spreads][:len(means)]
                         + [0.0] * max(0, len(means) - len(spreads)), dtype=float)
    low, high = float(np.min(means - spreads)), float(np.max(means + spreads))
    span = max((high - low) * 1.3, 4 * float(np.max(spreads)), minimum_span)
    middle = (low + high) / 2
    return middle - span / 2, middle + span / 2


def _swept_axis(sweep, variants, rows):
    """x positions and labels: the swept value when one numeric key is swept, else the variants in order."""
    keys = list(sweep.grid)
    shown = [v for v in variants if any(r["variant"] == v["name"] for r in rows)]
    numeric = (len(keys) == 1 and not sweep.variants
               and all(isinstance(v["swept"].get(keys[0]), (int, float)) for v in shown))
    if numeric:
        return [float(v["swept"][keys[0]]) for v in shown], None, keys[0], shown
    return list(range(len(shown))), [v["name"] for v in shown], "variant", shown


def _seed_values(finished, name, key):
    values = [run_scores(run).get(key) for run in finished.get(name, {}).values()]
    return [v for v in values if v is not None and not math.isnan(v)]


def _mean_std(values):
    if not values:
        return math.nan, math.nan
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else math.nan


def plot_sweep(sweep, variants, rows, finished, results_dir: Path) -> None:
    if not rows:
        return
    import matplotlib
    matplotlib.use("Agg")  # no display: figures only go to files
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    def save(figure, name):
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
        plt.close(figure)
        write_bytes_atomic(results_dir / name, buffer.getvalue())

    positions, labels, x_label, shown = _swept_axis(sweep, variants, rows)
    seeds = f"mean ± std over {len(sweep.seeds)} seeds" if sweep.seeds else "one seed, no error bars"
    by_name = {r["variant"]: r for r in rows}

    def set_x(axis):
        if labels is not None:
            axis.set_xticks(positions, labels, rotation=30, ha="right", fontsize=8)
            axis.set_xlim(-0.5, len(positions) - 0.5)
        axis.set_xlabel(x_label)

    # best_psnr.png
    figure, axis = plt.subplots(figsize=(max(5, 0.9 * len(shown) + 2), 3.8))
    plotted_means, plotted_spreads = [], []
    offset = 0.1 * (positions[1] - positions[0]) if labels is None and len(positions) > 1 else 0.1
    for shift, key, name in ((-offset, "best_val_psnr", "validation (best epoch)"), (offset, "test_psnr", "test")):
        means = [by_name[v["name"]].get(key, math.nan) for v in shown]
        spreads = [by_name[v["name"]].get(f"{key}_std", math.nan) for v in shown]
        axis.errorbar([p + shift for p in positions], means, yerr=np.nan_to_num(spreads), fmt="o", capsize=4, label=name)
        plotted_means += means
        plotted_spreads += spreads
    reference = sweep.reference
    if reference in by_name:
        mean, spread = by_name[reference]["test_psnr"], by_name[reference].get("test_psnr_std", math.nan)
        if not math.isnan(spread):
            axis.axhspan(mean - spread, mean + spread, color="grey", alpha=0.2, label=f"{reference} test ± std")
        axis.axhline(mean, color="grey", linewidth=0.8)
    axis.set_ylim(*noise_aware_limits(plotted_means, plotted_spreads))
    axis.set_ylabel("PSNR (dB)")
    set_x(axis)
    axis.set_title(f"sweep {sweep.name} ({seeds})", fontsize=9)
    axis.legend(fontsize=7)
    save(figure, "best_psnr.png")

    # psnr_curves.png
    figure, axis = plt.subplots(figsize=(6, 4))
    curve_means, curve_spreads = [], []
    for variant in shown:
        by_epoch = {}
        for run in finished.get(variant["name"], {}).values():
            for record in read_csv(run["folder"] / "metrics.csv"):
                if record.get("psnr") not in (None, "", "nan"):
                    by_epoch.setdefault(int(record["epoch"]), []).append(float(record["psnr"]))
        epochs = sorted(by_epoch)
        if not epochs:
            continue
        stats = [_mean_std(by_epoch[e]) for e in epochs]
        means, spreads = [s[0] for s in stats], [s[1] for s in stats]
        line, = axis.plot(epochs, means, marker=".", label=variant["name"])
        if any(not math.isnan(s) for s in spreads):
            spreads_filled = np.nan_to_num(spreads)
            axis.fill_between(epochs, np.array(means) - spreads_filled, np.array(means) + spreads_filled,
                              color=line.get_color(), alpha=0.2)
        curve_means += means
        curve_spreads += spreads
    axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    axis.set_ylim(*noise_aware_limits(curve_means, curve_spreads))
    axis.set_xlabel("epoch")
    axis.set_ylabel("validation PSNR (dB)")
    axis.set_title(f"{seeds}; band: ± std", fontsize=9)
    axis.legend(fontsize=7)
    save(figure, "psnr_curves.png")

    # test_psnr_per_ratio.png
    ratios = group_columns(rows, "test_psnr_")
    panels = [("all images", "test_psnr")] + [(ratio, f"test_psnr_{ratio}") for ratio in ratios]
    figure, axes = plt.subplots(1, len(panels), figsize=(max(4.5, 0.7 * len(shown) + 2) * len(panels) * 0.7, 3.8),
                                squeeze=False)
    for axis, (title, key) in zip(axes[0], panels):
        stats = [_mean_std(_seed_values(finished, v["name"], key)) for v in shown]
        means, spreads = [s[0] for s in stats], [s[1] for s in stats]
        axis.errorbar(positions, means, yerr=np.nan_to_num(spreads), fmt="o-" if labels is None else "o",
                      capsize=4)
        axis.set_ylim(*noise_aware_limits(means, spreads))
        axis.set_title(title, fontsize=9)
        set_x(axis)
    axes[0][0].set_ylabel("test PSNR (dB)")
    figure.suptitle(f"sweep {sweep.name}: test PSNR per exposure ratio ({seeds})", fontsize=10)
    save(figure, "test_psnr_per_ratio.png")

