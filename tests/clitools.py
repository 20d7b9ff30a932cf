"""Running the entry points in this process (fast: no fresh torch/MQBench import per call) with the
very policy the command line uses: one-line errors and exit status 2 from harness.runner."""
import importlib.util
import os
from pathlib import Path

from harness.runner import run_entry_point

REPOSITORY_ROOT = Path(__file__).resolve().parents[1]
_modules = {}


def entry_point(script: str):
    """The module of `train.py`, `test.py`, ... loaded by path (`test` would be Python's own package)."""
    if script not in _modules:
        spec = importlib.util.spec_from_file_location(f"lowlight_cli_{Path(script).stem}", REPOSITORY_ROOT / script)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        _modules[script] = module
    return _modules[script]


def run_here(capsys, script, *args, cwd=None):
    """(exit status, stdout, stderr) of `script args` run in this process from `cwd`."""
    previous = os.getcwd()
    capsys.readouterr()
    try:
        os.chdir(cwd or REPOSITORY_ROOT)
        status = run_entry_point(entry_point(script).main, [str(a) for a in args])
    finally:
        os.chdir(previous)
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def assert_one_line_error(status, stderr, *expected):
    assert status == 2, stderr[-2000:]
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr[-2000:]
    for text in expected:
        assert text in lines[0], lines[0]
    return lines[0]
