"""quant_scheme.engine: torchao (quant/engines/torchao.py): the special layers land on the intended
spots of the exported graph, QAT with distillation trains the learnable scales, a quantized
checkpoint resumes exactly, and calibration alone (PTQ) gives a usable model. Narrow DBF/DBLE."""
import copy
import warnings

import pytest
import torch

pytest.importorskip("torchao")

from distill import Distiller  # noqa: E402
from models.dbf_dble import DBFDBLE  # noqa: E402
from quant import (calibrate, fake_quantizers, load_quantized_state, param_groups, prepare_quantized_model,  # noqa: E402
                   quant_plan_rows, quantized_state)

WIDTH = 0.125
W4A4 = {"engine": "torchao", "weight": {"bits": 4}, "activation": {"bits": 4}, "calibration_batches": 2}
SPECIAL = {
    "input_layer": 10,
    "DBF.DBF_conv1.Conv1": {"weight": "10 per_channel_affine"},
    "DBF.DBF_conv9.lrelu_dup1": {"activation": "10 per_tensor_affine"},
    "DBF.DBF_conv1.lrelu": {"weight": "10"},  # a LeakyReLU has no weight: warned and skipped, as with MQBench
}
DISTILLED = ["DBF.DBF_conv9.lrelu_dup1", "DBLE.dual_conv9.lrelu_dup1"]


def inputs(seed, batch=2, size=64):
    return torch.rand(batch, 1, size, size, generator=torch.Generator().manual_seed(seed))


def float_model(seed=0):
    torch.manual_seed(seed)
    return DBFDBLE(WIDTH)


@pytest.fixture(scope="module")
def prepared():
    """The torchao W4A4 model with the special layers, uncalibrated (tests deep-copy it)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        qmodel = prepare_quantized_model(float_model(), W4A4, SPECIAL)
    return qmodel, [str(w.message) for w in caught]


def _layer_path(node):
    stack = node.meta.get("nn_module_stack") or {}
    return list(stack.values())[-1][0] if stack else ""


def test_special_layers_land_on_the_exported_graph(prepared):
    qmodel, warned = prepared
    nodes = {node.target: node for node in qmodel.graph.nodes if node.op == "call_module"}
    quantizers = fake_quantizers(qmodel)

    # One input quantizer at input_layer's 10 bits, read by the first conv and by pixel_unshuffle,
    # with no requantization after pixel_unshuffle.
    x_quantizer = quantizers["x_post_act_fake_quantizer"]
    assert (x_quantizer.quant_min, x_quantizer.quant_max) == (0, 1023)
    x_node = nodes["x_post_act_fake_quantizer"]
    assert x_node.args[0].op == "placeholder"
    readers = {str(user.target) for user in x_node.users}
    assert readers == {"aten.conv2d.default", "aten.pixel_unshuffle.default"}
    for user in x_node.users:
        if user.target == torch.ops.aten.pixel_unshuffle.default:
            assert not any(u.op == "call_module" and u.target in quantizers for u in user.users)

    # The weight of DBF.DBF_conv1.Conv1 at 10 bits per channel, affine, feeding that layer's conv.
    weight = quantizers["DBF.DBF_conv1.Conv1.weight_fake_quant"]
    assert (weight.quant_min, weight.quant_max) == (0, 1023) and weight.qscheme == torch.per_channel_affine
    (conv,) = nodes["DBF.DBF_conv1.Conv1.weight_fake_quant"].users
    assert conv.target == torch.ops.aten.conv2d.default and _layer_path(conv) == "DBF.DBF_conv1.Conv1"

    # The activation of the second LeakyReLU call of DBF_conv9 at 10 bits, right after that call.
    name = "dbf_dbf_conv9_lrelu_dup1_post_act_fake_quantizer"
    assert (quantizers[name].quant_min, quantizers[name].quant_max) == (0, 1023)
    source = nodes[name].args[0]
    while source.op == "call_module":  # the distillation tap (identity) sits between
        source = source.args[0]
    assert source.target == torch.ops.aten.leaky_relu.default
    assert list(source.meta["nn_module_stack"])[-1].endswith("DBF.DBF_conv9.lrelu@1")

    # Everything else at the scheme's 4 bits, except the 8-bit first layer (MQBench's rule, none here:
    # the only conv reading the input is overridden).
    ten_bit = {"x_post_act_fake_quantizer", "DBF.DBF_conv1.Conv1.weight_fake_quant", name}
    for other, quantizer in quantizers.items():
        if other not in ten_bit:
            assert quantizer.quant_max - quantizer.quant_min == 15, other
    assert any("DBF.DBF_conv1.lrelu.weight: ignored" in message for message in warned)
    # The quant plan reads the same model: rows say which special-layer entry set each 10-bit quantizer.
    overrides = {row["quantizer"]: row["override"] for row in quant_plan_rows(qmodel) if row["bits"] == 10}
    assert set(overrides) == ten_bit


@pytest.mark.parametrize("scheme, special, expected", [
    ({**W4A4, "weight": {"quantizer": "dsq"}}, None, "quant_scheme.weight.quantizer: dsq is MQBench-only"),
    ({**W4A4, "backend": "onnx_qnn"}, None, "quant_scheme.backend: onnx_qnn placement is MQBench-only"),
    (W4A4, {"DBF.DBF_conv1.Conv3": {"weight": "8"}}, "DBF.DBF_conv1.Conv3: no layer"),
    (W4A4, {"cat_3": {"activation": "8"}}, "cat_3: no layer"),
])
def test_what_the_torchao_engine_cannot_do_is_one_line(scheme, special, expected):
    with pytest.raises(ValueError) as error:
        prepare_quantized_model(float_model(), scheme, special)
    message = str(error.value)
    assert expected in message and "\n" not in message


def test_qat_with_distillation_trains_scales_at_the_same_layer_names(prepared):
    student = copy.deepcopy(prepared[0])
    calibrate(student, [inputs(1), inputs(2)])
    distiller = Distiller(student, float_model(), DISTILLED, [1.0, 1.0])
    # The student's features are the quantized activations (after the 10-bit and 4-bit quantizers).
    assert distiller.student_taps.tap_points == {
        "DBF.DBF_conv9.lrelu_dup1": "dbf_dbf_conv9_lrelu_dup1_post_act_fake_quantizer",
        "DBLE.dual_conv9.lrelu_dup1": "dble_dual_conv9_lrelu_dup1_post_act_fake_quantizer"}
    scale = student.get_submodule("dbf_dbf_conv9_lrelu_dup1_post_act_fake_quantizer").scale
    before = scale.detach().clone()
    optimizer = torch.optim.Adam(param_groups(student, 1e-3))
    student.train()
    x = inputs(3)
    mono, rgb = student(x)
    distill_loss, terms = distiller(x)
    assert set(terms) == set(DISTILLED) and all(float(term) > 0 for term in terms.values())
    optimizer.zero_grad()
    distill_loss.backward()
    assert scale.grad is not None and float(scale.grad.abs().sum()) > 0
    optimizer.step()
    assert not torch.equal(scale.detach(), before)


def _train(model, optimizer, steps, first_step):
    model.train()
    for step in range(first_step, first_step + steps):
        mono, rgb = model(inputs(100 + step))
        loss = (mono - 0.5).abs().mean() + (rgb - 0.5).abs().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def test_resume_from_a_quantized_checkpoint_reproduces_the_uninterrupted_run(prepared):
    base = copy.deepcopy(prepared[0])
    calibrate(base, [inputs(1), inputs(2)])
    uninterrupted, interrupted = copy.deepcopy(base), copy.deepcopy(base)
    optimizer = torch.optim.Adam(param_groups(uninterrupted, 1e-3))
    _train(uninterrupted, optimizer, 4, 0)

    optimizer = torch.optim.Adam(param_groups(interrupted, 1e-3))
    _train(interrupted, optimizer, 2, 0)
    saved = {"model": quantized_state(interrupted), "optimizer": copy.deepcopy(optimizer.state_dict())}

    # A new process: prepare afresh (no calibration), load, build the optimizer, continue.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        resumed = prepare_quantized_model(float_model(seed=5), W4A4, SPECIAL)
    load_quantized_state(resumed, saved["model"])
    optimizer = torch.optim.Adam(param_groups(resumed, 1e-3))
    optimizer.load_state_dict(saved["optimizer"])
    _train(resumed, optimizer, 2, 2)

    expected, got = uninterrupted.state_dict(), resumed.state_dict()
    assert set(expected) == set(got)
    for key in expected:
        assert torch.equal(got[key], expected[key]), key
    uninterrupted.eval(), resumed.eval()
    with torch.no_grad():
        for a, b in zip(uninterrupted(inputs(9)), resumed(inputs(9))):
            assert torch.equal(a, b)


def test_calibration_alone_gives_a_ptq_model_close_to_the_float_one():
    reference = float_model().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        qmodel = prepare_quantized_model(float_model(), {**W4A4, "weight": {"bits": 8}, "activation": {"bits": 8}})
    calibrate(qmodel, [inputs(1), inputs(2)])
    qmodel.eval()
    rows = quant_plan_rows(qmodel)
    assert rows and all(row["calibrated"] for row in rows)
    x = inputs(4)
    with torch.no_grad():
        for quantized, exact in zip(qmodel(x), reference(x)):
            peak = float(exact.abs().max())
            error = float((quantized - exact).pow(2).mean())
            psnr = 10 * torch.log10(torch.tensor(peak ** 2 / max(error, 1e-20)))
            assert psnr > 25, f"8-bit PTQ output {float(psnr):.1f} dB from the float model"
            assert not torch.equal(quantized, exact)  # the fake quantizers are on


def test_qdq_export_with_4_and_10_bit_layers_passes_its_onnxruntime_check(prepared, tmp_path):
    from deploy.onnx_export import export_model
    qmodel = copy.deepcopy(prepared[0])
    calibrate(qmodel, [inputs(1), inputs(2)])
    optimizer = torch.optim.Adam(param_groups(qmodel, 1e-4))
    _train(qmodel, optimizer, 2, 0)
    report = export_model(qmodel.eval(), tmp_path)
    assert report["passed"] and report["error"] is None
    qdq = report["models"]["qdq"]
    assert qdq["opset"] == 21 and all(run["ok"] for run in qdq["checks"]["onnxruntime"])
    rows = qdq["quantizers"]
    assert rows["x_post_act_fake_quantizer"].items() >= {
        "bits": 10, "dtype": "uint16", "quant_max": 1023, "clip_before_quantize": True}.items()
    assert rows["DBF.DBF_conv1.Conv1.weight_fake_quant"].items() >= {
        "bits": 10, "dtype": "uint16", "granularity": "per_channel"}.items()
    assert rows["DBF.DBF_conv2.Conv1.weight_fake_quant"].items() >= {"bits": 4, "dtype": "int4"}.items()
    four_bit_activation = rows["dble_dual_conv9_lrelu_dup1_post_act_fake_quantizer"]
    assert four_bit_activation.items() >= {"bits": 4, "quant_max": 15, "clip_before_quantize": True}.items()
    import onnx
    graph = onnx.load(str(tmp_path / "model_qdq.onnx")).graph
    assert sum(node.op_type == "Clip" for node in graph.node) >= 2


def test_placement_and_plan_cost_equal_the_mqbench_engines(prepared):
    from quant.cost import cost_totals, layer_cost_rows
    torchao_model = copy.deepcopy(prepared[0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mqbench_model = prepare_quantized_model(float_model(), {**W4A4, "engine": "mqbench"}, SPECIAL)
    for qmodel in (torchao_model, mqbench_model):
        calibrate(qmodel, [inputs(1), inputs(2)])
    # Same weight quantizer names and ranges, same per-layer MACs and bits, same totals.
    def weights(qmodel):
        return {name: (q.quant_min, q.quant_max, str(q.qscheme)) for name, q in fake_quantizers(qmodel).items()
                if name.endswith(".weight_fake_quant")}
    assert weights(torchao_model) == weights(mqbench_model)
    def layers(qmodel):
        return {row["layer"]: (row["macs"], row["weight_bits"], row["input_bits"]) for row in layer_cost_rows(qmodel)}
    assert layers(torchao_model) == layers(mqbench_model)
    assert cost_totals(quant_plan_rows(torchao_model)) == cost_totals(quant_plan_rows(mqbench_model))


def test_train_py_ptq_with_the_torchao_engine_writes_plan_checkpoint_and_test_scores(synthetic_sid_root, tmp_path):
    # schedule.epochs: 0 is calibration-only PTQ through the real training entry point (test.py's
    # checkpoint loader prepares the torchao model afresh and loads the quantized state).
    import math

    import train
    from harness.config import load_config
    from test_train import write_run_config
    weights = tmp_path / "fp.pth"
    torch.save({"model": float_model().state_dict()}, weights)
    config_path = write_run_config(tmp_path, synthetic_sid_root, model__width=WIDTH, quant=True,
                                   load_model=str(weights), schedule__epochs=0,
                                   quant_scheme={"engine": "torchao", "calibration_batches": 1},
                                   extra_quantizer_dict={"special_layer": {"input_layer": 10}})
    summary = train.run(load_config(config_path))
    assert summary["best_epoch"] == 0 and math.isfinite(summary["test_psnr"])
    saved = torch.load(summary["checkpoint"], weights_only=False)
    assert saved["quantized"] and saved["model"]["quantizers"]["x_post_act_fake_quantizer"]["quant_max"] == 1023
    plan = list((tmp_path / "results" / "tiny").rglob("quant_plan*.csv"))
    assert plan and "x_post_act_fake_quantizer" in plan[0].read_text()


def test_sensitivity_tool_stops_a_torchao_config_in_one_line(capsys):
    # Per-quantizer sensitivity probes MQBench's FX graph: a torchao config is refused before any work.
    from clitools import assert_one_line_error, run_here
    status, _, stderr = run_here(capsys, "tools/sensitivity.py", "--config", "configfile/demo_qat.yaml",
                                 "--set", "quant_scheme.engine=torchao")
    assert_one_line_error(status, stderr, "quant_scheme.engine: torchao", "MQBench-only")


def test_distillation_at_a_conv_output_taps_the_same_values_as_the_float_teacher(prepared):
    # A layer with weights is a parameter holder in torchao's exported graph, not a called module:
    # its output is tapped at `<layer>.output_tap`, under the layer's own name. With fake quantization
    # off, the student's feature there is the teacher's (same weights), and a distillation loss on it
    # reaches the conv's weight.
    conv = "DBF.DBF_conv1.Conv2"
    student = copy.deepcopy(prepared[0])
    calibrate(student, [inputs(1), inputs(2)])
    distiller = Distiller(student, float_model(), [conv], [1.0])
    assert distiller.student_taps.tap_points[conv] == f"{conv}.output_tap"
    student.apply(torch.ao.quantization.disable_fake_quant)
    student.train()
    x = inputs(3)
    student(x)
    distiller(x)
    student_feature = distiller.student_taps.outputs[conv]
    teacher_feature = distiller.teacher_taps.outputs[conv]
    torch.testing.assert_close(student_feature, teacher_feature, rtol=1e-5, atol=1e-5)
    student.apply(torch.ao.quantization.enable_fake_quant)
    student(x)
    distill_loss, terms = distiller(x)
    assert float(terms[conv]) > 0
    distill_loss.backward()
    weight = dict(student.named_parameters())[f"{conv}.weight"]
    assert weight.grad is not None and float(weight.grad.abs().sum()) > 0
