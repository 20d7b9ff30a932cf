"""Networks as their authors write them (a reflect pad before the first conv, non-computing ops before
the last one): special_layer requests reach every quantizer on the path into the named layer, a
request the prepared model does not honour stops with one line, and the plan's input bits agree.
The networks are written here; the assertions read the prepared model's MQBench fake quantizers."""
import copy
import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.ao.quantization import FakeQuantizeBase

from quant import calibrate, prepare_quantized_model, quant_plan_rows
from quant.special_layers import SpecialLayerError

W4A4 = {"weight": {"bits": 4}, "activation": {"bits": 4}, "calibration_batches": 2}


class PadFirst(nn.Module):
    """Reflect pad, then pixel-unshuffle, then the first conv: two quantizers reach that conv's input."""
    input_kind = "mosaic"
    outputs = ("rgb",)

    def __init__(self):
        super().__init__()
        self.head = nn.Conv2d(4, 8, 3)
        self.body = nn.Conv2d(8, 8, 3, padding=1)
        self.tail = nn.Conv2d(8, 12, 3, padding=1)

    def forward(self, x):
        y = F.pixel_unshuffle(F.pad(x, (2, 2, 2, 2), mode="reflect"), 2)
        y = F.relu(self.head(y))
        y = F.relu(self.body(y))
        return F.pixel_shuffle(self.tail(y), 2)


class PadLast(nn.Module):
    """The block output feeds a side conv directly and the last conv through a pad module and a
    transpose: two quantizers on the last conv's input, the first shared with the side conv."""
    input_kind = "mosaic"
    outputs = ("rgb",)

    def __init__(self):
        super().__init__()
        self.first = nn.Conv2d(1, 8, 3, padding=1)
        self.act = nn.LeakyReLU(0.2)
        self.side = nn.Conv2d(8, 8, 1)
        self.pad = nn.ReflectionPad2d(1)
        self.last = nn.Conv2d(8, 3, 3)

    def forward(self, x):
        y = self.act(self.first(x))
        return self.last(self.pad(y).transpose(2, 3).contiguous()).transpose(2, 3) + self.side(y)[:, :3]


def prepare(model, special):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return prepare_quantized_model(model, W4A4, special)


def quantizers_into(qmodel, module_name):
    """Every fake quantizer on the paths into a module, found by walking the prepared graph back over
    every op until a conv, the graph input or an op with weights."""
    node = next(n for n in qmodel.graph.nodes if n.op == "call_module" and n.target == module_name)
    found, queue = [], list(node.all_input_nodes)
    while queue:
        source = queue.pop()
        module = qmodel.get_submodule(source.target) if source.op == "call_module" else None
        if isinstance(module, FakeQuantizeBase):
            found.append(module)
        elif module is not None and not isinstance(module, nn.ReflectionPad2d):
            continue  # a computing module: what reaches it was quantized elsewhere
        if source.op != "placeholder" and not (source.op == "call_function" and source.target is F.relu):
            queue.extend(source.all_input_nodes)
    return found


def bits(quantizer):
    levels = quantizer.quant_max - quantizer.quant_min + 1
    assert quantizer.bitwidth == levels.bit_length() - 1 and levels == 2 ** quantizer.bitwidth
    return quantizer.bitwidth


def test_input_layer_reaches_the_quantizer_after_a_reflect_pad():
    qmodel = prepare(PadFirst(), {"input_layer": 8})
    into_head = quantizers_into(qmodel, "head")
    assert len(into_head) == 2  # after the graph input and after the pad + unshuffle
    assert [bits(q) for q in into_head] == [8, 8]
    assert all(q.quant_min == 0 and q.quant_max == 255 for q in into_head)  # affine activations
    assert [bits(q) for q in quantizers_into(qmodel, "body")] == [4]  # the rest stays at the scheme's

    # What the first conv computes with lies on an 8-bit grid, not a 4-bit one.
    calibrate(qmodel, [torch.rand(1, 1, 32, 32) for _ in range(2)])
    seen = []
    hook = qmodel.get_submodule("head").register_forward_pre_hook(lambda _, inputs: seen.append(inputs[0]))
    with torch.no_grad():
        qmodel(torch.rand(1, 1, 32, 32))
    hook.remove()
    assert 16 < seen[0].unique().numel() <= 256

    plan = {row["quantizer"]: row for row in quant_plan_rows(qmodel, (1, 1, 32, 32))}
    assert plan["head.weight_fake_quant"]["input_bits"] == 8
    assert plan["body.weight_fake_quant"]["input_bits"] == 4


def test_eight_bit_input_to_the_last_conv_through_a_pad_module():
    qmodel = prepare(PadLast(), {"last": {"input": 8}})
    into_last = quantizers_into(qmodel, "last")
    assert len(into_last) == 2
    assert [bits(q) for q in into_last] == [8, 8]
    # The same request written on the producer's activation reaches both quantizers as well.
    qmodel = prepare(PadLast(), {"act": {"activation": 8}})
    assert [bits(q) for q in quantizers_into(qmodel, "last")] == [8, 8]


def test_a_request_left_at_fewer_bits_stops_with_one_line():
    # The pixel_unshuffle's own activation entry keeps its quantizer at 4 bits, which is on the first
    # conv's input path: input_layer: 8 cannot hold, and the error says which entry to change.
    with pytest.raises(SpecialLayerError) as caught:
        prepare(PadFirst(), {"input_layer": 8, "pixel_unshuffle": {"activation": 4}})
    message = str(caught.value)
    assert "\n" not in message
    assert "input_layer" in message and "head" in message
    assert "pixel_unshuffle_post_act_fake_quantizer at 4 bits" in message
    assert "raise pixel_unshuffle.activation to 8 bits" in message


# ----------------------------------------------------------------------------- auxiliary outputs

class RgbRawNet(nn.Module):
    """RGB plus a denoised packed raw, both from one trunk; the heads start at zero so that a head
    whose weights move after training was reached by its own loss."""
    input_kind = "mosaic"
    outputs = ("rgb", "raw")

    def __init__(self, channels: int = 8):
        super().__init__()
        self.trunk = nn.Conv2d(4, channels, 3, padding=1)
        self.act = nn.LeakyReLU(0.2)
        self.rgb_head = nn.Conv2d(channels, 12, 1)
        self.raw_head = nn.Conv2d(channels, 4, 1)
        for head in (self.rgb_head, self.raw_head):
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)

    def forward(self, x):
        packed = F.pixel_unshuffle(x, 2)
        features = self.act(self.trunk(packed))
        return F.pixel_shuffle(self.rgb_head(features), 2), packed + self.raw_head(features)


class WithIgnoredOutput(RgbRawNet):
    """A third output the harness has no target for, from a branch of its own."""
    outputs = ("rgb", "raw", "ignore")

    def __init__(self):
        super().__init__()
        self.aux = nn.Conv2d(8, 8, 3, padding=1)
        self.aux_act = nn.ReLU()
        self.aux_out = nn.Conv2d(8, 1, 1)

    def forward(self, x):
        packed = F.pixel_unshuffle(x, 2)
        features = self.act(self.trunk(packed))
        rgb = F.pixel_shuffle(self.rgb_head(features), 2)
        return rgb, packed + self.raw_head(features), self.aux_out(self.aux_act(self.aux(features)))


def test_rgb_and_raw_outputs_are_both_trained(synthetic_sid_root, tmp_path, monkeypatch):
    import train
    from harness.config import load_config
    from harness.setup import build_train_loader
    from data.raw_cache import RawCache
    from data.sid import normalise_mosaic, pack_raw
    from test_train import write_run_config

    monkeypatch.chdir(tmp_path)
    config_path = write_run_config(tmp_path, synthetic_sid_root, model={"name": f"{__name__}:RgbRawNet"},
                                   schedule__epochs=1, schedule__iters_per_epoch=2, data__max_val_pairs=1,
                                   data__max_test_pairs=1, data__flip=False, loss__raw_weight=2.0,
                                   output__experiment="rgb_raw")
    # The batches carry the raw target: the long exposure's mosaic, normalised without the ratio, packed.
    config = load_config(config_path)
    loader = build_train_loader(config, "mosaic", seed=0)
    batch = next(iter(loader))
    assert batch["raw"].shape == (2, 4, 32, 32) and batch["input"].shape == (2, 1, 64, 64)
    pair = loader.dataset.pairs[0]
    long_mosaic, info = RawCache(loader.dataset.cache.cache_dir).mosaic(pair.long_path)
    sample = loader.dataset.sample(0, 0, 0, False, False, False)
    expected = pack_raw(normalise_mosaic(long_mosaic[:64, :64], info, 1.0))
    assert torch.equal(sample["raw"], torch.from_numpy(expected))

    train.main(["--config", str(config_path)])
    state = torch.load(tmp_path / "onnx" / "rgb_raw.pth", weights_only=True)["model"]
    assert state["raw_head.weight"].abs().sum() > 0  # only the raw loss reaches this head
    assert state["rgb_head.weight"].abs().sum() > 0


def test_loss_weights_each_output_and_ignored_outputs_have_no_target():
    from harness.config import LossConfig
    from harness.loss import task_loss

    torch.manual_seed(0)
    rgb, raw, aux = torch.rand(1, 3, 8, 8), torch.rand(1, 4, 4, 4), torch.rand(1, 1, 4, 4)
    batch = {"rgb": torch.rand(1, 3, 8, 8), "raw": torch.rand(1, 4, 4, 4)}
    weights = LossConfig(rgb_weight=1.0, raw_weight=0.5)
    loss = task_loss((rgb, raw, aux), batch, weights, declared=("rgb", "raw", "ignore"))
    assert torch.allclose(loss, F.l1_loss(rgb, batch["rgb"]) + 0.5 * F.l1_loss(raw, batch["raw"]))
    with pytest.raises(ValueError, match="'raw' output has no target"):
        task_loss((rgb, raw), {"rgb": batch["rgb"]}, weights, declared=("rgb", "raw"))


def test_graph_parts_reaching_only_an_ignored_output_are_reported():
    from distill.hessian import hessian_trace_per_layer
    from quant import format_quant_plan

    model = WithIgnoredOutput()
    qmodel = prepare(model, None)
    rows = quant_plan_rows(qmodel, (1, 1, 32, 32))
    lost = {row["quantizer"] for row in rows if row["supervised"] is False}
    assert lost == {"aux.weight_fake_quant", "aux_out.weight_fake_quant",
                    "aux_act_post_act_fake_quantizer"}
    assert all(row["supervised"] for row in rows if row["quantizer"].startswith(("trunk", "rgb_head", "raw_head")))
    assert "not supervised" in format_quant_plan(rows) and "aux, aux_out" in format_quant_plan(rows)

    batches = [{"input": torch.rand(1, 1, 32, 32), "rgb": torch.rand(1, 3, 32, 32), "raw": torch.rand(1, 4, 16, 16)}]
    from harness.config import LossConfig
    from harness.loss import task_loss
    loss = lambda outputs, batch: task_loss(outputs, batch, LossConfig(), "mse", model.outputs)  # noqa: E731
    with pytest.warns(UserWarning, match="aux_act"):
        traces = hessian_trace_per_layer(model, None, batches, loss, probes=2, progress=False)
    assert set(traces) == {"act"}  # the ignored branch's activation is left out of the ranking


# ----------------------------------------------------------------------------- tracing hooks

def rearrange(tensor, pattern, **sizes):
    """An einops-style function: Python checks on the tensor's shape, which torch.fx cannot trace."""
    if pattern != "b c (h p1) (w p2) -> b (c p1 p2) h w":
        raise NotImplementedError(pattern)
    if tensor.shape[-1] % sizes["p2"] or tensor.shape[-2] % sizes["p1"]:
        raise ValueError("sizes do not divide")
    return F.pixel_unshuffle(tensor, sizes["p1"])


class UsesRearrange(nn.Module):
    input_kind = "mosaic"
    outputs = ("rgb",)

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 12, 3, padding=1)

    def forward(self, x):
        return F.pixel_shuffle(self.conv(rearrange(x, "b c (h p1) (w p2) -> b (c p1 p2) h w", p1=2, p2=2)), 2)


def test_an_untraceable_function_is_kept_whole_through_fx_wrap():
    from distill.features import trace_for_features
    from models import build_model
    from models.tracing import UntraceableNetworkError

    with pytest.raises(UntraceableNetworkError) as caught:
        prepare(UsesRearrange(), None)
    assert "model.fx_wrap" in str(caught.value) and "\n" not in str(caught.value)

    model = build_model(f"{__name__}:UsesRearrange", fx_wrap=[f"{__name__}.rearrange"])
    qmodel = prepare(model, {"conv": {"input": 8}})
    calls = [n for n in qmodel.graph.nodes if n.op == "call_function" and n.target is rearrange]
    assert len(calls) == 1  # one opaque node, with the quantizers around it
    assert {bits(q) for q in quantizers_into(qmodel, "conv")} == {8}
    calibrate(qmodel, [torch.rand(1, 1, 32, 32)])
    assert qmodel(torch.rand(1, 1, 32, 32)).shape == (1, 3, 32, 32)
    # The distillation / Hessian tracer keeps it whole too.
    assert any(n.target is rearrange for n in trace_for_features(model).graph.nodes)

    with pytest.raises(ValueError, match="did you mean 'rearrange'"):
        build_model(f"{__name__}:UsesRearrange", fx_wrap=[f"{__name__}.rearange"])


class DataDependentGate(nn.Module):
    """Branches in Python on a tensor value: untraceable, fine as one opaque module."""

    def forward(self, x):
        return x * 0.5 if float(x.detach().mean()) > 0.5 else x


class UsesGate(UsesRearrange):
    def __init__(self):
        super().__init__()
        self.gate = DataDependentGate()

    def forward(self, x):
        return F.pixel_shuffle(self.conv(self.gate(F.pixel_unshuffle(x, 2))), 2)


def test_an_untraceable_module_is_kept_opaque_through_fx_leaf_modules():
    from distill.features import trace_for_features
    from models import build_model
    from models.tracing import UntraceableNetworkError

    with pytest.raises(UntraceableNetworkError, match="module 'gate' .*model.fx_leaf_modules"):
        prepare(UsesGate(), None)
    model = build_model(f"{__name__}:UsesGate", fx_leaf_modules=[f"{__name__}:DataDependentGate"])
    qmodel = prepare(model, None)
    assert [n.target for n in qmodel.graph.nodes if n.op == "call_module" and n.target == "gate"] == ["gate"]
    assert "gate" in [n.target for n in trace_for_features(model).graph.nodes]
    calibrate(qmodel, [torch.rand(1, 1, 32, 32)])
    x = torch.rand(1, 1, 32, 32)
    assert qmodel(x).shape == model(x).shape


# ----------------------------------------------------------------------------- function nodes, listing

class Residual(nn.Module):
    """A residual block whose sum (`add`, a function node) feeds the next conv and, through a ReLU,
    the output: a name distillation and the Hessian ranking must accept."""
    input_kind = "mosaic"
    outputs = ("rgb",)

    def __init__(self):
        super().__init__()
        self.inner = nn.Conv2d(4, 4, 3, padding=1)
        self.act = nn.ReLU()
        self.after = nn.Conv2d(4, 12, 3, padding=1)

    def forward(self, x):
        packed = F.pixel_unshuffle(x, 2)
        summed = self.act(self.inner(packed)) + packed
        return F.pixel_shuffle(self.after(summed) + F.relu(summed).repeat(1, 3, 1, 1), 2)


def test_distillation_at_an_add_node():
    from distill import Distiller

    torch.manual_seed(0)
    teacher = Residual()
    student = prepare(copy.deepcopy(teacher), None)  # QAT modules share the float model's tensors
    calibrate(student, [torch.rand(1, 1, 32, 32)])
    distiller = Distiller(student, teacher, ["add"], [1.0])
    x = torch.rand(2, 1, 32, 32)
    with pytest.raises(RuntimeError, match="run the student on the same input first"):
        distiller(x)
    student(x)
    total, terms = distiller(x)
    packed = F.pixel_unshuffle(x, 2)
    expected_teacher = teacher.act(teacher.inner(packed)) + packed
    assert torch.allclose(distiller.teacher_taps.outputs["add"], expected_teacher)
    assert torch.allclose(terms["add"], F.mse_loss(distiller.student_taps.outputs["add"], expected_teacher))
    total.backward()
    assert student.get_submodule("inner").weight.grad.abs().sum() > 0
    distiller.remove()
    assert not [name for name, _ in student.named_modules() if "_distill_tap_" in name]
    assert not [name for name, _ in distiller.teacher.named_modules() if "_distill_tap_" in name]


def test_a_failed_attach_leaves_no_hooks_behind():
    from distill import Distiller

    teacher = Residual()
    student = prepare(copy.deepcopy(teacher), None)  # QAT modules share the float model's tensors
    with pytest.raises(ValueError, match="no layer 'ad'"):
        Distiller(student, teacher, ["add", "ad"], [1.0, 1.0])
    assert not student._forward_hooks and not student._forward_pre_hooks
    assert all(not module._forward_hooks for module in student.modules())
    assert all(p.requires_grad for p in teacher.parameters())  # the teacher was not frozen either
    Distiller(student, teacher, ["add"], [1.0])  # the next attempt in the same process works


def test_hessian_ranking_at_an_add_node():
    from harness.config import LossConfig
    from harness.loss import task_loss
    from distill.hessian import hessian_trace_per_layer

    torch.manual_seed(0)
    model = Residual()
    batches = [{"input": torch.rand(1, 1, 32, 32), "rgb": torch.rand(1, 3, 32, 32)}]
    traces = hessian_trace_per_layer(model, ["add", "act"], batches,
                                     lambda outputs, batch: task_loss(outputs, batch, LossConfig(), "mse"),
                                     probes=4, progress=False)
    assert set(traces) == {"add", "act"} and traces["add"].samples == 4
    assert traces["add"].trace > 0 and traces["add"].elements == 4 * 16 * 16


def test_the_layer_listing_names_every_node_with_its_quantizers(tmp_path, capsys):
    import yaml
    from tools.layers import main

    config = tmp_path / "layers.yaml"
    config.write_text(yaml.safe_dump({
        "model": {"name": f"{__name__}:PadFirst"}, "quant": True, "quant_scheme": W4A4,
        "extra_quantizer_dict": {"special_layer": {"input_layer": 8}}, "device": "cpu"}))
    rows = {row.name: row for row in main(["--config", str(config), "--size", "32", "--csv", str(tmp_path / "l.csv")])}
    assert list(rows) == ["pad", "pixel_unshuffle", "head", "relu", "body", "relu_1", "tail", "pixel_shuffle"]
    assert rows["pad"].op == "function pad" and rows["pad"].shape == "1x1x36x36"
    # MQBench's "first layer at 8 bits" rule sees only convs fed by the graph input itself, so the pad
    # keeps this conv's weights at the scheme's 4 bits: the listing shows it.
    assert rows["head"].shape == "1x8x16x16" and rows["head"].weight_bits == "4"
    assert sorted(rows["head"].input_quantizers) == ["pixel_unshuffle_post_act_fake_quantizer (8)",
                                                     "x_post_act_fake_quantizer (8)"]
    assert rows["head"].special_layer == ["weight", "activation", "input"]
    assert rows["relu"].accepted_by() == "special_layer(activation) distill_config hessian"
    assert rows["body"].input_quantizers == ["relu_post_act_fake_quantizer (4)"]
    assert (tmp_path / "l.csv").read_text().count("\n") == len(rows) + 1
    assert "pixel_unshuffle_post_act_fake_quantizer (8)" in capsys.readouterr().out


# ----------------------------------------------------------------------------- API and smaller items

class WidthIsChannels(nn.Module):
    """A published constructor whose `width` is a channel count, not the harness's multiplier."""
    input_kind = "mosaic"
    outputs = ("rgb",)

    def __init__(self, width: int = 8):
        super().__init__()
        self.conv = nn.Conv2d(4, width, 3, padding=1)
        self.out = nn.Conv2d(width, 12, 1)

    def forward(self, x):
        return F.pixel_shuffle(self.out(self.conv(F.pixel_unshuffle(x, 2))), 2)


def test_width_is_passed_only_when_given_and_constructor_failures_are_one_line():
    from models import build_model

    assert build_model(f"{__name__}:WidthIsChannels").conv.out_channels == 8  # its own default, not 1.0
    with pytest.raises(ValueError) as caught:
        build_model(f"{__name__}:WidthIsChannels", width=0.5)
    message = str(caught.value)
    assert message.startswith("model: WidthIsChannels(width=0.5) failed (") and "\n" not in message
    with pytest.raises(ValueError, match="no argument 'widht'; did you mean 'width'"):
        build_model(f"{__name__}:WidthIsChannels", kwargs={"widht": 4})


def test_api_order_errors_and_no_ratio_keys_without_ratios():
    import lowlight_qat as lq

    model = lq.build_network(f"{__name__}:WidthIsChannels")
    batches = [{"input": torch.rand(1, 1, 32, 32), "rgb": torch.rand(1, 3, 32, 32)}]
    with pytest.raises(ValueError, match="pass the model lq.quantize"):
        lq.calibrate(model, batches)
    with pytest.raises(ValueError, match="the student has no fake quantizers"):
        lq.attach_distillation(model, model, ["conv"])
    means, _ = lq.evaluate(model, batches)
    assert not [key for key in means if "nan" in key] and "psnr" in means
    means, _ = lq.evaluate(model, [dict(batches[0], ratio=torch.tensor([100.0]))])
    assert "psnr_x100" in means


def test_export_report_size_rule_is_measured_on_the_network():
    from deploy.onnx_export import measured_shape_rule

    assert "downsamples the mosaic 2x" in measured_shape_rule(WidthIsChannels(), "mosaic")

    class PoolsTwice(WidthIsChannels):  # packing, then two 2x poolings: 8x on the mosaic
        def forward(self, x):
            low = F.max_pool2d(F.max_pool2d(self.conv(F.pixel_unshuffle(x, 2)), 2), 2)
            return F.pixel_shuffle(self.out(F.interpolate(low, scale_factor=4.0)), 2)

    assert "downsamples the mosaic 8x" in measured_shape_rule(PoolsTwice(), "mosaic")


def test_clip_input_clips_the_amplified_input_at_one(synthetic_sid_root, synthetic_sid_cache_dir):
    from data.raw_cache import RawCache
    from data.sid import SIDTrainDataset, finish_batch, read_list

    pairs = read_list(synthetic_sid_root / "Sony_train_list.txt", synthetic_sid_root)[:1]
    cache = RawCache(synthetic_sid_cache_dir)
    plain = SIDTrainDataset(pairs, cache, 64, "mosaic").sample(0, 0, 0, False, False, False)["input"]
    clipping = SIDTrainDataset(pairs, cache, 64, "mosaic", clip_input=True)
    clipped = clipping.sample(0, 0, 0, False, False, False)["input"]
    assert plain.max() > 1 and torch.equal(clipped, plain.clamp(max=1.0))
    clipping.output_raw = True  # the loader's path: uint16 in the worker, arithmetic in finish_batch
    raw = clipping.sample(0, 0, 0, False, False, False)
    batch = finish_batch({k: (v[None] if torch.is_tensor(v) else [v]) for k, v in raw.items()}, "mosaic",
                         clip_input=True)
    assert torch.equal(batch["input"][0], clipped)


def test_a_network_with_raw_and_ignored_outputs_exports_and_runs_in_onnxruntime(tmp_path):
    import json

    import lowlight_qat as lq

    torch.manual_seed(0)
    model = lq.build_network("examples.published_style_net:PublishedStyleNet", channels=8,
                             fx_wrap=["examples.published_style_net.merge_windows"])
    qmodel = lq.quantize(model, "w8a8", special_layers={"input_layer": 10})
    lq.calibrate(qmodel, [{"input": torch.rand(1, 4, 32, 32)}])
    report = lq.export_onnx(qmodel, tmp_path / "export")
    assert report["passed"]
    saved = json.loads((tmp_path / "export" / "export_report.json").read_text())
    for kind in ("full_precision", "qdq"):
        outputs = {o["name"]: o["shape"] for o in saved["models"][kind]["outputs"]}
        assert outputs == {"rgb": ["batch", 3, "height", "width"],
                           "denoised_raw": ["batch", 4, "height_half", "width_half"],
                           "output2": ["batch", 1, "height_half", "width_half"]}


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_export_check_and_rounding_replay_on_a_network_with_a_pad_before_its_first_conv(runtime, tmp_path):
    # Outside DBF/DBLE: the 8-bit input through the reflect pad and pixel-unshuffle exports, passes in
    # the runtime, and the rounding replay still tells a 2% wrong activation scale from rounding,
    # naming that quantizer.
    pytest.importorskip(runtime)
    import numpy as np
    import onnx

    from deploy import export_qdq
    from deploy.onnx_verify import rounding_explanation
    from deploy.quantizers import describe, fake_quantizers
    torch.manual_seed(0)
    qmodel = prepare(PadFirst(), {"input_layer": 8})
    calibrate(qmodel, [torch.rand(1, 1, 64, 64, generator=torch.Generator().manual_seed(s)) for s in range(2)])
    qmodel.eval()
    info = export_qdq(qmodel, tmp_path / "q.onnx", runtimes=[runtime])
    assert info.checks["runtimes"][runtime]["passed"]
    graph = onnx.load(str(tmp_path / "q.onnx"))
    initializers = {i.name: i for i in graph.graph.initializer}
    quantizes = [n for n in graph.graph.node if n.op_type == "QuantizeLinear"]
    quantize = quantizes[len(quantizes) // 2]
    scale = onnx.numpy_helper.to_array(initializers[quantize.input[1]]).astype(np.float32)
    graph.graph.initializer.append(onnx.numpy_helper.from_array((scale * np.float32(1.02)).astype(np.float32), "wrong"))
    quantize.input[1] = "wrong"
    specs = [describe(name, fq) for name, fq in fake_quantizers(qmodel)]
    x = torch.rand(2, 1, 128, 128, generator=torch.Generator().manual_seed(3))
    verdict = rounding_explanation(graph, qmodel, specs, x, runtime, 40.0)
    assert not verdict["explained"] and quantize.name.rsplit("/", 1)[0] in verdict["not_rounding"], verdict
