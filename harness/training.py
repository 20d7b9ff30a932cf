"""The training run, top to bottom: config -> checks -> networks (float, quantized, teacher) -> data ->
optimizer -> epochs of training with validation and checkpoints -> weights and the test-split report.

`run(config)` is what train.py calls, and what sweeps (sweeps/run.py), demo.py and ablation.py call in
their own process. One TrainState (checkpoints/training.py) carries what the epochs change; the
CheckpointSaver builds each payload from it and keeps the best; what stays fixed for the run travels
as one RunContext. Under torchrun every process runs this; rank 0 alone writes results.
"""
import contextlib
import json
import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from checkpoints.safe_load import load_torch_file
from checkpoints.training import CheckpointSaver, TrainState
from distill import Distiller
from harness import distributed, preemption, run_lock
from harness.config import ConfigError, dump_config
from harness.divergence import DivergenceGuard
from harness.evaluate import evaluate
from harness.evaluate_run import evaluate_checkpoint
from harness.export_run import export_run
from harness.loss import task_loss
from harness.records import MetricsLog
from harness.setup import (build_eval_dataset, build_float_model, build_train_loader, check_split_lists, data_source,
                           ensure_data,
                           resolve_device)
from harness.speed import Speed
from helpers.files import (check_writable, remove_folder, remove_stale_temporaries, safetensors_metadata,
                           save_safetensors_atomic, torch_save_atomic, write_csv_atomic, write_text_atomic)
from models import declared_outputs, input_kind as model_input_kind
from quant import (calibrate, format_quant_plan, load_quantized_state, param_groups, prepare_quantized_model,
                   quant_plan_rows, quantized_state, write_quant_plan)
from quant.cost import plan_cost_summary


@dataclass
class RunContext:
    """What stays fixed for the whole run, beside the TrainState that the epochs change."""
    config: object
    ddp: distributed.Distributed
    device: torch.device
    speed: Speed
    saver: CheckpointSaver
    distiller: Optional[Distiller]
    divergence: DivergenceGuard
    log: Optional[MetricsLog]  # rank 0 only


# ----------------------------------------------------------------------------- the run

def run(config, resume=False, overwrite=False, take_over=False, check_only=False):
    """Train as `config` says; returns the summary dict also written to `summary.json` (None on ranks > 0).
    Rank 0 alone owns the run folder (harness/run_lock.py): a second run of the same experiment is
    refused before any work. `check_only`: every check a run makes before its work, then return None;
    nothing is written."""
    if check_only:
        busy = run_lock.busy_reason(config.run_dir)
        if busy:
            raise run_lock.RunLocked(busy)
        return train(config, resume, overwrite, distributed.Distributed(), check_only=True)  # one process
    owner = os.environ.get("RANK", "0") == "0"
    with run_lock.held(config.run_dir, "train.py", take_over) if owner else contextlib.nullcontext():
        ddp = distributed.start(config.device)
        try:
            with preemption.stop_signals_handled():  # SIGTERM/SIGUSR1/SIGUSR2: stop after the epoch's checkpoint
                return train(config, resume, overwrite, ddp)
        finally:
            distributed.stop(ddp)


def train(config, resume, overwrite, ddp, check_only=False):
    device = resolve_device(config, ddp.local_rank if ddp.enabled else None)
    speed = Speed(config, device)  # speed.* and deterministic (harness/speed.py)
    seed_everything(config.seed)  # before the networks are built: their initialisation draws from it

    # Everything the config names is checked before any work and before anything on disk changes:
    # the run folder, weights and checkpoints (loaded safely), special layers, distilled layers, lists.
    check_run_folder(config, resume, overwrite)
    weights_path = weights_destination(config) if not config.quant else None
    if ddp.is_main and (weights_path is not None or config.onnx):  # written only after training
        check_writable(config.artifacts_dir, "output.artifacts_dir", create=not check_only)
    saver = CheckpointSaver(config.run_dir / "checkpoints", config.output.keep_best, create=False,
                            model_state=quantized_state if config.quant else (lambda model: model.state_dict()),
                            quantized=config.quant, config=config.model_dump(mode="json"),
                            grad_scaler=speed.state_dict)
    checkpoint_path, checkpoint = None, None
    if resume and not check_only:  # (resuming sets damaged checkpoints aside: a check changes nothing)
        saver.remove_stale_temporaries()
        checkpoint_path, checkpoint = saver.load_for_resume()
    model, needs_calibration = build_student(config, checkpoint)
    model = model.to(device)
    distiller = build_distiller(config, model)
    if distiller is not None:
        distiller.to(device)
    if check_only:
        # The embedded stand-in is not generated by a check: its lists are read when they exist.
        if config.data.synthetic is None or (Path(config.data.root) / config.data.train_list).is_file():
            check_split_lists(config)
        check_writable(config.run_dir, "output.results_dir", create=False)
        print(f"checks passed: experiment {config.experiment} on {device} would write {config.run_dir}")
        return None

    train_loader, val_set = prepare_data_and_folder(config, ddp, device, saver, overwrite and not resume,
                                                    checkpoint_path, checkpoint)
    if needs_calibration:
        calibrate_student(config, model, train_loader, device)
    if config.quant and ddp.is_main:
        rows = quant_plan_rows(model)
        write_quant_plan(rows, config.run_dir / "quant_plan.csv")
        print(format_quant_plan(rows))

    model = speed.prepare(model)
    if distiller is not None:
        distiller.teacher = speed.wrap(speed.prepare(distiller.teacher))
    optimizer = make_optimizer(config, model)  # after calibration, which resizes per-channel quantizer scales
    state = TrainState(model=model, network=model, optimizer=optimizer, scheduler=make_scheduler(optimizer, config))
    if checkpoint is not None:
        state.restore(checkpoint)
        speed.load_state_dict(checkpoint.get("grad_scaler"))
        if ddp.is_main:
            saver.drop_after(checkpoint["epoch"])
    if ddp.enabled:
        state.network = distributed.wrap_model(model, config, device)
    state.network = speed.wrap(state.network)
    log = MetricsLog(config.run_dir, config.output.tensorboard, checkpoint["epoch"] if checkpoint else None) \
        if ddp.is_main else None
    # A loss far above its running median stops the run (harness/divergence.py).
    context = RunContext(config, ddp, device, speed, saver, distiller, DivergenceGuard(), log)

    for epoch in range(state.epoch + 1, config.schedule.epochs + 1):
        started = time.time()
        means = train_one_epoch(state, train_loader, epoch, context)
        lr = optimizer.param_groups[0]["lr"]
        state.scheduler.step()
        state.epoch = epoch
        if ddp.is_main:
            validate_and_checkpoint(state, val_set, means, lr, started, context)
        ddp.barrier()
        preemption.stop_if_requested(saver.latest(), ddp)
    if config.schedule.epochs == 0 and checkpoint is None and ddp.is_main:
        # No training: a quantized run is calibration-only PTQ; it is validated and saved as epoch 0
        # so that the test report, sweep tables and export treat it like a trained run.
        nothing = {"loss": math.nan, "task_loss": math.nan}
        validate_and_checkpoint(state, val_set, nothing, optimizer.param_groups[0]["lr"], time.time(), context)
    if not ddp.is_main:
        return None
    log.close()
    return finish(config, saver, state, device, weights_path)


# ----------------------------------------------------------------------------- one epoch

def train_one_epoch(state, loader, epoch, context):
    """`iterations` steps with gradient accumulation; returns the epoch's mean loss terms over ranks."""
    config, ddp, device, saver = context.config, context.ddp, context.device, context.saver
    state.network.train()
    iterations = config.schedule.iters_per_epoch or len(loader)
    accumulate = config.schedule.grad_accum_steps
    sums, count = {}, 0
    progress = tqdm(batches_for_epoch(loader, epoch, iterations), total=iterations, dynamic_ncols=True,
                    desc=f"epoch {epoch}/{config.schedule.epochs}", disable=not ddp.is_main)
    state.optimizer.zero_grad(set_to_none=True)
    for step, batch in enumerate(progress, start=1):
        batch = to_device(batch, device)
        if context.distiller is None:
            outputs = state.network(batch["input"])
        else:  # the student's forward, the teacher's and the feature loss in one call
            outputs, distill_total, distill_terms = context.distiller.forward(state.network, batch["input"])
        loss = task_loss(outputs, batch, config.loss, declared=declared_outputs(config.model.name))
        terms = {"task_loss": loss.item()}
        if context.distiller is not None:
            loss = loss + distill_total
            terms.update({f"distill[{name}]": value.item() for name, value in distill_terms.items()})
        if not ddp.all_finite(loss):
            raise FloatingPointError(f"loss is not finite at epoch {epoch}, step {step} (batch "
                                     f"{', '.join(batch['name'])}); last good checkpoint: {saver.latest()}")
        context.divergence.check(loss, epoch, step, saver.latest, ddp)
        context.speed.backward(loss / accumulate)
        if step % accumulate == 0 or step == iterations:
            context.speed.step(state.optimizer, state.model.parameters(), config.optim.grad_clip)
            state.optimizer.zero_grad(set_to_none=True)
        terms["loss"] = loss.item()
        for key, value in terms.items():
            sums[key] = sums.get(key, 0.0) + value
        count += 1
        progress.set_postfix(loss=f"{sums['loss'] / count:.4f}")
    progress.close()
    return ddp.mean({key: value / count for key, value in sums.items()})


def validate_and_checkpoint(state, val_set, means, lr, started, context):
    """Validation (every `val.every` epochs and the last), the metrics row, best and latest checkpoints."""
    config, epoch = context.config, state.epoch
    row = {"epoch": epoch, "loss": means["loss"], "task_loss": means["task_loss"]}
    row.update({k: v for k, v in means.items() if k.startswith("distill[")})
    row.update({"psnr": math.nan, "ssim": math.nan, "ssim_variant": config.val.ssim,
                "metric_precision": config.val.metric_precision, "lr": lr})
    per_image = None
    if epoch % config.val.every == 0 or epoch == config.schedule.epochs:
        scores, per_image = evaluate(state.model, val_set, context.device, config.val.ssim, config.val.tile_size,
                                     config.val.tile_overlap, description=f"validate {epoch}",
                                     statistics_passes=config.val.tile_statistics_passes,
                                     metric_precision=config.val.metric_precision)
        row.update(psnr=scores["psnr"], ssim=scores["ssim"])
    row["seconds"] = time.time() - started

    # Best first, so that a kill between the two writes never loses the best.
    if context.saver.save_if_best(state, row["psnr"], row["ssim"]):
        write_csv_atomic(config.run_dir / "best_per_image.csv",
                         [{"epoch": epoch, **r, "ssim_variant": config.val.ssim,
                           "metric_precision": config.val.metric_precision} for r in per_image])
    # The metrics row goes before the latest checkpoint: a kill between the two resumes from the
    # previous epoch, which trims this row and writes it again (never a missing row).
    context.log.append(row)
    context.saver.save_epoch(state, row["psnr"], row["ssim"])
    print(f"epoch {epoch}: loss {row['loss']:.4f}  val PSNR {row['psnr']:.2f} dB  "
          f"SSIM({config.val.ssim}) {row['ssim']:.4f}  lr {lr:.2e}  {row['seconds']:.1f}s")


# ----------------------------------------------------------------------------- after the last epoch

def finish(config, saver, state, device, weights_path):
    """Weights for quantized runs, then the test-split report next to the naive baseline, summary.json
    and (onnx: true) the ONNX export. Weights and a summary are written before the test evaluation, so
    a failure there loses neither."""
    checkpoint = saver.best() or saver.latest()
    summary = {"experiment": config.experiment, "best_epoch": state.best_epoch, "best_val_psnr": state.best_psnr,
               "checkpoint": str(checkpoint)}
    if config.quant:  # the quant plan's cost totals, for sweep tables (quant/cost.py)
        summary["cost"] = plan_cost_summary(config.run_dir / "quant_plan.csv")
    if weights_path is not None:
        # The authors' weight format, at a stable path that quantized runs name as load_model.
        weights = load_torch_file(checkpoint, what="best checkpoint")["model"]
        torch_save_atomic({"model": weights}, weights_path)
        # The .safetensors copy also records which run wrote the pair (see weights_destination).
        save_safetensors_atomic(weights, weights_path.with_suffix(".safetensors"),
                                metadata={"run_dir": str(config.run_dir.resolve())})
        summary["weights"] = str(weights_path)
        print(f"full-precision weights for quantized runs: {weights_path} (and .safetensors)")
    write_text_atomic(config.run_dir / "summary.json", json.dumps(summary, indent=2))
    report = evaluate_checkpoint(config, checkpoint, split="test", device=device, with_baseline=True)
    summary.update({f"test_{k}": v for k, v in report.items()})
    write_text_atomic(config.run_dir / "summary.json", json.dumps(summary, indent=2))
    if config.onnx:
        export_run(config, checkpoint, config.artifacts_dir / config.experiment)
    print(f"results in {config.run_dir}")
    return summary


# ----------------------------------------------------------------------------- the pieces, in order of use

def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


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
    return Distiller(student, build_float_model(config, config.load_teacher_model), config.distill_config,
                     config.distill_coeff, config.distill.feature_loss, extra_layer_names=config.output_layer_list)


def prepare_data_and_folder(config, ddp, device, saver, replace_run, checkpoint_path, checkpoint):
    """Every set-up step that the processes of a DDP run order among themselves: rank 0 generates the
    data set, prepares the run folder and decodes every raw file once into the on-disk cache while the
    other ranks wait, then reads it. Returns (train loader, validation set on rank 0, else None)."""
    if ddp.is_main:
        ensure_data(config)  # generates the embedded stand-in on first use
    ddp.barrier()
    check_split_lists(config)

    # The run folder: a replaced run goes only now, once nothing before can fail.
    run_dir = config.run_dir
    if ddp.is_main:
        if replace_run and run_dir.exists():
            remove_folder(run_dir, "--overwrite")
        check_writable(run_dir)
        remove_stale_temporaries(run_dir)
        saver.folder.mkdir(parents=True, exist_ok=True)
        write_text_atomic(run_dir / "config.yaml", dump_config(config))
        print(f"experiment {config.experiment} on {device}"
              f"{f' x {ddp.world_size} processes' if ddp.enabled else ''}; results in {run_dir}")
        if checkpoint is not None:
            print(f"resuming from {checkpoint_path} (epoch {checkpoint['epoch']})")

    input_kind = model_input_kind(config.model.name)
    if not ddp.is_main:
        ddp.barrier()  # rank 0 fills the raw cache first
    train_loader = build_train_loader(config, input_kind, config.seed, ddp.rank, ddp.world_size, device)
    if ddp.is_main:
        ddp.barrier()
        # Checkpoints name the camera(s) they were trained on: enhance.py warns about files from another.
        saver.metadata["data_cameras"] = data_source(config).cameras(train_loader.dataset.pairs)
    val_set = build_eval_dataset(config, "val", input_kind) if ddp.is_main else None
    return train_loader, val_set


def calibrate_student(config, model, train_loader, device):
    # The same global batches on every rank (not each rank's share), so a DDP run calibrates
    # exactly as a single process does.
    loader = DataLoader(train_loader.dataset, batch_size=config.batch_size, num_workers=train_loader.num_workers,
                        sampler=DistributedSampler(train_loader.dataset, num_replicas=1, rank=0, seed=config.seed))
    batches = [to_device(b, device)["input"] for b, _ in zip(loader, range(config.quant_scheme.calibration_batches))]
    calibrate(model, batches, device)


def make_optimizer(config, model):
    if config.quant:
        groups = param_groups(model, config.optim.lr, config.quant_scheme.quantizer_lr)
    else:
        groups = [{"params": [p for p in model.parameters() if p.requires_grad]}]
    return torch.optim.Adam(groups, lr=config.optim.lr, betas=config.optim.betas,
                            weight_decay=config.optim.weight_decay)


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
