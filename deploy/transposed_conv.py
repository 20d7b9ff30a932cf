"""Transposed convolutions as integer kernels: an exact rewrite of the exported QDQ graph.

onnxruntime's CPU provider has no integer ConvTranspose, so a quantized upsampling layer runs in
float between a DequantizeLinear and a QuantizeLinear; worse, its NHWC layout pass cannot cross it,
and every integer convolution next to one is wrapped in layout Transposes. The decoders of DBF,
DBLE and the SID U-Net upsample with ConvTranspose(kernel = stride = 2, no padding), whose output
blocks do not overlap:

    y[n, c, k*h + i, k*w + j] = b[c] + sum_in x[n, in, h, w] * W[in, c, i, j]

which is a 1x1 convolution to k*k*C channels followed by a shuffle of those channels into k x k
blocks. The 1x1 convolution fuses into QLinearConv. The shuffle is written on the uint8 tensor in
NHWC order (Transpose, Reshape, Transpose, Reshape, Transpose), where each moved block is k*C
contiguous bytes; ONNX's DepthToSpace would do the same in NCHW, where onnxruntime moves single
bytes and took as long as the float ConvTranspose did. The layout Transposes at both ends cancel
against those onnxruntime inserts around its NHWC integer kernels, so the decoder stays NHWC.

A per-tensor QuantizeLinear commutes with any reordering of elements, so moving it from after the
upsampling to before the shuffle changes no value: the rewritten graph computes the same sums of the
same products. Only the order in which a kernel adds them in float may differ, which can move a
value lying on a rounding tie by one quantization step (none in the DBF/DBLE exports measured);
the export's own onnxruntime-against-PyTorch check runs on the rewritten graph.

Only layers that then become integer kernels are rewritten: input and weights dequantized from
8-bit integers, output quantized per tensor to 8 bits in the standard QuantizeLinear form. A float
upsampling (full-precision export, Academic placement without output quantizers, 10-bit weights,
10-bit or sub-range quantizers written as Mul -> Clip -> QuantizeLinear) would gain nothing and
keeps its ConvTranspose.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import onnx
from onnx import helper, numpy_helper


def _attributes(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _non_overlapping_kernel(node: onnx.NodeProto) -> Optional[tuple[int, int]]:
    """(kh, kw) when the ConvTranspose is 2-D with kernel == stride and nothing else set."""
    attributes = _attributes(node)
    kernel = list(attributes.get("kernel_shape", []))
    if len(kernel) != 2 or list(attributes.get("strides", [1, 1])) != kernel:
        return None
    auto_pad = attributes.get("auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    plain = (auto_pad in ("NOTSET", "VALID") and not any(attributes.get("pads", [0] * 4))
             and not any(attributes.get("output_padding", [0, 0])) and attributes.get("group", 1) == 1
             and all(d == 1 for d in attributes.get("dilations", [1, 1])) and "output_shape" not in attributes)
    return (int(kernel[0]), int(kernel[1])) if plain else None


class _Graph:
    """Lookups over one graph: constants (seen through Identity), producers and consumers."""

    def __init__(self, graph: onnx.GraphProto):
        self.graph = graph
        self.initializers = {i.name: i for i in graph.initializer}
        self.producer = {out: node for node in graph.node for out in node.output}
        self.consumers: dict[str, list] = {}
        for node in graph.node:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)
        self.outputs = {o.name for o in graph.output}

    def constant(self, name: str) -> Optional[np.ndarray]:
        seen = set()
        while name not in self.initializers:
            node = self.producer.get(name)
            # The TorchScript exporter shares equal constants (e.g. zero biases) through Identity.
            if node is None or node.op_type != "Identity" or name in seen:
                return None
            seen.add(name)
            name = node.input[0]
        return numpy_helper.to_array(self.initializers[name])

    def sole_consumer(self, name: str) -> Optional[onnx.NodeProto]:
        users = self.consumers.get(name, [])
        return users[0] if len(users) == 1 and name not in self.outputs else None

    def add(self, name: str, array: np.ndarray) -> str:
        self.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name


EIGHT_BIT = (np.int8, np.uint8)  # the types onnxruntime's QLinearConv takes


def _eight_bit_pair(graph: _Graph, node: Optional[onnx.NodeProto], op_type: str, per_tensor: bool) -> bool:
    """node is a QuantizeLinear/DequantizeLinear of an 8-bit type (per tensor where asked)."""
    if node is None or node.op_type != op_type or len(node.input) < 3:
        return False
    scale, zero_point = graph.constant(node.input[1]), graph.constant(node.input[2])
    if scale is None or zero_point is None or zero_point.dtype not in EIGHT_BIT:
        return False
    return scale.size == 1 or not per_tensor


def _block_shuffle(graph: _Graph, source: str, target: str, prefix: str, kh: int, kw: int,
                   channels: int) -> list:
    """Nodes that turn (N, kh*kw*C, H, W), channels ordered (i, j, c), into (N, C, kh*H, kw*W)."""
    split = graph.add(f"{prefix}.split_shape", np.array([0, 0, 0, kh, -1], np.int64))
    spatial = graph.add(f"{prefix}.spatial_axes", np.array([0, 2, 3], np.int64))
    factors = graph.add(f"{prefix}.factors", np.array([1, kh, kw], np.int64))
    depth = graph.add(f"{prefix}.channels", np.array([channels], np.int64))
    make = helper.make_node
    return [
        make("Transpose", [source], [f"{prefix}/nhwc"], perm=[0, 2, 3, 1], name=f"{prefix}/to_nhwc"),
        # (N, H, W, kh*kw*C) -> (N, H, W, kh, kw*C) -> (N, H, kh, W, kw*C) = (N, kh*H, kw*W, C)
        make("Reshape", [f"{prefix}/nhwc", split], [f"{prefix}/rows"], name=f"{prefix}/split_rows"),
        make("Transpose", [f"{prefix}/rows"], [f"{prefix}/interleaved"], perm=[0, 1, 3, 2, 4],
             name=f"{prefix}/interleave_rows"),
        make("Shape", [source], [f"{prefix}/shape"], name=f"{prefix}/shape"),
        make("Gather", [f"{prefix}/shape", spatial], [f"{prefix}/nhw"], axis=0, name=f"{prefix}/nhw"),
        make("Mul", [f"{prefix}/nhw", factors], [f"{prefix}/upsampled_nhw"], name=f"{prefix}/upsampled_nhw"),
        make("Concat", [f"{prefix}/upsampled_nhw", depth], [f"{prefix}/upsampled_shape"], axis=0,
             name=f"{prefix}/upsampled_shape"),
        make("Reshape", [f"{prefix}/interleaved", f"{prefix}/upsampled_shape"], [f"{prefix}/upsampled_nhwc"],
             name=f"{prefix}/merge"),
        make("Transpose", [f"{prefix}/upsampled_nhwc"], [target], perm=[0, 3, 1, 2], name=f"{prefix}/to_nchw"),
    ]


def transposed_convs_as_integer_convs(model: onnx.ModelProto) -> list[str]:
    """Rewrite, in place, every ConvTranspose that can become an integer 1x1 convolution (see the
    module text); returns the names of the rewritten nodes in graph order."""
    graph = _Graph(model.graph)
    before: dict[int, list] = {}  # id(node) -> nodes replacing it
    after: dict[int, list] = {}  # id(node) -> nodes to put right after it
    replaced, rewritten = set(), []
    for node in model.graph.node:
        if node.op_type != "ConvTranspose":
            continue
        kernel = _non_overlapping_kernel(node)
        source = graph.producer.get(node.input[0])
        weight_dq = graph.producer.get(node.input[1])
        quantize = graph.sole_consumer(node.output[0])
        if (kernel is None or not _eight_bit_pair(graph, source, "DequantizeLinear", per_tensor=True)
                or not _eight_bit_pair(graph, weight_dq, "DequantizeLinear", per_tensor=False)
                or not _eight_bit_pair(graph, quantize, "QuantizeLinear", per_tensor=True)):
            continue
        integers, scale, zero_point = (graph.constant(name) for name in weight_dq.input[:3])
        axis = _attributes(weight_dq).get("axis", 1)
        bias = graph.constant(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        if integers is None or scale is None or integers.ndim != 4 or (scale.size > 1 and axis % 4 != 1) or (
                len(node.input) > 2 and node.input[2] and bias is None):
            continue  # per-input-channel weights or computed tensors have no 1x1-convolution form
        kh, kw = kernel
        in_channels, out_channels = integers.shape[:2]
        blocks = kh * kw
        prefix = f"{node.name or node.output[0]}/as_conv"
        # Output channel (i, j, c) of the 1x1 convolution is W[:, c, i, j]: c innermost, so that
        # in NHWC each k*C run of bytes lands in one output row.
        weight = graph.add(f"{prefix}.weight_quantized",
                           integers.transpose(2, 3, 1, 0).reshape(blocks * out_channels, in_channels, 1, 1))
        if scale.size > 1:
            scale_name = graph.add(f"{prefix}.weight_scale", np.tile(scale, blocks))
            zero_name = graph.add(f"{prefix}.weight_zero_point", np.tile(zero_point, blocks))
            axis_attribute = {"axis": 0}
        else:
            scale_name, zero_name, axis_attribute = weight_dq.input[1], weight_dq.input[2], {}
        dq_inputs = [weight, scale_name, zero_name]
        conv_inputs = [node.input[0], f"{prefix}/weight"]
        if bias is not None:
            conv_inputs.append(graph.add(f"{prefix}.bias", np.tile(bias, blocks)))
        blocks_out = f"{prefix}/blocks"
        before[id(node)] = [
            helper.make_node("DequantizeLinear", dq_inputs, [f"{prefix}/weight"], name=f"{prefix}/weight_dq",
                             **axis_attribute),
            helper.make_node("Conv", conv_inputs, [blocks_out], name=prefix, kernel_shape=[1, 1]),
        ]
        # The quantizer moves ahead of the shuffle: it then reads the convolution directly (so that
        # the pair fuses into QLinearConv) and the shuffle moves bytes.
        quantized = quantize.output[0]
        quantize.input[0] = blocks_out
        quantize.output[0] = f"{prefix}/blocks_quantized"
        after[id(quantize)] = _block_shuffle(graph, quantize.output[0], quantized, f"{prefix}/shuffle",
                                             kh, kw, int(out_channels))
        replaced.add(id(node))
        rewritten.append(node.name or node.output[0])
    if not rewritten:
        return []
    nodes = []
    for node in model.graph.node:
        nodes.extend(before.get(id(node), []) if id(node) in replaced else [node])
        nodes.extend(after.get(id(node), []))
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    _drop_unused(model.graph)
    return rewritten


def _drop_unused(graph: onnx.GraphProto) -> None:
    """Remove nodes and initializers nothing reads any more (the old weight DequantizeLinears)."""
    while True:
        needed = {o.name for o in graph.output} | {name for node in graph.node for name in node.input}
        kept = [node for node in graph.node if any(out in needed for out in node.output)]
        if len(kept) == len(graph.node):
            break
        del graph.node[:]
        graph.node.extend(kept)
    needed = {name for node in graph.node for name in node.input}
    initializers = [i for i in graph.initializer if i.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(initializers)
