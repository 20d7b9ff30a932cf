"""quant/cost.py: BOPs, weight memory and activation bits of a quantized network, by hand."""
import warnings

import pytest
import torch
import torch.nn as nn

from helpers.files import read_csv
from quant import calibrate, fake_quantizers, format_quant_plan, prepare_quantized_model, quant_plan_rows, write_quant_plan
from quant.cost import cost_totals, layer_cost_rows, plan_cost_summary, sweep_cost_columns

W4A4 = {"weight": {"bits": 4}, "activation": {"bits": 4}, "calibration_batches": 1}


class Known(nn.Module):
    """conv (1->4, 3x3) -> LeakyReLU -> conv (4->2, 3x3, stride 2) -> LeakyReLU -> transposed conv
    (2->3, 2x2, stride 2) -> LeakyReLU, on a 16x16 input."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 2, 3, stride=2, padding=1)
        self.up = nn.ConvTranspose2d(2, 3, 2, stride=2)
        self.act1, self.act2, self.act3 = nn.LeakyReLU(0.2), nn.LeakyReLU(0.2), nn.LeakyReLU(0.2)

    def forward(self, x):
        return self.act3(self.up(self.act2(self.conv2(self.act1(self.conv1(x))))))


@pytest.fixture
def known():
    torch.manual_seed(0)
    special = {"input_layer": 10, "conv1": {"weight": "8"}, "conv2": {"weight": "6"},
               "act2": {"activation": "5"}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        qmodel = prepare_quantized_model(Known(), W4A4, special)
    calibrate(qmodel, [torch.rand(1, 1, 16, 16)])
    return qmodel


def test_bops_of_known_convolutions_equal_the_hand_computation(known):
    layers = {row["layer"]: row for row in layer_cost_rows(known, (1, 1, 16, 16))}
    # conv1: 16x16x4 outputs, each 1 x 3x3 MACs; 8-bit weights, 10-bit network input.
    assert layers["conv1"]["macs"] == 16 * 16 * 4 * 9
    assert layers["conv1"]["bops"] == 16 * 16 * 4 * 9 * 8 * 10
    # conv2 (stride 2): 8x8x2 outputs, each 4 x 3x3 MACs; 6-bit weights, 4-bit activations.
    assert layers["conv2"]["bops"] == 8 * 8 * 2 * 4 * 9 * 6 * 4
    # transposed conv: 8x8x2 inputs, each spread over 3 x 2x2 outputs; 4-bit weights, 5-bit input.
    assert layers["up"]["macs"] == 8 * 8 * 2 * 3 * 4
    assert layers["up"]["bops"] == 8 * 8 * 2 * 3 * 4 * 4 * 5
    assert layers["up"]["input_bits"] == 5 and layers["conv1"]["input_quantizer"] == "x_post_act_fake_quantizer"


def test_plan_carries_the_cost_and_the_csv_gives_the_same_totals(known, tmp_path):
    before = {name: (int(q.fake_quant_enabled), int(q.observer_enabled), q.scale.detach().clone())
              for name, q in fake_quantizers(known).items()}
    rows = quant_plan_rows(known, (1, 1, 16, 16))
    after = {name: (int(q.fake_quant_enabled), int(q.observer_enabled), q.scale.detach().clone())
             for name, q in fake_quantizers(known).items()}
    assert all(before[n][:2] == after[n][:2] and torch.equal(before[n][2], after[n][2]) for n in before)

    totals = cost_totals(rows)
    macs = 16 * 16 * 4 * 9, 8 * 8 * 2 * 4 * 9, 8 * 8 * 2 * 3 * 4
    assert totals["bops"] == macs[0] * 8 * 10 + macs[1] * 6 * 4 + macs[2] * 4 * 5
    assert totals["bops_fp32"] == sum(macs) * 32 * 32 and totals["bops_w8a8"] == sum(macs) * 64
    assert totals["weight_bits"] == 4 * 9 * 8 + 2 * 4 * 9 * 6 + 2 * 3 * 4 * 4
    assert totals["weight_bits_fp32"] == (4 * 9 + 2 * 4 * 9 + 2 * 3 * 4) * 32
    # Activations: the 10-bit input, conv2's 4-bit input (16x16x4), up's 5-bit input (8x8x2).
    assert totals["activation_bits"] == 16 * 16 * 10 + 16 * 16 * 4 * 4 + 8 * 8 * 2 * 5
    # Above the scheme's 4 bits: input, conv1 and conv2 weights, act2's output.
    assert (totals["high_bit_quantizers"], totals["quantizers"]) == (4, 6)

    path = write_quant_plan(rows, tmp_path / "run" / "quant_plan.csv")
    assert cost_totals(read_csv(path)) == totals
    assert plan_cost_summary(path)["bops"] == totals["bops"]
    columns = sweep_cost_columns({}, path.parent)
    assert columns["GBOPs"] == pytest.approx(totals["bops"] / 1e9)
    assert columns["bops_vs_w8a8"] == pytest.approx(totals["bops"] / totals["bops_w8a8"])
    assert sweep_cost_columns({}, tmp_path / "float_run") == {}

    text = format_quant_plan(rows)
    assert "cost per 1x1x16x16 input" in text and "4 of 6 quantizers (66.7%)" in text
