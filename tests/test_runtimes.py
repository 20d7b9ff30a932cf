"""Exported models in both runtimes (onnxruntime, OpenVINO): the export check runs in each and says
per runtime passed or failed; a QDQ form that one runtime computes wrong fails there only; the
16-bit activation form the export writes passes in both; enhance.py's --runtime and auto choice.

Narrow networks (width 0.25, 0.125) at 64x64 keep it fast."""
import copy
import json
import warnings

import numpy as np
import onnx
import pytest
import torch

import enhance
from deploy import QDQ_FILE, REPORT_FILE, export_model, export_qdq, psnr_db
from deploy.onnx_network import choose_runtime
from deploy.runtimes import RUNTIMES, normalise_runtimes, open_session
from models import build_model

pytest.importorskip("openvino")
BOTH = ["onnxruntime", "openvino"]
WIDTH = 0.25
SCHEME_8BIT = {
    "weight": {"quantizer": "lsq", "bits": 8, "symmetric": True, "per_channel": True},
    "activation": {"quantizer": "lsq", "bits": 8, "symmetric": False, "per_channel": False},
    "calibration_batches": 2,
}
# The user's 10-bit layers at the start of DBF (configfile/seed_aba.yaml): their quantizers sit in
# uint16/int16 types, the ones OpenVINO's QDQ stripping mishandles.
SPECIAL = {
    "input_layer": 10,
    "DBF.DBF_conv1.Conv1": {"weight": "10 per_channel_affine", "activation": "10 per_tensor_affine"},
    "DBF.DBF_conv1.lrelu": {"weight": "10 per_channel_affine", "activation": "10 per_tensor_affine"},
    "DBF.DBF_conv1.Conv2": {"weight": "10 per_channel_affine", "activation": "10 per_tensor_affine"},
}


def _inputs(batch, height, width, seed):
    return torch.rand(batch, 1, height, width, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def special_model():
    """Academic W8A8 with 10-bit start layers, calibrated (no QAT: the check needs scales only)."""
    from quant import calibrate, prepare_quantized_model
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        qmodel = prepare_quantized_model(build_model("dbf_dble", WIDTH), SCHEME_8BIT, SPECIAL)
    calibrate(qmodel, [_inputs(1, 128, 128, seed) for seed in range(2)])
    return qmodel.eval()


@pytest.fixture(scope="module")
def exported(special_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("both_runtimes")
    return out, export_model(special_model, out, runtimes=BOTH, latency_hw=(64, 64), latency_runs=2)


def test_runtime_names_are_checked():
    assert normalise_runtimes("openvino") == ["openvino"]
    assert normalise_runtimes(["openvino", "onnxruntime", "openvino"]) == ["openvino", "onnxruntime"]
    assert normalise_runtimes(None) == list(RUNTIMES)  # both installed here
    with pytest.raises(ValueError, match="did you mean 'openvino'"):
        normalise_runtimes(["openvno"])


def test_export_check_runs_in_both_runtimes(exported):
    out, report = exported
    on_disk = json.loads((out / REPORT_FILE).read_text())
    assert on_disk["runtimes"] == BOTH and on_disk["passed"]
    for kind in ("full_precision", "qdq"):
        rows = on_disk["models"][kind]["checks"]["runtimes"]
        assert list(rows) == BOTH
        for runtime, row in rows.items():
            assert row["runtime"] == runtime and row["version"] and row["device"] and row["passed"]
            assert row["precision"] in ("f32", "float32")  # set explicitly: OpenVINO defaults to bf16 on some CPUs
            assert len(on_disk["models"][kind]["checks"][runtime]) == 3  # three input sizes per runtime
        assert on_disk["deployment"][kind]["passed_in"] == BOTH
        assert on_disk["deployment"][kind]["fastest_passed"] in BOTH
    assert set(on_disk["latency"]["ms"]) == set(BOTH)
    assert on_disk["latency"]["ms"]["openvino"]["qdq"]["median_ms"] > 0
    # 16-bit activations are written without QDQ pairs (Round form); 16-bit weights keep theirs.
    graph = onnx.load(str(out / QDQ_FILE))
    assert any(n.op_type == "Round" for n in graph.graph.node)
    assert report["models"]["qdq"]["checks"]["wide_activations"] == "round"


def test_the_check_agrees_with_each_runtime_on_its_own(exported, special_model):
    """What the report says per runtime is what that runtime computes: rerun the file in each."""
    out, report = exported
    x = _inputs(2, 96, 64, seed=5)
    with torch.no_grad():
        expected = [t.numpy() for t in special_model(x)]
    for runtime in BOTH:
        got = open_session(out / QDQ_FILE, runtime).run(x.numpy())
        assert min(psnr_db(e, g) for e, g in zip(expected, got)) >= 40.0, runtime


def test_qdq_form_that_openvino_computes_wrong_fails_there_only(special_model, tmp_path):
    # The same model with its 10-bit activations as uint16/int16 QuantizeLinear/DequantizeLinear
    # pairs: valid ONNX that onnxruntime computes exactly, and that OpenVINO 2026's low-precision
    # transformations strip or fold wrongly (onnx/README.md). The check must fail in OpenVINO only,
    # naming the first quantizer where it departs, and its verdict must match OpenVINO's real output.
    info = export_qdq(special_model, tmp_path / "q.onnx", runtimes=BOTH, wide_activations="qdq")
    rows = info.checks["runtimes"]
    assert rows["onnxruntime"]["passed"] and not rows["openvino"]["passed"] and not info.passed
    failing = [run for run in info.checks["openvino"] if not run["ok"]]
    assert failing and failing[0]["first_divergence"]["bits"] == 10
    x = _inputs(1, 64, 64, seed=1)
    with torch.no_grad():
        expected = [t.numpy() for t in special_model(x)]
    got = open_session(tmp_path / "q.onnx", "openvino").run(x.numpy())
    assert min(psnr_db(e, g) for e, g in zip(expected, got)) < 40.0
    got = open_session(tmp_path / "q.onnx", "onnxruntime").run(x.numpy())
    assert min(psnr_db(e, g) for e, g in zip(expected, got)) >= 40.0


def test_broken_zero_point_fails_in_every_runtime_that_honours_it(exported, special_model, tmp_path):
    # A wrong zero point in one 8-bit activation QuantizeLinear (not its DequantizeLinear): every
    # runtime that follows ONNX shifts that tensor by 20 steps, and the check must catch it there.
    out, _ = exported
    graph = onnx.load(str(out / QDQ_FILE))
    initializers = {i.name: i for i in graph.graph.initializer}
    quantize = next(n for n in graph.graph.node if n.op_type == "QuantizeLinear" and
                    onnx.numpy_helper.to_array(initializers[n.input[2]]).dtype == np.uint8)
    wrong = onnx.numpy_helper.to_array(initializers[quantize.input[2]]).astype(np.int64) + 20
    graph.graph.initializer.append(onnx.numpy_helper.from_array(np.clip(wrong, 0, 255).astype(np.uint8),
                                                                "broken_zero_point"))
    quantize.input[2] = "broken_zero_point"
    x = _inputs(1, 64, 64, seed=1)
    with torch.no_grad():
        expected = [t.numpy() for t in special_model(x)]
    for runtime in BOTH:
        got = open_session(graph, runtime).run(x.numpy())
        assert min(psnr_db(e, g) for e, g in zip(expected, got)) < 40.0, runtime


def test_enhance_in_openvino_equals_onnxruntime(exported, special_model, synthetic_sid_root, tmp_path, capsys):
    from data.sid import read_list
    out, report = exported
    pair = read_list(synthetic_sid_root / "Sony_test_list.txt", synthetic_sid_root)[0]
    images = {}
    for runtime in BOTH:
        enhance.main([str(pair.short_path), "--onnx", str(out / QDQ_FILE), "--runtime", runtime,
                      "--out", str(tmp_path / runtime), "--ratio", "100", "--tile-size", "0"])
        assert f"in {runtime}" in capsys.readouterr().out
        images[runtime] = enhance_png(tmp_path / runtime / f"{pair.short_path.stem}.png")
    # The check's target (40 dB, lowered as the check lowers it by the model's own float noise floor
    # on this very input: deploy.onnx_export.psnr_targets) bounds each runtime's error against the
    # fake-quantized PyTorch model; two runtimes each within it are within twice that RMS error of
    # each other (6.02 dB). On this frame (an amplified DNG, outside the check's inputs) onnxruntime
    # itself lands at 39.7 dB from PyTorch and OpenVINO closer, so both are held to that bound.
    from deploy.onnx_export import float_noise_db, psnr_targets
    network_input = enhance.read_input(pair.short_path, 100.0)
    with torch.no_grad():
        reference = enhance.enhance(special_model, network_input, torch.device("cpu"))
        outputs = [t.numpy() for t in special_model(network_input)]
    noise = dict(zip(["mono", "rgb"], float_noise_db(special_model, network_input, outputs)))
    target = psnr_targets([noise], 40.0)[1]["rgb"]
    for runtime in BOTH:
        assert psnr_db(reference, images[runtime]) >= target - 6.03, runtime
    assert psnr_db(images["onnxruntime"], images["openvino"]) >= target - 6.03
    # auto: the fastest runtime that passed in the report, and enhance.py says which.
    chosen, why = choose_runtime(out / QDQ_FILE)
    assert chosen == report["deployment"]["qdq"]["fastest_passed"] and "fastest" in why
    enhance.main([str(pair.short_path), "--onnx", str(out / QDQ_FILE), "--out", str(tmp_path / "auto"),
                  "--ratio", "100", "--tile-size", "0"])
    assert f"in {chosen}" in capsys.readouterr().out
    assert np.array_equal(enhance_png(tmp_path / "auto" / f"{pair.short_path.stem}.png"), images[chosen])


def test_auto_without_report_runs_onnxruntime(tmp_path):
    from deploy import export_full_precision
    torch.manual_seed(0)
    export_full_precision(build_model("dbf_dble", 0.125).eval(), tmp_path / "fp.onnx", runtimes=["onnxruntime"])
    runtime, why = choose_runtime(tmp_path / "fp.onnx")
    assert runtime == "onnxruntime" and REPORT_FILE in why


def enhance_png(path) -> np.ndarray:
    import png
    width, height, rows, _ = png.Reader(filename=str(path)).read()
    return np.vstack([np.asarray(row, dtype=np.float64) for row in rows]).reshape(height, width, 3) / 65535.0


def test_deployable_sweep_expands_to_the_thesis_scheme_and_its_deployable_form(tmp_path):
    """configfile/sweep_deployable.yaml: 2 variants x 3 seeds, each a valid run config; the deployable
    variant is exactly what harness/export_run.py prints for the thesis config (not run here: hours of CPU)."""
    from sweeps import variants as sweep
    from harness.config import load_config
    from harness.export_run import nearest_deployable
    weights = tmp_path / "demo_fp.pth"  # the config checks that its weights exist (make demo writes them)
    weights.write_bytes(b"")
    plan = sweep.load_sweep("configfile/sweep_deployable.yaml",
                            [f"set.load_model={weights}", f"set.load_teacher_model={weights}"])
    runs = sweep.expand_runs(plan, sweep.expand(plan))
    assert sorted((run["variant"], run["seed"]) for run in runs) == sorted(
        (name, seed) for name in ("thesis_academic_w4a4", "deployable_snpe_w8a8") for seed in (0, 1, 2))
    configs = {(run["variant"], run["seed"]): sweep.variant_config(plan, run, tmp_path) for run in runs}
    thesis, deployable = configs["thesis_academic_w4a4", 0], configs["deployable_snpe_w8a8", 0]
    assert (thesis.quant_scheme.backend, thesis.quant_scheme.weight.bits) == ("academic", 4)
    assert nearest_deployable(thesis) == {"quant_scheme.backend": "snpe", "quant_scheme.weight.bits": 8,
                                          "quant_scheme.activation.bits": 8}
    assert nearest_deployable(deployable) == {}
    assert deployable.extra_quantizer_dict.special_layer == thesis.extra_quantizer_dict.special_layer
    assert deployable.distill_coeff == thesis.distill_coeff and deployable.onnx
    seed_aba = load_config("configfile/seed_aba.yaml", check_files=False)
    assert thesis.quant_scheme == seed_aba.quant_scheme


def test_nearest_deployable_config_is_a_ready_run_config(tmp_path):
    # What tools/export_onnx.py writes beside a quantized export that is faster than FP32 in no runtime.
    from harness.config import load_config
    from harness.export_run import nearest_deployable, write_deployable_config
    thesis = load_config("configfile/seed_aba.yaml", check_files=False)
    path = write_deployable_config(thesis, nearest_deployable(thesis), tmp_path / "deployable_config.yaml")
    ready = load_config(path, check_files=False)
    assert (ready.quant_scheme.backend, ready.quant_scheme.weight.bits, ready.quant_scheme.activation.bits) == \
        ("snpe", 8, 8)
    assert ready.extra_quantizer_dict.special_layer == thesis.extra_quantizer_dict.special_layer
    assert ready.distill_config == thesis.distill_config and ready.load_model == thesis.load_model
    assert ready.experiment == f"{thesis.experiment}_deployable"


def _with_quantize_scale(graph, factor):
    """The graph with one 8-bit activation QuantizeLinear after a convolution (not after a pool,
    whose inputs lie on a grid already) with its scale, not its DequantizeLinear's, multiplied by
    factor: (name of its quantizer, the changed graph)."""
    graph = copy.deepcopy(graph)
    initializers = {i.name: i for i in graph.graph.initializer}
    quantize = [n for n in graph.graph.node if n.op_type == "QuantizeLinear" and
                onnx.numpy_helper.to_array(initializers[n.input[2]]).dtype == np.uint8 and "lrelu" in n.name][0]
    scale = onnx.numpy_helper.to_array(initializers[quantize.input[1]]).astype(np.float32)
    graph.graph.initializer.append(onnx.numpy_helper.from_array((scale * np.float32(factor)).astype(np.float32),
                                                                "changed_scale"))
    quantize.input[1] = "changed_scale"
    return quantize.name.rsplit("/", 1)[0], graph


@pytest.mark.parametrize("runtime", BOTH)
def test_rounding_explanation_tells_float_rounding_from_a_wrong_graph(exported, special_model, runtime):
    # A scale off by 4e-6 (some 30 float32 roundings) flips only elements a hair from a rounding
    # boundary: float rounding explains every one of them. Off by 2% it flips elements anywhere,
    # and the quantizer is named. A check that misses its PSNR target by chance (one flip amplified
    # by 4-bit layers) passes only in the first case (deploy.onnx_export.export_qdq).
    from deploy.onnx_verify import rounding_explanation
    from deploy.quantizers import describe, fake_quantizers
    out, _ = exported
    specs = [describe(name, fq) for name, fq in fake_quantizers(special_model)]
    x = _inputs(2, 256, 256, seed=3)
    graph = onnx.load(str(out / QDQ_FILE))
    name, hair = _with_quantize_scale(graph, 1 + 4e-6)
    explained = rounding_explanation(hair, special_model, specs, x, runtime, 40.0)
    assert explained["explained"] and name in explained["flipped"], (name, explained)
    assert explained["max_tie_distance_steps"] < 1e-3
    name, wrong = _with_quantize_scale(graph, 1.02)
    verdict = rounding_explanation(wrong, special_model, specs, x, runtime, 40.0)
    assert not verdict["explained"] and name in verdict["not_rounding"], verdict


def test_export_summary_says_when_rounding_carried_a_check_and_what_faster_means():
    # What tools/export_onnx.py and train.py print after an export: a run that missed its PSNR target
    # but passed by the rounding replay says so, and "faster than FP32" names its threshold, with the
    # measured ratios when no runtime reached it.
    from deploy.onnx_export import FASTER_THAN_FP32, deployment_summary
    from harness.export_run import format_summary
    explained = {"explained": True, "elements_flipped": 51, "max_tie_distance_steps": 3.4e-4}
    runs = [{"psnr_db": {"mono": 150.0}, "met_target": True, "ok": True},
            {"psnr_db": {"mono": 27.5}, "met_target": False, "ok": True, "rounding": explained}]
    checks = {"checker": {"ok": True}, "psnr_target_db": 40.0, "effective_target_db": {"mono": 40.0},
              "runtimes": {"openvino": {"passed": True, "version": "2026.4.1", "precision": "f32"}}, "openvino": runs}
    report = {"models": {"qdq": {"checks": checks, "path": "model_qdq.onnx", "file_bytes": 7.8e6, "opset": 21,
                                 "passed": True}},
              "latency": {"input_shape": [1, 1, 512, 512], "runs": 20,
                          "ms": {"openvino": {"full_precision": {"median_ms": 100.0},
                                              "qdq": {"median_ms": 100.0 / (FASTER_THAN_FP32 - 0.09)}}}}}
    report["deployment"] = deployment_summary(report)
    assert report["deployment"]["qdq"]["faster_than_fp32_in"] == []  # 1.01x is a tie, not a speed-up
    text = format_summary(report, "out")
    assert "below it on 1 of 2 inputs by float rounding alone: 51 element(s) one step off" in text
    assert f"faster than FP32 (by {FASTER_THAN_FP32:g}x or more) in no runtime that passed (openvino 1.01x)" in text
