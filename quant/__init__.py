"""Quantization-aware training on MQBench: the quant_scheme config, model preparation with the user's
special_layer overrides, calibration, the quant plan and quantized checkpoints."""
from quant.state import load_quantized_state, quantized_state
from quant.plan import format_quant_plan, quant_plan_rows, write_quant_plan
from quant.prepare import (calibrate, fake_quantizers, layer_names, param_groups, prepare_quantized_model,
                           quantizer_parameters, set_qat_observers, unquantized_input_paths)
from quant.scheme import QuantSchemeConfig, extra_qconfig_dict, parse_quant_scheme
from quant.special_layers import parse_special_layers

__all__ = [
    "QuantSchemeConfig", "parse_quant_scheme", "extra_qconfig_dict", "parse_special_layers",
    "prepare_quantized_model", "calibrate", "param_groups", "quantizer_parameters", "set_qat_observers",
    "fake_quantizers", "layer_names", "unquantized_input_paths",
    "quant_plan_rows", "format_quant_plan", "write_quant_plan",
    "quantized_state", "load_quantized_state",
]
