"""Graph facts shared by quantization and distillation: which traced ops only move values around.

A tensor quantized before such an op is still on the same grid after it (quant/prepare.py does not
requantize it), and an activation read through such ops alone is the network output
(distill/features.py leaves it out of the distillation candidates)."""
import torch
import torch.nn as nn
from torch.fx import GraphModule, Node

REARRANGING_FUNCTIONS = {torch.pixel_unshuffle, torch.pixel_shuffle, torch.nn.functional.pixel_shuffle,
                         torch.nn.functional.pixel_unshuffle, torch.reshape, torch.flatten, torch.permute,
                         torch.transpose, torch.squeeze, torch.unsqueeze}
REARRANGING_METHODS = {"view", "reshape", "permute", "flatten", "contiguous", "transpose", "squeeze", "unsqueeze"}
REARRANGING_MODULES = (nn.PixelShuffle, nn.PixelUnshuffle, nn.Flatten, nn.Unflatten, nn.Identity)


def is_rearranging(model: GraphModule, node: Node) -> bool:
    if node.op == "call_function":
        return node.target in REARRANGING_FUNCTIONS
    if node.op == "call_method":
        return node.target in REARRANGING_METHODS
    if node.op == "call_module":
        return isinstance(model.get_submodule(node.target), REARRANGING_MODULES)
    return False
