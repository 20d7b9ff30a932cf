"""Tiled prediction (harness/evaluate.py) against whole-frame prediction.

Two kinds of network weights are used. With "pixel-local" weights every 3x3 convolution keeps only
its centre tap, so apart from the global average pools each output pixel depends only on its own
32x32 block of the input; tiles on the 32-pixel grid then reproduce the whole frame to rounding
error, whatever the overlap, exactly when the frame-wide averages are right. With ordinary 3x3
weights the receptive field (about 300 mosaic pixels for DBF/DBLE) reaches past any affordable
overlap, and the tests bound the remaining difference instead.
"""
import math
import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from harness.evaluate import TILE_GRID, global_average_pools, predict, tile_layout
from models.dbf_dble import DBFDBLE
from models.sid_unet import SIDUNet

torch.set_num_threads(1)

HEIGHT, WIDTH = 256, 384  # a mid-size frame: 2x3 tiles of 128


def _initialise(model: nn.Module, seed: int, pixel_local: bool) -> nn.Module:
    """He-scaled weights from a seeded generator, optionally pixel-local, with small random biases.

    Activations keep their scale through the depth of the network (weights that shrink them would
    leave the channel-attention input nearly constant, and per-tile averages would pass for
    frame-wide ones); the seed fixes the thresholds the tests assert."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if not isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
                continue
            weight = torch.randn(module.weight.shape, generator=generator)
            if isinstance(module, nn.Conv2d) and pixel_local and module.kernel_size == (3, 3):
                weight[..., [0, 0, 0, 1, 1, 2, 2, 2], [0, 1, 2, 0, 2, 0, 1, 2]] = 0
                taps = 1
            elif isinstance(module, nn.Conv2d):
                taps = module.kernel_size[0] * module.kernel_size[1]
            else:  # each output pixel of a stride-2 2x2 transposed convolution sees one input pixel
                taps = 1
            fan_in = (module.in_channels // module.groups) * taps
            module.weight.copy_(weight * math.sqrt(2 / (1 + 0.2 ** 2) / fan_in))
            module.bias.copy_(torch.randn(module.bias.shape, generator=generator) * 0.01)
    return model.eval()


def _frame(batch: int = 1, height: int = HEIGHT, width: int = WIDTH) -> torch.Tensor:
    """A mosaic whose brightness and texture change across the frame, so that every tile has its
    own feature averages."""
    rows = torch.linspace(0, 1, height)[:, None]
    columns = torch.linspace(0, 1, width)[None, :]
    frames = []
    for index in range(batch):
        brightness = 0.02 + (columns if index % 2 == 0 else 1 - columns) ** 2
        texture = 0.5 + 0.5 * torch.sin(40 * rows * columns + 10 * rows + 3 * index)
        frames.append(brightness * texture)
    return torch.stack(frames)[:, None]


def _rgb(outputs) -> torch.Tensor:
    return outputs[1] if isinstance(outputs, tuple) else outputs


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(10 * torch.log10(1 / F.mse_loss(a.clamp(0, 1), b.clamp(0, 1))))


def _quantized(model: nn.Module, inputs: torch.Tensor) -> nn.Module:
    from quant import QuantSchemeConfig, calibrate, prepare_quantized_model

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantized = prepare_quantized_model(model, QuantSchemeConfig(), None, False)
        calibrate(quantized, [inputs], "cpu")
    return quantized.eval()


def _whole(model, inputs):
    with torch.no_grad():
        return model(inputs)


@pytest.mark.parametrize("length,tile,overlap", [(256, 128, 0), (384, 128, 32), (384, 128, 20), (192, 64, 16),
                                                 (2848, 512, 32), (4256, 512, 96), (4256, 256, 64), (96, 128, 32),
                                                 (2848, 2848, 32)])
def test_layout_partitions_the_frame_on_the_pooling_grid(length, tile, overlap):
    layout = tile_layout(length, tile, overlap)
    assert layout[0][1] == 0 and layout[-1][2] == length
    for (start, begin, end), following in zip(layout, layout[1:] + [None]):
        # Multiples of 32 are even: every tile starts on an R site of the RGGB mosaic.
        assert start % TILE_GRID == 0 and start % 2 == 0 and begin % 16 == 0
        assert 0 <= start <= begin < end <= start + min(tile, length) <= length
        if begin > 0:
            assert begin - start >= overlap
        if end < length:
            assert start + tile - end >= overlap
        if following is not None:
            assert following[1] == end  # kept ranges meet: every pixel is written and counted once


def test_tile_size_off_the_grid_is_refused():
    model = DBFDBLE(width=0.25).eval()
    inputs = torch.zeros(1, 1, 64, 64)
    for tile in (100, 0, -32, 48.0):
        with pytest.raises(ValueError, match="multiple of 32"):
            predict(model, inputs, tile_size=tile)
    with pytest.raises(ValueError, match="multiples of 32"):
        predict(model, torch.zeros(1, 1, 64, 80), tile_size=32)
    with pytest.raises(ValueError, match="overlap"):
        predict(model, torch.zeros(1, 1, 256, 256), tile_size=128, overlap=50)


def test_dbf_dble_pools_are_found_in_the_module_and_in_the_traced_graph():
    model = DBFDBLE(width=0.25).eval()
    names = [f"DBLE.channel_attention{level}.avg_pool" for level in (6, 7, 8, 9)]
    assert global_average_pools(model) == names
    assert global_average_pools(_quantized(model, _frame(height=64, width=64))) == names
    assert global_average_pools(SIDUNet(width=0.25)) == []


def test_dbf_dble_tiles_reproduce_the_frame_wide_attention():
    model = _initialise(DBFDBLE(width=0.25), seed=0, pixel_local=True)
    inputs = _frame(batch=2)
    whole = _whole(model, inputs)
    tiled = predict(model, inputs, tile_size=128, overlap=0)
    per_tile = predict(model, inputs, tile_size=128, overlap=0, statistics_passes=0)
    for reference, result in zip(whole, tiled):
        assert torch.allclose(result, reference, rtol=1e-4, atol=1e-5)
    # The test can tell: averaging each tile over itself changes the colour output clearly.
    assert (per_tile[1] - whole[1]).abs().max() > 1e-2
    assert torch.equal(per_tile[0], tiled[0])  # DBF has no attention: its output is the same either way
    # The faster estimate (all four averages from one pass, then the output pass) comes close.
    estimated = predict(model, inputs, tile_size=128, overlap=0, statistics_passes=1)
    assert _psnr(estimated[1], whole[1]) > 70 > 50 > _psnr(per_tile[1], whole[1])
    with pytest.raises(ValueError, match="statistics_passes"):
        predict(model, inputs, tile_size=128, statistics_passes=-1)


def test_quantized_dbf_dble_tiles_reproduce_the_frame_wide_attention():
    model = _initialise(DBFDBLE(width=0.25), seed=1, pixel_local=True)
    inputs = _frame()
    quantized = _quantized(model, inputs)
    whole = _rgb(_whole(quantized, inputs))
    tiled = _rgb(predict(quantized, inputs, tile_size=128, overlap=0))
    per_tile = _rgb(predict(quantized, inputs, tile_size=128, overlap=0, statistics_passes=0))
    # Summation order differs between a frame and its tiles; a rare activation rounding to the other
    # 8-bit step is all that may remain.
    assert _psnr(tiled, whole) > 70
    assert _psnr(per_tile, whole) < _psnr(tiled, whole) - 20


@pytest.mark.parametrize("quantize", [False, True], ids=["float", "quantized"])
def test_sid_unet_packed_tiles_match_the_whole_frame_in_one_pass(quantize):
    model = _initialise(SIDUNet(width=0.25), seed=2, pixel_local=True)
    inputs = F.pixel_unshuffle(_frame(), 2)  # packed (1, 4, 128, 192): tiles are in packed pixels
    if quantize:
        model = _quantized(model, inputs)
    calls = []
    handle = model.register_forward_pre_hook(lambda module, args: calls.append(args[0].shape[-2:]))
    try:
        tiled = predict(model, inputs, tile_size=64, overlap=0)
    finally:
        handle.remove()
    assert len(calls) == 2 * 3  # one pass over the tiles: the U-Net has no global average
    assert torch.allclose(tiled, _whole(model, inputs), rtol=1e-4, atol=1e-5)


def test_overlap_keeps_the_score_within_a_hundredth_of_a_decibel():
    """With full 3x3 weights the difference left is the context cut off at tile borders. The issue's
    criterion, for a model about 33 dB from its target: the score moves by less than 0.01 dB with
    an overlap of 96, and would not without frame-wide attention averages."""
    model = _initialise(DBFDBLE(width=0.25), seed=3, pixel_local=False)
    inputs = _frame(height=384, width=512)
    whole = _rgb(_whole(model, inputs))
    generator = torch.Generator().manual_seed(4)
    target = (whole + 0.03 * torch.randn(whole.shape, generator=generator)).clamp(0, 1)
    tiled = {overlap: _rgb(predict(model, inputs, tile_size=256, overlap=overlap)) for overlap in (0, 96)}
    per_tile = _rgb(predict(model, inputs, tile_size=256, overlap=96, statistics_passes=0))
    assert _psnr(tiled[96], whole) > _psnr(tiled[0], whole) + 10
    assert abs(_psnr(tiled[96], target) - _psnr(whole, target)) < 0.01
    assert abs(_psnr(per_tile, target) - _psnr(whole, target)) > 0.01
