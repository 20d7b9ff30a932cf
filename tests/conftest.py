"""Shared pytest fixtures. Data fixtures are prefixed `synthetic_sid_` / `sid_lists_`."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# The tests start torchrun and train.py processes beside this one: with OpenMP's default busy-waiting,
# threads of one process spin on the cores another needs, and steps slow down tens of times.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

REPOSITORY_ROOT = Path(__file__).resolve().parents[1]

# Small enough that the whole set (7 scenes, 38 DNGs) is written and decoded in about a second.
SYNTHETIC_SID_HEIGHT = 128
SYNTHETIC_SID_WIDTH = 192


@pytest.fixture(scope="session")
def synthetic_sid_root(tmp_path_factory) -> Path:
    """A tiny synthetic SID set (default scene counts, 128x192 frames), written once per session."""
    from data.synthetic import generate_synthetic_sid

    return generate_synthetic_sid(
        tmp_path_factory.mktemp("synthetic_sid"), seed=0, height=SYNTHETIC_SID_HEIGHT, width=SYNTHETIC_SID_WIDTH
    )


@pytest.fixture(scope="session")
def synthetic_sid_cache_dir(synthetic_sid_root, tmp_path_factory) -> Path:
    """A RawCache folder holding every file of synthetic_sid_root, built with worker processes."""
    from data.raw_cache import RawCache
    from data.sid import read_list

    pairs = [
        pair
        for list_name in ("Sony_train_list.txt", "Sony_val_list.txt", "Sony_test_list.txt")
        for pair in read_list(synthetic_sid_root / list_name, synthetic_sid_root)
    ]
    cache_dir = tmp_path_factory.mktemp("synthetic_sid_cache")
    RawCache(cache_dir).build([pair.short_path for pair in pairs], [pair.long_path for pair in pairs], workers=2)
    return cache_dir


@pytest.fixture(scope="session")
def sid_lists_dir() -> Path:
    """The official SID Sony list files (shared/sid_lists); tests using it skip when absent."""
    candidates = [
        os.environ.get("SID_LISTS_DIR"),
        REPOSITORY_ROOT / "shared" / "sid_lists",
        REPOSITORY_ROOT.parent / "shared" / "sid_lists",
    ]
    for candidate in candidates:
        if candidate and (Path(candidate) / "Sony_test_list.txt").is_file():
            return Path(candidate)
    pytest.skip("SID list files not found (set SID_LISTS_DIR)")


@pytest.fixture(autouse=True, scope="session")
def single_torch_thread():
    """In-process tests use tiny tensors: a second intra-op thread only adds synchronisation, and on
    a busy machine its barrier waits multiply the run time. Subprocesses (train.py, torchrun) keep
    torch's default."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
