"""DistributedDataParallel under torchrun: NCCL on CUDA, gloo on CPU. One process per device;
rank 0 alone writes results. A single process (no torchrun) is world size 1 and needs nothing here."""
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


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
    if use_cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return Distributed(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank)


def stop(context: Distributed) -> None:
    if context.enabled and dist.is_initialized():
        dist.destroy_process_group()
