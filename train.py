"""Train (and optionally quantize and distil) a low-light RAW network from one YAML file.

    python train.py --config configfile/demo_fp.yaml [--set schedule.epochs=3 ...] [--resume]

The loop below reads top to bottom: config -> data -> networks (float, quantized, teacher) ->
optimizer -> epochs of training with validation and checkpoints -> a final test-split report.
"""
import argparse
import json
import math
import random
import sys
import time

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from core import distributed, preemption
from core.checkpoint import CheckpointSaver, restore_training, training_payload
from core.config import ConfigError, dump_config
from core.divergence import DivergenceGuard
from core.evaluate import evaluate
from core.files import (check_writable, remove_folder, remove_stale_temporaries, safetensors_metadata,
                        save_safetensors_atomic, torch_save_atomic, write_csv_atomic, write_text_atomic)
from core.loss import task_loss
from core.records import MetricsLog
from core.runner import load_entry_config, run_entry_point
from core.safe_load import load_torch_file
from core.setup import (build_eval_dataset, build_float_model, build_train_loader, check_split_lists, data_source,
                        ensure_data, resolve_device)
from core.speed import Speed
from models import input_kind as model_input_kind


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


# ----------------------------------------------------------------------------- before any work

def check_run_folder(config, resume, overwrite):
    """Refuse to mix a new run into an old one; nothing is changed on disk here."""
    run_dir = config.run_dir
    if resume and not (run_dir / "checkpoints").is_dir():
        raise ConfigError(f"--resume: no checkpoints in {run_dir / 'checkpoints'} to resume from")
    if not resume and (run_dir / "metrics.csv").exists() and not overwrite:
        raise ConfigError(f"{run_dir} already holds a run; pass --resume to continue it, --overwrite to replace "
                          "it, or set output.experiment to a new name")


def weights_destination(config):
    """Where a full-precision run leaves its weights for quantized runs (`load_model`). Another run's
    weights at that path are never replaced: that is checked here, before any work."""
    path = config.artifacts_dir / f"{config.experiment}.pth"
    if path.exists():
        owner = safetensors_metadata(path.with_suffix(".safetensors")).get("run_dir")
        if owner != str(config.run_dir.resolve()):
            raise ConfigError(f"output.artifacts_dir: {path} holds the weights of another run ({owner or 'unknown'}); "
                              "set output.experiment to a new name or output.artifacts_dir to another folder")
    return path


def build_student(config, checkpoint):
    """The network that is trained, with its weights: float, or MQBench-prepared (special layers applied
    and checked) with a saved quantized state. Returns (model, needs_calibration)."""
    model = build_float_model(config, None if (checkpoint or config.load_quant_model) else config.load_model)
    if not config.quant:
        if checkpoint is not None:
            model.load_state_dict(checkpoint["model"])
        return model, False
    from quant import load_quantized_state, prepare_quantized_model
    qmodel = prepare_quantized_model(model, config.quant_scheme, config.extra_quantizer_dict.special_layer,
                                     config.quantize_output)
    saved = checkpoint
    if saved is None and config.load_quant_model:
        saved = load_torch_file(config.load_quant_model, what="load_quant_model")
        if not (isinstance(saved, dict) and saved.get("quantized")):
            raise ConfigError(f"load_quant_model: {config.load_quant_model} is not a quantized checkpoint "
                              "(use load_model for full-precision weights)")
    if saved is None:
        return qmodel, True
    load_quantized_state(qmodel, saved["model"])
    return qmodel, False


def build_distiller(config, student):
    """The teacher and its taps (every distilled layer name checked), or None without distillation."""
    if not (config.quant and config.quant_teacher):
        return None
    if not config.distill_config:
        print("note: quant_teacher is true but distill_config names no layers; training without distillation")
        return None
    from distill import Distiller
    return Distiller(student, build_float_model(config, config.load_teacher_model), config.distill_config,
                     config.distill_coeff, config.distill.feature_loss, extra_layer_names=config.output_layer_list)


def calibrate_student(config, model, train_loader, device):
    from quant import calibrate
    # The same global batches on every rank (not each rank's share), so a DDP run calibrates
    # exactly as a single process does.
    loader = DataLoader(train_loader.dataset, batch_size=config.batch_size, num_workers=train_loader.num_workers,
                        sampler=DistributedSampler(train_loader.dataset, num_replicas=1, rank=0, seed=config.seed))
    batches = [to_device(b, device)["input"] for b, _ in zip(loader, range(config.quant_scheme.calibration_batches))]
    calibrate(model, batches, device)


def make_optimizer(config, model):
    # Built after calibration, which resizes per-channel quantizer scales.
    if config.quant:
        from quant import param_groups
        groups = param_groups(model, config.optim.lr, config.quant_scheme.quantizer_lr)
    else:
        groups = [{"params": [p for p in model.parameters() if p.requires_grad]}]
    return torch.optim.Adam(groups, lr=config.optim.lr, betas=config.optim.betas,
                            weight_decay=config.optim.weight_decay)


# ----------------------------------------------------------------------------- one epoch

def train_one_epoch(network, model, loader, epoch, config, optimizer, distiller, ddp, device, saver, speed,
                    divergence):
    """`iterations` steps with gradient accumulation; returns the epoch's mean loss terms over ranks."""
    network.train()
    iterations = config.schedule.iters_per_epoch or len(loader)
    accumulate = config.schedule.grad_accum_steps
    sums, count = {}, 0
    progress = tqdm(batches_for_epoch(loader, epoch, iterations), total=iterations, dynamic_ncols=True,
                    desc=f"epoch {epoch}/{config.schedule.epochs}", disable=not ddp.is_main)
    optimizer.zero_grad(set_to_none=True)
    for step, batch in enumerate(progress, start=1):
        batch = to_device(batch, device)
        outputs = network(batch["input"])
        loss = task_loss(outputs, batch, config.loss)
        terms = {"task_loss": loss.item()}
        if distiller is not None:
            distill_total, distill_terms = distiller(batch["input"])
            loss = loss + distill_total
            terms.update({f"distill[{name}]": value.item() for name, value in distill_terms.items()})
        if not ddp.all_finite(loss):
            raise FloatingPointError(f"loss is not finite at epoch {epoch}, step {step} (batch "
                                     f"{', '.join(batch['name'])}); last good checkpoint: {saver.latest()}")
        divergence.check(loss, epoch, step, saver.latest, ddp)
        speed.backward(loss / accumulate)
        if step % accumulate == 0 or step == iterations:
            speed.step(optimizer, model.parameters(), config.optim.grad_clip)
            optimizer.zero_grad(set_to_none=True)
        terms["loss"] = loss.item()
        for key, value in terms.items():
            sums[key] = sums.get(key, 0.0) + value
        count += 1
        progress.set_postfix(loss=f"{sums['loss'] / count:.4f}")
    progress.close()
    return ddp.mean({key: value / count for key, value in sums.items()})


def validate_and_checkpoint(config, epoch, model, val_set, device, means, lr, started, optimizer, scheduler,
                            saver, log, best, speed):
    """Validation (every `val.every` epochs and the last), the metrics row, best and latest checkpoints.
    `best` is (PSNR, epoch) so far; returns it updated."""
    best_psnr, best_epoch = best
    row = {"epoch": epoch, "loss": means["loss"], "task_loss": means["task_loss"]}
    row.update({k: v for k, v in means.items() if k.startswith("distill[")})
    row.update({"psnr": math.nan, "ssim": math.nan, "ssim_variant": config.val.ssim,
                "metric_precision": config.val.metric_precision, "lr": lr})
    per_image = None
    if epoch % config.val.every == 0 or epoch == config.schedule.epochs:
        scores, per_image = evaluate(model, val_set, device, config.val.ssim, config.val.tile_size,
                                     config.val.tile_overlap, description=f"validate {epoch}",
                                     statistics_passes=config.val.tile_statistics_passes,
                                     metric_precision=config.val.metric_precision)
        row.update(psnr=scores["psnr"], ssim=scores["ssim"])
    row["seconds"] = time.time() - started

    def payload():
        return training_payload(model_state=student_state(model, config.quant), quantized=config.quant,
                                optimizer=optimizer, scheduler=scheduler, epoch=epoch,
                                config=config.model_dump(mode="json"), psnr=row["psnr"], ssim=row["ssim"],
                                best_psnr=best_psnr, best_epoch=best_epoch, grad_scaler=speed.state_dict())

    # Best first, so that a kill between the two writes never loses the best.
    if not math.isnan(row["psnr"]) and row["psnr"] > best_psnr:
        best_psnr, best_epoch = row["psnr"], epoch
        saver.save_best(payload(), epoch, best_psnr)
        write_csv_atomic(config.run_dir / "best_per_image.csv",
                         [{"epoch": epoch, **r, "ssim_variant": config.val.ssim,
                           "metric_precision": config.val.metric_precision} for r in per_image])
    # The metrics row goes before the latest checkpoint: a kill between the two resumes from the
    # previous epoch, which trims this row and writes it again (never a missing row).
    log.append(row)
    saver.save_latest(payload(), epoch)
    print(f"epoch {epoch}: loss {row['loss']:.4f}  val PSNR {row['psnr']:.2f} dB  "
          f"SSIM({config.val.ssim}) {row['ssim']:.4f}  lr {lr:.2e}  {row['seconds']:.1f}s")
    return best_psnr, best_epoch


# ----------------------------------------------------------------------------- after the last epoch

def finish(config, saver, best, device, weights_path):
    """Weights for quantized runs, then the test-split report next to the naive baseline, summary.json
    and (onnx: true) the ONNX export. Weights and a summary are written before the test evaluation, so
    a failure there loses neither."""
    from core.checkpoint_eval import evaluate_checkpoint
    best_psnr, best_epoch = best
    checkpoint = saver.best() or saver.latest()
    summary = {"experiment": config.experiment, "best_epoch": best_epoch, "best_val_psnr": best_psnr,
               "checkpoint": str(checkpoint)}
    if config.quant:  # the quant plan's cost totals, for sweep tables (quant/cost.py)
        from quant.cost import plan_cost_summary
        summary["cost"] = plan_cost_summary(config.run_dir / "quant_plan.csv")
    if weights_path is not None:
        # The authors' weight format, at a stable path that quantized runs name as load_model.
        state = load_torch_file(checkpoint, what="best checkpoint")["model"]
        torch_save_atomic({"model": state}, weights_path)
        # The .safetensors copy also records which run wrote the pair (see weights_destination).
        save_safetensors_atomic(state, weights_path.with_suffix(".safetensors"),
                                metadata={"run_dir": str(config.run_dir.resolve())})
        summary["weights"] = str(weights_path)
        print(f"full-precision weights for quantized runs: {weights_path} (and .safetensors)")
    write_text_atomic(config.run_dir / "summary.json", json.dumps(summary, indent=2))
    report = evaluate_checkpoint(config, checkpoint, split="test", device=device, with_baseline=True)
    summary.update({f"test_{k}": v for k, v in report.items()})
    write_text_atomic(config.run_dir / "summary.json", json.dumps(summary, indent=2))
    if config.onnx:
        from core.export import export_run
        export_run(config, checkpoint, config.artifacts_dir / config.experiment)
    print(f"results in {config.run_dir}")
    return summary


# ----------------------------------------------------------------------------- the run

def run(config, resume=False, overwrite=False):
    """Train as `config` says; returns the summary dict also written to `summary.json`.
    Under torchrun every process runs this; rank 0 alone writes results."""
    ddp = distributed.start(config.device)
    try:
        with preemption.stop_signals_handled():  # SIGTERM/SIGUSR1/SIGUSR2: stop after the epoch's checkpoint
            return _run(config, resume, overwrite, ddp)
    finally:
        distributed.stop(ddp)


def _run(config, resume, overwrite, ddp):
    run_dir, main_process = config.run_dir, ddp.is_main
    device = resolve_device(config, ddp.local_rank if ddp.enabled else None)
    speed = Speed(config, device)  # speed.* and deterministic (core/speed.py)
    random.seed(config.seed)  # before the networks are built: their initialisation draws from it
    np.random.seed(config.seed)
    torch.manual_seed(config.seed)

    # Everything the config names is checked before any work and before anything on disk changes:
    # the run folder, weights and checkpoints (loaded safely), special layers, distilled layers, lists.
    check_run_folder(config, resume, overwrite)
    weights_path = weights_destination(config) if not config.quant else None
    saver = CheckpointSaver(run_dir / "checkpoints", config.output.keep_best, create=False)
    checkpoint = None
    if resume:
        saver.remove_stale_temporaries()
        checkpoint_path, checkpoint = saver.load_for_resume()
    model, needs_calibration = build_student(config, checkpoint)
    model = model.to(device)
    distiller = build_distiller(config, model)
    if distiller is not None:
        distiller.to(device)
    if main_process:
        ensure_data(config)  # generates the embedded stand-in on first use
    ddp.barrier()
    check_split_lists(config)

    # The run folder: a replaced run goes only now, once nothing above can fail.
    if main_process:
        if overwrite and not resume and run_dir.exists():
            remove_folder(run_dir, "--overwrite")
        check_writable(run_dir)
        remove_stale_temporaries(run_dir)
        saver.folder.mkdir(parents=True, exist_ok=True)
        write_text_atomic(run_dir / "config.yaml", dump_config(config))
        print(f"experiment {config.experiment} on {device}"
              f"{f' x {ddp.world_size} processes' if ddp.enabled else ''}; results in {run_dir}")
        if checkpoint is not None:
            print(f"resuming from {checkpoint_path} (epoch {checkpoint['epoch']})")

    # Data: rank 0 decodes every raw file once into the on-disk cache; the others then read it.
    input_kind = model_input_kind(config.model.name)
    if not main_process:
        ddp.barrier()
    train_loader = build_train_loader(config, input_kind, config.seed, ddp.rank, ddp.world_size, device)
    if main_process:
        ddp.barrier()
        # Checkpoints name the camera(s) they were trained on: enhance.py warns about files from another.
        saver.metadata["data_cameras"] = data_source(config).cameras(train_loader.dataset.pairs)
    val_set = build_eval_dataset(config, "val", input_kind) if main_process else None

    if needs_calibration:
        calibrate_student(config, model, train_loader, device)
    if config.quant and main_process:
        from quant import format_quant_plan, quant_plan_rows, write_quant_plan
        rows = quant_plan_rows(model)
        write_quant_plan(rows, run_dir / "quant_plan.csv")
        print(format_quant_plan(rows))
    model = speed.prepare(model)
    if distiller is not None:
        distiller.teacher = speed.wrap(speed.prepare(distiller.teacher))
    optimizer = make_optimizer(config, model)
    scheduler = make_scheduler(optimizer, config)
    start_epoch, best = 1, (-math.inf, None)
    if checkpoint is not None:
        start_epoch, *best = restore_training(checkpoint, optimizer, scheduler)
        best = tuple(best)
        speed.load_state_dict(checkpoint.get("grad_scaler"))
        if main_process:
            saver.drop_after(checkpoint["epoch"])
    network = model
    if ddp.enabled:
        network = distributed.wrap_model(model, config, device)
    network = speed.wrap(network)
    log = MetricsLog(run_dir, config.output.tensorboard, checkpoint["epoch"] if checkpoint else None) \
        if main_process else None

    divergence = DivergenceGuard()  # a loss far above its running median stops the run (core/divergence.py)
    for epoch in range(start_epoch, config.schedule.epochs + 1):
        started = time.time()
        means = train_one_epoch(network, model, train_loader, epoch, config, optimizer, distiller, ddp, device, saver,
                                speed, divergence)
        lr = optimizer.param_groups[0]["lr"]
        scheduler.step()
        if main_process:
            best = validate_and_checkpoint(config, epoch, model, val_set, device, means, lr, started, optimizer,
                                           scheduler, saver, log, best, speed)
        ddp.barrier()
        preemption.stop_if_requested(saver.latest(), ddp)
    if config.schedule.epochs == 0 and checkpoint is None and main_process:
        # No training: a quantized run is calibration-only PTQ; it is validated and saved as epoch 0
        # so that the test report, sweep tables and export treat it like a trained run.
        nothing = {"loss": math.nan, "task_loss": math.nan}
        best = validate_and_checkpoint(config, 0, model, val_set, device, nothing, optimizer.param_groups[0]["lr"],
                                       time.time(), optimizer, scheduler, saver, log, best, speed)
    if not main_process:
        return None
    log.close()
    return finish(config, saver, best, device, weights_path)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="YAML run config (see configfile/)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. --set schedule.epochs=3 (repeatable)")
    parser.add_argument("--resume", action="store_true", help="continue the run from its latest checkpoint")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier run of the same experiment")
    args = parser.parse_args(argv)
    config = load_entry_config(args.config, args.set)
    print(dump_config(config))
    if config.test:
        from core.checkpoint_eval import default_checkpoint, evaluate_checkpoint, evaluation_folder
        checkpoint = default_checkpoint(config)
        evaluate_checkpoint(config, checkpoint, split="test", with_baseline=True,
                            out_dir=evaluation_folder(config, "test", checkpoint, overwrite=args.overwrite))
        return None
    return run(config, resume=args.resume, overwrite=args.overwrite)


if __name__ == "__main__":
    sys.exit(run_entry_point(main, sys.argv[1:]))
