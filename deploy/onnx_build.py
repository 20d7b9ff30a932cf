"""Building the ONNX graphs: the model plumbing (float copies, frozen quantized copies, example inputs),
the TorchScript export and the QDQ nodes that replace the quantizer placeholders.

How the QDQ graph is built: in a copy of the prepared model every fake quantizer is swapped for a
marker whose ONNX symbolic is a placeholder node of a private domain; torch's TorchScript exporter
writes the float graph around them; then each placeholder becomes standard nodes with onnx.helper:
  activation  [Clip] -> QuantizeLinear -> DequantizeLinear   (learned scale / zero point)
  weight      integer initializer -> DequantizeLinear          (the fake-quantized weight, folded)
Doing the typing in ONNX rather than in torch symbolics is what allows uint16/int16 pairs (opset
21), which the TorchScript exporter (opset <= 20) cannot emit itself.
"""
from __future__ import annotations

import contextlib
import copy
import io
import os
import tempfile
import warnings
from collections import Counter
from pathlib import Path
from typing import Optional

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from helpers.files import write_bytes_atomic
from deploy.quantizers import QuantSpec, describe, fake_quantizers, qdq_reference

INPUT_NAME = "raw"
FP_OPSET = 17  # widely supported; everything the networks use exists there
QDQ_OPSET_8BIT = 17  # per-channel QDQ needs >= 13
QDQ_OPSET_16BIT = 21  # first opset whose QuantizeLinear/DequantizeLinear take int16/uint16 (and int4/uint4)
TORCHSCRIPT_MAX_OPSET = 20
MARKER_DOMAIN = "lowlight_export"
SHAPE_RULE = "height and width must be multiples of 32"


# ----------------------------------------------------------------------------- model plumbing

def infer_input_kind(model: torch.nn.Module, input_kind: Optional[str] = None) -> str:
    """'mosaic' (B,1,H,W) for DBF/DBLE, 'packed' (B,4,H/2,W/2) for the SID U-Net."""
    if input_kind:
        return input_kind
    kind = getattr(model, "input_kind", None)
    if kind:
        return kind
    # An FX GraphModule from MQBench drops class attributes; its first convolution (in execution
    # order, which its module registration order is not) tells.
    graph = getattr(model, "graph", None)
    modules = ([model.get_submodule(n.target) for n in graph.nodes if n.op == "call_module"]
               if isinstance(model, torch.fx.GraphModule) and graph is not None else list(model.modules()))
    for module in modules:
        if isinstance(module, torch.nn.Conv2d):
            return "mosaic" if module.in_channels == 1 else "packed"
    raise ValueError("cannot tell the network's input layout; pass input_kind='mosaic' or 'packed'")


def example_input(kind: str, batch: int, height: int, width: int, seed: int = 0,
                  check_size: bool = True) -> torch.Tensor:
    if check_size and (height <= 0 or width <= 0 or height % 32 or width % 32):
        raise ValueError(f"export size {height}x{width}: {SHAPE_RULE}")
    shape = (batch, 1, height, width) if kind == "mosaic" else (batch, 4, height // 2, width // 2)
    # A normalised, amplified raw frame lies mostly in [0, 1]; uniform noise covers that range.
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed))


def _as_tuple(outputs) -> tuple:
    return tuple(outputs) if isinstance(outputs, (tuple, list)) else (outputs,)


def _output_names(outputs, declared=None) -> list[str]:
    """ONNX output names: the network's declared outputs (models/contract.py), `raw` as `denoised_raw`
    (the input is `raw`), an ignored one as `output<i>`; without a declaration `rgb` or `mono, rgb`."""
    count = len(_as_tuple(outputs))
    if declared is not None and len(declared) == count:
        named = {"rgb": "rgb", "mono": "mono", "raw": "denoised_raw"}
        return [named.get(name, f"output{i}") for i, name in enumerate(declared)]
    return {1: ["rgb"], 2: ["mono", "rgb"]}.get(count, [f"output{i}" for i in range(count)])


def _declared(model):
    outputs = getattr(model, "outputs", None)
    return tuple(outputs) if isinstance(outputs, (tuple, list)) else None


def _dynamic_axes(kind: str, output_names: list[str], outputs=None, example=None) -> dict:
    """Dynamic batch and spatial axes; an output's spatial axes follow the mosaic (`height`) or the
    packed input (`height_half`) as its size at the example input says, else only its batch is."""
    spatial = ("height", "width") if kind == "mosaic" else ("height_half", "width_half")
    axes = {INPUT_NAME: {0: "batch", 2: spatial[0], 3: spatial[1]}}
    mosaic_width = None if example is None else example.shape[-1] * (1 if kind == "mosaic" else 2)
    for index, name in enumerate(output_names):
        tensor = _as_tuple(outputs)[index] if outputs is not None else None
        if tensor is None or mosaic_width is None:
            half = name == "denoised_raw"
        elif tensor.ndim == 4 and tensor.shape[-1] in (mosaic_width, mosaic_width // 2):
            half = tensor.shape[-1] != mosaic_width
        else:
            axes[name] = {0: "batch"}  # e.g. a pooled or vector output the harness ignores
            continue
        axes[name] = {0: "batch", 2: "height_half", 3: "width_half"} if half else {0: "batch", 2: "height", 3: "width"}
    return axes


def measured_shape_rule(net: torch.nn.Module, kind: str) -> str:
    """The size rule of the export report, measured on the network: the smallest power of two m such
    that a mosaic whose sides are an odd multiple of m runs and gives full-size outputs."""
    was_training = net.training
    net.eval()
    try:
        for multiple in (2, 4, 8, 16, 32, 64):
            odd = max(3, (64 // multiple) | 1)
            side = multiple * odd
            try:
                # A GraphModule prints the failing line of its generated code to stderr itself.
                with torch.no_grad(), contextlib.redirect_stderr(io.StringIO()):
                    outputs = _as_tuple(net(example_input(kind, 1, side, side, check_size=False)))
            except Exception:  # noqa: BLE001 - a size the network cannot take is what we are measuring
                continue
            if all(t.ndim != 4 or t.shape[-1] in (side, side // 2) for t in outputs):
                packed = f", {multiple // 2}x on its packed input" if kind == "packed" else ""
                return (f"height and width must be multiples of {multiple} (measured: the network downsamples "
                        f"the mosaic {multiple}x{packed}); the harness itself asks for multiples of 32")
    finally:
        net.train(was_training)
    return SHAPE_RULE


def _parent(model: torch.nn.Module, name: str):
    parent_name, _, attr = name.rpartition(".")
    return (model.get_submodule(parent_name) if parent_name else model), attr


def _cpu_eval_copy(model: torch.nn.Module) -> torch.nn.Module:
    # Exports must not disturb a model that training goes on using.
    return copy.deepcopy(model).cpu().eval()


def _without_quantizers(model: torch.nn.Module) -> torch.nn.Module:
    plain = _cpu_eval_copy(model)
    for name, _ in fake_quantizers(plain):
        parent, attr = _parent(plain, name)
        setattr(parent, attr, torch.nn.Identity())
    return plain


def _frozen_quantized_copy(qmodel: torch.nn.Module, x: torch.Tensor) -> torch.nn.Module:
    """The fake-quantized model as deployed: eval mode, observers off, so that running it (for the
    reference outputs) changes no scale and every scale read below is the one its forward uses.

    PACT is the exception on the way there: the quant package leaves its observer on during QAT
    because MQBench's PACT derives its scale from the learned alpha only on that path, so the stored
    scale lags alpha by one optimizer step. One forward with those observers on brings it up to date
    (a function of alpha alone, plus whether the batch minimum is negative), then they go off too."""
    from mqbench.fake_quantize import PACTFakeQuantize
    frozen = _cpu_eval_copy(qmodel)
    live_pact = []
    for _, fq in fake_quantizers(frozen):
        if isinstance(fq, PACTFakeQuantize) and fq.observer_enabled[0] and fq.fake_quant_enabled[0]:
            live_pact.append(fq)
        else:
            fq.disable_observer()
    if live_pact:
        with torch.no_grad():
            frozen(x)
        for fq in live_pact:
            fq.disable_observer()
    return frozen


# ----------------------------------------------------------------------------- placeholders

class _ActivationMarkerFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, qid):
        return x.clone()  # values are irrelevant: the export only traces the graph

    @staticmethod
    def symbolic(g, x, qid):
        out = g.op(f"{MARKER_DOMAIN}::FakeQuant", x, qid_i=qid)
        out.setType(x.type())
        return out


class _WeightMarkerFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, w, qid):
        return w.clone()

    @staticmethod
    def symbolic(g, w, qid):
        out = g.op(f"{MARKER_DOMAIN}::WeightDQ", w, qid_i=qid)
        out.setType(w.type())  # convolution symbolics need the kernel shape
        return out


class _ActivationMarker(torch.nn.Module):
    def __init__(self, qid: int):
        super().__init__()
        self.qid = qid

    def forward(self, x):
        return _ActivationMarkerFn.apply(x, self.qid)


class _WeightMarker(torch.nn.Module):
    def __init__(self, qid: int, value: torch.Tensor):
        super().__init__()
        self.qid = qid
        self.register_buffer("value", value.detach().clone())

    def forward(self, _weight):
        # Ignores the float weight (so it drops out of the graph); `value` is the quantizer's output,
        # also right for QAT modules that quantize a transformed weight (e.g. BN-folded).
        return _WeightMarkerFn.apply(self.value, self.qid)


# ----------------------------------------------------------------------------- ONNX writing

def _torch_to_onnx(module, x, opset, output_names, dynamic_axes, custom_domain=False) -> onnx.ModelProto:
    with tempfile.TemporaryDirectory() as folder, warnings.catch_warnings():
        # The TorchScript exporter is deprecated in torch 2.13 and says so at length; it is used
        # because MQBench-prepared GraphModules do not go through the dynamo exporter.
        warnings.simplefilter("ignore")
        path = Path(folder) / "model.onnx"
        torch.onnx.export(module, (x,), str(path), dynamo=False, opset_version=min(opset, TORCHSCRIPT_MAX_OPSET),
                          input_names=[INPUT_NAME], output_names=output_names, dynamic_axes=dynamic_axes,
                          do_constant_folding=True, custom_opsets={MARKER_DOMAIN: 1} if custom_domain else None)
        return onnx.load(str(path))


def _set_opset(model: onnx.ModelProto, opset: int) -> onnx.ModelProto:
    current = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    if current == opset:
        return model
    if opset < current:
        raise ValueError(f"opset {opset} is below what the exporter wrote ({current})")
    return onnx.version_converter.convert_version(model, opset)


def _io(model: onnx.ModelProto) -> tuple[list, list]:
    def describe_value(value):
        dims = [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]
        dtype = helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type).name
        return {"name": value.name, "shape": dims, "dtype": dtype}
    return [describe_value(v) for v in model.graph.input], [describe_value(v) for v in model.graph.output]


def _publish(path: Path) -> None:
    # The atomic writer's temporary file is private (0600); artefacts are meant to be shared.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def _save_model(model: onnx.ModelProto, path: Path) -> int:
    data = model.SerializeToString()
    write_bytes_atomic(path, data)
    _publish(path)
    return len(data)


def _pin_static_output_dims(model: onnx.ModelProto, outputs, dynamic_axes: dict) -> None:
    """Write the fixed output dims (e.g. rgb's 3 channels) that ONNX shape inference loses through
    DepthToSpace with dynamic H/W, so consumers see (batch, 3, height, width), not a made-up name."""
    for value, tensor in zip(model.graph.output, _as_tuple(outputs)):
        dims = value.type.tensor_type.shape.dim
        for index, size in enumerate(tensor.shape):
            if index < len(dims) and index not in dynamic_axes.get(value.name, {}):
                dims[index].Clear()
                dims[index].dim_value = int(size)


def _raise_opset(model: onnx.ModelProto, opset: int) -> None:
    """Opset 20 -> 21 by raising the import: the TorchScript exporter stops at 20, 16-bit
    QuantizeLinear/DequantizeLinear need 21, and 21 only widened the types of the other ops it
    revised, except GroupNormalization, whose meaning changed."""
    changed = sorted({n.op_type for n in model.graph.node} & {"GroupNormalization"})
    if changed or opset != 21:
        raise ValueError(f"cannot raise this graph to opset {opset} by import alone (ops: {changed or 'n/a'})")
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            entry.version = opset


def _initializer(name: str, array: np.ndarray) -> TensorProto:
    return numpy_helper.from_array(np.asarray(array), name)


WIDE_ACTIVATION_FORMS = ("round", "qdq")


def _materialize_qdq(model: onnx.ModelProto, specs: dict[int, QuantSpec], folded: dict[str, np.ndarray],
                     wide_activations: str = "round") -> None:
    """Replace every placeholder node with standard QDQ nodes, in place, keeping tensor names.

    wide_activations "round": an activation quantizer held in a 16-bit type is written without
    QuantizeLinear/DequantizeLinear, as Mul(1/scale) -> Clip(quant_min - zp, quant_max - zp) -> Round
    -> Mul(scale): the same values (Round is half to even like QuantizeLinear, and the Clip's integer
    bounds make its saturation a no-op). Neither runtime has 16-bit integer kernels to fuse such a pair
    into, and OpenVINO 2026.4 computes some of them wrong: its low-precision transformations mistake
    a uint16 pair feeding an 8-bit convolution for one they can fold (the academic W8A8 + 10-bit
    model moved 128 steps at dbf_pool1, 8 dB; onnx/README.md). "qdq" keeps the uint16/int16 pairs,
    for tools with 16-bit integer kernels."""
    graph = model.graph
    nodes, initializers, made, uses = [], [], set(), Counter()

    def qparams(spec: QuantSpec) -> tuple[str, str]:
        scale, zero_point = f"{spec.name}.scale", f"{spec.name}.zero_point"
        if spec.name not in made:
            made.add(spec.name)
            initializers.extend([_initializer(scale, spec.scale), _initializer(zero_point, spec.onnx_zero_point)])
        return scale, zero_point

    for node in graph.node:
        if node.domain != MARKER_DOMAIN:
            nodes.append(node)
            continue
        spec = specs[helper.get_attribute_value(node.attribute[0])]
        axis = {} if spec.axis is None else {"axis": spec.axis}
        scale, zero_point = qparams(spec)
        # A quantizer module called at several places gets its own nodes per call, each uniquely named.
        uses[spec.name] += 1
        tag = spec.name if uses[spec.name] == 1 else f"{spec.name}#{uses[spec.name]}"
        if node.op_type == "WeightDQ":
            integers = f"{spec.name}.quantized"
            if integers not in made:
                made.add(integers)
                initializers.append(_initializer(integers, folded[spec.name]))
            nodes.append(helper.make_node("DequantizeLinear", [integers, scale, zero_point], [node.output[0]],
                                          name=f"{tag}/DequantizeLinear", **axis))
            continue
        source, quantize_scale = node.input[0], scale

        def constant(suffix, value):
            name = f"{spec.name}.{suffix}"
            if name not in made:
                made.add(name)
                if spec.axis is not None and np.ndim(value):
                    shape = [1] * spec.rank  # broadcast along the channel axis
                    shape[spec.axis] = -1
                    value = np.reshape(value, shape)
                initializers.append(_initializer(name, value))
            return name

        if spec.multiply_by_inverse:
            # PyTorch quantizes round(x * (1/scale)); ONNX's QuantizeLinear divides, which lands on the
            # other side of a rounding tie for about 1e-4 of 10-bit values. Multiplying first and
            # quantizing with scale 1 reproduces PyTorch exactly (see QuantSpec.multiply_by_inverse).
            nodes.append(helper.make_node("Mul", [source, constant("inverse_scale", spec.inverse_scale)],
                                          [f"{tag}/scaled"], name=f"{tag}/Mul"))
            source = f"{tag}/scaled"
            quantize_scale = constant("unit_scale", np.ones_like(spec.scale))
            if spec.axis is not None:  # QuantizeLinear takes a 1-D scale per channel, not a broadcast shape
                quantize_scale = f"{spec.name}.unit_scale_1d"
                if quantize_scale not in made:
                    made.add(quantize_scale)
                    initializers.append(_initializer(quantize_scale, np.ones_like(spec.scale)))
        rounded = wide_activations == "round" and spec.dtype.endswith("16")
        if spec.clip or rounded:
            low, high = spec.clip_bounds()
            clipped = f"{tag}/clipped"
            low_name, high_name = constant("clip_min", low), constant("clip_max", high)
            if spec.axis is None:
                nodes.append(helper.make_node("Clip", [source, low_name, high_name], [clipped], name=f"{tag}/Clip"))
            else:
                # Clip takes scalar bounds only; per-channel bounds go through Max/Min.
                nodes.append(helper.make_node("Max", [source, low_name], [f"{clipped}_low"], name=f"{tag}/ClipLow"))
                nodes.append(helper.make_node("Min", [f"{clipped}_low", high_name], [clipped], name=f"{tag}/ClipHigh"))
            source = clipped
        quantized = f"{tag}/quantized"
        if rounded:
            nodes.append(helper.make_node("Round", [source], [quantized], name=f"{tag}/Round"))
            nodes.append(helper.make_node("Mul", [quantized, constant("step", spec.scale)], [node.output[0]],
                                          name=f"{tag}/Rescale"))
            continue
        nodes.append(helper.make_node("QuantizeLinear", [source, quantize_scale, zero_point], [quantized],
                                      name=f"{tag}/QuantizeLinear", **axis))
        nodes.append(helper.make_node("DequantizeLinear", [quantized, scale, zero_point], [node.output[0]],
                                      name=f"{tag}/DequantizeLinear", **axis))
    del graph.node[:]
    graph.node.extend(nodes)
    graph.initializer.extend(initializers)
    used = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
    kept = [init for init in graph.initializer if init.name in used]  # the replaced float weights go
    del graph.initializer[:]
    graph.initializer.extend(kept)
    kept_opsets = [o for o in model.opset_import if o.domain != MARKER_DOMAIN]
    del model.opset_import[:]
    model.opset_import.extend(kept_opsets)


def describe_quantizers(qmodel: torch.nn.Module, example_hw=(64, 64), input_kind: Optional[str] = None) -> list[QuantSpec]:
    """The QDQ description of every fake quantizer; ExportError at the first unexportable one."""
    x = example_input(infer_input_kind(qmodel, input_kind), 1, *example_hw)
    return [describe(name, fq) for name, fq in fake_quantizers(_frozen_quantized_copy(qmodel, x))]


def _opset_21_type(spec: QuantSpec) -> bool:
    return spec.enabled and (spec.dtype.endswith("16") or spec.dtype.endswith("int4"))


def required_opset(specs: list[QuantSpec]) -> int:
    return QDQ_OPSET_16BIT if any(_opset_21_type(s) for s in specs) else QDQ_OPSET_8BIT


def _observe(reference, quantizers, specs: list[QuantSpec], x: torch.Tensor):
    """One forward of the frozen model: its outputs, every fake-quantized weight, and per activation
    quantizer (in `spec.mismatch`) the fraction of elements where a QDQ pair with its scale and zero
    point would differ from what it really output."""
    weights, hooks = {}, []

    def keep_weight(module, args, out, spec):
        weights[spec.name] = out.detach().clone()

    def measure_activation(module, args, out, spec):
        spec.rank = args[0].ndim
        if spec.axis is not None:
            spec.axis %= spec.rank
        step = torch.as_tensor(spec.scale).float()
        if step.ndim:
            step = step.reshape([-1 if d == spec.axis else 1 for d in range(out.ndim)])
        wrong = ((qdq_reference(args[0], spec) - out).abs() > 0.5 * step).float().mean().item()
        spec.mismatch = max(spec.mismatch or 0.0, wrong)

    for spec, (_, fq) in zip(specs, quantizers):
        if spec.enabled:
            action = keep_weight if spec.role == "weight" else measure_activation
            hooks.append(fq.register_forward_hook(lambda m, a, o, spec=spec, action=action: action(m, a, o, spec)))
    try:
        with torch.no_grad():
            outputs = reference(x)
    finally:
        for hook in hooks:
            hook.remove()
    return outputs, weights
