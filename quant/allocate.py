"""Bits per fake quantizer that minimise the summed sensitivity under a cost budget: an integer
program solved exactly by scipy.optimize.milp (HiGHS branch and bound), so there is no optimality
gap to state beyond HiGHS's default relative MIP gap (1e-4).

Variables: x[q, b] in {0, 1}, quantizer q at b bits, sum_b x[q, b] = 1 for every q.
Objective: sum over q, b of sensitivity[q, b] x[q, b] (quant/sensitivity.py's scores per bit width).
Budget (a fraction of the same network at W8A8):
* "size": weight memory, sum over weight quantizers of elements x bits, which is linear in x;
* "bops": sum over weighted layers of MACs x weight bits x input bits. The product of two choices
  is made linear with y[l, bw, ba] >= x[w, bw] + x[a, ba] - 1, y >= 0, where w and a are the layer's
  weight and input quantizers: y is 1 whenever both choices are made, and the budget counts
  MACs x bw x ba x y. Extra y above the product only adds cost, so every feasible x keeps its true
  BOPs within the budget, and every x within the budget is feasible (with y = the product).
Quantizers that no budget term sees (activations under "size", outputs under "bops") get the bit
width of least sensitivity, normally the highest.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Optional

import numpy as np

BUDGET_KINDS = ("bops", "size")
FLOAT_BITS = 32


@dataclass
class Candidate:
    """What the allocator needs of one quantizer (a row of sensitivity.csv)."""
    quantizer: str
    kind: str                   # weight / input / activation / output
    layer: str
    elements: int
    macs: int = 0               # weights only
    input_quantizer: str = ""   # weights only: "" = the layer reads float values
    sensitivity: Optional[dict] = None   # bits -> estimated loss increase


def w8a8_cost(candidates: list[Candidate], budget_kind: str) -> float:
    total = 0.0
    for c in candidates:
        if c.kind != "weight":
            continue
        if budget_kind == "size":
            total += c.elements * 8
        else:
            total += c.macs * 8 * (8 if c.input_quantizer else FLOAT_BITS)
    return total


def assignment_cost(candidates: list[Candidate], bits: dict[str, int], budget_kind: str) -> float:
    """True cost of an assignment {quantizer: bits}."""
    total = 0.0
    for c in candidates:
        if c.kind != "weight":
            continue
        if budget_kind == "size":
            total += c.elements * bits[c.quantizer]
        else:
            total += c.macs * bits[c.quantizer] * (bits[c.input_quantizer] if c.input_quantizer else FLOAT_BITS)
    return total


def _check(candidates: list[Candidate], bit_widths: list[int], budget_kind: str) -> None:
    if budget_kind not in BUDGET_KINDS:
        raise ValueError(f"budget kind {budget_kind!r}; choose one of {', '.join(BUDGET_KINDS)}")
    names = {c.quantizer for c in candidates}
    for c in candidates:
        missing = [b for b in bit_widths if b not in (c.sensitivity or {})]
        if missing:
            raise ValueError(f"{c.quantizer}: no sensitivity at {missing[0]} bits; measured: "
                             f"{', '.join(map(str, sorted(c.sensitivity or {})))} (tools/sensitivity.py --bits)")
        if c.input_quantizer and c.input_quantizer not in names:
            raise ValueError(f"{c.quantizer}: input quantizer {c.input_quantizer} is not among the candidates")


def allocate(candidates: list[Candidate], bit_widths, budget: float, budget_kind: str = "bops",
             time_limit: Optional[float] = 120.0) -> dict:
    """Optimal bits per quantizer with cost <= budget x W8A8 cost.

    Returns {'bits': {quantizer: bits}, 'objective', 'cost', 'cost_vs_w8a8', 'status', 'gap'}; raises
    ValueError with the cheapest reachable fraction when the budget cannot be met."""
    from scipy.optimize import Bounds, LinearConstraint, milp
    from scipy.sparse import lil_matrix

    bit_widths = sorted(set(int(b) for b in bit_widths))
    _check(candidates, bit_widths, budget_kind)
    reference = w8a8_cost(candidates, budget_kind)
    limit = budget * reference
    index = {(c.quantizer, b): i for i, (c, b) in enumerate(itertools.product(candidates, bit_widths))}
    count = len(index)
    objective = [c.sensitivity[b] for c, b in itertools.product(candidates, bit_widths)]
    by_name = {c.quantizer: c for c in candidates}

    # Products of a layer's weight and input choices (BOPs only).
    products = []  # (layer weight quantizer, input quantizer, bw, ba, coefficient)
    budget_row = np.zeros(count)
    for c in candidates:
        if c.kind != "weight":
            continue
        if budget_kind == "size":
            for b in bit_widths:
                budget_row[index[c.quantizer, b]] += c.elements * b
        elif not c.input_quantizer:
            for b in bit_widths:
                budget_row[index[c.quantizer, b]] += c.macs * b * FLOAT_BITS
        else:
            for bw, ba in itertools.product(bit_widths, bit_widths):
                products.append((c.quantizer, c.input_quantizer, bw, ba, c.macs * bw * ba))
    total = count + len(products)
    objective = np.concatenate([np.asarray(objective, dtype=float), np.zeros(len(products))])
    budget_row = np.concatenate([budget_row, [p[4] for p in products]])

    rows = len(candidates) + 1 + len(products)
    matrix = lil_matrix((rows, total))
    lower, upper = np.zeros(rows), np.zeros(rows)
    for r, c in enumerate(candidates):  # one bit width each
        for b in bit_widths:
            matrix[r, index[c.quantizer, b]] = 1
        lower[r] = upper[r] = 1
    r = len(candidates)
    # The budget row, scaled to W8A8 = 1 so HiGHS's tolerances act on a number near 1.
    scale = 1.0 / reference if reference else 1.0
    for column in np.flatnonzero(budget_row):
        matrix[r, column] = budget_row[column] * scale
    lower[r], upper[r] = -np.inf, limit * scale
    for k, (weight, source, bw, ba, _) in enumerate(products):  # y - x_w - x_a >= -1
        row = r + 1 + k
        matrix[row, count + k] = 1
        matrix[row, index[weight, bw]] = -1
        matrix[row, index[source, ba]] = -1
        lower[row], upper[row] = -1, np.inf
    integrality = np.concatenate([np.ones(count), np.zeros(len(products))])
    result = milp(objective, constraints=LinearConstraint(matrix.tocsr(), lower, upper), integrality=integrality,
                  bounds=Bounds(0, 1), options={"time_limit": time_limit} if time_limit else None)
    if result.x is None:
        cheapest = assignment_cost(candidates, {c.quantizer: bit_widths[0] for c in candidates}, budget_kind)
        raise ValueError(f"budget {budget:g} x W8A8 {budget_kind} cannot be met with bits {bit_widths}; the "
                         f"cheapest assignment (all {bit_widths[0]} bits) needs {cheapest / reference:.3f}")
    chosen = {}
    for c in candidates:
        values = [result.x[index[c.quantizer, b]] for b in bit_widths]
        chosen[c.quantizer] = bit_widths[int(np.argmax(values))]
    cost = assignment_cost(candidates, chosen, budget_kind)
    return {"bits": chosen, "objective": float(sum(by_name[q].sensitivity[b] for q, b in chosen.items())),
            "cost": cost, "cost_vs_w8a8": cost / reference if reference else math.nan, "budget": budget,
            "budget_kind": budget_kind, "status": result.message,
            "gap": float(getattr(result, "mip_gap", 0.0) or 0.0)}


def special_layer_entries(candidates: list[Candidate], bits: dict[str, int]) -> dict:
    """The assignment as `extra_quantizer_dict.special_layer`: `input_layer` for the network input,
    `<layer>: {weight: "<bits>"}` for weights, `<quantizer>: {activation: "<bits>"}` for activations
    (a fake quantizer's own name is a valid special_layer name and reaches exactly that quantizer).
    "<bits>" alone keeps the quant_scheme's granularity and symmetry. Every quantizer is listed, so
    MQBench's own first-layer 8 bits is overridden too."""
    entries: dict = {}
    for c in candidates:
        if c.kind == "input":
            entries["input_layer"] = int(bits[c.quantizer])
        elif c.kind == "weight":
            entries.setdefault(c.layer, {})["weight"] = str(bits[c.quantizer])
        else:
            entries.setdefault(c.quantizer, {})["activation"] = str(bits[c.quantizer])
    return entries


def candidates_from_rows(rows: list[dict], measure: str = "hessian") -> list[Candidate]:
    """Candidates from sensitivity.csv rows. measure: 'hessian' (noise-shaped Hessian score per bit
    width), 'hawq' (trace x noise power) or 'psnr' (the PSNR drop at the measured low bits, scaled to
    other bit widths by the noise power ratio)."""
    if not rows:
        raise ValueError("sensitivity: no rows")
    prefix = {"hessian": "hessian_score_", "hawq": "hawq_score_", "psnr": "noise_power_"}.get(measure)
    if prefix is None:
        raise ValueError(f"measure {measure!r}; choose hessian, hawq or psnr")
    columns = {int(key[len(prefix):-3]): key for key in rows[0] if key.startswith(prefix) and key.endswith("bit")}
    if not columns:
        raise ValueError(f"sensitivity.csv has no {prefix}<b>bit columns; run tools/sensitivity.py with the hessian measure")
    candidates = []
    for row in rows:
        values = {b: float(row[key]) for b, key in columns.items() if row.get(key) not in ("", None)}
        if measure == "psnr":
            low = int(row.get("psnr_low_bits") or 0)
            if row.get("psnr_drop") in ("", None, "nan") or low not in values:
                raise ValueError(f"{row['quantizer']}: no PSNR drop at a bit width with a noise power; run "
                                 "tools/sensitivity.py with --measures psnr,hessian")
            reference = values[low]
            drop = max(float(row["psnr_drop"]), 0.0)  # a drop below zero is noise, not a gain to buy
            values = {b: drop * p / reference if reference > 0 else 0.0 for b, p in values.items()}
        candidates.append(Candidate(quantizer=row["quantizer"], kind=row["kind"], layer=row["layer"],
                                    elements=int(float(row["elements"] or 0)), macs=int(float(row.get("macs") or 0)),
                                    input_quantizer=row.get("input_quantizer") or "", sensitivity=values))
    return candidates
