"""Tests of data/: synthetic DNG generation, rawpy decoding, the raw cache and the SID loader."""

from __future__ import annotations

import itertools
import json
import pickle
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import rawpy
import torch

from data.raw_cache import RawCache
from data.sid import (
    SIDEvalDataset,
    SIDTrainDataset,
    develop_short_exposure_baseline,
    normalise_mosaic,
    prepare_split,
    read_list,
    select_pairs,
)
from data.synthetic import (
    BLACK_LEVEL,
    MANIFEST_NAME,
    WHITE_LEVEL,
    generate_synthetic_sid,
    long_exposure_raw,
    render_scene,
    short_exposure_raw,
    write_dng,
)



def psnr(prediction: np.ndarray, target: np.ndarray) -> float:
    return float(10 * np.log10(1.0 / np.mean((np.asarray(prediction, np.float64) - target) ** 2)))


def frame_size(root: Path) -> tuple[int, int]:
    parameters = json.loads((root / MANIFEST_NAME).read_text())["parameters"]
    return parameters["height"], parameters["width"]


def all_pairs(root: Path):
    return [pair for split in ("train", "val", "test") for pair in read_list(root / f"Sony_{split}_list.txt", root)]


# --- generator and rawpy round trip -------------------------------------------------------------


def test_dng_round_trip_through_rawpy(synthetic_sid_root):
    pair = read_list(synthetic_sid_root / "Sony_test_list.txt", synthetic_sid_root)[0]
    scene = render_scene(0, pair.scene, *frame_size(synthetic_sid_root))
    expected = {
        pair.long_path: long_exposure_raw(scene),
        pair.short_path: short_exposure_raw(0, scene, pair.burst, pair.input_exposure),
    }
    for path, written in expected.items():
        with rawpy.imread(str(path)) as raw:
            np.testing.assert_array_equal(raw.raw_image_visible, written)
            assert list(raw.black_level_per_channel) == [BLACK_LEVEL] * 4
            assert raw.white_level == WHITE_LEVEL
            pattern = "".join(raw.color_desc.decode()[index] for index in np.asarray(raw.raw_pattern).ravel())
            assert pattern == "RGGB"
            np.testing.assert_allclose(raw.camera_whitebalance[:3], scene.white_balance_gains, rtol=1e-4)


def test_ground_truth_development_gives_back_the_clean_photo(synthetic_sid_root, synthetic_sid_cache_dir):
    cache = RawCache(synthetic_sid_cache_dir)
    long_paths = sorted({pair.long_path for pair in all_pairs(synthetic_sid_root)})
    values = []
    for long_path in long_paths:
        scene = render_scene(0, int(long_path.name[:5]), *frame_size(synthetic_sid_root))
        developed = np.asarray(cache.rgb(long_path), dtype=np.float64) / 65535
        values.append(psnr(developed, scene.reference))
    # Demosaicing (LibRaw's AHD) is the only loss: 35-45 dB at 128x192 and 256x384.
    assert min(values) > 30, values


def test_generation_is_deterministic_and_reused(tmp_path):
    arguments = dict(height=64, width=96, train_scenes=1, val_scenes=0, test_scenes=1, bursts=1)
    first = generate_synthetic_sid(tmp_path / "first", seed=3, **arguments)
    second = generate_synthetic_sid(tmp_path / "second", seed=3, **arguments)
    other = generate_synthetic_sid(tmp_path / "other", seed=4, **arguments)
    names = sorted(path.relative_to(first).as_posix() for path in first.rglob("*.dng"))
    assert names and names == sorted(path.relative_to(second).as_posix() for path in second.rglob("*.dng"))
    for name in names:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name
    shorts = [name for name in names if "/short/" in name]
    assert any((first / name).read_bytes() != (other / name).read_bytes() for name in shorts)

    probe = first / names[0]
    stamp = probe.stat().st_mtime_ns
    generate_synthetic_sid(first, seed=3, **arguments)
    assert probe.stat().st_mtime_ns == stamp, "a complete set with the same parameters must be reused"

    (first / MANIFEST_NAME).unlink()  # as if generation had been interrupted
    generate_synthetic_sid(first, seed=3, **arguments)
    assert probe.stat().st_mtime_ns != stamp and (first / MANIFEST_NAME).is_file()

    generate_synthetic_sid(first, seed=3, **{**arguments, "bursts": 2})
    assert len(list(first.rglob("*_01_*.dng"))) > 0


def test_generator_rejects_sizes_not_multiple_of_32(tmp_path):
    with pytest.raises(ValueError, match="height"):
        generate_synthetic_sid(tmp_path, height=100, width=96)


def test_synthetic_test_split_covers_both_protocols(synthetic_sid_root):
    pairs = read_list(synthetic_sid_root / "Sony_test_list.txt", synthetic_sid_root)
    assert {pair.ratio for pair in select_pairs(pairs, "sid", False)} == {100.0, 250.0, 300.0}
    assert {pair.ratio for pair in select_pairs(pairs, "dble", False)} == {100.0, 300.0}
    assert any(pair.burst > 0 for pair in pairs)


# --- loader values --------------------------------------------------------------------------------


def test_loader_shapes_ratios_and_normalisation(synthetic_sid_root, synthetic_sid_cache_dir):
    pairs = prepare_split(synthetic_sid_root, "test", "all", True, synthetic_sid_cache_dir, workers=0)
    cache = RawCache(synthetic_sid_cache_dir)
    assert {pair.ratio for pair in pairs} == {100.0, 250.0, 300.0}
    height, width = frame_size(synthetic_sid_root)
    mosaic_items = SIDEvalDataset(pairs, cache, "mosaic")
    packed_items = SIDEvalDataset(pairs, cache, "packed")
    for index, pair in enumerate(pairs):
        item = mosaic_items[index]
        packed = packed_items[index]["input"]
        assert item["input"].shape == (1, height, width) and item["input"].dtype == torch.float32
        assert packed.shape == (4, height // 2, width // 2)
        assert item["rgb"].shape == (3, height, width) and item["mono"].shape == (1, height, width)
        assert item["ratio"].item() == pytest.approx(pair.ratio) and item["short_path"] == str(pair.short_path)

        # The black level comes from the file and is subtracted before scaling by the ratio.
        with rawpy.imread(str(pair.short_path)) as raw:
            black = float(np.mean(raw.black_level_per_channel))
            white = float(raw.white_level)
            expected = np.maximum((raw.raw_image_visible.astype(np.float64) - black) / (white - black), 0) * pair.ratio
        np.testing.assert_allclose(item["input"][0].numpy(), expected, rtol=1e-5, atol=1e-5)

        mosaic = item["input"][0]
        np.testing.assert_array_equal(packed[0], mosaic[0::2, 0::2])
        np.testing.assert_array_equal(packed[1], mosaic[0::2, 1::2])
        np.testing.assert_array_equal(packed[2], mosaic[1::2, 1::2])
        np.testing.assert_array_equal(packed[3], mosaic[1::2, 0::2])

        # Amplified short exposure ~ long exposure (clamping noise at 0 biases dark frames up a little).
        long_raw, long_info = cache.mosaic(pair.long_path)
        long_mean = normalise_mosaic(long_raw, long_info, 1.0).mean()
        physical_ratio = pair.gt_exposure / pair.input_exposure
        assert mosaic.mean().item() * physical_ratio / pair.ratio == pytest.approx(long_mean, rel=0.08)

        rgb = item["rgb"].numpy()
        np.testing.assert_array_equal(rgb, np.asarray(cache.rgb(pair.long_path), np.float32).transpose(2, 0, 1) / 65535)
        luma = 0.2989 * rgb[0] + 0.5870 * rgb[1] + 0.1140 * rgb[2]
        np.testing.assert_allclose(item["mono"][0].numpy(), luma, atol=1e-6)


def test_naive_baseline_is_the_amplified_short_exposure(synthetic_sid_root, synthetic_sid_cache_dir):
    pair = select_pairs(read_list(synthetic_sid_root / "Sony_test_list.txt", synthetic_sid_root), "dble", False)[0]
    baseline = develop_short_exposure_baseline(pair.short_path, pair.ratio)
    target = np.asarray(RawCache(synthetic_sid_cache_dir).rgb(pair.long_path), np.float32) / 65535
    assert baseline.dtype == np.float32 and baseline.shape == target.shape
    assert 0.0 <= baseline.min() and baseline.max() <= 1.0
    assert baseline.mean() == pytest.approx(target.mean(), rel=0.15)
    assert 10 < psnr(baseline, target) < 40


# --- Bayer phase under flips and transposes ------------------------------------------------------

# Raw value ranges per CFA colour, disjoint so any site's colour can be read off its value.
R_RANGE, G_RANGE, B_RANGE = (9000, 16000), (1000, 5000), (5500, 8500)
PHASE_RATIO = 100.0


def _distinctive_mosaic(height: int, width: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mosaic = rng.integers(*G_RANGE, size=(height, width))
    mosaic[0::2, 0::2] = rng.integers(*R_RANGE, size=mosaic[0::2, 0::2].shape)
    mosaic[1::2, 1::2] = rng.integers(*B_RANGE, size=mosaic[1::2, 1::2].shape)
    return mosaic.astype(np.uint16)


@pytest.fixture
def phase_pairs(tmp_path):
    """One pair of real DNGs (0.1 s / 10 s, ratio 100) of a 70x100 distinctive mosaic."""
    mosaic = _distinctive_mosaic(70, 100, seed=1)
    common = dict(white_balance_gains=(2.0, 1.0, 1.5), iso=800, f_number=8.0)
    write_dng(tmp_path / "Sony/short/00001_00_0.1s.dng", mosaic, exposure_time=0.1, **common)
    write_dng(tmp_path / "Sony/long/00001_00_10s.dng", mosaic, exposure_time=10.0, **common)
    list_file = tmp_path / "Sony_train_list.txt"
    list_file.write_text("./Sony/short/00001_00_0.1s.dng ./Sony/long/00001_00_10s.dng ISO800 F8\n")
    return read_list(list_file, tmp_path), RawCache(tmp_path / "cache")


def _site_colour(value: float) -> str:
    raw = value / PHASE_RATIO * (WHITE_LEVEL - BLACK_LEVEL) + BLACK_LEVEL
    for colour, (low, high) in (("R", R_RANGE), ("G", G_RANGE), ("B", B_RANGE)):
        if low - 1 <= raw <= high + 1:
            return colour
    raise AssertionError(f"value {value} is no CFA colour")


def _geometric(array: np.ndarray, flip_vertical: bool, flip_horizontal: bool, transpose: bool) -> np.ndarray:
    if flip_vertical:
        array = array[::-1]
    if flip_horizontal:
        array = array[:, ::-1]
    if transpose:
        array = np.swapaxes(array, 0, 1)
    return array


def _locate(item: dict, full_input: np.ndarray, full_rgb: np.ndarray) -> list[tuple]:
    """Every (operation, row, column) at which the item's input is a window of the operated frame,
    checking that the RGB target is the same window of the same operated ground truth."""
    patch = item["input"][0].numpy()
    size = patch.shape[0]
    found = []
    for operation in itertools.product((False, True), repeat=3):
        frame = _geometric(full_input, *operation)
        windows = np.lib.stride_tricks.sliding_window_view(frame, (size, size))
        for row, column in zip(*np.nonzero(np.all(windows == patch, axis=(2, 3)))):
            rgb_window = _geometric(full_rgb, *operation)[row : row + size, column : column + size]
            np.testing.assert_array_equal(item["rgb"].numpy(), rgb_window.transpose(2, 0, 1).astype(np.float32) / 65535)
            found.append((operation, row, column))
    return found


def _assert_rggb_at_origin(patch: np.ndarray) -> None:
    assert [_site_colour(patch[0, 0]), _site_colour(patch[0, 1]), _site_colour(patch[1, 0]), _site_colour(patch[1, 1])] == [
        "R",
        "G",
        "G",
        "B",
    ]
    # ...and across the whole patch, not only its first 2x2 block.
    assert all(_site_colour(value) == "R" for value in patch[0::2, 0::2].ravel()[:50])
    assert all(_site_colour(value) == "B" for value in patch[1::2, 1::2].ravel()[:50])


def test_every_flip_and_transpose_keeps_rggb_and_moves_targets_alike(phase_pairs):
    pairs, cache = phase_pairs
    dataset = SIDTrainDataset(pairs, cache, patch_size=32, input_kind="mosaic", flip=True, transpose=True)
    raw, info = cache.mosaic(pairs[0].short_path)
    full_input = normalise_mosaic(raw, info, PHASE_RATIO)
    full_rgb = np.asarray(cache.rgb(pairs[0].long_path))
    for flip_vertical, flip_horizontal, transpose in itertools.product((False, True), repeat=3):
        for top, left in ((0, 0), (20, 46), (36, 66)):
            top += flip_vertical
            left += flip_horizontal
            item = dataset.sample(0, top, left, flip_vertical, flip_horizontal, transpose)
            _assert_rggb_at_origin(item["input"][0].numpy())
            assert ((flip_vertical, flip_horizontal, transpose) in [found[0] for found in _locate(item, full_input, full_rgb)])

    with pytest.raises(ValueError, match="odd"):
        dataset.sample(0, 2, 0, True, False, False)


def test_random_patches_keep_rggb_and_are_reproducible(phase_pairs):
    pairs, cache = phase_pairs
    dataset = SIDTrainDataset(pairs, cache, patch_size=32, input_kind="mosaic", flip=True, transpose=True)
    raw, info = cache.mosaic(pairs[0].short_path)
    full_input = normalise_mosaic(raw, info, PHASE_RATIO)
    full_rgb = np.asarray(cache.rgb(pairs[0].long_path))
    items = []
    for epoch in range(24):
        dataset.set_epoch(epoch)
        items.append(dataset[0])
    operations = set()
    for item in items:
        _assert_rggb_at_origin(item["input"][0].numpy())
        found = _locate(item, full_input, full_rgb)
        assert found, "patch is not a window of any flipped/transposed frame"
        operations.update(operation for operation, _, _ in found)
    assert len(operations) >= 6, operations  # flips and transposes do happen

    # The patch is a function of (seed, epoch, index) alone: global RNG state does not matter.
    again = []
    for epoch in range(24):
        torch.manual_seed(epoch * 7)
        dataset.set_epoch(epoch)
        again.append(dataset[0])
    assert all(torch.equal(first["input"], second["input"]) for first, second in zip(items, again))
    other_seed = SIDTrainDataset(pairs, cache, patch_size=32, input_kind="mosaic", transpose=True, seed=1)
    other = []
    for epoch in range(24):
        other_seed.set_epoch(epoch)
        other.append(other_seed[0])
    assert not all(torch.equal(first["input"], second["input"]) for first, second in zip(items, other))


def test_packed_patches_and_eval_crop(phase_pairs):
    pairs, cache = phase_pairs
    packed = SIDTrainDataset(pairs, cache, patch_size=32, input_kind="packed").sample(0, 1, 1, True, True, False)
    assert packed["input"].shape == (4, 16, 16)
    # SID pack_raw order: R, G, B, G.
    assert [_site_colour(packed["input"][channel, 0, 0].item()) for channel in range(4)] == ["R", "G", "B", "G"]
    item = SIDEvalDataset(pairs, cache, "mosaic")[0]
    assert item["input"].shape == (1, 64, 96) and item["rgb"].shape == (3, 64, 96)  # 70x100 cut to multiples of 32


def test_shifted_cfa_patterns_are_cropped_to_rggb(tmp_path):
    mosaic = _distinctive_mosaic(70, 100, seed=2)
    cache = RawCache(tmp_path / "cache")
    common = dict(white_balance_gains=(2.0, 1.0, 1.5), exposure_time=10.0, iso=800, f_number=8.0)
    for pattern, rows, columns in (("GRBG", 0, 1), ("GBRG", 1, 0), ("BGGR", 1, 1)):
        shifted = mosaic[rows : rows + 68, columns : columns + 98]
        path = write_dng(tmp_path / f"{pattern}.dng", np.ascontiguousarray(shifted), pattern=pattern, **common)
        cached, info = cache.mosaic(path)
        assert info.pattern == "RGGB" and info.source_pattern == pattern and info.origin_offset == (rows, columns)
        height, width = (68 - rows) // 2 * 2, (98 - columns) // 2 * 2
        np.testing.assert_array_equal(cached, mosaic[2 * rows : 2 * rows + height, 2 * columns : 2 * columns + width])
        assert cache.rgb(path).shape == (height, width, 3)


def test_datasets_pickle_and_work_in_dataloader_workers(synthetic_sid_root, synthetic_sid_cache_dir):
    pairs = read_list(synthetic_sid_root / "Sony_train_list.txt", synthetic_sid_root)
    dataset = SIDTrainDataset(pairs, RawCache(synthetic_sid_cache_dir), patch_size=64, input_kind="packed")
    assert len(pickle.dumps(dataset)) < 100_000

    def epoch():
        torch.manual_seed(7)
        loader = torch.utils.data.DataLoader(dataset, batch_size=4, shuffle=True, num_workers=2)
        return [batch for batch in loader]

    first, second = epoch(), epoch()
    assert sum(len(batch["name"]) for batch in first) == len(pairs)
    assert first[0]["input"].shape == (4, 4, 32, 32) and first[0]["rgb"].shape == (4, 3, 64, 64)
    assert first[0]["ratio"].shape == (4,)
    assert all(
        torch.equal(one["input"], other["input"]) and one["name"] == other["name"] for one, other in zip(first, second)
    )


# --- list files and protocols ------------------------------------------------------------------


def test_protocol_counts_on_the_official_test_list(sid_lists_dir):
    pairs = read_list(sid_lists_dir / "Sony_test_list.txt", "/data/SID")
    assert len(pairs) == 598
    counts = {
        protocol: Counter(pair.ratio for pair in select_pairs(pairs, protocol, exclude_misaligned=False))
        for protocol in ("sid", "dble")
    }
    assert counts["sid"] == {100.0: 29, 250.0: 29, 300.0: 35}
    assert counts["dble"] == {100.0: 29, 300.0: 21}
    assert len(select_pairs(pairs, "sid", exclude_misaligned=True)) == 88
    assert len(select_pairs(pairs, "dble", exclude_misaligned=True)) == 47
    assert not {10034, 10045, 10172} & {pair.scene for pair in select_pairs(pairs, "all", True)}
    assert pairs[0].short_path == Path("/data/SID/Sony/short/10003_00_0.04s.ARW")
    assert (pairs[0].scene, pairs[0].burst, pairs[0].iso, pairs[0].aperture) == (10003, 0, "ISO200", "F9")
    assert len(read_list(sid_lists_dir / "Sony_train_list.txt", "/data/SID")) == 1865


def test_unknown_protocol_lists_the_choices():
    with pytest.raises(ValueError, match="all, sid, dble"):
        select_pairs([], "paper", False)


def test_malformed_and_missing_list_files(tmp_path):
    list_file = tmp_path / "Sony_test_list.txt"
    list_file.write_text(
        "./Sony/short/10003_00_0.1s.ARW ./Sony/long/10003_00_10s.ARW ISO200 F9\n"
        "./Sony/short/10003_00_0.1s.ARW ./Sony/long/10003_00_10s.ARW\n"
    )
    with pytest.raises(ValueError, match=r"Sony_test_list\.txt:2"):
        read_list(list_file, tmp_path)
    list_file.write_text("./Sony/short/10003_00_fast.ARW ./Sony/long/10003_00_10s.ARW ISO200 F9\n")
    with pytest.raises(ValueError, match=r"Sony_test_list\.txt:1"):
        read_list(list_file, tmp_path)
    with pytest.raises(FileNotFoundError, match="missing_list.txt"):
        read_list(tmp_path / "missing_list.txt", tmp_path)


# --- the cache ---------------------------------------------------------------------------------


def test_second_build_decodes_nothing(synthetic_sid_root, synthetic_sid_cache_dir):
    pairs = all_pairs(synthetic_sid_root)
    cache = RawCache(synthetic_sid_cache_dir)
    stamps = {path: path.stat().st_mtime_ns for path in synthetic_sid_cache_dir.iterdir()}
    assert all(cache.is_cached(pair.short_path, "mosaic") and cache.is_cached(pair.long_path, "rgb") for pair in pairs)
    assert cache.build([pair.short_path for pair in pairs], [pair.long_path for pair in pairs], workers=2) == 0
    assert stamps == {path: path.stat().st_mtime_ns for path in synthetic_sid_cache_dir.iterdir()}


def test_edited_raw_file_is_decoded_again(tmp_path, synthetic_sid_root):
    source = sorted((synthetic_sid_root / "Sony" / "short").glob("*.dng"))[0]
    copy = tmp_path / source.name
    copy.write_bytes(source.read_bytes())
    cache = RawCache(tmp_path / "cache")
    assert cache.build([copy], [], workers=0) == 1
    assert cache.build([copy], [], workers=0) == 0
    copy.write_bytes(source.read_bytes() + b"\0" * 4)  # new size and mtime: a new key
    assert cache.build([copy], [], workers=0) == 1


@pytest.mark.parametrize("workers", [0, 2])
def test_corrupt_raw_file_names_the_file_and_leaves_no_entry(tmp_path, synthetic_sid_root, workers):
    corrupt = tmp_path / "Sony" / "short" / "00009_00_0.1s.dng"
    corrupt.parent.mkdir(parents=True)
    corrupt.write_bytes(b"II*\0" + bytes(range(256)) * 40)
    good = sorted((synthetic_sid_root / "Sony" / "long").glob("*.dng"))[0]
    cache_dir = tmp_path / "cache"
    with pytest.raises(ValueError, match=str(corrupt)) as error:
        RawCache(cache_dir).build([corrupt], [good] if workers else [], workers=workers)
    assert "\n" not in str(error.value)
    assert not any(path.name.startswith(RawCache(cache_dir).key(corrupt)) for path in cache_dir.iterdir())
    assert not list(cache_dir.glob("*.tmp")) and not list(cache_dir.glob(".*"))


def test_missing_raw_file_names_the_file(tmp_path):
    missing = tmp_path / "Sony" / "short" / "00009_00_0.1s.ARW"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        RawCache(tmp_path / "cache").build([missing], [], workers=0)
