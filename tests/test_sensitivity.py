"""quant/sensitivity.py: a deliberately fragile quantizer is ranked first by both measures."""
import warnings

import pytest
import torch
import torch.nn.functional as F

from models.dbf_dble import DBFDBLE
from quant import calibrate, fake_quantizers, prepare_quantized_model
from quant.sensitivity import describe_quantizers, hessian_scores, psnr_drops, rank, set_bits

W4A4 = {"weight": {"bits": 4}, "activation": {"bits": 4}, "calibration_batches": 1}
FRAGILE = "DBF.DBF_conv3.Conv2"


def mse(outputs, batch):
    return F.mse_loss(outputs[1], batch["rgb"]) + F.mse_loss(outputs[0], batch["mono"])


@pytest.fixture(scope="module")
def fragile_network():
    torch.manual_seed(0)
    model = DBFDBLE(0.125)
    with torch.no_grad():
        # The block's first conv stops feeding channel 0 (zero weights and bias, so LeakyReLU gives
        # 0), and FRAGILE reads that dead channel with weights 40x its largest: the float network
        # is unchanged, but every per-channel range is stretched 40x, so at 4 bits every live
        # weight of the layer rounds to zero (at 8 bits the step is still a fraction of them).
        feeding = model.get_submodule(FRAGILE.replace("Conv2", "Conv1"))
        feeding.weight[0] = 0
        feeding.bias[0] = 0
        weight = model.get_submodule(FRAGILE).weight
        weight[:, 0] = 40 * weight.abs().amax()
    generator = torch.Generator().manual_seed(1)
    inputs = [torch.rand(1, 1, 64, 64, generator=generator) for _ in range(2)]
    with torch.no_grad():  # targets = the float network: the PSNR measures quantization error only
        batches = [{"input": x, "mono": model(x)[0], "rgb": model(x)[1]} for x in inputs]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        qmodel = prepare_quantized_model(model, W4A4)
    calibrate(qmodel, inputs)
    return qmodel, batches


def test_set_bits_keeps_the_range_and_undoes_exactly(fragile_network):
    qmodel, _ = fragile_network
    for name in (f"{FRAGILE}.weight_fake_quant", "x_post_act_fake_quantizer"):
        quantizer = fake_quantizers(qmodel)[name]
        scale, zero_point = quantizer.scale.detach().clone(), quantizer.zero_point.detach().clone()
        low = (quantizer.quant_min - zero_point) * scale
        high = (quantizer.quant_max - zero_point) * scale
        undo = set_bits(quantizer, 10)
        assert quantizer.quant_max - quantizer.quant_min == 1023
        new_low = (quantizer.quant_min - quantizer.zero_point.detach()) * quantizer.scale.detach()
        assert torch.allclose(new_low, low, rtol=1e-3, atol=1e-3 * float(scale.max()))
        assert torch.all((quantizer.quant_max - quantizer.zero_point.detach()) * quantizer.scale.detach() >= high * 0.99)
        undo()
        assert torch.equal(quantizer.scale.detach(), scale) and torch.equal(quantizer.zero_point.detach(), zero_point)


def test_fragile_layer_ranks_first_by_both_measures(fragile_network):
    qmodel, batches = fragile_network
    with torch.no_grad():  # LSQ clamps scales below its eps at the first forward after calibration
        qmodel(batches[0]["input"])
    before = {n: (q.scale.detach().clone(), q.quant_min, int(q.fake_quant_enabled)) for n, q in fake_quantizers(qmodel).items()}
    entries = describe_quantizers(qmodel, (1, 1, 64, 64))
    assert len(entries) == len(before) and entries[0].quantizer == "x_post_act_fake_quantizer"
    psnr_drops(qmodel, entries, batches[:1], low=4, high=8, device="cpu", progress=False)
    hessian_scores(qmodel, entries, batches[:1], mse, bits=(4, 8), probes=2, progress=False)
    correlation = rank(entries, low=4)
    by_psnr = min(entries, key=lambda e: e.rank_psnr)
    by_hessian = min(entries, key=lambda e: e.rank_hessian)
    assert by_psnr.quantizer == by_hessian.quantizer == f"{FRAGILE}.weight_fake_quant"
    assert by_psnr.psnr_drop > sorted(e.psnr_drop for e in entries)[-2] + 1.0  # dB ahead of the next
    assert by_hessian.hessian_score[4] > 3 * sorted(e.hessian_score[4] for e in entries)[-2]
    # HAWQ's trace x mean noise power is fooled by the dead channel: the curvature sits where the
    # noise is zero, so the conv feeding it scores high there; the noise-shaped score is not.
    feeding = next(e for e in entries if e.quantizer == FRAGILE.replace("Conv2", "Conv1") + ".weight_fake_quant")
    assert feeding.hawq_score[4] > feeding.hessian_score[4] * 100
    assert all(e.noise_power[4] > e.noise_power[8] for e in entries if e.noise_power[4] > 1e-12)
    assert correlation is not None and -1 <= correlation <= 1
    # Nothing of the measurement is left behind in the quantizers.
    after = {n: (q.scale.detach().clone(), q.quant_min, int(q.fake_quant_enabled)) for n, q in fake_quantizers(qmodel).items()}
    changed = [n for n in before if not (torch.equal(before[n][0], after[n][0]) and before[n][1:] == after[n][1:])]
    assert changed == []
