"""The one way every mistake in a name is reported: the nearest valid names, and pydantic errors as
one line. Config keys, quantizer and observer names, layer names, list protocols and plug-in paths
all go through here, so a user sees the same kind of hint everywhere."""
from __future__ import annotations

import difflib
from typing import Iterable, Optional

from pydantic import BaseModel, ValidationError


def nearest(value, choices: Iterable, count: int = 1, cutoff: float = 0.5) -> list[str]:
    """Up to `count` choices close to `value`; case is ignored when the exact spelling finds none
    ('LSQ', 'minmaxobserver' are near misses too)."""
    choices = [str(choice) for choice in choices]
    close = difflib.get_close_matches(str(value), choices, n=count, cutoff=cutoff)
    if not close:
        lowered = {choice.lower(): choice for choice in choices}
        close = [lowered[match] for match in
                 difflib.get_close_matches(str(value).lower(), list(lowered), n=count, cutoff=cutoff)]
    return close


def unknown_choice(value, valid: Iterable, what: str = "", show_all: bool = True) -> str:
    """"unknown 'x'; did you mean 'y'? valid: a, b, c" - the message for every bad name."""
    valid = [str(choice) for choice in valid]
    close = nearest(value, valid)
    hint = f"did you mean '{close[0]}'? " if close else ""
    listed = f"valid: {', '.join(valid)}" if show_all or not close else ""
    return f"unknown {what}{value!r}; {hint}{listed}".rstrip("; ").rstrip()


def nearest_text(value, choices: Iterable, count: int = 3, cutoff: float = 0.5) -> str:
    """'a, b, c' nearest to `value`, or a few of the choices when none is close."""
    choices = [str(choice) for choice in choices]
    close = nearest(value, choices, count, cutoff)
    if close:
        return ", ".join(close)
    return "none close; " + ", ".join(choices[:count]) + (", ..." if len(choices) > count else "") \
        if choices else "none available"


def fields_at(model: type[BaseModel], location: tuple) -> list[str]:
    """The keys valid at `location` (a path of field names) inside the pydantic `model`."""
    for part in location:
        field = getattr(model, "model_fields", {}).get(part)
        annotation = getattr(field, "annotation", None)
        candidates = [annotation, *getattr(annotation, "__args__", ())]
        model = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
        if model is None:
            return []
    return list(getattr(model, "model_fields", {}))


def validation_error_line(error: ValidationError, model: type[BaseModel], prefix: str = "",
                          show_input: bool = True, noun: str = "config key") -> str:
    """The first error of a ValidationError as one line naming the dotted key; an unknown key gets the
    nearest valid one. `prefix` is prepended to the key (e.g. 'quant_scheme')."""
    first = error.errors()[0]
    location = tuple(str(part) for part in first["loc"])
    key = ".".join(((prefix,) if prefix else ()) + location) or "<top level>"
    if first["type"] == "extra_forbidden":
        valid = fields_at(model, location[:-1])
        close = nearest(location[-1], valid)
        parent = ((prefix,) if prefix else ()) + location[:-1]
        hint = f"did you mean '{'.'.join(parent + (close[0],))}'?" if close else f"valid keys here: {', '.join(valid)}"
        return f"unknown {noun} '{key}'; {hint}"
    message = first["msg"].removeprefix("Value error, ")
    if not location and not prefix:
        return message
    if not show_input:
        return f"{noun} '{key}': {message}"
    shown = repr(first.get("input"))
    if len(shown) > 60:
        shown = shown[:57] + "..."
    return f"{noun} '{key}': {message} (got {shown})"


def optional_hint(close: Optional[list[str]], label: str = "nearest") -> str:
    return f" ({label}: {', '.join(close)})" if close else ""


# A module called `<layer>.output_tap` on a layer's output stands in for a layer that is not itself a
# called module: torchao's exported graph keeps a layer with weights as a holder of its parameters and
# calls a function on them (quant/engines/torchao.py). distill/ taps it under the layer's own name.
OUTPUT_TAP = "output_tap"


def output_tap(layer: str) -> str:
    """The name of the module that stands in for `layer`'s output: `<layer>.output_tap`."""
    return f"{layer}.{OUTPUT_TAP}"


def tapped_layer_name(module_name: str) -> str:
    """The layer a called module stands for: `DBF.DBF_conv1.Conv1` for its `.output_tap`, else itself."""
    suffix = "." + OUTPUT_TAP
    return module_name[:-len(suffix)] if module_name.endswith(suffix) else module_name
