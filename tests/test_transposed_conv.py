"""The QDQ export's rewrite of transposed convolutions into integer 1x1 convolutions plus a block
shuffle (deploy/transposed_conv.py): the same values in onnxruntime, run as QLinearConv, and applied
only where it makes an integer kernel. Small graphs written with onnx.helper, run by onnxruntime."""
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from deploy.transposed_conv import transposed_convs_as_integer_convs
from test_deploy_backend import _executed_ops

IN_CHANNELS, OUT_CHANNELS = 6, 5


def _graph(kernel=(2, 2), stride=None, per_channel=True, bias=True, quantize_output=True, pads=None):
    rng = np.random.default_rng(0)
    kh, kw = kernel
    weights = rng.integers(-127, 128, (IN_CHANNELS, OUT_CHANNELS, kh, kw)).astype(np.int8)
    scale = (rng.random(OUT_CHANNELS) * 0.01 + 0.001).astype(np.float32) if per_channel else np.float32(0.004)
    initializers = [
        numpy_helper.from_array(weights, "w_int8"),
        numpy_helper.from_array(scale, "w_scale"),
        numpy_helper.from_array(np.zeros_like(weights, shape=np.shape(scale)), "w_zero"),
        numpy_helper.from_array(np.float32(1 / 255), "x_scale"),
        numpy_helper.from_array(np.uint8(3), "x_zero"),
        numpy_helper.from_array(np.float32(0.05), "y_scale"),
        numpy_helper.from_array(np.uint8(128), "y_zero"),
    ]
    conv_inputs = ["x_dq", "w"]
    if bias:
        initializers.append(numpy_helper.from_array(rng.normal(size=OUT_CHANNELS).astype(np.float32), "b"))
        conv_inputs.append("b")
    attributes = {"kernel_shape": list(kernel), "strides": list(stride or kernel)}
    if pads:
        attributes["pads"] = pads
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "x_scale", "x_zero"], ["x_q"]),
        helper.make_node("DequantizeLinear", ["x_q", "x_scale", "x_zero"], ["x_dq"]),
        helper.make_node("DequantizeLinear", ["w_int8", "w_scale", "w_zero"], ["w"],
                         **({"axis": 1} if per_channel else {})),
        helper.make_node("ConvTranspose", conv_inputs, ["up"], name="up", **attributes),
    ]
    if quantize_output:
        nodes += [helper.make_node("QuantizeLinear", ["up", "y_scale", "y_zero"], ["up_q"], name="up_quantize"),
                  helper.make_node("DequantizeLinear", ["up_q", "y_scale", "y_zero"], ["y"])]
    else:
        nodes.append(helper.make_node("Relu", ["up"], ["y"]))
    graph = helper.make_graph(nodes, "upsample", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", IN_CHANNELS, "h", "w"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", OUT_CHANNELS, "h2", "w2"])], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model, full_check=True)
    return model


def _run(model, x, level=ort.GraphOptimizationLevel.ORT_ENABLE_ALL):
    options = ort.SessionOptions()
    options.graph_optimization_level = level
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"]).run(
        None, {"x": x})[0]


@pytest.mark.parametrize("kernel,per_channel,bias", [((2, 2), True, True), ((2, 2), False, False),
                                                     ((2, 3), True, False), ((3, 3), False, True)])
def test_rewrite_keeps_values_and_runs_as_integer_convolution(kernel, per_channel, bias, tmp_path):
    original = _graph(kernel, per_channel=per_channel, bias=bias)
    rewritten = _graph(kernel, per_channel=per_channel, bias=bias)
    assert transposed_convs_as_integer_convs(rewritten) == ["up"]
    onnx.checker.check_model(rewritten, full_check=True)
    assert "ConvTranspose" not in {n.op_type for n in rewritten.graph.node}
    step = float(numpy_helper.to_array(next(i for i in rewritten.graph.initializer if i.name == "y_scale")))
    for seed in range(3):
        x = np.random.default_rng(seed).random((2, IN_CHANNELS, 7, 5), dtype=np.float32)  # odd sizes, batch 2
        for level in (ort.GraphOptimizationLevel.ORT_DISABLE_ALL, ort.GraphOptimizationLevel.ORT_ENABLE_ALL):
            expected, got = _run(original, x, level), _run(rewritten, x, level)
            assert got.shape == expected.shape == (2, OUT_CHANNELS, 7 * kernel[0], 5 * kernel[1])
            # The same sums of the same products: only a float rounding tie, summed in another
            # order by another kernel, may land one quantization step away.
            difference = np.abs(got - expected)
            assert difference.max() <= step * 1.001 and np.mean(difference > 0) <= 1e-3
    onnx.save(rewritten, str(tmp_path / "rewritten.onnx"))
    ops = _executed_ops(tmp_path / "rewritten.onnx", tmp_path)
    assert ops["QLinearConv"] == 1 and ops["ConvTranspose"] == 0


@pytest.mark.parametrize("change", [{"stride": (1, 1)}, {"kernel": (3, 3), "stride": (2, 2)},
                                    {"pads": [1, 1, 1, 1], "kernel": (4, 4)}, {"quantize_output": False}])
def test_layers_that_would_not_become_integer_kernels_are_left_alone(change):
    # Overlapping or padded kernels have no 1x1 form; a float output gains nothing from the rewrite.
    model = _graph(**change)
    before = model.SerializeToString()
    assert transposed_convs_as_integer_convs(model) == []
    assert model.SerializeToString() == before


def test_ten_bit_weights_keep_the_transposed_convolution():
    # QLinearConv takes 8-bit weights only: a 10-bit special layer would stay a float convolution,
    # so the rewrite would only add a shuffle.
    model = _graph()
    weights = next(i for i in model.graph.initializer if i.name == "w_int8")
    zero = next(i for i in model.graph.initializer if i.name == "w_zero")
    weights.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(weights).astype(np.int16) * 4, "w_int8"))
    zero.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(zero).astype(np.int16), "w_zero"))
    before = model.SerializeToString()
    assert transposed_convs_as_integer_convs(model) == []
    assert model.SerializeToString() == before
