"""The quant plan: one row per fake quantizer of a prepared model, saying what it quantizes, at how
many bits, with which scheme and range, and whether a special_layer entry put it there.

`format_quant_plan` prints what differs from the scheme's defaults one per line (input, outputs,
special-layer overrides, MQBench's 8-bit first layer) and folds the rest into one line per bit width,
so "what is at 10 bits and what at 4" reads at a glance; `write_quant_plan` writes every row as CSV.
"""
from __future__ import annotations

import csv
import math
import os
import tempfile
from pathlib import Path
from typing import Optional

import torch
from torch.ao.quantization import FakeQuantizeBase
from torch.fx import GraphModule

from helpers.graph_ops import unsupervised_nodes
from quant.cost import cost_totals, format_cost, plan_cost_columns, reference_input_shape
from quant.prepare import QUANTIZER_SUFFIX, WEIGHT_QUANTIZER, fake_quantizers

COLUMNS = ("quantizer", "kind", "layer", "feeds", "bits", "quant_min", "quant_max", "granularity",
           "symmetry", "channels", "quantizer_class", "observer", "calibrated", "scale_min", "scale_max",
           "range_min", "range_max", "override",
           # Cost (quant/cost.py), per reference input: tensor elements, and for weights the layer's
           # MACs, input-activation bits and BOPs; scheme_bits tells which quantizers are "high".
           "elements", "macs", "input_bits", "bops", "scheme_bits",
           # False for a quantizer whose tensor reaches only outputs the network declares "ignore".
           "supervised")
KIND_ORDER = {"input": 0, "weight": 1, "activation": 2, "output": 3}


def _node_label(node) -> str:
    if node.op == "call_module":
        return str(node.target)
    if node.op == "output":
        return "(network output)"
    return node.name


def _graph_neighbours(qmodel) -> dict[str, tuple[str, str]]:
    """quantizer module name -> (producer layer, consumer layers) from the graph."""
    if not isinstance(qmodel, GraphModule):
        return {}
    found = {}
    for node in qmodel.graph.nodes:
        if node.op != "call_module" or not str(node.target).endswith(QUANTIZER_SUFFIX):
            continue
        producer = node.args[0] if node.args else None
        producer_label = _node_label(producer) if isinstance(producer, torch.fx.Node) else ""
        feeds = ", ".join(dict.fromkeys(_node_label(user) for user in node.users))
        found[str(node.target)] = (producer_label, feeds)
    return found


def _quant_range(quantizer: FakeQuantizeBase):
    """(scale_min, scale_max, range_min, range_max) in float units, or Nones before calibration."""
    observer = getattr(quantizer, "activation_post_process", None)
    min_val = getattr(observer, "min_val", None)
    calibrated = not (isinstance(min_val, torch.Tensor) and bool(torch.isinf(min_val).any()))
    scale = getattr(quantizer, "scale", None)
    if not calibrated or not isinstance(scale, torch.Tensor):
        return calibrated, None, None, None, None
    scale = scale.detach().float().abs().flatten()
    zero_point = getattr(quantizer, "zero_point", torch.zeros_like(scale)).detach().float().flatten()
    if getattr(quantizer, "is_symmetric_quant", False):
        zero_point = torch.zeros_like(scale)  # LSQ zeroes it at every forward in symmetric mode
    zero_point = zero_point.round().clamp(quantizer.quant_min, quantizer.quant_max)
    low = scale * (quantizer.quant_min - zero_point)
    high = scale * (quantizer.quant_max - zero_point)
    return True, float(scale.min()), float(scale.max()), float(low.min()), float(high.max())


def quant_plan_rows(qmodel, cost_input_shape=None) -> list[dict]:
    """One dict per fake quantizer (keys: COLUMNS), in the model's module order. The cost columns
    come from one forward pass at `cost_input_shape` (default quant.cost's reference input)."""
    neighbours = _graph_neighbours(qmodel)
    costs, shape = {}, None
    if isinstance(qmodel, GraphModule):
        shape = tuple(cost_input_shape or reference_input_shape(qmodel))
        costs = plan_cost_columns(qmodel, shape)
    scheme = getattr(qmodel, "quant_scheme", None)
    unsupervised, node_of = set(), {}
    if isinstance(qmodel, GraphModule):
        outputs = getattr(qmodel, "outputs", None)
        unsupervised = unsupervised_nodes(qmodel, tuple(outputs) if isinstance(outputs, (tuple, list)) else None)
        node_of = {str(n.target): n.name for n in qmodel.graph.nodes if n.op == "call_module"}
    rows = []
    for name, quantizer in fake_quantizers(qmodel).items():
        if name.endswith("." + WEIGHT_QUANTIZER):
            kind, layer, feeds = "weight", name[: -len(WEIGHT_QUANTIZER) - 1], ""
        else:
            kind = getattr(quantizer, "quant_role", "activation")
            layer, feeds = neighbours.get(name, ("", ""))
        per_channel = getattr(quantizer, "ch_axis", -1) != -1
        calibrated, scale_min, scale_max, range_min, range_max = _quant_range(quantizer)
        scale = getattr(quantizer, "scale", None)
        rows.append({
            "quantizer": name,
            "kind": kind,
            "layer": layer,
            "feeds": feeds,
            "bits": int(round(math.log2(quantizer.quant_max - quantizer.quant_min + 1))),
            "quant_min": quantizer.quant_min,
            "quant_max": quantizer.quant_max,
            "granularity": "per-channel" if per_channel else "per-tensor",
            "symmetry": "symmetric" if getattr(quantizer, "is_symmetric_quant", False) else "affine",
            "channels": int(scale.numel()) if per_channel and isinstance(scale, torch.Tensor) else "",
            "quantizer_class": type(quantizer).__name__,
            "observer": type(getattr(quantizer, "activation_post_process", None)).__name__,
            "calibrated": calibrated,
            "scale_min": scale_min,
            "scale_max": scale_max,
            "range_min": range_min,
            "range_max": range_max,
            "override": "; ".join(getattr(quantizer, "special_layer_sources", [])),
            **costs.get(name, {}),
            "scheme_bits": "" if scheme is None else (scheme.weight.bits if kind == "weight" else scheme.activation.bits),
            "supervised": node_of.get(layer if kind == "weight" else name) not in unsupervised,
            "cost_input": "x".join(map(str, shape)) if shape else "",  # printed only, not in the CSV
        })
    return rows


def write_quant_plan(rows: list[dict], path) -> Path:
    """Every row as CSV, written to a temporary file then renamed so a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "w", newline="") as stream:
            writer = csv.DictWriter(stream, fieldnames=COLUMNS, extrasaction="ignore")
            writer.writeheader()
            for row in rows:
                writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise
    return path


def _number(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.4g}"


def _range(row: dict) -> str:
    if not row["calibrated"]:
        return "uncalibrated"
    if row["range_min"] is None:
        return "-"
    text = f"[{_number(row['range_min'])}, {_number(row['range_max'])}]"
    return text + (f" ({row['channels']} ch)" if row["channels"] else "")


def _scheme(row: dict) -> str:
    return f"{row['granularity']} {row['symmetry']}"


def _majority_bits(rows: list[dict], kind: str) -> Optional[int]:
    counts: dict[int, int] = {}
    for row in rows:
        if row["kind"] == kind and not row["override"]:
            counts[row["bits"]] = counts.get(row["bits"], 0) + 1
    return max(counts, key=counts.get) if counts else None


def format_quant_plan(rows: list[dict], verbose: bool = False) -> str:
    """A compact aligned table: every quantizer that differs from its kind's usual bit width on its own
    line (highest bits first, with the special_layer entry that set it), the rest folded into one line
    per (bits, kind, scheme, class). `verbose` lists every quantizer."""
    if not rows:
        return "quant plan: no fake quantizers (model not prepared?)"
    usual = {kind: _majority_bits(rows, kind) for kind in ("weight", "activation")}
    listed, folded = [], {}
    for row in rows:
        plain = row["kind"] in usual and not row["override"] and row["bits"] == usual[row["kind"]]
        if plain and not verbose:
            key = (row["bits"], row["kind"], _scheme(row), row["quantizer_class"])
            folded.setdefault(key, []).append(row)
        else:
            listed.append(row)
    table = []
    for row in listed:
        # Without an override, an input quantizer or an odd 8-bit weight comes from MQBench's
        # "first layer at 8 bits" rule.
        first_layer = row["bits"] == 8 and (row["kind"] == "input" or row["bits"] != usual.get(row["kind"]))
        note = row["override"] or ("MQBench first-layer rule" if first_layer else "")
        what = row["layer"] if row["kind"] != "activation" else f"{row['layer']} -> {row['feeds']}"
        table.append((row["bits"], row["kind"], what, _scheme(row), row["quantizer_class"], _range(row), note))
    for (bits, kind, scheme, klass), members in folded.items():
        calibrated = [r for r in members if r["calibrated"] and r["range_min"] is not None]
        span = (f"[{_number(min(r['range_min'] for r in calibrated))}, "
                f"{_number(max(r['range_max'] for r in calibrated))}]") if calibrated else "uncalibrated"
        other = "other " if any(r["kind"] == kind for r in listed) or \
            sum(k[1] == kind for k in folded) > 1 else ""
        table.append((bits, kind, f"all {other}{kind}s ({len(members)})", scheme, klass, span, ""))
    table.sort(key=lambda t: (-t[0], KIND_ORDER.get(t[1], 9)))

    counts = {}
    for row in rows:
        counts[row["kind"]] = counts.get(row["kind"], 0) + 1
    by_bits = {}
    for row in rows:
        by_bits[row["bits"]] = by_bits.get(row["bits"], 0) + 1
    header = ("bits", "kind", "layer (activation: producer -> consumers)", "scheme", "class", "range", "set by")
    widths = [min(max(len(str(line[i])) for line in table + [header]), 70) for i in range(len(header))]

    def render(line):
        cells = [str(cell) if len(str(cell)) <= widths[i] or i == len(line) - 1 else str(cell)[: widths[i] - 3] + "..."
                 for i, cell in enumerate(line)]
        return "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(cells)).rstrip()

    summary = ", ".join(f"{counts[k]} {k}" for k in sorted(counts, key=lambda k: KIND_ORDER.get(k, 9)))
    bit_summary = ", ".join(f"{by_bits[b]} at {b} bits" for b in sorted(by_bits, reverse=True))
    lines = [f"quant plan: {len(rows)} fake quantizers ({summary}); {bit_summary}", render(header)]
    lines += [render(line) for line in table]
    input_line = _effective_input_line(rows)
    if input_line:
        lines.append(input_line)
    if rows[0].get("elements") not in (None, ""):
        lines.append(format_cost(cost_totals(rows), rows[0].get("cost_input")))
    unsupervised_line = _unsupervised_line(rows)
    if unsupervised_line:
        lines.append(unsupervised_line)
    return "\n".join(lines)


def _unsupervised_line(rows: list[dict]) -> str:
    """One line on the quantizers whose tensors reach only outputs declared "ignore": trained by no
    loss, yet quantized, deployed and counted in the cost."""
    lost = [row for row in rows if row.get("supervised") is False]
    if not lost:
        return ""
    layers = [row["layer"] for row in lost if row["kind"] == "weight"]
    macs = sum(float(row["macs"]) for row in lost if row["kind"] == "weight" and row.get("macs") not in (None, ""))
    total = sum(float(row["macs"]) for row in rows if row["kind"] == "weight" and row.get("macs") not in (None, ""))
    share = f", {100 * macs / total:.1f}% of the MACs" if total else ""
    return (f"not supervised (reach only outputs declared 'ignore'; still quantized and counted above): "
            f"{len(lost)} quantizers, {len(layers)} weighted layers{share}: {', '.join(layers) or '-'}")


def _effective_input_line(rows: list[dict]) -> str:
    """'effective input bits of weighted layers: 8: conv1; 4: 12 layers': the fewest bits among the
    quantizers on the paths into each weighted layer (quant/paths.py), the commonest width counted,
    the others named."""
    by_bits: dict = {}
    for row in rows:
        if row["kind"] == "weight" and row.get("input_bits") not in (None, ""):
            by_bits.setdefault(int(row["input_bits"]), []).append(row["layer"])
    if not by_bits:
        return ""
    common = max(by_bits, key=lambda bits: len(by_bits[bits]))
    parts = []
    for bits in sorted(by_bits, reverse=True):
        label = "float" if bits >= 32 else str(bits)
        layers = by_bits[bits]
        named = f"{len(layers)} layers" if bits == common and len(layers) > 3 else ", ".join(layers)
        parts.append(f"{label}: {named}")
    return "effective input bits of weighted layers: " + "; ".join(parts)
