"""Short/long raw pairs from the user's own camera, listed in a CSV file.

A CSV line is `short_raw,long_raw[,ratio]`: paths relative to the CSV file's folder (or absolute);
blank lines and lines starting with # are skipped, as is a first line naming the columns (`short,long,
ratio`). Without a ratio, it is long exposure time / short exposure time from the files' metadata
(LibRaw's, data/raw_metadata.py); a file that records none needs the ratio in the CSV.

Each file is decoded like SID's (data/raw_cache.py): black and white levels from the file's metadata;
any 2x2 Bayer pattern is brought to the networks' RGGB phase by dropping the first row and/or column
(GRBG: one column, GBRG: one row, BGGR: both), the ground truth developed by rawpy exactly as SID's
and cropped the same way; X-Trans and Foveon sensors are refused in one line.
"""
from __future__ import annotations

import csv
import dataclasses
import os
from pathlib import Path
from typing import Optional, Sequence

from data.raw_cache import RawCache
from data.raw_metadata import camera_name, exposure_time
from data.sid import check_pair_sizes, ratio_group

PROTOCOLS = ("all",)
LIST_ALIASES = {"train": "train.csv", "val": "val.csv", "test": "test.csv"}
_HEADER_WORDS = {"short", "short_raw", "input", "short_path"}


@dataclasses.dataclass(frozen=True)
class RawPair:
    short_path: Path
    long_path: Path
    name: str
    ratio: float
    line: int

    @property
    def group(self) -> str:
        return ratio_group(self.ratio)

    @property
    def mono_path(self) -> None:
        return None  # the mono target is the luma of the developed long exposure, as for SID


def resolve_list_file(root: str | os.PathLike, list_name: str | os.PathLike) -> Path:
    list_name = LIST_ALIASES.get(str(list_name), list_name)
    path = Path(list_name)
    return path if path.is_absolute() else Path(root).absolute() / path


def _ratio_from_exposures(short_path: Path, long_path: Path, where: str) -> float:
    short_exposure, long_exposure = exposure_time(short_path), exposure_time(long_path)
    for path, seconds in ((short_path, short_exposure), (long_path, long_exposure)):
        if seconds is None:
            raise ValueError(f"{where}: {path.name} records no exposure time; give the ratio as a third column")
    return long_exposure / short_exposure


def read_list(list_file: str | os.PathLike, root: Optional[str | os.PathLike] = None) -> list[RawPair]:
    list_file = Path(list_file).absolute()
    if not list_file.is_file():
        raise FileNotFoundError(f"pairs list not found: {list_file}")
    base = list_file.parent
    pairs = []
    with open(list_file, newline="") as handle:
        for line_number, fields in enumerate(csv.reader(handle), start=1):
            fields = [field.strip() for field in fields]
            if not any(fields) or fields[0].startswith("#"):
                continue
            if not pairs and fields[0].lower() in _HEADER_WORDS:
                continue
            where = f"{list_file}:{line_number}"
            if len(fields) not in (2, 3) or not fields[0] or not fields[1]:
                raise ValueError(f"{where}: expected 'short_raw,long_raw[,ratio]', got {','.join(fields)!r}")
            short_path, long_path = ((base / text) if not Path(text).is_absolute() else Path(text)
                                     for text in fields[:2])
            for label, path in (("short raw", short_path), ("long raw", long_path)):
                if not path.is_file():
                    raise FileNotFoundError(f"{where}: {label} not found: {path}")
            if len(fields) == 3 and fields[2]:
                try:
                    ratio = float(fields[2])
                except ValueError:
                    raise ValueError(f"{where}: ratio {fields[2]!r} is not a number") from None
            else:
                ratio = _ratio_from_exposures(short_path, long_path, where)
            if not ratio > 0:
                raise ValueError(f"{where}: the ratio must be positive, got {ratio:g}")
            pairs.append(RawPair(short_path=short_path, long_path=long_path, name=short_path.stem, ratio=ratio,
                                 line=line_number))
    return pairs


def read_split(root: str | os.PathLike, list_name: str | os.PathLike) -> list[RawPair]:
    return read_list(resolve_list_file(root, list_name), root)


def select_pairs(pairs: Sequence[RawPair], protocol: str, exclude_misaligned: bool = False) -> list[RawPair]:
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown pairs protocol {protocol!r}; choices: {', '.join(PROTOCOLS)}")
    return list(pairs)


def prepare_split(root, list_name, protocol, exclude_misaligned, cache_dir, workers, max_pairs=None) -> list[RawPair]:
    pairs = select_pairs(read_split(root, list_name), protocol)[:max_pairs]
    RawCache(cache_dir).build([p.short_path for p in pairs], [p.long_path for p in pairs], workers=workers)
    check_pair_sizes(pairs, RawCache(cache_dir))
    return pairs


def cameras(pairs: Sequence[RawPair]) -> list[str]:
    """The cameras (make and model) the pairs' inputs come from, as checkpoints record them."""
    return sorted({name for pair in pairs if (name := camera_name(pair.short_path))})


def baseline_image(pair: RawPair):
    """The short exposure amplified in raw space and developed like the ground truth, as for SID."""
    from data.sid import develop_short_exposure_baseline

    return develop_short_exposure_baseline(pair.short_path, pair.ratio)
