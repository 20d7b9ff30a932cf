"""Checking an exported graph: the ONNX checker, onnxruntime against PyTorch on several input shapes,
the model's own float noise floor that the QDQ graph is judged against, and the first layer where
the runtimes part ways."""
from __future__ import annotations

import copy
import math
import warnings
from dataclasses import dataclass
from typing import Optional

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper

from deploy.quantizers import QuantSpec, _broadcast, fake_quantizers
from deploy.onnx_build import INPUT_NAME, _as_tuple
from deploy.runtimes import DEFAULT_PRECISION, open_session

# QDQ may differ from a quantizer on exact rounding ties and x/s vs x*(1/s): a handful of elements.
MISMATCH_LIMIT = 1e-3
# How far below the model's own float noise floor (see float_noise_db) onnxruntime may land: 6 dB is
# 4x the mean squared difference that summing in another order makes in PyTorch itself.
FLOAT_NOISE_MARGIN_DB = 6.0
# How close to a rounding boundary an element that a runtime rounded the other way must lie for
# float rounding to explain it: TIE_TOLERANCE_STEPS quantization steps, or TIE_TOLERANCE_RELATIVE
# of |x / scale| where that is more (float32 resolves 16-bit values to 1/256 of a step only).
# Summing a convolution in another order moved x / scale by at most 4e-4 steps (4e-7 of its size)
# on the thesis model's 10-bit and 4-bit layers; a wrong scale or zero point flips elements
# anywhere in [0, 0.5] steps from a boundary.
TIE_TOLERANCE_STEPS = 1e-2
TIE_TOLERANCE_RELATIVE = 1e-5
# A handful of flips is allowed in any tensor, however small: one flip in the 512 elements of a narrow
# network's deepest level is a fraction of 2e-3 (measured, 5e-7 steps from a tie).
FEW_FLIPS = 8

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


@dataclass
class Probe:
    """A runtime's values for every activation quantizer of a QDQ graph on one input."""
    outputs: dict  # quantizer name -> the tensor its DequantizeLinear writes
    values: dict  # tensor name -> the runtime's value
    final: list  # the graph's own outputs, in order


def probe_run(model: onnx.ModelProto, runtime: str, x: torch.Tensor) -> Probe:
    """Run `model` in `runtime` on x with every activation quantizer's output made a graph output.
    onnxruntime runs it unoptimized (DequantizeLinear outputs must stay visible); OpenVINO cannot
    switch its low-precision transformations off, and each extra output only stops the fusions
    across that one tensor."""
    outputs = _activation_outputs(model)
    probe = copy.deepcopy(model)
    present = {o.name for o in probe.graph.output}
    for tensor in outputs.values():
        if tensor not in present:
            probe.graph.output.append(helper.make_tensor_value_info(tensor, TensorProto.FLOAT, None))
    session = open_session(probe, runtime, precision=DEFAULT_PRECISION, optimize=False)
    values = dict(zip([o.name for o in probe.graph.output], session.run(x.numpy())))
    return Probe(outputs, values, [values[o.name] for o in model.graph.output])


def _steps(specs: list[QuantSpec], name: str, like: torch.Tensor) -> torch.Tensor:
    spec = next((s for s in specs if s.name == name and s.enabled), None)
    if spec is None:
        return torch.ones(())
    return _broadcast(spec.scale, spec.axis, like.ndim, like.device).float()


def first_divergence(model: onnx.ModelProto, reference: torch.nn.Module, specs: list[QuantSpec],
                     x: torch.Tensor, runtime: str = "onnxruntime", probe: Optional[Probe] = None) -> Optional[dict]:
    """Where a runtime's QDQ graph first departs from the fake-quantized PyTorch model on input x:
    the first activation quantizer (in graph order) whose dequantized output differs, with how many
    elements differ and by how many quantization steps at most; None when every quantizer agrees.

    Both sides quantize with the same scale and zero point, so a difference there means the
    quantizer's *input* differed by float rounding (the two runtimes sum convolutions in different
    orders) and an element near a rounding boundary went the other way. At 4 bits one such flip is
    1/15 of the range and propagates; this names the quantizer where it starts. `probe`: that
    runtime's probe_run on x, when already made."""
    probe = probe or probe_run(model, runtime, x)
    outputs, got = probe.outputs, probe.values
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


def rounding_explanation(model: onnx.ModelProto, reference: torch.nn.Module, specs: list[QuantSpec],
                         x: torch.Tensor, runtime: str, psnr_target: float, probe: Optional[Probe] = None) -> dict:
    """Whether float rounding alone explains where a runtime's QDQ graph departs from PyTorch on x.

    A low-bit network amplifies one flipped rounding into an output far below any PSNR target (one
    10-bit element one step off at the first layer moved the random-weight thesis model's mono
    output to 26.6 dB in OpenVINO), and whether such a flip happens on a given input is chance; a
    target on the output alone then passes or fails a correct graph at random. So this replays the
    runtime's own quantized tensors: PyTorch runs the model with every activation quantizer's output
    replaced by the runtime's (teacher forcing), so each quantizer sees the same inputs as in the
    runtime up to the order of float sums, and
    - every element where PyTorch would have rounded otherwise must lie within a float rounding of
      a rounding boundary (x / scale within TIE_TOLERANCE_* of a half-integer), be one step off,
      and be at most MISMATCH_LIMIT of its tensor (or FEW_FLIPS elements);
    - PyTorch's outputs so forced must reach psnr_target against the runtime's: the float parts
      between quantizers compute the same function.
    A wrong scale or zero point, or a layer the runtime computes differently, fails one of the two.
    The runtime is run as in first_divergence (quantizer outputs visible: probe_run)."""
    probe = probe or probe_run(model, runtime, x)
    outputs, got, final = probe.outputs, probe.values, probe.final
    modules = dict(fake_quantizers(reference))
    flips, forced, hooks = {}, set(), []

    def force(name, module, args, output):
        theirs = torch.from_numpy(got[outputs[name]])
        if name in forced or theirs.shape != output.shape:
            return None  # a second call has no DequantizeLinear of its own: PyTorch's value stands
        forced.add(name)
        step = _steps(specs, name, output)
        difference = (output.float() - theirs) / step
        differ = difference.abs() > 0.5
        if differ.any():
            scaled = args[0].detach().float() / step
            tie_distance = ((scaled - scaled.floor()) - 0.5).abs()
            tolerance = torch.clamp(TIE_TOLERANCE_RELATIVE * scaled.abs(), min=TIE_TOLERANCE_STEPS)
            flips[name] = {"elements": int(differ.sum()), "size": differ.numel(), "fraction": float(differ.float().mean()),
                           "max_steps": round(float(difference.abs().max()), 2),
                           "max_tie_distance_steps": float(tie_distance[differ].max()),
                           "beyond_tolerance": int((tie_distance > tolerance)[differ].sum())}
        return theirs.to(output.dtype)

    for name in outputs:
        if name in modules:
            hooks.append(modules[name].register_forward_hook(lambda m, a, o, name=name: force(name, m, a, o)))
    try:
        with torch.no_grad():
            replayed = [t.numpy() for t in _as_tuple(reference(x))]
    finally:
        for hook in hooks:
            hook.remove()
    names = [o.name for o in model.graph.output]
    replay_psnr = {n: psnr_db(g, r) for n, g, r in zip(names, final, replayed)}
    not_rounding = {name: row for name, row in flips.items()
                    if row["elements"] > max(FEW_FLIPS, MISMATCH_LIMIT * row["size"])
                    or row["max_steps"] > 1.0
                    or row["beyond_tolerance"]}
    explained = not not_rounding and all(v >= psnr_target for v in replay_psnr.values())
    worst = max(flips.items(), key=lambda item: item[1]["max_tie_distance_steps"], default=(None, None))
    return {"explained": explained, "quantizers_flipped": len(flips),
            "flipped": {name: row["elements"] for name, row in flips.items()},
            "elements_flipped": sum(row["elements"] for row in flips.values()),
            "max_tie_distance_steps": worst[1]["max_tie_distance_steps"] if worst[1] else 0.0,
            "not_rounding": dict(list(not_rounding.items())[:5]),
            "replayed_psnr_db": {k: _finite(v) for k, v in replay_psnr.items()}}


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
