"""MCR (Mono-Colored Raw paired dataset, Dong et al., CVPR 2022): the DBF/DBLE authors' own data set,
read as they publish it.

Layout under `data.root` (the folder holding the unzipped download):
    Mono_Colored_RAW_Paired_DATASET/Color_RAW_Input/C00260_48mp_0x8_0x00ff.tif   8-bit RGGB mosaic
    Mono_Colored_RAW_Paired_DATASET/Mono_GT/M_Align_00260_48mp_0x8_0x2fff.tif    8-bit aligned mono
    Mono_Colored_RAW_Paired_DATASET/RGB_GT/C00260_48mp_0x8_0x2fff.jpg            8-bit RGB
The split is the authors' `random_path_list/{train,test}/{train,test}_{c,m,rgb}_path.npy`: three
numpy arrays of paths relative to the root, index i of each naming one pair (3,600 train, 384 test).
A list name in the config is the colour-input array (`..._c_path.npy`); the mono and RGB arrays are
its siblings. The authors split pairs, not scenes, at random, and have no validation split: every
scene has exposures in both lists, and they validate on the test list (so does `val_list: val` when
there is no random_path_list/val/ of your own).

File name `C00260_48mp_0x8_0x00ff`: scene 260, master clock 48 MHz, global gain 0x8, shutter width
0x00ff. The amplification is gt_expo / img_expo with img_expo the shutter width and gt_expo 12287
(0x2fff) for scenes below 500 (indoor) and 1023 (0x03ff) for the others (outdoor), as in the
authors' train.py. Input = mosaic / 255 * amplification, no black level (data/raw_cache.py reads an
8-bit TIFF mosaic with black 0, white 255); targets = image / 255; the DBF head is supervised by the
real Mono_GT. Per-exposure tables group pairs by shutter width (the column label 0x00ff).
"""
from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path
from typing import Sequence

import numpy as np

from data.raw_cache import RawCache
from data.sid import check_pair_sizes

PROTOCOLS = ("all",)
DATASET_FOLDER = "Mono_Colored_RAW_Paired_DATASET"
LIST_ALIASES = {"train": "random_path_list/train/train_c_path.npy",
                "val": "random_path_list/val/val_c_path.npy",
                "test": "random_path_list/test/test_c_path.npy"}
# The authors' rule (train.py/test.py): the ground truth's shutter width by scene number.
INDOOR_GT_SHUTTER_WIDTH = 12287  # 0x2fff, scenes 1..499
OUTDOOR_GT_SHUTTER_WIDTH = 1023  # 0x03ff, scenes 500 and above
FIRST_OUTDOOR_SCENE = 500
CAMERA = "MCR colour camera (8-bit TIFF mosaics)"

_FIELDS = r"(?P<scene>\d{5})_(?P<clock>\d+)mp_(?P<gain>0x[0-9a-fA-F]+)_(?P<shutter>0x[0-9a-fA-F]+)"
_COLOUR_NAME = re.compile(rf"^C{_FIELDS}$")
_MONO_NAME = re.compile(rf"^M_Align_{_FIELDS}$")
_EXAMPLES = {"colour": "C00260_48mp_0x8_0x00ff.tif", "mono": "M_Align_00260_48mp_0x8_0x2fff.tif",
             "rgb": "C00260_48mp_0x8_0x2fff.jpg"}


@dataclasses.dataclass(frozen=True)
class MCRName:
    scene: int
    master_clock_mhz: int
    global_gain: int
    shutter_width: int


def parse_name(path: str | os.PathLike, kind: str = "colour") -> MCRName:
    """Fields of an MCR file name; kind 'colour' and 'rgb' start with C, 'mono' with M_Align_."""
    stem = Path(str(path)).stem
    match = (_MONO_NAME if kind == "mono" else _COLOUR_NAME).match(stem)
    if match is None:
        raise ValueError(f"{path}: not an MCR {kind} file name (expected e.g. {_EXAMPLES[kind]}: scene, "
                         "master clock, global gain, shutter width)")
    return MCRName(scene=int(match["scene"]), master_clock_mhz=int(match["clock"]),
                   global_gain=int(match["gain"], 16), shutter_width=int(match["shutter"], 16))


def gt_shutter_width(scene: int) -> int:
    return INDOOR_GT_SHUTTER_WIDTH if scene < FIRST_OUTDOOR_SCENE else OUTDOOR_GT_SHUTTER_WIDTH


def amplification(name: MCRName) -> float:
    """gt_expo / img_expo, the authors' input amplification."""
    return gt_shutter_width(name.scene) / name.shutter_width


def exposure_group(shutter_width: int) -> str:
    """The per-exposure table column of a shutter width, spelled as in the file names: 0x00ff."""
    return f"0x{shutter_width:04x}"


@dataclasses.dataclass(frozen=True)
class MCRPair:
    short_path: Path  # the colour mosaic (the network input)
    long_path: Path  # the RGB ground truth
    mono_path: Path  # the aligned monochrome ground truth
    name: str
    scene: int
    shutter_width: int
    ratio: float  # the amplification

    @property
    def group(self) -> str:
        return exposure_group(self.shutter_width)


def resolve_list_file(root: str | os.PathLike, list_name: str | os.PathLike) -> Path:
    """'train' / 'val' / 'test', a `..._c_path.npy` file, or a folder holding one; relative to root.
    'val' is random_path_list/val/ when there is one (the stand-in writes one), else the test list, as
    the authors validated."""
    if str(list_name) == "val" and not (Path(root) / LIST_ALIASES["val"]).is_file():
        list_name = "test"
    list_name = LIST_ALIASES.get(str(list_name), list_name)
    path = Path(list_name)
    path = path if path.is_absolute() else Path(root).absolute() / path
    if path.is_dir():
        found = sorted(path.glob("*_c_path.npy"))
        if len(found) != 1:
            raise FileNotFoundError(f"MCR list folder {path} must hold one *_c_path.npy, found {len(found)}")
        path = found[0]
    return path


def _sibling_lists(list_file: Path) -> tuple[Path, Path]:
    if not list_file.name.endswith("_c_path.npy"):
        raise ValueError(f"{list_file}: an MCR list is the colour-input array named <split>_c_path.npy "
                         "(its _m_path.npy and _rgb_path.npy siblings name the ground truths)")
    prefix = list_file.name[: -len("_c_path.npy")]
    return list_file.with_name(f"{prefix}_m_path.npy"), list_file.with_name(f"{prefix}_rgb_path.npy")


def _load_paths(path: Path) -> list[str]:
    if not path.is_file():
        raise FileNotFoundError(f"MCR list file not found: {path} (copy random_path_list/ from the authors' "
                                "repository into data.root)")
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise ValueError(f"{path}: not a numpy array of path strings ({str(error).splitlines()[0]})") from None
    if array.ndim != 1 or array.dtype.kind != "U":
        raise ValueError(f"{path}: expected a 1-D array of path strings, got {array.dtype} {array.shape}")
    return [str(item) for item in array]


def read_list(list_file: str | os.PathLike, root: str | os.PathLike) -> list[MCRPair]:
    """The pairs of one split: index i of the _c_, _m_ and _rgb_ arrays is one pair."""
    list_file, root = Path(list_file), Path(root).absolute()
    mono_file, rgb_file = _sibling_lists(list_file)
    colour, mono, rgb = (_load_paths(path) for path in (list_file, mono_file, rgb_file))
    if not len(colour) == len(mono) == len(rgb):
        raise ValueError(f"{list_file}: the _c_, _m_ and _rgb_ lists differ in length "
                         f"({len(colour)}, {len(mono)}, {len(rgb)})")
    pairs = []
    for index, (colour_text, mono_text, rgb_text) in enumerate(zip(colour, mono, rgb)):
        where = f"{list_file} entry {index}"
        try:
            fields = parse_name(colour_text, "colour")
            mono_fields, rgb_fields = parse_name(mono_text, "mono"), parse_name(rgb_text, "rgb")
        except ValueError as error:
            raise ValueError(f"{where}: {error}") from None
        if not fields.scene == mono_fields.scene == rgb_fields.scene:
            raise ValueError(f"{where}: input scene {fields.scene:05d}, mono ground truth scene "
                             f"{mono_fields.scene:05d} and RGB ground truth scene {rgb_fields.scene:05d} differ")
        if fields.shutter_width <= 0:
            raise ValueError(f"{where}: shutter width 0 in {colour_text}")
        pairs.append(MCRPair(short_path=root / colour_text, long_path=root / rgb_text, mono_path=root / mono_text,
                             name=Path(colour_text).stem, scene=fields.scene, shutter_width=fields.shutter_width,
                             ratio=amplification(fields)))
    return pairs


def read_split(root: str | os.PathLike, list_name: str | os.PathLike) -> list[MCRPair]:
    return read_list(resolve_list_file(root, list_name), root)


def select_pairs(pairs: Sequence[MCRPair], protocol: str, exclude_misaligned: bool = False) -> list[MCRPair]:
    """MCR has one protocol: every listed pair (the authors' 384 test pairs)."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown MCR protocol {protocol!r}; choices: {', '.join(PROTOCOLS)}")
    return list(pairs)


def check_files(pairs: Sequence[MCRPair]) -> None:
    """Every file a split names exists (one line naming the first missing one)."""
    for pair in pairs:
        for label, path in (("input", pair.short_path), ("mono ground truth", pair.mono_path),
                            ("RGB ground truth", pair.long_path)):
            if not path.is_file():
                raise FileNotFoundError(f"MCR {label} not found: {path} (pair {pair.name})")


def prepare_split(root, list_name, protocol, exclude_misaligned, cache_dir, workers, max_pairs=None) -> list[MCRPair]:
    pairs = select_pairs(read_split(root, list_name), protocol)[:max_pairs]
    check_files(pairs)
    RawCache(cache_dir).build([p.short_path for p in pairs], [p.long_path for p in pairs], workers=workers,
                              mono_paths=[p.mono_path for p in pairs])
    check_pair_sizes(pairs, RawCache(cache_dir))
    return pairs


def cameras(pairs: Sequence[MCRPair]) -> list[str]:
    return [CAMERA] if pairs else []


# Bilinear interpolation of an RGGB mosaic: each kernel averages a site's nearest samples of a colour.
_GREEN_KERNEL = np.array([[0, 1, 0], [1, 4, 1], [0, 1, 0]], dtype=np.float32) / 4
_RED_BLUE_KERNEL = np.array([[1, 2, 1], [2, 4, 2], [1, 2, 1]], dtype=np.float32) / 4


def baseline_image(pair: MCRPair) -> np.ndarray:
    """The naive baseline: the amplified mosaic, clipped at 1, demosaiced bilinearly (float32 HxWx3).
    MCR ships no raw metadata (white balance, colour matrix) for a rawpy development, so this one has
    no colour processing; scipy's convolution does the interpolation."""
    from scipy.ndimage import convolve

    from data.raw_cache import read_8bit_image

    mosaic = np.clip(read_8bit_image(pair.short_path).astype(np.float32) / 255 * np.float32(pair.ratio), 0, 1)
    height, width = mosaic.shape[0] // 2 * 2, mosaic.shape[1] // 2 * 2
    mosaic = mosaic[:height, :width]
    masks = np.zeros((3, height, width), dtype=np.float32)
    masks[0, 0::2, 0::2] = 1
    masks[1, 0::2, 1::2] = masks[1, 1::2, 0::2] = 1
    masks[2, 1::2, 1::2] = 1
    channels = [convolve(mosaic * mask, kernel, mode="mirror")
                for mask, kernel in zip(masks, (_RED_BLUE_KERNEL, _GREEN_KERNEL, _RED_BLUE_KERNEL))]
    return np.clip(np.stack(channels, axis=2), 0, 1)
