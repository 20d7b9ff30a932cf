"""The documentation cannot rot: README.md and docs/*.md are checked against the code they describe.

The rules (markers, provenance lines, table regions) are in docs/README.md. Here:
- every fenced bash/python block is checked: commands marked `<!-- runnable -->` run at debug size on a
  tiny generated SID-format set; the others are checked for syntax, for scripts that exist and for
  flags their argparse accepts; YAML blocks marked as sweep or run configs must load as such;
- every relative link and anchor resolves, and every repository path named in a code span exists;
- docs/config.md is what tools/config_reference.py generates from the schema;
- every measured table names its date, commit and machine, and the commit is an ancestor of HEAD;
- the demo's table in the README has the rows and columns that a debug-size `demo.py` prints, and
  tools/docs_tables.py rewrites table regions from such output.
"""
from __future__ import annotations

import ast
import importlib.util
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from clitools import REPOSITORY_ROOT, run_here

DOCUMENTS = [REPOSITORY_ROOT / "README.md", *sorted((REPOSITORY_ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(?P<lang>[\w+-]*)\s*$")
MARKER = re.compile(r"^<!--\s*(?P<marker>[^>]*?)\s*-->$")
PROVENANCE = re.compile(r"(?:Measured|Computed)\s+(?P<date>\d{4}-\d{2}-\d{2})\s+at\s+commits?\s+(?P<rest>[^*]*)", re.I)
SHA = re.compile(r"\b[0-9a-f]{7,40}\b")  # read only after "at commit": an all-digit short hash is a hash too
# Top-level folders whose files a code span may name; artefact folders (results/, onnx/<run>/) are not checked.
SOURCE_FOLDERS = ("harness", "helpers", "checkpoints", "sweeps", "tools", "quant", "distill", "deploy",
                  "models", "data", "configfile", "bench", "tests", "examples", "scripts", "lowlight_qat", "docs")


def load_tool(name: str):
    """A tools/ script as a module (the test is not a script, so it may import one)."""
    spec = importlib.util.spec_from_file_location(f"docs_test_{name}", REPOSITORY_ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@dataclass
class Block:
    path: Path
    line: int  # of the opening fence, 1-based
    lang: str
    marker: str  # '' when unmarked
    code: str

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(REPOSITORY_ROOT)}:{self.line}"


def fenced_blocks(path: Path) -> list[Block]:
    lines = path.read_text().splitlines()
    blocks, index = [], 0
    while index < len(lines):
        opening = FENCE.match(lines[index])
        if not opening:
            index += 1
            continue
        end = next((k for k in range(index + 1, len(lines)) if lines[k].startswith("```")), len(lines))
        previous = next((lines[k].strip() for k in range(index - 1, -1, -1) if lines[k].strip()), "")
        marker = MARKER.match(previous)
        blocks.append(Block(path, index + 1, opening["lang"], marker["marker"] if marker else "",
                            "\n".join(lines[index + 1:end]) + "\n"))
        index = end + 1
    return blocks


ALL_BLOCKS = [block for path in DOCUMENTS for block in fenced_blocks(path)]
SHELL_BLOCKS = [b for b in ALL_BLOCKS if b.lang in ("bash", "sh", "shell")]
PYTHON_BLOCKS = [b for b in ALL_BLOCKS if b.lang == "python"]
YAML_BLOCKS = [b for b in ALL_BLOCKS if b.lang == "yaml" and b.marker.startswith("check: ")]


def commands(code: str) -> list[list[str]]:
    """The simple commands of a shell block: continuation lines joined, comments dropped, split like the shell."""
    joined = re.sub(r"\\\n", " ", code)
    return [words for line in joined.splitlines() if (words := shlex.split(line, comments=True))]


def script_of(words: list[str]) -> tuple[str | None, list[str]]:
    """(script path relative to the repository, its arguments) for python / torchrun commands, else (None, [])."""
    if not words:
        return None, []
    if words[0] in ("python", "python3") and len(words) > 1:
        if words[1] == "-m":
            return words[2].replace(".", "/") + ".py", words[3:]
        return (words[1], words[2:]) if words[1].endswith(".py") else (None, [])
    if words[0] == "torchrun":
        position = next((k for k, w in enumerate(words) if w.endswith(".py")), None)
        return (words[position], words[position + 1:]) if position is not None else (None, [])
    return None, []


def accepted_flags(script: Path) -> set[str]:
    """Option strings of every add_argument call in the script (what its argparse --help lists)."""
    flags = {"-h", "--help"}
    for node in ast.walk(ast.parse(script.read_text())):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "add_argument":
            flags |= {a.value for a in node.args if isinstance(a, ast.Constant) and str(a.value).startswith("-")}
    return flags


def help_text(script: Path) -> str:
    """Fallback for parsers built outside the script's own source: ask argparse itself."""
    done = subprocess.run([sys.executable, str(script), "--help"], cwd=REPOSITORY_ROOT, capture_output=True,
                          text=True, timeout=300)
    return done.stdout + done.stderr


def make_targets() -> set[str]:
    text = (REPOSITORY_ROOT / "Makefile").read_text()
    return set(re.findall(r"(?m)^([\w.-]+)\s*:(?!=)", text))


def check_command(words: list[str], where: str) -> list[str]:
    """Problems with one documented command: a missing script or make target, or a flag the script lacks."""
    problems = []
    if words[0] == "make":
        targets = make_targets()
        problems += [f"{where}: `make {t}`: no such target in the Makefile" for t in words[1:]
                     if not t.startswith("-") and "=" not in t and t not in targets]
        return problems
    if words[0].startswith(("scripts/", "./", "bench/", "tools/")) and not (REPOSITORY_ROOT / words[0]).exists():
        return [f"{where}: `{words[0]}` does not exist in the repository"]
    script, arguments = script_of(words)
    if script is None:
        return problems
    path = REPOSITORY_ROOT / script
    if not path.is_file():
        hint = " (secondary tools live in tools/ since issue 25)" if script.startswith("tools/") else ""
        return [f"{where}: documented command `{' '.join(words[:2])}`: script {script} does not exist{hint}"]
    shown = {word.split("=", 1)[0] for word in arguments if word.startswith("--")}
    unknown = shown - accepted_flags(path)
    if unknown:
        listed = help_text(path)
        unknown = {flag for flag in unknown if not re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", listed)}
    problems += [f"{where}: `{script}` does not accept {flag} (not in its --help)" for flag in sorted(unknown)]
    return problems


# ----------------------------------------------------------------------------- checked blocks

@pytest.mark.parametrize("block", [b for b in SHELL_BLOCKS if b.marker != "runnable"], ids=lambda b: b.where)
def test_shell_block_has_valid_syntax_scripts_and_flags(block):
    done = subprocess.run(["bash", "-n"], input=block.code, capture_output=True, text=True)
    assert done.returncode == 0, f"{block.where}: shell syntax: {done.stderr.strip()}"
    if block.marker.startswith("check: syntax"):
        return
    problems = [p for words in commands(block.code) for p in check_command(words, block.where)]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("block", PYTHON_BLOCKS, ids=lambda b: b.where)
def test_python_block_compiles(block):
    compile(block.code, block.where, "exec")


def test_every_block_marker_is_known():
    known = ("runnable", "check: flags", "check: syntax", "check: sweep", "check: config")
    unknown = [f"{b.where}: <!-- {b.marker} -->" for b in ALL_BLOCKS if b.marker and not b.marker.startswith(known)]
    assert not unknown, "unknown markers (docs/README.md lists the known ones):\n" + "\n".join(unknown)
    misplaced = [b.where for b in ALL_BLOCKS
                 if b.marker.startswith(("check: sweep", "check: config")) and b.lang != "yaml"]
    assert not misplaced, f"sweep/config checks apply to yaml blocks only: {misplaced}"


@pytest.mark.parametrize("block", YAML_BLOCKS, ids=lambda b: b.where)
def test_yaml_block_loads_as_what_it_claims(block, tmp_path, monkeypatch):
    from clitools import entry_point
    try:
        from harness.config import load_config
    except ImportError:
        from harness.config import load_config
    monkeypatch.chdir(REPOSITORY_ROOT)  # base files and configfile/ names resolve from the root, as documented
    path = tmp_path / "documented.yaml"
    path.write_text(block.code)
    if block.marker.startswith("check: sweep"):
        try:  # the sweeps package since issue 25; before it, sweep.py held these functions
            import sweeps.variants as sweep
        except ImportError:
            sweep = entry_point("sweep.py")
        loaded = sweep.load_sweep(path)
        variants = sweep.expand(loaded)
        assert variants
        for variant in variants:  # every variant must be a valid run config (files are not needed here)
            load_config(loaded.base, sweep._flatten(variant["overrides"]), check_files=False)
    elif block.marker.startswith("check: config"):
        load_config(path, check_files=False)


@pytest.fixture
def debug_workspace(tmp_path, synthetic_sid_root):
    """Overrides that keep a documented command at debug size and inside a temporary folder."""
    cache = tmp_path / "cache"
    return tmp_path, ["--set", "debug=true", "--set", f"output.results_dir={tmp_path / 'results'}",
                      "--set", f"output.artifacts_dir={tmp_path / 'onnx'}", "--set", f"data.root={synthetic_sid_root}",
                      "--set", "data.synthetic=null", "--set", f"data.cache_dir={cache}", "--set", "data.num_workers=0"]


@pytest.mark.parametrize("block", [b for b in SHELL_BLOCKS if b.marker == "runnable"], ids=lambda b: b.where)
def test_runnable_block_runs_at_debug_size(block, debug_workspace, capsys):
    workspace, overrides = debug_workspace
    for words in commands(block.code):
        problems = check_command(words, block.where)
        assert not problems, "\n".join(problems)
        script, arguments = script_of(words)
        assert script is not None and words[0] in ("python", "python3"), \
            f"{block.where}: runnable blocks hold `python <script>.py` commands only: {' '.join(words)}"
        before = {p for p in workspace.rglob("*") if p.is_file()}
        status, out, err = run_here(capsys, script, *arguments, *overrides)
        assert status == 0, f"{block.where}: `{' '.join(words)}` exited {status}:\n{err[-3000:]}"
        written = {p for p in workspace.rglob("*") if p.is_file()} - before
        assert any("cache" not in p.parts for p in written), f"{block.where}: `{' '.join(words)}` wrote no results"


@pytest.mark.parametrize("block", [b for b in PYTHON_BLOCKS if b.marker == "runnable"], ids=lambda b: b.where)
def test_runnable_python_block_runs(block, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # whatever the example writes lands in a temporary folder
    exec(compile(block.code, block.where, "exec"), {"__name__": "docs_example"})


# ----------------------------------------------------------------------------- links and paths

def heading_anchors(path: Path) -> set[str]:
    """GitHub's anchors for a Markdown file's headings (lower case, punctuation dropped, spaces to '-')."""
    anchors, inside_fence = set(), False
    for line in path.read_text().splitlines():
        if line.startswith("```"):
            inside_fence = not inside_fence
        if inside_fence or not line.startswith("#"):
            continue
        title = line.lstrip("#").strip().lower()
        anchor = re.sub(r"[^\w\- ]", "", title.replace("`", "")).replace(" ", "-")
        base, count = anchor, 1
        while anchor in anchors:
            anchor, count = f"{base}-{count}", count + 1
        anchors.add(anchor)
    return anchors


def test_every_link_between_docs_resolves():
    broken = []
    for path in DOCUMENTS:
        inside_fence = False
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            if line.startswith("```"):
                inside_fence = not inside_fence
            if inside_fence:
                continue
            for target in re.findall(r"\]\(([^)\s]+)\)", line):
                if re.match(r"^[a-z]+:", target):
                    continue  # http(s), mailto: outside the repository
                file_part, _, anchor = target.partition("#")
                resolved = (path.parent / file_part).resolve() if file_part else path
                where = f"{path.relative_to(REPOSITORY_ROOT)}:{number}: ({target})"
                if not resolved.exists():
                    broken.append(f"{where}: missing target {resolved.relative_to(REPOSITORY_ROOT)}"
                                  if resolved.is_relative_to(REPOSITORY_ROOT) else f"{where}: outside the repository")
                elif anchor and resolved.suffix == ".md" and anchor not in heading_anchors(resolved):
                    broken.append(f"{where}: no heading #{anchor} in {resolved.relative_to(REPOSITORY_ROOT)}")
    assert not broken, "broken links in the docs:\n" + "\n".join(broken)


def test_repository_paths_named_in_docs_exist():
    missing = []
    for path in DOCUMENTS:
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            for span in re.findall(r"`([^`\s]+)`", line):
                candidate = span.split(":", 1)[0].rstrip(".,)")
                if (re.fullmatch(r"[\w.-]+(/[\w.-]+)+\.(py|yaml|md|sh|png|txt)", candidate)
                        and candidate.split("/", 1)[0] in SOURCE_FOLDERS
                        and not (REPOSITORY_ROOT / candidate).exists()):
                    missing.append(f"{path.relative_to(REPOSITORY_ROOT)}:{number}: `{candidate}`")
    assert not missing, "files named in the docs that do not exist:\n" + "\n".join(missing)


def test_every_docs_page_starts_with_the_question_it_answers():
    pages = [path for path in DOCUMENTS if path.parent.name == "docs"]
    unasked = [f"{path.relative_to(REPOSITORY_ROOT)}: {path.read_text().splitlines()[0]!r}" for path in pages
               if not re.fullmatch(r"# .+\?", path.read_text().splitlines()[0].strip())]
    assert not unasked, "docs pages whose first line is not '# <the question it answers>?':\n" + "\n".join(unasked)


def test_config_reference_is_generated_from_the_schema():
    generated = load_tool("config_reference").render()
    current = (REPOSITORY_ROOT / "docs" / "config.md").read_text()
    assert current == generated, "docs/config.md is out of date with the config schema; run: python tools/config_reference.py"


# ----------------------------------------------------------------------------- measured tables

def sections(path: Path) -> list[tuple[int, list[str]]]:
    """(first line number, lines) of each part of a file between headings."""
    parts, current, start = [], [], 1
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if line.startswith("#") and current:
            parts.append((start, current))
            current, start = [], number
        current.append(line)
    parts.append((start, current))
    return parts


NUMBER = r"[+-]?\d+(?:\.\d+)?"
MEASUREMENT = re.compile(rf"{NUMBER}(?:x| ?%)?(?: *(?:±|/) *{NUMBER})?(?: *\({NUMBER}\))?(?: *\[{NUMBER}, *{NUMBER}\])?")


def measured_cell(cell: str) -> bool:
    """A table cell that is a measurement: a decimal number, possibly with ± spread, (min), [CI], x or %."""
    text = cell.replace("*", "").strip()
    return "." in text and MEASUREMENT.fullmatch(text) is not None


def test_every_measured_table_and_figure_states_date_commit_and_machine():
    unstated = []
    for path in DOCUMENTS:
        if path.name == "config.md":
            continue  # defaults, not measurements
        for start, lines in sections(path):
            text = "\n".join(lines)
            measured_table = any(measured_cell(cell) for line in lines if line.startswith("|")
                                 for cell in line.strip().strip("|").split("|"))
            figure = re.search(r"!\[[^\]]*\]\([^)]+\.png\)", text)
            if not (measured_table or figure):
                continue
            stated = PROVENANCE.search(" ".join(lines))
            if not stated or not SHA.search(stated["rest"]) or " on " not in stated["rest"]:
                unstated.append(f"{path.relative_to(REPOSITORY_ROOT)}:{start}: a measured table or figure without "
                                "'Measured <date> at commit <sha> on <machine>'")
    assert not unstated, "\n".join(unstated)


def stated_commits() -> list[tuple[str, str]]:
    found = []
    for path in DOCUMENTS:
        text = path.read_text().replace("\n", " ")
        for match in PROVENANCE.finditer(text):
            found += [(f"{path.relative_to(REPOSITORY_ROOT)}", sha) for sha in SHA.findall(match["rest"])]
    return found


def test_stated_commits_are_ancestors_of_head():
    if shutil.which("git") is None or subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPOSITORY_ROOT,
                                                     capture_output=True).returncode != 0:
        pytest.skip("not a git checkout")
    commits = stated_commits()
    assert commits, "no provenance line found in the docs"
    wrong = []
    for where, sha in commits:
        done = subprocess.run(["git", "merge-base", "--is-ancestor", sha, "HEAD"], cwd=REPOSITORY_ROOT,
                              capture_output=True, text=True)
        if done.returncode != 0:
            wrong.append(f"{where}: commit {sha} is not an ancestor of HEAD ({done.stderr.strip() or 'not in history'})")
    if wrong and subprocess.run(["git", "rev-parse", "--is-shallow-repository"], cwd=REPOSITORY_ROOT,
                                capture_output=True, text=True).stdout.strip() == "true":
        pytest.skip("shallow clone: history too short to check the stated commits")
    assert not wrong, "\n".join(wrong)


# ----------------------------------------------------------------------------- table regions

def test_docs_tables_rewrites_only_its_region():
    tables = load_tool("docs_tables")
    text = "before\n<!-- table:demo -->\nold\n<!-- /table -->\nmiddle\n<!-- table:other -->\nkeep\n<!-- /table -->\n"
    new = tables.replace_region(text, "demo", "*Measured ...*\n\n| a |\n|---|\n| 1 |")
    assert new.startswith("before\n<!-- table:demo -->\n*Measured ...*\n\n| a |\n|---|\n| 1 |\n<!-- /table -->\nmiddle\n")
    assert new.endswith("<!-- table:other -->\nkeep\n<!-- /table -->\n")
    assert tables.regions(new) == {"demo": "*Measured ...*\n\n| a |\n|---|\n| 1 |\n", "other": "keep\n"}
    with pytest.raises(KeyError):
        tables.replace_region(text, "missing", "x")
    example = "```text\n<!-- table:demo -->\nshown as an example\n<!-- /table -->\n```\n"
    assert tables.regions(example + text) == {"demo": "old\n", "other": "keep\n"}
    assert tables.replace_region(example + text, "demo", "new").startswith(example)


def test_docs_tables_writes_regions_in_files_with_provenance(tmp_path):
    tables = load_tool("docs_tables")
    (tmp_path / "docs").mkdir()
    (tmp_path / "README.md").write_text("# x\n<!-- table:demo -->\nold\n<!-- /table -->\n")
    (tmp_path / "docs" / "a.md").write_text("# a\n<!-- table:latency -->\nold\n<!-- /table -->\ntail\n")
    stamp = tables.provenance("python demo.py")
    assert re.search(r"Measured \d{4}-\d{2}-\d{2} at commit \S+ .*on .+CPUs", stamp)
    written = tables.write_regions({"demo": stamp + "\n\n| a |", "latency": "| b |"}, root=tmp_path)
    assert sorted(written) == ["README.md: demo", "docs/a.md: latency"]
    assert "| a |" in (tmp_path / "README.md").read_text() and "old" not in (tmp_path / "README.md").read_text()
    assert (tmp_path / "docs" / "a.md").read_text() == "# a\n<!-- table:latency -->\n| b |\n<!-- /table -->\ntail\n"
    with pytest.raises(SystemExit):
        tables.write_regions({"ablation": "x"}, root=tmp_path)


def test_docs_tables_conclusions_follow_the_intervals():
    tables = load_tool("docs_tables")
    summary = ("| variant | seeds | test PSNR | test SSIM | test PSNR x100 | reference | Δ test PSNR [95% CI] | "
               "distinguishable | CI over |\n|---|---|---|---|---|---|---|---|---|\n"
               "| fp | 3 | 20.95 ± 0.09 | 0.6066 ± 0.0012 | 21.40 | | | | |\n"
               "| w4 | 3 | 20.48 ± 0.10 | 0.5795 ± 0.0080 | 20.76 | fp | -0.471 [-1.090, +0.150] | no | 3 seeds |\n"
               "| ptq | 3 | 19.69 ± 0.10 | 0.5866 ± 0.0043 | 19.88 | w4 | -0.780 [-0.940, -0.630] | yes | 3 seeds |\n")
    body = tables.ablation_body(summary, "*Measured*")
    columns, rows = tables.parse_markdown_table(body)
    assert columns == ["variant", "test PSNR", "test SSIM", "x100", "reference", "Δ test PSNR [95% CI]", "distinguishable"]
    assert [row["variant"] for row in rows] == ["fp", "w4", "ptq"]
    assert "`w4` against `fp`: -0.47 dB [-1.09, +0.15], not distinguishable" in body
    assert "`ptq` against `w4`: -0.78 dB [-0.94, -0.63], distinguishable" in body


def demo_regions_table():
    readme = (REPOSITORY_ROOT / "README.md").read_text()
    tables = load_tool("docs_tables")
    assert "demo" in tables.regions(readme), "README.md has no <!-- table:demo --> region"
    return tables.parse_markdown_table(tables.regions(readme)["demo"])


@pytest.fixture
def debug_demo_output(tmp_path, synthetic_sid_root, capsys, monkeypatch):
    """What demo.py prints when its configs are shrunk to debug size and its results go to a temporary folder."""
    shutil.copytree(REPOSITORY_ROOT / "configfile", tmp_path / "configfile")
    teacher = tmp_path / "configfile" / "demo_fp.yaml"
    config = yaml.safe_load(teacher.read_text())
    config["debug"] = True
    config["data"] = {"root": str(synthetic_sid_root), "synthetic": None, "cache_dir": str(tmp_path / "cache"),
                      "num_workers": 0, "val_protocol": "all", "test_protocol": "all"}
    config["model"] = {"name": "dbf_dble", "width": 0.25}  # the table's format does not depend on the width
    config["output"] = {"tensorboard": False}
    teacher.write_text(yaml.safe_dump(config))
    status, out, err = run_here(capsys, "demo.py", cwd=tmp_path)
    assert status == 0, err[-3000:]
    return out


def test_demo_table_in_readme_matches_what_demo_prints(debug_demo_output):
    tables = load_tool("docs_tables")
    printed_columns, printed_rows = tables.demo_table(debug_demo_output)
    documented_columns, documented_rows = demo_regions_table()
    assert documented_columns == printed_columns
    assert [row["model"] for row in documented_rows] == [row["model"] for row in printed_rows]
    # The regeneration path: the rerun's output becomes a region with the same rows and a provenance line.
    body = tables.demo_body(debug_demo_output, tables.provenance("python demo.py"))
    regenerated_columns, regenerated_rows = tables.parse_markdown_table(body)
    assert regenerated_columns == printed_columns and len(regenerated_rows) == len(printed_rows)
    assert PROVENANCE.search(body) and SHA.search(PROVENANCE.search(body)["rest"])


def test_docs_tables_latency_and_unseen_tables_from_their_outputs():
    tables = load_tool("docs_tables")
    rows = [{"model": "fp32", "runtime": "onnxruntime f32", "file_mb": 60.1, "median_ms": 280.0, "min_ms": 270.0,
             "execution": "float", "passed": True, "kernel_ms_by_op": {"Conv": 211.0, "ConvTranspose": 13.0}},
            {"model": "harness QDQ w8a8, snpe", "runtime": "onnxruntime f32", "file_mb": 15.3, "median_ms": 140.0,
             "min_ms": 122.0, "execution": "QLinearConv 65 of 65", "passed": True,
             "kernel_ms_by_op": {"QLinearConv": 84.0}},
            {"model": "fp32", "runtime": "openvino f32", "file_mb": 60.1, "median_ms": 200.0, "min_ms": 190.0,
             "execution": "conv f32 x65", "passed": True},
            {"model": "harness QDQ w8a8, snpe", "runtime": "openvino f32", "file_mb": 15.3, "median_ms": 160.0,
             "min_ms": 150.0, "execution": "conv int8 x65", "passed": False}]
    result = {"cpu": {"model": "AMD EPYC", "logical_cpus": 2, "flags": ["avx512_vnni"]},
              "versions": "onnxruntime 1.32.0, openvino 2026.4.1", "rows": rows,
              "targets": ["onnxruntime snpe vs onnxruntime FP32: 2.00x (target >= 2x): met"]}
    body = tables.latency_body(result, "*Measured*")
    columns, parsed = tables.parse_markdown_table(body)
    assert [row["vs ORT FP32"] for row in parsed] == ["1.00x", "2.00x", "1.40x", "1.75x"]
    assert [row["vs own FP32"] for row in parsed] == ["1.00x", "2.00x", "1.00x", "1.25x"]
    assert [row["check"] for row in parsed] == ["pass", "pass", "pass", "FAIL"]
    assert parsed[1]["ms median (min)"] == "140 (122)" and "AMD EPYC" in body and "(target >= 2x): met" in body
    assert "- fp32 (onnxruntime f32): 224 ms, of which Conv 211, ConvTranspose 13" in body
    # --full-frame rows: their own table, each export against FP32 in the same runtime.
    result["full_frame"] = [{"model": "fp32", "runtime": "onnxruntime f32", "median_ms": 30000.0},
                            {"model": "harness QDQ w8a8, snpe", "runtime": "onnxruntime f32", "median_ms": 12000.0}]
    body = tables.latency_body(result, "*Measured*")
    _, full = tables.parse_markdown_table(body[body.index("Full frames"):])
    assert [(row["s per frame"], row["vs FP32, same runtime"]) for row in full] == [("30.00", "1.00x"), ("12.00", "2.50x")]

    summary = [{"ratio": "x100", "pairs": "6", "psnr": "18.6", "baseline_psnr": "16.6", "ssim": "0.6", "baseline_ssim": "0.26"},
               {"ratio": "x300", "pairs": "6", "psnr": "12.0", "baseline_psnr": "12.1", "ssim": "0.5", "baseline_ssim": "0.14"}]
    body = tables.unseen_body(summary, "*Measured*")
    _, parsed = tables.parse_markdown_table(body)
    assert [row["teacher PSNR (dB)"] for row in parsed] == ["18.60", "12.00"]
    assert "does not beat the naive baseline at: x300" in body


def test_printed_tables_parse_like_format_table_writes_them():
    try:
        from harness.records import format_table
    except ImportError:
        from harness.records import format_table
    tables = load_tool("docs_tables")
    rows = [{"model": "naive baseline (amplified short exposure)", "PSNR (dB)": 15.1, "vs PTQ (dB, 95% CI)": ""},
            {"model": "W8A8 QAT", "PSNR (dB)": 20.9, "vs PTQ (dB, 95% CI)": "+0.64 [+0.32, +0.95]"}]
    printed = "=== demo summary (test split)\n" + format_table(rows, ["model", "PSNR (dB)", "vs PTQ (dB, 95% CI)"]) + "\nmore\n"
    columns, parsed = tables.demo_table(printed)
    assert columns == ["model", "PSNR (dB)", "vs PTQ (dB, 95% CI)"]
    assert parsed[0]["vs PTQ (dB, 95% CI)"] == "-" and parsed[1]["vs PTQ (dB, 95% CI)"] == "+0.64 [+0.32, +0.95]"
    assert "- W8A8 QAT against PTQ: +0.64 dB [+0.32, +0.95], distinguishable" in tables.demo_body(printed, "*M*")


def test_docs_tables_from_saved_output_rewrites_every_region(tmp_path, monkeypatch):
    """`--from-logs`: the whole path from saved command output to rewritten documents, nothing run."""
    try:
        from harness.records import format_table
    except ImportError:
        from harness.records import format_table
    tables = load_tool("docs_tables")
    monkeypatch.setattr(tables, "REPOSITORY_ROOT", tmp_path)
    logs = tmp_path / "results" / "docs_tables"
    logs.mkdir(parents=True)
    demo_rows = [{"model": "full precision (teacher)", "PSNR (dB)": 20.29, "vs PTQ (dB, 95% CI)": ""},
                 {"model": "W8A8 QAT", "PSNR (dB)": 20.9, "vs PTQ (dB, 95% CI)": "+0.64 [+0.32, +0.95]"}]
    (logs / "demo.log").write_text("=== demo summary\n" + format_table(demo_rows, list(demo_rows[0])))
    (logs / "latency.json").write_text('{"rows": [{"model": "fp32", "runtime": "onnxruntime f32", "file_mb": 60.1, '
                                       '"median_ms": 280.0, "min_ms": 270.0}]}')
    sweep = tmp_path / "results" / "sweep_ablation"
    sweep.mkdir(parents=True)
    (sweep / "summary.md").write_text("# Sweep\n\n| variant | test PSNR | reference | Δ test PSNR [95% CI] |\n|---|---|---|---|\n"
                                      "| fp | 20.95 ± 0.09 | | |\n| w4 | 20.48 ± 0.10 | fp | -0.471 [-1.090, +0.150] |\n")
    (sweep / "test_psnr_per_ratio.png").write_bytes(b"\x89PNG new figure")
    (tmp_path / "results" / "unseen_photos").mkdir()
    (tmp_path / "results" / "unseen_photos" / "summary.csv").write_text(
        "ratio,pairs,psnr,baseline_psnr,ssim,baseline_ssim\nall,18,18.0,13.9,0.54,0.18\n")
    for backend in tables.PLACEMENTS:
        ptq = tmp_path / tables.PLACEMENT_RUNS / f"placement_{backend}" / "ptq"
        ptq.mkdir(parents=True)
        (ptq / "ptq_summary.csv").write_text(
            "method,bits,runtime,psnr,ssim,images\nfp32,32,pytorch,20.29,0.60,10\n"
            f"mqbench_ptq ({backend}),w8a8,pytorch,20.1,0.59,10\nqat,checkpoint,pytorch,20.9,0.60,10\n"
            f"onnx placement_{backend}/model_qdq.onnx,as exported,onnxruntime 1.32.0,20.9,0.60,10\n")
    (tmp_path / "docs").mkdir()
    region = lambda name: f"<!-- table:{name} -->\nstale\n<!-- /table -->\n"  # noqa: E731
    (tmp_path / "README.md").write_text("# r\n" + region("demo") + "![f](docs/a.png)\n" + region("ablation-figure"))
    (tmp_path / "docs" / "t.md").write_text("# t\n" + region("ablation") + region("latency") + region("unseen")
                                            + region("placements"))

    assert tables.main(["--from-logs"]) == 0

    readme, topic = (tmp_path / "README.md").read_text(), (tmp_path / "docs" / "t.md").read_text()
    assert "stale" not in readme and "stale" not in topic
    assert "| W8A8 QAT | 20.9000 | +0.64 [+0.32, +0.95] |" in readme
    assert "`w4` against `fp`: -0.47 dB [-1.09, +0.15], not distinguishable" in topic
    assert "| fp32 | onnxruntime f32 | 60.1 | 280 (270) | 1.00x | 1.00x |" in topic and "| all | 18 | 18.00 | 13.90 | 0.540 | 0.180 |" in topic
    assert "| `tensorrt` | 20.100 / 0.590 | 20.900 / 0.600 | 20.900 / 0.600 | - |" in topic
    assert (tmp_path / "docs" / "ablation_test_psnr_per_ratio.png").read_bytes() == b"\x89PNG new figure"
    for body in [*tables.regions(readme).values(), *tables.regions(topic).values()]:
        assert PROVENANCE.search(body), body  # every rewritten region says when, where and from what


def test_docs_tables_placements_table_from_ptq_summaries():
    tables = load_tool("docs_tables")

    def rows(backend, qat, exported_ort, exported_ov, with_ort_ptq=False):
        found = [{"method": "fp32", "bits": "32", "runtime": "pytorch", "psnr": "20.2", "ssim": "0.597"},
                 {"method": f"mqbench_ptq ({backend})", "bits": "w8a8", "runtime": "pytorch", "psnr": "20.1", "ssim": "0.59"},
                 {"method": "qat", "bits": "checkpoint", "runtime": "pytorch", "psnr": qat, "ssim": "0.60"},
                 {"method": f"onnx placement_{backend}/model_qdq.onnx", "bits": "as exported",
                  "runtime": "onnxruntime 1.32.0", "psnr": exported_ort, "ssim": "0.60"},
                 {"method": f"onnx placement_{backend}/model_qdq.onnx", "bits": "as exported",
                  "runtime": "openvino 2026.4.1", "psnr": exported_ov, "ssim": "0.60"}]
        if with_ort_ptq:
            found += [{"method": "onnxruntime_ptq", "bits": "w8a8", "runtime": "onnxruntime 1.32.0", "psnr": "20.0", "ssim": "0.58"},
                      {"method": "onnxruntime_ptq", "bits": "w8a8", "runtime": "openvino 2026.4.1", "psnr": "nan", "ssim": "nan"}]
        return found

    body = tables.placements_body({"academic": rows("academic", "20.97", "20.971", "20.96", True),
                                   "snpe": rows("snpe", "20.90", "20.95", "20.90")}, "*Measured*")
    _, parsed = tables.parse_markdown_table(body)
    assert [row["backend"] for row in parsed] == ["(FP32 teacher: 20.200 / 0.597)", "`academic`", "`snpe`",
                                                  "onnxruntime `quantize_static` (PTQ)"]
    assert parsed[2]["QAT exported, onnxruntime"] == "20.950 / 0.600" and parsed[2]["QAT exported, OpenVINO"] == "20.900 / 0.600"
    assert parsed[3]["QAT exported, onnxruntime"] == "20.000 / 0.580" and parsed[3]["QAT exported, OpenVINO"] == "-"
    assert "within 0.050 dB of the fake-quant model" in body  # snpe in onnxruntime: 20.95 against 20.90
    assert "0.070 dB after QAT" in body
