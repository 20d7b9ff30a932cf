"""quant/allocate.py: the integer program meets the budget and matches brute force on a tiny
instance; its special_layer YAML puts every quantizer of a real prepared network at its bits."""
import itertools
import random
import warnings

import pytest
import torch

from models.dbf_dble import DBFDBLE
from quant import fake_quantizers, prepare_quantized_model
from quant.allocate import Candidate, allocate, assignment_cost, special_layer_entries, w8a8_cost
from quant.sensitivity import describe_quantizers

BITS = (4, 6, 8)


def tiny_instance(seed):
    """Input -> conv l1 -> activation a1 -> conv l2; conv l3 reads float values; an output quantizer."""
    rng = random.Random(seed)

    def scores():
        # Decreasing in bits, a random size per quantizer (noise power falls 4x per extra bit).
        size = rng.uniform(0.1, 10)
        return {b: size * 4.0 ** (-(b - 4)) * rng.uniform(0.8, 1.2) for b in BITS}
    return [
        Candidate("x", "input", "x", 64, sensitivity=scores()),
        Candidate("l1.w", "weight", "l1", 36, macs=2304, input_quantizer="x", sensitivity=scores()),
        Candidate("a1", "activation", "act1", 256, sensitivity=scores()),
        Candidate("l2.w", "weight", "l2", 288, macs=4608, input_quantizer="a1", sensitivity=scores()),
        Candidate("l3.w", "weight", "l3", 72, macs=900, input_quantizer="", sensitivity=scores()),
        Candidate("out", "output", "head", 64, sensitivity=scores()),
    ]


@pytest.mark.parametrize("budget_kind", ["bops", "size"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_allocation_meets_the_budget_and_equals_brute_force(seed, budget_kind):
    candidates = tiny_instance(seed)
    reference = w8a8_cost(candidates, budget_kind)
    names = [c.quantizer for c in candidates]
    every = [dict(zip(names, choice)) for choice in itertools.product(BITS, repeat=len(names))]
    for budget in (0.55, 0.7, 0.85, 1.0):
        feasible = [bits for bits in every if assignment_cost(candidates, bits, budget_kind) <= budget * reference]
        best = min(sum(c.sensitivity[bits[c.quantizer]] for c in candidates) for bits in feasible)
        result = allocate(candidates, BITS, budget, budget_kind)
        assert result["cost"] == assignment_cost(candidates, result["bits"], budget_kind)
        assert result["cost"] <= budget * reference * (1 + 1e-9)
        assert result["objective"] == pytest.approx(best, rel=1e-6)
        assert result["bits"]["out"] == 8  # no budget term sees it: least sensitive bits
    with pytest.raises(ValueError, match=r"budget 0.1 x W8A8 .* cannot be met .* needs 0\.\d+"):
        allocate(candidates, BITS, 0.1, budget_kind)


def test_special_layer_yaml_puts_each_quantizer_at_its_bits():
    torch.manual_seed(0)
    scheme = {"weight": {"bits": 4}, "activation": {"bits": 4}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        qmodel = prepare_quantized_model(DBFDBLE(0.125), scheme)
    entries = describe_quantizers(qmodel, (1, 1, 64, 64))
    rng = random.Random(3)
    bits = {e.quantizer: rng.choice([4, 6, 8, 10]) for e in entries}
    candidates = [Candidate(e.quantizer, e.kind, e.layer, e.elements, e.macs, e.input_quantizer) for e in entries]
    special = special_layer_entries(candidates, bits)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every entry must apply: no "ignored" warning
        allocated = prepare_quantized_model(DBFDBLE(0.125), scheme, special)
    got = {name: (q.quant_max - q.quant_min + 1).bit_length() - 1 for name, q in fake_quantizers(allocated).items()}
    assert got == bits
