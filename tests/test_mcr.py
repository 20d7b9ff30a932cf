"""MCR (data.dataset: mcr): the authors' file names, amplifications, layout and split lists, read from
a tiny generated stand-in, and the training loop, test.py and a sweep run on it."""
import csv
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from clitools import REPOSITORY_ROOT, assert_one_line_error, entry_point, run_here
from harness.runner import run_entry_point
from data import mcr
from data.raw_cache import RawCache
from data.sid import SIDEvalDataset, SIDTrainDataset, finish_batch
from data.synthetic_mcr import generate_synthetic_mcr
from test_train import write_run_config

HEIGHT, WIDTH = 64, 96


@pytest.fixture(scope="module")
def mcr_root(tmp_path_factory) -> Path:
    """One training scene (indoor) and two test scenes (indoor and outdoor), 8 exposures each."""
    return generate_synthetic_mcr(tmp_path_factory.mktemp("mcr"), height=HEIGHT, width=WIDTH, train_scenes=1,
                                  val_scenes=0, test_scenes=2)


@pytest.mark.parametrize("name, scene, clock, gain, shutter, expected", [
    # By hand from the authors' rule: amplification = gt_expo / shutter width, gt_expo = 12287 below
    # scene 500 and 1023 from it on.
    ("C00001_48mp_0x8_0x1fff.tif", 1, 48, 8, 8191, 12287 / 8191),
    ("C00260_48mp_0x8_0x00ff.tif", 260, 48, 8, 255, 12287 / 255),
    ("C00499_48mp_0x8_0x007f.tif", 499, 48, 8, 127, 12287 / 127),
    ("C00500_48mp_0x8_0x03ff.tif", 500, 48, 8, 1023, 1.0),
    ("C00555_48mp_0x8_0x0007.tif", 555, 48, 8, 7, 1023 / 7),
    ("C00501_24mp_0x10_0x003f.tif", 501, 24, 16, 63, 1023 / 63),
])
def test_names_and_amplifications_follow_the_authors_rule(name, scene, clock, gain, shutter, expected):
    fields = mcr.parse_name(f"./Mono_Colored_RAW_Paired_DATASET/Color_RAW_Input/{name}")
    assert (fields.scene, fields.master_clock_mhz, fields.global_gain, fields.shutter_width) == (scene, clock, gain,
                                                                                                 shutter)
    assert mcr.amplification(fields) == pytest.approx(expected, rel=1e-12)
    assert mcr.exposure_group(fields.shutter_width) == name[-10:-4]
    assert mcr.parse_name("M_Align_00260_48mp_0x8_0x2fff.tif", "mono").shutter_width == 0x2FFF


@pytest.mark.parametrize("name", ["C0260_48mp_0x8_0x00ff.tif", "C00260_48mp_8_0x00ff.tif", "M00260_48mp_0x8_0x00ff.tif",
                                  "C00260_48mp_0x8_0xzz.tif"])
def test_a_name_that_does_not_parse_is_one_line_naming_it(name):
    with pytest.raises(ValueError, match="not an MCR colour file name") as caught:
        mcr.parse_name(name)
    assert name in str(caught.value) and "\n" not in str(caught.value)


def test_stand_in_has_mcr_layout_names_and_lists(mcr_root):
    lists = {kind: np.load(mcr_root / f"random_path_list/test/test_{kind}_path.npy") for kind in ("c", "m", "rgb")}
    assert {array.dtype.kind for array in lists.values()} == {"U"} and len(lists["c"]) == 16
    pairs = mcr.read_split(mcr_root, "test")
    # The authors' own parsing (train.py): scene from characters -23:-20, shutter width from -8:-4 as hex.
    for path, pair in zip(lists["c"], pairs):
        assert path.startswith("./Mono_Colored_RAW_Paired_DATASET/Color_RAW_Input/C")
        gt_expo = 12287 if int(path[-23:-20]) < 500 else 1023
        assert pair.ratio == gt_expo / int(path[-8:-4], 16)
    by_scene = {}
    for pair in pairs:
        by_scene.setdefault(pair.scene, set()).add(pair.shutter_width)
    assert by_scene == {2: {0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF, 0x2FFF},
                        501: {0x7, 0xF, 0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF}}
    import tifffile
    from PIL import Image
    mosaic = tifffile.imread(pairs[0].short_path)
    assert mosaic.dtype == np.uint8 and mosaic.shape == (HEIGHT, WIDTH)
    assert tifffile.imread(pairs[0].mono_path).shape == (HEIGHT, WIDTH)
    with Image.open(pairs[0].long_path) as rgb:
        assert rgb.format == "JPEG" and rgb.mode == "RGB"
    assert pairs[0].mono_path.name.startswith("M_Align_") and pairs[0].long_path.parent.name == "RGB_GT"


def test_validation_uses_a_val_list_when_there_is_one_else_the_test_list(mcr_root, tmp_path):
    assert mcr.resolve_list_file(mcr_root, "val") == mcr.resolve_list_file(mcr_root, "test")
    with_val = generate_synthetic_mcr(tmp_path, height=HEIGHT, width=WIDTH, train_scenes=1, val_scenes=1, test_scenes=1)
    assert mcr.resolve_list_file(with_val, "val").name == "val_c_path.npy"
    assert {p.scene for p in mcr.read_split(with_val, "val")} == {501}
    assert {p.scene for p in mcr.read_split(with_val, "test")} == {2}


def test_loader_scales_as_the_authors_and_supervises_mono_with_mono_gt(mcr_root, tmp_path):
    import tifffile
    from PIL import Image
    pairs = mcr.prepare_split(mcr_root, "test", "all", False, tmp_path / "cache", workers=0)
    pair = next(p for p in pairs if p.scene >= 500 and p.shutter_width == 0x1F)
    sample = SIDEvalDataset([pair], RawCache(tmp_path / "cache"), "mosaic")[0]
    raw = tifffile.imread(pair.short_path)
    expected_input = (raw / 255 * (1023 / 0x1F)).astype(np.float32)
    np.testing.assert_allclose(sample["input"][0].numpy(), expected_input, rtol=1e-6)
    mono = tifffile.imread(pair.mono_path)
    np.testing.assert_array_equal(sample["mono"][0].numpy(), (mono / 255).astype(np.float32))
    with Image.open(pair.long_path) as opened:
        rgb = np.asarray(opened)
    np.testing.assert_array_equal(sample["rgb"].numpy(), np.moveaxis(rgb / 255, 2, 0).astype(np.float32))
    assert sample["group"] == "0x001f"
    # The raw path that training uses (uint16 patches finished on the device) gives the same tensors.
    train = SIDTrainDataset([pair], RawCache(tmp_path / "cache"), 32, "mosaic", seed=3)
    floats = train[0]
    train.output_raw = True
    raw_sample = train[0]
    finished = finish_batch({k: (v[None] if torch.is_tensor(v) else [v]) for k, v in raw_sample.items()}, "mosaic")
    for key in ("input", "rgb", "mono"):
        torch.testing.assert_close(finished[key][0], floats[key], rtol=0, atol=0)


def _mcr_run_config(folder, root, **overrides):
    return write_run_config(folder, root, data__dataset="mcr", data__patch_size=32, schedule__epochs=1,
                            schedule__iters_per_epoch=2, data__max_val_pairs=4, **overrides)


@pytest.fixture(scope="module")
def mcr_run(mcr_root, tmp_path_factory):
    folder = tmp_path_factory.mktemp("mcr_run")
    config_path = _mcr_run_config(folder, mcr_root)
    assert _run(folder, "train.py", "--config", config_path) == 0
    return folder, config_path


def _run(folder, script, *args):
    """Exit status of `script args` run in this process from `folder` (output stays in pytest's capture)."""
    previous = os.getcwd()
    os.chdir(folder)
    try:
        return run_entry_point(entry_point(script).main, [str(a) for a in args])
    finally:
        os.chdir(previous)


def test_training_on_mcr_reports_per_exposure_groups_and_mono_gt_metrics(mcr_run):
    folder, _ = mcr_run
    run_dir = folder / "results" / "tiny"
    rows = list(csv.DictReader((run_dir / "test_results" / "per_image.csv").open()))
    assert len(rows) == 16
    assert {row["group"] for row in rows} == {mcr.exposure_group(w) for w in
                                              (0x7, 0xF, 0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF,
                                               0x2FFF)}
    assert all(row["mono_psnr"] for row in rows)
    summary = json.loads((run_dir / "test_results" / "summary.json").read_text())
    assert summary["images_0x03ff"] == 2 and summary["images_0x2fff"] == 1 and "psnr_0x0007" in summary
    assert not any(key.startswith("psnr_x") for key in summary)
    checkpoint = torch.load(next((run_dir / "checkpoints").glob("best_*.pth")), weights_only=False)
    assert checkpoint["data_cameras"] == [mcr.CAMERA]
    assert checkpoint["config"]["data"]["dataset"] == "mcr"


def test_test_py_scores_the_authors_way_with_reproduce_config(mcr_run, mcr_root):
    folder, _ = mcr_run
    checkpoint = next((folder / "results" / "tiny" / "checkpoints").glob("best_*.pth"))
    out_dir = folder / "reproduce"
    assert _run(folder, "test.py", "--config", REPOSITORY_ROOT / "configfile/reproduce_dble_mcr.yaml",
                "--checkpoint", checkpoint, "--out", out_dir, "--set", f"data.root={mcr_root}",
                "--set", "data.max_test_pairs=4") == 0
    summary = json.loads((out_dir / "summary.json").read_text())
    assert summary["metric_precision"] == "uint8" and summary["images"] == 4
    rows = list(csv.DictReader((out_dir / "per_image.csv").open()))
    assert all(row["mono_psnr"] and row["group"].startswith("0x") for row in rows)


def test_sweep_on_mcr_tables_per_exposure_group(mcr_root, tmp_path):
    base = _mcr_run_config(tmp_path, mcr_root, data__max_test_pairs=6)
    sweep_path = tmp_path / "mcr_sweep.yaml"
    sweep_path.write_text(yaml.safe_dump({"base": str(base), "grid": {"optim.lr": [1e-3, 2e-3]}}))
    assert _run(tmp_path, "sweep.py", "--config", sweep_path) == 0
    results = tmp_path / "results" / "mcr_sweep"
    rows = list(csv.DictReader((results / "summary.csv").open()))
    assert len(rows) == 2
    group_columns = [key for key in rows[0] if key.startswith("test_psnr_0x")]
    assert group_columns and all(rows[0][key] for key in group_columns)
    assert "test PSNR 0x" in (results / "summary.md").read_text()


def _copy_set(mcr_root, tmp_path):
    root = tmp_path / "mcr_copy"
    shutil.copytree(mcr_root, root)
    return root


def test_missing_ground_truth_is_one_line_naming_it(mcr_root, tmp_path, capsys):
    root = _copy_set(mcr_root, tmp_path)
    missing = mcr.read_split(root, "train")[0].mono_path
    missing.unlink()
    config = _mcr_run_config(tmp_path, root)
    status, _, err = run_here(capsys, "train.py", "--config", config, cwd=tmp_path)
    assert_one_line_error(status, err, "mono ground truth not found", missing.name)


def test_size_mismatch_is_one_line_naming_both_files(mcr_root, tmp_path, capsys):
    import tifffile
    root = _copy_set(mcr_root, tmp_path)
    mono_path = mcr.read_split(root, "train")[0].mono_path
    tifffile.imwrite(mono_path, np.zeros((HEIGHT, WIDTH - 32), dtype=np.uint8))
    config = _mcr_run_config(tmp_path, root)
    status, _, err = run_here(capsys, "train.py", "--config", config, cwd=tmp_path)
    # Decoding shows its progress first; the error is the one line after it, before any training step.
    assert status == 2 and "Traceback" not in err and "epoch 1" not in err, err[-2000:]
    assert "differ in size" in err.strip().splitlines()[-1] and mono_path.name in err.strip().splitlines()[-1]


def test_list_entry_that_does_not_parse_is_one_line_naming_list_and_entry(mcr_root, tmp_path, capsys):
    root = _copy_set(mcr_root, tmp_path)
    list_file = root / "random_path_list/train/train_c_path.npy"
    paths = np.load(list_file)
    paths[3] = paths[3].replace("_48mp_", "_fastclock_")
    np.save(list_file, paths)
    config = _mcr_run_config(tmp_path, root)
    status, _, err = run_here(capsys, "train.py", "--config", config, cwd=tmp_path)
    assert_one_line_error(status, err, "train_c_path.npy entry 3", "not an MCR colour file name")


def test_sid_protocols_are_refused_for_mcr(mcr_root, tmp_path, capsys):
    config = _mcr_run_config(tmp_path, mcr_root, data__test_protocol="dble")
    status, _, err = run_here(capsys, "train.py", "--config", config, cwd=tmp_path)
    assert_one_line_error(status, err, "test_protocol: dble is a SID protocol")


def test_enhance_reads_an_mcr_mosaic_as_the_loader(mcr_root, tmp_path):
    pair = mcr.prepare_split(mcr_root, "test", "all", False, tmp_path / "cache", workers=0)[0]
    loader_input = SIDEvalDataset([pair], RawCache(tmp_path / "cache"), "mosaic")[0]["input"]
    enhance_input = entry_point("enhance.py").read_input(pair.short_path, pair.ratio)[0]
    torch.testing.assert_close(enhance_input, loader_input, rtol=0, atol=0)
