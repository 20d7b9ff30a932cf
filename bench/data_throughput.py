"""Data pipeline throughput on Sony-sized (4256x2848) synthetic frames.

Measures: synthetic generation time, raw-cache build rate (files/s, decode + write), training
patches/s from a DataLoader (512x512 crops, batch 24, 2 workers by default) and peak RSS. The
loader is measured twice in fresh processes, once over the real pairs and once over a list of
--pairs entries that reuse those few files, to show memory does not grow with the list length.

    python bench/data_throughput.py                 # temporary folder, removed afterwards
    python bench/data_throughput.py --root /tmp/b   # kept; a second run reuses frames and cache
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPOSITORY_ROOT = Path(__file__).resolve().parents[1]
if str(REPOSITORY_ROOT) not in sys.path:
    sys.path.insert(0, str(REPOSITORY_ROOT))


def peak_rss_mib(who: int) -> float:
    # Linux reports ru_maxrss in KiB; for RUSAGE_CHILDREN it is the largest waited-for child.
    return resource.getrusage(who).ru_maxrss / 1024


def write_long_list(root: Path, pair_count: int) -> Path:
    """A list of pair_count lines cycling over the real training lines (files are reused)."""
    lines = [line for line in (root / "Sony_train_list.txt").read_text().splitlines() if line.strip()]
    list_file = root / f"Sony_bench_{pair_count}_list.txt"
    list_file.write_text("".join(lines[index % len(lines)] + "\n" for index in range(pair_count)))
    return list_file


def loader_phase(arguments: argparse.Namespace) -> None:
    import torch
    from torch.utils.data import DataLoader, RandomSampler

    from data.raw_cache import RawCache
    from data.sid import SIDTrainDataset, read_list

    root = Path(arguments.root)
    pairs = read_list(arguments.list_file, root)
    dataset = SIDTrainDataset(pairs, RawCache(arguments.cache_dir), arguments.patch_size, "mosaic", flip=True)
    torch.manual_seed(0)
    # Sampling with replacement gives the same number of patches however few pairs are listed.
    sampler = RandomSampler(dataset, replacement=True, num_samples=(arguments.batches + 1) * arguments.batch_size)
    loader = DataLoader(
        dataset, batch_size=arguments.batch_size, sampler=sampler, num_workers=arguments.workers, drop_last=True
    )
    start = time.perf_counter()
    iterator = iter(loader)
    next(iterator)  # worker start-up and the first batch are excluded from the rate
    first_batch_seconds = time.perf_counter() - start
    start = time.perf_counter()
    patches = 0
    for batch in iterator:
        patches += batch["input"].shape[0]
    steady_seconds = time.perf_counter() - start
    del iterator, loader  # joins the workers so RUSAGE_CHILDREN includes them
    print(
        json.dumps(
            {
                "pairs": len(pairs),
                "first_batch_s": first_batch_seconds,
                "patches_per_s": patches / steady_seconds,
                "main_peak_mib": peak_rss_mib(resource.RUSAGE_SELF),
                "worker_peak_mib": peak_rss_mib(resource.RUSAGE_CHILDREN),
            }
        )
    )


def step_phase(arguments: argparse.Namespace) -> None:
    """What the loader must keep up with: training steps of the full DBF/DBLE at the same patch size.
    On CPU a batch of 24 takes minutes, so --step-batch samples per step are timed and the rate is
    per patch (the cost is linear in the batch)."""
    import torch
    import torch.nn.functional as F

    from models import build_model

    model = build_model("dbf_dble")
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-5)
    size = arguments.patch_size
    inputs = torch.rand(arguments.step_batch, 1, size, size)
    rgb_target = torch.rand(arguments.step_batch, 3, size, size)
    times = []
    for _ in range(3):
        start = time.perf_counter()
        mono, rgb = model(inputs)
        loss = F.l1_loss(rgb, rgb_target) + F.l1_loss(mono, rgb_target[:, :1])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        times.append(time.perf_counter() - start)
    step = sorted(times[1:])[0]
    print(json.dumps({"seconds_per_step": step, "patches_per_s": arguments.step_batch / step}))


def generate_phase(arguments: argparse.Namespace) -> None:
    from data.synthetic import generate_full_size_sid

    start = time.perf_counter()
    generate_full_size_sid(arguments.root, seed=0, scenes=arguments.scenes, bursts=1)
    print(json.dumps({"seconds": time.perf_counter() - start, "main_peak_mib": peak_rss_mib(resource.RUSAGE_SELF)}))


def build_phase(arguments: argparse.Namespace) -> None:
    from data.raw_cache import RawCache
    from data.sid import read_list

    pairs = read_list(arguments.root / "Sony_train_list.txt", arguments.root)
    inputs = sorted({pair.short_path for pair in pairs})
    ground_truths = sorted({pair.long_path for pair in pairs})
    cache = RawCache(arguments.cache_dir)
    start = time.perf_counter()
    decoded = cache.build(inputs, ground_truths, workers=arguments.workers)
    seconds = time.perf_counter() - start
    print(
        json.dumps(
            {
                "inputs": len(inputs),
                "ground_truths": len(ground_truths),
                "decoded": decoded,
                "seconds": seconds,
                "cache_mib": sum(path.stat().st_size for path in arguments.cache_dir.iterdir()) / 2**20,
                "main_peak_mib": peak_rss_mib(resource.RUSAGE_SELF),
                "worker_peak_mib": peak_rss_mib(resource.RUSAGE_CHILDREN),
            }
        )
    )


def run_phase(arguments: argparse.Namespace, phase: str, root: Path, cache_dir: Path, list_file: Path | None = None) -> dict:
    """Each phase runs in a fresh process: Linux carries ru_maxrss over fork and exec, so a
    process that had generated full-size frames would report that peak for everything after."""
    command = [
        sys.executable, __file__,
        "--phase", phase,
        "--root", str(root),
        "--cache-dir", str(cache_dir),
        "--scenes", str(arguments.scenes),
        "--batches", str(arguments.batches),
        "--batch-size", str(arguments.batch_size),
        "--patch-size", str(arguments.patch_size),
        "--workers", str(arguments.workers),
        "--step-batch", str(arguments.step_batch),
    ]  # fmt: skip
    if list_file is not None:
        command += ["--list-file", str(list_file)]
    completed = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=True)
    return json.loads(completed.stdout.strip().splitlines()[-1])


def benchmark(arguments: argparse.Namespace, work_dir: Path) -> None:
    root = work_dir / "synthetic_sid_full"
    cache_dir = work_dir / "raw_cache"
    generated = run_phase(arguments, "generate", root, cache_dir)
    built = run_phase(arguments, "build", root, cache_dir)
    few = run_phase(arguments, "loader", root, cache_dir, root / "Sony_train_list.txt")
    many = run_phase(arguments, "loader", root, cache_dir, write_long_list(root, arguments.pairs))
    step = run_phase(arguments, "step", root, cache_dir)

    rows = [
        ("frames", f"{built['inputs']} short + {built['ground_truths']} long DNGs, 4256x2848"),
        ("generation", f"{generated['seconds']:.1f} s, peak RSS {generated['main_peak_mib']:.0f} MiB"),
    ]
    if built["decoded"]:
        rate = built["decoded"] / built["seconds"]
        rows.append(
            (
                "cache build",
                f"{built['decoded']} files in {built['seconds']:.1f} s = {rate:.2f} files/s ({arguments.workers} workers); "
                f"peak RSS main {built['main_peak_mib']:.0f} MiB, largest decoder {built['worker_peak_mib']:.0f} MiB",
            )
        )
    else:
        rows.append(("cache build", "all cached already (use a new --root to time it)"))
    rows.append(("cache size", f"{built['cache_mib']:.0f} MiB"))
    for label, result in (("loader, real list", few), (f"loader, {arguments.pairs}-line list", many)):
        rows.append(
            (
                f"{label} ({result['pairs']} pairs)",
                f"{result['patches_per_s']:.0f} patches/s ({arguments.patch_size}px, batch {arguments.batch_size}, "
                f"{arguments.workers} workers; first batch {result['first_batch_s']:.1f} s); peak RSS main "
                f"{result['main_peak_mib']:.0f} MiB, largest worker {result['worker_peak_mib']:.0f} MiB",
            )
        )
    rows.append(("training step (CPU)", f"{step['seconds_per_step']:.1f} s per step of {arguments.step_batch} "
                 f"{arguments.patch_size}px patches = {step['patches_per_s']:.2f} patches/s; loader / model = "
                 f"{few['patches_per_s'] / step['patches_per_s']:.0f}x (target >= 10x)"))
    width = max(len(name) for name, _ in rows)
    print()
    for name, value in rows:
        print(f"{name:<{width}}  {value}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, help="work folder to keep and reuse (default: a temporary one)")
    parser.add_argument("--scenes", type=int, default=3, help="full-size scenes to generate (3 gives 5 short + 3 long)")
    parser.add_argument("--pairs", type=int, default=1865, help="lines in the long list (SID train has 1865)")
    parser.add_argument("--batches", type=int, default=10, help="timed batches per loader run")
    parser.add_argument("--batch-size", type=int, default=24)
    parser.add_argument("--patch-size", type=int, default=512)
    parser.add_argument("--workers", type=int, default=2, help="cache-build and DataLoader worker processes")
    parser.add_argument("--step-batch", type=int, default=2, help="samples per timed training step")
    parser.add_argument("--phase", choices=("generate", "build", "loader", "step"), help=argparse.SUPPRESS)
    parser.add_argument("--cache-dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--list-file", type=Path, help=argparse.SUPPRESS)
    arguments = parser.parse_args()

    if arguments.phase is not None:
        {"generate": generate_phase, "build": build_phase, "loader": loader_phase, "step": step_phase}[arguments.phase](arguments)
    elif arguments.root is not None:
        arguments.root.mkdir(parents=True, exist_ok=True)
        benchmark(arguments, arguments.root)
    else:
        with tempfile.TemporaryDirectory(prefix="data_throughput_") as work_dir:
            benchmark(arguments, Path(work_dir))


if __name__ == "__main__":
    main()
