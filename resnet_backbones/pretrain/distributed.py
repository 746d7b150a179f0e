"""Process-group start-up from ``torchrun``'s environment: NCCL on GPUs, gloo on CPUs."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, List

import torch
import torch.distributed as dist

from ..engine.launch import init_process_group_from_torchrun


@dataclass
class DistContext:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device
    owns_group: bool  # we started the process group, so we end it

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str) -> DistContext:
    """One process alone, or one of ``WORLD_SIZE`` processes started by ``torchrun``.

    ``device`` is ``MODEL.DEVICE``: ``cuda`` uses GPU ``LOCAL_RANK`` of this machine.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"MODEL.DEVICE = {device!r} but no GPU is visible; set MODEL.DEVICE cpu")
        if local_rank >= torch.cuda.device_count():
            raise ValueError(f"process {rank} has LOCAL_RANK {local_rank} but this machine has "
                             f"{torch.cuda.device_count()} GPUs; start at most that many processes per machine")
        torch_device = torch.device("cuda", local_rank)
        torch.cuda.set_device(torch_device)
    elif device == "cpu":
        torch_device = torch.device("cpu")
    else:
        raise ValueError(f"MODEL.DEVICE = {device!r} is not allowed: cpu or cuda")
    owns = False
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if torch_device.type == "cuda" else "gloo"
        init_process_group_from_torchrun(backend, device_id=torch_device if backend == "nccl" else None)
        owns = True
    return DistContext(rank, local_rank, world_size, torch_device, owns)


def shutdown(ctx: DistContext) -> None:
    if ctx.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(values: List[float], ctx: DistContext) -> List[float]:
    """Sums over processes, in float64 so image counts stay exact."""
    if not ctx.distributed:
        return list(values)
    tensor = torch.tensor(values, dtype=torch.float64, device=ctx.device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def all_gather_objects(obj: Any, ctx: DistContext) -> List[Any]:
    if not ctx.distributed:
        return [obj]
    out: List[Any] = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out
