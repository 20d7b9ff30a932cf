"""Metric modes (float / the DBF/DBLE authors' uint8 truncation), mono metrics, per-ratio means and
the authors' training protocol."""
import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from harness.config import load_config
from harness.evaluate import evaluate
from helpers.metrics import psnr, ssim
from harness.setup import build_eval_dataset, build_float_model, split_pairs
from data.sid import read_list, select_training_pairs
from test_train import write_run_config


def test_uint8_mode_equals_skimage_on_truncated_images():
    generator = np.random.default_rng(3)
    target = generator.uniform(0, 1, (3, 40, 48)).astype(np.float32)
    # Out-of-range values as a network produces them: the authors clip before truncating.
    prediction = target + generator.normal(0, 0.05, target.shape).astype(np.float32) + 0.02
    truncated_target = (np.clip(target, 0, 1).transpose(1, 2, 0) * 255).astype(np.uint8)
    truncated_prediction = (np.clip(prediction, 0, 1).transpose(1, 2, 0) * 255).astype(np.uint8)
    expected_psnr = peak_signal_noise_ratio(truncated_target, truncated_prediction)
    expected_ssim = structural_similarity(truncated_target, truncated_prediction, channel_axis=2)
    assert psnr(torch.from_numpy(prediction), torch.from_numpy(target), "uint8") == pytest.approx(expected_psnr, abs=1e-9)
    assert ssim(torch.from_numpy(prediction), torch.from_numpy(target), "skimage", "uint8") == \
        pytest.approx(expected_ssim, abs=1e-9)
    # Truncation changes the number: float and uint8 scores are not interchangeable.
    assert abs(psnr(prediction, target, "float") - expected_psnr) > 1e-3
    # Mono images (1,H,W) are scored as 2-D images.
    mono_expected = peak_signal_noise_ratio(truncated_target[..., 1], truncated_prediction[..., 1])
    assert psnr(prediction[1:2], target[1:2], "uint8") == pytest.approx(mono_expected, abs=1e-9)
    with pytest.raises(ValueError, match="val.metric_precision.*float, uint8"):
        psnr(prediction, target, "uint16")


def test_per_ratio_means_average_to_the_overall_mean_with_mono_beside_rgb(synthetic_sid_root, tmp_path):
    config = load_config(write_run_config(tmp_path, synthetic_sid_root, model__width=0.125,
                                          val__metric_precision="uint8"))
    torch.manual_seed(0)
    model = build_float_model(config)
    dataset = build_eval_dataset(config, "test", model.input_kind)
    means, rows = evaluate(model, dataset, "cpu", metric_precision=config.val.metric_precision)
    ratios = sorted({row["ratio"] for row in rows})
    assert len(ratios) >= 2, "the synthetic test split should mix exposure ratios"
    assert means["metric_precision"] == "uint8" and means["ssim_variant"] == "skimage"
    for key in ("psnr", "ssim", "mono_psnr", "mono_ssim"):
        weighted = sum(means[f"images_x{r:g}"] * means[f"{key}_x{r:g}"] for r in ratios) / means["images"]
        assert weighted == pytest.approx(means[key], rel=1e-12), key
    for ratio in ratios:
        values = [row["psnr"] for row in rows if row["ratio"] == ratio]
        assert means[f"psnr_x{ratio:g}"] == pytest.approx(np.mean(values))
    assert means["images"] == len(rows) == sum(means[f"images_x{r:g}"] for r in ratios)


def test_dble_train_protocol_is_the_authors_181_pairs(sid_lists_dir):
    train = read_list(sid_lists_dir / "Sony_train_list.txt", "/SID")
    val = read_list(sid_lists_dir / "Sony_val_list.txt", "/SID")
    pairs = select_training_pairs(train, val, "dble")
    assert len(pairs) == 181
    assert {p.ratio for p in pairs} == {100.0, 300.0}
    assert all(p.burst == 0 and p.input_exposure == 0.1 for p in pairs)
    assert len({p.short_path for p in pairs}) == 181
    assert select_training_pairs(train, val, "all") == train
    with pytest.raises(ValueError, match="train protocol 'sid'; choices: all, dble"):
        select_training_pairs(train, val, "sid")


def test_dble_train_protocol_on_the_loader_reads_train_and_val_lists(synthetic_sid_root, tmp_path):
    config = load_config(write_run_config(tmp_path, synthetic_sid_root, data__train_protocol="dble"))
    pairs = split_pairs(config, "train")
    assert pairs and all(p.burst == 0 and p.input_exposure == 0.1 for p in pairs)
    val_scenes = {p.scene for p in read_list(synthetic_sid_root / "Sony_val_list.txt", synthetic_sid_root)}
    assert val_scenes & {p.scene for p in pairs}
