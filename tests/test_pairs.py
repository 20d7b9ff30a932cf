"""Your own camera's pairs (data.dataset: pairs): a CSV of short/long raws, levels from each file's
metadata, every 2x2 Bayer phase brought to RGGB, refusals and one-line errors, and the camera that
checkpoints record and enhance.py warns about."""
import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from clitools import assert_one_line_error, run_here
from data import pairs as camera_pairs
from data.raw_cache import RawCache
from data.sid import SIDEvalDataset, SIDTrainDataset
from data.synthetic import write_dng
from test_train import write_run_config

HEIGHT, WIDTH = 66, 98  # one spare row and column: shifted phases drop them and still leave 64x96
GAINS = (2.0, 1.0, 1.6)  # as-shot white balance: raw R and B sit below G on a grey scene
WHITE = 16383
CAMERA = ("Example", "Cam 1")
PATTERN_BLACK = {"RGGB": 512, "BGGR": 64, "GRBG": 1024, "GBRG": 200}
GREY_LEVEL = 6000.0  # long exposure, DN above black for G


def flat_grey(pattern: str, black: int, scale: float) -> np.ndarray:
    """The mosaic of a flat grey scene: each site's raw value is the grey divided by its colour's gain."""
    colour_of = {"R": 0, "G": 1, "B": 2}
    mosaic = np.empty((HEIGHT, WIDTH), dtype=np.float64)
    for row in (0, 1):
        for column in (0, 1):
            gain = GAINS[colour_of[pattern[row * 2 + column]]]
            mosaic[row::2, column::2] = GREY_LEVEL * scale / gain
    return np.round(mosaic + black).astype(np.uint16)


def write_pair(folder: Path, pattern: str, camera=CAMERA) -> tuple[Path, Path]:
    black = PATTERN_BLACK[pattern]
    common = dict(white_balance_gains=GAINS, iso=100, f_number=4.0, black_level=black, white_level=WHITE,
                  pattern=pattern, camera=camera)
    short = write_dng(folder / f"{pattern}_short.dng", flat_grey(pattern, black, 0.01), exposure_time=0.1, **common)
    long = write_dng(folder / f"{pattern}_long.dng", flat_grey(pattern, black, 1.0), exposure_time=10.0, **common)
    return short, long


@pytest.fixture(scope="module")
def pairs_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("pairs")
    (root / "raw").mkdir()
    lines = ["short,long,ratio"]
    for pattern in PATTERN_BLACK:
        short, long = write_pair(root / "raw", pattern)
        lines.append(f"raw/{short.name},raw/{long.name}")  # ratio from the files' exposure times
    for split in ("train", "val", "test"):
        (root / f"{split}.csv").write_text("\n".join(lines) + "\n")
    return root


def test_every_bayer_phase_reaches_the_network_as_rggb_and_grey_stays_grey(pairs_root, tmp_path):
    pairs = camera_pairs.prepare_split(pairs_root, "test", "all", False, tmp_path / "cache", workers=0)
    assert [pair.short_path.name.split("_")[0] for pair in pairs] == list(PATTERN_BLACK)
    assert all(pair.ratio == pytest.approx(100.0) and pair.group == "x100" for pair in pairs)
    cache = RawCache(tmp_path / "cache")
    samples = [SIDEvalDataset([pair], cache, "mosaic")[0] for pair in pairs]
    # DN above black of each colour in the short exposures (whole DN, as written).
    expected = {colour: np.round(0.01 * GREY_LEVEL / gain) for colour, gain in zip("RGB", GAINS)}
    for pair, sample in zip(pairs, samples):
        network_input = sample["input"][0].numpy()
        assert network_input.shape == (64, 96)
        # R at (0, 0), G at (0, 1) and (1, 0), B at (1, 1): black subtracted, scaled by the ratio.
        for (row, column), colour in zip(((0, 0), (0, 1), (1, 0), (1, 1)), "RGGB"):
            sites = network_input[row::2, column::2]
            np.testing.assert_allclose(sites, expected[colour] * 100 / (WHITE - PATTERN_BLACK[pair.short_path.name[:4]]),
                                       rtol=2e-3, err_msg=f"{pair.short_path.name} {colour}")
        rgb = sample["rgb"].numpy()
        means = rgb.reshape(3, -1).mean(axis=1)
        assert means.min() > 0.2, means
        assert np.ptp(means) / means.mean() < 0.01, f"{pair.short_path.name}: developed grey is {means}"
        assert rgb.reshape(3, -1).std(axis=1).max() < 0.01  # flat, no demosaicing pattern from a wrong phase
    # Same scene, same phase whatever the file's pattern or black level: in DN above black (the input
    # is normalised by each file's own white - black range) the tensors are identical.
    def signal(pair, sample):
        return sample["input"] * (WHITE - PATTERN_BLACK[pair.short_path.name[:4]]) / pair.ratio

    for pair, sample in zip(pairs[1:], samples[1:]):
        torch.testing.assert_close(signal(pair, sample), signal(pairs[0], samples[0]), rtol=1e-5, atol=1e-4)
    # The training loader crops the same phase.
    for pair, sample in zip(pairs, samples):
        crop = SIDTrainDataset([pair], cache, 32, "mosaic", seed=1)[0]
        torch.testing.assert_close(crop["input"], sample["input"][:, :32, :32], rtol=0, atol=0)


def test_ratio_column_overrides_exposure_times_and_header_and_comments_are_skipped(pairs_root, tmp_path):
    list_file = pairs_root / "custom.csv"
    list_file.write_text("# my camera\nshort,long,ratio\nraw/RGGB_short.dng,raw/RGGB_long.dng,250\n\n"
                         "raw/BGGR_short.dng,raw/BGGR_long.dng,\n")
    read = camera_pairs.read_list(list_file)
    assert [pair.ratio for pair in read] == pytest.approx([250.0, 100.0])
    assert [pair.line for pair in read] == [3, 5]
    assert camera_pairs.cameras(read) == ["Example Cam 1"]


@pytest.mark.parametrize("line, expected", [
    ("raw/RGGB_short.dng,raw/nowhere_long.dng", "custom.csv:2: long raw not found"),
    ("raw/nowhere.dng,raw/RGGB_long.dng,100", "custom.csv:2: short raw not found"),
    ("raw/RGGB_short.dng", "custom.csv:2: expected 'short_raw,long_raw[,ratio]'"),
    ("raw/RGGB_short.dng,raw/RGGB_long.dng,fast", "custom.csv:2: ratio 'fast' is not a number"),
])
def test_bad_csv_lines_are_one_line_naming_file_and_line(pairs_root, tmp_path, capsys, line, expected):
    (pairs_root / "custom.csv").write_text(f"short,long\n{line}\n")
    config = write_run_config(tmp_path, pairs_root, data__dataset="pairs", data__train_list="custom.csv")
    status, _, err = run_here(capsys, "train.py", "--config", config, cwd=tmp_path)
    assert_one_line_error(status, err, expected)


def _non_bayer_dng(path: Path, repeat: list, pattern: list) -> Path:
    """A DNG whose colour filter array is not a 2x2 Bayer pattern (pidng writes any CFA tags)."""
    from pidng.core import RAW2DNG
    from pidng.defs import CalibrationIlluminant, DNGVersion, Orientation, PhotometricInterpretation
    from pidng.dng import DNGTags, Tag
    tags = DNGTags()
    for tag, value in ((Tag.ImageWidth, 96), (Tag.ImageLength, 72), (Tag.TileWidth, 96), (Tag.TileLength, 72),
                       (Tag.Orientation, Orientation.Horizontal), (Tag.SamplesPerPixel, 1), (Tag.BitsPerSample, 16),
                       (Tag.PhotometricInterpretation, PhotometricInterpretation.Color_Filter_Array),
                       (Tag.CFARepeatPatternDim, repeat), (Tag.CFAPattern, pattern), (Tag.BlackLevel, 0),
                       (Tag.WhiteLevel, WHITE), (Tag.CalibrationIlluminant1, CalibrationIlluminant.D65),
                       (Tag.ColorMatrix1, [[1, 1], [0, 1], [0, 1], [0, 1], [1, 1], [0, 1], [0, 1], [0, 1], [1, 1]]),
                       (Tag.AsShotNeutral, [[1, 1], [1, 1], [1, 1]]), (Tag.DNGVersion, DNGVersion.V1_4)):
        tags.set(tag, value)
    converter = RAW2DNG()
    converter.options(tags, path="", compress=False)
    path.write_bytes(bytes(converter.convert(np.full((72, 96), 1000, np.uint16))))
    return path


X_TRANS = [1, 1, 0, 1, 1, 2, 1, 1, 2, 1, 1, 0, 2, 0, 1, 0, 2, 1, 1, 1, 2, 1, 1, 0, 1, 1, 0, 1, 1, 2, 0, 2, 1, 2, 0, 1]


@pytest.mark.parametrize("name, repeat, pattern, expected", [
    ("xtrans", [6, 6], X_TRANS, "an X-Trans sensor (6x6 colour filter pattern) is not supported"),
    ("cygm", [2, 2], [3, 5, 1, 4], "unsupported CFA pattern"),
])
def test_non_bayer_sensors_are_refused_in_one_line(pairs_root, tmp_path, capsys, name, repeat, pattern, expected):
    short = _non_bayer_dng(tmp_path / f"{name}_short.dng", repeat, pattern)
    long = _non_bayer_dng(tmp_path / f"{name}_long.dng", repeat, pattern)
    (tmp_path / "odd.csv").write_text(f"{short},{long},100\n")
    config = write_run_config(tmp_path, pairs_root, data__dataset="pairs", data__train_list=str(tmp_path / "odd.csv"),
                              data__cache_dir=str(tmp_path / "cache"))
    status, _, err = run_here(capsys, "train.py", "--config", config, cwd=tmp_path)
    assert status == 2 and "Traceback" not in err
    assert expected in err.strip().splitlines()[-1] and f"{name}_short.dng" in err.strip().splitlines()[-1]


def test_size_mismatch_between_short_and_long_is_one_line(pairs_root, tmp_path, capsys):
    common = dict(white_balance_gains=GAINS, iso=100, f_number=4.0, pattern="RGGB", camera=CAMERA)
    short = write_dng(tmp_path / "s.dng", flat_grey("RGGB", 512, 0.01), exposure_time=0.1, **common)
    long = write_dng(tmp_path / "l.dng", flat_grey("RGGB", 512, 1.0)[:, :64], exposure_time=10.0, **common)
    (tmp_path / "mismatch.csv").write_text(f"{short},{long}\n")
    config = write_run_config(tmp_path, pairs_root, data__dataset="pairs",
                              data__train_list=str(tmp_path / "mismatch.csv"), data__cache_dir=str(tmp_path / "cache"))
    status, _, err = run_here(capsys, "train.py", "--config", config, cwd=tmp_path)
    assert status == 2 and "Traceback" not in err and "epoch 1" not in err
    assert "differ in size" in err.strip().splitlines()[-1]


def test_checkpoint_records_camera_and_enhance_warns_about_another(pairs_root, tmp_path, capsys):
    config = write_run_config(tmp_path, pairs_root, data__dataset="pairs", data__patch_size=32,
                              data__cache_dir=str(tmp_path / "cache"), schedule__epochs=1, schedule__iters_per_epoch=1)
    status, _, err = run_here(capsys, "train.py", "--config", config, cwd=tmp_path)
    assert status == 0, err[-3000:]
    checkpoint_path = next((tmp_path / "results" / "tiny" / "checkpoints").glob("best_*.pth"))
    assert torch.load(checkpoint_path, weights_only=False)["data_cameras"] == ["Example Cam 1"]
    rows = list(csv.DictReader((tmp_path / "results" / "tiny" / "test_results" / "per_image.csv").open()))
    assert {row["group"] for row in rows} == {"x100"}
    assert json.loads((tmp_path / "results" / "tiny" / "test_results" / "summary.json").read_text())["images_x100"] == 4

    (tmp_path / "other").mkdir()
    other_short, _ = write_pair(tmp_path / "other", "GBRG", camera=("Kodak", "DC50"))
    own_short = pairs_root / "raw" / "BGGR_short.dng"
    status, _, err = run_here(capsys, "enhance.py", own_short, other_short, other_short.parent / "GBRG_long.dng",
                              "--checkpoint", checkpoint_path, "--out", tmp_path / "out", "--ratio", "100", "--crop",
                              "--tile-size", "0", cwd=tmp_path)
    assert status == 0, err[-3000:]
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1  # once for the foreign camera, none for the training camera
    assert "Kodak DC50" in warnings[0] and "Example Cam 1" in warnings[0] and "data.dataset: pairs" in warnings[0]


def test_enhance_prepares_every_phase_as_the_loader(pairs_root, tmp_path):
    from clitools import entry_point
    enhance = entry_point("enhance.py")
    pairs = camera_pairs.prepare_split(pairs_root, "test", "all", False, tmp_path / "cache", workers=0)
    for pair in pairs:
        loader_input = SIDEvalDataset([pair], RawCache(tmp_path / "cache"), "mosaic")[0]["input"]
        enhance_input = enhance.read_input(pair.short_path, pair.ratio, crop=True)[0]
        torch.testing.assert_close(enhance_input, loader_input, rtol=0, atol=0)


def test_synthetic_pairs_lists_name_the_sid_stand_in_with_ratios_from_exposure_times(synthetic_sid_root, tmp_path):
    import shutil
    from data.synthetic_mcr import write_synthetic_pairs_lists
    from data.sid import read_list
    root = tmp_path / "sid"
    shutil.copytree(synthetic_sid_root, root)
    write_synthetic_pairs_lists(root)
    for split in ("train", "val", "test"):
        sid = read_list(root / f"Sony_{split}_list.txt", root)
        listed = camera_pairs.read_split(root, split)
        assert [p.short_path.resolve() for p in listed] == [p.short_path.resolve() for p in sid]
        # 10 s / 0.033 s is 303 from the files; SID's loader caps it at 300.
        assert [p.ratio for p in listed] == pytest.approx([p.gt_exposure / p.input_exposure for p in sid], rel=1e-5)


def test_pair_without_exposure_times_needs_the_ratio_column(tmp_path):
    common = dict(white_balance_gains=GAINS, iso=100, f_number=4.0, pattern="RGGB", camera=CAMERA)
    write_dng(tmp_path / "s.dng", flat_grey("RGGB", 512, 0.01), exposure_time=0.0, **common)
    write_dng(tmp_path / "l.dng", flat_grey("RGGB", 512, 1.0), exposure_time=0.0, **common)
    (tmp_path / "pairs.csv").write_text("s.dng,l.dng\ns.dng,l.dng,100\n")
    with pytest.raises(ValueError, match=r"pairs.csv:1: s.dng records no exposure time; give the ratio as a third"):
        camera_pairs.read_list(tmp_path / "pairs.csv")
    (tmp_path / "pairs.csv").write_text("s.dng,l.dng,100\n")
    assert camera_pairs.read_list(tmp_path / "pairs.csv")[0].ratio == 100.0
