"""Bits per quantizer under a budget, from tools/sensitivity.py's measurements (quant/allocate.py).

    python tools/allocate.py --sensitivity results/<experiment>/sensitivity/sensitivity.csv
                       (--budget 0.6 | --match configfile/seed_aba.yaml) [--budget-kind bops|size]
                       [--bits 4,6,8,10] [--measure hessian|hawq|psnr] [--config RUN_CONFIG] [--out DIR]

--budget is a fraction of the same network at W8A8 (BOPs, or weight memory with --budget-kind size);
--match takes the cost of that config's own special_layer set instead, so the allocation competes
with a hand-chosen set at equal cost. Writes into --out (default: the folder of the CSV):

  allocation.yaml        the allocation as `extra_quantizer_dict.special_layer` (paste into a run config)
  allocation.csv         quantizer, kind, layer, bits, estimated sensitivity at those bits
  sweep_allocation.yaml  a sweep (sweep.py) of the run config (--config, default the --match config)
                         with four variants: its own special layers (hand), the allocation
                         (allocated), none (uniform at the scheme's bits) and uniform W8A8 (w8a8)
"""
import argparse
import math
import sys
import warnings
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python tools/<name>.py` finds the packages

import harness.runner
from harness.config import ConfigError, load_config
from helpers.files import read_csv, write_csv_atomic, write_text_atomic
from harness.runner import run_entry_point
from helpers.text_input import parse_yaml
from quant.allocate import (BUDGET_KINDS, allocate, assignment_cost, candidates_from_rows, special_layer_entries,
                            w8a8_cost)
from quant.scheme import parse_bits_option


def hand_bits(config, candidates):
    """Bits of every candidate quantizer in the network `config` prepares (its special layers)."""
    from harness.setup import build_float_model
    from quant import fake_quantizers, prepare_quantized_model
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        qmodel = prepare_quantized_model(build_float_model(config), config.quant_scheme,
                                         config.extra_quantizer_dict.special_layer, config.quantize_output)
    quantizers = fake_quantizers(qmodel)
    missing = [c.quantizer for c in candidates if c.quantizer not in quantizers]
    if missing:
        raise ConfigError(f"--match: the config's network has no quantizer {missing[0]} of the sensitivity CSV "
                          "(another model, width or quantize_output?)")
    return {c.quantizer: int(round(math.log2(quantizers[c.quantizer].quant_max - quantizers[c.quantizer].quant_min + 1)))
            for c in candidates}


def parse_arguments(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sensitivity", required=True, help="sensitivity.csv written by tools/sensitivity.py")
    budget = parser.add_mutually_exclusive_group(required=True)
    budget.add_argument("--budget", type=float, help="cost limit as a fraction of W8A8 (e.g. 0.6)")
    budget.add_argument("--match", help="run config whose special_layer set's cost is the budget")
    parser.add_argument("--budget-kind", default="bops", choices=BUDGET_KINDS, help="bops (default) or size")
    parser.add_argument("--bits", default="4,6,8,10", help="bit widths to choose from (default 4,6,8,10)")
    parser.add_argument("--measure", default="hessian", choices=["hessian", "hawq", "psnr"],
                        help="sensitivity used (default hessian: the noise-shaped Hessian score)")
    parser.add_argument("--config", help="run config the sweep starts from (default: the --match config)")
    parser.add_argument("--out", help="output folder (default: the folder of the sensitivity CSV)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a key of the --match / --config run config")
    args = parser.parse_args(argv)
    args.bits = parse_bits_option(args.bits)
    if args.budget is not None and not args.budget > 0:
        raise ValueError(f"--budget: {args.budget} must be a positive fraction of W8A8")
    return args


def main(argv=None):
    args = parse_arguments(argv)
    path = Path(args.sensitivity)
    if not path.is_file():
        raise FileNotFoundError(f"--sensitivity: {path} not found (run tools/sensitivity.py first)")
    candidates = candidates_from_rows(read_csv(path), args.measure)
    reference = w8a8_cost(candidates, args.budget_kind)
    hand = None
    if args.match:
        match_config = load_config(args.match, args.set, check_files=False)
        harness.runner.post_mortem = match_config.pdb_debug
        hand = hand_bits(match_config, candidates)
        args.budget = assignment_cost(candidates, hand, args.budget_kind) / reference
        print(f"budget: the special layers of {args.match} cost {args.budget:.4f} x W8A8 {args.budget_kind}")
    result = allocate(candidates, args.bits, args.budget, args.budget_kind)
    bits = result["bits"]
    out_dir = Path(args.out) if args.out else path.parent
    entries = special_layer_entries(candidates, bits)
    header = (f"# tools/allocate.py --sensitivity {path} --budget-kind {args.budget_kind} --measure {args.measure}\n"
              f"# budget {args.budget:.4f} x W8A8 {args.budget_kind}; allocation costs {result['cost_vs_w8a8']:.4f}; "
              f"summed sensitivity {result['objective']:.6g} ({result['status']})\n")
    if hand is not None:
        hand_objective = sum(c.sensitivity.get(hand[c.quantizer], float("nan")) for c in candidates)
        header += f"# hand-chosen set of {args.match}: summed sensitivity {hand_objective:.6g}\n"
    write_text_atomic(out_dir / "allocation.yaml", header + yaml.safe_dump(
        {"extra_quantizer_dict": {"special_layer": entries}}, sort_keys=False, width=10_000))
    write_csv_atomic(out_dir / "allocation.csv", [
        {"quantizer": c.quantizer, "kind": c.kind, "layer": c.layer, "bits": bits[c.quantizer],
         "hand_bits": hand[c.quantizer] if hand else "", "sensitivity": c.sensitivity[bits[c.quantizer]]}
        for c in candidates])
    base = args.config or args.match
    if base:
        common = {}
        for assignment in args.set:  # the --set overrides apply to every variant
            key, _, text = assignment.partition("=")
            common[key.strip()] = parse_yaml(text, f"--set {key.strip()}", show_line=False) if text.strip() else None
        sweep = {"base": base, **({"set": common} if common else {}), "variants": [
            {"name": "hand", "set": {}},
            {"name": "allocated", "set": {"extra_quantizer_dict": {"special_layer": entries}}},
            {"name": "uniform", "set": {"extra_quantizer_dict": {"special_layer": {}}}},
            {"name": "w8a8", "set": {"quant_scheme": {"weight": {"bits": 8}, "activation": {"bits": 8}},
                                     "extra_quantizer_dict": {"special_layer": {}}}}]}
        write_text_atomic(out_dir / "sweep_allocation.yaml",
                          header + f"# python sweep.py --config {out_dir / 'sweep_allocation.yaml'}\n"
                          + yaml.safe_dump(sweep, sort_keys=False, width=10_000))
    counts = {}
    for value in bits.values():
        counts[value] = counts.get(value, 0) + 1
    print(f"allocation: {', '.join(f'{counts[b]} at {b} bits' for b in sorted(counts, reverse=True))}; "
          f"cost {result['cost_vs_w8a8']:.4f} x W8A8 {args.budget_kind} (budget {args.budget:.4f})")
    for name in ("allocation.yaml", "allocation.csv") + (("sweep_allocation.yaml",) if base else ()):
        print(f"{name}: {out_dir / name}")
    return result


if __name__ == "__main__":
    sys.exit(run_entry_point(main, sys.argv[1:]))
