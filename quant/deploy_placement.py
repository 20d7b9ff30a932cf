"""Two adjustments to MQBench's deployment placements (`quant_scheme.backend` other than academic)
so that the exported QDQ graph runs on onnxruntime's integer kernels end to end:

* A max pool of a quantized tensor outputs values already on its input's grid. MQBench nevertheless
  requantizes it with a quantizer of its own, so onnxruntime sees DequantizeLinear -> MaxPool ->
  QuantizeLinear with two different scales and must run the pool in float. Here the pool's output
  quantizer becomes the very module of its input (called twice): in PyTorch that second call is an
  exact identity, and in ONNX the two Q/DQ pairs carry one scale, which onnxruntime drops to pool
  the uint8 tensor directly.
* MQBench leaves the channel attention's Sigmoid output float, so the attention product (a full-size
  tensor) runs in float between a DequantizeLinear and a QuantizeLinear. A quantizer after each
  Sigmoid (at the activation bits) lets onnxruntime fuse QLinearSigmoid and QLinearMul.

Both change the model QAT trains, so they are applied before calibration: the deployed graph holds
exactly the quantizers that QAT trained.
"""
from __future__ import annotations

import torch.nn as nn
from torch.fx import GraphModule

MAX_POOLS = (nn.MaxPool2d,)


def share_quantizers_across_max_pools(gm: GraphModule, is_quantizer) -> list[str]:
    """Quantizer after a max pool of a quantized tensor -> the input's quantizer; returns those removed."""
    removed = []
    for node in list(gm.graph.nodes):
        if not is_quantizer(gm, node):
            continue
        pool = node.args[0]
        if not (pool.op == "call_module" and isinstance(gm.get_submodule(pool.target), MAX_POOLS)):
            continue
        source = pool.args[0]
        if not is_quantizer(gm, source) or node.target == source.target:
            continue
        old = node.target
        node.target = source.target
        if not any(n.op == "call_module" and n.target == old for n in gm.graph.nodes):
            gm.delete_submodule(old)
        removed.append(old)
    return removed


def quantize_sigmoid_outputs(gm: GraphModule, is_quantizer, insert_after, make_quantizer) -> list[str]:
    """A quantizer after every Sigmoid module whose output is not quantized yet; returns their names."""
    added = []
    for node in list(gm.graph.nodes):
        if not (node.op == "call_module" and isinstance(gm.get_submodule(node.target), nn.Sigmoid)):
            continue
        users = list(node.users)
        if not users or any(is_quantizer(gm, user) for user in users):
            continue
        added.append(insert_after(gm, node, make_quantizer(), users).target)
    return added
