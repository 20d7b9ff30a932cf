"""The harness as a Python library: each step that train.py chains, on plain objects (an nn.Module,
batches that are tensors or dicts with 'input' and 'rgb', plain dicts for settings).

    import lowlight_qat as lq
    model = lq.build_network("examples.tiny_raw_net:TinyRawNet", channels=32)  # or "dbf_dble", width=1.0
    qmodel = lq.quantize(model, "w8a8", special_layers={"input_layer": 10})
    lq.calibrate(qmodel, batches)
    distillation = lq.attach_distillation(qmodel, model, ["decoder1.act2"], coefficients=0.1)
    ranking = lq.rank_layers(model, batches)
    lq.export_onnx(qmodel, "onnx/my_run")
    means, rows = lq.evaluate(qmodel, batches)

docs/api.md has a runnable example; tests/test_api.py runs it as written. Every
function is a thin layer over the module that does the work (named in its docstring), so the
config-driven entry points and this API share one implementation.
"""
from __future__ import annotations

import copy
import math
import numbers
from pathlib import Path
from typing import Any, Iterable, Optional

import torch
import torch.nn as nn

from harness.config import LossConfig
from harness.loss import task_loss
from helpers.names import nearest
from distill import Distiller, LayerTrace
from models import build_model
from models.contract import check_declared, check_outputs
from models.tracing import UntraceableNetworkError, check_traceable
from checkpoints.weights import load_weights
from quant import QuantSchemeConfig, param_groups, parse_quant_scheme

SCHEME_FOLDER = Path(__file__).resolve().parents[1] / "configfile"

__all__ = ["build_network", "check_network", "check_traceable", "load_weights", "quantize", "calibrate",
           "param_groups", "attach_distillation", "Distiller", "rank_layers", "LayerTrace", "export_onnx",
           "evaluate", "UntraceableNetworkError"]


def build_network(name: str, width: Optional[float] = None, *, fx_wrap=(), fx_leaf_modules=(),
                  **kwargs) -> nn.Module:
    """A network by registered name ('dbf_dble', 'sid_unet') or import path 'package.module:ClassName'
    (models/__init__.py), its contract checked (models/contract.py); `kwargs` go to its constructor,
    `width` only when given. `fx_wrap` / `fx_leaf_modules`: tracing hooks (models/tracing.py), e.g.
    fx_wrap=["einops.rearrange"], kept on the model for quantize, distillation and the ranking."""
    return build_model(name, width, kwargs, fx_wrap=fx_wrap, fx_leaf_modules=fx_leaf_modules)


def check_network(model: nn.Module) -> nn.Module:
    """Check an already built network against the contract (declared input kind and outputs, one
    small forward); one-line ValueError naming what is missing. Returns the model."""
    check_declared(type(model), type(model).__name__)
    check_outputs(model, type(model).__name__)
    return model


def _scheme(scheme: Any) -> QuantSchemeConfig:
    if isinstance(scheme, (str, Path)) and not str(scheme).endswith((".yaml", ".yml")):
        ready = sorted(p.stem.removeprefix("scheme_") for p in SCHEME_FOLDER.glob("scheme_*.yaml"))
        if str(scheme) not in ready:
            close = nearest(str(scheme), ready)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ValueError(f"scheme: no ready scheme {str(scheme)!r}; {hint}ready: {', '.join(ready)} "
                             "(or a YAML path, a mapping, a QuantSchemeConfig)")
        scheme = SCHEME_FOLDER / f"scheme_{scheme}.yaml"
    if isinstance(scheme, (str, Path)):
        path = Path(scheme)
        if not path.is_file():
            raise FileNotFoundError(f"scheme: file not found: {path}")
        from helpers.text_input import read_yaml
        loaded = read_yaml(path, "scheme") or {}
        return parse_quant_scheme(loaded.get("quant_scheme", loaded), where=f"{path}: quant_scheme")
    return parse_quant_scheme(scheme)


def quantize(model: nn.Module, scheme: Any = "w8a8", special_layers: Optional[dict] = None,
             quantize_output: bool = False) -> nn.Module:
    """A new MQBench QAT model of `model` (quant/prepare.py); `model` itself is left untouched, so it
    can serve as the distillation teacher. `scheme`: a ready scheme name ('w8a8', 'w4a4_lsq', ...,
    the configfile/scheme_*.yaml files), a YAML path, a `quant_scheme` mapping or a QuantSchemeConfig.
    `special_layers`: the `extra_quantizer_dict.special_layer` mapping (per-layer bits). An
    untraceable network raises UntraceableNetworkError (one line naming the module)."""
    from quant import prepare_quantized_model
    return prepare_quantized_model(copy.deepcopy(model), _scheme(scheme), special_layers, quantize_output)


def calibrate(qmodel: nn.Module, batches: Iterable, num_batches: Optional[int] = None) -> nn.Module:
    """Observe activation/weight ranges on `batches` (default: the scheme's calibration_batches), then
    turn fake quantization on (quant/prepare.py). Build the optimizer after this. Returns qmodel."""
    from quant import calibrate as calibrate_ranges
    _require_quantized(qmodel, "calibrate", "qmodel")
    calibrate_ranges(qmodel, batches, num_batches=num_batches)
    return qmodel


def _require_quantized(model: nn.Module, call: str, argument: str) -> None:
    from quant import fake_quantizers
    if not fake_quantizers(model):
        raise ValueError(f"{call}: {argument} has no fake quantizers; pass the model lq.quantize(model, ...) "
                         "returned (call order: quantize, calibrate, attach_distillation, train, export_onnx)")


def attach_distillation(student: nn.Module, teacher: nn.Module, layers: list[str], coefficients=0.1,
                        feature_loss: str = "mse") -> Distiller:
    """Taps on `layers` of the quantized student and of the float teacher (which is traced, frozen and
    moved to the student's device) and their weighted feature loss (distill/distiller.py).
    `distillation.forward(student, x)` runs both networks and returns (student outputs, total,
    {layer: distance}); the older form, `distillation(x)` after `student(x)`, returns (total, {layer:
    distance}). `coefficients`: one number for every layer or one per layer."""
    _require_quantized(student, "attach_distillation", "the student")
    layers = list(layers)
    if isinstance(coefficients, numbers.Real):
        coefficients = [float(coefficients)] * len(layers)
    device = next(student.parameters()).device
    return Distiller(student, teacher, layers, coefficients, feature_loss).to(device)


def mse_task_loss(outputs, batch, declared=None) -> torch.Tensor:
    """The task loss with MSE and unit weights (harness/loss.py), the Hessian ranking's default: L1 has
    no curvature on piecewise-linear layers (distill/hessian.py). `declared`: the network's `outputs`
    (None reads a pair as (mono, rgb)); every supervised output needs its target in the batch."""
    return task_loss(outputs, batch, LossConfig(), distance="mse", declared=declared)


def rank_layers(model: nn.Module, batches: Iterable, loss=mse_task_loss, layers: Optional[list[str]] = None,
                probes: int = 8, seed: int = 0, progress: bool = True) -> list[LayerTrace]:
    """Activations of the float `model` ranked by the Hessian trace of `loss(outputs, batch)` with
    respect to each (distill/hessian.py); rows best first, each with .layer, .trace, .stderr, .rank.
    Default layers: every activation module except the network outputs."""
    from distill import rank_layers as rank
    from models import model_outputs
    if loss is mse_task_loss:
        declared = model_outputs(model)
        loss = lambda outputs, batch: mse_task_loss(outputs, batch, declared)  # noqa: E731
    device = next(model.parameters()).device
    return rank(model, list(batches), loss, layer_names=layers, probes=probes, seed=seed, device=device,
                progress=progress)


def export_onnx(model: nn.Module, out_dir, height: int = 64, width: int = 64, opset: Optional[int] = None,
                runtimes=None) -> dict:
    """model_fp32.onnx, and for a quantized model model_qdq.onnx (QuantizeLinear/DequantizeLinear),
    each checked against PyTorch in every runtime of `runtimes` (None: onnxruntime and OpenVINO, as
    installed; deploy/runtimes.py) and timed there, plus export_report.json, in `out_dir`
    (deploy/onnx_export.py). Returns the report; report['passed'] says whether every check passed."""
    from deploy import export_model
    return export_model(model, out_dir, opset=opset, example_hw=(height, width), runtimes=runtimes)


class _Samples:
    """Batches of dicts (or (input, rgb) pairs) as the per-image items harness/evaluate.py reads."""

    def __init__(self, batches):
        self.items = []
        for batch in batches:
            if isinstance(batch, (tuple, list)):
                batch = {"input": batch[0], "rgb": batch[1]}
            inputs, rgb = batch["input"], batch["rgb"]
            if inputs.dim() == 3:
                inputs, rgb = inputs[None], rgb[None]
            for index in range(inputs.shape[0]):
                names = batch.get("name")
                name = names[index] if isinstance(names, (list, tuple)) else f"sample{len(self.items)}"
                ratio = batch.get("ratio")
                ratio = float(ratio.reshape(-1)[index] if torch.is_tensor(ratio) and ratio.numel() > 1 else ratio) \
                    if ratio is not None else math.nan
                self.items.append({"input": inputs[index].cpu(), "rgb": rgb[index].cpu(), "name": name,
                                   "ratio": ratio})

    def __len__(self):
        return len(self.items)

    def __getitem__(self, index):
        return self.items[index]


def evaluate(model: nn.Module, batches, ssim_variant: str = "skimage", tile_size: Optional[int] = None,
             overlap: int = 32) -> tuple[dict, list[dict]]:
    """PSNR/SSIM of the model's RGB output (clipped to [0, 1]) per image and on average
    (harness/evaluate.py). `batches`: dicts with 'input' and 'rgb' (batched or single), (input, rgb)
    pairs, or a data.sid.SIDEvalDataset. Returns (means, rows)."""
    from harness.evaluate import evaluate as evaluate_dataset
    dataset = batches if hasattr(batches, "__getitem__") and hasattr(batches, "pairs") else _Samples(batches)
    device = next(model.parameters()).device
    return evaluate_dataset(model, dataset, device, ssim_variant, tile_size, overlap, description="evaluate")
