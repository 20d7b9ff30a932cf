"""Repeated seeds, exact variant names and differences to a reference with a confidence interval."""
import csv
import json
import math

import numpy as np
import pytest
import yaml
from scipy import stats

from sweeps.summary import distinguishable, paired_difference
from sweeps.variants import expand, load_sweep
from test_sweep import run_sweep_cli
from test_train import write_run_config


def _rows(values, files):
    return [{"file": f, "psnr": v} for f, v in zip(files, values)]


def test_difference_interval_is_the_t_interval_of_per_seed_paired_means():
    files = ["a.dng", "b.dng", "c.dng"]
    reference = {0: _rows([20.0, 22.0, 25.0], files), 1: _rows([20.5, 21.0, 24.0], files),
                 2: _rows([19.0, 22.5, 25.5], files)}
    # Pairing is by (seed, file), whatever order the rows come in.
    variant = {0: _rows([25.3, 22.4, 20.2], files[::-1]), 1: _rows([20.6, 21.5, 24.1], files),
               2: _rows([19.1, 22.6, 26.0], files)}
    result = paired_difference(variant, reference)
    per_seed = [np.mean([0.2, 0.4, 0.3]), np.mean([0.1, 0.5, 0.1]), np.mean([0.1, 0.1, 0.5])]
    expected = stats.ttest_1samp(per_seed, 0.0).confidence_interval(0.95)
    half_width = stats.t.ppf(0.975, 2) * np.std(per_seed, ddof=1) / np.sqrt(3)
    assert result["difference"] == pytest.approx(np.mean(per_seed))
    assert (result["ci_low"], result["ci_high"]) == pytest.approx((expected.low, expected.high))
    assert result["ci_high"] - result["ci_low"] == pytest.approx(2 * half_width)
    assert result["ci_over"] == "3 seeds" and result["pairs"] == 9
    assert distinguishable(result) == "yes"  # every seed gains 0.23-0.37 dB
    # One seed: the paired t-interval over images, labelled as such.
    single = paired_difference({0: variant[0]}, {0: reference[0]})
    expected = stats.ttest_rel([22.4, 20.2, 25.3], [22.0, 20.0, 25.0]).confidence_interval()
    assert (single["ci_low"], single["ci_high"]) == pytest.approx((expected.low, expected.high))
    assert single["ci_over"] == "3 images, 1 seed"
    noisy = paired_difference({0: _rows([21, 22, 25], files), 1: _rows([20, 21, 24], files)},
                              {0: _rows([20, 22, 25], files), 1: _rows([20.5, 21, 24], files)})
    assert noisy["ci_low"] < 0 < noisy["ci_high"] and distinguishable(noisy) == "no"


def test_reference_must_name_a_variant_and_names_are_kept_exactly(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"base": "b.yaml", "reference": "w4_start_end_kd0.",
                                    "variants": [{"name": "w4_start_end_kd0.1"}, {"name": "w4_start_end"}]}))
    with pytest.raises(ValueError, match="reference 'w4_start_end_kd0.' is not a variant of this sweep; did you mean"):
        expand(load_sweep(path))
    # A name is never rewritten to fit a folder: one that cannot be a folder name is refused.
    path.write_text(yaml.safe_dump({"base": "b.yaml", "variants": [{"name": "w4 start/end"}]}))
    with pytest.raises(ValueError, match="sweep key 'variants.0.name': a variant name may hold only"):
        load_sweep(path)


def test_two_seed_sweep_writes_means_std_and_exact_names(synthetic_sid_root, tmp_path):
    base = write_run_config(tmp_path, synthetic_sid_root, model__width=0.125, schedule__epochs=2,
                            schedule__iters_per_epoch=1, data__max_train_pairs=2)
    sweep_path = tmp_path / "seeded.yaml"
    sweep_path.write_text(yaml.safe_dump({
        "base": str(base), "seeds": [0, 1], "reference": "lr_small",
        "variants": [{"name": "lr_small", "set": {"optim.lr": 1e-4}},
                     {"name": "w4_start_end_kd0.1", "set": {"optim.lr": 3e-3}}]}))
    printed = run_sweep_cli(tmp_path, sweep_path)
    results = tmp_path / "results" / "seeded"
    folders = sorted(p.name for p in results.iterdir() if p.is_dir())
    assert folders == ["lr_small__seed=0", "lr_small__seed=1", "w4_start_end_kd0.1__seed=0", "w4_start_end_kd0.1__seed=1"]
    assert [yaml.safe_load((results / f / "config.yaml").read_text())["seed"] for f in folders] == [0, 1, 0, 1]
    rows = {r["variant"]: r for r in csv.DictReader((results / "summary.csv").open())}
    assert set(rows) == {"lr_small", "w4_start_end_kd0.1"}
    for name, row in rows.items():
        assert row["seeds"] == "2"
        per_seed = [json.loads((results / f"{name}__seed={s}" / "summary.json").read_text()) for s in (0, 1)]
        tests = [s["test_psnr"] for s in per_seed]
        assert float(row["test_psnr"]) == pytest.approx(np.mean(tests), abs=1e-9)
        assert float(row["test_psnr_std"]) == pytest.approx(np.std(tests, ddof=1), abs=1e-9)
        vals = [s["best_val_psnr"] for s in per_seed]
        assert float(row["best_val_psnr"]) == pytest.approx(np.mean(vals), abs=1e-9)
        assert math.isfinite(float(row["best_val_psnr_std"])) and math.isfinite(float(row["test_ssim_std"]))
        assert row["metric_precision"] == "float" and row["ssim_variant"] == "skimage"
        assert any(k.startswith("test_psnr_x") for k in row)
    compared = rows["w4_start_end_kd0.1"]
    assert compared["reference"] == "lr_small" and compared["ci_over"] == "2 seeds"
    assert float(compared["d_test_psnr_ci_low"]) <= float(compared["d_test_psnr"]) <= float(compared["d_test_psnr_ci_high"])
    assert compared["d_test_psnr_distinguishable"] in ("yes", "no")
    markdown = (results / "summary.md").read_text()
    assert "| w4_start_end_kd0.1 |" in markdown and "± " in markdown and "float images, SSIM variant: skimage" in markdown
    assert "w4_start_end_kd0.1" in printed
    for figure in ("best_psnr.png", "psnr_curves.png", "test_psnr_per_ratio.png"):
        assert (results / figure).read_bytes()[:4] == b"\x89PNG"



def test_ablation_sweep_is_seven_variants_times_three_seeds_with_the_users_special_layers(monkeypatch):
    from harness.config import load_config
    from sweeps.variants import _flatten, expand_runs
    from test_train import REPOSITORY_ROOT
    monkeypatch.chdir(REPOSITORY_ROOT)  # the config files name their bases relative to the repository
    sweep = load_sweep("configfile/sweep_ablation.yaml")
    variants = expand(sweep)
    assert [v["name"] for v in variants] == ["fp_finetuned", "w8a8", "w4a4", "w4a4_start_end",
                                             "w4a4_start_end_ptq", "w4a4_start_end_kd0.1", "w4a4_start_end_kd0.7"]
    assert len(expand_runs(sweep, variants)) == 21
    users = load_config("configfile/seed_aba.yaml", check_files=False)
    configs = {v["name"]: load_config(sweep.base, _flatten(v["overrides"]), check_files=False) for v in variants}
    assert not configs["fp_finetuned"].quant
    assert configs["w8a8"].quant_scheme.weight.bits == configs["w8a8"].quant_scheme.activation.bits == 8
    assert configs["w4a4"].quant_scheme.weight.bits == 4 and configs["w4a4"].extra_quantizer_dict.special_layer == {}
    for name in ("w4a4_start_end", "w4a4_start_end_ptq", "w4a4_start_end_kd0.1", "w4a4_start_end_kd0.7"):
        assert configs[name].extra_quantizer_dict.special_layer == users.extra_quantizer_dict.special_layer
    # PTQ: the same quantization, calibrated only, read against its QAT.
    ptq = configs.pop("w4a4_start_end_ptq")
    assert ptq.schedule.epochs == 0 and ptq.quant and not ptq.quant_teacher
    assert {v["name"]: v["reference"] for v in variants}["w4a4_start_end_ptq"] == "w4a4_start_end"
    assert configs["w4a4_start_end_kd0.7"].quant_teacher and configs["w4a4_start_end_kd0.7"].distill_coeff == [0.7, 0.7]
    assert not configs["w4a4_start_end"].quant_teacher
    steps = {(c.schedule.epochs, c.schedule.iters_per_epoch, c.batch_size, c.data.patch_size, c.optim.lr)
             for c in configs.values()}
    assert len(steps) == 1, "every variant must train for the same steps"
    assert {v["name"]: v["reference"] for v in variants}["w4a4_start_end_kd0.1"] == "w4a4_start_end"
