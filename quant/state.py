"""Quantized checkpoints that load into a freshly prepared (uncalibrated) model.

A plain `load_state_dict` fails there: calibration resizes per-channel scales, zero points and
observer min/max from shape (1,) or () to one value per channel. `load_quantized_state` resizes those
tensors to the saved shapes first. The fake-quant and observer on/off flags are buffers of each
quantizer, so they travel in the state dict and a resumed run continues in the same phase.

Bit widths are not tensors: they come from prepare_quantized_model's scheme and special_layer. The
checkpoint records each quantizer's quant range and load refuses a model prepared differently, since
the same scales at another bit width would give different outputs without any error.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
from torch.ao.quantization import FakeQuantizeBase
from torch.ao.quantization.observer import ObserverBase

from helpers.names import nearest, optional_hint
from quant.prepare import fake_quantizers

FORMAT = "lowlight-qat/quantized-state/v1"


def _describe(quantizer: FakeQuantizeBase) -> dict:
    return {
        "class": type(quantizer).__name__,
        "quant_min": int(quantizer.quant_min),
        "quant_max": int(quantizer.quant_max),
        "qscheme": str(getattr(quantizer, "qscheme", "")),
        "ch_axis": int(getattr(quantizer, "ch_axis", -1)),
    }


def quantized_state(qmodel: nn.Module) -> dict:
    """Everything needed to rebuild the quantized model's numbers: the state dict (a detached copy, so a
    kept "best" state does not move with training) and each quantizer's description."""
    scheme = getattr(qmodel, "quant_scheme", None)
    return {
        "format": FORMAT,
        "state_dict": {key: value.detach().clone() for key, value in qmodel.state_dict().items()},
        "quantizers": {name: _describe(q) for name, q in fake_quantizers(qmodel).items()},
        "quant_scheme": scheme.model_dump(mode="json") if scheme is not None else None,
    }


def _check_quantizers(qmodel: nn.Module, saved: dict) -> None:
    current = fake_quantizers(qmodel)
    hint = "prepare the model with the quant_scheme, special_layer and quantize_output of the checkpoint"
    for name, description in saved.items():
        if name not in current:
            near = optional_hint(nearest(name, current))
            raise ValueError(f"quantized checkpoint: quantizer {name} is not in this model{near}; {hint}")
        mine = _describe(current[name])
        for field in ("class", "quant_min", "quant_max", "qscheme"):
            if mine[field] != description[field]:
                raise ValueError(f"quantized checkpoint: {name} has {field} {description[field]} in the checkpoint "
                                 f"but {mine[field]} in this model; {hint}")
    extra = [name for name in current if name not in saved]
    if extra:
        raise ValueError(f"quantized checkpoint: this model has quantizer {extra[0]} "
                         f"(and {len(extra) - 1} more) that the checkpoint lacks; {hint}")


def _resize_to(qmodel: nn.Module, state_dict: dict) -> None:
    """Give per-channel quantizer/observer tensors the saved shapes (values come from load_state_dict)."""
    modules = dict(qmodel.named_modules())
    for key, value in state_dict.items():
        owner_name, _, attribute = key.rpartition(".")
        owner = modules.get(owner_name)
        if not isinstance(owner, (FakeQuantizeBase, ObserverBase)):
            continue
        if attribute in owner._parameters and owner._parameters[attribute] is not None:
            parameter = owner._parameters[attribute]
            if parameter.shape != value.shape:
                # Same Parameter object, new storage: anything already holding it stays valid.
                parameter.data = torch.empty(value.shape, dtype=parameter.dtype, device=parameter.device)
        elif attribute in owner._buffers and owner._buffers[attribute] is not None:
            buffer = owner._buffers[attribute]
            if buffer.shape != value.shape:
                owner._buffers[attribute] = torch.empty(value.shape, dtype=buffer.dtype, device=buffer.device)


def load_quantized_state(qmodel: nn.Module, state: Any) -> nn.Module:
    """Load `quantized_state(...)` (or a bare state dict of a prepared model) into a prepared model,
    calibrated or not. Build the optimizer afterwards. Mismatches raise a one-line ValueError."""
    if not isinstance(state, dict):
        raise ValueError(f"quantized checkpoint: expected a mapping, got {type(state).__name__}")
    if "state_dict" in state and "quantizers" in state:
        _check_quantizers(qmodel, state["quantizers"])
        state_dict = state["state_dict"]
    else:
        state_dict = state
    _resize_to(qmodel, state_dict)
    try:
        result = qmodel.load_state_dict(state_dict, strict=False)
    except RuntimeError as error:  # size mismatches of model weights: another width or network
        detail = next((line.strip() for line in str(error).splitlines() if "size mismatch" in line), str(error))
        raise ValueError(f"quantized checkpoint does not match the model: {detail}") from None
    problems = [("missing", result.missing_keys), ("unexpected", result.unexpected_keys)]
    problems = [(what, keys) for what, keys in problems if keys]
    if problems:
        what, keys = problems[0]
        more = f" (and {len(keys) - 1} more)" if len(keys) > 1 else ""
        raise ValueError(f"quantized checkpoint does not match the model: {what} key {keys[0]}{more}; "
                         "is it a checkpoint of the same network and width?")
    return qmodel
