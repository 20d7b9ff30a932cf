"""What a quantized network costs: weight memory, activation bits, bit operations (BOPs), and the
share of quantizers above the scheme's bits, each with the full-precision (32-bit) figure beside it.

Definitions (per network input of REFERENCE_SIZE x REFERENCE_SIZE pixels, batch 1):

* weight memory = sum over weighted layers of (weight elements x weight bits); biases are not
  counted (they stay float in MQBench's Academic backend and are under 0.1 % of the weights here).
* activation bits = sum over activation quantizers (network input, conv inputs, quantized outputs)
  of (elements of the tensor it quantizes x its bits): the tensors a deployed network stores between
  layers.
* BOPs = sum over convolutions (and transposed convolutions, linear layers) of
  MACs x weight bits x effective input bits of that layer, the fewest bits among the quantizers on
  the paths into it (quant/paths.py) (HAWQ-V3 / NNCF's bit-operation count).
  A layer whose input reaches it without a quantizer (a transposed conv with
  `quantize_transposed_conv_input: false`) counts 32-bit activations.
* MACs of a Conv2d: output elements x in_channels / groups x kernel area; of a ConvTranspose2d:
  input elements x out_channels / groups x kernel area (each input value is spread over a kernel
  of outputs); of a Linear: output elements x in_features.

BOPs and activation bits grow with the pixels (except channel attention's 1x1 convolutions on
pooled features); REFERENCE_SIZE (512, the authors' training crop) keeps every plan comparable.
The measure is one forward pass at that size with observers and fake quantization switched off
(restored afterwards), so it changes no quantizer state.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn as nn
from torch.fx import GraphModule, Node

from quant.paths import effective_input
from quant.prepare import WEIGHT_QUANTIZER, _is_quantizer_node, fake_quantizers

REFERENCE_SIZE = 512
FLOAT_BITS = 32
WEIGHTED_TYPES = (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)


def _bits(quantizer) -> int:
    return int(round(math.log2(quantizer.quant_max - quantizer.quant_min + 1)))


def reference_input_shape(qmodel: GraphModule, size: int = REFERENCE_SIZE) -> tuple[int, ...]:
    """(1, channels, size, size): the channels the network's declared input kind has (models/contract.py),
    else those of the first weighted layer reading the input."""
    declared = {"mosaic": 1, "packed": 4}.get(getattr(qmodel, "input_kind", None))
    if declared is not None:
        return (1, declared, size, size)
    placeholders = [n for n in qmodel.graph.nodes if n.op == "placeholder"]
    frontier = list(placeholders)
    while frontier:
        node = frontier.pop(0)
        for user in node.users:
            module = qmodel.get_submodule(user.target) if user.op == "call_module" else None
            if isinstance(module, WEIGHTED_TYPES) and user.args and user.args[0] is node:
                channels = module.in_channels if hasattr(module, "in_channels") else module.in_features
                return (1, channels, size, size)
            if _is_quantizer_node(qmodel, user):
                frontier.append(user)
    raise ValueError("cost: no conv reads the network input directly; pass input_shape explicitly")


def input_quantizer(qmodel: GraphModule, node: Node) -> Optional[str]:
    """Name of the lowest-bit fake quantizer on the paths into `node` (a weighted layer) through ops
    that do not compute (quant/paths.py), which caps the precision it receives; None when its input
    is not quantized."""
    quantizer = effective_input(qmodel, node)[1]
    return None if quantizer is None else str(quantizer.target)


# Weighted ops of a torch.export graph (the torchao engine): (weight argument, output-channel axis of
# the weight for ConvTranspose's MAC count). Their layers are not modules there, so measure() reads
# shapes from an fx Interpreter run instead of module hooks.
def _exported_weighted_ops():
    aten = torch.ops.aten
    return {aten.conv2d.default: "conv", aten.conv_transpose2d.input: "conv_transpose", aten.linear.default: "linear"}


def _exported_rearranging_ops():
    aten = torch.ops.aten
    return {aten.pixel_unshuffle.default, aten.pixel_shuffle.default, aten.view.default, aten.reshape.default,
            aten.permute.default, aten.flatten.using_ints}


def _exported_input_quantizer(qmodel: GraphModule, node: Node) -> Optional[str]:
    source = node.args[0] if node.args else None
    rearranging = _exported_rearranging_ops()
    while isinstance(source, Node):
        if _is_quantizer_node(qmodel, source):
            return str(source.target)
        if source.op == "call_module" and not list(qmodel.get_submodule(source.target).parameters()):
            source = source.args[0]  # an identity tap (distillation) between
            continue
        if not (source.op == "call_function" and source.target in rearranging):
            return None
        source = source.args[0] if source.args else None
    return None


def _weight_owner(node: Node) -> Optional[str]:
    """The layer name of an exported weighted op: the module path of its weight parameter."""
    weight = node.args[1]
    while isinstance(weight, Node) and weight.op == "call_module":  # the weight fake quantizer
        weight = weight.args[0]
    if isinstance(weight, Node) and weight.op == "get_attr":
        return str(weight.target).rpartition(".")[0]
    return None


def _measure_exported(qmodel: GraphModule, x: torch.Tensor, found: dict, batch: int) -> None:
    kinds = _exported_weighted_ops()

    class Recorder(torch.fx.Interpreter):
        def run_node(self, node):
            result = super().run_node(node)
            if node.op == "call_function" and node.target in kinds:
                name = _weight_owner(node)
                if name is not None:
                    inputs, weight = self.env[node.args[0]], self.env[node.args[1]]
                    kernel = weight[0, 0].numel() if weight.dim() > 2 else 1
                    if kinds[node.target] == "conv_transpose":
                        macs = inputs.numel() * weight.shape[1] * kernel  # weight: (in, out/groups, k, k)
                    elif kinds[node.target] == "conv":
                        macs = result.numel() * weight.shape[1] * kernel  # weight: (out, in/groups, k, k)
                    else:
                        macs = result.numel() * weight.shape[1]
                    entry = found.setdefault(name, {"macs": 0, "weight_elements": int(weight.numel()),
                                                    "input_quantizer": _exported_input_quantizer(qmodel, node)})
                    entry["macs"] += int(macs) // batch
            return result

    Recorder(qmodel).run(x)


def measure(qmodel: GraphModule, input_shape=None) -> dict[str, dict]:
    """Per weighted layer {'macs', 'weight_elements', 'input_quantizer'} and per activation quantizer
    {'elements'}, keyed by module name, from one forward pass at `input_shape` (default: the
    reference input). Quantizer state is left exactly as it was."""
    input_shape = tuple(input_shape or reference_input_shape(qmodel))
    quantizers = fake_quantizers(qmodel)
    layer_nodes = {str(n.target): n for n in qmodel.graph.nodes if n.op == "call_module"}
    found: dict[str, dict] = {}
    hooks = []

    def weighted_hook(name, module):
        def hook(_, inputs, output):
            entry = found.setdefault(name, {"macs": 0, "weight_elements": int(module.weight.numel()),
                                            "input_quantizer": input_quantizer(qmodel, layer_nodes[name])})
            kernel = module.weight[0, 0].numel() if module.weight.dim() > 2 else 1
            if isinstance(module, nn.ConvTranspose2d):
                macs = inputs[0].numel() * module.out_channels // module.groups * kernel
            elif isinstance(module, nn.Conv2d):
                macs = output.numel() * module.in_channels // module.groups * kernel
            else:
                macs = output.numel() * module.in_features
            entry["macs"] += int(macs) // input_shape[0]
        return hook

    def quantizer_hook(name):
        def hook(_, inputs, output):
            found[name] = {"elements": int(output.numel()) // input_shape[0]}
        return hook

    for name, module in qmodel.named_modules():
        if name in layer_nodes and isinstance(module, WEIGHTED_TYPES):
            hooks.append(module.register_forward_hook(weighted_hook(name, module)))
        elif name in quantizers and not name.endswith("." + WEIGHT_QUANTIZER):
            hooks.append(module.register_forward_hook(quantizer_hook(name)))
    flags = {name: (q.fake_quant_enabled.clone(), q.observer_enabled.clone()) for name, q in quantizers.items()}
    was_training = qmodel.training
    try:
        for quantizer in quantizers.values():
            quantizer.fake_quant_enabled.fill_(0)  # shapes only: no quantization work, no range updates
            quantizer.observer_enabled.fill_(0)
        qmodel.eval()
        parameter = next(iter(qmodel.parameters()), None)
        device = parameter.device if parameter is not None else torch.device("cpu")
        with torch.no_grad():
            qmodel(torch.zeros(input_shape, device=device))
            if any(n.op == "call_function" and n.target in _exported_weighted_ops() for n in qmodel.graph.nodes):
                _measure_exported(qmodel, torch.zeros(input_shape, device=device), found, input_shape[0])
    finally:
        for hook in hooks:
            hook.remove()
        for name, (fake_quant, observer) in flags.items():
            quantizers[name].fake_quant_enabled.copy_(fake_quant)
            quantizers[name].observer_enabled.copy_(observer)
        qmodel.train(was_training)
    return found


def layer_cost_rows(qmodel: GraphModule, input_shape=None) -> list[dict]:
    """One row per weighted layer: MACs, weight elements and bits, input quantizer and bits, BOPs."""
    quantizers = fake_quantizers(qmodel)
    rows = []
    for name, entry in measure(qmodel, input_shape).items():
        if "macs" not in entry:
            continue
        weight_quantizer = quantizers.get(f"{name}.{WEIGHT_QUANTIZER}")
        weight_bits = _bits(weight_quantizer) if weight_quantizer is not None else FLOAT_BITS
        source = entry["input_quantizer"]
        input_bits = _bits(quantizers[source]) if source else FLOAT_BITS
        rows.append({"layer": name, "macs": entry["macs"], "weight_elements": entry["weight_elements"],
                     "weight_bits": weight_bits, "input_quantizer": source or "", "input_bits": input_bits,
                     "bops": entry["macs"] * weight_bits * input_bits})
    return rows


def plan_cost_columns(qmodel: GraphModule, input_shape=None) -> dict[str, dict]:
    """Per fake quantizer the cost columns of the quant plan: `elements` (weight elements, or the
    activation elements per reference input), and for weight quantizers the layer's `macs`,
    `input_bits` and `bops`."""
    measured = measure(qmodel, input_shape)
    quantizers = fake_quantizers(qmodel)
    columns = {}
    for name, quantizer in quantizers.items():
        if name.endswith("." + WEIGHT_QUANTIZER):
            layer = measured.get(name[: -len(WEIGHT_QUANTIZER) - 1])
            if layer is None:  # a weighted module the forward never calls
                columns[name] = {"elements": "", "macs": "", "input_bits": "", "bops": ""}
                continue
            source = layer["input_quantizer"]
            input_bits = _bits(quantizers[source]) if source else FLOAT_BITS
            columns[name] = {"elements": layer["weight_elements"], "macs": layer["macs"], "input_bits": input_bits,
                             "bops": layer["macs"] * _bits(quantizer) * input_bits}
        else:
            columns[name] = {"elements": measured.get(name, {}).get("elements", ""), "macs": "", "input_bits": "",
                             "bops": ""}
    return columns


def _number(value) -> Optional[float]:
    if value in ("", None):
        return None
    return float(value)


def cost_totals(rows: list[dict], scheme_bits: Optional[dict] = None) -> dict:
    """Totals of quant plan rows (from `quant_plan_rows` or read back from quant_plan.csv).

    `scheme_bits` {'weight': w, 'activation': a}: 'high bits' means above these (default: the rows'
    `scheme_bits` column). W8A8 figures are the same network with every quantizer at 8 bits: the
    unit of the allocation budget (quant/allocate.py)."""
    totals = {"weight_bits": 0, "weight_bits_fp32": 0, "weight_bits_w8a8": 0,
              "activation_bits": 0, "activation_bits_fp32": 0, "activation_bits_w8a8": 0,
              "bops": 0, "bops_fp32": 0, "bops_w8a8": 0, "macs": 0,
              "quantizers": 0, "high_bit_quantizers": 0}
    for row in rows:
        bits = int(row["bits"])
        totals["quantizers"] += 1
        default = (scheme_bits or {}).get("weight" if row["kind"] == "weight" else "activation")
        default = default if default is not None else _number(row.get("scheme_bits"))
        if default is not None and bits > default:
            totals["high_bit_quantizers"] += 1
        elements = _number(row.get("elements"))
        if elements is None:
            continue
        if row["kind"] == "weight":
            totals["weight_bits"] += elements * bits
            totals["weight_bits_fp32"] += elements * FLOAT_BITS
            totals["weight_bits_w8a8"] += elements * 8
            macs, input_bits = _number(row.get("macs")), _number(row.get("input_bits"))
            if macs is not None:
                totals["macs"] += macs
                totals["bops"] += macs * bits * input_bits
                totals["bops_fp32"] += macs * FLOAT_BITS * FLOAT_BITS
                totals["bops_w8a8"] += macs * 8 * (8 if input_bits < FLOAT_BITS else FLOAT_BITS)
        else:
            totals["activation_bits"] += elements * bits
            totals["activation_bits_fp32"] += elements * FLOAT_BITS
            totals["activation_bits_w8a8"] += elements * 8
    totals = {key: int(value) for key, value in totals.items()}
    totals["high_bit_share"] = totals["high_bit_quantizers"] / totals["quantizers"] if totals["quantizers"] else 0.0
    totals["bops_vs_w8a8"] = totals["bops"] / totals["bops_w8a8"] if totals["bops_w8a8"] else None
    totals["weight_bits_vs_w8a8"] = totals["weight_bits"] / totals["weight_bits_w8a8"] if totals["weight_bits_w8a8"] else None
    return totals


def _scaled(value: float, unit: str) -> str:
    for factor, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{value / factor:.3g} {prefix}{unit}"
    return f"{value:.3g} {unit}"


def format_cost(totals: dict, input_shape: Optional[str] = None) -> str:
    """Three lines for the printed quant plan: quantized figure, full-precision figure, ratio."""
    where = f" per {input_shape} input" if input_shape else ""
    lines = [f"cost{where} (quantized | full precision | ratio; W8A8 in brackets):"]
    for label, key, unit in (("weight memory", "weight_bits", "bit"), ("activation bits", "activation_bits", "bit"),
                             ("BOPs", "bops", "BOP")):
        quantized, full = totals[key], totals[f"{key}_fp32"]
        ratio = quantized / full if full else float("nan")
        lines.append(f"  {label:<16} {_scaled(quantized, unit):>12} | {_scaled(full, unit):>12} | "
                     f"{ratio:6.2%}  [{_scaled(totals[f'{key}_w8a8'], unit)}]")
    lines.append(f"  high-bit share   {totals['high_bit_quantizers']} of {totals['quantizers']} quantizers "
                 f"({totals['high_bit_share']:.1%}) above the scheme's bits")
    return "\n".join(lines)


SUMMARY_KEYS = ("weight_bits", "weight_bits_fp32", "activation_bits", "activation_bits_fp32", "bops", "bops_fp32",
                "bops_w8a8", "bops_vs_w8a8", "weight_bits_vs_w8a8", "high_bit_share")


def plan_cost_summary(plan_csv) -> dict:
    """The cost totals of a run, from its quant_plan.csv ({} when the run has none): what train.py
    stores in summary.json under 'cost'."""
    from helpers.files import read_csv
    rows = read_csv(plan_csv)
    if not rows or "elements" not in rows[0]:
        return {}
    totals = cost_totals(rows)
    return {key: totals[key] for key in SUMMARY_KEYS}


def sweep_cost_columns(summary: dict, run_dir) -> dict:
    """Cost columns of one sweep row: from summary.json's 'cost', else from the run's quant_plan.csv;
    blank for full-precision runs (their figures are the `_fp32` columns of the quantized rows)."""
    from pathlib import Path
    cost = summary.get("cost") or plan_cost_summary(Path(run_dir) / "quant_plan.csv")
    if not cost:
        return {}
    return {"weight_Mbit": cost["weight_bits"] / 1e6, "activation_Mbit": cost["activation_bits"] / 1e6,
            "GBOPs": cost["bops"] / 1e9, "bops_vs_w8a8": cost["bops_vs_w8a8"],
            "high_bit_share": cost["high_bit_share"]}
