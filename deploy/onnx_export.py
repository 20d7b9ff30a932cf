"""ONNX export of the networks: full precision, and the MQBench fake-quantized model as a standard
QuantizeLinear/DequantizeLinear (QDQ) graph, each checked right after export in every runtime named
(deploy/runtimes.py: onnxruntime, OpenVINO), timed there, and described in a JSON report.

How the QDQ graph is built: in a copy of the prepared model every fake quantizer is swapped for a
marker whose ONNX symbolic is a placeholder node of a private domain; torch's TorchScript exporter
writes the float graph around them; then each placeholder becomes standard nodes with onnx.helper:
  activation  [Clip] -> QuantizeLinear -> DequantizeLinear   (learned scale / zero point)
  weight      integer initializer -> DequantizeLinear          (the fake-quantized weight, folded)
Doing the typing in ONNX rather than in torch symbolics is what allows uint16/int16 pairs (opset
21), which the TorchScript exporter (opset <= 20) cannot emit itself.
"""
from __future__ import annotations

import copy
import datetime
import json
import math
import os
import tempfile
import warnings
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from core.files import write_bytes_atomic, write_text_atomic
from deploy.quantizers import (ExportError, QuantSpec, describe, fake_quantizers, fold_weight, qdq_reference)
from deploy.latency import cpu_description, interleaved
from deploy.runtimes import DEFAULT_PRECISION, normalise_runtimes, open_session, runtime_version
from deploy.transposed_conv import transposed_convs_as_integer_convs

INPUT_NAME = "raw"
FP_OPSET = 17  # widely supported; everything the networks use exists there
QDQ_OPSET_8BIT = 17  # per-channel QDQ needs >= 13
QDQ_OPSET_16BIT = 21  # first opset whose QuantizeLinear/DequantizeLinear take int16/uint16 (and int4/uint4)
TORCHSCRIPT_MAX_OPSET = 20
MARKER_DOMAIN = "lowlight_export"
SHAPE_RULE = "height and width must be multiples of 32 (the network downsamples 16x on packed input)"
# QDQ may differ from a quantizer on exact rounding ties and x/s vs x*(1/s): a handful of elements.
MISMATCH_LIMIT = 1e-3
# How far below the model's own float noise floor (see float_noise_db) onnxruntime may land: 6 dB is
# 4x the mean squared difference that summing in another order makes in PyTorch itself.
FLOAT_NOISE_MARGIN_DB = 6.0
FP_FILE, QDQ_FILE, REPORT_FILE = "model_fp32.onnx", "model_qdq.onnx", "export_report.json"
DEFAULT_RUNTIMES = None  # every runtime of deploy.runtimes that is installed


@dataclass
class ExportInfo:
    kind: str  # "full_precision" | "qdq"
    path: str
    opset: int
    inputs: list
    outputs: list
    dynamic_axes: dict
    shape_rule: str
    file_bytes: int
    checks: dict
    passed: bool
    quantizers: Optional[dict] = None
    notes: list = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


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


def example_input(kind: str, batch: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    if height <= 0 or width <= 0 or height % 32 or width % 32:
        raise ValueError(f"export size {height}x{width}: {SHAPE_RULE}")
    shape = (batch, 1, height, width) if kind == "mosaic" else (batch, 4, height // 2, width // 2)
    # A normalised, amplified raw frame lies mostly in [0, 1]; uniform noise covers that range.
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed))


def _as_tuple(outputs) -> tuple:
    return tuple(outputs) if isinstance(outputs, (tuple, list)) else (outputs,)


def _output_names(outputs) -> list[str]:
    count = len(_as_tuple(outputs))
    return {1: ["rgb"], 2: ["mono", "rgb"]}.get(count, [f"output{i}" for i in range(count)])


def _dynamic_axes(kind: str, output_names: list[str]) -> dict:
    spatial = ("height", "width") if kind == "mosaic" else ("height_half", "width_half")
    axes = {INPUT_NAME: {0: "batch", 2: spatial[0], 3: spatial[1]}}
    axes.update({name: {0: "batch", 2: "height", 3: "width"} for name in output_names})
    return axes


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


# ----------------------------------------------------------------------------- checks

def _session(model: onnx.ModelProto, runtime: str = "onnxruntime"):
    # Checks run the float parts in f32 in every runtime: that is what is compared with PyTorch, and
    # the report records it (OpenVINO would otherwise pick bf16 by itself on CPUs that have it).
    return open_session(model, runtime, precision=DEFAULT_PRECISION)


def _runtime_row(session, runs: list) -> dict:
    return {**session.info, "passed": all(run["ok"] for run in runs)}


def _check_shapes(example_hw) -> list[tuple[int, int, int]]:
    height, width = example_hw
    # Batch, height and width all change from run to run, so one session proves all three dynamic,
    # and a check never passes on one tiny sample: at 4 bits the number of elements whose rounding
    # depends on float summation order grows with the input (see `first_divergence`).
    return [(1, height, width), (2, height + 32, width + 64), (3, 2 * height, width + 32)]


def _activation_outputs(model: onnx.ModelProto) -> dict[str, str]:
    """Quantizer name -> the tensor its (first) DequantizeLinear writes, for activation quantizers."""
    found = {}
    for node in model.graph.node:
        ending = {"DequantizeLinear": "/DequantizeLinear", "Mul": "/Rescale"}.get(node.op_type)
        if ending and node.name.endswith(ending) and "#" not in node.name:
            name = node.name[:-len(ending)]
            if node.input[0].endswith("/quantized"):  # weights dequantize an initializer instead
                found[name] = node.output[0]
    return found


def first_divergence(model: onnx.ModelProto, reference: torch.nn.Module, specs: list[QuantSpec],
                     x: torch.Tensor, runtime: str = "onnxruntime") -> Optional[dict]:
    """Where a runtime's QDQ graph first departs from the fake-quantized PyTorch model on input x:
    the first activation quantizer (in graph order) whose dequantized output differs, with how many
    elements differ and by how many quantization steps at most; None when every quantizer agrees.

    Both sides quantize with the same scale and zero point, so a difference there means the
    quantizer's *input* differed by float rounding (the two runtimes sum convolutions in different
    orders) and an element near a rounding boundary went the other way. At 4 bits one such flip is
    1/15 of the range and propagates; this names the quantizer where it starts.
    onnxruntime runs the graph unoptimized here (DequantizeLinear outputs must stay visible).
    OpenVINO cannot switch its low-precision transformations off; each extra output only stops the
    fusions across that one tensor, so it shows where its integer kernels start to differ."""
    outputs = _activation_outputs(model)
    probe = copy.deepcopy(model)
    present = {o.name for o in probe.graph.output}
    for tensor in outputs.values():
        if tensor not in present:
            probe.graph.output.append(helper.make_tensor_value_info(tensor, TensorProto.FLOAT, None))
    session = open_session(probe, runtime, precision=DEFAULT_PRECISION, optimize=False)
    got = dict(zip([o.name for o in probe.graph.output], session.run(x.numpy())))
    seen, hooks = {}, []

    def keep(name, output):
        seen.setdefault(name, output.detach().float().numpy())  # first call, like the first DequantizeLinear

    modules = dict(fake_quantizers(reference))
    for name in outputs:
        if name in modules:
            hooks.append(modules[name].register_forward_hook(lambda m, a, o, name=name: keep(name, o)))
    try:
        with torch.no_grad():
            reference(x)
    finally:
        for hook in hooks:
            hook.remove()
    steps = {s.name: float(np.max(s.scale)) for s in specs if s.enabled}
    for name, tensor in outputs.items():
        if name not in seen or seen[name].shape != got[tensor].shape:
            continue
        difference = np.abs(seen[name] - got[tensor])
        step = steps.get(name, 1.0)
        differing = int((difference > 0.5 * step).sum())
        if differing:
            return {"quantizer": name, "bits": next((s.bits for s in specs if s.name == name), None),
                    "elements": differing, "fraction": differing / difference.size,
                    "max_steps": round(float(difference.max()) / step, 2)}
    return None


def float_noise_db(reference: torch.nn.Module, x: torch.Tensor, expected: list) -> list[float]:
    """Per output, the PSNR between the fake-quantized model and itself summed in another order: the
    same float32 model in PyTorch with oneDNN off, so that its convolutions run PyTorch's other CPU
    algorithm (im2col and GEMM). That is what any other runtime does (onnxruntime, another CPU, cuDNN).

    A low-bit network can amplify such a difference: a value within a float rounding of a quantizer's
    tie lands on the other side, and the 4-bit layers after it turn that one step into 1/15 of their
    range, which spreads. The trained thesis model (W4A4 + 10-bit layers) moved by 31 dB on its mono
    output between PyTorch's two convolution algorithms, on the very input where onnxruntime moved by
    31 dB; no runtime can agree with PyTorch better than PyTorch agrees with itself. W8A8 models move
    far less (the demo's trained one 44 dB, onnxruntime 43 dB; the tests' narrow one above 60 dB).
    Where oneDNN is not PyTorch's CPU path the two runs are the same computation: the floor is then
    infinite and changes nothing."""
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch notes on switching oneDNN about Intel GPUs it lacks
        with torch.backends.mkldnn.flags(enabled=False):
            other = [t.numpy() for t in _as_tuple(reference(x))]
    return [psnr_db(e, o) for e, o in zip(expected, other)]


def psnr_targets(noise_runs: list[dict], psnr_target: float) -> tuple[dict, dict]:
    """(floor, target) per output from each check input's float_noise_db: the floor is the lowest over
    all inputs (whether a rounding difference lands on a quantizer's tie is chance, so one input may
    show none in PyTorch and one in onnxruntime), and the target is psnr_target unless the floor
    minus FLOAT_NOISE_MARGIN_DB is lower."""
    floor = {name: min(run[name] for run in noise_runs) for name in noise_runs[0]}
    return floor, {name: min(psnr_target, value - FLOAT_NOISE_MARGIN_DB) for name, value in floor.items()}


def psnr_db(reference: np.ndarray, test: np.ndarray) -> float:
    """PSNR with the reference output's own range as peak: random or untrained networks may output
    a range far from [0, 1], where a fixed peak of 1 would flatter or punish."""
    mse = float(np.mean((reference.astype(np.float64) - test.astype(np.float64)) ** 2))
    peak = float(reference.max() - reference.min()) or 1.0
    return math.inf if mse == 0 else 10.0 * math.log10(peak * peak / mse)


def _checker(model: onnx.ModelProto) -> dict:
    try:
        onnx.checker.check_model(model, full_check=True)
        return {"ok": True}
    except Exception as error:  # noqa: BLE001 - the checker's message is the result
        return {"ok": False, "error": str(error).strip().splitlines()[0]}


def _finite(value: float):
    return value if math.isfinite(value) else "inf"


# ----------------------------------------------------------------------------- public API

def export_full_precision(model: torch.nn.Module, path, opset: int = FP_OPSET, example_hw=(64, 64),
                          input_kind: Optional[str] = None, check: bool = True,
                          runtimes=DEFAULT_RUNTIMES) -> ExportInfo:
    """The float network as ONNX: input `raw`, outputs `mono` and `rgb` (DBF/DBLE) or `rgb` (U-Net),
    batch, height and width dynamic. A prepared (fake-quantized) model is exported with its
    quantizers removed, i.e. its trained float weights. `runtimes`: each one named runs the check
    (deploy.runtimes: onnxruntime, openvino)."""
    path = Path(path)
    runtimes = normalise_runtimes(runtimes)
    net = _without_quantizers(model)
    kind = infer_input_kind(model, input_kind)
    x = example_input(kind, 1, *example_hw)
    with torch.no_grad():
        outputs = net(x)
    output_names = _output_names(outputs)
    axes = _dynamic_axes(kind, output_names)
    proto = _set_opset(_torch_to_onnx(net, x, opset, output_names, axes), opset)
    _pin_static_output_dims(proto, outputs, axes)
    checks = {"checker": _checker(proto)}
    passed = checks["checker"]["ok"]
    if check:
        samples = []
        for batch, height, width in _check_shapes(example_hw):
            sample = example_input(kind, batch, height, width, seed=1)
            with torch.no_grad():
                samples.append((sample, [t.numpy() for t in _as_tuple(net(sample))]))
        checks["runtimes"] = {}
        for runtime in runtimes:
            session, runs = _session(proto, runtime), []
            for sample, expected in samples:
                got = session.run(sample.numpy())
                errors = {n: float(np.abs(e - g).max()) for n, e, g in zip(output_names, expected, got)}
                tolerance = 1e-4 * max(1.0, max(float(np.abs(e).max()) for e in expected))
                runs.append({"input_shape": list(sample.shape), "max_abs_err": errors, "tolerance": tolerance,
                             "ok": all(v <= tolerance for v in errors.values())})
            checks[runtime] = runs
            checks["runtimes"][runtime] = _runtime_row(session, runs)
        passed = passed and all(row["passed"] for row in checks["runtimes"].values())
    inputs, outputs = _io(proto)
    size = _save_model(proto, path)
    notes = ["exported from a fake-quantized model with its quantizers removed"] if fake_quantizers(model) else []
    return ExportInfo("full_precision", str(path), opset, inputs, outputs, axes, SHAPE_RULE, size, checks,
                      passed, notes=notes)


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


def export_qdq(qmodel: torch.nn.Module, path, opset: Optional[int] = None, example_hw=(64, 64),
               input_kind: Optional[str] = None, check: bool = True, psnr_target: float = 40.0,
               runtimes=DEFAULT_RUNTIMES, wide_activations: str = "round") -> ExportInfo:
    """The MQBench-prepared model as a standard QDQ graph (no custom domains), checked against the
    fake-quantized PyTorch model in each of `runtimes` (deploy.runtimes) with the same target.

    opset None: 17, or 21 when any quantizer needs a 16-bit type. wide_activations: how activation
    quantizers held in 16-bit types are written (see _materialize_qdq). Raises ExportError naming the
    first quantizer that has no faithful QDQ form; nothing is written then."""
    if wide_activations not in WIDE_ACTIVATION_FORMS:
        raise ValueError(f"wide_activations {wide_activations!r}: choose one of {', '.join(WIDE_ACTIVATION_FORMS)}")
    path = Path(path)
    runtimes = normalise_runtimes(runtimes)
    kind = infer_input_kind(qmodel, input_kind)
    x = example_input(kind, 1, *example_hw)
    reference = _frozen_quantized_copy(qmodel, x)
    quantizers = fake_quantizers(reference)
    if not quantizers:
        raise ExportError("the model has no fake quantizers; export it with export_full_precision")
    # 4-bit weight types exist from opset 21; an explicitly lower opset stores them as 8-bit.
    four_bit_weights = opset is None or opset >= QDQ_OPSET_16BIT
    specs = [describe(name, fq, four_bit_weights) for name, fq in quantizers]
    needed = required_opset(specs)
    opset = opset or needed
    if opset < 13:
        raise ValueError(f"opset {opset}: QDQ export needs opset 13 or later (per-channel DequantizeLinear)")
    if opset < needed:
        wide = next(s for s in specs if _opset_21_type(s))
        raise ExportError(f"{wide.name} ({wide.cls}): {wide.bits}-bit range needs {wide.dtype} QuantizeLinear/"
                          f"DequantizeLinear, which exist from opset {QDQ_OPSET_16BIT}; asked for opset {opset}")

    reference_outputs, weights = _observe(reference, quantizers, specs, x)
    output_names = _output_names(reference_outputs)
    for spec in specs:
        if spec.mismatch is not None and spec.mismatch > MISMATCH_LIMIT:
            raise ExportError(f"{spec.name} ({spec.cls}): a QuantizeLinear/DequantizeLinear pair with its scale and "
                              f"zero point differs from its output on {spec.mismatch:.2%} of elements")
    folded = {}
    for spec in specs:
        if spec.role == "weight" and spec.name in weights:
            if spec.axis is not None:
                spec.axis %= weights[spec.name].ndim
            folded[spec.name] = fold_weight(spec, weights[spec.name])

    marked = copy.deepcopy(reference)
    by_id = {}
    for qid, spec in enumerate(specs):
        parent, attr = _parent(marked, spec.name)
        if not spec.enabled:
            setattr(parent, attr, torch.nn.Identity())
        elif spec.role == "weight":
            if spec.name in weights:
                setattr(parent, attr, _WeightMarker(qid, weights[spec.name]))
        else:
            setattr(parent, attr, _ActivationMarker(qid))
        by_id[qid] = spec
    axes = _dynamic_axes(kind, output_names)
    proto = _torch_to_onnx(marked, x, opset, output_names, axes, custom_domain=True)
    _materialize_qdq(proto, by_id, folded, wide_activations)
    # The TorchScript exporter's shape inference gives the markers' outputs made-up symbolic dims
    # that wrongly equate different tensors' sizes (every DBF level shared one height symbol);
    # onnxruntime plans buffers by those names and fails ("Shape mismatch attempting to re-use
    # buffer") or reuses buffers wrongly on other input sizes. It infers shapes itself without them.
    del proto.graph.value_info[:]
    as_integer_convs = transposed_convs_as_integer_convs(proto)
    if opset > TORCHSCRIPT_MAX_OPSET:
        _raise_opset(proto, opset)  # the full checker below validates the result
    _pin_static_output_dims(proto, reference_outputs, axes)
    stray = sorted({n.domain for n in proto.graph.node} - {"", "ai.onnx"})
    checks = {"checker": _checker(proto), "custom_domains": stray,
              "node_counts": dict(Counter(n.op_type for n in proto.graph.node
                                          if n.op_type in ("QuantizeLinear", "DequantizeLinear", "Clip", "Max", "Min",
                                                           "Round", "ConvTranspose"))),
              "wide_activations": wide_activations,
              "transposed_convs_as_integer_convs": as_integer_convs}
    passed = checks["checker"]["ok"] and not stray
    if check:
        measured = []  # (input, PyTorch outputs, float noise) per check input, shared by every runtime
        for batch, height, width in _check_shapes(example_hw):
            sample = example_input(kind, batch, height, width, seed=1)
            with torch.no_grad():
                expected = [t.numpy() for t in _as_tuple(reference(sample))]
            measured.append((sample, expected, dict(zip(output_names, float_noise_db(reference, sample, expected)))))
        floor, targets = psnr_targets([noise for _, _, noise in measured], psnr_target)
        checks["runtimes"] = {}
        for runtime in runtimes:
            session, runs = _session(proto, runtime), []
            for sample, expected, noise in measured:
                got = session.run(sample.numpy())
                values = {n: psnr_db(e, g) for n, e, g in zip(output_names, expected, got)}
                run = {"input_shape": list(sample.shape), "psnr_db": {k: _finite(v) for k, v in values.items()},
                       "max_abs_err": {n: float(np.abs(e - g).max()) for n, e, g in zip(output_names, expected, got)},
                       "float_noise_db": {k: _finite(v) for k, v in noise.items()},
                       "ok": all(values[n] >= targets[n] for n in output_names)}
                if any(v < psnr_target for v in values.values()):
                    run["first_divergence"] = first_divergence(proto, reference, specs, sample, runtime)
                runs.append(run)
            checks[runtime] = runs
            checks["runtimes"][runtime] = _runtime_row(session, runs)
            checks["runtimes"][runtime]["min_psnr_db"] = _finite(min(
                psnr for run in runs for psnr in (math.inf if v == "inf" else v for v in run["psnr_db"].values())))
        checks["psnr_target_db"] = psnr_target
        checks["float_noise_floor_db"] = {n: _finite(v) for n, v in floor.items()}
        checks["effective_target_db"] = {n: _finite(v) for n, v in targets.items()}
        checks["psnr_reference"] = "the fake-quantized PyTorch model (eval, observers off); peak = its output range"
        checks["psnr_rule"] = (f"each output reaches psnr_target_db against PyTorch; a model whose own output moves "
                               f"further when its convolutions are summed in another order (float_noise_floor_db: "
                               f"PyTorch with oneDNN against PyTorch without) must come within "
                               f"{FLOAT_NOISE_MARGIN_DB:g} dB of that floor instead; the same in every runtime")
        passed = passed and all(row["passed"] for row in checks["runtimes"].values())
    inputs, outputs = _io(proto)
    size = _save_model(proto, path)
    rows = {s.name: s.report() for s in specs}
    dtypes = Counter(s.dtype for s in specs if s.enabled)
    notes = [f"{count} quantizer(s) as {dtype}" for dtype, count in sorted(dtypes.items())]
    if as_integer_convs:
        notes.append(f"{len(as_integer_convs)} transposed convolution(s) written as a 1x1 Conv and an NHWC block "
                     "shuffle (exact; onnxruntime has no integer ConvTranspose): see deploy/transposed_conv.py")
    if any(s.clip for s in specs if s.enabled):
        notes.append("ranges narrower than their ONNX type (e.g. 10 bits in uint16) are held by a float Clip to "
                     "(quant_min - zp) * scale .. (quant_max - zp) * scale just before QuantizeLinear")
    return ExportInfo("qdq", str(path), opset, inputs, outputs, axes, SHAPE_RULE, size, checks, passed,
                      quantizers=rows, notes=notes)


def _versions(runtimes: list[str]) -> dict:
    versions = {"torch": torch.__version__, "onnx": onnx.__version__}
    versions.update({runtime: runtime_version(runtime) for runtime in runtimes})
    try:
        from importlib.metadata import version
        versions["mqbench"] = version("mqbench-torch2")
    except Exception:  # noqa: BLE001 - only informative
        pass
    return versions


def write_report(path, report: dict) -> None:
    write_text_atomic(Path(path), json.dumps(report, indent=2, default=str) + "\n")
    _publish(Path(path))


def measure_latency(paths: dict, kind: str, runtimes: list[str], hw=(256, 256), runs: int = 5,
                    threads: int = 0) -> dict:
    """Median/min milliseconds of each exported model (`paths`: model kind -> file) in each runtime,
    all sessions interleaved in one loop (deploy.latency), on one input of `hw`."""
    x = example_input(kind, 1, *hw, seed=2).numpy()
    keys = [(runtime, model) for runtime in runtimes for model in paths]
    sessions = [open_session(paths[model], runtime, threads, precision=DEFAULT_PRECISION) for runtime, model in keys]
    timed = interleaved(sessions, x, runs)
    table = {runtime: {} for runtime in runtimes}
    for (runtime, model), row in zip(keys, timed):
        table[runtime][model] = row
    return {"input_shape": list(x.shape), "runs": runs, "threads": threads or "runtime default",
            "precision": DEFAULT_PRECISION, "cpu": cpu_description(), "ms": table,
            "how": "every model in every runtime once per round, rounds interleaved (deploy/latency.py)"}


def deployment_summary(report: dict) -> dict:
    """Per exported model: the runtimes whose check passed, the fastest of them (from the report's
    latency, when measured), and for the QDQ model the runtimes where it ran faster than the
    full-precision model in that same runtime."""
    latency = report.get("latency", {}).get("ms", {})
    summary = {}
    for kind, info in report["models"].items():
        passed = [name for name, row in info["checks"].get("runtimes", {}).items() if row["passed"]]
        timed = {name: latency[name][kind]["median_ms"] for name in passed if kind in latency.get(name, {})}
        row = {"passed_in": passed, "fastest_passed": min(timed, key=timed.get) if timed else None}
        if kind == "qdq" and latency:
            row["faster_than_fp32_in"] = [name for name in passed if "full_precision" in latency.get(name, {})
                                          and latency[name]["qdq"]["median_ms"] < latency[name]["full_precision"]["median_ms"]]
            row["speedup_vs_fp32"] = {name: round(latency[name]["full_precision"]["median_ms"] /
                                                  latency[name]["qdq"]["median_ms"], 3)
                                      for name in latency if {"qdq", "full_precision"} <= set(latency[name])}
        summary[kind] = row
    return summary


def export_model(model: torch.nn.Module, out_dir, *, quantized: Optional[bool] = None, opset: Optional[int] = None,
                 example_hw=(64, 64), input_kind: Optional[str] = None, psnr_target: float = 40.0,
                 source: Optional[dict] = None, runtimes=DEFAULT_RUNTIMES, latency_hw=(256, 256),
                 latency_runs: int = 5, wide_activations: str = "round") -> dict:
    """Full precision, then (for a fake-quantized model) QDQ, each checked in every runtime of
    `runtimes`, then their latency in each runtime (`latency_runs` interleaved rounds on one
    `latency_hw` input; 0 skips it), then the report beside them in `out_dir`.

    An unexportable quantizer raises ExportError only after the full-precision model and the report
    (with the error in it) are written. Failed numeric checks do not raise: report['passed'] is False."""
    out_dir = Path(out_dir)
    runtimes = normalise_runtimes(runtimes)
    quantized = bool(fake_quantizers(model)) if quantized is None else quantized
    kind = infer_input_kind(model, input_kind)
    example_input(kind, 1, *example_hw)  # a bad size fails here, before any file is touched
    if latency_runs:
        example_input(kind, 1, *latency_hw)
    report = {"created": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
              "versions": _versions(runtimes), "source": source or {}, "input_kind": kind,
              "example_hw": list(example_hw), "runtimes": runtimes, "models": {}, "error": None}
    error = None
    try:
        fp = export_full_precision(model, out_dir / FP_FILE, opset or FP_OPSET, example_hw, input_kind,
                                   runtimes=runtimes)
        report["models"]["full_precision"] = fp.to_dict()
        if quantized:
            try:
                qdq = export_qdq(model, out_dir / QDQ_FILE, opset, example_hw, input_kind, psnr_target=psnr_target,
                                 runtimes=runtimes, wide_activations=wide_activations)
                report["models"]["qdq"] = qdq.to_dict()
            except ExportError as failure:
                error = failure
        if latency_runs:
            report["latency"] = measure_latency({k: Path(m["path"]) for k, m in report["models"].items()}, kind,
                                                runtimes, latency_hw, latency_runs)
        report["deployment"] = deployment_summary(report)
    except BaseException as failure:
        error = failure
        raise
    finally:
        if error is not None:
            report["error"] = f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}"
        report["passed"] = error is None and all(m["passed"] for m in report["models"].values())
        write_report(out_dir / REPORT_FILE, report)
    if error is not None:
        raise error
    return report
