"""SID (Sony) list files, evaluation protocols and the training / evaluation datasets.

Inputs follow the DBF/DBLE and SID recipe: (raw - black) / (white - black), clamped at 0, times
the exposure ratio, not clipped at 1 (`clip_input=True` clips at 1, as several published loaders do).
With `raw_target=True` a sample also holds "raw": the long exposure's mosaic normalised the same way
without the ratio, packed (4, H/2, W/2) as pack_raw, for networks with a denoised-raw output; the
long exposure's raw is then decoded into the cache on first use. Targets are the cached postprocess() RGB / 65535 and its
luma (0.2989 R + 0.5870 G + 0.1140 B). Datasets hold only pairs and a RawCache and read crops from
memory maps opened per item, so memory stays flat however many pairs are listed.

The two datasets here (SIDTrainDataset, SIDEvalDataset) serve every data set of data/datasets.py:
a pair needs short_path, long_path, name, ratio (the amplification), group (its column in per-ratio
tables) and mono_path (a real monochrome ground truth, as MCR has; None = the RGB's luma).
"""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from helpers.input_kinds import INPUT_KINDS
from helpers.text_input import read_text
from data.raw_cache import (
    RawCache,
    RawInfo,
    one_line_error,
    cfa_pattern,
    ground_truth_postprocess,
    open_raw,
    rggb_origin_offset,
)

MAXIMUM_RATIO = 300.0
# SID's authors advise leaving these test scenes out of metrics: input and ground truth differ.
MISALIGNED_SCENES = frozenset({10034, 10045, 10172})
PROTOCOLS = ("all", "sid", "dble")
LIST_ALIASES = {"train": "Sony_train_list.txt", "val": "Sony_val_list.txt", "test": "Sony_test_list.txt"}
LUMA_WEIGHTS = (0.2989, 0.5870, 0.1140)
# Models downsample four or five times (DBF/DBLE: 4 pools at full resolution; SID U-Net: packing
# plus 4 pools), so evaluation frames are cut to multiples of 32.
EVAL_MULTIPLE = 32

_NAME_PATTERN = re.compile(r"^(?P<scene>\d{5})_(?P<burst>\d{2})_(?P<exposure>\d+(?:\.\d+)?)s$")


@dataclasses.dataclass(frozen=True)
class SIDPair:
    short_path: Path
    long_path: Path
    name: str
    scene: int
    burst: int
    input_exposure: float
    gt_exposure: float
    ratio: float
    iso: str
    aperture: str

    @property
    def group(self) -> str:
        """The pair's column in per-ratio tables: x100, x250, x300."""
        return ratio_group(self.ratio)

    @property
    def mono_path(self) -> None:
        return None  # SID's mono target is the luma of the RGB ground truth


def ratio_group(ratio: float) -> str:
    """A ratio's table label: x100, x250, x300 on SID. A ratio from exposure times is rarely round
    (10 s / 0.033 s = 303.03), so it is rounded to a whole number (one decimal below 10)."""
    ratio = float(ratio)
    return f"x{round(ratio, 1) if ratio < 10 else round(ratio):g}"


def _parse_name(path_text: str) -> tuple[int, int, float] | None:
    match = _NAME_PATTERN.match(Path(path_text).stem)
    if match is None:
        return None
    return int(match["scene"]), int(match["burst"]), float(match["exposure"])


def resolve_list_file(root: str | os.PathLike, list_name: str | os.PathLike) -> Path:
    """'train' / 'val' / 'test' or a file name, relative to root unless absolute."""
    list_name = LIST_ALIASES.get(str(list_name), list_name)
    path = Path(list_name)
    return path if path.is_absolute() else Path(root).absolute() / path


def read_list(list_file: str | os.PathLike, root: str | os.PathLike) -> list[SIDPair]:
    """Parses a SID list file; lines are `./Sony/short/X.ARW ./Sony/long/Y.ARW ISO200 F9`."""
    list_file = Path(list_file)
    root = Path(root).absolute()
    try:
        lines = read_text(list_file, "SID list file").splitlines()
    except FileNotFoundError:
        raise FileNotFoundError(f"SID list file not found: {list_file}") from None
    pairs = []
    for line_number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        fields = line.split()
        where = f"{list_file}:{line_number}"
        if len(fields) != 4 or not fields[2].startswith("ISO") or not fields[3].startswith("F"):
            raise ValueError(f"{where}: expected 'short_path long_path ISO<n> F<n>', got {line.strip()!r}")
        short_text, long_text, iso, aperture = fields
        short_fields = _parse_name(short_text)
        long_fields = _parse_name(long_text)
        if short_fields is None or long_fields is None:
            raise ValueError(f"{where}: file names must look like 10003_00_0.1s.ARW, got {line.strip()!r}")
        scene, burst, input_exposure = short_fields
        long_scene, _, gt_exposure = long_fields
        if long_scene != scene:
            raise ValueError(f"{where}: short scene {scene:05d} and long scene {long_scene:05d} differ")
        if input_exposure <= 0 or gt_exposure <= 0:
            raise ValueError(f"{where}: exposure times must be positive, got {line.strip()!r}")
        pairs.append(
            SIDPair(
                short_path=root / short_text,
                long_path=root / long_text,
                name=Path(short_text).stem,
                scene=scene,
                burst=burst,
                input_exposure=input_exposure,
                gt_exposure=gt_exposure,
                ratio=min(gt_exposure / input_exposure, MAXIMUM_RATIO),
                iso=iso,
                aperture=aperture,
            )
        )
    return pairs


def select_pairs(pairs: Sequence[SIDPair], protocol: str, exclude_misaligned: bool) -> list[SIDPair]:
    """'all': every pair; 'sid': burst 00 of every exposure (SID paper, 93 test pairs);
    'dble': burst 00 of the 0.1 s inputs only (DBF/DBLE paper, 50 test pairs)."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; choices: {', '.join(PROTOCOLS)}")
    selected = []
    for pair in pairs:
        if exclude_misaligned and pair.scene in MISALIGNED_SCENES:
            continue
        if protocol in ("sid", "dble") and pair.burst != 0:
            continue
        if protocol == "dble" and not np.isclose(pair.input_exposure, 0.1):
            continue
        selected.append(pair)
    return selected


TRAIN_PROTOCOLS = ("all", "dble")
# The DBF/DBLE authors' training set (train_on_SID.py): burst 00, 0.1 s inputs, of the train and
# val scene lists together, at x100 and x300 only. 181 pairs on the official lists.
DBLE_TRAIN_RATIOS = (100.0, 300.0)


def select_training_pairs(train_pairs: Sequence[SIDPair], val_pairs: Sequence[SIDPair], protocol: str) -> list[SIDPair]:
    """'all': every pair of the train list (1,865 on SID); 'dble': the DBF/DBLE authors' 181 pairs,
    taken from the train and the val list (validation scenes are then seen in training, as theirs were)."""
    if protocol not in TRAIN_PROTOCOLS:
        raise ValueError(f"unknown train protocol {protocol!r}; choices: {', '.join(TRAIN_PROTOCOLS)}")
    if protocol == "all":
        return list(train_pairs)
    return [pair for pair in select_pairs([*train_pairs, *val_pairs], "dble", exclude_misaligned=False)
            if any(np.isclose(pair.ratio, ratio) for ratio in DBLE_TRAIN_RATIOS)]


def prepare_split(
    root: str | os.PathLike,
    list_name: str | os.PathLike,
    protocol: str,
    exclude_misaligned: bool,
    cache_dir: str | os.PathLike,
    workers: int,
    max_pairs: int | None = None,
) -> list[SIDPair]:
    """Reads a list ('train'/'val'/'test' or a file name under root), selects the protocol's
    pairs, truncates to max_pairs (debug runs) and decodes their files into the cache."""
    pairs = select_pairs(read_list(resolve_list_file(root, list_name), root), protocol, exclude_misaligned)
    if max_pairs is not None:
        pairs = pairs[:max_pairs]
    RawCache(cache_dir).build([pair.short_path for pair in pairs], [pair.long_path for pair in pairs], workers=workers)
    return pairs


def normalise_mosaic(raw: np.ndarray, info: RawInfo, ratio: float, clip: bool = False) -> np.ndarray:
    """(raw - black) / (white - black), clamped at 0, times the ratio; float32, clipped at 1 only
    with `clip`."""
    scaled = np.asarray(raw, dtype=np.float32) - np.float32(info.black_level)
    scaled *= np.float32(ratio / (info.white_level - info.black_level))
    np.maximum(scaled, 0.0, out=scaled)
    if clip:
        np.minimum(scaled, 1.0, out=scaled)
    return scaled


def pack_raw(mosaic: np.ndarray) -> np.ndarray:
    """SID's pack_raw channel order for an RGGB mosaic: R, G(0,1), B, G(1,0)."""
    return np.stack((mosaic[0::2, 0::2], mosaic[0::2, 1::2], mosaic[1::2, 1::2], mosaic[1::2, 0::2]))


def _sample(
    input_patch: np.ndarray, info: RawInfo, ratio: float, rgb_patch: np.ndarray, input_kind: str, name: str,
    long_patch=None, long_info=None, clip_input: bool = False, mono_patch: np.ndarray | None = None,
) -> dict:
    mosaic = normalise_mosaic(input_patch, info, ratio, clip_input)
    network_input = pack_raw(mosaic) if input_kind == "packed" else mosaic[None]
    rgb = np.ascontiguousarray(np.moveaxis(rgb_patch, 2, 0)).astype(np.float32)
    rgb /= np.float32(65535.0)
    if mono_patch is None:
        mono = LUMA_WEIGHTS[0] * rgb[0] + LUMA_WEIGHTS[1] * rgb[1] + LUMA_WEIGHTS[2] * rgb[2]
    else:
        mono = np.asarray(mono_patch, dtype=np.float32) / np.float32(65535.0)
    return {
        "input": torch.from_numpy(np.ascontiguousarray(network_input)),
        "rgb": torch.from_numpy(rgb),
        "mono": torch.from_numpy(np.ascontiguousarray(mono[None], dtype=np.float32)),
        "ratio": torch.tensor(ratio, dtype=torch.float32),
        "name": name,
        **({} if long_patch is None else
           {"raw": torch.from_numpy(np.ascontiguousarray(pack_raw(normalise_mosaic(long_patch, long_info, 1.0))))}),
    }


def _raw_sample(input_patch: np.ndarray, info: RawInfo, ratio: float, rgb_patch: np.ndarray, name: str,
                long_patch=None, long_info=None, mono_patch: np.ndarray | None = None) -> dict:
    """What a loader worker ships: the uint16 patches and the two numbers that normalise the input
    (a quarter of the bytes of the float sample); finish_batch does the arithmetic on the device."""
    long_entries = {} if long_patch is None else {
        "long_raw": torch.from_numpy(np.ascontiguousarray(long_patch, dtype=np.uint16)),
        "long_black": torch.tensor(np.float32(long_info.black_level)),
        "long_factor": torch.tensor(np.float32(1.0 / (long_info.white_level - long_info.black_level))),
    }
    mono_entries = {} if mono_patch is None else {
        "mono_raw": torch.from_numpy(np.ascontiguousarray(mono_patch, dtype=np.uint16))}
    return {
        **long_entries,
        **mono_entries,
        "input_raw": torch.from_numpy(np.ascontiguousarray(input_patch, dtype=np.uint16)),
        "rgb_raw": torch.from_numpy(np.ascontiguousarray(np.moveaxis(rgb_patch, 2, 0), dtype=np.uint16)),
        "black": torch.tensor(np.float32(info.black_level)),
        # The same float32 factor normalise_mosaic multiplies by.
        "factor": torch.tensor(np.float32(ratio / (info.white_level - info.black_level))),
        "ratio": torch.tensor(ratio, dtype=torch.float32),
        "name": name,
    }


def _pack_batch(mosaic: torch.Tensor) -> torch.Tensor:
    return torch.stack((mosaic[:, 0::2, 0::2], mosaic[:, 0::2, 1::2], mosaic[:, 1::2, 1::2], mosaic[:, 1::2, 0::2]), dim=1)


def finish_batch(batch: dict, input_kind: str, device=None, clip_input: bool = False) -> dict:
    """A collated batch of raw samples (see _raw_sample) as the float batch of `_sample`, computed on
    `device` with the same float32 operations in the same order, so it is bit-identical (tested)."""
    _check_input_kind(input_kind)
    device = torch.device(device) if device is not None else batch["input_raw"].device

    def moved(key):
        return batch[key].to(device, non_blocking=True)

    scaled = moved("input_raw").float() - moved("black").view(-1, 1, 1)
    scaled *= moved("factor").view(-1, 1, 1)
    mosaic = scaled.clamp_min_(0.0)
    if clip_input:
        mosaic = mosaic.clamp_max_(1.0)
    if input_kind == "packed":
        network_input = _pack_batch(mosaic)
    else:
        network_input = mosaic[:, None]
    # A device tensor as divisor: CUDA divides by a host scalar as a multiply by its reciprocal,
    # which is not always the quotient numpy computes.
    rgb = moved("rgb_raw").float() / torch.tensor(65535.0, device=device)
    if "mono_raw" in batch:
        mono = moved("mono_raw").float() / torch.tensor(65535.0, device=device)
    else:
        mono = LUMA_WEIGHTS[0] * rgb[:, 0] + LUMA_WEIGHTS[1] * rgb[:, 1] + LUMA_WEIGHTS[2] * rgb[:, 2]
    finished = {"input": network_input.contiguous(), "rgb": rgb, "mono": mono[:, None], "ratio": moved("ratio")}
    if "long_raw" in batch:
        long_scaled = moved("long_raw").float() - moved("long_black").view(-1, 1, 1)
        long_scaled *= moved("long_factor").view(-1, 1, 1)
        finished["raw"] = _pack_batch(long_scaled.clamp_min_(0.0)).contiguous()
    return {**finished, **{k: v for k, v in batch.items() if k not in finished and not torch.is_tensor(v)}}


def _check_input_kind(input_kind: str) -> None:
    if input_kind not in INPUT_KINDS:
        raise ValueError(f"unknown input_kind {input_kind!r}; choices: {', '.join(INPUT_KINDS)}")


def _open_pair(cache: RawCache, pair: SIDPair) -> tuple[np.memmap, RawInfo, np.memmap, np.memmap | None]:
    mosaic, info = cache.mosaic(pair.short_path)
    rgb = cache.rgb(pair.long_path)
    if mosaic.shape != rgb.shape[:2]:
        raise ValueError(
            f"{pair.short_path}: mosaic {mosaic.shape} and ground truth {pair.long_path} {rgb.shape[:2]} differ in size"
        )
    mono = None if pair.mono_path is None else cache.mono(pair.mono_path)
    if mono is not None and mono.shape != mosaic.shape:
        raise ValueError(
            f"{pair.short_path}: mosaic {mosaic.shape} and mono ground truth {pair.mono_path} {mono.shape} differ in size")
    return mosaic, info, rgb, mono


def _open_long_raw(cache: RawCache, pair: SIDPair, shape) -> tuple[np.memmap, RawInfo]:
    """The long exposure's mosaic (the raw target), decoded into the cache on first use."""
    mosaic, info = cache.mosaic(pair.long_path)
    if mosaic.shape != tuple(shape):
        raise ValueError(f"{pair.long_path}: long-exposure mosaic {mosaic.shape} and input {tuple(shape)} differ in size")
    return mosaic, info


class SIDTrainDataset(Dataset):
    """Random patch_size crops, one per pair per epoch, with Bayer-phase-preserving flips.

    A flip of an RGGB patch whose size is even puts a G site at the origin. Flipped axes therefore
    take their window at an odd offset: after the flip, the first row/column is the window's last
    one, which is even in the frame and so starts with R again. Transposing keeps R and B on the
    diagonal, so RGGB stays RGGB. The targets get exactly the same window and operations.

    Random numbers come from a generator seeded by (`seed`, epoch set by `set_epoch`, index), so a
    sample's patch does not depend on workers, ranks or the order samples are drawn in. An index may
    be an (epoch, index) pair, which overrides set_epoch: persistent workers keep their own copy of
    the dataset, so the epoch travels with the index. With `output_raw` set, samples are the uint16
    patches of _raw_sample (finish_batch completes them).
    """

    output_raw = False

    def __init__(
        self,
        pairs: Sequence[SIDPair],
        cache: RawCache,
        patch_size: int,
        input_kind: str,
        flip: bool = True,
        transpose: bool = False,
        seed: int = 0,
        raw_target: bool = False,
        clip_input: bool = False,
    ):
        _check_input_kind(input_kind)
        if patch_size <= 0 or patch_size % 2:
            raise ValueError(f"patch_size must be a positive even number, got {patch_size}")
        if input_kind == "packed" and patch_size % 4:
            raise ValueError(f"patch_size must be a multiple of 4 for packed input, got {patch_size}")
        self.pairs = list(pairs)
        self.cache = cache
        self.patch_size = patch_size
        self.input_kind = input_kind
        self.flip = flip
        self.transpose = transpose
        self.seed = seed
        self.epoch = 0
        self.raw_target = raw_target
        self.clip_input = clip_input

    def set_epoch(self, epoch: int) -> None:
        """Call before iterating an epoch (DataLoader workers get a fresh copy of the dataset)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.pairs)

    def sample(
        self, index: int, top: int, left: int, flip_vertical: bool, flip_horizontal: bool, transpose: bool
    ) -> dict:
        """The patch whose window in the frame starts at (top, left); an offset must be even on
        an unflipped axis and odd on a flipped one (see the class docstring)."""
        pair = self.pairs[index]
        mosaic, info, rgb, mono = _open_pair(self.cache, pair)
        return self._crop(pair, mosaic, info, rgb, top, left, flip_vertical, flip_horizontal, transpose, mono)

    def _crop(self, pair, mosaic, info, rgb, top, left, flip_vertical, flip_horizontal, transpose, mono=None) -> dict:
        size = self.patch_size
        height, width = mosaic.shape
        for label, offset, flipped, extent in (("top", top, flip_vertical, height), ("left", left, flip_horizontal, width)):
            if offset % 2 != int(flipped):
                parity = "odd" if flipped else "even"
                raise ValueError(f"{label}={offset} must be {parity} to keep the RGGB phase")
            if offset < 0 or offset + size > extent:
                raise ValueError(f"{pair.short_path}: {size}px patch at {label}={offset} exceeds frame {height}x{width}")
        input_patch = np.array(mosaic[top : top + size, left : left + size])
        rgb_patch = np.array(rgb[top : top + size, left : left + size])
        long_patch = long_info = None
        if self.raw_target:
            long_mosaic, long_info = _open_long_raw(self.cache, pair, mosaic.shape)
            long_patch = np.array(long_mosaic[top : top + size, left : left + size])
        # The mono target, when the data set has one, gets the same window and operations as the mosaic.
        mono_patch = None if mono is None else np.array(mono[top : top + size, left : left + size])
        if flip_vertical:
            input_patch, rgb_patch = input_patch[::-1], rgb_patch[::-1]
            long_patch = None if long_patch is None else long_patch[::-1]
            mono_patch = None if mono_patch is None else mono_patch[::-1]
        if flip_horizontal:
            input_patch, rgb_patch = input_patch[:, ::-1], rgb_patch[:, ::-1]
            long_patch = None if long_patch is None else long_patch[:, ::-1]
            mono_patch = None if mono_patch is None else mono_patch[:, ::-1]
        if transpose:
            input_patch, rgb_patch = input_patch.T, rgb_patch.transpose(1, 0, 2)
            long_patch = None if long_patch is None else long_patch.T
            mono_patch = None if mono_patch is None else mono_patch.T
        if self.output_raw:
            return _raw_sample(input_patch, info, pair.ratio, rgb_patch, pair.name, long_patch, long_info, mono_patch)
        return _sample(input_patch, info, pair.ratio, rgb_patch, self.input_kind, pair.name, long_patch, long_info,
                       self.clip_input, mono_patch)

    def __getitem__(self, index) -> dict:
        epoch, index = index if isinstance(index, tuple) else (self.epoch, index)
        pair = self.pairs[index]
        mosaic, info, rgb, mono = _open_pair(self.cache, pair)
        height, width = mosaic.shape
        size = self.patch_size
        if height < size or width < size:
            raise ValueError(f"{pair.short_path}: frame {height}x{width} is smaller than patch_size {size}")
        # The crop depends only on (seed, epoch, index): the same sample gets the same patch whatever
        # the number of DataLoader workers or DDP ranks, and a resumed run replays the same epoch.
        generator = torch.Generator().manual_seed(
            (self.seed * 0x9E3779B97F4A7C15 + epoch * 0x85EBCA6B + index * 0xC2B2AE35) % 2**63)

        def coin() -> bool:
            return bool(torch.rand((), generator=generator).item() < 0.5)

        # An odd window needs one spare row/column, so an axis exactly patch_size long is not flipped.
        flip_vertical = self.flip and coin() and height > size
        flip_horizontal = self.flip and coin() and width > size
        transpose = self.transpose and coin()

        def offset(extent: int, flipped: bool) -> int:
            first = 1 if flipped else 0
            choices = (extent - size - first) // 2 + 1
            return first + 2 * int(torch.randint(0, choices, (), generator=generator).item())

        top, left = offset(height, flip_vertical), offset(width, flip_horizontal)
        return self._crop(pair, mosaic, info, rgb, top, left, flip_vertical, flip_horizontal, transpose, mono)


class SIDEvalDataset(Dataset):
    """Full frames, cut from the top-left to multiples of 32."""

    def __init__(self, pairs: Sequence[SIDPair], cache: RawCache, input_kind: str, raw_target: bool = False,
                 clip_input: bool = False):
        _check_input_kind(input_kind)
        self.pairs = list(pairs)
        self.cache = cache
        self.input_kind = input_kind
        self.raw_target = raw_target
        self.clip_input = clip_input

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict:
        pair = self.pairs[index]
        mosaic, info, rgb, mono = _open_pair(self.cache, pair)
        height = mosaic.shape[0] // EVAL_MULTIPLE * EVAL_MULTIPLE
        width = mosaic.shape[1] // EVAL_MULTIPLE * EVAL_MULTIPLE
        if height == 0 or width == 0:
            raise ValueError(f"{pair.short_path}: frame {mosaic.shape} is smaller than {EVAL_MULTIPLE}x{EVAL_MULTIPLE}")
        long_patch = long_info = None
        if self.raw_target:
            long_mosaic, long_info = _open_long_raw(self.cache, pair, mosaic.shape)
            long_patch = long_mosaic[:height, :width]
        sample = _sample(mosaic[:height, :width], info, pair.ratio, rgb[:height, :width], self.input_kind, pair.name,
                         long_patch, long_info, self.clip_input, None if mono is None else mono[:height, :width])
        sample["short_path"] = str(pair.short_path)
        sample["group"] = pair.group
        return sample


def develop_short_exposure_baseline(short_path: str | os.PathLike, ratio: float) -> np.ndarray:
    """The naive baseline: the short exposure amplified by the ratio in raw space (clipped to the
    white level) and developed exactly like the ground truth. float32 HxWx3 in [0, 1], in the
    cache's coordinates (RGGB-origin crop applied); cut [:H, :W] to match evaluation frames."""
    import rawpy

    short_path = Path(short_path).absolute()
    with open_raw(short_path) as raw:
        try:
            offset = rggb_origin_offset(cfa_pattern(raw, short_path), short_path)
            visible = raw.raw_image_visible
            black = np.asarray(raw.black_level_per_channel, dtype=np.float32)[raw.raw_colors_visible]
            amplified = black + (visible.astype(np.float32) - black) * np.float32(ratio)
            # Written back in place: postprocess() develops LibRaw's own buffer, which this views.
            visible[:] = np.clip(amplified, 0, raw.white_level).astype(np.uint16)
            del amplified, black
            rgb = ground_truth_postprocess(raw)
        except rawpy.LibRawError as error:
            raise ValueError(f"cannot develop raw file {short_path}: {one_line_error(error)}") from None
    rows = slice(offset[0], offset[0] + (rgb.shape[0] - offset[0]) // 2 * 2)
    columns = slice(offset[1], offset[1] + (rgb.shape[1] - offset[1]) // 2 * 2)
    return rgb[rows, columns].astype(np.float32) / np.float32(65535.0)


def read_split(root: str | os.PathLike, list_name: str | os.PathLike) -> list[SIDPair]:
    """Every pair of a list ('train' / 'val' / 'test' or a file name under root)."""
    return read_list(resolve_list_file(root, list_name), root)


def cameras(pairs: Sequence) -> list[str]:
    """The cameras (make and model) the pairs' inputs come from, as checkpoints record them."""
    from data.raw_metadata import camera_name

    return sorted({name for path in dict.fromkeys(pair.short_path for pair in pairs) if (name := camera_name(path))})


def baseline_image(pair) -> np.ndarray:
    """The naive baseline of a pair (float32 HxWx3 in [0, 1], cache coordinates)."""
    return develop_short_exposure_baseline(pair.short_path, pair.ratio)


def check_pair_sizes(pairs: Sequence, cache: RawCache) -> None:
    """Every pair's input and ground truths (decoded in the cache) have the same size: a mismatch stops
    before training, in one line naming the files, rather than at the first batch that draws it."""
    for pair in pairs:
        _open_pair(cache, pair)
