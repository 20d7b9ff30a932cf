"""Whole-frame evaluation, shared by validation in train.py and by test.py.

Full Sony frames (4256x2848) need tens of GB of activations in DBF/DBLE, so `tile_size` runs the
network on overlapping tiles and keeps only each tile's centre, which bounds memory by the tile.

Tiling a convolutional network is exact away from tile borders, but DBF/DBLE's channel attention
averages each decoder feature map over the whole frame (`nn.AdaptiveAvgPool2d(1)`), and a tile
only sees its own part. `predict` therefore runs several passes over the tiles. Pass k measures
the k-th global average (in execution order) by summing that layer's input over each tile's kept
region, so that every position counts once, and stops the forward right there; later passes
replace the output of the layers measured so far with those frame-wide means. The last pass, in
which every global average is known, produces the output. DBF/DBLE has four such layers: four
statistics passes, cut short at the measured layer (0.53, 0.67, 0.78 and 0.89 of a forward's
multiply-adds), and one full pass, 3.9 times the work of single-pass tiling. The SID U-Net has no
global average and runs in one pass. Forward hooks reach the pools in a plain module and in an
MQBench GraphModule alike, since tracing keeps them as called modules.

What remains is the receptive field (about 300 mosaic pixels for DBF/DBLE) cut off at tile
borders. Measured on a synthetic 1024x1536 frame with tile 512 and briefly trained weights, the
tiled output's PSNR is within 0.003 dB of the whole frame's with overlap 32 and within 0.0004 dB
with overlap 64 (full width: 66 and 77 dB between the two outputs; width 0.25 agrees), while
per-tile attention averages alone move it by about 0.027 dB.

Memory holds one tile's activations, the full-size input and outputs, and one (batch, channels)
sum per global average, never a full-size feature map.
"""
import io
import math
import numbers
import warnings
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from helpers.files import write_bytes_atomic
from helpers.metrics import psnr, ssim, to_image
from helpers.ratios import means_by_ratio, ratio_label
from models import model_outputs, split_outputs

# Five 2x max-poolings separate the DBF/DBLE input from its coarsest features (four after the
# SID U-Net's packing). Tiles cut on this grid see the same pooling windows as the whole frame,
# and in the mosaic every multiple of 32 is even, which keeps each tile's Bayer phase RGGB. Kept
# regions end on a 16-pixel grid, which the coarsest channel attention (at 1/16) resolves.
TILE_GRID = 32


def tile_layout(length: int, tile: int, overlap: int) -> list[tuple[int, int, int]]:
    """(start, keep_begin, keep_end) of each tile along one axis of `length` input pixels.

    Starts sit on TILE_GRID, with the step between them rounded down to a multiple of 32, so the
    context kept on each side is at least `overlap`. Neighbouring kept ranges meet halfway across
    the overlap, on a 16-pixel grid, and together cover [0, length) exactly once.
    """
    if length <= tile:
        return [(0, 0, length)]
    step = (tile - 2 * overlap) // TILE_GRID * TILE_GRID
    if step < TILE_GRID:
        raise ValueError(f"tile overlap {overlap} leaves less than {TILE_GRID} pixels between the starts of "
                         f"{tile}-pixel tiles; use tiles of at least {2 * overlap + TILE_GRID} or a smaller overlap")
    starts = list(range(0, length - tile, step)) + [length - tile]
    bounds = [0] + [(start + tile + following) // 2 for start, following in zip(starts, starts[1:])] + [length]
    return [(start, begin, end) for start, begin, end in zip(starts, bounds, bounds[1:])]


def _check_tiling(inputs: torch.Tensor, tile_size, overlap) -> None:
    if not _is_whole_number(tile_size) or tile_size <= 0 or tile_size % TILE_GRID:
        raise ValueError(f"tile_size must be a positive multiple of {TILE_GRID} (the grid of the networks' "
                         f"pooling), got {tile_size!r}")
    if not _is_whole_number(overlap) or overlap < 0:
        raise ValueError(f"tile overlap must be a non-negative number of pixels, got {overlap!r}")
    height, width = inputs.shape[-2:]
    if height % TILE_GRID or width % TILE_GRID:
        raise ValueError(f"tiled prediction needs an input whose height and width are multiples of "
                         f"{TILE_GRID}, got {height}x{width}")


def _is_whole_number(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_global(output_size) -> bool:
    sizes = output_size if isinstance(output_size, (tuple, list)) else (output_size, output_size)
    return all(size == 1 for size in sizes)


def global_average_pools(model: nn.Module) -> list[str]:
    """Names of the modules whose output `predict` makes frame-wide when tiling."""
    return [name for name, module in model.named_modules()
            if isinstance(module, nn.AdaptiveAvgPool2d) and _is_global(module.output_size)]


def _unreachable_global_averages(model: nn.Module) -> list[str]:
    """Global averages in a traced graph that are functions rather than modules: hooks cannot
    reach them, so every tile keeps its own average there. A plain module's forward cannot be
    inspected this way; DBF/DBLE and the SID U-Net use modules only."""
    graph = getattr(model, "graph", None)
    if not isinstance(graph, torch.fx.Graph):
        return []
    found = []
    for node in graph.nodes:
        if node.op == "call_function" and node.target in (F.adaptive_avg_pool2d, torch.mean):
            found.append(node.name)
        elif node.op == "call_method" and node.target == "mean":
            found.append(node.name)
    return found


class _StatisticGathered(Exception):
    """Ends a statistics pass's forward once the measured layer has been seen: nothing after it
    contributes to the statistic."""


class _FrameWideAverages:
    """Forward hooks on the global average pools: they sum the pool input over the tile's kept
    region for the layers being measured and substitute the frame-wide mean for layers measured
    before. Layers are told apart by call order within one forward, which also covers a module
    called more than once."""

    def __init__(self, model: nn.Module):
        self.handles = [module.register_forward_hook(self._hook) for module in model.modules()
                        if isinstance(module, nn.AdaptiveAvgPool2d) and _is_global(module.output_size)]
        self.known: list[torch.Tensor] = []
        self.measure_from = 0
        self.measure_to = 0
        self.sums: dict[int, torch.Tensor] = {}
        self.counts: dict[int, int] = {}
        self.calls = 0
        self.tile_shape = (0, 0)
        self.kept = ((0, 0), (0, 0))  # rows, columns of the tile's kept region, in tile coordinates

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()

    def start_pass(self, measure_from: int, measure_to: int) -> None:
        self.measure_from, self.measure_to = measure_from, measure_to
        self.sums, self.counts = {}, {}

    def start_tile(self, tile_shape, rows, columns) -> None:
        self.calls = 0
        self.tile_shape = tile_shape
        self.kept = (rows, columns)

    def finish_pass(self) -> int:
        """Turns this pass's sums into frame-wide means; returns how many layers were measured."""
        for index in sorted(self.sums):
            if index != len(self.known):
                raise RuntimeError("tiled prediction: the global average pools were not reached in the same "
                                   "order in every tile")
            mean = self.sums[index] / self.counts[index]
            self.known.append(mean.float()[..., None, None])
        return len(self.sums)

    def _hook(self, module, args, output):
        index = self.calls
        self.calls += 1
        if self.measure_from <= index < self.measure_to:
            self._accumulate(index, args[0])
        if index < len(self.known):
            output = self.known[index].to(device=output.device, dtype=output.dtype).expand_as(output)
        if self.measure_from < self.measure_to and index + 1 >= self.measure_to:
            raise _StatisticGathered
        return output

    def _accumulate(self, index: int, features: torch.Tensor) -> None:
        bounds = []
        for axis, (begin, end) in enumerate(self.kept):
            tile, size = self.tile_shape[axis], features.shape[-2 + axis]
            scale = tile // size
            if scale * size != tile or begin % scale or end % scale:
                raise ValueError(f"tiled prediction: a global average pool sees {size} positions for {tile} "
                                 "input pixels, too coarse for kept regions on a 16-pixel grid; use "
                                 "statistics_passes=0 (per-tile averages) for this network")
            bounds.append((begin // scale, end // scale))
        (top, bottom), (left, right) = bounds
        region = features[..., top:bottom, left:right]
        total = region.sum(dim=(-2, -1), dtype=torch.float64)
        self.sums[index] = self.sums[index] + total if index in self.sums else total
        self.counts[index] = self.counts.get(index, 0) + region.shape[-2] * region.shape[-1]


@torch.no_grad()
def predict(model, inputs: torch.Tensor, tile_size=None, overlap: int = 32,
            statistics_passes: Optional[int] = None):
    """Run `model` on (B,C,H,W) inputs, whole or in tiles; returns what the model returns.

    `tile_size` and `overlap` are in input pixels (packed pixels for the SID U-Net); the tile size
    must be a multiple of 32, and at least `overlap` pixels of context are kept on each inner tile
    side (see `tile_layout`). Tiled output equals the whole-frame output up to the receptive field
    beyond the overlap (see the module docstring).

    `statistics_passes` trades that equality for time. None (the default): one pass per global
    average pool, exact; 3.9 single passes of work for DBF/DBLE. 0: one pass in which every tile
    averages over itself, as plain tiling does. n: the first n-1 layers exactly, then one full pass
    that measures all remaining layers at once, each from features computed with per-tile averages
    in the layers not yet known, then the output pass. n=1 costs 2 single passes; in the tests its
    output is 78 dB from the exact one, per-tile averages' 44 dB.
    """
    if tile_size is None:
        return model(inputs)
    _check_tiling(inputs, tile_size, overlap)
    if statistics_passes is not None and (not _is_whole_number(statistics_passes) or statistics_passes < 0):
        raise ValueError(f"statistics_passes must be None or >= 0, got {statistics_passes}")
    height, width = inputs.shape[-2:]
    tile_h, tile_w = min(tile_size, height), min(tile_size, width)
    tiles = [(row, column) for row in tile_layout(height, tile_h, overlap)
             for column in tile_layout(width, tile_w, overlap)]
    averages = _FrameWideAverages(model) if statistics_passes != 0 else None
    unreachable = _unreachable_global_averages(model) if averages is not None else []
    if unreachable:
        warnings.warn(f"tiled prediction: {', '.join(unreachable)} may average over the frame as functions, "
                      "not modules; each tile averages over itself there, so tiles may not match the whole "
                      "frame", stacklevel=3)
    try:
        passes = 0
        while True:
            if averages is None or (statistics_passes is not None and passes >= statistics_passes):
                measure = (0, 0)  # nothing left to measure: this pass gives the output
            elif statistics_passes is not None and passes == statistics_passes - 1:
                measure = (len(averages.known), math.inf)
            else:
                measure = (len(averages.known), len(averages.known) + 1)
            if averages is not None:
                averages.start_pass(*measure)
            outputs = _tiled_pass(model, inputs, tiles, (tile_h, tile_w), averages)
            measured = averages.finish_pass() if averages is not None else 0
            passes += 1
            if measured == 0:
                return outputs
            outputs = None  # a statistics pass's output is not the answer: free it before the next pass
    finally:
        if averages is not None:
            averages.close()


def _tiled_pass(model, inputs, tiles, tile_shape, averages):
    """One forward over every tile; returns the stitched outputs, or None when the forwards were
    stopped once their statistic was gathered."""
    tile_h, tile_w = tile_shape
    height, width = inputs.shape[-2:]
    outputs, stopped = None, 0
    for (top, row_begin, row_end), (left, column_begin, column_end) in tiles:
        rows, columns = (row_begin - top, row_end - top), (column_begin - left, column_end - left)
        if averages is not None:
            averages.start_tile(tile_shape, rows, columns)
        try:
            piece = model(inputs[..., top:top + tile_h, left:left + tile_w])
        except _StatisticGathered:
            stopped += 1
            continue
        pieces = piece if isinstance(piece, (tuple, list)) else (piece,)
        if outputs is None:
            outputs = [p.new_zeros(*p.shape[:-2], height * (p.shape[-2] // tile_h), width * (p.shape[-1] // tile_w))
                       for p in pieces]
        for full, part in zip(outputs, pieces):
            scale_h, scale_w = part.shape[-2] // tile_h, part.shape[-1] // tile_w
            full[..., row_begin * scale_h:row_end * scale_h, column_begin * scale_w:column_end * scale_w] = \
                part[..., rows[0] * scale_h:rows[1] * scale_h, columns[0] * scale_w:columns[1] * scale_w]
    if stopped not in (0, len(tiles)):
        raise RuntimeError("tiled prediction: the network reached a different number of global average pools "
                           "in different tiles")
    if outputs is None:
        return None
    return tuple(outputs) if len(outputs) > 1 else outputs[0]


def save_png(path: Path, image: np.ndarray) -> None:
    """Encoded in memory, then written atomically: a full disk leaves no truncated PNG, and the error
    names the file."""
    from PIL import Image
    encoded = io.BytesIO()
    Image.fromarray((to_image(image) * 255 + 0.5).astype(np.uint8)).save(encoded, format="PNG")
    write_bytes_atomic(path, encoded.getvalue())


# Tile size used when a whole frame does not fit in GPU memory (exact tiling keeps the result equal).
FALLBACK_TILE_SIZE = 512


def predict_fitting(model, inputs, tile_size=None, overlap=32, statistics_passes=None):
    """`predict`, whole frame when `tile_size` is None; a frame that runs out of GPU memory is predicted
    again in exact tiles (FALLBACK_TILE_SIZE), so untiled GPU evaluation needs no setting."""
    if tile_size is not None or inputs.device.type != "cuda":
        return predict(model, inputs, tile_size, overlap, statistics_passes)
    try:
        return predict(model, inputs, None, overlap, statistics_passes)
    except torch.OutOfMemoryError:
        torch.cuda.empty_cache()
        return predict(model, inputs, FALLBACK_TILE_SIZE, overlap, statistics_passes)


@torch.no_grad()
def evaluate(model, dataset, device, ssim_variant="skimage", tile_size=None, overlap=32,
             image_dir=None, description="eval", statistics_passes: Optional[int] = None,
             metric_precision: str = "float"):
    """Per-image PSNR/SSIM on RGB clipped to [0, 1] (and on the mono image for networks with a mono
    head), scored as `metric_precision` says (see helpers/metrics.py); returns (means, rows). The means
    hold the overall values, one set per exposure ratio (`psnr_x100`, ...) and the metric mode and
    SSIM variant they were computed with. Tiling arguments as in `predict`."""
    was_training = model.training
    model.eval()
    # Fake quantizers whose observers stay on in QAT (PACT's) would keep moving their ranges while
    # being scored, making results depend on evaluation order: freeze them for the evaluation.
    observing = [module for module in model.modules()
                 if isinstance(getattr(module, "observer_enabled", None), torch.Tensor) and module.observer_enabled[0]]
    for module in observing:
        module.observer_enabled[0] = 0
    rows = []
    declared = model_outputs(model)
    try:
        for index in tqdm(range(len(dataset)), desc=description, leave=False, dynamic_ncols=True):
            item = dataset[index]
            inputs = item["input"].unsqueeze(0).to(device)
            mono, rgb = split_outputs(predict_fitting(model, inputs, tile_size, overlap, statistics_passes), declared)
            prediction = rgb[0].float().clamp(0, 1).cpu()
            target = item["rgb"]
            row = {"file": Path(item.get("short_path", item["name"])).name, "ratio": float(item["ratio"]),
                   "group": item.get("group") or ratio_label(item["ratio"]),
                   "psnr": psnr(prediction, target, metric_precision),
                   "ssim": ssim(prediction, target, ssim_variant, metric_precision)}
            if mono is not None and "mono" in item:
                mono_prediction = mono[0].float().clamp(0, 1).cpu()
                row["mono_psnr"] = psnr(mono_prediction, item["mono"], metric_precision)
                row["mono_ssim"] = ssim(mono_prediction, item["mono"], ssim_variant, metric_precision)
            rows.append(row)
            if image_dir is not None:
                save_png(Path(image_dir) / f"{Path(row['file']).stem}.png", prediction)
    finally:
        # An error mid-evaluation must not leave a training model with its observers off.
        model.train(was_training)
        for module in observing:
            module.observer_enabled[0] = 1
    keys = [key for key in ("psnr", "ssim", "mono_psnr", "mono_ssim") if rows and key in rows[0]] or ["psnr", "ssim"]
    means = {key: float(np.mean([r[key] for r in rows])) if rows else math.nan for key in keys}
    means.update(images=len(rows), ssim_variant=ssim_variant, metric_precision=metric_precision)
    means.update(means_by_ratio(rows, keys))
    return means, rows
