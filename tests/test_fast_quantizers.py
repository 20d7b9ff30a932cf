"""quant/fast_quantizers.py: the sync-free LSQ / LSQ+ quantizer gives MQBench's LearnableFakeQuantize
outputs and gradients, keeps its state-dict keys, and is what a quantized model uses by default."""
import copy
import warnings

import pytest
import torch
from mqbench.fake_quantize.lsq import LearnableFakeQuantize as MQBenchLSQ
from mqbench.observer import EMAMinMaxObserver, MinMaxObserver

from models.dbf_dble import DBFDBLE
from quant import calibrate, fake_quantizers, load_quantized_state, prepare_quantized_model, quantized_state
from quant.fast_quantizers import LearnableFakeQuantize as FastLSQ
from quant import fast_quantizers
from quant.fast_quantizers import use_fast_quantizers

TOLERANCE = dict(rtol=1e-6, atol=1e-6)


@pytest.fixture(autouse=True)
def portable_path(monkeypatch):
    """The per-tensor Function that GPUs run, also on this CPU (which otherwise uses ATen's fused op)."""
    monkeypatch.setattr(fast_quantizers, "PORTABLE_PER_TENSOR_ON_CPU", True)


def pair(per_channel, symmetric, bits=4, shape=(6, 3, 5, 5)):
    """An MQBench quantizer calibrated on a tensor, and a fast copy of it (same state)."""
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


@pytest.mark.parametrize("per_channel", [False, True], ids=["per_tensor", "per_channel"])
@pytest.mark.parametrize("symmetric", [True, False], ids=["symmetric", "affine"])
def test_fast_lsq_matches_mqbench_forward_and_gradients(per_channel, symmetric):
    reference, fast, x = pair(per_channel, symmetric)
    upstream = torch.randn(x.shape, generator=torch.Generator().manual_seed(4))
    expected = forward_backward(reference, x, upstream)
    got = forward_backward(fast, x, upstream)
    for name, a, b in zip(("output", "input grad", "scale grad", "zero-point grad"), expected, got):
        torch.testing.assert_close(b, a, **TOLERANCE, msg=lambda m: f"{name}: {m}")
    # The clamped ends are exercised, or the scale/zero-point gradient test would be weak.
    assert (expected[1] == 0).any() and (expected[1] != 0).any()
    # The in-place parameter updates (|scale|, zero point clamp / zero) are MQBench's too.
    torch.testing.assert_close(fast.scale, reference.scale, rtol=0, atol=0)
    torch.testing.assert_close(fast.zero_point, reference.zero_point, rtol=0, atol=0)


@pytest.mark.parametrize("per_channel", [False, True], ids=["per_tensor", "per_channel"])
def test_fast_lsq_under_bf16_autocast_and_channels_last(per_channel):
    reference, fast, x = pair(per_channel, symmetric=False, bits=8, shape=(4, 6, 8, 8))
    x = x.to(memory_format=torch.channels_last)
    upstream = torch.randn(x.shape, generator=torch.Generator().manual_seed(5))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        half_input = x.to(torch.bfloat16)
        expected = forward_backward(reference, half_input, upstream)
        got = forward_backward(fast, half_input, upstream)
    # Both quantize in float32 and return what MQBench returns (bf16 per tensor, as ATen's kernel
    # does; float32 per channel, by type promotion); the input gradient keeps the input's dtype.
    assert got[0].dtype == expected[0].dtype
    assert got[1].dtype == expected[1].dtype == torch.bfloat16
    assert got[0].is_contiguous(memory_format=torch.channels_last)
    for a, b in zip(expected, got):
        torch.testing.assert_close(b.float(), a.float(), **TOLERANCE)


def test_flags_follow_enable_and_disable_without_reading_every_step():
    reference, fast, x = pair(per_channel=False, symmetric=False)
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
