"""`make docs-tables`: rerun the commands behind the documentation's measured tables and write their
results, conclusions and provenance (date, commit, machine) into README.md and docs/.

    python tools/docs_tables.py                       # all five: demo, ablation, latency, unseen, placements (~65 min, 2 CPUs)
    python tools/docs_tables.py --only demo latency   # a subset
    python tools/docs_tables.py --from-logs           # rewrite the docs from the last run's saved output only

A table lives between `<!-- table:NAME -->` and `<!-- /table -->` in any of README.md and docs/*.md;
everything between the markers is replaced. What each table runs and reads:

- demo:     `demo.py`; the summary table it prints (saved as results/docs_tables/demo.log);
- ablation: `ablation.py` after removing its earlier teacher and sweep results (otherwise finished runs
            of older code would be reused); results/sweep_ablation/summary.md and its per-ratio figure,
            copied to docs/ablation_test_psnr_per_ratio.png (its caption is the region ablation-figure);
- latency:  `bench/onnx_latency.py --runs 20 --profile --full-frame --json results/docs_tables/latency.json`;
- unseen:   `bench/unseen_photos.py --checkpoint onnx/demo_fp.pth` (after demo: the teacher it trains;
            needs scikit-learn); results/unseen_photos/summary.csv.
- placements: per MQBench placement (`quant_scheme.backend`), `train.py` on configfile/demo_qat.yaml
            without distillation, exported (`onnx: true`), then `tools/ptq.py --bits 8 --qat-checkpoint
            --onnx model_qdq.onnx --runtime onnxruntime openvino`; their ptq_summary.csv files under
            results/docs_tables/placements/ (after demo: the teacher they start from).

Each region is written as soon as its command has finished, so a failure later keeps the tables done
before it; a missing prerequisite stops the run before anything starts.

The conclusions written under each table are derived from the numbers (an interval that excludes 0 is
"distinguishable"), so they cannot disagree with the table they sit under.
"""
from __future__ import annotations

import argparse
import csv
import datetime
import importlib.util
import json
import os
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path

REPOSITORY_ROOT = Path(__file__).resolve().parents[1]
LOGS = Path("results/docs_tables")
TABLES = ("demo", "ablation", "latency", "unseen", "placements")
PLACEMENTS = ("academic", "onnx_qnn", "snpe", "tensorrt")
PLACEMENT_RUNS = LOGS / "placements"
REGION = re.compile(r"(<!-- table:(?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- /table -->)", re.DOTALL)
INTERVAL = re.compile(r"^(?P<d>[+-]?\d+(?:\.\d+)?)\s*\[(?P<low>[+-]?\d+(?:\.\d+)?),\s*(?P<high>[+-]?\d+(?:\.\d+)?)\]$")


def stop(message: str, status: int = 2):
    """One line and a non-zero exit (2: missing input; 1: a command failed), as the entry points do."""
    print(f"docs_tables: {message}", file=sys.stderr)
    raise SystemExit(status)


# ----------------------------------------------------------------------------- provenance

def git(*args) -> str:
    try:
        return subprocess.run(["git", *args], cwd=REPOSITORY_ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def machine() -> str:
    """The CPU model, its core count and the GPU (if any): what the figures depend on."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    gpu = "no GPU"
    try:
        import torch
        if torch.cuda.is_available():
            gpu = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return f"{model}, {cpus} CPUs, {gpu}"


def provenance(command: str, when: datetime.date | None = None, commit: str | None = None,
               where: str | None = None) -> str:
    """The line every measured table starts with (tests/test_docs.py reads the commit from it)."""
    commit = commit or git("rev-parse", "--short=7", "HEAD") or "unknown"
    dirty = " with uncommitted changes" if git("status", "--porcelain", "--untracked-files=no") else ""
    when = when or datetime.date.today()
    return (f"*Measured {when.isoformat()} at commit {commit}{dirty} on {where or machine()}, "
            f"by `{command}` (`make docs-tables`).*")


# ----------------------------------------------------------------------------- regions

def _fenced_spans(text: str) -> list[tuple[int, int]]:
    """Character spans of fenced code blocks: a marker shown as an example there is not a region."""
    spans, start, offset = [], None, 0
    for line in text.splitlines(keepends=True):
        if line.startswith("```"):
            if start is None:
                start = offset
            else:
                spans.append((start, offset + len(line)))
                start = None
        offset += len(line)
    return spans


def _live_matches(text: str):
    spans = _fenced_spans(text)
    return [m for m in REGION.finditer(text) if not any(a <= m.start() < b for a, b in spans)]


def regions(text: str) -> dict[str, str]:
    return {match["name"]: match["body"] for match in _live_matches(text)}


def replace_region(text: str, name: str, body: str) -> str:
    """`text` with the region `name` holding `body`; every occurrence is replaced, and a missing one is an error."""
    matches = [m for m in _live_matches(text) if m["name"] == name]
    if not matches:
        raise KeyError(f"no <!-- table:{name} --> region")
    body = body.rstrip("\n") + "\n"
    for match in reversed(matches):  # from the end, so earlier offsets stay valid
        text = text[:match.start()] + match.group(1) + body + match.group(4) + text[match.end():]
    return text


def documents(root: Path | None = None) -> list[Path]:
    root = root or REPOSITORY_ROOT
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


def write_regions(bodies: dict[str, str], root: Path | None = None) -> list[str]:
    """Rewrite every region named in `bodies` wherever it occurs; returns 'file: table' for each write."""
    root = root or REPOSITORY_ROOT  # read at call time: tests point it at a temporary folder
    written, found = [], set()
    for path in documents(root):
        text = path.read_text()
        new = text
        for name, body in bodies.items():
            if name in regions(new):
                new = replace_region(new, name, body)
                found.add(name)
                written.append(f"{path.relative_to(root)}: {name}")
        if new != text:
            path.write_text(new)
    missing = set(bodies) - found
    if missing:
        stop(f"no region for {sorted(missing)} in README.md or docs/")
    return written


# ----------------------------------------------------------------------------- parsing what commands print

def parse_printed_table(lines: list[str]) -> tuple[list[str], list[dict]]:
    """A table as harness.records.format_table prints it: right-aligned cells, two or more spaces apart,
    no empty cell (an empty value prints as '-'); it ends at the first blank line."""
    table = []
    for line in lines:
        if not line.strip():
            if table:
                break
            continue
        table.append(re.split(r"\s{2,}", line.strip()))
    if not table:
        raise ValueError("no table found")
    columns, rows = table[0], []
    for cells in table[1:]:
        if len(cells) != len(columns):
            raise ValueError(f"row {cells} has {len(cells)} cells for {len(columns)} columns {columns}")
        rows.append(dict(zip(columns, cells)))
    return columns, rows


def demo_table(output: str) -> tuple[list[str], list[dict]]:
    """The summary table demo.py prints after '=== demo summary'."""
    marker = output.find("=== demo summary")
    if marker < 0:
        raise ValueError("demo output has no '=== demo summary' section")
    return parse_printed_table(output[marker:].splitlines()[1:])


def parse_markdown_table(text: str) -> tuple[list[str], list[dict]]:
    lines = [line for line in text.splitlines() if line.startswith("|")]
    if len(lines) < 2:
        raise ValueError("no markdown table found")
    split = lambda line: [cell.strip() for cell in line.strip().strip("|").split("|")]  # noqa: E731
    columns = split(lines[0])
    return columns, [dict(zip(columns, split(line))) for line in lines[2:]]


def markdown_table(columns: list[str], rows: list[dict]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(row.get(c, "")) or "-" for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def interval(text: str):
    """(difference, low, high) from '+0.64 [+0.32, +0.95]', or None."""
    match = INTERVAL.match(text.strip())
    return (float(match["d"]), float(match["low"]), float(match["high"])) if match else None


def reading(label: str, against: str, text: str, unit: str = "dB") -> str:
    values = interval(text)
    if values is None:
        return ""
    difference, low, high = values
    verdict = ("distinguishable: the interval excludes 0" if low > 0 or high < 0
               else "not distinguishable: the interval contains 0")
    return f"- {label} against {against}: {difference:+.2f} {unit} [{low:+.2f}, {high:+.2f}], {verdict}."


# ----------------------------------------------------------------------------- the four tables

def demo_body(output: str, stamp: str) -> str:
    columns, rows = demo_table(output)
    gain_column = next(c for c in columns if c.startswith("vs PTQ"))
    lines = [reading(row["model"], "PTQ", row[gain_column]) for row in rows]
    return "\n".join([stamp, "", markdown_table(columns, rows), "",
                      "One seed, so each interval covers image-to-image variation only (paired per test image):",
                      *[line for line in lines if line]])


ABLATION_COLUMNS = {"variant": "variant", "test PSNR": "test PSNR", "test SSIM": "test SSIM",
                    "reference": "reference", "Δ test PSNR [95% CI]": "Δ test PSNR [95% CI]",
                    "distinguishable": "distinguishable"}


def ablation_body(summary_md: str, stamp: str) -> str:
    columns, rows = parse_markdown_table(summary_md)
    ratios = [c for c in columns if c.startswith("test PSNR x")]
    chosen = ["variant", "test PSNR", "test SSIM", *ratios, "reference", "Δ test PSNR [95% CI]", "distinguishable"]
    chosen = [c for c in chosen if c in columns]
    shown = [{c.removeprefix("test PSNR ") if c in ratios else c: row.get(c, "") for c in chosen} for row in rows]
    header = [c.removeprefix("test PSNR ") if c in ratios else c for c in chosen]
    lines = [reading(f"`{row['variant']}`", f"`{row['reference']}`", row.get("Δ test PSNR [95% CI]", ""))
             for row in rows if row.get("reference")]
    return "\n".join([stamp, "",
                      "Test split, mean ± std over seeds; Δ = paired difference to the reference with its 95% CI "
                      "over seeds (results/sweep_ablation/summary.md):", "",
                      markdown_table(header, shown), "", "Read with the noise:", *[line for line in lines if line]])


def latency_body(result: dict, stamp: str) -> str:
    """The table of bench/onnx_latency.py --json: every model in every runtime, with the CPU it ran on,
    the export check per runtime and the targets the bench read from the same run."""
    rows = result["rows"]
    fp32_ort = next(row["median_ms"] for row in rows if row["model"] == "fp32" and row["runtime"] == "onnxruntime f32")
    own_fp32 = {row["runtime"]: row["median_ms"] for row in rows if row["model"] == "fp32"}
    check = {True: "pass", False: "FAIL", None: "-"}
    table = [{"model": row["model"], "runtime": row["runtime"], "MB": f"{row['file_mb']:.1f}",
              "ms median (min)": f"{row['median_ms']:.0f} ({row['min_ms']:.0f})",
              "vs ORT FP32": f"{fp32_ort / row['median_ms']:.2f}x",
              "vs own FP32": f"{own_fp32[row['runtime']] / row['median_ms']:.2f}x",
              "check": check[row.get("passed")],
              "agree dB": f"{row['psnr_vs_onnxruntime']:.1f}" if row.get("psnr_vs_onnxruntime") is not None else "",
              "how it ran": row.get("execution", "")}
             for row in rows]
    cpu = result.get("cpu", {})
    machine = (f"CPU: {cpu.get('model', '?')} ({cpu.get('logical_cpus', '?')} logical CPUs; flags: "
               f"{' '.join(cpu.get('flags', [])) or 'none of note'}); {result.get('versions', '')}.")
    targets = ["Targets, as the bench read them from this run:", *[f"- {line}" for line in result.get("targets", [])]]
    profiles = [f"- {row['model']} ({row['runtime']}): {sum(row['kernel_ms_by_op'].values()):.0f} ms, of which "
                + ", ".join(f"{op} {ms:.0f}" for op, ms in list(row["kernel_ms_by_op"].items())[:4])
                for row in rows if row.get("kernel_ms_by_op")]
    if profiles:
        profiles.insert(0, "Kernel time per run by op type (onnxruntime's profiler; the rest of a run is "
                           "scheduling and memory):")
    frames = result.get("full_frame", [])
    frame_fp32 = {row["runtime"]: row["median_ms"] for row in frames if row["model"] == "fp32"}
    frame_table = [{"model": row["model"], "runtime": row["runtime"], "s per frame": f"{row['median_ms'] / 1e3:.2f}",
                    "vs FP32, same runtime": f"{frame_fp32[row['runtime']] / row['median_ms']:.2f}x"} for row in frames]
    full = ["Full frames: one 1x1x2848x4256 mosaic (a whole Sony frame, no tiling): in each runtime FP32 and "
            "the W8A8 export that was fastest there while passing, each session alone (not interleaved), one "
            "run after a warm-up:", "", markdown_table(list(frame_table[0]), frame_table), ""] if frame_table else []
    return "\n".join([stamp, "", machine, "1x1x512x512 input, full width, 2 threads, median (min) of 20 runs "
                      "interleaved across every row; \"agree dB\": PSNR of this output against onnxruntime's, same "
                      "model. Latency on a shared machine moves by tens of percent from hour to hour; compare rows of "
                      "one run.", "", markdown_table(list(table[0]), table), "", *full,
                      *targets, *([""] + profiles if profiles else [])])


def unseen_body(summary_rows: list[dict], stamp: str) -> str:
    table = [{"ratio": row["ratio"], "pairs": row["pairs"],
              "teacher PSNR (dB)": f"{float(row['psnr']):.2f}", "naive PSNR (dB)": f"{float(row['baseline_psnr']):.2f}",
              "teacher SSIM": f"{float(row['ssim']):.3f}", "naive SSIM": f"{float(row['baseline_ssim']):.3f}"}
             for row in summary_rows]
    losing = [row["ratio"] for row in summary_rows
              if float(row["psnr"]) <= float(row["baseline_psnr"]) or float(row["ssim"]) <= float(row["baseline_ssim"])]
    verdict = ("The teacher beats the naive baseline in PSNR and SSIM at every ratio on average."
               if not losing else f"The teacher does not beat the naive baseline at: {', '.join(losing)}.")
    return "\n".join([stamp, "", markdown_table(list(table[0]), table), "", verdict])


def placements_body(summaries: dict[str, list[dict]], stamp: str) -> str:
    """Test-split PSNR / SSIM per placement from tools/ptq.py's ptq_summary.csv of each placement's QAT
    run: MQBench PTQ, the QAT model in PyTorch, and its exported QDQ file in each runtime; onnxruntime's
    own quantize_static once (it does not depend on the placement)."""
    def cell(row):
        return f"{float(row['psnr']):.3f} / {float(row['ssim']):.3f}" if row and row["psnr"] not in ("", "nan") else "-"

    def find(rows, method, runtime=""):
        return next((r for r in rows if r["method"].startswith(method) and r["runtime"].startswith(runtime)), None)

    first = next(iter(summaries.values()))
    table = [{"backend": f"(FP32 teacher: {cell(find(first, 'fp32'))})", "MQBench PTQ W8A8": "",
              "QAT W8A8, fake-quant PyTorch": "", "QAT exported, onnxruntime": "", "QAT exported, OpenVINO": ""}]
    gaps = []
    for backend, rows in summaries.items():
        qat = find(rows, "qat")
        exported = {runtime: find(rows, "onnx ", runtime) for runtime in ("onnxruntime", "openvino")}
        table.append({"backend": f"`{backend}`", "MQBench PTQ W8A8": cell(find(rows, "mqbench_ptq")),
                      "QAT W8A8, fake-quant PyTorch": cell(qat),
                      "QAT exported, onnxruntime": cell(exported["onnxruntime"]),
                      "QAT exported, OpenVINO": cell(exported["openvino"])})
        gaps += [abs(float(row["psnr"]) - float(qat["psnr"])) for row in exported.values() if row and qat
                 and row["psnr"] not in ("", "nan")]
    table.append({"backend": "onnxruntime `quantize_static` (PTQ)", "MQBench PTQ W8A8": "",
                  "QAT W8A8, fake-quant PyTorch": "",
                  "QAT exported, onnxruntime": cell(find(first, "onnxruntime_ptq", "onnxruntime")),
                  "QAT exported, OpenVINO": cell(find(first, "onnxruntime_ptq", "openvino"))})
    qat_psnr = [float(find(rows, "qat")["psnr"]) for rows in summaries.values() if find(rows, "qat")]
    ptq_psnr = [float(find(rows, "mqbench_ptq")["psnr"]) for rows in summaries.values() if find(rows, "mqbench_ptq")]
    notes = ["(PSNR dB / SSIM on the test split; the quantize_static row is PTQ, not QAT, in each runtime.)", ""]
    if gaps:
        notes.append(f"Every exported model scores within {max(gaps):.3f} dB of the fake-quant model it came from, "
                     "in both runtimes.")
    if qat_psnr and ptq_psnr:
        notes.append(f"The spread between placements is {max(qat_psnr) - min(qat_psnr):.3f} dB after QAT and "
                     f"{max(ptq_psnr) - min(ptq_psnr):.3f} dB after PTQ (one seed each).")
    return "\n".join([stamp, "", markdown_table(list(table[0]), table), "", *notes])


# ----------------------------------------------------------------------------- running

def run(command: list[str], log: Path | None = None) -> str:
    """Run `command` from the repository root, showing its output as it comes (it has progress bars and
    ETAs) and returning it; a failure stops here, before any document changes."""
    print(f"\n$ {' '.join(command)}", flush=True)
    process = subprocess.Popen([sys.executable, *command], cwd=REPOSITORY_ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    lines = []
    for line in process.stdout:
        print(line, end="", flush=True)
        lines.append(line)
    output = "".join(lines)
    if log is not None:
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(output)
    if process.wait():
        stop(f"`{' '.join(command)}` exited {process.returncode}; its table is unchanged", 1)
    return output


def clear_ablation_results() -> None:
    """ablation.py skips a trained teacher and finished variants; results of older code must not be reused."""
    sys.path.insert(0, str(REPOSITORY_ROOT))
    try:
        from harness.config import load_config
    except ImportError:
        from harness.config import load_config
    teacher = load_config(REPOSITORY_ROOT / "configfile/ablation_teacher.yaml", check_files=False)
    for path in (REPOSITORY_ROOT / teacher.run_dir, REPOSITORY_ROOT / "results/sweep_ablation"):
        shutil.rmtree(path, ignore_errors=True)
    for suffix in (".pth", ".safetensors"):
        (REPOSITORY_ROOT / teacher.artifacts_dir / f"{teacher.experiment}{suffix}").unlink(missing_ok=True)


def best_checkpoint(config_path: Path) -> Path:
    """The run's best checkpoint, as test.py and export_onnx.py pick it (harness.evaluate_run), relative
    to the repository root like the run's own paths."""
    import contextlib
    sys.path.insert(0, str(REPOSITORY_ROOT))
    from harness.config import load_config
    from harness.evaluate_run import default_checkpoint
    with contextlib.chdir(REPOSITORY_ROOT):
        return default_checkpoint(load_config(config_path, check_files=False))


def check_prerequisites(names: list[str], from_logs: bool) -> None:
    """Stop before 40 minutes of work, not after, when a table cannot be made."""
    logs = REPOSITORY_ROOT / LOGS
    needed = {"demo": logs / "demo.log", "ablation": REPOSITORY_ROOT / "results/sweep_ablation/summary.md",
              "latency": logs / "latency.json", "unseen": REPOSITORY_ROOT / "results/unseen_photos/summary.csv",
              "placements": REPOSITORY_ROOT / PLACEMENT_RUNS / f"placement_{PLACEMENTS[-1]}" / "ptq" / "ptq_summary.csv"}
    if from_logs:
        missing = [f"{name} ({needed[name].relative_to(REPOSITORY_ROOT)})" for name in names if not needed[name].exists()]
        if missing:
            stop(f"--from-logs: no saved output for {', '.join(missing)}; run without --from-logs")
        return
    if "unseen" in names and importlib.util.find_spec("sklearn") is None:
        stop('the unseen-photo table needs scikit-learn (its photos): '
             'pip install "scikit-learn>=1.3,<2", or leave it out with --only demo ablation latency')
    for name in ("unseen", "placements"):
        if name in names and "demo" not in names and not (REPOSITORY_ROOT / "onnx/demo_fp.pth").exists():
            stop(f"the {name} table starts from onnx/demo_fp.pth, which make demo trains; add demo to --only")


def regenerate(names: list[str], from_logs: bool, write=None) -> dict[str, str]:
    """Run the commands behind `names` and turn their output into region bodies; `write(name, body)` is
    called as each one is ready."""
    logs = REPOSITORY_ROOT / LOGS
    bodies = {}
    for name in names:
        if name == "demo":
            command = "python demo.py"
            output = (logs / "demo.log").read_text() if from_logs else run(["demo.py"], logs / "demo.log")
            bodies[name] = demo_body(output, stamp(command, logs / "demo.log", from_logs))
        elif name == "ablation":
            command = "python ablation.py"
            if not from_logs:
                clear_ablation_results()
                run(["ablation.py"], logs / "ablation.log")
            summary = REPOSITORY_ROOT / "results/sweep_ablation/summary.md"
            bodies[name] = ablation_body(summary.read_text(), stamp(command, summary, from_logs))
            figure = REPOSITORY_ROOT / "results/sweep_ablation/test_psnr_per_ratio.png"
            if figure.exists():  # its caption region says where and when it was drawn
                shutil.copyfile(figure, REPOSITORY_ROOT / "docs/ablation_test_psnr_per_ratio.png")
                caption = stamp(command, figure, from_logs)
                bodies["ablation-figure"] = caption[:-1] + " Mean ± std over seeds; from results/sweep_ablation/.*"
                if write is not None:
                    write("ablation-figure", bodies["ablation-figure"])
        elif name == "latency":
            command = "python bench/onnx_latency.py --runs 20 --profile --full-frame"
            if not from_logs:
                run(["bench/onnx_latency.py", "--runs", "20", "--profile", "--full-frame", "--json",
                     str(LOGS / "latency.json")],
                    logs / "latency.log")
            bodies[name] = latency_body(json.loads((logs / "latency.json").read_text()),
                                        stamp(command, logs / "latency.json", from_logs))
        elif name == "unseen":
            command = "python bench/unseen_photos.py --checkpoint onnx/demo_fp.pth"
            if not from_logs:
                run(["bench/unseen_photos.py", "--checkpoint", "onnx/demo_fp.pth"], logs / "unseen.log")
            summary = REPOSITORY_ROOT / "results/unseen_photos/summary.csv"
            bodies[name] = unseen_body(list(csv.DictReader(summary.open())), stamp(command, summary, from_logs))
        elif name == "placements":
            command = ("python train.py --config configfile/demo_qat.yaml --set quant_scheme.backend=B "
                       "--set distill_coeff=0.0 --set onnx=true; python tools/ptq.py --bits 8 --qat-checkpoint "
                       "--onnx model_qdq.onnx --runtime onnxruntime openvino; for each placement B")
            summaries = {}
            for backend in PLACEMENTS:
                run_dir = PLACEMENT_RUNS / f"placement_{backend}"
                if not from_logs:
                    run(["train.py", "--config", "configfile/demo_qat.yaml", "--overwrite",
                         "--set", f"quant_scheme.backend={backend}", "--set", "distill_coeff=0.0", "--set", "onnx=true",
                         "--set", f"output.experiment=placement_{backend}",
                         "--set", f"output.results_dir={PLACEMENT_RUNS}", "--set", f"output.artifacts_dir={PLACEMENT_RUNS}"],
                        logs / f"placement_{backend}_train.log")
                    run(["tools/ptq.py", "--config", str(run_dir / "config.yaml"), "--bits", "8",
                         "--qat-checkpoint", str(best_checkpoint(run_dir / "config.yaml")),
                         "--onnx", str(run_dir / "model_qdq.onnx"), "--runtime", "onnxruntime", "openvino",
                         *(["--skip-onnxruntime"] if backend != PLACEMENTS[0] else [])],
                        logs / f"placement_{backend}_ptq.log")
                with (REPOSITORY_ROOT / run_dir / "ptq" / "ptq_summary.csv").open() as handle:
                    summaries[backend] = list(csv.DictReader(handle))
            bodies[name] = placements_body(summaries, stamp(command, REPOSITORY_ROOT / run_dir / "ptq" / "ptq_summary.csv",
                                                            from_logs))
        if write is not None:
            write(name, bodies[name])
    return bodies


def stamp(command: str, result: Path, from_logs: bool) -> str:
    """Provenance; from saved logs the date is the file's (the commit and machine are today's: rerun to be sure)."""
    when = datetime.date.fromtimestamp(result.stat().st_mtime) if from_logs else None
    return provenance(command, when)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", choices=TABLES, default=list(TABLES), help="tables to regenerate")
    parser.add_argument("--from-logs", action="store_true",
                        help=f"run nothing; rewrite from the output saved in {LOGS} and the results folders")
    arguments = parser.parse_args(argv)
    names = [name for name in TABLES if name in arguments.only]  # demo before unseen: unseen scores its teacher
    check_prerequisites(names, arguments.from_logs)

    def write(name, body):
        for line in write_regions({name: body}):
            print(f"rewrote {line}", flush=True)

    regenerate(names, arguments.from_logs, write)
    print("check the conclusions in the prose around the tables, then commit the docs with the code that moved them")
    return 0


if __name__ == "__main__":
    sys.exit(main())
