"""The torchao engine: `torch.export` captures the graph, torchao's PT2E `prepare_qat_pt2e` inserts the
fake quantizers that a harness Quantizer annotates from the quant_scheme and special layers.

Why the graph and placement come from torchao but the quantizers do not: PyTorch is moving
quantization from torch.ao's FX mode (MQBench's base) to torchao's PT2E, and this engine runs the
same experiments on that stack. The fake quantizer in each annotated spot is the one the MQBench
engine would put there (built by quant.prepare.QuantizerFactory: the scheme's class and observer,
LSQ on quant/fast_quantizers.py), given torchao's FakeQuantizeBase as a second base so that PT2E
prepare and convert accept it. So both engines learn scales with the same LSQ estimator, and an
engine comparison measures graph capture and placement, not two LSQ implementations (torchao's own
LearnableFakeQuantize uses ATen's fused kernels, whose clip-bound gradients differ: docs/engines.md).

Placement follows MQBench's Academic backend, as the MQBench engine does by default:
* weights of every conv2d / linear (and conv_transpose2d) through `<module>.weight_fake_quant`, per
  the scheme (per-channel axis 0, axis 1 for transposed convolutions);
* one activation quantizer after each node whose output enters a weighted op (shared by all its
  users), named `<layer>_post_act_fake_quantizer`;
* the network input quantized once, after the input (`x_post_act_fake_quantizer`), at
  `special_layer.input_layer` bits or 8: a rearranging op (pixel_unshuffle) between the input and a
  convolution does not requantize;
* with `quantize_output`, one quantizer on each network output;
* the first layer's weight at 8 bits (MQBench's Academic first-layer rule) unless a special layer
  says otherwise.

Layer names are the MQBench engine's: a module path of the model (`DBF.DBF_conv1.Conv1`), its n-th
call as `<path>_dup<n>` (`DBF.DBF_conv1.lrelu_dup1`), read from torch.export's nn_module_stack; the
meaning of `weight` and `activation` of a layer is quant/prepare.py's. Names of traced functions
(`cat_3`) are torch.fx's and have no stable counterpart in an exported graph: such entries stop with
one line.
"""
from __future__ import annotations

import logging
import warnings
from typing import Optional

import torch
import torch.nn as nn
from torch.fx import GraphModule, Node

from helpers.names import nearest, output_tap
from models.contract import example_input
from quant.prepare import QUANTIZER_SUFFIX, WEIGHT_QUANTIZER, QuantizerFactory, fake_quantizers
from quant.scheme import parse_quant_scheme
from quant.special_layers import WHERE, parse_special_layers

NAME = "torchao"
log = logging.getLogger(__name__)

# quant_scheme values the torchao engine runs; anything else is MQBench-only (check_scheme).
TORCHAO_QUANTIZERS = ("lsq", "lsq+", "LearnableFakeQuantize")
INPUT_QUANTIZER = "x" + QUANTIZER_SUFFIX


def _ops():
    aten = torch.ops.aten
    weighted = {aten.conv2d.default: 0, aten.linear.default: 0, aten.conv_transpose2d.input: 1}
    rearranging = {aten.pixel_unshuffle.default, aten.pixel_shuffle.default, aten.view.default,
                   aten.reshape.default, aten.permute.default, aten.flatten.using_ints}
    return weighted, rearranging


def check_scheme(scheme) -> None:
    """A one-line ValueError for a quant_scheme key whose feature stays MQBench-only."""
    for role in ("weight", "activation"):
        config = getattr(scheme, role)
        if config.quantizer not in TORCHAO_QUANTIZERS:
            raise ValueError(f"quant_scheme.{role}.quantizer: {config.quantizer} is MQBench-only; the torchao "
                             f"engine runs lsq and lsq+ (or set quant_scheme.engine: mqbench)")
    if scheme.backend != "academic":
        raise ValueError(f"quant_scheme.backend: {scheme.backend} placement is MQBench-only; the torchao engine "
                         "places quantizers like academic (or set quant_scheme.engine: mqbench)")
    try:
        import torchao  # noqa: F401
    except ImportError:
        raise ValueError("quant_scheme.engine: torchao is not installed; pip install -r requirements.txt") from None


# --------------------------------------------------------------------------- quantizer classes

_VISIBLE_CLASSES: dict[type, type] = {}


def _visible_to_torchao(quantizer: nn.Module, storage_dtype: torch.dtype) -> nn.Module:
    """The same quantizer object, with torchao's FakeQuantizeBase as a second base class (PT2E's
    prepare and convert recognise observers by that class) and the integer type convert stores."""
    from torchao.quantization.pt2e import FakeQuantizeBase as TorchaoFakeQuantizeBase
    cls = type(quantizer)
    if cls not in _VISIBLE_CLASSES:
        # Same class name: checkpoints and the quant plan name the quantizer by it.
        _VISIBLE_CLASSES[cls] = type(cls.__name__, (cls, TorchaoFakeQuantizeBase), {"__module__": cls.__module__})
    quantizer.__class__ = _VISIBLE_CLASSES[cls]
    quantizer.dtype = storage_dtype
    return quantizer


def _storage_dtype(quant_min: int, quant_max: int) -> torch.dtype:
    """The narrowest integer type convert_pt2e can store the range in (4 bits in 8, 10 in 16)."""
    signed = quant_min < 0
    if quant_max - quant_min < 256:
        return torch.int8 if signed else torch.uint8
    return torch.int16 if signed else torch.uint16


class _Builder:
    """An `observer_or_fake_quant_ctr` for a QuantizationSpec: PT2E calls `.with_args(**spec)()`; the
    quantizer comes from the harness's factory instead (the spec's fields describe the same range)."""

    __name__ = "HarnessFakeQuantize"  # PT2E reads the constructor's name (no "PerChannel": no ch_axis passed)

    def __init__(self, build, label: str, role: str, sources: list[str], fast: bool):
        self.build, self.label, self.role, self.sources, self.fast = build, label, role, sources, fast

    def with_args(self, **_spec):
        return self

    def __call__(self):
        quantizer = self.build()
        quantizer.quant_role = self.role
        quantizer.layer_label = self.label
        if self.sources:
            quantizer.special_layer_sources = list(self.sources)
        if self.fast:
            from quant.fast_quantizers import use_fast_quantizers
            use_fast_quantizers(quantizer)
        return _visible_to_torchao(quantizer, _storage_dtype(quantizer.quant_min, quantizer.quant_max))


def _spec(builder: _Builder, sample: nn.Module):
    from torchao.quantization.pt2e.quantizer import QuantizationSpec
    return QuantizationSpec(dtype=_storage_dtype(sample.quant_min, sample.quant_max),
                            observer_or_fake_quant_ctr=builder, quant_min=int(sample.quant_min),
                            quant_max=int(sample.quant_max), qscheme=sample.qscheme)


# --------------------------------------------------------------------------- layer names

def _layer_of(node: Node) -> Optional[str]:
    """The MQBench engine's name of the module call that produced `node`, or None for top-level ops."""
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return None
    key, (path, _cls) = list(stack.items())[-1]
    if not path:
        return None
    call = key.rpartition("@")[2] if "@" in key else "0"
    return path if call == "0" else f"{path}_dup{call}"


def _layer_nodes(gm: GraphModule) -> dict[str, list[Node]]:
    found: dict[str, list[Node]] = {}
    for node in gm.graph.nodes:
        if node.op == "call_function":
            label = _layer_of(node)
            if label is not None:
                found.setdefault(label, []).append(node)
    return found


def _label(node: Node, layers: dict[str, list[Node]]) -> str:
    """A quantizer's name stem: the layer when the layer is this one op (a Conv2d, a LeakyReLU call),
    else the op's node name (a max_pool2d or cat inside a block's forward)."""
    layer = _layer_of(node)
    if node.op == "placeholder":
        return "x"
    if layer is not None and layers.get(layer) == [node]:
        return layer.replace(".", "_").lower()
    return node.name


# --------------------------------------------------------------------------- the quantizer

class HarnessQuantizer:
    """Annotates an exported graph for prepare_qat_pt2e from the quant_scheme and special layers."""

    def __init__(self, scheme, special, quantize_output: bool):
        from torchao.quantization.pt2e.quantizer import Quantizer
        self.scheme, self.special, self.quantize_output = scheme, special, quantize_output
        self.factory = QuantizerFactory(scheme)
        self.notes: list[str] = []  # warnings, issued after PT2E (whose own warnings are silenced)
        # Make it a torchao Quantizer without inheriting at import time (torchao is optional).
        self.__class__ = type("HarnessQuantizer", (HarnessQuantizer, Quantizer), {})

    def validate(self, model):
        pass

    def annotate(self, gm: GraphModule) -> GraphModule:
        from torchao.quantization.pt2e.quantizer import QuantizationAnnotation
        weighted, rearranging = _ops()
        scheme = self.scheme
        weighted_nodes = [n for n in gm.graph.nodes if n.op == "call_function" and n.target in weighted]
        # activation quantizer spots: producer node -> (bits, symmetric, sources, role)
        producers: dict[Node, dict] = {}
        for node in weighted_nodes:
            if node.target == torch.ops.aten.conv_transpose2d.input and not scheme.quantize_transposed_conv_input:
                continue
            source = node.args[0]
            while source.op == "call_function" and source.target in rearranging:
                source = source.args[0]
            if source.op == "placeholder":
                producers.setdefault(source, {"role": "input"})
            else:
                producers.setdefault(node.args[0], {"role": "activation"})
        for placeholder in [n for n in gm.graph.nodes if n.op == "placeholder"]:
            producers.setdefault(placeholder, {"role": "input"})
        if self.quantize_output:
            output = next(n for n in gm.graph.nodes if n.op == "output")
            for node in output.all_input_nodes:
                producers.setdefault(node, {"role": "output"})

        layers = _layer_nodes(gm)
        weight_plan: dict[Node, list] = {}
        activation_plan: dict[Node, list] = {}
        for name, layer in self.special.layers.items():
            nodes = layers.get(name)
            if nodes is None:
                close = nearest(name, list(layers), count=3, cutoff=0.4)
                hint = f"nearest: {', '.join(close)}" if close else "names are module paths of the model"
                raise ValueError(f"{WHERE}.{name}: no layer {name!r} in the exported model; {hint} (the torchao "
                                 "engine names layers by module path; torch.fx function names are MQBench-only)")
            if layer.weight is not None:
                owners = [n for n in nodes if n.target in weighted]
                if not owners:
                    self.notes.append(f"{WHERE}.{name}.weight: ignored, {name} has no quantized weight")
                for owner in owners:
                    weight_plan.setdefault(owner, []).append((layer.weight, f"{name}.weight"))
            if layer.activation is not None:
                if layer.activation.per_channel:
                    raise ValueError(f"{WHERE}.{name}.activation: activations are quantized per tensor "
                                     f"(got {layer.activation.text!r}); use per_tensor_affine or per_tensor_symmetric")
                targets = _reached_quantizers(nodes[-1], producers, weighted)
                if not targets:
                    self.notes.append(f"{WHERE}.{name}.activation: ignored, no fake quantizer on this layer's output")
                for target in targets:
                    activation_plan.setdefault(target, []).append((layer.activation, f"{name}.activation"))

        # MQBench's first layers: weighted ops that read a graph input directly.
        first_layers = {user for node in gm.graph.nodes if node.op == "placeholder" for user in node.users
                        if user.target in weighted}
        for producer, info in producers.items():
            entries = activation_plan.get(producer, [])
            bits, symmetric, sources = scheme.activation.bits, None, []
            if info["role"] == "input":
                bits = self.special.input_bits or 8
                sources = ["input_layer"] if self.special.input_bits is not None else []
            if entries:
                chosen = _chosen(entries, producer.name, self.notes)
                bits, symmetric, sources = chosen.bits, chosen.symmetric, [e[1] for e in entries]
            build = _bound(self.factory.activation, bits, symmetric)
            label = INPUT_QUANTIZER if info["role"] == "input" else _label(producer, layers) + QUANTIZER_SUFFIX
            spec = _spec(_Builder(build, label, info["role"], sources, scheme.fast_quantizers), build())
            annotation = producer.meta.get("quantization_annotation") or QuantizationAnnotation()
            annotation.output_qspec = spec
            annotation._annotated = True
            producer.meta["quantization_annotation"] = annotation

        weight_scheme = scheme.weight
        for node in weighted_nodes:
            entries = weight_plan.get(node, [])
            bits, per_channel, symmetric = weight_scheme.bits, weight_scheme.per_channel, weight_scheme.symmetric
            sources = []
            if node in first_layers and not entries:
                bits = 8  # MQBench's Academic first-layer rule
            if entries:
                chosen = _chosen(entries, node.name, self.notes)
                bits = chosen.bits
                per_channel = per_channel if chosen.per_channel is None else chosen.per_channel
                symmetric = symmetric if chosen.symmetric is None else chosen.symmetric
                sources = [e[1] for e in entries]
            axis = weighted[node.target]
            build = _bound(self._weight, bits, per_channel, symmetric, axis)
            weight_node = node.args[1]
            label = f"{weight_node.target.rpartition('.')[0]}.{WEIGHT_QUANTIZER}"
            spec = _spec(_Builder(build, label, "weight", sources, scheme.fast_quantizers), build())
            annotation = node.meta.get("quantization_annotation") or QuantizationAnnotation()
            annotation.input_qspec_map = {**annotation.input_qspec_map, weight_node: spec}
            annotation._annotated = True
            node.meta["quantization_annotation"] = annotation
        return gm

    def _weight(self, bits, per_channel, symmetric, axis):
        quantizer = self.factory.weight(bits, per_channel, symmetric)
        if per_channel:
            quantizer.ch_axis = axis
            quantizer.activation_post_process.ch_axis = axis
        return quantizer


def _bound(function, *args):
    def build():
        return function(*args)
    return build


def _chosen(entries, where, notes):
    chosen = max(entries, key=lambda entry: entry[0].bits)
    if len({(e[0].bits, e[0].per_channel, e[0].symmetric) for e in entries}) > 1:
        notes.append(f"{WHERE}: {', '.join(e[1] for e in entries)} all set {where} differently; "
                     f"using {chosen[1]} ({chosen[0].text})")
    return chosen[0]


def _consumers(node: Node, rearranging) -> list[Node]:
    found, queue = [], list(node.users)
    while queue:
        user = queue.pop(0)
        if user.op == "call_function" and user.target in rearranging:
            queue.extend(user.users)
        else:
            found.append(user)
    return found


def _reached_quantizers(node: Node, producers: dict, weighted) -> list[Node]:
    """Activation quantizer spots that quantize `node`'s output: `node` itself, or those reached from it
    before another weighted op (quant/prepare.py's meaning of a layer's `activation`)."""
    if node in producers:
        return [node]
    found, seen, queue = [], set(), list(node.users)
    while queue:
        user = queue.pop(0)
        if user in seen:
            continue
        seen.add(user)
        if user in producers:
            found.append(user)
        elif user.op != "output" and user.target not in weighted:
            queue.extend(user.users)
    return found


# --------------------------------------------------------------------------- prepare

def _rename_quantizers(prepared: GraphModule) -> None:
    """PT2E names quantizers activation_post_process_<n>; give them the MQBench engine's names."""
    for node in prepared.graph.nodes:
        if node.op != "call_module":
            continue
        module = prepared.get_submodule(node.target)
        label = getattr(module, "layer_label", None)
        if label is None or node.target == label:
            continue
        name = label
        while _has_submodule(prepared, name):
            name = "_" + name
        prepared.delete_submodule(node.target)
        prepared.add_submodule(name, module)
        node.target = name
    prepared.graph.lint()
    prepared.recompile()


def _has_submodule(gm: nn.Module, name: str) -> bool:
    try:
        gm.get_submodule(name)
        return True
    except AttributeError:
        return False


class FeatureTap(nn.Identity):
    """A named point in the exported graph where a layer's output passes: exported graphs keep no
    modules for parameter-free layers (LeakyReLU calls), so distillation's forward hooks
    (distill/features.py) need a module called there. Identity in value and gradient."""


def _insert_feature_taps(prepared: GraphModule) -> list[str]:
    """A FeatureTap after each single-op layer call, between the op and its activation quantizer:
    named like the MQBench engine's module (`DBF.DBF_conv1.lrelu_dup1`) for a layer without weights,
    and `<layer>.output_tap` (helpers.names.output_tap) for a layer with weights, whose name already
    holds its parameters; distill/ finds both under the layer's name."""
    weighted, _ = _ops()
    added = []
    for label, nodes in _layer_nodes(prepared).items():
        if len(nodes) != 1:
            continue
        node = nodes[0]
        if _has_submodule(prepared, label):  # the name holds the layer's parameters: tap beside them
            label = output_tap(label)
        elif node.target in weighted:
            continue  # weights with no holder to name the tap after
        if _has_submodule(prepared, label):
            continue
        prepared.add_submodule(label, FeatureTap())
        with prepared.graph.inserting_after(node):
            tap = prepared.graph.call_module(label, (node,))
        node.replace_all_uses_with(tap, delete_user_cb=lambda user: user is not tap)
        added.append(label)
    prepared.graph.lint()
    prepared.recompile()
    return added


def _allow_train_eval(prepared: GraphModule) -> None:
    """train()/eval() as on any module (flags set recursively, `self` returned: the harness chains
    `.to(device).eval()`), plus torchao's rewrite of the exported graph's dropout / batch norm ops,
    which plain Module.train cannot switch in an exported graph."""
    import types

    from torchao.quantization.pt2e import move_exported_model_to_eval, move_exported_model_to_train

    def train(self, mode: bool = True):
        (move_exported_model_to_train if mode else move_exported_model_to_eval)(self)
        return nn.Module.train(self, mode)

    prepared.train = types.MethodType(train, prepared)
    prepared.eval = types.MethodType(lambda self: self.train(False), prepared)


def prepare(model: nn.Module, scheme, special_layer=None, quantize_output: bool = False) -> GraphModule:
    """The torchao QAT model of `model`: its fake quantizers are the MQBench engine's classes, named as
    there, so calibrate, param_groups, the quant plan and quantized checkpoints work unchanged."""
    from torchao.quantization.pt2e.quantize_pt2e import prepare_qat_pt2e
    scheme = parse_quant_scheme(scheme)
    check_scheme(scheme)
    special = parse_special_layers(special_layer)
    # Batch 2 so that the batch axis stays dynamic (an example of 1 would be specialised).
    example = example_input(getattr(model, "input_kind", "mosaic"), batch=2)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    dynamic = torch.export.Dim.AUTO
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        exported = torch.export.export(model, (example.to(device),),
                                       dynamic_shapes=({0: dynamic, 2: dynamic, 3: dynamic},)).module()
        quantizer = HarnessQuantizer(scheme, special, quantize_output)
        prepared = prepare_qat_pt2e(exported, quantizer)
    for note in quantizer.notes:
        warnings.warn(note, stacklevel=3)
    _rename_quantizers(prepared)
    _insert_feature_taps(prepared)
    _allow_train_eval(prepared)
    prepared.to(device)
    harness = {"quant_scheme": scheme, "special_layers": special, "train": prepared.train, "eval": prepared.eval}
    for declared in ("input_kind", "outputs"):
        if hasattr(model, declared):
            harness[declared] = getattr(model, declared)
    for name, value in harness.items():
        setattr(prepared, name, value)
    # GraphModule's deepcopy keeps only these of an instance's own attributes (the ONNX exporter, the
    # tests and best-state copies deep-copy models).
    prepared.meta.setdefault("_user_preserved_attributes", {}).update(harness)
    log.info("torchao engine: %d fake quantizers", len(fake_quantizers(prepared)))
    return prepared
