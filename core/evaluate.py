"""Whole-frame evaluation, shared by validation in train.py and by test.py.

Full Sony frames (4256x2848) need tens of GB of activations in DBF/DBLE, so `tile_size` runs the
network on overlapping tiles and keeps only each tile's centre, which bounds memory by the tile.
"""
import math
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from core.metrics import psnr, ssim, to_image
from models import split_outputs


def _tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    if length <= tile:
        return [0]
    step = max(2, (tile - 2 * overlap) // 2 * 2)  # even steps keep the Bayer phase of every tile
    starts = list(range(0, length - tile, step)) + [length - tile]
    return sorted(set(starts))


def _kept_range(start: int, tile: int, length: int, overlap: int) -> tuple[int, int]:
    begin = start + (overlap if start > 0 else 0)
    end = start + tile - (overlap if start + tile < length else 0)
    return begin, end


@torch.no_grad()
def predict(model, inputs: torch.Tensor, tile_size=None, overlap: int = 32):
    """Run `model` on (B,C,H,W) inputs, whole or in tiles; returns what the model returns."""
    if tile_size is None:
        return model(inputs)
    height, width = inputs.shape[-2:]
    tile_h, tile_w = min(tile_size, height), min(tile_size, width)
    outputs = None
    for top in _tile_starts(height, tile_h, overlap):
        for left in _tile_starts(width, tile_w, overlap):
            piece = model(inputs[..., top:top + tile_h, left:left + tile_w])
            pieces = piece if isinstance(piece, (tuple, list)) else (piece,)
            if outputs is None:
                scale = pieces[0].shape[-1] // tile_w
                outputs = [p.new_zeros(*p.shape[:-2], height * (p.shape[-2] // tile_h), width * (p.shape[-1] // tile_w))
                           for p in pieces]
            row = _kept_range(top, tile_h, height, overlap)
            column = _kept_range(left, tile_w, width, overlap)
            for full, part in zip(outputs, pieces):
                scale = part.shape[-1] // tile_w
                full[..., row[0] * scale:row[1] * scale, column[0] * scale:column[1] * scale] = \
                    part[..., (row[0] - top) * scale:(row[1] - top) * scale,
                         (column[0] - left) * scale:(column[1] - left) * scale]
    return tuple(outputs) if len(outputs) > 1 else outputs[0]


def save_png(path: Path, image: np.ndarray) -> None:
    from PIL import Image
    Image.fromarray((to_image(image) * 255 + 0.5).astype(np.uint8)).save(path)


@torch.no_grad()
def evaluate(model, dataset, device, ssim_variant="skimage", tile_size=None, overlap=32,
             image_dir=None, description="eval"):
    """Per-image PSNR/SSIM on RGB clipped to [0, 1]; returns (means, rows)."""
    was_training = model.training
    model.eval()
    rows = []
    for index in tqdm(range(len(dataset)), desc=description, leave=False, dynamic_ncols=True):
        item = dataset[index]
        inputs = item["input"].unsqueeze(0).to(device)
        _, rgb = split_outputs(predict(model, inputs, tile_size, overlap))
        prediction = rgb[0].float().clamp(0, 1).cpu()
        target = item["rgb"]
        row = {"file": Path(item.get("short_path", item["name"])).name, "ratio": float(item["ratio"]),
               "psnr": psnr(prediction, target), "ssim": ssim(prediction, target, ssim_variant)}
        rows.append(row)
        if image_dir is not None:
            Path(image_dir).mkdir(parents=True, exist_ok=True)
            save_png(Path(image_dir) / f"{Path(row['file']).stem}.png", prediction)
    model.train(was_training)
    means = {"psnr": float(np.mean([r["psnr"] for r in rows])) if rows else math.nan,
             "ssim": float(np.mean([r["ssim"] for r in rows])) if rows else math.nan,
             "images": len(rows), "ssim_variant": ssim_variant}
    return means, rows
