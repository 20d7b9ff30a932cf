"""A small SID-format data set rendered from natural photos, written as real DNG files.

No SID download is possible where this project runs, so tests and the default demo read this
stand-in instead. It has exactly SID's layout (`Sony/short`, `Sony/long`, three list files with
SID's line format) so the real loader, rawpy decoding included, is what gets exercised.

The raws imitate SID's camera, the Sony a7S (data/sony_a7s.py: its colour matrix, white balance
and ELD's calibrated noise model). Forward model per scene (see docs in `render_scene`):
    clean scene (a photo crop, or for training also a procedural dead-leaves image) in linear sRGB
    -> the a7S's white-balanced camera RGB (LibRaw's matrix for it) -> divide by the as-shot
    white-balance gains -> RGGB mosaic
    -> long exposure whose brightest site just saturates (noise-free, 14-bit, black 512)
    -> short exposures = long / exposure ratio with ELD's noise at the scene's ISO: Poisson shot
       noise (gain K), Tukey-lambda read noise, row noise, quantisation.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import functools
import json
import multiprocessing
import os
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
from tqdm import tqdm

from data.dead_leaves import dead_leaves
from data.sony_a7s import (
    BLACK_LEVEL,
    CAMERA_FROM_LINEAR_SRGB,
    LINEAR_SRGB_FROM_CAMERA,
    SID_F_NUMBERS,
    SID_ISO_VALUES,
    XYZ_TO_CAMERA,
    WHITE_LEVEL,
    NoiseParameters,
    noise_parameters,
    noisy_raw,
    white_balance_gains,
)

FULL_SIZE_HEIGHT = 2848
FULL_SIZE_WIDTH = 4256

# Each manifest records this so a change of the forward model invalidates old data sets.
GENERATOR_VERSION = 2
MANIFEST_NAME = "synthetic_sid.json"

SPLIT_DIGIT = {"train": 0, "test": 1, "val": 2}
LIST_FILE_NAME = {"train": "Sony_train_list.txt", "val": "Sony_val_list.txt", "test": "Sony_test_list.txt"}
# The photos are split once per seed into disjoint pools (slices of a seeded permutation of
# PHOTO_NAMES): no validation or test scene ever shows a photo used in training, however many
# scenes each split has.
PHOTO_POOLS = {"train": slice(0, 3), "val": slice(3, 4), "test": slice(4, 7)}
# Every other training scene is a procedural dead-leaves image, so training data is unbounded.
PROCEDURAL_SOURCE = "dead_leaves"

# Exposure designs cycled over the scenes of a split, as in SID: 10 s ground truth with 0.1 s
# (x100) and 0.04 s (x250) or 0.033 s (x300) inputs, or 30 s ground truth with 0.1 s (x300).
# The cycle starts with a 10 s and a 30 s scene so a two-scene test split has all three ratios.
SCENE_DESIGNS = (
    (10.0, (0.1, 0.04)),
    (30.0, (0.1,)),
    (10.0, (0.1, 0.033)),
)

# Photos bundled inside scikit-image (no download needed); all natural RGB photographs.
PHOTO_NAMES = (
    "astronaut",
    "coffee",
    "chelsea",
    "rocket",
    "motorcycle",
    "immunohistochemistry",
    "hubble_deep_field",
)

OPTICAL_BLUR_SIGMA = 0.7  # pixels

# The photos are treated as encoded with the transfer curve LibRaw applies on output (rawpy's
# default gamma=(2.222, 4.5), i.e. BT.709). Linearising with that curve (rather than the sRGB
# curve) is what makes postprocess() of the long exposure return the photo itself; with the sRGB
# curve the mid-tones would come back about 0.05 too dark.
BT709_POWER = 0.45
BT709_SLOPE = 4.5
BT709_OFFSET = 0.099
BT709_LINEAR_BREAK = 0.018

DNG_RATIONAL_DENOMINATOR = 1_000_000


def decode_bt709(encoded: np.ndarray) -> np.ndarray:
    encoded = np.asarray(encoded, dtype=np.float64)
    linear_break_encoded = BT709_SLOPE * BT709_LINEAR_BREAK
    return np.where(
        encoded < linear_break_encoded,
        encoded / BT709_SLOPE,
        ((encoded + BT709_OFFSET) / (1 + BT709_OFFSET)) ** (1 / BT709_POWER),
    )


def encode_bt709(linear: np.ndarray) -> np.ndarray:
    """float32 throughout: full-size frames have 36 M values."""
    linear = np.clip(np.asarray(linear, dtype=np.float32), 0.0, 1.0)
    # exp(p log x) runs several times faster than float32 np.power here; values near 0 take the
    # linear branch, so the floor on x never shows.
    curved = np.log(np.maximum(linear, np.float32(1e-12)))
    curved *= np.float32(BT709_POWER)
    np.exp(curved, out=curved)
    curved *= np.float32(1 + BT709_OFFSET)
    curved -= np.float32(BT709_OFFSET)
    return np.where(linear < np.float32(BT709_LINEAR_BREAK), linear * np.float32(BT709_SLOPE), curved)


# The photos are 8-bit, so linearising is a table lookup.
LINEAR_FROM_8_BIT = decode_bt709(np.arange(256) / 255.0).astype(np.float32)


@functools.lru_cache(maxsize=None)
def load_photo(name: str) -> np.ndarray:
    """One bundled photo as uint8 HxWx3 (cached: the generator reuses photos)."""
    import skimage.data

    if name == "motorcycle":
        image = skimage.data.stereo_motorcycle()[0]
    elif name in PHOTO_NAMES:
        image = getattr(skimage.data, name)()
    else:
        raise ValueError(f"unknown photo {name!r}; choices: {', '.join(PHOTO_NAMES)}")
    image = np.ascontiguousarray(image[..., :3], dtype=np.uint8)
    image.setflags(write=False)
    return image


@dataclasses.dataclass(frozen=True)
class SyntheticScene:
    """Everything needed to write one scene, plus the clean reference it should decode to."""

    scene_id: int
    photo_name: str  # a PHOTO_NAMES entry, or PROCEDURAL_SOURCE
    camera: np.ndarray  # float32 HxWx3 white-balanced camera RGB after the exposure scale (may exceed 1)
    long_signal: np.ndarray  # float32 HxW mosaic, DN above black, noise-free
    white_balance_gains: tuple[float, float, float]
    iso: int
    f_number: float
    noise: NoiseParameters
    long_exposure: float
    short_exposures: tuple[float, ...]

    @property
    def reference(self) -> np.ndarray:
        """float32 HxWx3 in [0, 1]: what postprocess() of the long exposure should return.
        LibRaw clips white-balanced camera values at 1, converts to sRGB with the inverse of
        CAMERA_FROM_LINEAR_SRGB, clips again and applies its output curve. Computed on demand;
        writing the files does not need it."""
        camera = np.clip(self.camera, 0.0, 1.0)
        linear = camera @ LINEAR_SRGB_FROM_CAMERA.T.astype(np.float32)
        return encode_bt709(linear)


def _split_of(scene_id: int) -> str:
    digit = scene_id // 10000
    for split, split_digit in SPLIT_DIGIT.items():
        if split_digit == digit:
            return split
    raise ValueError(f"scene id {scene_id} does not start with a SID split digit (0, 1 or 2)")


def linear_crop(photo: np.ndarray, height: int, width: int, random_generator: np.random.Generator) -> np.ndarray:
    """A random window of the photo in linear light, resized to height x width, float32."""
    from PIL import Image

    photo_height, photo_width = photo.shape[:2]
    # Zoom so the crop fits inside the photo whatever the requested size, then a little more so
    # crops of the same photo differ; the window is resized, not the whole photo, to keep
    # full-size (4256x2848) frames cheap.
    zoom = max(height / photo_height, width / photo_width) * random_generator.uniform(1.0, 1.4)
    window_height = min(photo_height, max(2, int(round(height / zoom))))
    window_width = min(photo_width, max(2, int(round(width / zoom))))
    top = int(random_generator.integers(0, photo_height - window_height + 1))
    left = int(random_generator.integers(0, photo_width - window_width + 1))
    window = LINEAR_FROM_8_BIT[photo[top : top + window_height, left : left + window_width]]
    if random_generator.random() < 0.5:
        window = window[:, ::-1]
    if window.shape[:2] != (height, width):
        # Pillow's bilinear filter widens its support when shrinking, so downscaling does not
        # alias; resampling happens in linear light, as optics would.
        window = np.stack(
            [
                np.asarray(Image.fromarray(np.ascontiguousarray(window[..., channel])).resize((width, height), Image.BILINEAR))
                for channel in range(3)
            ],
            axis=-1,
        )
    return np.clip(window, 0.0, 1.0, out=window)


def _optics(linear: np.ndarray) -> np.ndarray:
    """A camera's lens and anti-aliasing filter keep detail off the pixel pitch; without this,
    downscaled photos and sharp leaf edges carry more detail than any Bayer sensor resolves and
    the developed ground truth drifts from the scene through demosaicing error alone."""
    from scipy.ndimage import gaussian_filter

    blurred = gaussian_filter(linear, sigma=(OPTICAL_BLUR_SIGMA, OPTICAL_BLUR_SIGMA, 0), mode="reflect", truncate=3.0)
    return np.clip(blurred, 0.0, 1.0, out=blurred)


def scene_source(seed: int, scene_id: int) -> str:
    """The photo (or PROCEDURAL_SOURCE) a scene shows: training alternates photos of the training
    pool with procedural scenes; validation and test cycle through their own photo pools."""
    split = _split_of(scene_id)
    ordinal = scene_id % 10000 - 1
    if ordinal < 0:
        raise ValueError(f"scene id {scene_id}: scene numbers start at 1")
    if split == "train" and ordinal % 2 == 1:
        return PROCEDURAL_SOURCE
    pool = np.random.default_rng([seed, 7919]).permutation(len(PHOTO_NAMES))[PHOTO_POOLS[split]]
    position = ordinal // 2 if split == "train" else ordinal
    return PHOTO_NAMES[int(pool[position % len(pool)])]


def _mosaic_rggb(camera_rgb: np.ndarray) -> np.ndarray:
    height, width = camera_rgb.shape[:2]
    mosaic = np.empty((height, width), dtype=camera_rgb.dtype)
    mosaic[0::2, 0::2] = camera_rgb[0::2, 0::2, 0]
    mosaic[0::2, 1::2] = camera_rgb[0::2, 1::2, 1]
    mosaic[1::2, 0::2] = camera_rgb[1::2, 0::2, 1]
    mosaic[1::2, 1::2] = camera_rgb[1::2, 1::2, 2]
    return mosaic


def _check_size(height: int, width: int) -> None:
    for label, value in (("height", height), ("width", width)):
        if not isinstance(value, (int, np.integer)) or value <= 0 or value % 32:
            raise ValueError(f"{label} must be a positive multiple of 32, got {value!r}")


def render_scene(seed: int, scene_id: int, height: int, width: int) -> SyntheticScene:
    """Renders one scene deterministically from (seed, scene_id, size).

    The clean scene (linear sRGB, what development should give back) becomes the a7S's
    white-balanced camera RGB through LibRaw's matrix for the camera, then raw camera RGB by
    dividing by the as-shot multipliers (an illuminant between tungsten and daylight).

    The long exposure is scaled so its brightest sensor site just reaches the white level
    ("exposed to the right"). Besides being what a well-exposed frame is, this keeps LibRaw
    from rescaling: rawpy's default adjust_maximum_thr=0.75 replaces the white level by the
    frame's data maximum when that lies between 75% and 100% of it, which would brighten the
    ground truth. White-balanced values above 1 (bright red or blue sites) are clipped by LibRaw
    as by a camera; `reference` models that.
    """
    _check_size(height, width)
    photo_name = scene_source(seed, scene_id)
    ordinal = scene_id % 10000 - 1
    random_generator = np.random.default_rng([seed, scene_id])

    if photo_name == PROCEDURAL_SOURCE:
        linear = dead_leaves(height, width, random_generator)
    else:
        linear = linear_crop(load_photo(photo_name), height, width, random_generator)
    return render_linear_scene(linear, scene_id, photo_name, SCENE_DESIGNS[ordinal % len(SCENE_DESIGNS)], random_generator)


def render_linear_scene(
    linear: np.ndarray,
    scene_id: int,
    photo_name: str,
    design: tuple[float, tuple[float, ...]],
    random_generator: np.random.Generator,
) -> SyntheticScene:
    """The camera side of `render_scene` for any clean linear-sRGB image (HxWx3 in [0, 1]), e.g.
    photos the generator never draws from (bench/unseen_photos.py). design: (long exposure,
    short exposures) in seconds."""
    linear = _optics(linear)
    camera = linear @ CAMERA_FROM_LINEAR_SRGB.T.astype(np.float32)
    # LibRaw reports the multipliers normalised to green = 1; red and blue are above 1 for every
    # illuminant between A and D65, so no channel is rescaled.
    gains = white_balance_gains(float(random_generator.uniform(0.0, 1.0)))
    camera_mosaic = _mosaic_rggb(camera / np.asarray(gains, dtype=np.float32))
    brightest = float(camera_mosaic.max())
    if brightest <= 0:
        raise ValueError(f"scene {scene_id}: crop of {photo_name!r} is black")
    exposure_scale = 1.0 / brightest
    long_signal = camera_mosaic * np.float32(exposure_scale * (WHITE_LEVEL - BLACK_LEVEL))
    camera *= np.float32(exposure_scale)

    iso = int(random_generator.choice(SID_ISO_VALUES))
    long_exposure, short_exposures = design
    return SyntheticScene(
        scene_id=scene_id,
        photo_name=photo_name,
        camera=camera,
        long_signal=long_signal,
        white_balance_gains=gains,
        iso=iso,
        f_number=float(random_generator.choice(SID_F_NUMBERS)),
        noise=noise_parameters(iso, random_generator),
        long_exposure=long_exposure,
        short_exposures=short_exposures,
    )


def long_exposure_raw(scene: SyntheticScene) -> np.ndarray:
    """The long exposure as written: noise-free signal plus black level, rounded to 14-bit DN.

    SID's 10 s / 30 s frames are nearly noise-free next to the short ones, and a clean ground
    truth makes the "postprocess gives back the photo" check meaningful.
    """
    return np.clip(np.rint(scene.long_signal + BLACK_LEVEL), 0, WHITE_LEVEL).astype(np.uint16)


def short_exposure_raw(seed: int, scene: SyntheticScene, burst: int, exposure: float) -> np.ndarray:
    """One noisy short exposure (ELD's model at the scene's ISO, data/sony_a7s.py); the signal is
    divided by the physical exposure ratio (303 for 0.033 s against 10 s, as in SID, even though
    the loader caps the ratio at 300)."""
    random_generator = np.random.default_rng([seed, scene.scene_id, burst, int(round(exposure * 1e6))])
    mean_signal = scene.long_signal * np.float32(exposure / scene.long_exposure)
    return noisy_raw(mean_signal, scene.noise, random_generator)


def _rational(value: float) -> list[int]:
    fraction = Fraction(value).limit_denominator(DNG_RATIONAL_DENOMINATOR)
    return [fraction.numerator, fraction.denominator]


def _signed_rational(value: float) -> list[int]:
    return [int(round(value * DNG_RATIONAL_DENOMINATOR)), DNG_RATIONAL_DENOMINATOR]


def write_dng(
    path: str | os.PathLike,
    mosaic: np.ndarray,
    *,
    white_balance_gains: tuple[float, float, float],
    exposure_time: float,
    iso: int,
    f_number: float,
    black_level: int = BLACK_LEVEL,
    white_level: int = WHITE_LEVEL,
    pattern: str = "RGGB",
    camera: tuple[str, str] | None = None,
) -> Path:
    """Writes a uint16 Bayer mosaic as an uncompressed DNG, atomically (temp name + os.replace).

    pattern is the CFA layout at the mosaic's origin; other than RGGB it is only useful to test
    readers on shifted patterns (SID's files are RGGB). camera: (make, model) tags, to stand in for
    another camera (default: the stand-in's own).

    Samples are stored as 16 bits holding 14-bit values: pidng's 14-bit packer (pack14) strides
    over the input in steps of 6 pixels instead of 4 and produces garbage.
    """
    from pidng.core import RAW2DNG
    from pidng.defs import (
        CalibrationIlluminant,
        CFAPattern,
        DNGVersion,
        Orientation,
        PhotometricInterpretation,
    )
    from pidng.dng import DNGTags, Tag

    path = Path(path)
    mosaic = np.asarray(mosaic)
    if mosaic.ndim != 2 or mosaic.dtype != np.uint16:
        raise ValueError(f"{path}: mosaic must be a 2-D uint16 array, got {mosaic.dtype} {mosaic.shape}")
    cfa_codes = {"RGGB": CFAPattern.RGGB, "GRBG": CFAPattern.GRBG, "GBRG": CFAPattern.GBRG, "BGGR": CFAPattern.BGGR}
    if pattern not in cfa_codes:
        raise ValueError(f"{path}: unknown CFA pattern {pattern!r}; choices: {', '.join(cfa_codes)}")
    height, width = mosaic.shape
    if height % 2 or width % 2:
        raise ValueError(f"{path}: mosaic size {height}x{width} must be even for a Bayer pattern")

    tags = DNGTags()
    tags.set(Tag.ImageWidth, width)
    tags.set(Tag.ImageLength, height)
    # pidng writes the whole frame as one tile.
    tags.set(Tag.TileWidth, width)
    tags.set(Tag.TileLength, height)
    tags.set(Tag.Orientation, Orientation.Horizontal)
    tags.set(Tag.PhotometricInterpretation, PhotometricInterpretation.Color_Filter_Array)
    tags.set(Tag.SamplesPerPixel, 1)
    tags.set(Tag.BitsPerSample, 16)
    tags.set(Tag.CFARepeatPatternDim, [2, 2])
    tags.set(Tag.CFAPattern, cfa_codes[pattern])
    tags.set(Tag.BlackLevel, int(black_level))
    tags.set(Tag.WhiteLevel, int(white_level))
    # The a7S's XYZ -> camera matrix (data/sony_a7s.py), so LibRaw develops with SID's colours.
    tags.set(Tag.ColorMatrix1, [_signed_rational(value) for value in XYZ_TO_CAMERA.ravel()])
    tags.set(Tag.CalibrationIlluminant1, CalibrationIlluminant.D65)
    # LibRaw turns AsShotNeutral into camera multipliers 1 / neutral.
    tags.set(Tag.AsShotNeutral, [_rational(1.0 / gain) for gain in white_balance_gains])
    # Not "SONY" / "ILCE-7S": LibRaw would then apply its per-maker quirks for real ARW files.
    make, model = camera or ("lowlight-qat", "synthetic SID stand-in (Sony ILCE-7S)")
    tags.set(Tag.Make, make)
    tags.set(Tag.Model, model)
    tags.set(Tag.UniqueCameraModel, "lowlight-qat synthetic SID stand-in (Sony ILCE-7S)")
    tags.set(Tag.ExposureTime, [_rational(exposure_time)])
    tags.set(Tag.FNumber, [_rational(f_number)])
    tags.set(Tag.PhotographicSensitivity, int(iso))
    tags.set(Tag.DNGVersion, DNGVersion.V1_4)

    converter = RAW2DNG()
    converter.options(tags, path="", compress=False)
    payload = converter.convert(np.ascontiguousarray(mosaic))
    _write_atomically(path, bytes(payload))
    return path


def _write_atomically(path: Path, payload: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    file_descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(file_descriptor, "wb") as handle:
            handle.write(payload)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def exposure_label(exposure: float) -> str:
    """SID's spelling of an exposure time in file names: 0.1s, 0.04s, 0.033s, 10s, 30s."""
    return f"{exposure:g}s"


def _write_scene(root: str, seed: int, scene_id: int, height: int, width: int, bursts: int):
    """Renders one scene and writes its long and short DNGs; returns ({relative path: size}, list lines)."""
    return write_scene(Path(root), seed, render_scene(seed, scene_id, height, width), bursts)


def write_scene(root: Path, seed: int, scene: SyntheticScene, bursts: int):
    """Writes a scene's long and short DNGs in SID's layout under root; returns
    ({relative path: size}, list-file lines)."""
    scene_id = scene.scene_id
    common = dict(white_balance_gains=scene.white_balance_gains, iso=scene.iso, f_number=scene.f_number)
    files, lines = {}, []
    long_name = f"{scene_id:05d}_00_{exposure_label(scene.long_exposure)}.dng"
    long_path = root / "Sony" / "long" / long_name
    write_dng(long_path, long_exposure_raw(scene), exposure_time=scene.long_exposure, **common)
    files[long_path.relative_to(root).as_posix()] = long_path.stat().st_size
    for burst in range(bursts):
        for exposure in scene.short_exposures:
            short_name = f"{scene_id:05d}_{burst:02d}_{exposure_label(exposure)}.dng"
            short_path = root / "Sony" / "short" / short_name
            write_dng(short_path, short_exposure_raw(seed, scene, burst, exposure), exposure_time=exposure, **common)
            files[short_path.relative_to(root).as_posix()] = short_path.stat().st_size
            lines.append(f"./Sony/short/{short_name} ./Sony/long/{long_name} ISO{scene.iso} F{scene.f_number:g}")
    return files, lines


def _parameters(seed, height, width, train_scenes, val_scenes, test_scenes, bursts) -> dict:
    return {
        "generator_version": GENERATOR_VERSION,
        "seed": int(seed),
        "height": int(height),
        "width": int(width),
        "train_scenes": int(train_scenes),
        "val_scenes": int(val_scenes),
        "test_scenes": int(test_scenes),
        "bursts": int(bursts),
    }


def _existing_set_is_complete(root: Path, parameters: dict) -> bool:
    manifest_path = root / MANIFEST_NAME
    if not manifest_path.is_file():
        return False
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    if manifest.get("parameters") != parameters:
        return False
    files = manifest.get("files", {})
    for relative, size in files.items():
        file_path = root / relative
        if not file_path.is_file() or file_path.stat().st_size != size:
            return False
    return bool(files)


def _clear_previous_set(root: Path) -> None:
    for folder in (root / "Sony" / "short", root / "Sony" / "long"):
        if not folder.is_dir():
            continue
        foreign = [entry.name for entry in folder.iterdir() if not entry.name.endswith((".dng", ".tmp"))]
        if foreign:
            # Never delete or overwrite someone's real SID download.
            raise ValueError(
                f"{folder} holds files that are not synthetic DNGs (e.g. {foreign[0]}); "
                "choose another --root for the synthetic set"
            )
        for entry in folder.iterdir():
            entry.unlink()


def generate_synthetic_sid(
    root: str | os.PathLike,
    *,
    seed: int = 0,
    height: int = 256,
    width: int = 384,
    train_scenes: int = 4,
    val_scenes: int = 1,
    test_scenes: int = 2,
    bursts: int = 2,
    overwrite: bool = False,
    workers: int | None = None,
) -> Path:
    """Writes (or reuses) a synthetic SID Sony set under root and returns root.

    The manifest is written last, so a set whose generation was interrupted has none and is
    regenerated; a set made with other parameters is regenerated too. Scenes are rendered by
    `workers` processes (default: 2 for sets of more than a few megapixels, else this process,
    since starting a worker costs about a second); the files do not depend on the worker count.
    """
    _check_size(height, width)
    for label, value in (("train_scenes", train_scenes), ("val_scenes", val_scenes), ("test_scenes", test_scenes)):
        if value < 0 or value > 9999:
            raise ValueError(f"{label} must be between 0 and 9999, got {value}")
    if train_scenes + val_scenes + test_scenes == 0:
        raise ValueError("at least one of train_scenes, val_scenes, test_scenes must be positive")
    if not 1 <= bursts <= 99:
        raise ValueError(f"bursts must be between 1 and 99, got {bursts}")

    root = Path(root).absolute()
    parameters = _parameters(seed, height, width, train_scenes, val_scenes, test_scenes, bursts)
    if not overwrite and _existing_set_is_complete(root, parameters):
        return root

    root.mkdir(parents=True, exist_ok=True)
    (root / MANIFEST_NAME).unlink(missing_ok=True)
    _clear_previous_set(root)

    scene_counts = {"train": train_scenes, "val": val_scenes, "test": test_scenes}
    scene_ids = [
        (split, SPLIT_DIGIT[split] * 10000 + ordinal + 1)
        for split in ("train", "val", "test")
        for ordinal in range(scene_counts[split])
    ]
    list_lines: dict[str, list[str]] = {split: [] for split in scene_counts}
    written: dict[str, int] = {}
    if workers is None:
        workers = 2 if len(scene_ids) * height * width > 4_000_000 else 0
    jobs = [(str(root), seed, scene_id, height, width, bursts) for _, scene_id in scene_ids]
    progress = tqdm(total=len(jobs), desc="synthetic SID scenes", unit="scene", leave=False)
    try:
        if workers <= 0:
            results = []
            for job in jobs:
                results.append(_write_scene(*job))
                progress.update()
        else:
            # Not fork: the parent may hold OpenMP (torch, LibRaw) threads, which a forked child inherits broken.
            context = multiprocessing.get_context("spawn")
            with concurrent.futures.ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=context) as executor:
                futures = [executor.submit(_write_scene, *job) for job in jobs]
                for future in concurrent.futures.as_completed(futures):
                    future.result()
                    progress.update()
                results = [future.result() for future in futures]
    finally:
        progress.close()
    for (split, _), (files, lines) in zip(scene_ids, results):
        written.update(files)
        list_lines[split].extend(lines)

    def record(file_path: Path) -> None:
        written[file_path.relative_to(root).as_posix()] = file_path.stat().st_size

    for split, lines in list_lines.items():
        list_path = root / LIST_FILE_NAME[split]
        _write_atomically(list_path, "".join(line + "\n" for line in sorted(lines)).encode())
        record(list_path)

    manifest = {"parameters": parameters, "files": written}
    _write_atomically(root / MANIFEST_NAME, (json.dumps(manifest, indent=1) + "\n").encode())
    return root


def generate_full_size_sid(
    root: str | os.PathLike, *, seed: int = 0, scenes: int = 2, bursts: int = 1, overwrite: bool = False
) -> Path:
    """Sony-sized (4256x2848) frames for benchmarks: `scenes` training scenes, empty val/test
    lists. The photos are upscaled to fill the frame, so only sizes and throughput are realistic."""
    return generate_synthetic_sid(
        root,
        seed=seed,
        height=FULL_SIZE_HEIGHT,
        width=FULL_SIZE_WIDTH,
        train_scenes=scenes,
        val_scenes=0,
        test_scenes=0,
        bursts=bursts,
        overwrite=overwrite,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m data.synthetic", description="Write a synthetic SID Sony data set of DNG files."
    )
    parser.add_argument("--root", required=True, type=Path, help="folder to write Sony/ and the list files into")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--height", type=int, default=256, help="frame height, a multiple of 32")
    parser.add_argument("--width", type=int, default=384, help="frame width, a multiple of 32")
    parser.add_argument("--train-scenes", type=int, default=4)
    parser.add_argument("--val-scenes", type=int, default=1)
    parser.add_argument("--test-scenes", type=int, default=2)
    parser.add_argument("--bursts", type=int, default=2, help="short-exposure bursts per scene")
    parser.add_argument("--overwrite", action="store_true", help="regenerate even if a matching set exists")
    parser.add_argument("--workers", type=int, default=None, help="scene-rendering processes (0: this one)")
    arguments = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        root = generate_synthetic_sid(
            arguments.root,
            seed=arguments.seed,
            height=arguments.height,
            width=arguments.width,
            train_scenes=arguments.train_scenes,
            val_scenes=arguments.val_scenes,
            test_scenes=arguments.test_scenes,
            bursts=arguments.bursts,
            overwrite=arguments.overwrite,
            workers=arguments.workers,
        )
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    manifest = json.loads((root / MANIFEST_NAME).read_text())
    print(f"{root}: {len(manifest['files'])} files ready in {time.perf_counter() - start:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
