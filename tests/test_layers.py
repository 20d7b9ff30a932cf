"""Imports run downward through the layers drawn in ARCHITECTURE.md, and no script imports another.

    helpers < models, data, checkpoints < quant, distill, deploy < harness < sweeps
            < entry points (train.py, test.py, ...), tools/, lowlight_qat/

A package may import itself and any package on a lower floor, never a neighbour on its own floor
(models/ and data/ know nothing of each other). Every import counts, including those inside
functions. The test reads the source (ast), so it also checks branches merged after the layout."""
import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPOSITORY_ROOT = Path(__file__).resolve().parents[1]
FLOORS = {"helpers": 0, "models": 1, "data": 1, "checkpoints": 1, "quant": 2, "distill": 2, "deploy": 2,
          "harness": 3, "sweeps": 4, "lowlight_qat": 5}
ENTRY_FLOOR = 5
SCRIPTS = {path.stem for path in REPOSITORY_ROOT.glob("*.py")}
# Scripts outside the packages: the entry points at the root, the tools, the benchmarks.
SCRIPT_FOLDERS = ("tools", "bench")


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, dotted module) of every import in the file, `from a.b import c` counted as a.b.c too
    (c may be a module: `from sweeps import slurm`)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
            found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
    return found


def project_files():
    for path in sorted(REPOSITORY_ROOT.rglob("*.py")):
        relative = path.relative_to(REPOSITORY_ROOT)
        if relative.parts[0] in FLOORS or relative.parts[0] in SCRIPT_FOLDERS or len(relative.parts) == 1:
            yield relative


def violations(relative: Path) -> list[str]:
    top = relative.parts[0]
    is_script = len(relative.parts) == 1 or top in SCRIPT_FOLDERS
    floor = ENTRY_FLOOR if is_script else FLOORS[top]
    found = []
    for line, module in imported_modules(REPOSITORY_ROOT / relative):
        first = module.split(".")[0]
        where = f"{relative}:{line} imports {module}"
        if first in SCRIPTS or first in SCRIPT_FOLDERS:
            # A benchmark may time an entry point at the root as its users run it (bench/full_size_eval.py
            # times test.py); nothing else may lean on a script.
            timed = top == "bench" and first in SCRIPTS
            if (module.count(".") == 0 or first in SCRIPT_FOLDERS) and not timed:
                found.append(f"{where}: a script; move what it shares into a library module")
        elif first in FLOORS and first != top and FLOORS[first] >= floor:
            found.append(f"{where}: {first}/ is on floor {FLOORS[first]}, not below {top}/ (floor {floor})")
    return found


def test_every_package_has_a_floor():
    packages = {path.parent.name for path in REPOSITORY_ROOT.glob("*/__init__.py")}
    unplaced = packages - set(FLOORS) - {"examples", "tools", "tests"}
    assert not unplaced, f"packages without a floor in FLOORS (and in ARCHITECTURE.md): {sorted(unplaced)}"


def test_imports_run_downward():
    files = list(project_files())
    assert len(files) > 50 and any(f.parts[0] == "helpers" for f in files)  # the walk found the project
    found = [problem for relative in files for problem in violations(relative)]
    assert not found, "imports that run upward or between scripts:\n" + "\n".join(found)


@pytest.mark.parametrize("source, expected", [
    ("from harness.config import load_config\n", "harness/ is on floor 3"),
    ("def f():\n    from sweeps import slurm\n", "sweeps/ is on floor 4"),
    ("import data.sid\n", "data/ is on floor 1"),  # a neighbour on the same floor
])
def test_an_upward_import_is_caught(tmp_path, monkeypatch, source, expected):
    monkeypatch.setattr(__import__(__name__), "REPOSITORY_ROOT", tmp_path)
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "net.py").write_text(source)
    assert any(expected in problem for problem in violations(Path("models/net.py")))


@pytest.mark.parametrize("script, source", [
    ("tools/a.py", "from tools.b import shared\n"),   # a tool leaning on another tool
    ("tools/a.py", "import train\n"),                 # ... or on an entry point
    ("demo.py", "def main():\n    import sweep\n"),  # an entry point on another
])
def test_a_script_importing_a_script_is_caught(tmp_path, monkeypatch, script, source):
    monkeypatch.setattr(__import__(__name__), "REPOSITORY_ROOT", tmp_path)
    (tmp_path / "tools").mkdir()
    (tmp_path / script).write_text(source)
    assert any("a script" in problem for problem in violations(Path(script)))


@pytest.mark.parametrize("tool", ["sensitivity", "allocate", "hessian_rank", "ptq", "export_onnx", "convert_checkpoint"])
def test_tools_run_from_the_repository_root(tool):
    """`python tools/<name>.py` finds the packages by itself (no PYTHONPATH, no install)."""
    environment = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    result = subprocess.run([sys.executable, f"tools/{tool}.py", "--help"], cwd=REPOSITORY_ROOT, env=environment,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith(f"usage: {tool}.py")
