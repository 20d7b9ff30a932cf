"""Quantization engines behind one seam: `quant_scheme.engine` picks which library builds the QAT model.

An engine is a module in this package with

    NAME: str
    check_scheme(scheme) -> None            # one-line ValueError naming a key the engine cannot honour
    prepare(model, scheme, special, quantize_output) -> nn.Module
                                            # the QAT model: MQBench fake quantizers (torch.ao
                                            # FakeQuantizeBase) named after the layers they quantize

Everything after preparation (calibration, optimizer groups, the quant plan, quantized checkpoints,
distillation by layer name) is engine-independent because every engine puts the harness's own fake
quantizers (MQBench's classes, LSQ on quant/fast_quantizers.py) into its graph: what differs between
engines is how the graph is captured and where quantizers go, not what a quantizer computes. A third
engine is one more file here plus its name in ENGINES.
"""
from __future__ import annotations

import importlib
from types import ModuleType

ENGINES = ("mqbench", "torchao")
DEFAULT_ENGINE = "mqbench"


def engine(name: str) -> ModuleType:
    """The engine module for a `quant_scheme.engine` name (validated by the scheme already)."""
    if name not in ENGINES:
        raise ValueError(f"quant_scheme.engine: unknown {name!r}; valid: {', '.join(ENGINES)}")
    return importlib.import_module(f"quant.engines.{name}")


def engine_of(model) -> str:
    """Which engine prepared `model` (MQBench for models prepared before engines existed)."""
    scheme = getattr(model, "quant_scheme", None)
    return getattr(scheme, "engine", DEFAULT_ENGINE) or DEFAULT_ENGINE
