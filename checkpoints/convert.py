"""Conversion of checkpoints written before safe loading (tools/convert_checkpoint.py): NumPy values,
which `torch.load(weights_only=True)` refuses, become tensors, numbers and dicts."""
from pathlib import Path

import numpy as np
import torch

from checkpoints.safe_load import load_torch_file
from helpers.files import torch_save_atomic


def to_safe_types(value):
    """NumPy's RNG state becomes the dict that checkpoints.training.rng_state writes; other arrays become
    tensors and NumPy scalars plain numbers."""
    if isinstance(value, tuple) and len(value) == 5 and value[0] == "MT19937" and isinstance(value[1], np.ndarray):
        generator, keys, position, has_gauss, cached_gaussian = value
        return {"generator": generator, "keys": torch.from_numpy(keys.astype(np.int64)), "position": int(position),
                "has_gauss": int(has_gauss), "cached_gaussian": float(cached_gaussian)}
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(value))
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return type(value)((key, to_safe_types(item)) for key, item in value.items())
    if isinstance(value, (list, tuple)):
        return type(value)(to_safe_types(item) for item in value)
    return value


def convert_trusted_checkpoint(source: Path, target: Path) -> None:
    """Read `source` with the UNSAFE unpickler (the caller has the user's word that it is trusted), write
    its content with safe types to `target`, and prove that it loads safely."""
    payload = torch.load(source, map_location="cpu", weights_only=False)  # the user vouched for it (--trust)
    torch_save_atomic(to_safe_types(payload), target)
    load_torch_file(target)  # proves the result loads without the unsafe unpickler
