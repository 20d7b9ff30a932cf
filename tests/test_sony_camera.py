"""The embedded set's camera (Sony a7S colour and ELD noise) and its procedural scenes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import rawpy

from data.dead_leaves import dead_leaves
from data.raw_cache import ground_truth_postprocess
from data.sid import read_list
from data.sony_a7s import (
    BLACK_LEVEL,
    LINEAR_SRGB_FROM_CAMERA,
    SID_ISO_VALUES,
    noise_parameters,
    noisy_raw,
)
from data.synthetic import MANIFEST_NAME, PROCEDURAL_SOURCE, render_scene, scene_source, write_dng
from test_data import psnr


def test_long_exposure_develops_to_the_clean_scene_under_the_sony_matrix(synthetic_sid_root):
    parameters = json.loads((synthetic_sid_root / MANIFEST_NAME).read_text())["parameters"]
    size = parameters["height"], parameters["width"]
    long_paths = sorted((synthetic_sid_root / "Sony" / "long").glob("*.dng"))
    sources = set()
    for long_path in long_paths:
        scene = render_scene(parameters["seed"], int(long_path.name[:5]), *size)
        sources.add(scene.photo_name == PROCEDURAL_SOURCE)
        with rawpy.imread(str(long_path)) as raw:
            # LibRaw develops with the a7S's camera -> sRGB matrix, read from the DNG.
            np.testing.assert_allclose(np.asarray(raw.color_matrix)[:, :3], LINEAR_SRGB_FROM_CAMERA, atol=1e-4)
            np.testing.assert_allclose(raw.camera_whitebalance[:3], scene.white_balance_gains, rtol=1e-4)
            developed = ground_truth_postprocess(raw).astype(np.float64) / 65535
        reference = scene.reference
        # Tolerance: demosaicing (LibRaw's AHD) is the only loss, 31-40 dB at 128x192, sharp
        # dead-leaves edges the lowest; colours (per-channel means) agree to 0.5 %.
        assert psnr(developed, reference) > 30, long_path.name
        np.testing.assert_allclose(developed.mean(axis=(0, 1)), reference.mean(axis=(0, 1)), atol=0.005)
    assert sources == {True, False}, "the default set mixes photos and procedural scenes"


@pytest.mark.parametrize("iso", [100, 800, 1600, 2000, 6400, 25600])
def test_noise_statistics_match_the_model_per_iso(iso, tmp_path):
    """Flat bands at known signal levels, written as a DNG and read back with rawpy: mean and
    variance against signal follow ELD's model at this ISO (variance slope = system gain K,
    intercept = read + row + quantisation variance)."""
    noise = noise_parameters(iso)
    levels = np.array([0.0, 10.0, 40.0, 160.0, 640.0])
    band_width = 64
    signal = np.repeat(levels, band_width)[None, :].repeat(512, axis=0).astype(np.float32)
    raw_values = noisy_raw(signal, noise, np.random.default_rng(iso))
    path = write_dng(tmp_path / f"flat_{iso}.dng", raw_values, white_balance_gains=(2.0, 1.0, 1.5),
                     exposure_time=0.1, iso=iso, f_number=4.0)
    with rawpy.imread(str(path)) as raw:
        values = raw.raw_image_visible.astype(np.float64)
    means, variances = [], []
    for band, level in enumerate(levels):
        band_values = values[:, band * band_width : (band + 1) * band_width]
        means.append(band_values.mean() - BLACK_LEVEL)
        variances.append(band_values.var())
        expected_variance = noise.variance(level)
        standard_error = np.sqrt(expected_variance / band_values.size)
        assert abs(means[-1] - level) < 5 * standard_error + 0.05, (iso, level, means[-1])
        assert variances[-1] == pytest.approx(expected_variance, rel=0.08), (iso, level)
    # Weighted: a sample variance's error grows with the variance itself.
    slope, intercept = np.polyfit(levels, variances, 1, w=1 / np.asarray(variances))
    assert slope == pytest.approx(noise.gain, rel=0.08)
    assert intercept == pytest.approx(noise.variance(0.0), rel=0.12)


def test_noise_grows_with_iso_in_electrons_terms():
    """Higher ISO: more DN per electron, so a fixed DN signal carries fewer electrons and is noisier."""
    gains = [noise_parameters(iso).gain for iso in SID_ISO_VALUES]
    assert all(later > earlier for earlier, later in zip(gains, gains[1:]))
    relative_noise = [np.sqrt(noise_parameters(iso).variance(100.0)) / 100.0 for iso in (200, 1600, 25600)]
    assert relative_noise[0] < relative_noise[1] < relative_noise[2]


def test_procedural_scenes_are_deterministic_and_differ_by_seed():
    first = dead_leaves(64, 96, np.random.default_rng([5, 1]))
    again = dead_leaves(64, 96, np.random.default_rng([5, 1]))
    other = dead_leaves(64, 96, np.random.default_rng([6, 1]))
    np.testing.assert_array_equal(first, again)
    assert np.abs(first - other).mean() > 0.01
    assert first.dtype == np.float32 and first.min() >= 0 and first.max() <= 1
    procedural_id = next(scene for scene in range(1, 10) if scene_source(0, scene) == PROCEDURAL_SOURCE)
    scene, repeat = render_scene(0, procedural_id, 64, 96), render_scene(0, procedural_id, 64, 96)
    np.testing.assert_array_equal(scene.long_signal, repeat.long_signal)


def test_procedural_scenes_have_natural_image_spectra():
    """Natural images have a power spectrum close to 1/f^2; a slope between -3 and -1.3."""
    image = dead_leaves(256, 256, np.random.default_rng(0)).mean(axis=-1)
    power = np.abs(np.fft.fftshift(np.fft.fft2(image - image.mean()))) ** 2
    rows, columns = np.indices(power.shape)
    radius = np.hypot(rows - 128, columns - 128).astype(int)
    radial = np.bincount(radius.ravel(), power.ravel()) / np.bincount(radius.ravel())
    frequencies = np.arange(4, 100)
    slope = np.polyfit(np.log(frequencies), np.log(radial[frequencies]), 1)[0]
    assert -3.0 < slope < -1.3, slope


def test_validation_and_test_photos_are_never_used_in_training():
    for seed in range(3):
        training = {scene_source(seed, scene) for scene in range(1, 41)}
        held_out = {scene_source(seed, digit * 10000 + scene) for digit in (1, 2) for scene in range(1, 11)}
        assert PROCEDURAL_SOURCE in training and PROCEDURAL_SOURCE not in held_out
        assert not (training & held_out), seed


def test_test_split_of_the_embedded_set_holds_only_held_out_photos(synthetic_sid_root):
    for split, digit in (("test", 1), ("val", 2)):
        for pair in read_list(synthetic_sid_root / f"Sony_{split}_list.txt", synthetic_sid_root):
            assert pair.scene // 10000 == digit
            assert scene_source(0, pair.scene) != PROCEDURAL_SOURCE


def test_parallel_generation_writes_the_same_files(tmp_path):
    from data.synthetic import generate_synthetic_sid

    arguments = dict(seed=1, height=64, width=96, train_scenes=2, val_scenes=0, test_scenes=1, bursts=1)
    serial = generate_synthetic_sid(tmp_path / "serial", workers=0, **arguments)
    parallel = generate_synthetic_sid(tmp_path / "parallel", workers=2, **arguments)
    names = sorted(path.relative_to(serial).as_posix() for path in serial.rglob("*") if path.is_file())
    assert names == sorted(path.relative_to(parallel).as_posix() for path in parallel.rglob("*") if path.is_file())
    for name in names:
        assert (serial / name).read_bytes() == (parallel / name).read_bytes(), name
