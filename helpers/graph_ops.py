"""Graph facts shared by quantization and distillation: which traced ops only move values around.

A tensor quantized before such an op is still on the same grid after it (quant/prepare.py does not
requantize it), and an activation read through such ops alone is the network output
(distill/features.py leaves it out of the distillation candidates)."""
import operator

import torch
import torch.nn as nn
from torch.fx import GraphModule, Node

REARRANGING_FUNCTIONS = {torch.pixel_unshuffle, torch.pixel_shuffle, torch.nn.functional.pixel_shuffle,
                         torch.nn.functional.pixel_unshuffle, torch.reshape, torch.flatten, torch.permute,
                         torch.transpose, torch.squeeze, torch.unsqueeze}
REARRANGING_METHODS = {"view", "reshape", "permute", "flatten", "contiguous", "transpose", "squeeze", "unsqueeze"}
REARRANGING_MODULES = (nn.PixelShuffle, nn.PixelUnshuffle, nn.Flatten, nn.Unflatten, nn.Identity)


def _node_in(model: GraphModule, node: Node, functions, methods, modules) -> bool:
    if node.op == "call_function":
        return node.target in functions
    if node.op == "call_method":
        return node.target in methods
    if node.op == "call_module":
        return isinstance(model.get_submodule(node.target), modules)
    return False


def is_rearranging(model: GraphModule, node: Node) -> bool:
    return _node_in(model, node, REARRANGING_FUNCTIONS, REARRANGING_METHODS, REARRANGING_MODULES)


# Ops whose output values are input values (or a constant pad), only moved, selected, joined or cast:
# a quantized tensor stays quantized through them, so the quantizers before and after one of them all
# limit what the next computing layer receives. quant/paths.py builds "the input of layer L" on this.
PASSING_FUNCTIONS = REARRANGING_FUNCTIONS | {
    torch.nn.functional.pad, torch.cat, torch.concat, torch.stack, torch.chunk, torch.split, torch.narrow,
    torch.select, torch.index_select, torch.roll, torch.flip, torch.movedim, torch.unbind, torch.clone,
    torch.detach, torch.swapaxes, torch.tile, operator.getitem}
PASSING_METHODS = REARRANGING_METHODS | {
    "chunk", "split", "narrow", "select", "index_select", "roll", "flip", "movedim", "unbind", "clone",
    "detach", "expand", "expand_as", "repeat", "tile", "view_as", "reshape_as", "swapaxes", "unflatten",
    "to", "type", "type_as", "float", "double", "half", "bfloat16", "__getitem__"}
PASSING_MODULES = REARRANGING_MODULES + (
    nn.ReflectionPad1d, nn.ReflectionPad2d, nn.ReflectionPad3d, nn.ReplicationPad1d, nn.ReplicationPad2d,
    nn.ReplicationPad3d, nn.ZeroPad2d, nn.ConstantPad1d, nn.ConstantPad2d, nn.ConstantPad3d, nn.ChannelShuffle)


def passes_values(model: GraphModule, node: Node) -> bool:
    """True for an op that does not compute: pad, reshape/view/permute, pixel (un)shuffle, cat,
    slicing, identity, casts, contiguous (the names above). Unlike `is_rearranging`, it includes
    ops that join several tensors (cat) or add constant borders (pad)."""
    return _node_in(model, node, PASSING_FUNCTIONS, PASSING_METHODS, PASSING_MODULES)


def unsupervised_nodes(model: GraphModule, declared) -> set:
    """Names of the nodes whose value reaches none of the supervised outputs: the graph returns a
    tuple ordered as `declared` (the network's `outputs`, models/contract.py) and every position
    declared "ignore" is unsupervised. Empty when nothing is ignored or the graph's outputs do not
    line up with `declared`."""
    if not declared or "ignore" not in declared:
        return set()
    output = next(n for n in model.graph.nodes if n.op == "output")
    returned = output.args[0]
    if not isinstance(returned, (tuple, list)) or len(returned) != len(declared):
        return set()
    reached, queue = set(), [value for value, name in zip(returned, declared)
                             if name != "ignore" and isinstance(value, Node)]
    while queue:
        node = queue.pop()
        if node.name in reached:
            continue
        reached.add(node.name)
        queue.extend(node.all_input_nodes)
    return {n.name for n in model.graph.nodes
            if n.op not in ("placeholder", "output", "get_attr") and n.name not in reached}
