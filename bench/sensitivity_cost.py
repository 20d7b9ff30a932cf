"""How long tools/sensitivity.py takes, extrapolated from a sample of quantizers.

    python bench/sensitivity_cost.py [--width 1.0] [--crop 256] [--probes 8] [--probe-batch 4]
                                     [--sample 6] [--threads 1] [--json PATH]

DBF/DBLE at --width, W4A4 LSQ prepared and calibrated on one random --crop x --crop mosaic. Measured
per frame, as process CPU time (the figure to trust on a shared machine; with --threads 1 it is the
wall time of a quiet core) and wall time:
* PSNR measure: one forward with fake quantization (one quantizer changed), times the quantizers;
* Hessian measure: `hessian_scores` on --sample quantizers spread over the network, scaled to all
  of them (each quantizer costs 2 x probes Hessian-vector products: the plain trace and the
  noise-shaped one), plus one forward and first backward per frame.
Both grow with pixels x width^2; tools/sensitivity.py's total is (PSNR + Hessian) x frames.
"""
import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see bench/distill_step.py

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from helpers.files import write_text_atomic  # noqa: E402
from models.dbf_dble import DBFDBLE  # noqa: E402
from quant import calibrate, prepare_quantized_model  # noqa: E402
from quant.sensitivity import describe_quantizers, hessian_scores, mean_psnr, quantization_frozen  # noqa: E402


def timed(function):
    wall, cpu = time.perf_counter(), time.process_time()
    function()
    return time.perf_counter() - wall, time.process_time() - cpu


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--crop", type=int, default=256)
    parser.add_argument("--probes", type=int, default=8)
    parser.add_argument("--probe-batch", type=int, default=4)
    parser.add_argument("--sample", type=int, default=6, help="quantizers timed for the Hessian measure")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        qmodel = prepare_quantized_model(DBFDBLE(args.width), {"weight": {"bits": 4}, "activation": {"bits": 4}})
    x = torch.rand(1, 1, args.crop, args.crop)
    calibrate(qmodel, [x], num_batches=1)
    batch = {"input": x, "rgb": torch.rand(1, 3, args.crop, args.crop), "mono": torch.rand(1, 1, args.crop, args.crop)}
    entries = describe_quantizers(qmodel)
    with quantization_frozen(qmodel, fake_quant=True):
        mean_psnr(qmodel, [batch], "cpu")  # warm-up
        forward_wall, forward_cpu = timed(lambda: mean_psnr(qmodel, [batch], "cpu"))
    step = max(1, len(entries) // args.sample)
    sample = entries[::step][: args.sample]

    def loss(outputs, b):
        return F.mse_loss(outputs[1], b["rgb"]) + F.mse_loss(outputs[0], b["mono"])

    hessian = lambda chosen: hessian_scores(qmodel, chosen, [batch], loss, bits=(4, 6, 8, 10), probes=args.probes,  # noqa: E731
                                            probe_batch=args.probe_batch, progress=False)
    hessian(sample[:1])  # warm-up
    base_wall, base_cpu = timed(lambda: hessian(sample[:1]))  # one quantizer: mostly forward + first backward
    sample_wall, sample_cpu = timed(lambda: hessian(sample))
    per_quantizer_cpu = max(sample_cpu - base_cpu, 0) / max(len(sample) - 1, 1)
    per_quantizer_wall = max(sample_wall - base_wall, 0) / max(len(sample) - 1, 1)
    figures = {
        "width": args.width, "crop": args.crop, "probes": args.probes, "threads": args.threads,
        "quantizers": len(entries), "sampled": [e.quantizer for e in sample],
        "psnr_forward_cpu_s": forward_cpu, "psnr_forward_wall_s": forward_wall,
        "psnr_measure_per_frame_cpu_s": forward_cpu * (len(entries) + 1),
        "hessian_per_quantizer_cpu_s": per_quantizer_cpu, "hessian_per_quantizer_wall_s": per_quantizer_wall,
        "hessian_measure_per_frame_cpu_s": base_cpu + per_quantizer_cpu * (len(entries) - 1),
        "hessian_measure_per_frame_wall_s": base_wall + per_quantizer_wall * (len(entries) - 1),
    }
    for key, value in figures.items():
        print(f"{key}: {value if not isinstance(value, float) else round(value, 3)}")
    if args.json:
        write_text_atomic(args.json, json.dumps(figures, indent=2))
    return figures


if __name__ == "__main__":
    main()
