"""Distillation: named feature taps on a real MQBench student and the traced teacher, and the loss."""
import logging

import pytest
import torch
import torch.nn.functional as F

from distill import (DistillationLoss, FeatureTaps, called_module_names, check_same_architecture, feature_distance,
                     prepare_teacher, trace_for_features)
from models.dbf_dble import DBFDBLE
from models.sid_unet import SIDUNet

DEFAULT_LAYERS = ["DBLE.dual_conv9.lrelu_dup1", "DBF.DBF_conv9.lrelu_dup1"]
WIDTH, SIZE = 0.25, 64


LSQ_W8A8 = {
    "w_observer": "MinMaxObserver", "a_observer": "EMAMinMaxObserver",
    "w_fakequantize": "LearnableFakeQuantize", "a_fakequantize": "LearnableFakeQuantize",
    "w_qscheme": {"bit": 8, "symmetry": False, "per_channel": True, "pot_scale": False},
    "a_qscheme": {"bit": 8, "symmetry": False, "per_channel": False, "pot_scale": False},
}


def make_student(model):
    # Real MQBench flow: prepare, calibrate on one batch, then quantize, so fake quantizers
    # actually change values (the quantized tap must differ from the float one).
    from mqbench.prepare_by_platform import BackendType, prepare_by_platform
    from mqbench.utils.state import enable_calibration, enable_quantization
    logging.getLogger("MQBENCH").setLevel(logging.WARNING)
    student = prepare_by_platform(model, BackendType.Academic, {"extra_qconfig_dict": LSQ_W8A8})
    enable_calibration(student)
    with torch.no_grad():
        student(torch.rand(1, 1, SIZE, SIZE))
    enable_quantization(student)
    return student


@pytest.fixture(scope="module")
def pair():
    torch.manual_seed(0)
    teacher_model = DBFDBLE(WIDTH)
    student_model = DBFDBLE(WIDTH)
    student_model.load_state_dict(teacher_model.state_dict())
    return make_student(student_model), teacher_model


@pytest.fixture
def batch():
    generator = torch.Generator().manual_seed(1)
    return torch.rand(2, 1, SIZE, SIZE, generator=generator)


def test_traced_teacher_has_exactly_the_students_module_names(pair):
    student, teacher_model = pair
    teacher = prepare_teacher(teacher_model)
    assert set(called_module_names(student)) == set(called_module_names(teacher))
    assert set(DEFAULT_LAYERS) <= set(called_module_names(teacher))
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())


def test_teacher_features_are_the_outputs_of_the_named_calls(pair, batch):
    _, teacher_model = pair
    teacher = trace_for_features(teacher_model)
    # Independent reference: hooks on the plain model's reused LeakyReLU; `lrelu_dup1` is its 2nd call.
    seen = {"DBLE": [], "DBF": []}
    handles = [teacher_model.DBLE.dual_conv9.lrelu.register_forward_hook(lambda m, i, o: seen["DBLE"].append(o)),
               teacher_model.DBF.DBF_conv9.lrelu.register_forward_hook(lambda m, i, o: seen["DBF"].append(o))]
    with torch.no_grad():
        teacher_model(batch)
    for handle in handles:
        handle.remove()
    with FeatureTaps(teacher, DEFAULT_LAYERS, role="teacher") as taps, torch.no_grad():
        teacher(batch)
        assert set(taps.outputs) == set(DEFAULT_LAYERS)
        assert torch.equal(taps["DBLE.dual_conv9.lrelu_dup1"], seen["DBLE"][1])
        assert torch.equal(taps["DBF.DBF_conv9.lrelu_dup1"], seen["DBF"][1])


def test_student_features_are_the_quantized_outputs_seen_by_the_next_layer(pair, batch):
    student, _ = pair
    captured = {}
    # MQBench's own names for the modules around the distillation point, looked up independently.
    quantizer = student.get_submodule("dble_dual_conv9_lrelu_1_post_act_fake_quantizer")
    handles = [quantizer.register_forward_hook(lambda m, i, o: captured.__setitem__("quantized", o)),
               student.get_submodule("DBLE.dual_conv9.lrelu_dup1").register_forward_hook(
                   lambda m, i, o: captured.__setitem__("float", o)),
               student.get_submodule("DBF.DBF_conv1.lrelu_dup1").register_forward_hook(
                   lambda m, i, o: captured.__setitem__("unquantized", o))]
    names = ["DBLE.dual_conv9.lrelu_dup1", "DBF.DBF_conv1.lrelu_dup1"]
    with FeatureTaps(student, names, role="student") as taps, \
            FeatureTaps(student, names, role="student", after_fake_quantizer=False) as float_taps, torch.no_grad():
        student(batch)
        assert torch.equal(taps["DBLE.dual_conv9.lrelu_dup1"], captured["quantized"])
        assert torch.equal(float_taps["DBLE.dual_conv9.lrelu_dup1"], captured["float"])
        assert not torch.equal(captured["quantized"], captured["float"])  # the quantizer is really active
        # No quantizer reads this output (a max-pool and a concatenation do): the module output.
        assert taps.tap_points["DBF.DBF_conv1.lrelu_dup1"] == "DBF.DBF_conv1.lrelu_dup1"
        assert torch.equal(taps["DBF.DBF_conv1.lrelu_dup1"], captured["unquantized"])
    for handle in handles:
        handle.remove()


def test_output_layer_list_is_tapped_too_and_outputs_are_renewed_each_forward(pair, batch):
    student, _ = pair
    extra = ["DBLE.dual_conv9.lrelu_dup1", "DBF.DBF_conv5.lrelu_dup1"]
    with FeatureTaps(student, DEFAULT_LAYERS, role="student", extra_layer_names=extra) as taps, torch.no_grad():
        assert taps.layer_names == DEFAULT_LAYERS + ["DBF.DBF_conv5.lrelu_dup1"]
        student(batch)
        first = taps["DBF.DBF_conv5.lrelu_dup1"]
        student(batch[:1])
        assert set(taps.outputs) == set(taps.layer_names)
        assert taps["DBF.DBF_conv5.lrelu_dup1"].shape[0] == 1 and first.shape[0] == 2
    with torch.no_grad():
        student(batch)
    assert taps.outputs["DBF.DBF_conv5.lrelu_dup1"].shape[0] == 1  # hooks gone after the with-block


def test_missing_layer_names_the_model_and_the_nearest_layers(pair):
    student, teacher_model = pair
    with pytest.raises(ValueError, match=r"^student: no layer 'DBLE.dual_conv9.lrelu_dup2'.*DBLE.dual_conv9.lrelu_dup1"):
        FeatureTaps(student, ["DBLE.dual_conv9.lrelu_dup2"], role="student")
    with pytest.raises(ValueError, match=r"^teacher: no layer 'DBF.DBF_conv9.lrelu_dup1' \(the model is not traced"):
        FeatureTaps(teacher_model, ["DBF.DBF_conv9.lrelu_dup1"], role="teacher")
    with pytest.raises(ValueError, match=r"^teacher: .*'DBLE.dual_conv9.lreluu'.*nearest: DBLE.dual_conv9.lrelu"):
        FeatureTaps(trace_for_features(teacher_model), ["DBLE.dual_conv9.lreluu"], role="teacher")


def test_a_module_called_twice_is_refused_not_silently_overwritten(pair, batch):
    _, teacher_model = pair
    with FeatureTaps(teacher_model, ["DBLE.dual_conv9.lrelu"], role="teacher"):
        with pytest.raises(RuntimeError, match="ran twice in one forward"), torch.no_grad():
            teacher_model(batch)


def test_architecture_mismatch_is_one_line(pair):
    student, teacher_model = pair
    check_same_architecture(student, teacher_model)
    check_same_architecture(student, prepare_teacher(DBFDBLE(WIDTH)))
    for other in (DBFDBLE(0.5), SIDUNet(WIDTH)):
        with pytest.raises(ValueError, match="^student and teacher are different networks") as error:
            check_same_architecture(student, other)
        assert "\n" not in str(error.value)


def test_zero_coefficient_gives_exactly_the_undistilled_loss_and_gradients(pair, batch):
    student, teacher_model = pair
    teacher = prepare_teacher(teacher_model)
    target = torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(2))

    def loss_and_gradients(coefficients):
        student.zero_grad(set_to_none=True)
        with FeatureTaps(student, DEFAULT_LAYERS, role="student") as s_taps, \
                FeatureTaps(teacher, DEFAULT_LAYERS, role="teacher") as t_taps:
            mono, rgb = student(batch)
            teacher(batch)
            task = F.l1_loss(rgb, target)
            if coefficients is None:
                loss, terms = task, {}
            else:
                distill_total, terms = DistillationLoss(DEFAULT_LAYERS, coefficients)(s_taps.outputs, t_taps.outputs)
                loss = task + distill_total
        loss.backward()
        weight = student.get_submodule("DBLE.dual_conv9.Conv2").weight.grad.clone()
        return loss.detach(), weight, terms

    plain_loss, plain_grad, _ = loss_and_gradients(None)
    zero_loss, zero_grad, terms = loss_and_gradients([0.0, 0])
    assert torch.equal(plain_loss, zero_loss) and torch.equal(plain_grad, zero_grad)
    assert set(terms) == set(DEFAULT_LAYERS) and all(t > 0 for t in terms.values())  # still monitored
    distilled_loss, distilled_grad, distilled_terms = loss_and_gradients([0.1, 0.1])
    assert torch.allclose(distilled_loss, plain_loss + 0.1 * sum(distilled_terms.values()))
    assert not torch.equal(distilled_grad, plain_grad)


def test_gradients_reach_student_weights_and_quantizers_but_never_the_teacher(pair, batch):
    student, teacher_model = pair
    teacher = trace_for_features(teacher_model)  # deliberately not frozen: the loss must still not reach it
    student.zero_grad(set_to_none=True)
    teacher.zero_grad(set_to_none=True)
    with FeatureTaps(student, DEFAULT_LAYERS, role="student") as s_taps, \
            FeatureTaps(teacher, DEFAULT_LAYERS, role="teacher") as t_taps:
        student(batch)
        teacher(batch)
        total, _ = DistillationLoss(DEFAULT_LAYERS, [0.1, 0.1], kind="mse")(s_taps.outputs, t_taps.outputs)
    total.backward()
    for name in ("DBLE.dual_conv9.Conv2.weight", "DBF.DBF_conv9.Conv2.weight", "DBF.DBF_conv1.Conv1.weight",
                 "dble_dual_conv9_lrelu_1_post_act_fake_quantizer.scale"):
        gradient = student.get_parameter(name).grad
        assert gradient is not None and gradient.abs().sum() > 0, name
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is None for p in teacher_model.parameters())


def test_loss_configuration_errors():
    with pytest.raises(ValueError, match="^distill_coeff has 1 value but distill_config names 2 layers$"):
        DistillationLoss(DEFAULT_LAYERS, [0.1])
    with pytest.raises(ValueError, match="^distill_coeff has 3 values but distill_config names 2 layers$"):
        DistillationLoss(DEFAULT_LAYERS, [0.1, 0.1, 0.1])
    with pytest.raises(ValueError, match="nearest: scale_invariant"):
        DistillationLoss(DEFAULT_LAYERS, [0.1, 0.1], kind="scale_invarient")
    with pytest.raises(ValueError, match="DBF.DBF_conv9.lrelu_dup1: -0.1"):
        DistillationLoss(DEFAULT_LAYERS, [0.1, -0.1])
    loss = DistillationLoss(DEFAULT_LAYERS, [0.1, 0.1])
    features = {DEFAULT_LAYERS[0]: torch.zeros(1, 2, 4, 4), DEFAULT_LAYERS[1]: torch.zeros(1, 2, 4, 4)}
    with pytest.raises(ValueError, match="^teacher features have no layer 'DBF.DBF_conv9.lrelu_dup1'"):
        loss(features, {DEFAULT_LAYERS[0]: torch.zeros(1, 2, 4, 4)})
    with pytest.raises(ValueError, match="student output \\(1, 2, 4, 4\\) but teacher output \\(1, 2, 8, 8\\)"):
        loss(features, {name: torch.zeros(1, 2, 8, 8) for name in DEFAULT_LAYERS})


def test_loss_kinds():
    generator = torch.Generator().manual_seed(3)
    teacher = torch.randn(2, 4, 5, 5, generator=generator)
    student = teacher + 0.1 * torch.randn(2, 4, 5, 5, generator=generator)
    assert torch.isclose(feature_distance(student, teacher, "mse"), ((student - teacher) ** 2).mean())
    assert torch.isclose(feature_distance(student, teacher, "l1"), (student - teacher).abs().mean())
    # Scale invariance per sample: each sample rescaled by its own positive factor costs nothing.
    scaled = teacher * torch.tensor([3.0, 0.2]).view(2, 1, 1, 1)
    assert feature_distance(scaled, teacher, "scale_invariant") < 1e-10
    assert feature_distance(scaled, teacher, "mse") > 0.1
    assert feature_distance(-teacher, teacher, "scale_invariant") == pytest.approx(4.0)


def test_distiller_forward_runs_student_and_teacher_in_one_call(pair, batch):
    """`Distiller.forward(network, x)` gives the student's outputs and the same distillation term as
    the two-call form (`network(x)` then `distiller(x)`), and its gradient reaches the student."""
    from distill import Distiller
    student, teacher_model = pair
    distiller = Distiller(student, teacher_model, DEFAULT_LAYERS, [0.1, 0.1])
    try:
        outputs, total, terms = distiller.forward(student, batch)
        expected_outputs = student(batch)
        expected_total, expected_terms = distiller(batch)
        assert all(torch.equal(a, b) for a, b in zip(outputs, expected_outputs))
        assert torch.equal(total, expected_total) and total.item() > 0
        assert terms.keys() == expected_terms.keys() == set(DEFAULT_LAYERS)
        student.zero_grad(set_to_none=True)
        total.backward()
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())
    finally:
        distiller.student_taps.remove()
        distiller.teacher_taps.remove()
