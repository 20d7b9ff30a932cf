"""quant/fast_quantizers.py: the sync-free LSQ / LSQ+ quantizer computes MQBench's forward with the
gradients of the LSQ estimator (written out below, independent of the installed torch), keeps MQBench's
state-dict keys, and is what a quantized model uses by default."""
import copy
import warnings

import pytest
import torch
from mqbench.fake_quantize.lsq import LearnableFakeQuantize as MQBenchLSQ
from mqbench.observer import EMAMinMaxObserver, MinMaxObserver

from models.dbf_dble import DBFDBLE
from quant import calibrate, fake_quantizers, load_quantized_state, prepare_quantized_model, quantized_state
from quant.fast_quantizers import CLAMP_BOUND_GRADIENT_CHANGED
from quant.fast_quantizers import LearnableFakeQuantize as FastLSQ
from quant.fast_quantizers import mqbench_gradient_note, use_fast_quantizers

TOLERANCE = dict(rtol=1e-5, atol=1e-6)


def lsq_estimator(x, scale, zero_point, axis, quant_min, quant_max, grad_factor, upstream):
    """The LSQ / LSQ+ estimator (Esser et al. 2020, eq. 1-3; Bhalgat et al. 2020), element by element,
    with no autograd (so no torch version can change it): output and the gradients of
    sum(upstream * output) with respect to x, scale and zero point.

    v = x/s + round(z); q = clamp(round(v), qmin, qmax); y = (q - round(z)) s.  Inside the closed clip
    interval (qmin <= v <= qmax): dy/dx = 1, dy/ds = q - v, dy/dz = 0. Outside: 0, q - round(z), -s.
    Scale and zero-point gradients are summed per scale and multiplied by LSQ's gradient scale."""
    x, g = x.double(), upstream.double()
    shape = [1] * x.dim()
    dims = list(range(x.dim()))
    if axis is not None:
        shape[axis] = x.shape[axis]
        dims.remove(axis)
    s = scale.detach().double().reshape(shape)
    z = torch.round(zero_point.detach().double()).reshape(shape)
    v = x / s + z
    q = torch.clamp(torch.round(v), quant_min, quant_max)
    y = (q - z) * s
    inside = (quant_min <= v) & (v <= quant_max)
    dx = torch.where(inside, g, 0.0)
    dscale = (g * torch.where(inside, q - v, q - z)).sum(dims) * grad_factor
    dzero = (g * torch.where(inside, 0.0, -s)).sum(dims) * grad_factor
    return y, dx, dscale.reshape(-1), dzero.reshape(-1)


def make_quantizer(per_channel, symmetric, bits=4, shape=(6, 3, 5, 5)):
    """An MQBench quantizer calibrated on a tensor, then switched to the fast class."""
    if per_channel:
        qscheme = torch.per_channel_symmetric if symmetric else torch.per_channel_affine
        observer = MinMaxObserver.with_args(ch_axis=0)
    else:
        qscheme = torch.per_tensor_symmetric if symmetric else torch.per_tensor_affine
        observer = EMAMinMaxObserver
    low, high = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if symmetric else (0, 2 ** bits - 1)
    reference = MQBenchLSQ(observer, quant_min=low, quant_max=high, qscheme=qscheme,
                           dtype=torch.qint8 if symmetric else torch.quint8)
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(shape, generator=generator) * 2 + (0 if symmetric else 1)
    reference(x)  # calibration: observer on
    reference.disable_observer()
    # A learned state away from the observer's: scales shrunk so values clip at both ends, a
    # zero point that is not an integer (LSQ+ learns it).
    with torch.no_grad():
        reference.scale.mul_(0.7)
        if not symmetric:
            reference.zero_point.add_(0.37)
    fast = copy.deepcopy(reference)
    use_fast_quantizers(fast)
    assert type(fast) is FastLSQ
    return reference, fast, x


def forward_backward(quantizer, x, upstream):
    x = x.clone().requires_grad_(True)
    y = quantizer(x)
    (y * upstream).sum().backward()
    return y.detach(), x.grad, quantizer.scale.grad.clone(), quantizer.zero_point.grad.clone()


def expected_for(quantizer, x, upstream):
    """The estimator at the quantizer's state after its forward (which sets |s| and clamps or zeroes z)."""
    axis = quantizer.ch_axis if quantizer.is_per_channel else None
    per_scale = x.numel() / (x.shape[axis] if axis is not None else 1)
    grad_factor = 1.0 / (per_scale * quantizer.quant_max) ** 0.5 if quantizer.use_grad_scaling else 1.0
    return lsq_estimator(x.float(), quantizer.scale, quantizer.zero_point, axis, quantizer.quant_min,
                         quantizer.quant_max, grad_factor, upstream.float())


@pytest.mark.parametrize("per_channel", [False, True], ids=["per_tensor", "per_channel"])
@pytest.mark.parametrize("symmetric", [True, False], ids=["symmetric", "affine"])
def test_fast_lsq_gives_mqbench_forward_and_the_lsq_estimator_gradients(per_channel, symmetric):
    reference, fast, x = make_quantizer(per_channel, symmetric)
    upstream = torch.randn(x.shape, generator=torch.Generator().manual_seed(4))
    got = forward_backward(fast, x, upstream)
    expected = expected_for(fast, x, upstream)
    for name, a, b in zip(("output", "input grad", "scale grad", "zero-point grad"), expected, got):
        torch.testing.assert_close(b.double(), a, **TOLERANCE, msg=lambda m: f"{name}: {m}")
    # The forward is MQBench's (checkpoints and exports depend on it), whatever its gradients.
    mqbench_output = forward_backward(reference, x, upstream)[0]
    torch.testing.assert_close(got[0], mqbench_output, rtol=1e-6, atol=1e-6)
    # Both clipped and unclipped values are exercised, including the half-step bands next to the bounds
    # where round-then-clamp implementations disagree with the estimator.
    v = x / fast.scale.detach().reshape([-1] + [1] * (x.dim() - 1) if per_channel else []) \
        + torch.round(fast.zero_point.detach()).reshape([-1] + [1] * (x.dim() - 1) if per_channel else [])
    assert (got[1] == 0).any() and (got[1] != 0).any()
    band = ((v > fast.quant_max) & (v < fast.quant_max + 0.5)) | ((v < fast.quant_min) & (v > fast.quant_min - 0.5))
    assert band.any()
    # The in-place parameter updates (|scale|, zero point clamp / zero) are MQBench's too.
    torch.testing.assert_close(fast.scale, reference.scale, rtol=0, atol=0)
    torch.testing.assert_close(fast.zero_point, reference.zero_point, rtol=0, atol=0)


@pytest.mark.parametrize("per_channel", [False, True], ids=["per_tensor", "per_channel"])
def test_fast_lsq_under_bf16_autocast_and_channels_last(per_channel):
    reference, fast, x = make_quantizer(per_channel, symmetric=False, bits=8, shape=(4, 6, 8, 8))
    x = x.to(memory_format=torch.channels_last)
    upstream = torch.randn(x.shape, generator=torch.Generator().manual_seed(5))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        half_input = x.to(torch.bfloat16)
        mqbench_output = forward_backward(reference, half_input, upstream)[0]
        got = forward_backward(fast, half_input, upstream)
    # Quantization runs in float32 on the bf16 input's values and returns what MQBench returns (bf16
    # per tensor, as ATen's kernel does; float32 per channel, by type promotion); the input gradient
    # keeps the input's dtype.
    assert got[0].dtype == mqbench_output.dtype
    assert got[1].dtype == torch.bfloat16
    assert got[0].is_contiguous(memory_format=torch.channels_last)
    # The upstream gradient reaches the quantizer in its output's dtype.
    expected = expected_for(fast, half_input, upstream.to(got[0].dtype))
    torch.testing.assert_close(got[0].double(), expected[0].to(got[0].dtype).double(), **TOLERANCE)
    torch.testing.assert_close(got[1].double(), expected[1].to(torch.bfloat16).double(), **TOLERANCE)
    for a, b in zip(expected[2:], got[2:]):
        torch.testing.assert_close(b.double(), a, **TOLERANCE)


def test_mqbench_own_lsq_is_noted_only_where_torch_changed_it():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        slow = prepare_quantized_model(DBFDBLE(0.125), {"fast_quantizers": False})
        fast = prepare_quantized_model(DBFDBLE(0.125), {})
    note = mqbench_gradient_note(slow)
    assert mqbench_gradient_note(fast) is None
    if CLAMP_BOUND_GRADIENT_CHANGED:
        assert "quant_scheme.fast_quantizers" in note and torch.__version__ in note
    else:
        assert note is None


def test_flags_follow_enable_and_disable_without_reading_every_step():
    reference, fast, x = make_quantizer(per_channel=False, symmetric=False)
    fast.disable_fake_quant()
    assert torch.equal(fast(x), x)
    fast.enable_fake_quant()
    assert not torch.equal(fast(x), x)
    # A state dict written into the buffers (a checkpoint with observers on) is seen too.
    state = fast.state_dict()
    state["observer_enabled"] = torch.tensor([1], dtype=torch.uint8)
    fast.load_state_dict(state)
    before = fast.activation_post_process.min_val.clone()
    fast(x * 5)
    assert not torch.equal(fast.activation_post_process.min_val, before)
    # A deep copy made after the flags changed reads its own flags.
    fast.disable_observer()
    fast.disable_fake_quant()
    fast(x)
    clone = copy.deepcopy(fast)
    clone.enable_fake_quant()
    assert not torch.equal(clone(x), x)


def test_quantized_model_uses_fast_quantizers_and_loads_mqbench_checkpoints():
    torch.manual_seed(0)
    scheme = {"weight": {"bits": 4}, "activation": {"bits": 4}, "calibration_batches": 1}
    batch = torch.rand(1, 1, 64, 64, generator=torch.Generator().manual_seed(1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        slow = prepare_quantized_model(DBFDBLE(0.125), {**scheme, "fast_quantizers": False})
        fast = prepare_quantized_model(DBFDBLE(0.125), scheme)
    lsq = [q for q in fake_quantizers(fast).values() if isinstance(q, MQBenchLSQ)]
    assert lsq and all(type(q) is FastLSQ for q in lsq)
    assert not any(type(q) is FastLSQ for q in fake_quantizers(slow).values())
    calibrate(slow, [batch])
    # A checkpoint saved by MQBench's class loads into the fast one, key for key, and gives the same output.
    saved = quantized_state(slow)
    load_quantized_state(fast, saved)
    assert set(fast.state_dict()) == set(slow.state_dict())
    slow.train(), fast.train()
    torch.testing.assert_close(fast(batch)[1], slow(batch)[1], **TOLERANCE)


def test_compiled_qat_forward_is_one_graph_and_follows_flag_changes():
    # speed.compile: reading a quantizer's flag inside the compiled region broke the graph at every
    # quantizer (94 breaks in this narrow network), and dynamo then recompiled each quantizer's forward
    # per parameter shape until its recompile limit. With the flags read before the call
    # (refresh_compiled_flags, what harness/speed.py does) the QAT forward is one graph, and a flag
    # change (fake quantization off) is followed after the next refresh.
    from quant.fast_quantizers import refresh_compiled_flags
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        qmodel = prepare_quantized_model(DBFDBLE(width=0.125), {"calibration_batches": 1})
    calibrate(qmodel, [torch.rand(1, 1, 64, 64, generator=torch.Generator().manual_seed(0))])
    qmodel.train()
    x = torch.rand(2, 1, 64, 64, generator=torch.Generator().manual_seed(1))
    refresh_compiled_flags(qmodel)
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(qmodel)(x)
    assert explanation.graph_break_count == 0, [str(r.reason)[:120] for r in explanation.break_reasons[:3]]
    compiled = torch.compile(qmodel, backend="eager")
    for got, expected in zip(compiled(x), qmodel(x)):
        torch.testing.assert_close(got, expected, rtol=0, atol=0)
    qmodel.apply(torch.ao.quantization.disable_fake_quant)
    refresh_compiled_flags(qmodel)
    for got, expected in zip(compiled(x), qmodel(x)):
        torch.testing.assert_close(got, expected, rtol=0, atol=0)
    torch._dynamo.reset()
