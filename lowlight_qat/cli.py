"""Console commands of `pip install -e .` (pyproject.toml): `lowlight-train ARGS` is
`python train.py ARGS` run from any folder. Each runs the checkout's script of that name (at the
repository root or in tools/) as __main__, so the command and the script are one program with one
set of options and one error policy (harness/runner.py)."""
from __future__ import annotations

import runpy
import sys
from pathlib import Path

REPOSITORY_ROOT = Path(__file__).resolve().parents[1]


def run_script(name: str, argv=None) -> int:
    """Run `<name>.py` of the checkout with `argv` (default: this process's arguments); its exit status."""
    for folder in (REPOSITORY_ROOT, REPOSITORY_ROOT / "tools"):
        path = folder / f"{name}.py"
        if path.is_file():
            break
    else:
        print(f"error: {name}.py is not in {REPOSITORY_ROOT}: the lowlight-* commands run the scripts of a "
              "checkout; install it with pip install -e <checkout>", file=sys.stderr)
        return 2
    sys.argv = [str(path), *(sys.argv[1:] if argv is None else argv)]
    if str(REPOSITORY_ROOT) not in sys.path:
        sys.path.insert(0, str(REPOSITORY_ROOT))
    try:
        runpy.run_path(str(path), run_name="__main__")
    except SystemExit as stop:
        return stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
    return 0


def train() -> int:
    return run_script("train")


def test() -> int:
    return run_script("test")


def sweep() -> int:
    return run_script("sweep")


def enhance() -> int:
    return run_script("enhance")


def export_onnx() -> int:
    return run_script("export_onnx")


def hessian_rank() -> int:
    return run_script("hessian_rank")


def sensitivity() -> int:
    return run_script("sensitivity")


def ptq() -> int:
    return run_script("ptq")


def layers() -> int:
    return run_script("layers")
