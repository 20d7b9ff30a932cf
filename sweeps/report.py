"""The sweep's table: one row per variant (mean +- std over seeds, test PSNR per ratio, the paired
difference to the reference with its CI), written as summary.csv and summary.md, with the figures."""
import math
from pathlib import Path

from helpers.ratios import group_columns
from helpers.files import write_csv_atomic, write_text_atomic
from quant.cost import sweep_cost_columns
from sweeps.plots import plot_sweep
from sweeps.summary import distinguishable, paired_difference, read_run, variant_row
from sweeps.variants import SweepConfig, expand_runs, value_label


def summarise(sweep: SweepConfig, variants: list[dict], results_dir: Path) -> list[dict]:
    """One row per variant with at least one finished run; writes summary.csv, summary.md and figures."""
    finished = {}  # variant name -> {seed: run results}
    for run in expand_runs(sweep, variants):
        if (results_dir / run["name"] / "summary.json").exists():
            finished.setdefault(run["variant"], {})[run["seed"]] = read_run(results_dir / run["name"])
    rows = []
    for variant in variants:
        if variant["name"] not in finished:
            continue
        row = {"variant": variant["name"],
               **({"named_variant": variant["named"]} if sweep.variants and sweep.grid else {}),
               **{key: value_label(value) for key, value in variant["swept"].items()},
               **variant_row(finished[variant["name"]])}
        reference = variant["reference"]
        if reference in finished:
            row["reference"] = reference
            for metric in ("psnr", "ssim"):
                difference = paired_difference(
                    {seed: run["test_images"] for seed, run in finished[variant["name"]].items()},
                    {seed: run["test_images"] for seed, run in finished[reference].items()}, metric)
                row[f"d_test_{metric}"] = difference["difference"]
                row[f"d_test_{metric}_ci_low"] = difference["ci_low"]
                row[f"d_test_{metric}_ci_high"] = difference["ci_high"]
                row[f"d_test_{metric}_distinguishable"] = distinguishable(difference)
            row["ci_over"] = difference["ci_over"]
        first_run = next(iter(finished[variant["name"]].values()))
        row.update(sweep_cost_columns(first_run["summary"], first_run["folder"]))  # bits, BOPs (quant/cost.py)
        rows.append(row)
    rows.sort(key=lambda r: -(r["best_val_psnr"] if r.get("best_val_psnr") is not None else -math.inf))
    write_csv_atomic(results_dir / "summary.csv", rows, _ordered_columns(rows))
    write_text_atomic(results_dir / "summary.md", _markdown(sweep, rows))
    plot_sweep(sweep, variants, rows, finished, results_dir)
    return rows


def _ordered_columns(rows: list[dict]) -> list[str]:
    present = list(dict.fromkeys(k for r in rows for k in r))
    tail = [c for c in present if c.startswith(("reference", "d_test_", "ci_over"))] + \
           [c for c in ("best_epoch", "metric_precision", "ssim_variant") if c in present]
    return [c for c in present if c not in tail] + tail


def _plus_minus(row, key, digits=2) -> str:
    mean, spread = row.get(key), row.get(f"{key}_std")
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "-"
    if spread is None or math.isnan(spread):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {spread:.{digits}f}"


def _difference_text(row, metric="psnr", digits=3) -> str:
    if f"d_test_{metric}" not in row or math.isnan(row[f"d_test_{metric}"]):
        return ""
    low, high = row[f"d_test_{metric}_ci_low"], row[f"d_test_{metric}_ci_high"]
    interval = "" if math.isnan(low) else f" [{low:+.{digits}f}, {high:+.{digits}f}]"
    return f"{row[f'd_test_{metric}']:+.{digits}f}{interval}"


def display_rows(rows: list[dict]) -> tuple[list[dict], list[str]]:
    """The table people read (printed and in summary.md): mean ± std over seeds, test PSNR per ratio,
    the difference to the reference with its 95% CI."""
    ratios = group_columns(rows, "test_psnr_")
    table = []
    for row in rows:
        line = {"variant": row["variant"], "seeds": row["seeds"],
                "best_val_psnr": _plus_minus(row, "best_val_psnr"), "val SSIM": _plus_minus(row, "best_val_ssim", 4),
                "test PSNR": _plus_minus(row, "test_psnr"), "test SSIM": _plus_minus(row, "test_ssim", 4)}
        if "test_mono_psnr" in row:
            line["test mono PSNR"] = _plus_minus(row, "test_mono_psnr")
        line.update({f"test PSNR {ratio}": f"{row[f'test_psnr_{ratio}']:.2f}" if f"test_psnr_{ratio}" in row else "-"
                     for ratio in ratios})
        if any("reference" in r for r in rows):
            line.update({"reference": row.get("reference", ""), "Δ test PSNR [95% CI]": _difference_text(row),
                         "distinguishable": row.get("d_test_psnr_distinguishable", ""),
                         "CI over": row.get("ci_over", "")})
        table.append(line)
    return table, list(dict.fromkeys(k for line in table for k in line))


def _markdown(sweep: SweepConfig, rows: list[dict]) -> str:
    table, columns = display_rows(rows)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(line.get(c, "")) for c in columns) + " |" for line in table]
    mode = rows[0]["metric_precision"] if rows else "-"
    variant = rows[0]["ssim_variant"] if rows else "-"
    seeds = f"seeds {sweep.seeds}, values are mean ± std over seeds" if sweep.seeds else "one run per variant"
    note = ("\n\nΔ: mean paired difference to the reference on the test images (same images, same seed), "
            "95% CI as described in sweeps/summary.py; distinguishable = the CI excludes 0."
            if any("reference" in r for r in rows) else "")
    return (f"# Sweep {sweep.name}\n\nBase: `{sweep.base}`; {seeds}; sorted by best validation PSNR "
            f"(best_val_psnr). Metric: {mode} images, SSIM variant: {variant}.{note}\n\n" + "\n".join(lines) + "\n")
