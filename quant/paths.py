"""Which fake quantizers limit what a layer receives, on any traced graph: the one definition used by
special_layer requests (quant/prepare.py), their check, the cost's input bits and the quant plan.

"The input of layer L" is every activation fake quantizer on the paths into L through ops that do not
compute (helpers.graph_ops.passes_values: pad, reshape/view/permute, pixel (un)shuffle, cat, slicing,
identity, casts): such ops move quantized values without leaving their grid, so each quantizer on the
way caps the precision L sees. A network that pads before its first conv therefore has two
quantizers on its input (after the graph input and after the pad): both are "the input of the first
conv", and `input_layer` covers both. The effective input bits of L are the fewest bits among them.

"The network input" (`input_layer`) is every activation quantizer reached from a graph input
through such ops, up to the first op that computes.
"""
from __future__ import annotations

import math

from torch.ao.quantization import FakeQuantizeBase
from torch.fx import GraphModule, Node

from helpers.graph_ops import passes_values


def is_quantizer_node(gm: GraphModule, node: Node) -> bool:
    return node.op == "call_module" and isinstance(gm.get_submodule(node.target), FakeQuantizeBase)


def quantizer_bits(quantizer: FakeQuantizeBase) -> int:
    return int(round(math.log2(quantizer.quant_max - quantizer.quant_min + 1)))


def _passes(gm: GraphModule, node: Node) -> bool:
    return is_quantizer_node(gm, node) or passes_values(gm, node)


def _breadth_first(start, step):
    """Every node reached from `start`, once each, nearest first; `step(node)` names the nodes to go on to."""
    seen, queue = set(), list(start)
    while queue:
        node = queue.pop(0)
        if node not in seen:
            seen.add(node)
            yield node
            queue.extend(step(node))


def feeding_quantizers(gm: GraphModule, node: Node) -> list[Node]:
    """Quantizer nodes on the paths into `node` (nearest first): walking back over its tensor inputs
    through quantizers and non-computing ops, stopping at anything that computes and at graph inputs.
    Empty when `node` reads an unquantized tensor."""
    walk = _breadth_first(node.all_input_nodes, lambda n: n.all_input_nodes if _passes(gm, n) else [])
    return [source for source in walk if is_quantizer_node(gm, source)]


def network_input_quantizers(gm: GraphModule) -> list[Node]:
    """Quantizer nodes on the paths from the graph inputs, up to the first op that computes."""
    inputs = [u for n in gm.graph.nodes if n.op == "placeholder" for u in n.users]
    walk = _breadth_first(inputs, lambda n: n.users if _passes(gm, n) else [])
    return [node for node in walk if is_quantizer_node(gm, node)]


def first_consumers(gm: GraphModule, node: Node) -> list[Node]:
    """The computing nodes (or the graph output) that read `node`'s value through non-computing ops."""
    walk = _breadth_first(node.users, lambda n: n.users if _passes(gm, n) else [])
    return [user for user in walk if not _passes(gm, user)]


def effective_input(gm: GraphModule, node: Node):
    """(bits, quantizer node) of the lowest-bit quantizer feeding `node`, or (None, None) when its
    input is not quantized."""
    lowest = None
    for source in feeding_quantizers(gm, node):
        bits = quantizer_bits(gm.get_submodule(source.target))
        if lowest is None or bits < lowest[0]:
            lowest = (bits, source)
    return lowest or (None, None)


def node_label(node: Node) -> str:
    """What users write for a node: the module path of a module call, else the node name."""
    if node.op == "call_module":
        return str(node.target)
    if node.op == "output":
        return "(network output)"
    return node.name
