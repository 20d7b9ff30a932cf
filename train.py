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
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from core import distributed
from core.checkpoint import CheckpointSaver, restore_rng_state, rng_state
from core.divergence import DivergenceGuard
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


def batches_for_epoch(loader, epoch, iterations):
    """`iterations` batches, cycling the loader when an epoch asks for more than one pass. Each pass
    reshuffles with its own (epoch, pass) number, so a resumed run replays exactly the same data."""
    passes = max(1, math.ceil(iterations / len(loader)))
    produced = 0
    for pass_index in range(passes):
        order = (epoch - 1) * passes + pass_index
        loader.sampler.set_epoch(order)
        loader.dataset.set_epoch(order)
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


def prepare_student(config, device, train_loader, checkpoint=None, is_main=True):
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
        # The same global batches on every rank (not each rank's share), so a DDP run calibrates
        # exactly as a single process does.
        loader = DataLoader(train_loader.dataset, batch_size=config.batch_size, num_workers=train_loader.num_workers,
                            sampler=DistributedSampler(train_loader.dataset, num_replicas=1, rank=0, seed=config.seed))
        batches = [to_device(b, device)["input"] for b, _ in zip(loader, range(config.quant_scheme.calibration_batches))]
        calibrate(qmodel, batches, device)
    if is_main:
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
    from distill import DistillationLoss, FeatureTaps, check_same_architecture, prepare_teacher
    teacher = prepare_teacher(build_float_model(config, config.load_teacher_model)).to(device)
    check_same_architecture(student, teacher)
    return {
        "teacher": teacher,
        "student_taps": FeatureTaps(student, config.distill_config, role="student",
                                    extra_layer_names=config.output_layer_list),
        "teacher_taps": FeatureTaps(teacher, config.distill_config, role="teacher"),
        "loss": DistillationLoss(config.distill_config, config.distill_coeff, config.distill.feature_loss),
    }


def run(config, resume=False, overwrite=False):
    """Train as `config` says; returns the summary dict also written to `summary.json`.
    Under torchrun every process runs this; rank 0 alone writes results."""
    ddp = distributed.start(config.device)
    try:
        return _run(config, resume, overwrite, ddp)
    finally:
        distributed.stop(ddp)


def _run(config, resume, overwrite, ddp):
    run_dir = config.run_dir
    main_process = ddp.is_main
    if resume and not (run_dir / "checkpoints").is_dir():
        raise ConfigError(f"--resume: no checkpoints in {run_dir / 'checkpoints'} to resume from")
    if not resume and (run_dir / "metrics.csv").exists():
        if not overwrite:
            raise ConfigError(f"{run_dir} already holds a run; pass --resume to continue it, --overwrite to replace "
                              "it, or set output.experiment to a new name")
        ddp.barrier()  # every rank has seen the old run before rank 0 removes it
        if main_process:
            shutil.rmtree(run_dir)
    device = resolve_device(config, ddp.local_rank if ddp.enabled else None)
    random.seed(config.seed)
    np.random.seed(config.seed)
    torch.manual_seed(config.seed)
    if main_process:
        check_writable(run_dir)
        write_text_atomic(run_dir / "config.yaml", dump_config(config))
        print(f"experiment {config.experiment} on {device}"
              f"{f' x {ddp.world_size} processes' if ddp.enabled else ''}; results in {run_dir}")
        # Data: generate the stand-in if needed and decode every raw file once into the on-disk cache.
        ensure_data(config)
    input_kind = build_float_model(config).input_kind
    if not main_process:
        ddp.barrier()  # rank 0 decodes the raw files into the cache first; the others then read it
    train_loader = build_train_loader(config, input_kind, config.seed, ddp.rank, ddp.world_size)
    if main_process:
        ddp.barrier()
    val_set = build_eval_dataset(config, "val", input_kind) if main_process else None

    # Networks. Under DDP every rank calibrates on its own batches; wrapping in DDP then copies
    # rank 0's weights and quantizer state to all ranks.
    saver = CheckpointSaver(run_dir / "checkpoints", config.output.keep_best)
    checkpoint = None
    if resume:
        latest = saver.latest()
        if latest is None:
            raise ConfigError(f"--resume: no latest_epoch*.pth in {saver.folder}")
        checkpoint = torch.load(latest, map_location="cpu", weights_only=False)
        if main_process:
            print(f"resuming from {latest} (epoch {checkpoint['epoch']})")
    model = prepare_student(config, device, train_loader, checkpoint, main_process)
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
        start_epoch = checkpoint["epoch"] + 1
        best_psnr, best_epoch = checkpoint["best_psnr"], checkpoint["best_epoch"]
        if main_process:
            saver.drop_after(checkpoint["epoch"])
    network = model
    if ddp.enabled:
        # Quantizer parameters a step does not touch (e.g. an unused zero point) must not stall DDP.
        network = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=config.quant)
    log = MetricsLog(run_dir, config.output.tensorboard, checkpoint["epoch"] if checkpoint else None) \
        if main_process else None

    iterations = config.schedule.iters_per_epoch or len(train_loader)
    accumulate = config.schedule.grad_accum_steps
    epochs = config.schedule.epochs
    divergence = DivergenceGuard()
    for epoch in range(start_epoch, epochs + 1):
        network.train()
        started = time.time()
        sums, count = {}, 0
        progress = tqdm(batches_for_epoch(train_loader, epoch, iterations), total=iterations, dynamic_ncols=True,
                        desc=f"epoch {epoch}/{epochs}", disable=not main_process)
        optimizer.zero_grad(set_to_none=True)
        for step, batch in enumerate(progress, start=1):
            batch = to_device(batch, device)
            outputs = network(batch["input"])
            loss = task_loss(outputs, batch, config)
            terms = {"task_loss": loss.item()}
            if distillation is not None:
                with torch.no_grad():
                    distillation["teacher"](batch["input"])
                distill_total, distill_terms = distillation["loss"](distillation["student_taps"].outputs,
                                                                    distillation["teacher_taps"].outputs)
                loss = loss + distill_total
                terms.update({f"distill[{name}]": value.item() for name, value in distill_terms.items()})
            if not ddp.all_finite(loss):
                raise FloatingPointError(f"loss is not finite at epoch {epoch}, step {step} (batch "
                                         f"{', '.join(batch['name'])}); last good checkpoint: {saver.latest()}")
            divergence.check(loss, epoch, step, saver.latest, ddp)
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
        means = ddp.mean({key: value / count for key, value in sums.items()})

        if main_process:
            row = {"epoch": epoch, "loss": means["loss"], "task_loss": means["task_loss"]}
            row.update({k: v for k, v in means.items() if k.startswith("distill[")})
            row.update({"psnr": math.nan, "ssim": math.nan, "ssim_variant": config.val.ssim, "lr": lr})
            if epoch % config.val.every == 0 or epoch == epochs:
                scores, per_image = evaluate(model, val_set, device, config.val.ssim, config.val.tile_size,
                                             config.val.tile_overlap, description=f"validate {epoch}",
                                             statistics_passes=config.val.tile_statistics_passes)
                row.update(psnr=scores["psnr"], ssim=scores["ssim"])
            row["seconds"] = time.time() - started

            # Checkpoints: best first, so that a kill between the two writes never loses the best.
            payload = {"model": student_state(model, config.quant), "quantized": config.quant,
                       "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                       "epoch": epoch, "rng": rng_state(), "config": config.model_dump(mode="json"),
                       "psnr": row["psnr"], "ssim": row["ssim"]}
            if not math.isnan(row["psnr"]) and row["psnr"] > best_psnr:
                best_psnr, best_epoch = row["psnr"], epoch
                payload.update(best_psnr=best_psnr, best_epoch=best_epoch)
                saver.save_best(payload, epoch, best_psnr)
                write_csv_atomic(run_dir / "best_per_image.csv",
                                 [{"epoch": epoch, **r, "ssim_variant": config.val.ssim} for r in per_image])
            payload.update(best_psnr=best_psnr, best_epoch=best_epoch)
            # The metrics row goes before the latest checkpoint: a kill between the two resumes from
            # the previous epoch, which trims this row and writes it again (never a missing row).
            log.append(row)
            saver.save_latest(payload, epoch)
            print(f"epoch {epoch}: loss {row['loss']:.4f}  val PSNR {row['psnr']:.2f} dB  "
                  f"SSIM({config.val.ssim}) {row['ssim']:.4f}  lr {lr:.2e}  {row['seconds']:.1f}s")
        ddp.barrier()
    if not main_process:
        return None
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
