"""Which activations matter most: the Hessian trace of the loss w.r.t. each layer's output.

For a layer output a, tr(d^2 L / da^2) is estimated with Hutchinson's estimator: for Rademacher
probes v (entries +-1), E[v^T H v] = tr(H). H v comes from double backprop: g = dL/da with
create_graph, then H v = d(g . v)/da. Each layer gets its own probe and its own second backward,
so the estimate for layer i is exactly v_i^T H_ii v_i; a single backward for all layers at once
would add cross-layer terms v_i^T H_ij v_j that vanish only on average (far noisier).
Cost: one forward + one first backward per batch, plus (probes x layers) Hessian-vector products,
`probe_batch` of them per vmapped double backward.

Why the trace: a small perturbation d of the activation (quantization noise, a distillation
miss) changes the loss by about 1/2 d^T H d near a trained minimum; for independent zero-mean
per-element noise of variance s^2 the expected change is 1/2 s^2 tr(H). Layers are RANKED BY THE
TOTAL TRACE: it is the expected loss increase when every element of the layer is perturbed by
the same noise level (e.g. the same quantization step), so a full-resolution layer with many
elements counts more than a tiny one, as it should. `trace_per_element` (trace / elements per
sample) is reported too: it is the sensitivity per perturbed value, the right figure when the
perturbation budget is per layer (a fixed total ||d||^2) as in HAWQ-v2's weight measure.

Default layers: every activation module except those that are a network output (`DBF.lrelu`, the
mono image, and `DBLE.lrelu`, the RGB image before pixel shuffle): there the Hessian is the loss's
own curvature (2 x weight / elements for MSE, trace 2 x weight whatever the network), which would
top every ranking while saying nothing about the network. Name them in `layer_names` to include them.

Numbers are per sample: with a batch-mean loss, the trace over the whole batch tensor equals the
mean per-sample trace, so batch size does not change them.

The loss must be smooth. An L1 loss on a network that is piecewise linear after the layer
(conv, LeakyReLU, max-pool, concat, pixel shuffle) has zero curvature almost everywhere: with
L1 every layer behind DBLE's last channel attention (e.g. `DBLE.dual_conv9.lrelu_dup1`) gets a
trace of exactly 0. Use an MSE loss (the CLI's default).
"""
import csv
import io
import math
import warnings
from dataclasses import dataclass, asdict
from pathlib import Path

import torch
from tqdm import tqdm

from helpers.files import write_bytes_atomic, write_text_atomic
from helpers.hessian_probes import model_input, probe_products, rademacher, to_device
from distill.features import (FeatureTaps, activation_layer_names, merge_layer_names, trace_for_features,
                              unsupervised_layers)


@dataclass
class LayerTrace:
    layer: str
    trace: float              # mean over batches x probes of v^T H v (per sample, see module doc)
    std: float                # spread of the single-probe estimates (batch-to-batch spread included)
    stderr: float             # std / sqrt(samples): uncertainty of `trace`
    trace_per_element: float  # trace / elements of the layer's output per sample
    elements: int             # elements per sample (C*H*W)
    samples: int              # batches x probes
    rank: int = 0             # 1 = largest trace


def hessian_trace_per_layer(model, layer_names, batches, loss_fn, probes=32, seed=0, device="cpu", progress=True,
                            probe_batch=4):
    """Hutchinson estimates of tr(d^2 loss / d a^2) for each named layer output a.

    model: a traced model (plain models are traced with `trace_for_features`; the model is moved
    to `device`); layer_names: call_module names, None = every activation module but the network
    outputs; batches: iterable of tensors or dicts with 'input'; loss_fn(outputs, batch) -> scalar
    (must be twice differentiable, see module doc); probe_batch: probes per batched double
    backward (memory vs speed; the results do not depend on it). Returns `{name: LayerTrace}` in
    layer order (rank left 0; see `rank_layers`). Repeatable: every probe is drawn from a
    generator seeded from (seed, batch index, layer name, probe index).
    """
    if probes < 1:
        raise ValueError(f"probes: {probes} must be at least 1")
    if probe_batch < 1:
        raise ValueError(f"probe_batch: {probe_batch} must be at least 1")
    batches = list(batches)
    if not batches:
        raise ValueError("batches: no batches given")
    graph = trace_for_features(model)
    names = merge_layer_names(layer_names) if layer_names else activation_layer_names(graph, include_outputs=False)
    declared = getattr(getattr(model, "module", model), "outputs", None)
    ignored = unsupervised_layers(graph, names, tuple(declared) if isinstance(declared, (tuple, list)) else None)
    if ignored:
        # No loss reaches them: their trace is 0 by construction, not a finding about the layer.
        warnings.warn(f"hessian ranking: {len(ignored)} layer(s) reach only outputs declared 'ignore' and "
                      f"{'are left out' if not layer_names else 'have no curvature'}: {', '.join(ignored)}",
                      stacklevel=2)
        if not layer_names:
            names = [name for name in names if name not in ignored]
    taps = FeatureTaps(graph, names, role="model", after_fake_quantizer=False)  # checks the names first
    graph.to(device)
    was_training = graph.training
    graph.eval()
    estimates = {name: [] for name in names}
    elements = {}
    bar = tqdm(total=len(batches) * probes, desc="hessian trace", unit="probe", disable=not progress)
    try:
        with taps:
            for batch_index, batch in enumerate(batches):
                batch = to_device(batch, device)
                inputs = model_input(batch).detach().requires_grad_(True)
                # The input requires grad so every layer output stays in the graph even when the
                # parameters are frozen; the weights' own gradients are never computed.
                outputs = graph(inputs)
                loss = loss_fn(outputs, batch)
                activations = [taps.outputs[name] for name in names]
                gradients = torch.autograd.grad(loss, activations, create_graph=True, allow_unused=True)
                for name, activation in zip(names, activations):
                    elements[name] = activation[0].numel()
                for first in range(0, probes, probe_batch):
                    chunk = range(first, min(first + probe_batch, probes))
                    for name, activation, gradient in zip(names, activations, gradients):
                        bar.set_postfix_str(name, refresh=False)
                        if gradient is None or not gradient.requires_grad:
                            estimates[name].extend([0.0] * len(chunk))  # the loss is at most linear here
                            continue
                        vectors = torch.stack([rademacher(activation.shape, seed, batch_index, name, index)
                                               for index in chunk]).to(device=activation.device, dtype=activation.dtype)
                        estimates[name].extend(probe_products(activation, gradient, vectors))
                    bar.update(len(chunk))
                del outputs, loss, activations, gradients
    finally:
        bar.close()
        graph.train(was_training)
    result = {}
    for name in names:
        values = torch.tensor(estimates[name], dtype=torch.float64)
        mean = float(values.mean())
        std = float(values.std(unbiased=True)) if len(values) > 1 else float("nan")
        stderr = std / math.sqrt(len(values)) if len(values) > 1 else float("nan")
        result[name] = LayerTrace(layer=name, trace=mean, std=std, stderr=stderr,
                                  trace_per_element=mean / elements[name], elements=elements[name],
                                  samples=len(values))
    return result


def rank_layers(model, batches, loss_fn, layer_names=None, probes=32, seed=0, device="cpu", progress=True,
                probe_batch=4):
    """`hessian_trace_per_layer`, as rows sorted by total trace (largest first, rank 1)."""
    traces = hessian_trace_per_layer(model, layer_names, batches, loss_fn, probes=probes, seed=seed,
                                     device=device, progress=progress, probe_batch=probe_batch)
    rows = sorted(traces.values(), key=lambda row: row.trace, reverse=True)
    for position, row in enumerate(rows, start=1):
        row.rank = position
    return rows


CSV_COLUMNS = ("layer", "trace", "std", "stderr", "trace_per_element", "rank")


def ranking_csv(rows):
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for row in rows:
        writer.writerow([row.layer, f"{row.trace:.6g}", f"{row.std:.6g}", f"{row.stderr:.6g}",
                         f"{row.trace_per_element:.6g}", row.rank])
    return text.getvalue()


def ranking_table(rows):
    width = max([len("layer")] + [len(row.layer) for row in rows])
    lines = [f"{'rank':>4}  {'layer':<{width}}  {'trace':>11}  {'stderr':>10}  {'per element':>11}"]
    for row in rows:
        lines.append(f"{row.rank:>4}  {row.layer:<{width}}  {row.trace:>11.4g}  {row.stderr:>10.3g}  "
                     f"{row.trace_per_element:>11.4g}")
    return "\n".join(lines)


def topk_yaml(rows, top_k, coefficient=0.1, special_layer_bits=None, comment=""):
    """YAML snippet for the run config: the top-k layers as distillation layers and, when
    `special_layer_bits` is given, as higher-bit activation layers. Activations carry no weights,
    so only an `activation` entry is written (a `weight` entry could not apply)."""
    import yaml
    chosen = [row.layer for row in sorted(rows, key=lambda row: row.rank)[:top_k]]
    header = "".join(f"# {line}\n" for line in comment.splitlines() if line)
    body = yaml.safe_dump({"distill_config": chosen, "distill_coeff": [float(coefficient)] * len(chosen)},
                          default_flow_style=None, sort_keys=False, width=10_000)
    if special_layer_bits is not None:
        special = {name: {"activation": f"{int(special_layer_bits)} per_tensor_affine"} for name in chosen}
        body += yaml.safe_dump({"extra_quantizer_dict": {"special_layer": special}},
                               default_flow_style=False, sort_keys=False, width=10_000)
    return header + body


def ranking_plot_png(rows, top_k, title="Hessian trace per activation"):
    import matplotlib
    matplotlib.use("Agg")  # files only; no display on servers
    import matplotlib.pyplot as plt
    ordered = sorted(rows, key=lambda row: row.rank)
    figure, axes = plt.subplots(figsize=(9, 1.2 + 0.22 * len(ordered)))
    positions = range(len(ordered))
    colours = ["tab:red" if row.rank <= top_k else "tab:blue" for row in ordered]
    errors = [0.0 if math.isnan(row.stderr) else row.stderr for row in ordered]
    axes.barh(list(positions), [row.trace for row in ordered], xerr=errors, color=colours, ecolor="black", capsize=2)
    axes.set_yticks(list(positions), [row.layer for row in ordered], fontsize=7)
    axes.invert_yaxis()
    # Traces span orders of magnitude; a log axis only when every value is positive.
    if all(row.trace > 0 for row in ordered):
        axes.set_xscale("log")
    axes.set_xlabel("trace of d²L/da² (per sample), error bar = standard error; red = top-k")
    axes.set_title(title)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    plt.close(figure)
    return buffer.getvalue()


def write_ranking(rows, out_dir, top_k=2, coefficient=0.1, special_layer_bits=None, comment=""):
    """Write hessian_rank.csv, hessian_rank.png and hessian_topk.yaml into out_dir; return their paths."""
    if top_k < 1:
        raise ValueError(f"top_k: {top_k} must be at least 1")
    out_dir = Path(out_dir)
    paths = {"csv": out_dir / "hessian_rank.csv", "png": out_dir / "hessian_rank.png",
             "yaml": out_dir / "hessian_topk.yaml"}
    # Atomic (temporary file + rename): a killed run never leaves half a CSV for a later config to read.
    write_text_atomic(paths["csv"], ranking_csv(rows))
    write_bytes_atomic(paths["png"], ranking_plot_png(rows, top_k))
    write_text_atomic(paths["yaml"], topk_yaml(rows, top_k, coefficient, special_layer_bits, comment))
    return paths


def rows_as_dicts(rows):
    return [asdict(row) for row in rows]
