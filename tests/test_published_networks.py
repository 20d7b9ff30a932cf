"""Networks as their authors write them (a reflect pad before the first conv, non-computing ops before
the last one): special_layer requests reach every quantizer on the path into the named layer, a
request the prepared model does not honour stops with one line, and the plan's input bits agree.
The networks are written here; the assertions read the prepared model's MQBench fake quantizers."""
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
