"""Time one training step (forward, L1 loss on mono and rgb, backward, Adam step) of the full-width
DBF/DBLE on CPU: float vs QAT (W8A8 LSQ), and a bare MQBench loop vs this harness's path
(prepare_quantized_model with the user's special layers).

    python bench/qat_step.py [--size 256] [--batch 2] [--steps 5] [--warmup 2] [--threads 2] [--device cuda]
    python bench/qat_step.py --engines [...]   # one QAT step, MQBench engine vs torchao engine (docs/engines.md)

Targets (from the issue): QAT / float <= 1.5x; harness / bare MQBench <= 1.05x. Variants run
interleaved, one step each per round, so a busy machine slows all of them alike. Wall medians, best
wall steps and CPU-time medians are all printed: with other processes on the cores, two OpenMP threads
spend much of their time waiting for each other (wall and CPU time both inflate, unevenly), and
`--threads 1` gives the steadiest comparison.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mqbench.prepare_by_platform import BackendType, prepare_by_platform  # noqa: E402
from mqbench.utils.state import enable_calibration, enable_quantization  # noqa: E402

from models.dbf_dble import DBFDBLE  # noqa: E402
from quant import calibrate, param_groups, prepare_quantized_model  # noqa: E402
from quant.prepare import quiet_mqbench  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
USER_CONFIG = [ROOT.parent / "shared" / "spec" / "seed_aba_config.yaml", ROOT / "configfile" / "seed_aba.yaml"]
W8A8_LSQ = {
    "weight": {"quantizer": "lsq", "observer": "MinMaxObserver", "bits": 8, "symmetric": True, "per_channel": True},
    "activation": {"quantizer": "lsq", "observer": "EMAMinMaxObserver", "bits": 8, "symmetric": False,
                   "per_channel": False},
    "calibration_batches": 1,
}


# The harness minus the ConvTranspose input quantizers MQBench's Academic backend does not insert.
SAME_SET = "harness, MQBench's quantizer set"
MQBENCH_CLASS = "harness, MQBench's LSQ class"


def user_special_layers() -> dict:
    for path in USER_CONFIG:
        if path.is_file():
            return yaml.safe_load(path.read_text())["extra_quantizer_dict"]["special_layer"]
    raise SystemExit("bench: the user's config (seed_aba_config.yaml) was not found")


def bare_mqbench(model, x):
    """What a user writes with MQBench alone: prepare, calibrate on one batch, quantize, Adam."""
    with quiet_mqbench():
        qmodel = prepare_by_platform(model, BackendType.Academic, {"extra_qconfig_dict": {
            "w_observer": "MinMaxObserver", "a_observer": "EMAMinMaxObserver",
            "w_fakequantize": "LearnableFakeQuantize", "a_fakequantize": "LearnableFakeQuantize",
            "w_qscheme": {"bit": 8, "symmetry": True, "per_channel": True, "pot_scale": False},
            "a_qscheme": {"bit": 8, "symmetry": False, "per_channel": False, "pot_scale": False}}})
        qmodel.to(x.device)  # the inserted quantizers are made on the CPU
        enable_calibration(qmodel)
        with torch.no_grad():
            qmodel(x)
        enable_quantization(qmodel)
    return qmodel, torch.optim.Adam(qmodel.parameters(), lr=1e-5)


def harness(model, x, scheme, special):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the user's weight-on-LeakyReLU entries
        qmodel = prepare_quantized_model(model, scheme, special).to(x.device)
    calibrate(qmodel, [x])
    return qmodel, torch.optim.Adam(param_groups(qmodel, 1e-5))


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def step(model, optimizer, x, mono_target, rgb_target) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of one step; on a GPU, up to the end of its last kernel."""
    synchronize(x.device)
    start, cpu_start = time.perf_counter(), time.process_time()
    mono, rgb = model(x)
    loss = (mono - mono_target).abs().mean() + (rgb - rgb_target).abs().mean()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    synchronize(x.device)
    return time.perf_counter() - start, time.process_time() - cpu_start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]: data and models live there")
    parser.add_argument("--extra", action="store_true",
                        help="also time the harness with per-tensor weights (a cheaper scheme)")
    parser.add_argument("--engines", action="store_true",
                        help="instead: the harness W8A8 + special layers on each quant_scheme.engine, and float")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    x = torch.rand(args.batch, 1, args.size, args.size, device=device)
    mono_target = torch.rand(args.batch, 1, args.size, args.size, device=device)
    rgb_target = torch.rand(args.batch, 3, args.size, args.size, device=device)
    special = user_special_layers()

    def fresh():
        return DBFDBLE(args.width).to(device).train()

    float_model = fresh()
    if args.engines:
        return compare_engines(args, fresh, float_model, x, mono_target, rgb_target, special)
    variants = {
        "float": (float_model, torch.optim.Adam(float_model.parameters(), lr=1e-5)),
        "bare MQBench W8A8": bare_mqbench(fresh(), x),
        "harness W8A8 + special": harness(fresh(), x, W8A8_LSQ, special),
        SAME_SET: harness(fresh(), x, {**W8A8_LSQ, "quantize_transposed_conv_input": False},
                                                   special),
    }
    # The same harness model on MQBench's own LearnableFakeQuantize (quant_scheme.fast_quantizers: false).
    variants[MQBENCH_CLASS] = harness(fresh(), x, {**W8A8_LSQ, "fast_quantizers": False}, special)
    if args.extra:
        per_tensor = {**W8A8_LSQ, "weight": {**W8A8_LSQ["weight"], "per_channel": False}}
        variants["harness, per-tensor weights"] = harness(fresh(), x, per_tensor, special)
    wall, cpu = interleaved_steps(variants, args, x, mono_target, rgb_target)
    print(f"one training step, DBF/DBLE width {args.width}, batch {args.batch} x {args.size}x{args.size}, "
          f"{torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'} ({args.threads} CPU threads), "
          f"{args.steps} steps after {args.warmup} warm-up")
    print_step_times(wall, cpu, 36)
    # On a shared machine other processes only ever add time: the best wall step is the least
    # disturbed one, and CPU time ignores the waiting (not the cache sharing).
    for label, table in (("wall median", {n: statistics.median(v) for n, v in wall.items()}),
                         ("wall best", {n: min(v) for n, v in wall.items()}),
                         ("CPU median", {n: statistics.median(v) for n, v in cpu.items()})):
        print(f"  [{label}] QAT / float: bare MQBench {table['bare MQBench W8A8'] / table['float']:.2f}x, "
              f"harness {table['harness W8A8 + special'] / table['float']:.2f}x (target <= 1.5x); "
              f"harness / bare MQBench {table['harness W8A8 + special'] / table['bare MQBench W8A8']:.3f}x, "
              f"with MQBench's quantizer set {table[SAME_SET] / table['bare MQBench W8A8']:.3f}x (target <= 1.05x); "
              f"sync-free LSQ / MQBench's class {table['harness W8A8 + special'] / table[MQBENCH_CLASS]:.3f}x")

def interleaved_steps(variants, args, x, mono_target, rgb_target):
    """Wall and CPU seconds of each variant's training steps, one step of each in turn per round, so
    that every variant sees the same machine state; the first args.warmup rounds are not kept."""
    wall = {name: [] for name in variants}
    cpu = {name: [] for name in variants}
    for round_index in range(args.warmup + args.steps):
        for name, (model, optimizer) in variants.items():
            elapsed, cpu_elapsed = step(model, optimizer, x, mono_target, rgb_target)
            if round_index >= args.warmup:
                wall[name].append(elapsed)
                cpu[name].append(cpu_elapsed)
    return wall, cpu


def print_step_times(wall, cpu, name_width):
    print(f"  {'variant':<{name_width}} {'wall median':>11} {'wall best':>10} {'CPU median':>11}")
    for name in wall:
        print(f"  {name:<{name_width}} {statistics.median(wall[name]) * 1e3:9.0f}ms {min(wall[name]) * 1e3:8.0f}ms "
              f"{statistics.median(cpu[name]) * 1e3:9.0f}ms")


def compare_engines(args, fresh, float_model, x, mono_target, rgb_target, special):
    """One QAT step per engine, interleaved in the same run (so the ratio is of one machine state)."""
    variants = {"float": (float_model, torch.optim.Adam(float_model.parameters(), lr=1e-5))}
    for engine in ("mqbench", "torchao"):
        variants[f"{engine} W8A8 + special"] = harness(fresh(), x, {**W8A8_LSQ, "engine": engine}, special)
    wall, cpu = interleaved_steps(variants, args, x, mono_target, rgb_target)
    print(f"one training step per engine, DBF/DBLE width {args.width}, batch {args.batch} x {args.size}x{args.size}, "
          f"torch {torch.__version__}, {torch.cuda.get_device_name(x.device) if x.device.type == 'cuda' else 'CPU'} "
          f"({args.threads} CPU threads), {args.steps} steps after {args.warmup} warm-up")
    print_step_times(wall, cpu, 28)
    for label, table in (("wall median", {n: statistics.median(v) for n, v in wall.items()}),
                         ("wall best", {n: min(v) for n, v in wall.items()}),
                         ("CPU median", {n: statistics.median(v) for n, v in cpu.items()})):
        print(f"  [{label}] torchao / mqbench {table['torchao W8A8 + special'] / table['mqbench W8A8 + special']:.3f}x; "
              f"QAT / float: mqbench {table['mqbench W8A8 + special'] / table['float']:.2f}x, "
              f"torchao {table['torchao W8A8 + special'] / table['float']:.2f}x")


if __name__ == "__main__":
    main()
