"""The MQBench engine (the default): torch.fx tracing and MQBench's prepare_by_platform, then the
harness's input/output quantizers and special layers (quant/prepare.py, where the work is done)."""
from __future__ import annotations

NAME = "mqbench"


def check_scheme(scheme) -> None:
    """MQBench honours every quant_scheme key."""


def prepare(model, scheme, special_layer=None, quantize_output=False):
    from quant.prepare import prepare_with_mqbench
    return prepare_with_mqbench(model, scheme, special_layer, quantize_output)
