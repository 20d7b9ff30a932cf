"""Train (and optionally quantize and distil) a low-light RAW network from one YAML file.

    python train.py --config configfile/demo_fp.yaml [--set schedule.epochs=3 ...] [--resume]

The loop below reads top to bottom: config -> data -> networks (float, quantized, teacher) ->
optimizer -> epochs of training with validation and checkpoints -> a final test-split report.
"""
import argparse
import json
import math
import random
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from core.checkpoint import CheckpointSaver, restore_rng_state, rng_state
from core.config import ConfigError, dump_config, load_config
from core.evaluate import evaluate
from core.files import check_writable, torch_save_atomic, write_csv_atomic, write_text_atomic
from core.records import MetricsLog
import core.runner
from core.runner import run_entry_point
from core.setup import build_eval_dataset, build_float_model, build_train_loader, ensure_data, resolve_device
from models import split_outputs


def task_loss(outputs, batch, config):
    """The authors' objective: L1 on the mono image plus L1 on RGB, end to end (mono not detached)."""
    mono, rgb = split_outputs(outputs)
    loss = config.loss.rgb_weight * F.l1_loss(rgb, batch["rgb"])
    if mono is not None:
        loss = loss + config.loss.mono_weight * F.l1_loss(mono, batch["mono"])
    return loss


def make_scheduler(optimizer, config):
    schedule = config.schedule
    if schedule.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=schedule.epochs, eta_min=schedule.min_lr)
    if schedule.scheduler == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=schedule.step_size, gamma=schedule.gamma)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: 1.0)


def batches_for_epoch(loader, iterations):
    """`iterations` batches, cycling the loader when an epoch asks for more than one pass."""
    if iterations is None:
        yield from loader
        return
    produced = 0
    while produced < iterations:
        for batch in loader:
            yield batch
            produced += 1
            if produced == iterations:
                return


def to_device(batch, device):
    return {k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}


def student_state(model, quantized):
    if quantized:
        from quant import quantized_state
        return quantized_state(model)
    return model.state_dict()


def prepare_student(config, device, train_loader, checkpoint=None):
    """The network that is trained: float, or MQBench-quantized from float weights / a saved state."""
    model = build_float_model(config, None if (checkpoint or config.load_quant_model) else config.load_model)
    if not config.quant:
        if checkpoint is not None:
            model.load_state_dict(checkpoint["model"])
        return model.to(device)
    from quant import (calibrate, format_quant_plan, load_quantized_state, prepare_quantized_model,
                       quant_plan_rows, write_quant_plan)
    qmodel = prepare_quantized_model(model, config.quant_scheme, config.extra_quantizer_dict.special_layer,
                                     config.quantize_output).to(device)
    saved = checkpoint or (torch.load(config.load_quant_model, map_location="cpu", weights_only=False)
                           if config.load_quant_model else None)
    if saved is not None:
        if not saved.get("quantized"):
            raise ConfigError(f"load_quant_model: {config.load_quant_model} is not a quantized checkpoint "
                              "(use load_model for full-precision weights)")
        load_quantized_state(qmodel, saved["model"])
    else:
        batches = [to_device(b, device)["input"] for b, _ in
                   zip(train_loader, range(config.quant_scheme.calibration_batches))]
        calibrate(qmodel, batches, device)
    rows = quant_plan_rows(qmodel)
    write_quant_plan(rows, config.run_dir / "quant_plan.csv")
    print(format_quant_plan(rows))
    return qmodel.to(device)


def prepare_distillation(config, student, device):
    """Frozen full-precision teacher and taps on the named layers of both networks, or None."""
    if not (config.quant and config.quant_teacher):
        return None
    if not config.distill_config:
        print("note: quant_teacher is true but distill_config names no layers; training without distillation")
        return None
    from distill import DistillationLoss, FeatureTaps, check_same_architecture, trace_for_features
    teacher = build_float_model(config, config.load_teacher_model).to(device).eval()
    for parameter in teacher.parameters():
        parameter.requires_grad_(False)
    teacher_graph = trace_for_features(teacher)
    check_same_architecture(student, teacher_graph)
    exposed = list(dict.fromkeys(config.distill_config + config.output_layer_list))
    return {
        "teacher": teacher_graph,
        "student_taps": FeatureTaps(student, exposed, role="student"),
        "teacher_taps": FeatureTaps(teacher_graph, exposed, role="teacher"),
        "loss": DistillationLoss(config.distill_config, config.distill_coeff, config.distill.feature_loss),
    }


def run(config, resume=False, overwrite=False):
    """Train as `config` says; returns the summary dict also written to `summary.json`."""
    run_dir = config.run_dir
    if resume and not (run_dir / "checkpoints").is_dir():
        raise ConfigError(f"--resume: no checkpoints in {run_dir / 'checkpoints'} to resume from")
    if not resume and (run_dir / "metrics.csv").exists():
        if not overwrite:
            raise ConfigError(f"{run_dir} already holds a run; pass --resume to continue it, --overwrite to replace "
                              "it, or set output.experiment to a new name")
        shutil.rmtree(run_dir)
    check_writable(run_dir)
    device = resolve_device(config)
    random.seed(config.seed)
    np.random.seed(config.seed)
    torch.manual_seed(config.seed)
    write_text_atomic(run_dir / "config.yaml", dump_config(config))
    print(f"experiment {config.experiment} on {device}; results in {run_dir}")

    # Data: decode every raw file once into the on-disk cache; epochs read crops from it.
    ensure_data(config)
    input_kind = build_float_model(config).input_kind
    train_loader = build_train_loader(config, input_kind, config.seed)
    val_set = build_eval_dataset(config, "val", input_kind)

    # Networks.
    saver = CheckpointSaver(run_dir / "checkpoints", config.output.keep_best)
    checkpoint = None
    if resume:
        latest = saver.latest()
        if latest is None:
            raise ConfigError(f"--resume: no latest_epoch*.pth in {saver.folder}")
        checkpoint = torch.load(latest, map_location="cpu", weights_only=False)
        print(f"resuming from {latest} (epoch {checkpoint['epoch']})")
    model = prepare_student(config, device, train_loader, checkpoint)
    distillation = prepare_distillation(config, model, device)

    # Optimizer: built after calibration, which resizes per-channel quantizer scales.
    if config.quant:
        from quant import param_groups
        groups = param_groups(model, config.optim.lr, config.quant_scheme.quantizer_lr)
    else:
        groups = [{"params": [p for p in model.parameters() if p.requires_grad]}]
    optimizer = torch.optim.Adam(groups, lr=config.optim.lr, betas=config.optim.betas,
                                 weight_decay=config.optim.weight_decay)
    scheduler = make_scheduler(optimizer, config)
    start_epoch, best_psnr, best_epoch = 1, -math.inf, None
    if checkpoint is not None:
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        restore_rng_state(checkpoint["rng"])
        train_loader.generator.set_state(checkpoint["loader_rng"])
        start_epoch = checkpoint["epoch"] + 1
        best_psnr, best_epoch = checkpoint["best_psnr"], checkpoint["best_epoch"]
        saver.drop_after(checkpoint["epoch"])
    log = MetricsLog(run_dir, config.output.tensorboard, checkpoint["epoch"] if checkpoint else None)

    iterations = config.schedule.iters_per_epoch or len(train_loader)
    accumulate = config.schedule.grad_accum_steps
    epochs = config.schedule.epochs
    for epoch in range(start_epoch, epochs + 1):
        model.train()
        started = time.time()
        sums, count = {}, 0
        progress = tqdm(batches_for_epoch(train_loader, iterations), total=iterations, dynamic_ncols=True,
                        desc=f"epoch {epoch}/{epochs}")
        optimizer.zero_grad(set_to_none=True)
        for step, batch in enumerate(progress, start=1):
            batch = to_device(batch, device)
            outputs = model(batch["input"])
            loss = task_loss(outputs, batch, config)
            terms = {"task_loss": loss.item()}
            if distillation is not None:
                with torch.no_grad():
                    distillation["teacher"](batch["input"])
                distill_total, distill_terms = distillation["loss"](distillation["student_taps"].outputs,
                                                                    distillation["teacher_taps"].outputs)
                loss = loss + distill_total
                terms.update({f"distill[{name}]": value.item() for name, value in distill_terms.items()})
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss is {loss.item()} at epoch {epoch}, step {step} "
                                         f"(batch {batch['name']}); last good checkpoint: {saver.latest()}")
            (loss / accumulate).backward()
            if step % accumulate == 0 or step == iterations:
                if config.optim.grad_clip:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), config.optim.grad_clip)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            terms["loss"] = loss.item()
            for key, value in terms.items():
                sums[key] = sums.get(key, 0.0) + value
            count += 1
            progress.set_postfix(loss=f"{sums['loss'] / count:.4f}")
        progress.close()
        lr = optimizer.param_groups[0]["lr"]
        scheduler.step()

        row = {"epoch": epoch, "loss": sums["loss"] / count, "task_loss": sums["task_loss"] / count}
        row.update({k: v / count for k, v in sums.items() if k.startswith("distill[")})
        row.update({"psnr": math.nan, "ssim": math.nan, "ssim_variant": config.val.ssim, "lr": lr})
        if epoch % config.val.every == 0 or epoch == epochs:
            means, per_image = evaluate(model, val_set, device, config.val.ssim, config.val.tile_size,
                                        config.val.tile_overlap, description=f"validate {epoch}")
            row.update(psnr=means["psnr"], ssim=means["ssim"])
        row["seconds"] = time.time() - started

        # Checkpoints: best first, so that a kill between the two writes never loses the best.
        payload = {"model": student_state(model, config.quant), "quantized": config.quant,
                   "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                   "epoch": epoch, "rng": rng_state(), "loader_rng": train_loader.generator.get_state(),
                   "config": config.model_dump(mode="json"), "psnr": row["psnr"], "ssim": row["ssim"]}
        if not math.isnan(row["psnr"]) and row["psnr"] > best_psnr:
            best_psnr, best_epoch = row["psnr"], epoch
            payload.update(best_psnr=best_psnr, best_epoch=best_epoch)
            saver.save_best(payload, epoch, best_psnr)
            write_csv_atomic(run_dir / "best_per_image.csv",
                             [{"epoch": epoch, **r, "ssim_variant": config.val.ssim} for r in per_image])
        payload.update(best_psnr=best_psnr, best_epoch=best_epoch)
        saver.save_latest(payload, epoch)
        log.append(row)
        print(f"epoch {epoch}: loss {row['loss']:.4f}  val PSNR {row['psnr']:.2f} dB  "
              f"SSIM({config.val.ssim}) {row['ssim']:.4f}  lr {lr:.2e}  {row['seconds']:.1f}s")
    log.close()

    # Final report on the test split with the best checkpoint, next to the naive baseline.
    from core.checkpoint_eval import evaluate_checkpoint
    best = saver.best() or saver.latest()
    report = evaluate_checkpoint(config, best, split="test", device=device, with_baseline=True)
    summary = {"experiment": config.experiment, "best_epoch": best_epoch, "best_val_psnr": best_psnr,
               "checkpoint": str(best), **{f"test_{k}": v for k, v in report.items()}}
    if not config.quant:
        # The authors' weight format, at a stable path that quantized runs name as load_model.
        weights = Path("onnx") / f"{config.experiment}.pth"
        torch_save_atomic({"model": torch.load(best, map_location="cpu", weights_only=False)["model"]}, weights)
        summary["weights"] = str(weights)
        print(f"full-precision weights for quantized runs: {weights}")
    write_text_atomic(run_dir / "summary.json", json.dumps(summary, indent=2))
    if config.onnx:
        from deploy import export_run
        export_run(config, best, Path("onnx") / config.experiment)
    print(f"results in {run_dir}")
    return summary


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="YAML run config (see configfile/)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. --set schedule.epochs=3 (repeatable)")
    parser.add_argument("--resume", action="store_true", help="continue the run from its latest checkpoint")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier run of the same experiment")
    args = parser.parse_args(argv)
    config = load_config(args.config, args.set)
    core.runner.post_mortem = config.pdb_debug
    print(dump_config(config))
    if config.test:
        from core.checkpoint_eval import default_checkpoint, evaluate_checkpoint
        evaluate_checkpoint(config, default_checkpoint(config), split="test", with_baseline=True)
        return None
    return run(config, resume=args.resume, overwrite=args.overwrite)


if __name__ == "__main__":
    sys.exit(run_entry_point(main, sys.argv[1:]))
