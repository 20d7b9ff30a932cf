"""Tiled evaluation of full Sony-sized frames (4256x2848) on CPU: seconds per frame and peak memory.

One synthetic full-size test frame is evaluated by test.py's own code (`test.main`: checkpoint
loading, evaluate_checkpoint, tiled predict, PSNR/SSIM, result files) in a fresh process, with the
full-width DBF/DBLE and frame-wide channel-attention statistics (four statistics passes plus one
output pass over the tiles, see harness/evaluate.py). The weights are a fixed random initialisation:
time and memory do not depend on their values.

A second measurement shows that memory follows the tile and not the frame: `predict` alone on the
same frame for the main tile size and a smaller one, each in a fresh process, with one pass over the
tiles (per-tile statistics) to keep the run short. The statistics passes hold no tensor beyond
one tile's activations; what the allocator keeps after their interrupted forwards raised the peak
by about 10% in a check (612 against 547 MiB for a 1024x2048 crop, tiles of 512).

    python bench/full_size_eval.py                      # temporary folder, removed afterwards
    python bench/full_size_eval.py --root /tmp/full     # kept; a second run reuses frame and cache
    python bench/full_size_eval.py --skip-test-py       # only the memory-versus-tile measurement

For test.py the figure is the process's own peak RSS (ru_maxrss; it starts no children), which
also covers the full-size PSNR/SSIM of helpers/metrics.py. For `predict` alone the peak is reset just
before prediction (Linux /proc/self/clear_refs), so it shows what prediction itself holds.

Figures on a shared 2-core CPU, width 1.0, tile 512, overlap 64 (88 tiles, five passes): test.py
135 s per frame (262 CPU s) with the machine otherwise quiet, 173 s at load average 2 to 3 and
606 s when other work took most of it; peak RSS 2.8 to 2.9 GiB, of which the full-size skimage
SSIM alone needs about 2.4 GiB. `predict` alone peaks at 0.75 GiB with tiles of 512 and 0.65 GiB
with tiles of 256; 0.41 GiB of model, frame and libraries and 0.18 GiB of full-size outputs are
common to both, so tiles of 512 hold about 0.16 GiB and tiles of 256 about 0.06 GiB. One pass
over the tiles of 512 takes 31 s on a quiet machine. The bench takes 5 to 12 minutes.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPOSITORY_ROOT = Path(__file__).resolve().parents[1]
if str(REPOSITORY_ROOT) not in sys.path:
    sys.path.insert(0, str(REPOSITORY_ROOT))

FULL_HEIGHT, FULL_WIDTH = 2848, 4256


def own_peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def status_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


def reset_peak_rss() -> bool:
    """Linux lets a process reset its own peak resident size (VmHWM); false where it cannot."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def prepare(root: Path, width: float) -> dict:
    """Frame, decoded cache, weights file and run config; each is reused when already there."""
    import torch
    import yaml

    from data.sid import prepare_split
    from data.synthetic import generate_synthetic_sid
    from models.dbf_dble import DBFDBLE

    data_root = root / "sid_full_size"
    cache_dir = root / "decoded_cache"
    start = time.perf_counter()
    generate_synthetic_sid(data_root, height=FULL_HEIGHT, width=FULL_WIDTH, train_scenes=0, val_scenes=0,
                           test_scenes=1, bursts=1)
    # Decoded here, in one process, so the measured run only reads the cache, as repeated evaluations do.
    prepare_split(data_root, "test", "all", False, cache_dir, workers=0, max_pairs=1)
    weights = root / f"dbf_dble_width{width:g}_random.pth"
    if not weights.is_file():
        torch.manual_seed(0)
        torch.save({"model": DBFDBLE(width).state_dict()}, weights)
    config = root / "full_size_eval.yaml"
    config.write_text(yaml.safe_dump({
        "device": "cpu",
        "model": {"name": "dbf_dble", "width": width},
        "data": {"root": str(data_root), "synthetic": None, "cache_dir": str(cache_dir), "test_protocol": "all",
                 "exclude_misaligned": False, "max_test_pairs": 1, "decode_workers": 0},
        "output": {"results_dir": str(root / "results"), "save_images": False},
    }))
    return {"config": str(config), "weights": str(weights), "data_root": str(data_root),
            "cache_dir": str(cache_dir), "prepare_seconds": time.perf_counter() - start}


def measure_test_py(arguments: argparse.Namespace) -> dict:
    import torch

    torch.set_num_threads(arguments.threads)
    import test

    out_dir = Path(arguments.root) / "results" / f"tile{arguments.tile}"
    argv = ["--config", arguments.config, "--checkpoint", arguments.weights, "--split", "test",
            "--tile-size", str(arguments.tile), "--tile-overlap", str(arguments.overlap), "--out", str(out_dir)]
    start, cpu_start = time.perf_counter(), cpu_seconds()
    report = test.main(argv)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "cpu_seconds": cpu_seconds() - cpu_start, "peak_rss_mib": own_peak_rss_mib(),
            "images": report["images"], "psnr": report["psnr"]}


def measure_predict(arguments: argparse.Namespace) -> dict:
    import torch

    torch.set_num_threads(arguments.threads)
    from harness.config import load_config
    from harness.evaluate import predict, tile_layout
    from harness.setup import build_eval_dataset
    from models.dbf_dble import DBFDBLE
    from checkpoints.weights import load_weights

    config = load_config(arguments.config, check_files=False)
    inputs = build_eval_dataset(config, "test", "mosaic")[0]["input"].unsqueeze(0).clone()
    gc.collect()  # the rest of the data item (target, memory maps) goes; the input frame stays
    model = DBFDBLE(config.model.width).eval()
    load_weights(model, arguments.weights)
    # The peak is taken over prediction alone: loading the frame passes through larger buffers.
    resettable = reset_peak_rss()
    before = status_mib("VmRSS")
    start, cpu_start = time.perf_counter(), cpu_seconds()
    mono, rgb = predict(model, inputs, arguments.tile, arguments.overlap, statistics_passes=0)
    seconds, cpu = time.perf_counter() - start, cpu_seconds() - cpu_start
    tiles = len(tile_layout(inputs.shape[-2], arguments.tile, arguments.overlap)) * \
        len(tile_layout(inputs.shape[-1], arguments.tile, arguments.overlap))
    return {"seconds": seconds, "cpu_seconds": cpu,
            "peak_rss_mib": status_mib("VmHWM") if resettable else own_peak_rss_mib(),
            "peak_is_over_prediction": resettable, "before_predict_rss_mib": before,
            "outputs_mib": (mono.numel() + rgb.numel()) * 4 / 2 ** 20, "tiles": tiles}


def run_phase(phase: str, arguments: argparse.Namespace, prepared: dict, tile: int) -> dict:
    command = [sys.executable, str(Path(__file__).resolve()), "--phase", phase, "--root", str(arguments.root),
               "--config", prepared["config"], "--weights", prepared["weights"], "--tile", str(tile),
               "--overlap", str(arguments.overlap), "--threads", str(arguments.threads)]
    result = subprocess.run(command, cwd=REPOSITORY_ROOT, capture_output=True, text=True)
    if result.returncode != 0:
        sys.stderr.write(result.stdout[-4000:] + result.stderr[-4000:])
        raise SystemExit(f"{phase} phase failed with exit status {result.returncode}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, help="working folder (default: a temporary one, removed)")
    parser.add_argument("--tile", type=int, default=512)
    parser.add_argument("--overlap", type=int, default=64, help="tile overlap; 64 keeps tiled within 0.01 dB")
    parser.add_argument("--small-tile", type=int, default=256, help="second tile size for the memory comparison")
    parser.add_argument("--width", type=float, default=1.0, help="channel width of DBF/DBLE (1.0 = published)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--skip-test-py", action="store_true", help="only measure memory against tile size")
    parser.add_argument("--phase", choices=["test_py", "predict"], help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    parser.add_argument("--weights", help=argparse.SUPPRESS)
    arguments = parser.parse_args(argv)

    if arguments.phase is not None:
        measure = measure_test_py if arguments.phase == "test_py" else measure_predict
        result = measure(arguments)
        print(json.dumps(result))
        return 0

    temporary = None
    if arguments.root is None:
        temporary = tempfile.TemporaryDirectory(prefix="full_size_eval_")
        arguments.root = Path(temporary.name)
    arguments.root.mkdir(parents=True, exist_ok=True)
    try:
        prepared = prepare(arguments.root, arguments.width)
        print(f"one {FULL_WIDTH}x{FULL_HEIGHT} synthetic frame, DBF/DBLE width {arguments.width:g}, CPU, "
              f"{arguments.threads} threads, load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores "
              f"(preparation {prepared['prepare_seconds']:.0f} s)", flush=True)
        if not arguments.skip_test_py:
            result = run_phase("test_py", arguments, prepared, arguments.tile)
            print(f"test.py, tile {arguments.tile}, overlap {arguments.overlap}, frame-wide attention statistics: "
                  f"{result['seconds']:.1f} s per full-size frame ({result['cpu_seconds']:.0f} CPU s), "
                  f"peak RSS {result['peak_rss_mib']:.0f} MiB ({result['images']} frame, PSNR {result['psnr']:.2f} dB "
                  f"with random weights; load average {os.getloadavg()[0]:.1f} after)", flush=True)
        for tile in (arguments.tile, arguments.small_tile):
            result = run_phase("predict", arguments, prepared, tile)
            peak = "peak RSS during prediction" if result["peak_is_over_prediction"] else "peak RSS of the process"
            print(f"predict only, tile {tile}, overlap {arguments.overlap}, one pass over {result['tiles']} tiles: "
                  f"{result['seconds']:.1f} s ({result['cpu_seconds']:.0f} CPU s), {peak} "
                  f"{result['peak_rss_mib']:.0f} MiB (resident before: {result['before_predict_rss_mib']:.0f} MiB "
                  f"of model, input frame and libraries; full-size outputs {result['outputs_mib']:.0f} MiB; "
                  f"load average {os.getloadavg()[0]:.1f} after)", flush=True)
    finally:
        if temporary is not None:
            temporary.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
