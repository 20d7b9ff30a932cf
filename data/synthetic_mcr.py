"""A small MCR-format stand-in (data/mcr.py), for tests and demos without the MCR download, and the
pairs CSVs that turn the synthetic SID set into a `pairs` data set.

Layout and names are MCR's: 8-bit RGGB colour mosaics as TIFF at 8 shutter widths per scene, an
aligned mono ground truth (TIFF) and an RGB ground truth (JPEG) per scene, and the authors' split
lists (`random_path_list/{train,test}/{split}_{c,m,rgb}_path.npy`, paths relative to the root).
Scenes alternate between indoor numbers (1, 2, ...; ground truth at shutter width 0x2fff) and outdoor
numbers (501, 502, ...; ground truth at 0x03ff), with the shutter widths MCR uses for each, so both
of the authors' amplification rules are exercised.

Forward model per scene: data/synthetic.py renders the clean scene (photo crop or dead leaves) and its
noise-free raw mosaic normalised to 1 at the brightest site; the colour input at shutter width s is
that mosaic times s / (the ground truth's shutter width) times 240 DN, with Poisson shot noise and
Gaussian read noise, rounded and clipped to 8 bits. The RGB ground truth is the scene as developed
(data/synthetic.py's reference), the mono ground truth its BT.709-encoded luminance: stand-ins for a
colour camera's processed long exposure and a monochrome camera's, aligned pixel for pixel.
"""
from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
from tqdm import tqdm

from data.mcr import DATASET_FOLDER, INDOOR_GT_SHUTTER_WIDTH, OUTDOOR_GT_SHUTTER_WIDTH
from data.sony_a7s import LINEAR_SRGB_FROM_CAMERA
from data.synthetic import (BLACK_LEVEL, LIST_FILE_NAME, WHITE_LEVEL, _check_size, _write_atomically,
                            encode_bt709, render_scene)

MANIFEST_NAME = "synthetic_mcr.json"
GENERATOR_VERSION = 1
# The shutter widths of MCR's published lists: indoor scenes (1..499) and outdoor scenes (500..).
INDOOR_SHUTTER_WIDTHS = (0x007F, 0x00FF, 0x01FF, 0x03FF, 0x07FF, 0x0FFF, 0x1FFF, 0x2FFF)
OUTDOOR_SHUTTER_WIDTHS = (0x0007, 0x000F, 0x001F, 0x003F, 0x007F, 0x00FF, 0x01FF, 0x03FF)
FULL_EXPOSURE_DN = 240.0  # the brightest site at the ground truth's exposure, below 8-bit saturation
SHOT_NOISE_GAIN = 0.25  # DN per electron
READ_NOISE_DN = 0.6
JPEG_QUALITY = 95
MASTER_CLOCK_AND_GAIN = "48mp_0x8"
LUMA = np.array([0.2126, 0.7152, 0.0722], dtype=np.float32)  # linear-light luminance (BT.709)


def scene_numbers(count: int, first_ordinal: int = 0) -> list[int]:
    """MCR scene numbers: even ordinals indoor (1, 2, ...), odd ordinals outdoor (501, 502, ...)."""
    return [1 + ordinal // 2 if ordinal % 2 == 0 else 501 + ordinal // 2
            for ordinal in range(first_ordinal, first_ordinal + count)]


def _file_stem(prefix: str, scene: int, shutter_width: int) -> str:
    return f"{prefix}{scene:05d}_{MASTER_CLOCK_AND_GAIN}_0x{shutter_width:04x}"


def _encode_image(image: np.ndarray, suffix: str) -> bytes:
    buffer = io.BytesIO()
    if suffix == ".tif":
        import tifffile
        tifffile.imwrite(buffer, image)
    else:
        from PIL import Image
        Image.fromarray(image).save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


def write_mcr_scene(root: Path, seed: int, scene: int, sid_scene_id: int, height: int, width: int) -> dict:
    """Writes one scene's 8 inputs and 2 ground truths; returns {split-list kind: [relative paths]}."""
    rendered = render_scene(seed, sid_scene_id, height, width)
    outdoor = scene >= 500
    gt_width = OUTDOOR_GT_SHUTTER_WIDTH if outdoor else INDOOR_GT_SHUTTER_WIDTH
    rgb_relative = f"{DATASET_FOLDER}/RGB_GT/{_file_stem('C', scene, gt_width)}.jpg"
    mono_relative = f"{DATASET_FOLDER}/Mono_GT/{_file_stem('M_Align_', scene, gt_width)}.tif"
    reference = rendered.reference
    _write_atomically(root / rgb_relative, _encode_image(np.round(reference * 255).astype(np.uint8), ".jpg"))
    linear = np.clip(rendered.camera, 0, 1) @ LINEAR_SRGB_FROM_CAMERA.T.astype(np.float32)
    mono = encode_bt709(np.clip(linear, 0, 1) @ LUMA)
    _write_atomically(root / mono_relative, _encode_image(np.round(mono * 255).astype(np.uint8), ".tif"))
    normalised = rendered.long_signal / np.float32(WHITE_LEVEL - BLACK_LEVEL)
    lists = {"c": [], "m": [], "rgb": []}
    for shutter_width in (OUTDOOR_SHUTTER_WIDTHS if outdoor else INDOOR_SHUTTER_WIDTHS):
        generator = np.random.default_rng([seed, scene, shutter_width])
        mean = normalised * np.float32(FULL_EXPOSURE_DN * shutter_width / gt_width)
        electrons = generator.poisson(mean / SHOT_NOISE_GAIN)
        noisy = electrons * SHOT_NOISE_GAIN + generator.normal(0.0, READ_NOISE_DN, mean.shape)
        mosaic = np.clip(np.rint(noisy), 0, 255).astype(np.uint8)
        input_relative = f"{DATASET_FOLDER}/Color_RAW_Input/{_file_stem('C', scene, shutter_width)}.tif"
        _write_atomically(root / input_relative, _encode_image(mosaic, ".tif"))
        lists["c"].append(input_relative)
        lists["m"].append(mono_relative)
        lists["rgb"].append(rgb_relative)
    return lists


def _existing_set_matches(root: Path, parameters: dict) -> bool:
    manifest_path = root / MANIFEST_NAME
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    files = manifest.get("files", {})
    return (manifest.get("parameters") == parameters and bool(files)
            and all((root / name).is_file() and (root / name).stat().st_size == size for name, size in files.items()))


def generate_synthetic_mcr(root: str | os.PathLike, *, seed: int = 0, height: int = 256, width: int = 384,
                           train_scenes: int = 4, val_scenes: int = 1, test_scenes: int = 2, bursts: int = 1,
                           overwrite: bool = False) -> Path:
    """Writes (or reuses) the stand-in under root and returns root. Takes the keys of data.synthetic
    (bursts has no MCR meaning and is ignored). Split lists name the pairs of train, val and test scenes,
    shuffled as MCR's are; MCR itself has no val list (data/mcr.py then validates on the test list)."""
    _check_size(height, width)
    if min(train_scenes, val_scenes) < 0 or test_scenes < 1 or train_scenes + val_scenes + test_scenes > 998:
        raise ValueError(f"the MCR stand-in needs test_scenes >= 1 and at most 998 scenes, got train_scenes="
                         f"{train_scenes}, val_scenes={val_scenes}, test_scenes={test_scenes}")
    root = Path(root).absolute()
    parameters = {"generator_version": GENERATOR_VERSION, "seed": int(seed), "height": int(height),
                  "width": int(width), "train_scenes": int(train_scenes), "val_scenes": int(val_scenes),
                  "test_scenes": int(test_scenes)}
    if not overwrite and _existing_set_matches(root, parameters):
        return root
    if (root / DATASET_FOLDER).is_dir() and not (root / MANIFEST_NAME).is_file():
        # Never write over someone's real MCR download.
        raise ValueError(f"{root / DATASET_FOLDER} holds an MCR set that is not the synthetic stand-in; "
                         "set data.synthetic: null to use it, or choose another data.root")
    (root / MANIFEST_NAME).unlink(missing_ok=True)
    numbers = scene_numbers(train_scenes + val_scenes + test_scenes)
    splits = {"train": numbers[:train_scenes], "val": numbers[train_scenes:train_scenes + val_scenes],
              "test": numbers[train_scenes + val_scenes:]}
    files: dict[str, int] = {}
    progress = tqdm(total=len(numbers), desc="synthetic MCR scenes", unit="scene", leave=False)
    try:
        for split, scenes in splits.items():
            if not scenes:  # no list at all, not an empty one (nor one left from an earlier set)
                for kind in ("c", "m", "rgb"):
                    (root / f"random_path_list/{split}/{split}_{kind}_path.npy").unlink(missing_ok=True)
                continue
            lists = {"c": [], "m": [], "rgb": []}
            for ordinal, scene in enumerate(scenes):
                # The SID renderer's scene id picks the photo pool: test scenes show photos training never sees.
                sid_scene_id = {"train": 0, "test": 10000, "val": 20000}[split] + ordinal + 1
                for kind, paths in write_mcr_scene(root, seed, scene, sid_scene_id, height, width).items():
                    lists[kind].extend(paths)
                progress.update()
            order = np.random.default_rng([seed, len(split)]).permutation(len(lists["c"]))
            for kind, paths in lists.items():
                buffer = io.BytesIO()
                np.save(buffer, np.array([f"./{paths[i]}" for i in order]))
                relative = f"random_path_list/{split}/{split}_{kind}_path.npy"
                _write_atomically(root / relative, buffer.getvalue())
                files[relative] = (root / relative).stat().st_size
                files.update({path: (root / path).stat().st_size for path in paths})
    finally:
        progress.close()
    _write_atomically(root / MANIFEST_NAME, (json.dumps({"parameters": parameters, "files": files}, indent=1)
                                             + "\n").encode())
    return root


PAIRS_LIST_NAMES = {"train": "train.csv", "val": "val.csv", "test": "test.csv"}


def write_synthetic_pairs_lists(root: str | os.PathLike) -> Path:
    """train.csv, val.csv and test.csv listing the synthetic SID set's DNGs as `pairs` (short,long; the
    ratio left to the files' exposure times), next to SID's list files."""
    root = Path(root).absolute()
    for split, csv_name in PAIRS_LIST_NAMES.items():
        lines = ["short,long"]
        for line in (root / LIST_FILE_NAME[split]).read_text().splitlines():
            if line.strip():
                short, long = line.split()[:2]
                lines.append(f"{short},{long}")
        text = "\n".join(lines) + "\n"
        path = root / csv_name
        if not path.is_file() or path.read_text() != text:
            _write_atomically(path, text.encode())
    return root
