"""Every traced node of a network with what the config can do with it: the names to write in
`extra_quantizer_dict.special_layer`, `distill_config` / `output_layer_list` and `tools/hessian_rank.py
--layers`, found without reading the traced graph by hand (tools/layers.py prints them).

Names are those of the traced graph: a module's path (`encoder.conv1`), `<module>_dup<k>` for the
k-th extra call of a module called more than once (a LeakyReLU reused in a block: `lrelu` is the
first call, `lrelu_dup1` the second), and for a function or method call the node name torch.fx gives
it (`add`, `add_1`, `cat_2`, `pixel_unshuffle`: the function's name, numbered in call order).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn
from torch.fx import GraphModule
from torch.fx.passes.shape_prop import ShapeProp

from distill.features import activation_layer_names, tappable_names, trace_for_features
from quant.paths import feeding_quantizers, is_quantizer_node, quantizer_bits
from quant.prepare import WEIGHT_QUANTIZER, output_quantizers


@dataclass
class LayerRow:
    name: str
    op: str  # module class name, or "function <name>" / "method <name>"
    shape: str  # output shape at the example input ('-' when not a tensor)
    input_quantizers: list[str] = field(default_factory=list)  # "<quantizer> (<bits>)", nearest first
    output_quantizers: list[str] = field(default_factory=list)
    weight_bits: str = ""
    special_layer: list[str] = field(default_factory=list)  # roles it accepts: weight, activation, input
    distill: bool = False  # distill_config / output_layer_list
    hessian: str = ""  # "default" (ranked when --layers is not given), "named" (with --layers), ""

    def accepted_by(self) -> str:
        keys = []
        if self.special_layer:
            keys.append(f"special_layer({','.join(self.special_layer)})")
        if self.distill:
            keys.append("distill_config")
        if self.hessian:
            keys.append("hessian" + ("(default)" if self.hessian == "default" else ""))
        return " ".join(keys) or "-"


def _op_label(graph_module: GraphModule, node) -> str:
    if node.op == "call_module":
        return type(graph_module.get_submodule(node.target)).__name__
    if node.op == "call_function":
        return f"function {getattr(node.target, '__name__', str(node.target))}"
    return f"method {node.target}"


def _shape(node) -> str:
    meta = node.meta.get("tensor_meta")
    if meta is None:
        return "-"
    if hasattr(meta, "shape"):
        return "x".join(map(str, meta.shape))
    if isinstance(meta, (tuple, list)):  # a tuple of tensors (a network's outputs, a split)
        return "(" + ", ".join("x".join(map(str, m.shape)) for m in meta if hasattr(m, "shape")) + ")"
    return "x".join(map(str, meta.shape))


def _quantizer_labels(qmodel: GraphModule, nodes) -> list[str]:
    return [f"{node.target} ({quantizer_bits(qmodel.get_submodule(node.target))})" for node in nodes]


def layer_rows(model: nn.Module, qmodel: GraphModule, example: torch.Tensor) -> list[LayerRow]:
    """One row per traced node of `model` (placeholders and the output left out), in execution
    order, with the quantizers `qmodel` (its prepared copy) puts on its input and output."""
    traced = trace_for_features(model)
    was_training = traced.training
    traced.eval()
    with torch.no_grad():
        ShapeProp(traced).propagate(example)
    traced.train(was_training)
    tappable = set(tappable_names(traced))
    default_ranked = set(activation_layer_names(traced, include_outputs=False))
    prepared = {}
    for node in qmodel.graph.nodes:
        if node.op == "call_module" and not is_quantizer_node(qmodel, node):
            prepared.setdefault(str(node.target), node)
        elif node.op in ("call_function", "call_method"):
            prepared.setdefault(node.name, node)
    rows = []
    for node in traced.graph.nodes:
        if node.op not in ("call_module", "call_function", "call_method"):
            continue
        name = str(node.target) if node.op == "call_module" else node.name
        row = LayerRow(name, _op_label(traced, node), _shape(node), distill=name in tappable,
                       hessian="default" if name in default_ranked else ("named" if name in tappable else ""))
        twin = prepared.get(name)
        if twin is not None:
            feeding = feeding_quantizers(qmodel, twin)
            produced = output_quantizers(qmodel, twin)[0]
            row.input_quantizers = _quantizer_labels(qmodel, feeding)
            row.output_quantizers = _quantizer_labels(qmodel, produced)
            weight = getattr(qmodel.get_submodule(twin.target), WEIGHT_QUANTIZER, None) \
                if twin.op == "call_module" else None
            if weight is not None:
                row.weight_bits = str(quantizer_bits(weight))
                row.special_layer.append("weight")
            if produced:
                row.special_layer.append("activation")
            if feeding:
                row.special_layer.append("input")
        rows.append(row)
    return rows


def format_layer_rows(rows: list[LayerRow]) -> str:
    header = ("name", "op", "output shape", "input quantizers (bits)", "output quantizers (bits)", "weight bits",
              "accepted by")
    table = [(r.name, r.op, r.shape, ", ".join(r.input_quantizers) or "-", ", ".join(r.output_quantizers) or "-",
              r.weight_bits or "-", r.accepted_by()) for r in rows]
    widths = [max(len(str(line[i])) for line in table + [header]) for i in range(len(header))]
    lines = ["  ".join(str(cell).ljust(widths[i]) for i, cell in enumerate(line)).rstrip() for line in [header] + table]
    return "\n".join(lines)
