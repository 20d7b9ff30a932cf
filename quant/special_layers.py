"""The user's per-layer bit overrides, `extra_quantizer_dict.special_layer` (not an MQBench feature):

```yaml
extra_quantizer_dict:
  special_layer:
    input_layer: 10                      # bits of every quantizer on the network input (quant/paths.py)
    DBF.DBF_conv1.Conv1:                 # a module name of the traced model
      weight: 10 per_channel_affine      # "<bits> <scheme>", or "<bits>" to keep the scheme's own
      activation: 10 per_tensor_affine
    DBLE.DBLE_out:
      input: 10                          # every quantizer on the paths into this layer
```

`input_layer` and `input` are requests about what a layer receives: after preparing, quant.prepare
checks that no quantizer on those paths has fewer bits, and stops with one line if one does.

This module only parses and checks the text; `quant.prepare` resolves names against the prepared
model and swaps the quantizers (see its docstring for what "weight" and "activation" of a layer mean).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from helpers.names import unknown_choice
from quant.scheme import MAX_BITS, MIN_BITS

SCHEMES = {
    "per_channel_affine": (True, False),
    "per_tensor_affine": (False, False),
    "per_channel_symmetric": (True, True),
    "per_tensor_symmetric": (False, True),
}
INPUT_KEY = "input_layer"
ROLES = ("weight", "activation", "input")
WHERE = "extra_quantizer_dict.special_layer"


@dataclass(frozen=True)
class QuantOverride:
    """Bits and, when the entry names one, the scheme of one quantizer."""

    bits: int
    per_channel: Optional[bool] = None  # None: keep the quant_scheme's own
    symmetric: Optional[bool] = None
    text: str = ""

    @property
    def scheme_name(self) -> str:
        if self.per_channel is None:
            return "scheme default"
        return f"per_{'channel' if self.per_channel else 'tensor'}_{'symmetric' if self.symmetric else 'affine'}"


@dataclass
class LayerOverride:
    name: str
    weight: Optional[QuantOverride] = None
    activation: Optional[QuantOverride] = None
    input: Optional[QuantOverride] = None


class SpecialLayerError(ValueError):
    """A special_layer request that the prepared model does not honour; one line naming the layer,
    the quantizer and what to write instead."""


@dataclass
class SpecialLayers:
    input_bits: Optional[int] = None
    layers: dict[str, LayerOverride] = field(default_factory=dict)

    def __bool__(self):
        return self.input_bits is not None or bool(self.layers)


def _bits(value: Any, where: str) -> int:
    try:
        bits = int(str(value).strip())
    except ValueError:
        raise ValueError(f"{where}: bits must be an integer, got {value!r}") from None
    if not MIN_BITS <= bits <= MAX_BITS:
        raise ValueError(f"{where}: bits must be between {MIN_BITS} and {MAX_BITS}, got {bits}")
    return bits


def parse_override(value: Any, where: str) -> QuantOverride:
    """'10 per_channel_affine' (or 10, or '10') -> QuantOverride."""
    parts = str(value).split()
    if isinstance(value, bool) or not parts or len(parts) > 2:
        raise ValueError(f"{where}: expected '<bits> <scheme>' such as '10 per_tensor_affine', got {value!r}")
    bits = _bits(parts[0], where)
    if len(parts) == 1:
        return QuantOverride(bits, text=str(value))
    if parts[1] not in SCHEMES:
        raise ValueError(f"{where}: {unknown_choice(parts[1], SCHEMES, 'scheme ')}")
    per_channel, symmetric = SCHEMES[parts[1]]
    return QuantOverride(bits, per_channel, symmetric, text=str(value))


def parse_special_layers(raw: Optional[dict], where: str = WHERE) -> SpecialLayers:
    """Check the structure and every bits/scheme string; layer names are checked later, against the
    prepared model, by `quant.prepare`."""
    if isinstance(raw, SpecialLayers):
        return raw
    result = SpecialLayers()
    if not raw:
        return result
    if not isinstance(raw, dict):
        raise ValueError(f"{where}: expected a mapping of layer names, got {type(raw).__name__}")
    for name, entry in raw.items():
        name = str(name)
        if name == INPUT_KEY:
            result.input_bits = _bits(entry, f"{where}.{INPUT_KEY}")
            continue
        if entry is None:
            raise ValueError(f"{where}.{name}: empty entry; give weight, activation and/or input, "
                             "e.g. {weight: 10 per_channel_affine, activation: 10 per_tensor_affine}")
        if not isinstance(entry, dict):
            raise ValueError(f"{where}.{name}: expected a mapping with weight, activation and/or input, got {entry!r}")
        layer = LayerOverride(name)
        for role, value in entry.items():
            if role not in ROLES:
                raise ValueError(f"{where}.{name}: {unknown_choice(role, ROLES, 'key ')}")
            setattr(layer, role, parse_override(value, f"{where}.{name}.{role}"))
        result.layers[name] = layer
    return result
