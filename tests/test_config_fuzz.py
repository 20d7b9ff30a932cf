"""A property-based fuzzer of run configs (Hypothesis): a valid config is mutated (a key deleted,
retyped or misspelt, a number out of range, a key at the wrong nesting) and train.py must either pass
every check of a run (`--check`: the checks a run makes before its work, nothing written) or stop with
exactly one stderr line and exit status 2. Never a traceback, and nothing under an existing results
folder changes.

`make test` runs a few examples, the same ones every time (profile `ci`); `make fuzz` runs many more,
new ones each time (profile `fuzz`, or HYPOTHESIS_PROFILE=fuzz)."""
import contextlib
import copy
import io
import math
import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from clitools import entry_point
from harness.config import Config
from harness.runner import run_entry_point

COMMON = dict(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
settings.register_profile("ci", max_examples=30, derandomize=True, database=None, **COMMON)
settings.register_profile("fuzz", max_examples=int(os.environ.get("FUZZ_EXAMPLES", "1000")), **COMMON)
PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "ci")

# pdb_debug: true turns an error into an interactive debugger session by design, so it is never fuzzed.
NEVER_MUTATED = {("pdb_debug",)}

# Replacement values: every YAML type, and numbers outside every range the schema allows. A fixed pool,
# not arbitrary text: a model.name of random text could import an arbitrary installed module by design.
OTHER_VALUES = ["", "x", "auto", "cpu", "cuda:7", "yes", 0, 1, -1, 3, 2.5, 1e-12, None, True, False, [], [1, "a"],
                {}, {"a": 1}, "results", "../elsewhere"]
OUT_OF_RANGE = [-1, 0, -(10 ** 9), 10 ** 9, 2 ** 63, -0.5, 1e300, math.nan, math.inf, -math.inf]


def leaf_paths(node, prefix=()):
    """Every key path of the nested mapping (sections and values)."""
    paths = []
    for key, value in node.items():
        path = prefix + (key,)
        if path in NEVER_MUTATED:
            continue
        paths.append(path)
        if isinstance(value, dict):
            paths += leaf_paths(value, path)
    return paths


def parent_of(config, path):
    node = config
    for key in path[:-1]:
        node = node[key]
    return node


def misspell(key: str, draw) -> str:
    position = draw(st.integers(0, max(0, len(key) - 1)))
    edit = draw(st.sampled_from(["drop", "double", "swap", "case", "dash"]))
    if edit == "drop" and len(key) > 1:
        return key[:position] + key[position + 1:]
    if edit == "swap" and position + 1 < len(key) and key[position] != key[position + 1]:
        return key[:position] + key[position + 1] + key[position] + key[position + 2:]
    if edit == "case":
        return key.upper() if key != key.upper() else key.lower() + "x"
    if edit == "dash" and "_" in key:
        return key.replace("_", "-")
    return key[:position + 1] + key[position:]  # a doubled letter


@st.composite
def mutated_configs(draw, base: dict):
    config = copy.deepcopy(base)
    description = []
    for _ in range(draw(st.integers(1, 3))):
        paths = leaf_paths(config)
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent, key = parent_of(config, path), path[-1]
        kind = draw(st.sampled_from(["delete", "retype", "misspell", "out_of_range", "nesting"]))
        if kind == "delete":
            del parent[key]
        elif kind == "retype":
            parent[key] = copy.deepcopy(draw(st.sampled_from(OTHER_VALUES)))  # later mutations edit it in place
        elif kind == "misspell":
            parent[misspell(str(key), draw)] = parent.pop(key)
        elif kind == "out_of_range":
            numeric = [p for p in paths if isinstance(parent_of(config, p)[p[-1]], (int, float))
                       and not isinstance(parent_of(config, p)[p[-1]], bool)]
            if numeric:
                path = draw(st.sampled_from(numeric))
                parent, key = parent_of(config, path), path[-1]
            parent[key] = draw(st.sampled_from(OUT_OF_RANGE))
        else:  # the key at the wrong depth: into another section, or up to the top level
            sections = [p for p in paths if isinstance(parent_of(config, p)[p[-1]], dict)
                        and p[:len(path)] != path and path[:len(p)] != p]  # not itself, inside it, or above it
            value = parent.pop(key)
            target = parent_of(config, draw(st.sampled_from(sections)) + ("",)) if sections and draw(st.booleans()) \
                else config
            target[key] = value
        description.append(f"{kind} {'.'.join(map(str, path))}")
    return config, description


@pytest.fixture(scope="module")
def workspace(synthetic_sid_root, tmp_path_factory):
    """A folder with an earlier run's results (which must never change) and a valid base config."""
    folder = tmp_path_factory.mktemp("fuzz")
    earlier = folder / "results" / "earlier"
    (earlier / "checkpoints").mkdir(parents=True)
    (earlier / "metrics.csv").write_text("epoch,loss,psnr\n1,0.5,20.0\n")
    (earlier / "config.yaml").write_text("seed: 0\n")
    (earlier / "checkpoints" / "latest_epoch0001.pth").write_bytes(b"\x80weights")
    (folder / "onnx").mkdir()
    (folder / "onnx" / "earlier.pth").write_bytes(b"\x80weights")
    valid = {"device": "cpu", "batch_size": 2, "model": {"name": "dbf_dble", "width": 0.25},
             "data": {"root": str(synthetic_sid_root), "synthetic": None, "patch_size": 64, "num_workers": 0,
                      "decode_workers": 0},
             "schedule": {"epochs": 1, "iters_per_epoch": 1},
             "output": {"results_dir": str(folder / "results"), "artifacts_dir": str(folder / "onnx"),
                        "experiment": "fuzz", "tensorboard": False}}
    # Every key of the schema is present, so that every key can be mutated.
    base = Config.model_validate(valid).model_dump(mode="json")
    return folder, base


def files_under(folder: Path) -> dict:
    return {path.relative_to(folder): (path.stat().st_size, path.read_bytes()) for path in sorted(folder.rglob("*"))
            if path.is_file() and path.name != "mutated.yaml"}


@contextlib.contextmanager
def process_state_kept():
    """An example runs train.py in this process: what it sets globally (seeds, `deterministic: true`) is put back."""
    states = (torch.get_rng_state(), np.random.get_state(), random.getstate(),
              torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic,
              torch.backends.cudnn.benchmark, os.getcwd())
    try:
        yield
    finally:
        torch.set_rng_state(states[0])
        np.random.set_state(states[1])
        random.setstate(states[2])
        torch.use_deterministic_algorithms(states[3])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = states[4], states[5]
        os.chdir(states[6])


def run_check(folder: Path, config: dict):
    path = folder / "mutated.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    out, err = io.StringIO(), io.StringIO()
    with process_state_kept(), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        os.chdir(folder)
        # A traceback is an exception out of run_entry_point (it re-raises everything but input errors).
        status = run_entry_point(entry_point("train.py").main, ["--config", str(path), "--check"])
    return status, out.getvalue(), err.getvalue()


def test_the_valid_base_config_passes_every_check(workspace):
    folder, base = workspace
    status, stdout, stderr = run_check(folder, base)
    assert status == 0 and "checks passed" in stdout, stderr


def test_mutated_configs_pass_the_checks_or_stop_with_one_line(workspace):
    folder, base = workspace
    before = files_under(folder)

    @settings(settings.get_profile(PROFILE))
    @given(mutated_configs(base))
    def check(mutation):
        config, description = mutation
        status, stdout, stderr = run_check(folder, config)
        lines = stderr.strip().splitlines()
        event("checks passed" if status == 0 else "refused in one line")  # pytest --hypothesis-show-statistics
        if status == 0:
            assert "checks passed" in stdout, (description, stdout[-500:])
        else:
            assert status == 2, (description, status, stderr[-2000:])
            assert len(lines) == 1 and lines[0].startswith("error: "), (description, stderr[-2000:])
            assert "Traceback" not in stderr
        assert files_under(folder) == before, description  # nothing written, nothing changed

    check()
