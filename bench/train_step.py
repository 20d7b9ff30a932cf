"""Training-step speed as train.py runs it, on CPU or a GPU: full precision, QAT (W8A8 LSQ, the
harness's sync-free quantizers) and QAT + distillation, at each precision asked for.

    python bench/train_step.py --device cuda [--size 512] [--batch 24] [--precision none,bf16]
                               [--channels-last] [--compile] [--workers auto] [--steps 20] [--warmup 5]
                               [--kinds fp,qat,qat_distill] [--data /tmp/bench_sid] [--json PATH]

For each variant it reports:
- step time on data already on the device (one batch, reused);
- step time fed by the real loader (build_train_loader: uint16 patches from persistent workers,
  finished on the device) from a synthetic SID set of 4256x2848-like frames it generates once;
- GPU busy fraction while loader-fed: the time the device spends inside steps (CUDA events around
  each step) over the wall time (on CPU: the time spent outside waiting for the loader);
- peak device memory (CUDA) of the step.
Targets from the issue, on an H100 at batch 24 x 512x512, full width: FP step with bf16 at most 0.55x
the fp32 one; QAT at most 1.5x FP at the same precision; busy at least 90% at default settings.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.config import Config  # noqa: E402
from helpers.files import write_text_atomic  # noqa: E402
from harness.setup import build_train_loader  # noqa: E402
from harness.speed import Speed  # noqa: E402
from data.synthetic import generate_synthetic_sid  # noqa: E402
from models import declared_outputs  # noqa: E402
from models.dbf_dble import DBFDBLE  # noqa: E402
from harness.loss import task_loss  # noqa: E402
from harness.training import batches_for_epoch  # noqa: E402

W8A8_LSQ = {"weight": {"bits": 8}, "activation": {"bits": 8}, "calibration_batches": 1}
DISTILLED_LAYERS = ["DBLE.dual_conv9.lrelu_dup1", "DBF.DBF_conv9.lrelu_dup1"]


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Variant:
    """One network set-up with its optimizer, stepping like the training loop (harness/training.py)."""

    def __init__(self, kind, config, device, batch):
        torch.manual_seed(0)
        self.config, self.device = config, device
        model = DBFDBLE(config.model.width).to(device)
        self.distillation = None
        if kind != "fp":
            from quant import calibrate, param_groups, prepare_quantized_model
            teacher_weights = {k: v.clone() for k, v in model.state_dict().items()}
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model = prepare_quantized_model(model, config.quant_scheme).to(device)
            calibrate(model, [batch["input"]], device)
            groups = param_groups(model, 1e-5)
        else:
            groups = [{"params": list(model.parameters())}]
        self.speed = Speed(config, device)
        self.model = self.speed.prepare(model.train())
        if kind == "qat_distill":
            from distill import DistillationLoss, FeatureTaps, prepare_teacher
            teacher = DBFDBLE(config.model.width)
            teacher.load_state_dict(teacher_weights)
            teacher = self.speed.prepare(prepare_teacher(teacher).to(device))
            self.distillation = {"student": FeatureTaps(self.model, DISTILLED_LAYERS, role="student"),
                                 "teacher_taps": FeatureTaps(teacher, DISTILLED_LAYERS, role="teacher"),
                                 "teacher": self.speed.wrap(teacher),
                                 "loss": DistillationLoss(DISTILLED_LAYERS, [0.1, 0.1])}
        self.network = self.speed.wrap(self.model)
        self.optimizer = torch.optim.Adam(groups, lr=1e-5)

    def step(self, batch):
        outputs = self.network(batch["input"])
        loss = task_loss(outputs, batch, self.config.loss, declared=declared_outputs(self.config.model.name))
        if self.distillation is not None:
            with torch.no_grad():
                self.distillation["teacher"](batch["input"])
            total, _ = self.distillation["loss"](self.distillation["student"].outputs,
                                                  self.distillation["teacher_taps"].outputs)
            loss = loss + total
        self.speed.backward(loss)
        self.speed.step(self.optimizer, self.model.parameters(), None)
        self.optimizer.zero_grad(set_to_none=True)


def time_resident(variant, batch, steps, warmup, device):
    for _ in range(warmup):
        variant.step(batch)
    synchronize(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    for _ in range(steps):
        variant.step(batch)
    synchronize(device)
    peak = torch.cuda.max_memory_allocated(device) / 2 ** 30 if device.type == "cuda" else float("nan")
    return (time.perf_counter() - started) / steps, peak


def time_fed(variant, loader, steps, warmup, device):
    """Wall time per step fed by the loader, and the fraction of it the device spent in steps."""
    batches = batches_for_epoch(loader, 1, warmup + steps)
    for _ in range(warmup):
        variant.step(next(batches))
    synchronize(device)
    spans, inside = [], 0.0
    started = time.perf_counter()
    for batch in batches:
        if device.type == "cuda":
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
            variant.step(batch)
            end.record()
            spans.append((begin, end))
        else:
            step_started = time.perf_counter()
            variant.step(batch)
            inside += time.perf_counter() - step_started
    synchronize(device)
    wall = time.perf_counter() - started
    if device.type == "cuda":
        inside = sum(begin.elapsed_time(end) for begin, end in spans) / 1000
    return wall / steps, inside / wall


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--batch", type=int, default=24)
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--precision", default="none,bf16", help="comma list of none, bf16, fp16")
    parser.add_argument("--channels-last", action="store_true", help="with reduced precision only")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--kinds", default="fp,qat,qat_distill")
    parser.add_argument("--workers", default="auto")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--data", default="/tmp/lowlight_bench_sid")
    parser.add_argument("--frame", default="1424x2128", help="synthetic frame HxW (multiples of 32)")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    workers = args.workers if args.workers == "auto" else int(args.workers)
    height, width = (int(v) for v in args.frame.split("x"))
    generate_synthetic_sid(args.data, height=height, width=width, train_scenes=8, val_scenes=1, test_scenes=1)

    rows = []
    for precision in args.precision.split(","):
        for kind in args.kinds.split(","):
            config = Config(device=str(device), batch_size=args.batch, model={"width": args.width},
                            quant=kind != "fp", quant_scheme=W8A8_LSQ,
                            data={"root": args.data, "synthetic": None, "patch_size": args.size,
                                  "num_workers": workers, "decode_workers": 4},
                            speed={"mixed_precision": precision, "compile": args.compile,
                                   "channels_last": args.channels_last and precision != "none"})
            loader = build_train_loader(config, "mosaic", 0, device=device)
            batch = next(iter(loader))
            variant = Variant(kind, config, device, batch)
            resident, peak = time_resident(variant, batch, args.steps, args.warmup, device)
            fed, busy = time_fed(variant, loader, args.steps, args.warmup, device)
            rows.append({"kind": kind, "precision": precision, "channels_last": config.speed.channels_last,
                         "compile": args.compile, "resident_ms": resident * 1e3, "fed_ms": fed * 1e3,
                         "busy": busy, "peak_gib": peak, "workers": loader.num_workers})
            print(f"{kind:>12} {precision:>5}: resident {resident * 1e3:8.1f} ms  fed {fed * 1e3:8.1f} ms  "
                  f"busy {busy:5.1%}  peak {peak:6.2f} GiB  ({loader.num_workers} workers)", flush=True)
            del variant, loader
    by = {(r["kind"], r["precision"]): r["resident_ms"] for r in rows}
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"{name}, DBF/DBLE width {args.width}, batch {args.batch} x {args.size}x{args.size}, "
          f"mean of {args.steps} steps after {args.warmup} warm-up")
    for precision in args.precision.split(","):
        if ("fp", precision) in by and ("qat", precision) in by:
            print(f"  QAT / FP at {precision}: {by[('qat', precision)] / by[('fp', precision)]:.2f}x (target <= 1.5x)")
    if ("fp", "none") in by and ("fp", "bf16") in by:
        print(f"  FP bf16 / FP fp32: {by[('fp', 'bf16')] / by[('fp', 'none')]:.2f}x (target <= 0.55x)")
    if args.json:
        write_text_atomic(args.json, json.dumps({"device": name, "rows": rows, **vars(args)}, indent=2))
    return rows


if __name__ == "__main__":
    main()
