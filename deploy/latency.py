"""Latency of exported models, measured so that rows can be compared: every session runs once in
turn, round after round, so that load from other users of a shared machine falls on all alike.
Used by the export report (which runtime is fastest for a model) and bench/onnx_latency.py."""
from __future__ import annotations

import platform
import statistics
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm


def interleaved(sessions: list, x: np.ndarray, runs: int, warmup: int = 2, progress: bool = False) -> list[dict]:
    """Per session {median_ms, min_ms, runs}; `sessions` are deploy.runtimes.Session objects."""
    for session in sessions:
        for _ in range(warmup):  # first runs allocate and pick kernels
            session.run(x)
    times = [[] for _ in sessions]
    for _ in tqdm(range(runs), desc="latency rounds", leave=False, disable=not progress):
        for session, kept in zip(sessions, times):
            start = time.perf_counter()
            session.run(x)
            kept.append(time.perf_counter() - start)
    return [{"median_ms": statistics.median(kept) * 1e3, "min_ms": min(kept) * 1e3, "runs": len(kept)}
            for kept in times]


def cpu_description() -> dict:
    """The CPU's model name and the instruction-set flags that decide which kernels can run."""
    name, flags = platform.processor() or platform.machine(), set()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                name = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8", "amx_fp16")
    return {"model": name, "flags": [f for f in wanted if f in flags], "logical_cpus": _cpu_count()}


def _cpu_count() -> int:
    import os
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


__all__ = ["cpu_description", "interleaved"]
