"""quant/: scheme config, preparation with special layers, input/output quantization, calibration,
QAT, quant plan and quantized checkpoints, on the narrow DBF/DBLE (width 0.25, 64x64 inputs)."""
import csv
import io
import warnings
from pathlib import Path

import pytest
import torch
import yaml
from torch.ao.quantization import FakeQuantizeBase

from models.dbf_dble import DBFDBLE
from quant import (calibrate, fake_quantizers, format_quant_plan, load_quantized_state, param_groups,
                   parse_quant_scheme, prepare_quantized_model, quant_plan_rows, quantized_state,
                   quantizer_parameters, unquantized_input_paths, write_quant_plan)
from quant.scheme import QuantSchemeConfig, extra_qconfig_dict
from quant.special_layers import parse_special_layers

ROOT = Path(__file__).resolve().parents[1]
SEED_CONFIG = ROOT.parent / "shared" / "spec" / "seed_aba_config.yaml"
W4A4 = {"weight": {"bits": 4}, "activation": {"bits": 4}, "calibration_batches": 2}


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def batches(n=2, size=64):
    generator = torch.Generator().manual_seed(1)
    return [torch.rand(1, 1, size, size, generator=generator) for _ in range(n)]


def prepare(scheme=None, special=None, quantize_output=False):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return prepare_quantized_model(DBFDBLE(0.25), scheme if scheme is not None else W4A4, special, quantize_output)


def bits_of(quantizer):
    # Read back from the quantizer and its observer: both must agree or calibration and QAT disagree.
    observer = quantizer.activation_post_process
    assert (quantizer.quant_min, quantizer.quant_max) == (observer.quant_min, observer.quant_max)
    assert quantizer.bitwidth == (quantizer.quant_max - quantizer.quant_min + 1).bit_length() - 1
    return quantizer.bitwidth


def node_of(qmodel, target):
    return next(n for n in qmodel.graph.nodes if n.target == target)


# ----------------------------------------------------------------------------- scheme config

def test_scheme_defaults_give_mqbench_qconfig():
    extra = extra_qconfig_dict(QuantSchemeConfig())
    assert extra["w_fakequantize"] == extra["a_fakequantize"] == "LearnableFakeQuantize"
    assert extra["w_qscheme"] == {"bit": 8, "symmetry": True, "per_channel": True, "pot_scale": False}
    assert extra["a_qscheme"] == {"bit": 8, "symmetry": False, "per_channel": False, "pot_scale": False}


@pytest.mark.parametrize("section, expected", [
    ({"weight": {"quantizer": "lsqq"}}, "quant_scheme.weight.quantizer: unknown 'lsqq'; did you mean 'lsq'? valid: lsq, lsq+"),
    ({"activation": {"observer": "EMAMinMaxObserverr"}}, "did you mean 'EMAMinMaxObserver'?"),
    ({"weight": {"bitz": 4}}, "quant_scheme.weight.bitz: unknown key 'bitz'; did you mean 'bits'?"),
    ({"calibration_batchs": 2}, "did you mean 'calibration_batches'?"),
    ({"weight": {"quantizer": "dsq", "params": {"alpah": 0.2}}}, "unknown dsq parameter 'alpah'; did you mean 'alpha'?"),
    ({"activation": {"per_channel": True}}, "quant_scheme.activation.per_channel: activations are quantized per tensor"),
    ({"weight": {"quantizer": "pact", "per_channel": True}}, "pact is per-tensor only"),
    ({"weight": {"bits": 1}}, "quant_scheme.weight.bits:"),
])
def test_bad_scheme_gives_one_line_error_with_suggestion(section, expected):
    with pytest.raises(ValueError) as error:
        parse_quant_scheme(section)
    message = str(error.value)
    assert "\n" not in message and expected in message


def test_quantizer_names_and_lsq_plus():
    scheme = parse_quant_scheme({"weight": {"quantizer": "lsq+", "symmetric": True},
                                 "activation": {"quantizer": "DSQFakeQuantize"}})
    assert scheme.weight.fake_quantize_class == "LearnableFakeQuantize" and scheme.weight.symmetric is False
    assert scheme.activation.fake_quantize_class == "DSQFakeQuantize"
    assert parse_quant_scheme({"weight": {"quantizer": "LSQ"}}).weight.quantizer == "lsq"


@pytest.mark.parametrize("path", sorted((ROOT / "configfile").glob("scheme_*.yaml")), ids=lambda p: p.stem)
def test_scheme_files_hold_a_valid_quant_scheme(path):
    data = yaml.safe_load(path.read_text())
    assert list(data) == ["quant_scheme"]
    parse_quant_scheme(data["quant_scheme"])


# ----------------------------------------------------------------------------- special layer parsing

@pytest.mark.parametrize("special, expected", [
    ({"DBF.DBF_out": {"weight": "10 per_chanel_affine"}},
     "special_layer.DBF.DBF_out.weight: unknown scheme 'per_chanel_affine'; did you mean 'per_channel_affine'? "
     "valid: per_channel_affine, per_tensor_affine, per_channel_symmetric, per_tensor_symmetric"),
    ({"DBF.DBF_out": {"wieght": "10"}}, "special_layer.DBF.DBF_out: unknown key 'wieght'; did you mean 'weight'?"),
    ({"DBF.DBF_out": {"weight": "ten per_tensor_affine"}}, "special_layer.DBF.DBF_out.weight: bits must be an integer"),
    ({"input_layer": 40}, "special_layer.input_layer: bits must be between 2 and 16"),
])
def test_bad_special_layer_text_names_the_layer(special, expected):
    with pytest.raises(ValueError) as error:
        parse_special_layers(special)
    assert "\n" not in str(error.value) and expected in str(error.value)


def test_unknown_layer_name_lists_nearest():
    with pytest.raises(ValueError) as error:
        prepare(special={"DBF.DBF_conv1.Conv3": {"weight": "10 per_channel_affine"}})
    message = str(error.value)
    assert "\n" not in message
    assert "no layer 'DBF.DBF_conv1.Conv3' in the traced model; nearest: DBF.DBF_conv1.Conv2, DBF.DBF_conv1.Conv1" in message


def test_per_channel_activation_override_is_refused():
    with pytest.raises(ValueError, match="DBF.DBF_out.activation: activations are quantized per tensor"):
        prepare(special={"DBF.DBF_out": {"activation": "10 per_channel_affine"}})


# ----------------------------------------------------------------------------- preparation

def test_special_layers_land_on_the_intended_quantizers():
    special = {
        "input_layer": 10,
        "DBF.DBF_conv1.Conv2": {"weight": "10 per_channel_affine", "activation": "6 per_tensor_symmetric"},
        "DBF.DBF_conv9.lrelu_dup1": {"weight": "10 per_channel_affine", "activation": "7 per_tensor_affine"},
        "DBLE.dual_up8": {"weight": "5 per_channel_symmetric"},
    }
    with pytest.warns(UserWarning, match=r"DBF\.DBF_conv9\.lrelu_dup1\.weight: ignored, LeakyReLU"):
        qmodel = prepare_quantized_model(DBFDBLE(0.25), W4A4, special)
    modules = dict(qmodel.named_modules())

    weight = modules["DBF.DBF_conv1.Conv2.weight_fake_quant"]
    assert bits_of(weight) == 10 and (weight.quant_min, weight.quant_max) == (0, 1023)
    assert weight.qscheme == torch.per_channel_affine and weight.ch_axis == 0
    # A genuine, trainable MQBench LSQ quantizer, not a patched range.
    assert type(weight).__name__ == "LearnableFakeQuantize"
    assert any(p is weight.scale for p in quantizer_parameters(qmodel))
    # ConvTranspose weights are per-channel along their output axis (1).
    deconv = modules["DBLE.dual_up8.weight_fake_quant"]
    assert bits_of(deconv) == 5 and (deconv.quant_min, deconv.quant_max) == (-16, 15) and deconv.ch_axis == 1

    # Conv2's output goes LeakyReLU -> (pool, skip concatenation): both quantizers carry the override.
    for name in ("dbf_pool1_post_act_fake_quantizer", "cat_3_post_act_fake_quantizer"):
        assert bits_of(modules[name]) == 6 and (modules[name].quant_min, modules[name].quant_max) == (-32, 31)
        assert modules[name].special_layer_sources == ["DBF.DBF_conv1.Conv2.activation"]
    block_out = modules["dbf_dbf_conv9_lrelu_1_post_act_fake_quantizer"]
    assert node_of(qmodel, "dbf_dbf_conv9_lrelu_1_post_act_fake_quantizer").args[0].target == "DBF.DBF_conv9.lrelu_dup1"
    assert bits_of(block_out) == 7 and (block_out.quant_min, block_out.quant_max) == (0, 127)
    assert bits_of(modules["x_post_act_fake_quantizer"]) == 10

    # Everything else keeps the scheme (MQBench's first layer stays at its 8 bits).
    assert bits_of(modules["DBF.DBF_conv2.Conv1.weight_fake_quant"]) == 4
    assert bits_of(modules["dbf_dbf_conv2_lrelu_post_act_fake_quantizer"]) == 4
    assert bits_of(modules["DBF.DBF_conv1.Conv1.weight_fake_quant"]) == 8


@pytest.mark.skipif(not SEED_CONFIG.is_file(), reason="the user's config is in ../shared/spec")
def test_users_special_layer_block_applies_as_it_is():
    special = yaml.safe_load(SEED_CONFIG.read_text())["extra_quantizer_dict"]["special_layer"]
    weightless = [name for name, entry in special.items() if name.split(".")[-1].startswith("lrelu") and "weight" in entry]
    for quantize_output in (False, True):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            qmodel = prepare_quantized_model(DBFDBLE(0.25), W4A4, special, quantize_output)
        messages = [str(w.message) for w in caught]
        assert sum("weight: ignored, LeakyReLU has no quantized weight" in m for m in messages) == len(weightless) == 5
        # The rgb head's output reaches no quantizer unless the network output is quantized.
        head = [m for m in messages if m.startswith("extra_quantizer_dict.special_layer.DBLE.DBLE_out.activation: ignored")]
        assert len(messages) == 5 + len(head) and len(head) == (0 if quantize_output else 1)
        assert all("set quantize_output: true" in m for m in head)
    modules = dict(qmodel.named_modules())
    for name, entry in special.items():
        if name == "input_layer" or name.split(".")[-1].startswith("lrelu"):
            continue
        assert bits_of(modules[f"{name}.weight_fake_quant"]) == 10, name
        assert modules[f"{name}.weight_fake_quant"].qscheme == torch.per_channel_affine
    assert bits_of(modules["x_post_act_fake_quantizer"]) == 10
    assert bits_of(modules["dble_dual_conv9_lrelu_1_post_act_fake_quantizer"]) == 10
    assert bits_of(modules["dbf_dbf_conv1_lrelu_post_act_fake_quantizer"]) == 10
    # The rest of the network stays at 4 bits.
    assert bits_of(modules["DBLE.dual_conv6.Conv1.weight_fake_quant"]) == 4
    assert bits_of(modules["dble_dual_conv6_lrelu_post_act_fake_quantizer"]) == 4


def test_every_path_from_the_input_passes_one_input_quantizer():
    qmodel = prepare(special={"input_layer": 10})
    placeholder = next(n for n in qmodel.graph.nodes if n.op == "placeholder")
    assert [u.target for u in placeholder.users] == ["x_post_act_fake_quantizer"]
    assert unquantized_input_paths(qmodel) == []
    # downshuffle reads the 10-bit input; MQBench's requantization after it (at 4 bits) is gone.
    unshuffle = next(n for n in qmodel.graph.nodes if n.name == "pixel_unshuffle")
    assert unshuffle.args[0].target == "x_post_act_fake_quantizer"
    assert [u.target for u in unshuffle.users] == ["DBLE.color_conv1.Conv1"]
    assert "pixel_unshuffle_post_act_fake_quantizer" not in dict(qmodel.named_modules())
    # The transposed convolutions read quantized activations too.
    assert all(str(node_of(qmodel, up).args[0].target).endswith("_fake_quantizer")
               for up in ("DBF.DBF_upv5", "DBLE.color_up5", "DBLE.dual_up8"))


def test_quantize_output_adds_one_quantizer_per_output():
    assert not any(r["kind"] == "output" for r in quant_plan_rows(prepare()))
    qmodel = prepare(quantize_output=True)
    output = next(n for n in qmodel.graph.nodes if n.op == "output")
    outs = output.args[0]
    assert [n.target for n in outs] == ["dbf_lrelu_post_act_fake_quantizer", "up2_post_act_fake_quantizer"]
    assert sorted(r["layer"] for r in quant_plan_rows(qmodel) if r["kind"] == "output") == ["DBF.lrelu", "up2"]
    # Only the output edge: DBLE keeps reading the mono image through its own quantizer.
    assert {u.name for u in node_of(qmodel, "DBF.lrelu").users} == {"pixel_unshuffle_1", "dbf_lrelu_post_act_fake_quantizer"}
    mono, rgb = qmodel(batches(1)[0])
    assert mono.shape == (1, 1, 64, 64) and rgb.shape == (1, 3, 64, 64)


# ----------------------------------------------------------------------------- calibration and QAT

def _qat_steps(qmodel, steps, lr=1e-3, quantizer_lr=None):
    optimizer = torch.optim.Adam(param_groups(qmodel, lr, quantizer_lr))
    qmodel.train()
    for x in batches(steps):
        mono, rgb = qmodel(x)
        loss = (mono - x).abs().mean() + (rgb - x.expand_as(rgb)).abs().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return loss


def test_calibration_then_qat_moves_the_learnable_scales():
    qmodel = prepare()
    with pytest.raises(RuntimeError, match="calibrate"):
        param_groups(qmodel, 1e-3)  # per-channel scales still have shape (1,)
    assert calibrate(qmodel, batches(3)) == 2  # the scheme's calibration_batches
    quantizers = fake_quantizers(qmodel)
    assert all(not q.observer_enabled[0] and q.fake_quant_enabled[0] for q in quantizers.values())
    weight = quantizers["DBF.DBF_conv2.Conv1.weight_fake_quant"]
    assert weight.scale.shape == (4,)  # one per output channel of the narrow conv
    before = {name: q.scale.detach().clone() for name, q in quantizers.items()}
    _qat_steps(qmodel, 2, quantizer_lr=1e-2)
    moved = [name for name, q in quantizers.items() if not torch.equal(before[name], q.scale.detach())]
    assert len(moved) > 0.9 * len(quantizers)


@pytest.mark.parametrize("path", sorted((ROOT / "configfile").glob("scheme_w4a4_*.yaml")), ids=lambda p: p.stem)
def test_each_quantizer_prepares_calibrates_and_trains(path):
    scheme = yaml.safe_load(path.read_text())["quant_scheme"]
    scheme["calibration_batches"] = 1
    qmodel = prepare(scheme, special={"DBF.DBF_out": {"weight": "8", "activation": "8"}})
    calibrate(qmodel, batches(1))
    loss = _qat_steps(qmodel, 1)
    assert torch.isfinite(loss)
    grads = [p.grad for p in qmodel.parameters() if p.grad is not None]
    # DoReFa rescales weights to [-1, 1] and this network has no normalisation to absorb it: gradients
    # may overflow (prepare warns about it); the others must stay finite.
    assert grads and (scheme["weight"]["quantizer"] == "dorefa" or all(torch.isfinite(g).all() for g in grads))
    learnable = quantizer_parameters(qmodel)
    if scheme["weight"]["quantizer"].startswith("lsq") or scheme["activation"]["quantizer"] == "pact":
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in learnable)


# ----------------------------------------------------------------------------- plan and checkpoint

USER_SUBSET = {"input_layer": 10,
               "DBF.DBF_conv1.Conv1": {"weight": "10 per_channel_affine", "activation": "10 per_tensor_affine"},
               "DBLE.DBLE_out": {"weight": "10 per_channel_affine", "activation": "10 per_tensor_affine"}}


def test_quant_plan_rows_table_and_csv(tmp_path):
    qmodel = prepare(special=USER_SUBSET, quantize_output=True)
    calibrate(qmodel, batches(1))
    rows = quant_plan_rows(qmodel)
    assert len(rows) == len(fake_quantizers(qmodel))
    by_name = {r["quantizer"]: r for r in rows}
    first = by_name["DBF.DBF_conv1.Conv1.weight_fake_quant"]
    assert (first["kind"], first["bits"], first["granularity"], first["symmetry"]) == ("weight", 10, "per-channel", "affine")
    assert first["override"] == "DBF.DBF_conv1.Conv1.weight" and first["range_min"] < first["range_max"]
    act = by_name["dbf_dbf_conv1_lrelu_post_act_fake_quantizer"]
    assert (act["layer"], act["feeds"], act["bits"]) == ("DBF.DBF_conv1.lrelu", "DBF.DBF_conv1.Conv2", 10)
    assert by_name["x_post_act_fake_quantizer"]["kind"] == "input"
    # DBLE_out -> lrelu -> up2 -> output: its activation override is the rgb output quantizer.
    assert by_name["up2_post_act_fake_quantizer"]["override"] == "DBLE.DBLE_out.activation"

    table = format_quant_plan(rows)
    lines = table.splitlines()
    assert lines[0].startswith(f"quant plan: {len(rows)} fake quantizers")
    assert any(line.startswith("10    input") for line in lines)
    assert any(line.startswith("4     weight") and "all other weights" in line for line in lines)
    assert len(lines) < 20  # readable at a glance

    path = write_quant_plan(rows, tmp_path / "plan" / "quant_plan.csv")
    with open(path) as stream:
        written = list(csv.DictReader(stream))
    assert len(written) == len(rows) and written[0].keys() >= {"quantizer", "bits", "range_min", "override"}
    assert [p.name for p in path.parent.iterdir()] == ["quant_plan.csv"]  # no temporary left behind


def test_quantized_checkpoint_round_trips_into_a_fresh_model():
    torch.manual_seed(0)
    qmodel = prepare(special=USER_SUBSET, quantize_output=True)
    calibrate(qmodel, batches(2))
    _qat_steps(qmodel, 1, quantizer_lr=1e-2)
    qmodel.eval()
    x = batches(1, 64)[0]
    with torch.no_grad():
        expected = qmodel(x)
    buffer = io.BytesIO()
    torch.save(quantized_state(qmodel), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)

    torch.manual_seed(123)  # other random weights: everything must come from the checkpoint
    fresh = prepare(special=USER_SUBSET, quantize_output=True)
    load_quantized_state(fresh, state)
    fresh.eval()
    with torch.no_grad():
        got = fresh(x)
    for a, b in zip(expected, got):
        assert torch.allclose(a, b, atol=1e-6, rtol=0)
    saved_flags = {n: (int(q.fake_quant_enabled), int(q.observer_enabled)) for n, q in fake_quantizers(qmodel).items()}
    assert saved_flags == {n: (int(q.fake_quant_enabled), int(q.observer_enabled)) for n, q in fake_quantizers(fresh).items()}
    # The optimizer can be built right away: no calibration needed after loading.
    assert len(param_groups(fresh, 1e-4)) == 2

    with pytest.raises(ValueError) as error:
        load_quantized_state(prepare(special=None, quantize_output=True), state)
    assert "\n" not in str(error.value) and "special_layer" in str(error.value)
