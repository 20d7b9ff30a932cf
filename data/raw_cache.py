"""Decode every raw file once and keep the result on disk as memory-mappable .npy files.

Decoding a Sony ARW (and running LibRaw's demosaic for the ground truth) costs far more than a
training step, and SID's own code keeps every decoded frame in RAM (>= 64 GB). Here each file is
decoded once into a cache folder; training then reads crops straight from memory maps, so RAM use
does not grow with the number of pairs.

Entry layout, keyed by a hash of (absolute path, mtime, size) so an edited file is decoded again:
    <key>.mosaic.npy   uint16 HxW visible mosaic, cropped to start at an R site (see below)
    <key>.mosaic.json  black/white level, CFA pattern, source path
    <key>.rgb.npy      uint16 HxWx3 ground truth from postprocess(), cropped the same way
    <key>.rgb.json     source path and shape
    <key>.mono.npy     uint16 HxW monochrome ground truth (MCR's Mono_GT), same crop as the mosaic
Each .npy is written under a temporary name and renamed into place, and its .json is renamed in
only after that, so the .json marks a complete entry and a crash never leaves a half entry.

RGGB origin: the models (and SID's pack_raw) assume an R site at (0, 0). A file whose CFA pattern
is shifted (GRBG, GBRG, BGGR) has its first column and/or row dropped; the ground truth is cropped
by the same offset, and both are cut to even sizes, so mosaic and RGB stay aligned 1:1.

8-bit image files (MCR's TIFF mosaics, JPEG/TIFF ground truths; IMAGE_SUFFIXES) are read as images,
not raws: a mosaic is taken as RGGB with black 0 and white 255 (MCR's convention: the authors divide
by 255 with no black level) and ground truths are widened to uint16 by x257, so that /65535 in the
loaders is exactly /255.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import json
import multiprocessing
import os
import sys
import tempfile
from pathlib import Path
from typing import Iterable

import numpy as np
from tqdm import tqdm

TARGET_PATTERN = "RGGB"


@dataclasses.dataclass(frozen=True)
class RawInfo:
    """Metadata of a cached mosaic.

    pattern is the CFA pattern of the cached mosaic at (0, 0), always 'RGGB';
    source_pattern and origin_offset (rows, columns dropped) describe the file itself.
    """

    black_level: float
    white_level: float
    pattern: str = TARGET_PATTERN
    source_pattern: str = TARGET_PATTERN
    origin_offset: tuple[int, int] = (0, 0)


# Fewer levels than 8 bits between black and white cannot be a real exposure (SID: 512..16383).
MIN_USABLE_LEVELS = 256


def ground_truth_postprocess(raw) -> np.ndarray:
    """SID's ground-truth development (data.md), uint16 HxWx3.

    user_flip=0 keeps the output in sensor orientation: a file with a rotation tag would
    otherwise come back rotated relative to raw_image_visible and break the 1:1 alignment.
    For unrotated files (all of SID Sony) this is identical to the plain call.
    """
    return raw.postprocess(
        use_camera_wb=True, half_size=False, no_auto_bright=True, output_bps=16, user_flip=0
    )


def cfa_pattern(raw, path: Path) -> str:
    """The 2x2 CFA pattern at the origin of raw_image_visible, e.g. 'RGGB'."""
    pattern = None if raw.raw_pattern is None else np.asarray(raw.raw_pattern)
    description = raw.color_desc.decode("ascii", errors="replace")
    if pattern is None or pattern.shape != (2, 2):
        sensor = ("an X-Trans sensor (6x6 colour filter pattern)" if pattern is not None and pattern.shape == (6, 6)
                  else "a sensor without a Bayer colour filter array (Foveon, or a demosaiced/linear DNG)"
                  if pattern is None or pattern.ndim != 2 else f"a {pattern.shape[0]}x{pattern.shape[1]} colour filter pattern")
        raise ValueError(f"{path}: {sensor} is not supported: the networks take a 2x2 Bayer mosaic "
                         "(RGGB, BGGR, GRBG or GBRG)")
    letters = "".join(description[index] for index in pattern.ravel())
    if sorted(letters) != ["B", "G", "G", "R"]:
        raise ValueError(f"{path}: unsupported CFA pattern {letters!r} (need a Bayer R/G/G/B pattern)")
    return letters


def rggb_origin_offset(pattern: str, path: Path) -> tuple[int, int]:
    """(rows, columns) to drop so the pattern starts with R: RGGB (0,0), GRBG (0,1), GBRG (1,0), BGGR (1,1)."""
    for rows in (0, 1):
        for columns in (0, 1):
            shifted = "".join(pattern[((row + rows) % 2) * 2 + (column + columns) % 2] for row in (0, 1) for column in (0, 1))
            if shifted == TARGET_PATTERN:
                return rows, columns
    raise ValueError(f"{path}: CFA pattern {pattern!r} cannot be shifted to RGGB")


def _aligned_window(shape: tuple[int, ...], offset: tuple[int, int]) -> tuple[slice, slice]:
    rows, columns = offset
    height = (shape[0] - rows) // 2 * 2
    width = (shape[1] - columns) // 2 * 2
    return slice(rows, rows + height), slice(columns, columns + width)


def open_raw(path: Path):
    """rawpy.imread with a one-line error naming the file."""
    import rawpy

    if not path.is_file():
        raise FileNotFoundError(f"raw file not found: {path}")
    try:
        return rawpy.imread(str(path))
    except (rawpy.LibRawError, OSError) as error:
        raise ValueError(f"cannot decode raw file {path}: {one_line_error(error)}") from None


def one_line_error(error: BaseException) -> str:
    message = error.args[0] if len(error.args) == 1 else str(error)
    # rawpy passes LibRaw's message as bytes.
    if isinstance(message, bytes):
        message = message.decode(errors="replace")
    lines = str(message).strip().splitlines()
    return f"{type(error).__name__}: {lines[0] if lines else ''}".rstrip(": ")


IMAGE_SUFFIXES = frozenset({".tif", ".tiff", ".png", ".jpg", ".jpeg"})
# 255 * 257 = 65535: an 8-bit value v stored as v * 257 reads back as v / 255 after / 65535.
EIGHT_TO_SIXTEEN_BITS = 257


def is_image_file(path: str | os.PathLike) -> bool:
    """An 8-bit image (read with tifffile / Pillow), not a camera raw (read with rawpy)."""
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


def read_8bit_image(path: Path) -> np.ndarray:
    """uint8 HxW or HxWxC. tifffile for TIFF (MCR's mosaics are plain 8-bit TIFFs), Pillow otherwise."""
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile
            image = tifffile.imread(path)
        else:
            from PIL import Image
            with Image.open(path) as opened:
                image = np.asarray(opened)
    except Exception as error:  # noqa: BLE001 - any decoder failure is a bad file, said in one line
        raise ValueError(f"cannot read image file {path}: {one_line_error(error)}") from None
    if image.dtype != np.uint8:
        raise ValueError(f"{path}: expected an 8-bit image, got {image.dtype}")
    return image


def _decode_image_mosaic(path: Path) -> tuple[np.ndarray, dict]:
    image = read_8bit_image(path)
    if image.ndim != 2:
        raise ValueError(f"{path}: expected a one-channel 8-bit Bayer mosaic, got shape {image.shape}")
    rows, columns = _aligned_window(image.shape, (0, 0))
    mosaic = np.ascontiguousarray(image[rows, columns], dtype=np.uint16)
    return mosaic, {"source": str(path), "shape": list(mosaic.shape), "black_level": 0.0,
                    "black_level_per_channel": [0.0] * 4, "white_level": 255.0, "pattern": TARGET_PATTERN,
                    "source_pattern": TARGET_PATTERN, "origin_offset": [0, 0]}


def _decode_image_rgb(path: Path) -> tuple[np.ndarray, dict]:
    image = read_8bit_image(path)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"{path}: expected an 8-bit RGB ground truth, got shape {image.shape}")
    rows, columns = _aligned_window(image.shape, (0, 0))
    rgb = np.ascontiguousarray(image[rows, columns], dtype=np.uint16) * np.uint16(EIGHT_TO_SIXTEEN_BITS)
    return rgb, {"source": str(path), "shape": list(rgb.shape), "origin_offset": [0, 0]}


def _decode_mono(path: Path) -> tuple[np.ndarray, dict]:
    image = read_8bit_image(path)
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[..., 0]
    if image.ndim != 2:
        raise ValueError(f"{path}: expected a one-channel 8-bit monochrome ground truth, got shape {image.shape}")
    rows, columns = _aligned_window(image.shape, (0, 0))
    mono = np.ascontiguousarray(image[rows, columns], dtype=np.uint16) * np.uint16(EIGHT_TO_SIXTEEN_BITS)
    return mono, {"source": str(path), "shape": list(mono.shape), "origin_offset": [0, 0]}


def _decode_mosaic(path: Path) -> tuple[np.ndarray, dict]:
    import rawpy

    if is_image_file(path):
        return _decode_image_mosaic(path)
    with open_raw(path) as raw:
        try:
            pattern = cfa_pattern(raw, path)
            offset = rggb_origin_offset(pattern, path)
            visible = raw.raw_image_visible
            rows, columns = _aligned_window(visible.shape, offset)
            # A real copy: raw_image_visible views LibRaw's buffer, which is freed on close
            # (np.ascontiguousarray would return that very view for an uncropped frame).
            mosaic = np.array(visible[rows, columns], dtype=np.uint16, order="C", copy=True)
            _warn_if_constant(mosaic, path)
            black_levels = [float(value) for value in raw.black_level_per_channel]
            metadata = {
                "source": str(path),
                "shape": list(mosaic.shape),
                "black_level": float(np.mean(black_levels)),
                "black_level_per_channel": black_levels,
                "white_level": float(raw.white_level),
                "pattern": TARGET_PATTERN,
                "source_pattern": pattern,
                "origin_offset": list(offset),
            }
        except rawpy.LibRawError as error:
            raise ValueError(f"cannot decode raw file {path}: {one_line_error(error)}") from None
    usable = metadata["white_level"] - metadata["black_level"]
    if usable < MIN_USABLE_LEVELS:
        # Normalisation divides by this range: a handful of levels turns the input into a few bits of
        # noise that would train without any error (SID's raws have 15871).
        raise ValueError(f"{path}: black level {metadata['black_level']:g} and white level "
                         f"{metadata['white_level']:g} leave {usable:g} usable levels (at least "
                         f"{MIN_USABLE_LEVELS} needed); the file's level metadata is wrong")
    return mosaic, metadata


def _warn_if_constant(mosaic: np.ndarray, path: Path) -> None:
    """A blank input (lens cap, a damaged file) still trains and scores, so it is named once, when decoded.
    Printed, not warnings.warn: decoding runs in spawned workers that share only stderr."""
    if mosaic.size and mosaic.min() == mosaic.max():
        print(f"warning: {path}: every pixel of this raw is {int(mosaic.flat[0])} (a blank or damaged file); "
              "it is used as it is", file=sys.stderr, flush=True)


def _decode_rgb(path: Path) -> tuple[np.ndarray, dict]:
    import rawpy

    if is_image_file(path):
        return _decode_image_rgb(path)
    with open_raw(path) as raw:
        try:
            offset = rggb_origin_offset(cfa_pattern(raw, path), path)
            visible_shape = raw.raw_image_visible.shape
            low, high = int(raw.raw_image_visible.min()), int(raw.raw_image_visible.max())
            if low == high:  # a reference with nothing in it would be trained towards and scored against
                raise ValueError(f"{path}: every pixel of this ground-truth raw is {low} (a blank or damaged "
                                 "file); remove its pairs from the list file")
            rgb = ground_truth_postprocess(raw)
        except rawpy.LibRawError as error:
            raise ValueError(f"cannot decode raw file {path}: {one_line_error(error)}") from None
    if rgb.shape[:2] != visible_shape:
        raise ValueError(
            f"{path}: postprocess output {rgb.shape[:2]} differs from the visible mosaic {visible_shape}; "
            "ground truth would not be aligned with the raw input"
        )
    rows, columns = _aligned_window(rgb.shape, offset)
    rgb = np.ascontiguousarray(rgb[rows, columns], dtype=np.uint16)
    return rgb, {"source": str(path), "shape": list(rgb.shape), "origin_offset": list(offset)}


_DECODERS = {"mosaic": _decode_mosaic, "rgb": _decode_rgb, "mono": _decode_mono}


def _temporary_path(final: Path) -> Path:
    file_descriptor, name = tempfile.mkstemp(dir=final.parent, prefix=f".{final.name}.", suffix=".tmp")
    os.close(file_descriptor)
    return Path(name)


def _write_entry(array_path: Path, metadata_path: Path, array: np.ndarray, metadata: dict) -> None:
    temporaries = []
    try:
        array_temporary = _temporary_path(array_path)
        temporaries.append(array_temporary)
        with open(array_temporary, "wb") as handle:
            np.save(handle, array)
        metadata_temporary = _temporary_path(metadata_path)
        temporaries.append(metadata_temporary)
        metadata_temporary.write_text(json.dumps(metadata) + "\n")
        os.replace(array_temporary, array_path)
        os.replace(metadata_temporary, metadata_path)
    finally:
        for temporary in temporaries:
            temporary.unlink(missing_ok=True)


def _decode_into(cache_dir: str, kind: str, path: str) -> str:
    """Worker entry point: decodes one file and writes its cache entry (returns the path)."""
    cache = RawCache(cache_dir)
    source = Path(path)
    array_path, metadata_path = cache.entry_paths(source, kind)
    array, metadata = _DECODERS[kind](source)
    _write_entry(array_path, metadata_path, array, metadata)
    return path


class RawCache:
    """Decoded raw files on disk; holds only its folder, so it pickles cheaply into DataLoader workers."""

    def __init__(self, cache_dir: str | os.PathLike):
        self.cache_dir = Path(cache_dir).absolute()
        self.cache_dir.mkdir(parents=True, exist_ok=True)

    def __repr__(self) -> str:
        return f"RawCache({str(self.cache_dir)!r})"

    def key(self, path: str | os.PathLike) -> str:
        path = Path(path).absolute()
        try:
            status = path.stat()
        except FileNotFoundError:
            raise FileNotFoundError(f"raw file not found: {path}") from None
        identity = f"{path}\0{status.st_mtime_ns}\0{status.st_size}"
        return hashlib.sha256(identity.encode()).hexdigest()[:32]

    def entry_paths(self, path: str | os.PathLike, kind: str) -> tuple[Path, Path]:
        if kind not in _DECODERS:
            raise ValueError(f"unknown cache entry kind {kind!r}; choices: {', '.join(_DECODERS)}")
        stem = f"{self.key(path)}.{kind}"
        return self.cache_dir / f"{stem}.npy", self.cache_dir / f"{stem}.json"

    def is_cached(self, path: str | os.PathLike, kind: str) -> bool:
        array_path, metadata_path = self.entry_paths(path, kind)
        return metadata_path.is_file() and array_path.is_file()

    def _load(self, path: str | os.PathLike, kind: str) -> tuple[np.memmap, dict]:
        path = Path(path).absolute()
        array_path, metadata_path = self.entry_paths(path, kind)
        if not (metadata_path.is_file() and array_path.is_file()):
            _decode_into(str(self.cache_dir), kind, str(path))
        try:
            metadata = json.loads(metadata_path.read_text())
            array = np.load(array_path, mmap_mode="r")
        except (OSError, ValueError) as error:
            raise ValueError(f"cache entry {array_path} for {path} is unreadable ({one_line_error(error)}); delete it") from None
        return array, metadata

    def mosaic(self, path: str | os.PathLike) -> tuple[np.memmap, RawInfo]:
        """Visible mosaic (uint16 HxW, R at (0, 0)) of an input file, decoded now if not cached."""
        array, metadata = self._load(path, "mosaic")
        info = RawInfo(
            black_level=float(metadata["black_level"]),
            white_level=float(metadata["white_level"]),
            pattern=metadata["pattern"],
            source_pattern=metadata["source_pattern"],
            origin_offset=tuple(metadata["origin_offset"]),
        )
        return array, info

    def rgb(self, path: str | os.PathLike) -> np.memmap:
        """Ground-truth RGB (uint16 HxWx3) of a long-exposure file, decoded now if not cached."""
        return self._load(path, "rgb")[0]

    def mono(self, path: str | os.PathLike) -> np.memmap:
        """Monochrome ground truth (uint16 HxW) of an 8-bit grey image, decoded now if not cached."""
        return self._load(path, "mono")[0]

    def build(
        self,
        input_paths: Iterable[str | os.PathLike],
        gt_paths: Iterable[str | os.PathLike],
        workers: int = 2,
        mono_paths: Iterable[str | os.PathLike] = (),
    ) -> int:
        """Decodes every file not yet cached (inputs as mosaics, ground truths as RGB, mono_paths as
        monochrome ground truths) and returns how many were decoded. workers=0 decodes in this process."""
        jobs = []
        seen = set()
        for kind, paths in (("mosaic", input_paths), ("rgb", gt_paths), ("mono", mono_paths)):
            for path in paths:
                path = Path(path).absolute()
                if (kind, path) in seen:
                    continue
                seen.add((kind, path))
                if not self.is_cached(path, kind):
                    jobs.append((kind, str(path)))
        if not jobs:
            return 0

        progress = tqdm(total=len(jobs), desc="decoding raw files", unit="file")
        try:
            if workers <= 0:
                for kind, path in jobs:
                    _decode_into(str(self.cache_dir), kind, path)
                    progress.update()
            else:
                # Not fork: rawpy's LibRaw uses OpenMP, which can deadlock in a forked child.
                context = multiprocessing.get_context("spawn")
                executor = concurrent.futures.ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=context)
                with executor:
                    futures = [executor.submit(_decode_into, str(self.cache_dir), kind, path) for kind, path in jobs]
                    try:
                        for future in concurrent.futures.as_completed(futures):
                            future.result()
                            progress.update()
                    except BaseException:
                        # Stop queued work at the first failure; running decodes finish and
                        # their entries are complete (atomic writes), so nothing is lost.
                        executor.shutdown(wait=True, cancel_futures=True)
                        raise
        finally:
            progress.close()
        return len(jobs)
