"""Turn a float network into an MQBench QAT model, apply the user's per-layer overrides, calibrate.

Flow used by train.py::

    qmodel = prepare_quantized_model(model, cfg.quant_scheme, cfg.extra_quantizer_dict.special_layer,
                                     cfg.quantize_output)
    calibrate(qmodel, batches, device)          # or load_quantized_state(qmodel, checkpoint)
    optimizer = torch.optim.Adam(param_groups(qmodel, lr))   # only now: see "Optimizer" below

What the returned model contains (MQBench's Academic backend, then the steps below; with
`quant_scheme.backend: onnx_qnn | snpe | tensorrt` MQBench's placement for that target instead, so
that e.g. a convolution's output has a quantizer of its own and is what `activation` of the
convolution means):

* Weights: every Conv2d / Linear / ConvTranspose2d is MQBench's QAT module; its weight passes through
  `<module>.weight_fake_quant`. MQBench's Academic rule keeps the first layer (modules fed by the graph
  input, here `DBF.DBF_conv1.Conv1`) at 8 bits. Its "last layer at 8 bits" rule never fires on these
  networks (it only recognises a single tensor output fed by a weighted module), so `DBF.DBF_out` and
  `DBLE.DBLE_out` are at the scheme's bits unless special_layer says otherwise.
* Activations: a quantizer `<node>_post_act_fake_quantizer` after each node whose output enters a
  Conv2d/Linear (and, with `quant_scheme.quantize_transposed_conv_input`, a ConvTranspose2d), shared
  by all consumers of that node. Module names are kept exactly as MQBench makes them (`lrelu`,
  `lrelu_dup1`, ...), so distillation hooks and the ONNX exporter find them by the traced names.
* Network input: every path from the graph input passes through ONE input quantizer,
  `x_post_act_fake_quantizer`, at `special_layer.input_layer` bits when given (with any quantizer
  after a pad or another non-computing op on the input, see below), else MQBench's 8 bits
  (first-layer rule). MQBench re-quantized the input after `downshuffle` (`F.pixel_unshuffle`) with an
  ordinary activation quantizer (`pixel_unshuffle_post_act_fake_quantizer`, at the activation bits),
  so the colour branch saw the mosaic at e.g. 4 bits whatever the input setting: that redundant
  quantizer is removed (pixel_unshuffle only moves already-quantized values).
* Network outputs (`quantize_output: true`): a quantizer `<node>_post_act_fake_quantizer` on each
  output tensor (mono and rgb for DBF/DBLE), at the activation bits; only the output edge uses it (the
  DBF mono output also feeds DBLE through its own input quantizer).

special_layer: what "weight" and "activation" of a layer mean
-------------------------------------------------------------
A layer is a module name of the traced model (`DBF.DBF_conv1.Conv1`, `DBF.DBF_conv1.lrelu` for the
first call of a reused LeakyReLU, `DBF.DBF_conv1.lrelu_dup1` for its second call) or the node name of
a traced function (`cat_3`, `pixel_unshuffle_1`, `mul`).

* `weight` = `<layer>.weight_fake_quant`. A layer without weights (the user's file puts `weight` on
  LeakyReLU layers) gets a warning and the entry is skipped; it is not an error.
* `activation` = the quantizer(s) that quantize the layer's output: the fake quantizers reached from
  its output before any other weighted layer. Usually one sits right after the layer
  (`DBF.DBF_conv1.lrelu` -> `dbf_dbf_conv1_lrelu_post_act_fake_quantizer`). MQBench's Academic backend
  quantizes only conv inputs, so a Conv's output has no quantizer of its own: `DBF.DBF_conv1.Conv1`'s
  activation is the quantizer after the LeakyReLU that follows it, and a block output that feeds both
  a pool and a skip concatenation (`DBF.DBF_conv1.Conv2`, `...lrelu_dup1`) maps to both quantizers
  (after the pool and after the concatenation). Each mapping is shown in the quant plan (its
  `override` column). A layer whose output reaches no quantizer (the network head without
  `quantize_output`) gets a warning.
* `input` = every activation quantizer on the paths into the layer through ops that do not compute
  (pad, reshape, pixel (un)shuffle, cat, slicing, casts; quant/paths.py). A network that pads before
  a conv has two quantizers on that conv's input (after the producer and after the pad): both are set.
  `input_layer` is the same for the network input: every quantizer reached from the graph input
  before the first op that computes. `activation` also continues past a quantizer through such ops,
  since a later quantizer there requantizes the same values.
* After preparing, every request is checked against the quantizers that actually feed (or, for
  `activation`, quantize the output of) the named layer; one with fewer bits than asked stops with
  one line (SpecialLayerError) naming the layer, the quantizer and the entry to change.
* Bits and scheme ("10 per_channel_affine") build a new quantizer of the quant_scheme's class and
  observer from the qconfig MQBench makes for that bit width and scheme, replacing MQBench's, so its
  learnable state is genuine and trainable. Activations are per-tensor only (MQBench's per-channel
  axis would be the batch axis). When two entries reach the same quantizer with different settings,
  the higher bit width wins and a warning names both; an entry on the quantizer's own layer
  (`activation`, `weight`) wins over `input` / `input_layer`, so that two requests that contradict
  each other stop at the check rather than one of them being dropped quietly.
* Bits above 8 work with every MQBench quantizer here (torch's fake-quantize kernels take any integer
  range); `input_layer: 10` and `"10 per_tensor_affine"` give quant ranges 0..1023 (affine) or
  -512..511 (symmetric).

Optimizer
---------
Per-channel LSQ scales have shape (1,) until calibration (or load_quantized_state) resizes them, so
build the optimizer (and any DDP wrapper) after `calibrate`; `param_groups` refuses to run before.

Parameters are shared, not copied: the QAT modules reuse the float model's weight tensors, so keep a
separate model instance as the full-precision teacher.
"""
from __future__ import annotations

import contextlib
import logging
import warnings
from typing import Any, Iterable, Optional

import torch
import torch.nn as nn
from torch.ao.quantization import FakeQuantizeBase
from torch.fx import GraphModule, Node

from mqbench.fake_quantize import PACTFakeQuantize
from mqbench.nn.qat.modules.deconv import ConvTranspose2d as QATConvTranspose2d
from mqbench.prepare_by_platform import get_qconfig_by_platform, prepare_by_platform
from mqbench.utils.logger import logger as mqbench_logger
from mqbench.utils.state import enable_calibration, enable_quantization

from helpers.graph_ops import is_rearranging, passes_values
from helpers.names import nearest
from models.tracing import check_traceable, copy_tracing_hooks, make_tracer
from quant.deploy_placement import quantize_sigmoid_outputs, share_quantizers_across_max_pools
from quant.paths import (feeding_quantizers, first_consumers, is_quantizer_node, network_input_quantizers,
                         node_label, quantizer_bits)
from quant.scheme import PER_TENSOR_ONLY, QuantSchemeConfig, extra_qconfig_dict, parse_quant_scheme
from quant.special_layers import (INPUT_KEY, WHERE, QuantOverride, SpecialLayerError, SpecialLayers,
                                  parse_special_layers)

log = logging.getLogger(__name__)

QUANTIZER_SUFFIX = "_post_act_fake_quantizer"
WEIGHT_QUANTIZER = "weight_fake_quant"



@contextlib.contextmanager
def quiet_mqbench(level=logging.WARNING):
    """MQBench logs every inserted quantizer at INFO (over a hundred lines); the quant plan says it
    better."""
    saved = (mqbench_logger.level, [h.level for h in mqbench_logger.handlers])
    mqbench_logger.setLevel(level)
    for handler in mqbench_logger.handlers:
        handler.setLevel(level)
    try:
        yield
    finally:
        mqbench_logger.setLevel(saved[0])
        for handler, handler_level in zip(mqbench_logger.handlers, saved[1]):
            handler.setLevel(handler_level)


def fake_quantizers(model: nn.Module) -> dict[str, FakeQuantizeBase]:
    """Every fake quantizer of the model by module name, in module order."""
    return {name: module for name, module in model.named_modules() if isinstance(module, FakeQuantizeBase)}


class QuantizerFactory:
    """New MQBench fake quantizers of the scheme's class and observer at another bit width / scheme,
    built from the qconfig MQBench itself makes for them."""

    def __init__(self, scheme: QuantSchemeConfig):
        self.scheme = scheme

    def _qconfig(self, weight_qscheme=None, activation_qscheme=None):
        with quiet_mqbench():
            return get_qconfig_by_platform(self.scheme.backend_type,
                                           extra_qconfig_dict(self.scheme, weight_qscheme, activation_qscheme))

    def weight(self, bits: int, per_channel: bool, symmetric: bool) -> FakeQuantizeBase:
        qscheme = self.scheme.weight.qscheme(bits=bits, symmetric=symmetric, per_channel=per_channel)
        return self._qconfig(weight_qscheme=qscheme).weight()

    def activation(self, bits: int, symmetric: Optional[bool] = None) -> FakeQuantizeBase:
        qscheme = self.scheme.activation.qscheme(bits=bits, symmetric=symmetric, per_channel=False)
        return self._qconfig(activation_qscheme=qscheme).activation()


def _device_of(module: nn.Module) -> torch.device:
    for tensor in list(module.parameters()) + list(module.buffers()):
        return tensor.device
    return torch.device("cpu")


def _replace_quantizer(gm: GraphModule, name: str, new: FakeQuantizeBase) -> FakeQuantizeBase:
    old = gm.get_submodule(name)
    new.to(_device_of(old))
    new.train(old.training)
    # A replacement made after calibration must not silently restart observing.
    new.fake_quant_enabled.copy_(old.fake_quant_enabled)
    new.observer_enabled.copy_(old.observer_enabled)
    for attribute in ("quant_role", "special_layer_sources"):
        if hasattr(old, attribute):
            setattr(new, attribute, getattr(old, attribute))
    parent_name, _, child = name.rpartition(".")
    setattr(gm.get_submodule(parent_name) if parent_name else gm, child, new)
    return new


_is_quantizer_node = is_quantizer_node  # the name other quant modules import


def _has_weight(gm: GraphModule, node: Node) -> bool:
    return node.op == "call_module" and isinstance(getattr(gm.get_submodule(node.target), "weight", None),
                                                   torch.Tensor)


def _insert_quantizer_after(gm: GraphModule, node: Node, quantizer: FakeQuantizeBase, users: Iterable[Node]) -> Node:
    name = node.name + QUANTIZER_SUFFIX
    while hasattr(gm, name):
        name = "_" + name
    gm.add_submodule(name, quantizer)
    with gm.graph.inserting_after(node):
        inserted = gm.graph.call_module(name, (node,))
    for user in list(users):
        user.replace_input_with(node, inserted)
    return inserted


def _quantize_inputs(gm: GraphModule, factory: QuantizerFactory, bits: Optional[int]) -> list[Node]:
    """One quantizer per graph input, used by every consumer of that input."""
    quantizer_nodes = []
    for placeholder in [n for n in gm.graph.nodes if n.op == "placeholder"]:
        users = list(placeholder.users)
        existing = [u for u in users if _is_quantizer_node(gm, u)]
        if existing:
            node = existing[0]
            for user in users:
                if user is not node:
                    user.replace_input_with(placeholder, node)
        else:
            # Nothing MQBench quantizes reads this input directly; 8 bits matches its first-layer rule.
            node = _insert_quantizer_after(gm, placeholder, factory.activation(bits or 8), users)
        # input_layer bits are set by _apply_special_layers, with every other quantizer on the input path.
        gm.get_submodule(node.target).quant_role = "input"
        quantizer_nodes.append(node)
    return quantizer_nodes


def _drop_requantization(gm: GraphModule, quantizer_nodes: list[Node]) -> list[str]:
    """Remove activation quantizers whose input is an already-quantized tensor moved around by
    rearranging ops only (the input after pixel_unshuffle): they would requantize it at other bits."""
    dropped = []
    frontier = list(quantizer_nodes)
    while frontier:
        node = frontier.pop()
        for user in list(node.users):
            if is_rearranging(gm, user):
                frontier.append(user)
            elif node not in quantizer_nodes and _is_quantizer_node(gm, user):
                user.replace_all_uses_with(node)
                gm.graph.erase_node(user)
                gm.delete_submodule(user.target)
                dropped.append(user.target)
    return dropped


def _output_nodes(gm: GraphModule) -> list[Node]:
    output = next(n for n in gm.graph.nodes if n.op == "output")
    found = []
    torch.fx.node.map_arg(output.args, lambda n: found.append(n))
    return list(dict.fromkeys(found))


def _quantize_outputs(gm: GraphModule, factory: QuantizerFactory) -> list[Node]:
    output = next(n for n in gm.graph.nodes if n.op == "output")
    quantizer_nodes = []
    for node in _output_nodes(gm):
        if _is_quantizer_node(gm, node):
            quantizer_nodes.append(node)
            continue
        inserted = _insert_quantizer_after(gm, node, factory.activation(factory.scheme.activation.bits), [output])
        gm.get_submodule(inserted.target).quant_role = "output"
        quantizer_nodes.append(inserted)
    return quantizer_nodes


def output_quantizers(gm: GraphModule, node: Node) -> tuple[list[Node], bool]:
    """Fake-quantizer nodes that quantize `node`'s output (searching forward, stopping at weighted
    layers; past a quantizer only through non-computing ops, whose further quantizers requantize the
    same values), and whether some path reaches the network output unquantized."""
    found, reaches_output, seen = [], False, set()
    queue = [(user, False) for user in node.users]  # (node, already quantized on this path)
    while queue:
        user, quantized = queue.pop(0)
        if (user, quantized) in seen:
            continue
        seen.add((user, quantized))
        if _is_quantizer_node(gm, user):
            if user not in found:
                found.append(user)
            queue.extend((u, True) for u in user.users)
        elif user.op == "output":
            reaches_output = reaches_output or not quantized
        elif quantized:
            if passes_values(gm, user):
                queue.extend((u, True) for u in user.users)
        elif not _has_weight(gm, user):
            queue.extend((u, False) for u in user.users)
    return found, reaches_output


def unquantized_input_paths(gm: GraphModule) -> list[str]:
    """Nodes that consume a graph input (through any chain of ops) without a fake quantizer between:
    weighted layers and the output are the places where it would matter. Empty when all is quantized."""
    escaped, seen = [], set()
    queue = [u for n in gm.graph.nodes if n.op == "placeholder" for u in n.users]
    while queue:
        node = queue.pop(0)
        if node in seen or _is_quantizer_node(gm, node):
            continue
        seen.add(node)
        if node.op == "output" or _has_weight(gm, node):
            escaped.append(str(node.target) if node.op == "call_module" else node.name)
        else:
            queue.extend(node.users)
    return escaped


def layer_names(gm: GraphModule) -> list[str]:
    """Names a special_layer entry may use: called modules, then traced function nodes."""
    modules = [n.target for n in gm.graph.nodes if n.op == "call_module" and not _is_quantizer_node(gm, n)]
    functions = [n.name for n in gm.graph.nodes if n.op in ("call_function", "call_method")]
    return list(dict.fromkeys(modules + functions))


def _find_layer(gm: GraphModule, name: str) -> Node:
    for node in gm.graph.nodes:
        if (node.op == "call_module" and node.target == name) or \
                (node.op in ("call_function", "call_method") and node.name == name):
            return node
    close = nearest(name, layer_names(gm), count=3, cutoff=0.4)
    hint = f"nearest: {', '.join(close)}" if close else "see quant.prepare.layer_names(qmodel)"
    raise ValueError(f"{WHERE}.{name}: no layer {name!r} in the traced model; {hint} "
                     "(modules the forward never calls are dropped by tracing)")


def _apply_special_layers(gm: GraphModule, special: SpecialLayers, factory: QuantizerFactory) -> None:
    # quantizer name -> list of (override, source text, role, own); collected first so conflicts are
    # seen. "Own" entries (a layer's weight or activation) set a quantizer of that layer; path entries
    # (input_layer, <layer>.input) ask for at least those bits on what a layer receives. An own entry
    # wins over a path entry on the same quantizer, so contradicting requests reach the check below
    # instead of one of them being dropped quietly.
    planned: dict[str, list] = {}

    def plan(quantizer_name, override, source, role, own):
        planned.setdefault(quantizer_name, []).append((override, source, role, own))

    if special.input_bits is not None:
        override = QuantOverride(special.input_bits, text=str(special.input_bits))
        for node in network_input_quantizers(gm):
            plan(node.target, override, INPUT_KEY, "activation", False)
    for name, layer in special.layers.items():
        node = _find_layer(gm, name)
        if layer.weight is not None:
            module = gm.get_submodule(node.target) if node.op == "call_module" else None
            if not isinstance(getattr(module, WEIGHT_QUANTIZER, None), FakeQuantizeBase):
                kind = type(module).__name__ if module is not None else \
                    f"function {getattr(node.target, '__name__', node.target)}"
                warnings.warn(f"{WHERE}.{name}.weight: ignored, {kind} has no quantized weight", stacklevel=3)
            else:
                plan(f"{node.target}.{WEIGHT_QUANTIZER}", layer.weight, f"{name}.weight", "weight", True)
        for role in ("activation", "input"):
            override = getattr(layer, role)
            if override is None:
                continue
            if override.per_channel:
                raise ValueError(f"{WHERE}.{name}.{role}: activations are quantized per tensor "
                                 f"(got {override.text!r}); use per_tensor_affine or per_tensor_symmetric")
            if role == "input":
                targets = feeding_quantizers(gm, node)
                if not targets:
                    warnings.warn(f"{WHERE}.{name}.input: nothing to set, {name} reads an unquantized "
                                  "(float) tensor", stacklevel=3)
            else:
                targets = [node] if _is_quantizer_node(gm, node) else output_quantizers(gm, node)[0]
                if not targets:
                    reaches_output = output_quantizers(gm, node)[1]
                    hint = "; set quantize_output: true to quantize the network output" if reaches_output else ""
                    warnings.warn(f"{WHERE}.{name}.activation: ignored, no fake quantizer on this layer's output "
                                  f"(the {factory.scheme.backend} backend puts none there){hint}", stacklevel=3)
            for target in targets:
                log.debug("special_layer %s.%s -> %s", name, role, target.target)
                plan(target.target, override, f"{name}.{role}", "activation", role == "activation")

    for quantizer_name, entries in planned.items():
        deciding = [entry for entry in entries if entry[3]] or entries
        chosen = max(deciding, key=lambda entry: entry[0].bits)  # first of the highest bit width
        settings = {(e[0].bits, e[0].per_channel, e[0].symmetric) for e in deciding}
        if len(settings) > 1:
            warnings.warn(f"{WHERE}: {', '.join(e[1] for e in deciding)} all set {quantizer_name} differently; "
                          f"using {chosen[1]} ({chosen[0].text})", stacklevel=3)
        old = gm.get_submodule(quantizer_name)
        if chosen[2] == "weight":
            new = _weight_quantizer(factory, chosen[0], old, quantizer_name, gm)
        else:
            new = factory.activation(chosen[0].bits, chosen[0].symmetric)
        new = _replace_quantizer(gm, quantizer_name, new)
        new.special_layer_sources = [e[1] for e in entries]


def _requested_paths(gm: GraphModule, special: SpecialLayers):
    """(entry text, bits, layer node, quantizer node) for every quantizer a request is about: the
    network input's quantizers (input_layer), those feeding a layer (input), those on its output
    (activation)."""
    if special.input_bits is not None:
        for quantizer in network_input_quantizers(gm):
            for layer in first_consumers(gm, quantizer)[:1]:
                yield INPUT_KEY, special.input_bits, layer, quantizer
    for name, entry in special.layers.items():
        node = _find_layer(gm, name)
        if entry.input is not None:
            for quantizer in feeding_quantizers(gm, node):
                yield f"{name}.input", entry.input.bits, node, quantizer
        if entry.activation is not None and not _is_quantizer_node(gm, node):
            for quantizer in output_quantizers(gm, node)[0]:
                yield f"{name}.activation", entry.activation.bits, node, quantizer


def check_special_layers(gm: GraphModule, special: SpecialLayers) -> None:
    """Stop with one line (SpecialLayerError) when a request left a quantizer with fewer bits than it
    asked for on the path it is about, reading the bits from the prepared model's quantizers."""
    for entry, bits, layer, quantizer in _requested_paths(gm, special):
        module = gm.get_submodule(quantizer.target)
        have = quantizer_bits(module)
        if have >= bits:
            continue
        setters = [s for s in getattr(module, "special_layer_sources", []) if s != entry]
        producer = quantizer.args[0] if quantizer.args else None
        if setters:
            fix = f"raise {setters[0]} to {bits} bits or remove it"
        elif isinstance(producer, Node) and producer.op not in ("placeholder", "get_attr"):
            fix = f"add {node_label(producer)}: {{activation: {bits}}}"
        else:
            fix = f"set {quantizer.target} through its layer's activation entry"
        what = ("receives the network input" if entry == INPUT_KEY else
                "receives its input" if entry.endswith(".input") else "has its output quantized")
        raise SpecialLayerError(
            f"{WHERE}.{entry}: asks for {bits} bits but {node_label(layer)} {what} through {quantizer.target} at "
            f"{have} bits{' (set by ' + ', '.join(setters) + ')' if setters else ''}; {fix}")


def _weight_quantizer(factory: QuantizerFactory, override: QuantOverride, old: FakeQuantizeBase,
                      quantizer_name: str, gm: GraphModule) -> FakeQuantizeBase:
    scheme = factory.scheme.weight
    per_channel = scheme.per_channel if override.per_channel is None else override.per_channel
    symmetric = scheme.symmetric if override.symmetric is None else override.symmetric
    if per_channel and scheme.fake_quantize_class in PER_TENSOR_ONLY:
        warnings.warn(f"{WHERE}: {quantizer_name}: {scheme.quantizer} is per-tensor only in MQBench; "
                      f"using per-tensor instead of {override.text!r}", stacklevel=4)
        per_channel = False
    new = factory.weight(override.bits, per_channel, symmetric)
    if per_channel:
        # Output channels: axis 0 of a Conv weight, axis 1 of a ConvTranspose weight (as MQBench does).
        owner = gm.get_submodule(quantizer_name.rpartition(".")[0])
        axis = old.ch_axis if old.ch_axis != -1 else (1 if isinstance(owner, nn.ConvTranspose2d) else 0)
        new.ch_axis = axis
        new.activation_post_process.ch_axis = axis
    return new


def prepare_quantized_model(model: nn.Module, scheme: Any, special_layer: Optional[dict] = None,
                            quantize_output: bool = False) -> GraphModule:
    """QAT model of `model` by the scheme's engine (`quant_scheme.engine`, quant/engines/; MQBench by
    default: see the module docstring for what it contains).

    `scheme`: a QuantSchemeConfig or its mapping; `special_layer`: the user's
    `extra_quantizer_dict.special_layer` mapping. Bad names raise a one-line ValueError; `weight`
    entries on layers without weights only warn. Build the optimizer after `calibrate`.
    """
    from quant.engines import engine
    scheme = parse_quant_scheme(scheme)
    chosen = engine(scheme.engine)
    chosen.check_scheme(scheme)
    return chosen.prepare(model, scheme, special_layer, quantize_output)


def prepare_with_mqbench(model: nn.Module, scheme: Any, special_layer: Optional[dict] = None,
                         quantize_output: bool = False) -> GraphModule:
    """The MQBench engine's preparation (quant/engines/mqbench.py)."""
    scheme = parse_quant_scheme(scheme)
    special = parse_special_layers(special_layer)
    check_traceable(model)  # one line naming the module, rather than torch.fx's traceback from inside MQBench
    extra_quantizer = {}
    if scheme.quantize_transposed_conv_input:
        extra_quantizer["additional_module_type"] = (QATConvTranspose2d,)
    if scheme.weight.fake_quantize_class == "DoReFaFakeQuantize":
        warnings.warn("quant_scheme.weight.quantizer: MQBench's DoReFa maps every weight tensor to [-1, 1] "
                      "(tanh, then division by the largest value); without normalisation layers to absorb "
                      "that scale, activations grow layer after layer and gradients may overflow", stacklevel=2)
    if scheme.activation.fake_quantize_class == "DoReFaFakeQuantize":
        warnings.warn("quant_scheme.activation.quantizer: MQBench's DoReFa quantizer normalises its input "
                      "with tanh (the DoReFa weight transform); activations lose their scale", stacklevel=2)
    with quiet_mqbench(), warnings.catch_warnings():
        # The deployment backends fuse Conv+ReLU through a torch API that announces its deprecation.
        warnings.filterwarnings("ignore", message="Passing a fuse_custom_config_dict")
        prepared = prepare_by_platform(model, scheme.backend_type, {
            "extra_qconfig_dict": extra_qconfig_dict(scheme),
            "extra_quantizer_dict": extra_quantizer,
        }, custom_tracer=make_tracer(model))
    factory = QuantizerFactory(scheme)
    input_nodes = _quantize_inputs(prepared, factory, special.input_bits)
    dropped = _drop_requantization(prepared, input_nodes)
    if dropped:
        log.info("input quantized once; removed requantization after rearranging ops: %s", ", ".join(dropped))
    if scheme.backend != "academic":
        shared = share_quantizers_across_max_pools(prepared, _is_quantizer_node)
        added = quantize_sigmoid_outputs(prepared, _is_quantizer_node, _insert_quantizer_after,
                                         lambda: factory.activation(scheme.activation.bits))
        log.info("%s placement: %d max-pool quantizers shared with their input, %d added after Sigmoid",
                 scheme.backend, len(shared), len(added))
    if quantize_output:
        _quantize_outputs(prepared, factory)
    _apply_special_layers(prepared, special, factory)
    from quant.fast_quantizers import use_fast_quantizers, warn_mqbench_gradients_once
    if scheme.fast_quantizers:
        use_fast_quantizers(prepared)
    else:
        warn_mqbench_gradients_once(prepared)
    check_special_layers(prepared, special)  # on the final quantizers: nothing after may lower them
    prepared.graph.lint()
    prepared.recompile()
    escaped = unquantized_input_paths(prepared)
    if escaped:  # an internal invariant; a new network shape could break it
        raise RuntimeError(f"the network input reaches {', '.join(escaped)} without a fake quantizer")
    # Read by calibrate() and param_groups(); plain attributes, not part of the state dict.
    prepared.quant_scheme = scheme
    prepared.special_layers = special
    for declared in ("input_kind", "outputs"):  # the network contract (models/contract.py), lost by tracing
        if hasattr(model, declared):
            setattr(prepared, declared, getattr(model, declared))
    copy_tracing_hooks(model, prepared)  # distillation and the ranking re-trace the prepared model
    return prepared


def network_input(batch: Any) -> torch.Tensor:
    """The network input of a batch: a tensor, the first element of a tuple/list, or a dict's 'input'."""
    if isinstance(batch, torch.Tensor):
        return batch
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], torch.Tensor):
        return batch[0]
    if isinstance(batch, dict):
        for key in ("input", "inputs", "raw", "x"):
            if isinstance(batch.get(key), torch.Tensor):
                return batch[key]
        raise TypeError(f"calibrate: batch dict has no 'input' tensor (keys: {', '.join(map(str, batch))})")
    raise TypeError(f"calibrate: expected a tensor, a (input, ...) tuple or a dict with 'input', "
                    f"got {type(batch).__name__}")


def set_qat_observers(qmodel: nn.Module, observers_during_qat: bool) -> None:
    """Observers on or off for QAT. PACT stays on: MQBench's PACT clips by its learnable alpha only
    on the observer path, so with the observer off alpha would get no gradient."""
    for quantizer in fake_quantizers(qmodel).values():
        if observers_during_qat or isinstance(quantizer, PACTFakeQuantize):
            quantizer.enable_observer()
        else:
            quantizer.disable_observer()


def calibrate(qmodel: nn.Module, batches: Iterable, device=None, num_batches: Optional[int] = None,
              observers_during_qat: Optional[bool] = None) -> int:
    """Observers on and fake quantization off over `num_batches` batches (default: the scheme's
    calibration_batches) with no_grad, then fake quantization on for QAT; returns batches used.

    Runs in training mode: DSQ updates its ranges only there (it keeps doing so during QAT whatever the
    observer flags). Build the optimizer after this: per-channel LSQ scales get their shape here.
    """
    scheme = getattr(qmodel, "quant_scheme", None)
    if num_batches is None and scheme is not None:
        num_batches = scheme.calibration_batches
    if observers_during_qat is None:
        observers_during_qat = scheme.observers_during_qat if scheme is not None else False
    if device is None:
        device = _device_of(qmodel)
    was_training = qmodel.training
    qmodel.train()
    with quiet_mqbench():
        enable_calibration(qmodel)
    used = 0
    with torch.no_grad():
        for batch in batches:
            if num_batches is not None and used >= num_batches:
                break
            qmodel(network_input(batch).to(device))
            used += 1
    if used == 0:
        raise ValueError("calibrate: got no batches; the quantizer ranges would stay at their placeholders")
    with quiet_mqbench():
        enable_quantization(qmodel)
    set_qat_observers(qmodel, observers_during_qat)
    qmodel.train(was_training)
    return used


def quantizer_parameters(qmodel: nn.Module) -> list[nn.Parameter]:
    """Learnable parameters of the fake quantizers (LSQ scales and zero points, PACT alphas)."""
    found = {}
    for quantizer in fake_quantizers(qmodel).values():
        for parameter in quantizer.parameters():
            found[id(parameter)] = parameter
    return list(found.values())


def _uncalibrated_per_channel(qmodel: nn.Module) -> list[str]:
    stale = []
    for name, quantizer in fake_quantizers(qmodel).items():
        observer = getattr(quantizer, "activation_post_process", None)
        min_val = getattr(observer, "min_val", None)
        if getattr(quantizer, "ch_axis", -1) != -1 and isinstance(min_val, torch.Tensor) \
                and bool(torch.isinf(min_val).any()):
            stale.append(name)
    return stale


def param_groups(qmodel: nn.Module, lr: float, quantizer_lr: Optional[float] = None) -> list[dict]:
    """Optimizer groups: model weights at `lr`; quantizer parameters at `quantizer_lr` (default: the
    scheme's quantizer_lr, else `lr`) without weight decay (decay would shrink the ranges)."""
    stale = _uncalibrated_per_channel(qmodel)
    if stale:
        raise RuntimeError(f"param_groups: {stale[0]} (and {len(stale) - 1} more) is per-channel but not "
                           "calibrated yet; call calibrate() or load_quantized_state() before building the optimizer")
    if quantizer_lr is None:
        scheme = getattr(qmodel, "quant_scheme", None)
        quantizer_lr = (scheme.quantizer_lr if scheme is not None else None) or lr
    quantizer = quantizer_parameters(qmodel)
    ids = {id(p) for p in quantizer}
    weights = [p for p in qmodel.parameters() if id(p) not in ids and p.requires_grad]
    groups = [{"params": weights, "lr": lr, "name": "weights"}]
    if quantizer:
        groups.append({"params": quantizer, "lr": quantizer_lr, "weight_decay": 0.0, "name": "quantizers"})
    return groups
