"""How much each fake quantizer matters, measured two ways, for the allocation in quant/allocate.py.

Starting point: the network with every quantizer at `high` bits (weights and activations; ranges
from calibration, i.e. post-training quantization of the float weights, as HAWQ measures).

1. PSNR drop (direct, expensive): set ONE quantizer to `low` bits, everything else stays at `high`,
   and measure the validation PSNR; drop = PSNR(all high) - PSNR(this one low). We measure the drop
   from all-high rather than the gain from all-low because from all-low the network is already far
   off and the gains of single quantizers mix with that error; the drop isolates the one quantizer,
   which is the same one-at-a-time perturbation the Hessian measure below linearises.
2. Hessian estimate (HAWQ-V2/V3 style, cheap per bit width): for the tensor t that the quantizer
   rounds (a layer's weight, or an activation), the expected loss increase of independent
   zero-mean rounding noise of power s^2 per element is about 1/2 s^2 tr(d^2 L / dt^2). The trace is
   Hutchinson's estimate (Rademacher probes and double backprop, as distill/hessian.py does for
   activations, here also for weights) on the float network (the prepared model with fake
   quantization off); s^2 is measured, not assumed: the mean of (Q_b(t) - t)^2 with the quantizer at
   b bits (so clipping and the real value distribution count), for every b of `bits`.

Bits are changed in place and range-preserving: the calibrated [low, high] range is kept and the
scale becomes range / (levels - 1) (symmetric: the negative bound is kept, zero point 0), exactly
what calibrating a min/max observer at the other bit width gives. Every change is undone.
"""
from __future__ import annotations

import contextlib
import io
import math
from dataclasses import dataclass, field
from typing import Callable, Iterable, Optional

import torch
import torch.nn as nn
from torch.fx import GraphModule
from tqdm import tqdm

from helpers.hessian_probes import model_input, probe_products, rademacher, to_device
from helpers.metrics import psnr
from models import model_outputs, split_outputs
from quant.cost import measure
from quant.plan import quant_plan_rows
from quant.prepare import WEIGHT_QUANTIZER, _is_quantizer_node, fake_quantizers


def _levels(quant_min: int, quant_max: int) -> int:
    return quant_max - quant_min + 1


def _bits(quantizer) -> int:
    return int(round(math.log2(_levels(quantizer.quant_min, quantizer.quant_max))))


def _check_rescalable(name: str, quantizer) -> None:
    if not (isinstance(getattr(quantizer, "scale", None), torch.Tensor)
            and isinstance(getattr(quantizer, "zero_point", None), torch.Tensor)):
        raise ValueError(f"sensitivity: {name} ({type(quantizer).__name__}) has no scale and zero point to "
                         "rescale; use lsq, lsq+, fixed, dsq or pact quantizers")


def set_bits(quantizer, bits: int) -> Callable[[], None]:
    """Put `quantizer` at `bits`, keeping its calibrated range; returns a function that undoes it."""
    saved = (quantizer.quant_min, quantizer.quant_max, getattr(quantizer, "bitwidth", None),
             quantizer.scale.detach().clone(), quantizer.zero_point.detach().clone())
    observer = getattr(quantizer, "activation_post_process", None)
    observer_range = (observer.quant_min, observer.quant_max) if observer is not None else None
    signed = quantizer.quant_min < 0
    new_min, new_max = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2 ** bits - 1)
    old_min, old_max = quantizer.quant_min, quantizer.quant_max
    with torch.no_grad():
        if getattr(quantizer, "is_symmetric_quant", False):
            ratio = old_min / new_min if signed else (old_max - old_min) / (new_max - new_min)
            quantizer.scale.mul_(ratio)
            if not signed:
                quantizer.zero_point.zero_()
        else:
            ratio = (old_max - old_min) / (new_max - new_min)
            # Keep the real value of the lowest level: new_min - zp' = (old_min - zp) * ratio_inverse.
            low = (old_min - quantizer.zero_point.float()) * quantizer.scale.detach()
            quantizer.scale.mul_(ratio)
            quantizer.zero_point.copy_((new_min - low / quantizer.scale.detach()).round()
                                       .clamp(new_min, new_max).to(quantizer.zero_point.dtype))
    quantizer.quant_min, quantizer.quant_max = new_min, new_max
    if saved[2] is not None:
        quantizer.bitwidth = bits
    if observer is not None:
        observer.quant_min, observer.quant_max = new_min, new_max

    def restore():
        quantizer.quant_min, quantizer.quant_max = saved[0], saved[1]
        if saved[2] is not None:
            quantizer.bitwidth = saved[2]
        if observer is not None:
            observer.quant_min, observer.quant_max = observer_range
        with torch.no_grad():
            quantizer.scale.copy_(saved[3])
            quantizer.zero_point.copy_(saved[4])
    return restore


@contextlib.contextmanager
def quantization_frozen(qmodel: nn.Module, fake_quant: bool):
    """Eval mode, observers off, fake quantization on/off everywhere; all flags restored after."""
    quantizers = fake_quantizers(qmodel)
    flags = {name: (q.fake_quant_enabled.clone(), q.observer_enabled.clone()) for name, q in quantizers.items()}
    was_training = qmodel.training
    try:
        for quantizer in quantizers.values():
            quantizer.observer_enabled.fill_(0)
            quantizer.fake_quant_enabled.fill_(1 if fake_quant else 0)
        qmodel.eval()
        yield quantizers
    finally:
        for name, (fake, observer) in flags.items():
            quantizers[name].fake_quant_enabled.copy_(fake)
            quantizers[name].observer_enabled.copy_(observer)
        qmodel.train(was_training)


def network_order(qmodel: GraphModule) -> list[str]:
    """Fake quantizer names in execution order: a weight quantizer at its layer's node, an activation
    quantizer at its own node (module order would put every activation quantizer last)."""
    quantizers = fake_quantizers(qmodel)
    order = []
    for node in qmodel.graph.nodes:
        if node.op != "call_module":
            continue
        if _is_quantizer_node(qmodel, node):
            order.append(str(node.target))
        elif f"{node.target}.{WEIGHT_QUANTIZER}" in quantizers:
            order.append(f"{node.target}.{WEIGHT_QUANTIZER}")
    return list(dict.fromkeys(order))


def mean_psnr(qmodel: nn.Module, batches: list, device) -> float:
    """Mean RGB PSNR (clipped to [0, 1]) over the batches, as validation scores it."""
    scores = []
    with torch.no_grad():
        for batch in batches:
            _, rgb = split_outputs(qmodel(batch["input"].to(device)), model_outputs(qmodel))
            for prediction, target in zip(rgb.float().clamp(0, 1).cpu(), batch["rgb"]):
                scores.append(psnr(prediction, target))
    return float(sum(scores) / len(scores))


@dataclass
class QuantizerSensitivity:
    order: int
    quantizer: str
    kind: str                  # weight / input / activation / output
    layer: str                 # weighted layer (weights) or producer (activations)
    feeds: str
    elements: int              # per reference input (activations) or of the weight tensor
    macs: int                  # weights: the layer's MACs per reference input
    input_quantizer: str       # weights: the quantizer of the layer's input (for BOPs)
    psnr_low_bits: int = 0
    psnr_high: float = math.nan
    psnr_low: float = math.nan
    psnr_drop: float = math.nan
    hessian_trace: float = math.nan
    hessian_stderr: float = math.nan
    noise_power: dict = field(default_factory=dict)     # bits -> mean (Q_b(t) - t)^2
    hawq_score: dict = field(default_factory=dict)      # bits -> 1/2 trace x noise power (HAWQ)
    hessian_score: dict = field(default_factory=dict)   # bits -> 1/2 sum_i H_ii n_i^2 (noise-shaped)
    rank_psnr: int = 0
    rank_hessian: int = 0


def describe_quantizers(qmodel: GraphModule, input_shape=None) -> list[QuantizerSensitivity]:
    """One entry per fake quantizer in network order, with the cost figures the allocator needs."""
    plan = {row["quantizer"]: row for row in quant_plan_rows(qmodel, input_shape)}
    measured = measure(qmodel, input_shape)
    entries = []
    for order, name in enumerate(network_order(qmodel)):
        row = plan[name]
        layer = measured.get(row["layer"], {}) if row["kind"] == "weight" else {}
        entries.append(QuantizerSensitivity(
            order=order, quantizer=name, kind=row["kind"], layer=row["layer"], feeds=row["feeds"],
            elements=int(row["elements"] or 0), macs=int(layer.get("macs", 0)),
            input_quantizer=layer.get("input_quantizer") or ""))
    return entries


def psnr_drops(qmodel: GraphModule, entries: list[QuantizerSensitivity], batches: list, low: int, high: int,
               device, progress=True) -> float:
    """Fills psnr_high/low/drop of every entry; returns the all-high PSNR. Quantizers are left as
    they were."""
    with quantization_frozen(qmodel, fake_quant=True) as quantizers:
        restores = [set_bits(quantizers[e.quantizer], high) for e in entries]
        try:
            baseline = mean_psnr(qmodel, batches, device)
            for entry in tqdm(entries, desc=f"PSNR drop ({low} of {high} bits)", unit="quantizer",
                              disable=not progress):
                undo = set_bits(quantizers[entry.quantizer], low)
                try:
                    entry.psnr_low = mean_psnr(qmodel, batches, device)
                finally:
                    undo()
                entry.psnr_high, entry.psnr_low_bits = baseline, low
                entry.psnr_drop = baseline - entry.psnr_low
        finally:
            for undo in reversed(restores):
                undo()
    return baseline


def _quantization_noise(quantizer, tensor: torch.Tensor, bits: int) -> torch.Tensor:
    """Q_b(t) - t for the quantizer put at `bits` (then restored)."""
    undo = set_bits(quantizer, bits)
    try:
        with torch.no_grad():
            quantizer.fake_quant_enabled.fill_(1)
            noise = quantizer(tensor.detach()) - tensor.detach()
            quantizer.fake_quant_enabled.fill_(0)
        return noise
    finally:
        undo()


def hessian_scores(qmodel: GraphModule, entries: list[QuantizerSensitivity], batches: list, loss_fn,
                   bits: Iterable[int], probes=8, seed=0, device="cpu", probe_batch=4, progress=True) -> None:
    """Fills hessian_trace/stderr, noise_power, hawq_score and hessian_score of every entry.

    Two estimates of the loss increase 1/2 n^T H n for the rounding noise n of a tensor:
    * hawq_score[b] = 1/2 tr(H) x mean(n_b^2): HAWQ's, exact when the noise power is the same on
      every element;
    * hessian_score[b] = 1/2 E_v[(v*n)^T H (v*n)] = 1/2 sum_i H_ii n_i^2 (Rademacher v, n the
      actual noise at the lowest of `bits`), scaled to b by the noise power ratio: the same
      Hutchinson machinery with probes shaped by the real noise, so curvature on elements that
      quantize exactly (a dead channel, zero weights) does not count. This is the one ranked.
    """
    bits = sorted(set(bits))
    shaped_at = bits[0]
    modules = dict(qmodel.named_modules())
    traces = {e.quantizer: [] for e in entries}
    shaped = {e.quantizer: [] for e in entries}
    noise = {e.quantizer: {b: [] for b in bits} for e in entries}
    captured = {}

    def capture(name):
        # A copy of the (unquantized) output: its gradient is that of the quantizer's consumers only.
        def hook(_, inputs, output):
            captured[name] = output.clone()
            return captured[name]
        return hook

    activations = [e for e in entries if e.kind != "weight"]
    hooks = [modules[e.quantizer].register_forward_hook(capture(e.quantizer)) for e in activations]
    bar = tqdm(total=len(batches) * probes, desc="Hessian trace", unit="probe", disable=not progress)
    try:
        with quantization_frozen(qmodel, fake_quant=False) as quantizers:
            for batch_index, batch in enumerate(batches):
                batch = to_device(batch, device)
                captured.clear()
                inputs = model_input(batch).detach().requires_grad_(True)
                loss = loss_fn(qmodel(inputs), batch)
                tensors = [captured[e.quantizer] if e.kind != "weight" else modules[e.layer].weight for e in entries]
                gradients = torch.autograd.grad(loss, tensors, create_graph=True, allow_unused=True)
                shapes = {}
                for entry, tensor in zip(entries, tensors):
                    for b in bits:
                        n = _quantization_noise(quantizers[entry.quantizer], tensor, b)
                        noise[entry.quantizer][b].append(float(n.double().pow(2).mean()))
                        if b == shaped_at:
                            shapes[entry.quantizer] = n
                for first in range(0, probes, probe_batch):
                    chunk = range(first, min(first + probe_batch, probes))
                    for entry, tensor, gradient in zip(entries, tensors, gradients):
                        bar.set_postfix_str(entry.quantizer, refresh=False)
                        if gradient is None or not gradient.requires_grad:
                            traces[entry.quantizer].extend([0.0] * len(chunk))  # the loss is linear here
                            shaped[entry.quantizer].extend([0.0] * len(chunk))
                            continue
                        vectors = torch.stack([rademacher(tensor.shape, seed, batch_index, entry.quantizer, i)
                                               for i in chunk]).to(device=tensor.device, dtype=tensor.dtype)
                        traces[entry.quantizer].extend(probe_products(tensor, gradient, vectors))
                        shaped[entry.quantizer].extend(
                            probe_products(tensor, gradient, vectors * shapes[entry.quantizer]))
                    bar.update(len(chunk))
                del loss, tensors, gradients, shapes
                captured.clear()
    finally:
        bar.close()
        for hook in hooks:
            hook.remove()
    for entry in entries:
        values = torch.tensor(traces[entry.quantizer], dtype=torch.float64)
        entry.hessian_trace = float(values.mean())
        entry.hessian_stderr = float(values.std(unbiased=True)) / math.sqrt(len(values)) if len(values) > 1 else math.nan
        entry.noise_power = {b: sum(v) / len(v) for b, v in noise[entry.quantizer].items()}
        entry.hawq_score = {b: 0.5 * entry.hessian_trace * p for b, p in entry.noise_power.items()}
        at_shape = 0.5 * float(torch.tensor(shaped[entry.quantizer], dtype=torch.float64).mean())
        reference = entry.noise_power[shaped_at]
        entry.hessian_score = {b: at_shape * p / reference if reference > 0 else 0.0
                               for b, p in entry.noise_power.items()}


def rank(entries: list[QuantizerSensitivity], low: int) -> Optional[float]:
    """Sets rank_psnr and rank_hessian (1 = most sensitive); returns the Spearman rank correlation
    of the two measures (None when one of them is missing or constant)."""
    from scipy.stats import spearmanr
    drops = [e.psnr_drop for e in entries]
    scores = [e.hessian_score.get(low, math.nan) for e in entries]
    for values, attribute in ((drops, "rank_psnr"), (scores, "rank_hessian")):
        if all(math.isnan(v) for v in values):
            continue
        ordered = sorted(range(len(entries)), key=lambda i: -values[i] if not math.isnan(values[i]) else math.inf)
        for position, index in enumerate(ordered, start=1):
            setattr(entries[index], attribute, position)
    if any(math.isnan(v) for v in drops + scores) or len(set(drops)) < 2 or len(set(scores)) < 2:
        return None
    return float(spearmanr(drops, scores).statistic)


def csv_rows(entries: list[QuantizerSensitivity]) -> list[dict]:
    rows = []
    for e in entries:
        row = {key: getattr(e, key) for key in ("order", "quantizer", "kind", "layer", "feeds", "elements", "macs",
                                                "input_quantizer", "psnr_low_bits", "psnr_high", "psnr_low", "psnr_drop",
                                                "hessian_trace", "hessian_stderr")}
        row.update({f"noise_power_{b}bit": v for b, v in e.noise_power.items()})
        row.update({f"hawq_score_{b}bit": v for b, v in e.hawq_score.items()})
        row.update({f"hessian_score_{b}bit": v for b, v in e.hessian_score.items()})
        row.update(rank_psnr=e.rank_psnr, rank_hessian=e.rank_hessian)
        rows.append(row)
    return rows


def plot_png(entries: list[QuantizerSensitivity], low: int, high: int, title: str = "") -> bytes:
    """Two bar panels (PSNR drop, Hessian score at `low` bits), quantizers in network order, so the
    start and end of each sub-network stand out; weights and activations coloured apart."""
    import matplotlib
    matplotlib.use("Agg")  # files only
    import matplotlib.pyplot as plt
    colours = ["tab:blue" if e.kind == "weight" else "tab:orange" for e in entries]
    labels = [(e.layer if e.kind == "weight" else e.quantizer.removesuffix("_post_act_fake_quantizer"))
              + (" (w)" if e.kind == "weight" else "") for e in entries]
    figure, axes = plt.subplots(2, 1, figsize=(max(8, 0.13 * len(entries) + 2), 8), sharex=True)
    panels = ((axes[0], [e.psnr_drop for e in entries], f"PSNR drop (dB), one quantizer at {low} bits, rest {high}"),
              (axes[1], [e.hessian_score.get(low, math.nan) for e in entries],
               f"Hessian score at {low} bits: ½ tr(H) x noise power"))
    for axis, values, label in panels:
        axis.bar(range(len(entries)), [0 if math.isnan(v) else v for v in values], color=colours)
        axis.set_ylabel(label, fontsize=8)
        positive = [v for v in values if not math.isnan(v) and v > 0]
        if axis is axes[1] and positive and len(positive) == len(values):
            axis.set_yscale("log")
        # The boundary between the two sub-networks (DBF then DBLE), when the names show it.
        boundary = next((i for i, e in enumerate(entries) if "DBLE" in e.layer.upper() or "dble" in e.quantizer), None)
        if boundary:
            axis.axvline(boundary - 0.5, color="grey", linestyle="--", linewidth=0.8)
    axes[1].set_xticks(range(len(entries)), labels, rotation=90, fontsize=5)
    axes[0].set_title(title or "sensitivity per fake quantizer, network order (blue: weight, orange: activation)",
                      fontsize=9)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    plt.close(figure)
    return buffer.getvalue()
