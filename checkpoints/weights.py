"""Loading full-precision weights: the authors' `{'model': state_dict}` files, our own
checkpoints (which keep the weights under 'model' too), plain state_dicts and `.safetensors`.
Every file is read through checkpoints.safe_load, so a weights file can never run code."""
from pathlib import Path

import torch

from checkpoints.safe_load import CheckpointError, load_torch_file


class WeightsError(CheckpointError):
    """A weights file that cannot be loaded into the network; the message is one line."""


def read_state_dict(path):
    path = Path(path)
    return state_from_payload(load_torch_file(path, what="weights file"), path)


def state_from_payload(payload, path):
    state = payload.get("model", payload) if isinstance(payload, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{path}: expected a state_dict or {{'model': state_dict}}")
    # Checkpoints saved from DataParallel/DDP carry a 'module.' prefix on every key.
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def load_weights(model, path, show=5):
    """Strictly load `path` into `model`; on mismatch name the first few missing/unexpected keys."""
    return load_state(model, load_torch_file(path, what="weights file"), path, show)


def load_state(model, payload, path, show=5):
    """Strictly load an already-read weights payload (from `path`) into `model`."""
    state = state_from_payload(payload, path)
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong_shape = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
                   if k in state and state[k].shape != v.shape]
    if missing or unexpected or wrong_shape:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", wrong_shape)):
            if keys:
                more = f" (+{len(keys) - show} more)" if len(keys) > show else ""
                parts.append(f"{label} {len(keys)}: {', '.join(keys[:show])}{more}")
        raise WeightsError(f"{path} does not fit the {type(model).__name__} network: " + "; ".join(parts))
    model.load_state_dict(state, strict=True)
    return model
