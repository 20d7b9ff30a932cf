"""DistributedDataParallel under torchrun: NCCL on CUDA, gloo on CPU. One process per device;
rank 0 alone writes results. A single process (no torchrun) is world size 1 and needs nothing here."""
import os
from dataclasses import dataclass

import copy

import torch
import torch.distributed as dist

from harness.config import ConfigError


@dataclass
class Distributed:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def mean(self, values: dict) -> dict:
        """Average per-rank numbers over ranks (each rank saw an equal share of the global batch)."""
        if not self.enabled or not values:
            return values
        keys = sorted(values)
        tensor = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64,
                              device=_collective_device())
        dist.all_reduce(tensor)
        return {k: v / self.world_size for k, v in zip(keys, tensor.tolist())}

    def all_finite(self, loss: torch.Tensor) -> bool:
        """True on every rank only when the loss is finite on every rank, so all stop together."""
        finite = torch.isfinite(loss.detach()).to(torch.float32).reshape(1)
        if self.enabled:
            finite = finite.to(_collective_device())
            dist.all_reduce(finite, op=dist.ReduceOp.MIN)
        return bool(finite.item())


def _collective_device():
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def start(device_setting: str) -> Distributed:
    """Join the process group that torchrun describes in the environment (if any)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return Distributed()
    use_cuda = device_setting != "cpu" and torch.cuda.is_available()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device_id = None
    if use_cuda:
        check_processes_fit_devices(int(os.environ.get("LOCAL_WORLD_SIZE", world_size)), torch.cuda.device_count())
        torch.cuda.set_device(local_rank)
        device_id = torch.device("cuda", local_rank)
    if not dist.is_initialized():
        # device_id binds the process group to this rank's GPU at once (no guessing in NCCL).
        dist.init_process_group(backend="nccl" if use_cuda else "gloo", device_id=device_id)
    return Distributed(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank)


def check_processes_fit_devices(processes_per_node: int, visible_devices: int) -> None:
    """One process per GPU: more processes than visible GPUs would end in CUDA's 'invalid device
    ordinal' deep inside the first CUDA call."""
    if processes_per_node > visible_devices:
        raise ConfigError(f"torchrun started {processes_per_node} processes on this node but {visible_devices} CUDA "
                          f"device(s) are visible; use --nproc_per_node {visible_devices} or fewer "
                          "(or device: cpu to train with gloo on the CPU)")


def parameters_without_gradient(model: torch.nn.Module, example: torch.Tensor) -> list[str]:
    """Names of trainable parameters that one forward/backward of `example` leaves without a
    gradient. Runs on a copy, so the model's quantizer state and the RNG are untouched."""
    probe = copy.deepcopy(model)
    probe.zero_grad(set_to_none=True)
    outputs = probe(example)
    outputs = outputs if isinstance(outputs, (tuple, list)) else (outputs,)
    sum(o.float().sum() for o in outputs if torch.is_tensor(o) and o.requires_grad).backward()
    return [name for name, p in probe.named_parameters() if p.requires_grad and p.grad is None]


def find_unused_parameters(model: torch.nn.Module, config, device) -> bool:
    """DDP's find_unused_parameters: `speed.find_unused_parameters` when set, else true only when
    some parameter gets no gradient (it costs a graph traversal every step)."""
    if config.speed.find_unused_parameters is not None:
        return config.speed.find_unused_parameters
    from models import input_kind
    size = 64
    channels, size = (4, size // 2) if input_kind(config.model.name) == "packed" else (1, size)
    return bool(parameters_without_gradient(model, torch.zeros(1, channels, size, size, device=device)))


# Quantizer switches: equal on every rank, changed only by calibration. DDP would rewrite them from
# rank 0 before every forward, and the sync-free quantizers would then read them back from the GPU.
_RANK_INVARIANT_BUFFERS = ("observer_enabled", "fake_quant_enabled", "eps")


def wrap_model(model: torch.nn.Module, config, device) -> torch.nn.Module:
    """The model under DistributedDataParallel: on this rank's GPU (or gloo on CPU), searching for
    unused parameters only when needed, without re-broadcasting the quantizer switches each step."""
    ignored = [name for name, _ in model.named_buffers() if name.rsplit(".", 1)[-1] in _RANK_INVARIANT_BUFFERS]
    torch.nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, ignored)
    return torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None,
        find_unused_parameters=find_unused_parameters(model, config, device))


def stop(context: Distributed) -> None:
    if context.enabled and dist.is_initialized():
        dist.destroy_process_group()
