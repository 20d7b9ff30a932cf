"""The `quant_scheme` config section: which MQBench fake quantizer and observer quantize weights and
activations, at how many bits, and how calibration and QAT treat them.

```yaml
quant_scheme:
  weight:     {quantizer: lsq, observer: MinMaxObserver,    bits: 8, symmetric: true,  per_channel: true,  pot_scale: false, params: {}}
  activation: {quantizer: lsq, observer: EMAMinMaxObserver, bits: 8, symmetric: false, per_channel: false, pot_scale: false, params: {}}
  calibration_batches: 4
  observers_during_qat: false
  quantizer_lr: null
  quantize_transposed_conv_input: true
  fast_quantizers: true
  backend: academic        # academic | onnx_qnn | snpe | tensorrt: MQBench's quantizer placement
  engine: mqbench          # mqbench | torchao: which library builds the QAT graph (docs/engines.md)
```

`backend` picks where MQBench puts activation quantizers (its BackendType). `academic` (the research
default) quantizes the inputs of convolutions only, so a convolution's output runs float through its
LeakyReLU; `onnx_qnn` and `snpe` also quantize convolution outputs, which is what lets onnxruntime
run the exported QDQ graph with integer kernels (QLinearConv); `tensorrt` quantizes the inputs of
convolutions, transposed convolutions and pools (TensorRT fuses the rest itself). The scheme's bits and
symmetry apply whatever the backend; QAT then trains exactly the quantizers the deployed graph has.

Quantizer names: `lsq` (LearnableFakeQuantize with the given `symmetric`), `lsq+` (LearnableFakeQuantize
forced affine, so the zero point is learned too), `dsq`, `pact`, `dorefa`, `fixed` (observer-only
FakeQuantize), or one of MQBench's class names verbatim. `params` goes to the fake quantizer's
constructor (e.g. `{alpha: 0.2}` for DSQ or PACT), `observer_params` to the observer's (e.g.
`{ema_ratio: 0.95}`). Every name is checked here so a typo fails at load time with one line naming the
key and the nearest valid choice, never deep inside MQBench.
"""
from __future__ import annotations

import copy
import inspect
from typing import Any, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from mqbench.prepare_by_platform import FakeQuantizeDict, ObserverDict

from helpers.names import fields_at, unknown_choice

# Short names of the field mapped to MQBench's class names.
QUANTIZER_ALIASES = {
    "lsq": "LearnableFakeQuantize",
    "lsq+": "LearnableFakeQuantize",
    "dsq": "DSQFakeQuantize",
    "pact": "PACTFakeQuantize",
    "dorefa": "DoReFaFakeQuantize",
    "fixed": "FixedFakeQuantize",
}
# MQBench's other classes are PTQ reconstruction (AdaRound, QDrop) or hardware-specific (NNIE, TQT)
# quantizers that need their own flows; offering them here would fail later, far from the config.
QAT_QUANTIZER_CLASSES = tuple(dict.fromkeys(QUANTIZER_ALIASES.values()))
VALID_QUANTIZERS = tuple(QUANTIZER_ALIASES) + QAT_QUANTIZER_CLASSES
VALID_OBSERVERS = tuple(ObserverDict)
# PACT's MQBench quantizer calls fake_quantize_per_tensor_affine with scale.item(): per-tensor only.
PER_TENSOR_ONLY = {"PACTFakeQuantize"}

MIN_BITS, MAX_BITS = 2, 16
# `quant_scheme.backend` -> MQBench's BackendType member name.
BACKENDS = {"academic": "Academic", "onnx_qnn": "ONNX_QNN", "snpe": "SNPE", "tensorrt": "Tensorrt"}


def _constructor_keywords(cls) -> list[str]:
    names = []
    for klass in cls.__mro__:
        if "__init__" not in vars(klass):
            continue
        for name, param in inspect.signature(klass.__init__).parameters.items():
            if name in ("self", "observer") or param.kind in (param.VAR_KEYWORD, param.VAR_POSITIONAL):
                continue
            names.append(name)
        break
    return names


# Set by the quant scheme's bits/symmetric/per_channel/pot_scale fields; a `params` entry for them
# would silently fight those fields.
_SCHEME_KEYWORDS = {"dtype", "qscheme", "quant_min", "quant_max", "ch_axis", "pot_scale", "reduce_range",
                    "factory_kwargs"}


class TensorQuantConfig(BaseModel):
    """How one kind of tensor (weights or activations) is fake-quantized."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    quantizer: str = "lsq"  # lsq, lsq+, dsq, pact, dorefa, fixed, or an MQBench class name
    observer: str = "MinMaxObserver"  # an MQBench observer class name
    bits: int = Field(8, ge=MIN_BITS, le=MAX_BITS)
    symmetric: bool = True
    per_channel: bool = False
    pot_scale: bool = False  # power-of-two scales
    params: dict[str, Any] = Field(default_factory=dict)  # fake quantizer constructor arguments, e.g. {alpha: 0.2}
    observer_params: dict[str, Any] = Field(default_factory=dict)  # observer arguments, e.g. {ema_ratio: 0.95}

    @field_validator("quantizer")
    @classmethod
    def _known_quantizer(cls, value: str) -> str:
        if value in VALID_QUANTIZERS:
            return value
        if value.lower() in QUANTIZER_ALIASES:
            return value.lower()
        # 'LSQFakeQuantize' is a spelling of LSQ, not of the (textually closer) DSQFakeQuantize.
        family = value.lower().replace("_", "").removesuffix("fakequantize").removesuffix("quantize")
        if family in QUANTIZER_ALIASES:
            raise ValueError(f"unknown {value!r}; did you mean '{family}' ({QUANTIZER_ALIASES[family]})? "
                             f"valid: {', '.join(VALID_QUANTIZERS)}")
        raise ValueError(unknown_choice(value, VALID_QUANTIZERS))

    @field_validator("observer")
    @classmethod
    def _known_observer(cls, value: str) -> str:
        if value in VALID_OBSERVERS:
            return value
        raise ValueError(unknown_choice(value, VALID_OBSERVERS))

    @model_validator(mode="after")
    def _consistent(self):
        if self.quantizer == "lsq+" and self.symmetric:
            # LSQ+ is defined by its learnable offset; a symmetric scheme pins the zero point at 0.
            object.__setattr__(self, "symmetric", False)
        if self.per_channel and self.fake_quantize_class in PER_TENSOR_ONLY:
            raise ValueError(f"{self.quantizer} is per-tensor only in MQBench; set per_channel: false")
        _check_keywords(self.params, _constructor_keywords(FakeQuantizeDict[self.fake_quantize_class]),
                        f"{self.quantizer} parameter ")
        _check_keywords(self.observer_params, _constructor_keywords(ObserverDict[self.observer]),
                        f"{self.observer} parameter ")
        return self

    @property
    def fake_quantize_class(self) -> str:
        """MQBench's class name for `quantizer`."""
        return QUANTIZER_ALIASES.get(self.quantizer, self.quantizer)

    def qscheme(self, bits: Optional[int] = None, symmetric: Optional[bool] = None,
                per_channel: Optional[bool] = None) -> dict:
        """MQBench's `w_qscheme`/`a_qscheme` dict, optionally with bits/symmetry/granularity replaced."""
        return {
            "bit": self.bits if bits is None else bits,
            "symmetry": self.symmetric if symmetric is None else symmetric,
            "per_channel": self.per_channel if per_channel is None else per_channel,
            "pot_scale": self.pot_scale,
        }


def _check_keywords(given: dict, valid: list[str], what: str) -> None:
    for key in given:
        if key in _SCHEME_KEYWORDS:
            raise ValueError(f"{what}{key!r} is set by the scheme's bits/symmetric/per_channel/pot_scale keys")
        if key not in valid:
            raise ValueError(unknown_choice(key, [v for v in valid if v not in _SCHEME_KEYWORDS], what))


class WeightQuantConfig(TensorQuantConfig):
    observer: str = "MinMaxObserver"
    symmetric: bool = True
    per_channel: bool = True


class ActivationQuantConfig(TensorQuantConfig):
    observer: str = "EMAMinMaxObserver"
    symmetric: bool = False
    per_channel: bool = False

    @field_validator("per_channel")
    @classmethod
    def _per_tensor(cls, value: bool) -> bool:
        # MQBench quantizes per channel along axis 0, which for an activation is the batch axis.
        if value:
            raise ValueError("activations are quantized per tensor (MQBench's per-channel axis 0 is the "
                             "batch axis of an activation); set per_channel: false")
        return value


class QuantSchemeConfig(BaseModel):
    """The whole `quant_scheme` section."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    weight: WeightQuantConfig = Field(default_factory=WeightQuantConfig)  # how weights are fake-quantized
    activation: ActivationQuantConfig = Field(default_factory=ActivationQuantConfig)  # how activations are
    # Batches seen with observers on before QAT starts; LSQ scales start from these statistics.
    calibration_batches: int = Field(4, ge=1)
    # The usual LSQ recipe learns scales by gradient, so observers stop after calibration; true keeps
    # them updating the ranges every step (scales are then no longer learned, for LSQ).
    observers_during_qat: bool = False
    # Learning rate of quantizer parameters (LSQ scales and zero points, PACT alphas); null = model lr.
    quantizer_lr: Optional[float] = Field(None, gt=0)
    # MQBench's Academic backend quantizes only the inputs of Conv2d/Linear, which leaves every
    # ConvTranspose2d (the U-Net up-sampling) running on float activations; true quantizes them too.
    quantize_transposed_conv_input: bool = True
    # LSQ / LSQ+ run on quant/fast_quantizers.py (MQBench's LearnableFakeQuantize with a sync-free,
    # single-node forward and the LSQ estimator's gradients on every torch); false keeps MQBench's own
    # class, whose per-channel gradients follow the installed torch's clamp (warned on torch >= 2.14).
    fast_quantizers: bool = True
    # academic | onnx_qnn | snpe | tensorrt: where MQBench places activation quantizers (see the module
    # docstring and docs/deployment.md); academic keeps today's models.
    backend: str = "academic"
    # Which library captures the graph and places the quantizers (quant/engines/, docs/engines.md):
    # mqbench (torch.fx + MQBench, the default) or torchao (torch.export + PT2E prepare_qat_pt2e).
    engine: str = "mqbench"

    @field_validator("engine")
    @classmethod
    def _known_engine(cls, value: str) -> str:
        from quant.engines import ENGINES
        if str(value).lower() in ENGINES:
            return str(value).lower()
        raise ValueError(unknown_choice(value, ENGINES))

    @field_validator("backend")
    @classmethod
    def _known_backend(cls, value: str) -> str:
        if value in BACKENDS:
            return value
        if str(value).lower() in BACKENDS:
            return str(value).lower()
        raise ValueError(unknown_choice(value, BACKENDS))

    @property
    def backend_type(self):
        """MQBench's BackendType for `backend`."""
        from mqbench.prepare_by_platform import BackendType
        return BackendType[BACKENDS[self.backend]]


def extra_qconfig_dict(scheme: QuantSchemeConfig, weight_qscheme: Optional[dict] = None,
                       activation_qscheme: Optional[dict] = None) -> dict:
    """MQBench's `extra_qconfig_dict` for `prepare_by_platform` / `get_qconfig_by_platform`.

    `weight_qscheme` / `activation_qscheme` replace the scheme's own (used for per-layer overrides).
    """
    return {
        "w_observer": scheme.weight.observer,
        "a_observer": scheme.activation.observer,
        "w_fakequantize": scheme.weight.fake_quantize_class,
        "a_fakequantize": scheme.activation.fake_quantize_class,
        "w_fakeq_params": copy.deepcopy(scheme.weight.params),
        "a_fakeq_params": copy.deepcopy(scheme.activation.params),
        "w_observer_extra_args": copy.deepcopy(scheme.weight.observer_params),
        "a_observer_extra_args": copy.deepcopy(scheme.activation.observer_params),
        "w_qscheme": weight_qscheme or scheme.weight.qscheme(),
        "a_qscheme": activation_qscheme or scheme.activation.qscheme(),
    }


def one_line_error(error: ValidationError, model=None, where: str = "quant_scheme") -> str:
    """The first error of a pydantic ValidationError as `where.key: message`, with a suggestion for an
    unknown key. (This section is also parsed on its own, e.g. from a scheme file, so its messages lead
    with the key rather than the config file.)"""
    first = error.errors()[0]
    location = tuple(str(part) for part in first["loc"])
    key = ".".join((where,) + location) if where else ".".join(location)
    if first["type"] == "extra_forbidden":
        return f"{key}: {unknown_choice(location[-1], fields_at(model or QuantSchemeConfig, location[:-1]), 'key ')}"
    return f"{key}: {first['msg'].removeprefix('Value error, ')}"


def parse_quant_scheme(data: Any, where: str = "quant_scheme") -> QuantSchemeConfig:
    """A QuantSchemeConfig from a mapping (or one), raising a one-line ValueError on any mistake."""
    if isinstance(data, QuantSchemeConfig):
        return data
    if data is None:
        return QuantSchemeConfig()
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a mapping, got {type(data).__name__}")
    try:
        return QuantSchemeConfig.model_validate(data)
    except ValidationError as error:
        raise ValueError(one_line_error(error, QuantSchemeConfig, where)) from None


def parse_bits_option(text):
    """The bit widths of a `--bits 4,6,8,10` option (tools/sensitivity.py, tools/allocate.py), sorted."""
    try:
        bits = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise ValueError(f"--bits: expected comma-separated integers such as 4,6,8,10, got {text!r}") from None
    if not bits or not all(MIN_BITS <= b <= MAX_BITS for b in bits):
        raise ValueError(f"--bits: {text!r}; every bit width must be between {MIN_BITS} and {MAX_BITS}")
    return bits
