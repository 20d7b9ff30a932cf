"""Reading `.pth` and `.safetensors` files without running code.

A `.pth` file is a pickle, and a pickle can call any function while it is read: a crafted
"checkpoint" passed as `load_model` would run its payload the moment it is opened. Every load in
the project therefore goes through `load_torch_file`, which uses `torch.load(weights_only=True)`:
tensors, numbers, strings, lists, tuples and dicts only. The harness writes its own checkpoints
with exactly those types (see checkpoints/training.py for the RNG state), so nothing is allow-listed.

Files the safe loader refuses stop the run with one line naming the file. Checkpoints written by
lowlight-qat before this change held NumPy RNG state; `tools/convert_checkpoint.py` rewrites them once
(it reads them the unsafe way, and only when the user says they trust the file).
"""
from __future__ import annotations

import pickle
import re
from pathlib import Path

import torch

CONVERTER = "python tools/convert_checkpoint.py"
# What older lowlight-qat checkpoints contained beyond weights: NumPy's RNG state (an array and
# its dtype). Seeing only these names tells an old harness checkpoint from a foreign pickle.
_OLD_HARNESS_GLOBALS = {"numpy.core.multiarray._reconstruct", "numpy._core.multiarray._reconstruct",
                        "numpy.ndarray", "numpy.dtype", "numpy.dtypes.UInt32DType"}


class CheckpointError(ValueError):
    """A weights or checkpoint file that cannot be loaded safely or at all; one line naming the file."""


def _first_line(error: BaseException) -> str:
    """The line that says what went wrong: torch's weights-only refusals open with boilerplate (which
    even suggests unsafe loading) and close with a documentation link; the reason lies in between."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    if lines and lines[0].startswith("Weights only load failed"):
        lines = [line for line in lines[1:] if not line.startswith(("Check the documentation", "Please file an issue"))]
    return lines[0] if lines else type(error).__name__


def unsafe_globals(path: Path) -> list[str]:
    """The Python objects a pickle would import, read from the file without executing it."""
    try:
        return list(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
    except Exception:  # noqa: BLE001 - a file too damaged to list is reported as damaged by the caller
        return []


def load_torch_file(path, what: str = "checkpoint"):
    """The payload of `path` (`.pth` through the safe unpickler, or `.safetensors`), on the CPU.

    Raises FileNotFoundError for a missing file and CheckpointError (one line, naming the file) for a
    file that holds objects other than weights or that is truncated or damaged."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file
        try:
            return load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as error:
            raise CheckpointError(f"{what} {path}: not a readable safetensors file ({_first_line(error)})") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        # The refused names: from the archive's pickle (read, not run) or, for a legacy raw pickle, from
        # the loader's own message. Neither means the bytes are no pickle at all: a damaged file.
        found = unsafe_globals(path) or re.findall(r"GLOBAL ([\w.]+)", str(error))
        if not found:
            raise CheckpointError(f"{what} {path}: not a readable torch file, truncated or damaged "
                                  f"({_first_line(error)})") from None
        if set(found) <= _OLD_HARNESS_GLOBALS:
            raise CheckpointError(f"{what} {path} was written by an older lowlight-qat (NumPy RNG state); convert it "
                                  f"once with: {CONVERTER} {path} --trust") from None
        named = f" ({', '.join(found[:3])}{', ...' if len(found) > 3 else ''})" if found else ""
        raise CheckpointError(f"{what} {path} holds objects other than weights{named}; it will not be loaded, "
                              "since loading it could run code") from None
    except Exception as error:  # noqa: BLE001 - torch raises RuntimeError/EOFError/... for a damaged file
        raise CheckpointError(f"{what} {path}: not a readable torch file, truncated or damaged "
                              f"({_first_line(error)})") from None
