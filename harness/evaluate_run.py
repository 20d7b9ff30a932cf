"""Evaluating a saved checkpoint on a split: what test.py does, and what train.py does at the end.

A checkpoint carries the config it was trained with, so the network (and, for quantized runs, the
exact MQBench preparation with its special layers) is rebuilt from the checkpoint itself; the run
config supplies only data and evaluation settings."""
import json
import warnings
from pathlib import Path

import numpy as np

from checkpoints.training import CheckpointSaver
from harness.config import Config, ConfigError
from harness.evaluate import evaluate
from helpers.files import check_writable, write_csv_atomic, write_text_atomic
from helpers.metrics import psnr, ssim
from helpers.ratios import means_by_ratio
from harness.records import format_table
from checkpoints.safe_load import load_torch_file
from harness.setup import (build_eval_dataset, build_float_model, check_split_lists, data_source, ensure_data,
                           resolve_device, split_selection)
from data.sid import develop_short_exposure_baseline
from models import input_kind
from checkpoints.weights import load_state


def default_checkpoint(config: Config) -> Path:
    saver = CheckpointSaver(config.run_dir / "checkpoints", create=False)
    for candidate in (saver.best(), saver.latest(),
                      config.load_quant_model if config.quant else None, config.load_model):
        if candidate:
            return Path(candidate)
    raise ConfigError(f"no checkpoint to evaluate: {saver.folder} is empty and load_model is not set "
                      "(pass --checkpoint PATH)")


def evaluation_folder(config: Config, split: str, checkpoint_path, out_dir=None, overwrite=False) -> Path:
    """Where a stand-alone evaluation goes: `--out`, else `eval_<split>_<checkpoint name>/` in the run
    folder, never the training run's own test_results/. An earlier evaluation is kept unless `overwrite`."""
    out_dir = Path(out_dir) if out_dir else config.run_dir / f"eval_{split}_{Path(checkpoint_path).stem}"
    if (out_dir / "summary.json").exists() and not overwrite:
        raise ConfigError(f"{out_dir} already holds an evaluation; pass --overwrite to replace it or --out FOLDER")
    return out_dir


def load_network(config: Config, checkpoint_path, device):
    """The network stored in `checkpoint_path`: ours (float or quantized) or plain/authors' weights."""
    checkpoint_path = Path(checkpoint_path)
    payload = load_torch_file(checkpoint_path, what="checkpoint")
    trained_with = Config.model_validate(payload["config"]) if isinstance(payload, dict) and "config" in payload else config
    if isinstance(payload, dict) and payload.get("quantized"):
        from quant import load_quantized_state, prepare_quantized_model
        with warnings.catch_warnings():  # the special-layer notes were reported when the run started
            warnings.simplefilter("ignore")
            model = prepare_quantized_model(build_float_model(trained_with), trained_with.quant_scheme,
                                            trained_with.extra_quantizer_dict.special_layer,
                                            trained_with.quantize_output)
        load_quantized_state(model, payload["model"])
    else:
        model = build_float_model(trained_with)
        load_state(model, payload, checkpoint_path)
    # The cameras of the training data (None: weights from elsewhere, or an older checkpoint).
    model.training_cameras = payload.get("data_cameras") if isinstance(payload, dict) else None
    return model.to(device).eval()


def baseline_rows(dataset, ssim_variant, metric_precision="float", develop=None):
    """The naive baseline: the short exposure amplified by the ratio and developed by rawpy (`develop`:
    a data set's own baseline_image, data/datasets.py)."""
    develop = develop or (lambda pair: develop_short_exposure_baseline(pair.short_path, pair.ratio))
    rows = []
    for pair in dataset.pairs:
        target = np.asarray(dataset.cache.rgb(pair.long_path), dtype=np.float32) / 65535.0
        developed = develop(pair)
        height, width = (min(a, b) // 32 * 32 for a, b in zip(target.shape[:2], developed.shape[:2]))
        target, developed = target[:height, :width], developed[:height, :width]
        rows.append({"baseline_psnr": psnr(developed, target, metric_precision),
                     "baseline_ssim": ssim(developed, target, ssim_variant, metric_precision)})
    return rows


def evaluate_checkpoint(config: Config, checkpoint_path, split="test", device=None, with_baseline=False,
                        save_images=None, out_dir=None):
    device = device or resolve_device(config)
    out_dir = Path(out_dir or config.run_dir / f"{split}_results")
    check_writable(out_dir)  # before the evaluation, not after it
    model = load_network(config, checkpoint_path, device)
    ensure_data(config)
    check_split_lists(config, (split,))
    dataset = build_eval_dataset(config, split, input_kind(config.model.name))
    save_images = config.output.save_images if save_images is None else save_images
    precision, variant = config.val.metric_precision, config.val.ssim
    means, rows = evaluate(model, dataset, device, variant, config.val.tile_size, config.val.tile_overlap,
                           image_dir=out_dir / "images" if save_images else None, description=f"test ({split})",
                           statistics_passes=config.val.tile_statistics_passes, metric_precision=precision)
    list_name, protocol, exclude, _ = split_selection(config, split)
    report = {"split": split, "protocol": protocol, "exclude_misaligned": exclude, **means,
              "checkpoint": str(checkpoint_path), "data_root": str(Path(config.data.root).resolve()),
              "list": str(list_name)}
    if with_baseline:
        for row, extra in zip(rows, baseline_rows(dataset, variant, precision, data_source(config).baseline_image)):
            row.update(extra)
        report["baseline_psnr"] = float(np.mean([r["baseline_psnr"] for r in rows]))
        report["baseline_ssim"] = float(np.mean([r["baseline_ssim"] for r in rows]))
        report.update(means_by_ratio(rows, ("baseline_psnr", "baseline_ssim")))
    write_csv_atomic(out_dir / "per_image.csv",
                     [{**r, "ssim_variant": variant, "metric_precision": precision} for r in rows])
    write_text_atomic(out_dir / "summary.json", json.dumps(report, indent=2))
    print(f"\n{split} split, protocol {report['protocol']}, {means['images']} images, checkpoint {checkpoint_path}")
    print(f"metric: {precision} images, SSIM {variant}" +
          (" (the DBF/DBLE authors' uint8 truncation)" if precision == "uint8" else ""))
    print(format_table(*_report_table(report, with_baseline)))
    print(f"per-image results: {out_dir / 'per_image.csv'}")
    return report


def _report_table(report, with_baseline):
    """One line per method: overall PSNR/SSIM (mono beside RGB when the network has a mono head), then
    PSNR per exposure ratio."""
    ratios = [key.removeprefix("images_") for key in report if key.startswith("images_")]
    ssim_column = f"SSIM ({report['ssim_variant']}, {report['metric_precision']})"
    line = {"method": "trained model", "PSNR (dB)": report["psnr"], ssim_column: report["ssim"]}
    if "mono_psnr" in report:
        line.update({"mono PSNR": report["mono_psnr"], "mono SSIM": report["mono_ssim"]})
    line.update({f"PSNR {ratio} ({report[f'images_{ratio}']})": report[f"psnr_{ratio}"] for ratio in ratios})
    table = [line]
    if with_baseline:
        baseline = {"method": "naive baseline (amplified short exposure)", "PSNR (dB)": report["baseline_psnr"],
                    ssim_column: report["baseline_ssim"]}
        baseline.update({f"PSNR {ratio} ({report[f'images_{ratio}']})": report[f"baseline_psnr_{ratio}"]
                         for ratio in ratios})
        table.append(baseline)
    return table, list(dict.fromkeys(key for row in table for key in row))
