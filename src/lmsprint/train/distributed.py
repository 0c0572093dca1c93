"""Data-parallel plumbing: torchrun environment -> process group, DDP wrapping, rank-0 writing, reductions.

`init_distributed(device, backend)` reads torchrun's RANK / WORLD_SIZE / LOCAL_RANK; with one process it does
nothing and returns a single-process `World`. Backend: nccl on CUDA, gloo on CPU, unless one is given.
All helpers (`all_reduce_sum`, `all_reduce_mean`, `barrier`, `broadcast_object`) are no-ops in one process,
so the training loop calls them unconditionally. Device resolution is `hw.resolve_device`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from ..errors import ConfigError
from ..hw import resolve_device


@dataclass
class World:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: str = "cpu"

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_spec: str = "auto", backend: Optional[str] = None) -> World:
    """Initialise torch.distributed from torchrun's env vars (if WORLD_SIZE > 1) and pick this rank's device."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    device = resolve_device(device_spec)
    if world_size <= 1:
        return World(device=device)
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.startswith("cuda"):
        device = f"cuda:{local_rank}"
        torch.cuda.set_device(local_rank)
    backend = backend or ("nccl" if device.startswith("cuda") else "gloo")
    if backend == "nccl" and not device.startswith("cuda"):
        raise ConfigError("`distributed_backend` nccl needs CUDA devices; use gloo on CPU")
    if not dist.is_initialized():
        kw = {"device_id": torch.device(device)} if backend == "nccl" else {}
        dist.init_process_group(backend=backend, **kw)
    return World(rank=rank, local_rank=local_rank, world_size=world_size, device=device)


def wrap_ddp(model: torch.nn.Module, world: World) -> torch.nn.Module:
    if not world.distributed:
        return model
    ids = [torch.device(world.device).index] if world.device.startswith("cuda") else None
    # the only buffers are constant RoPE tables: no need to broadcast them before every forward
    return DDP(model, device_ids=ids, broadcast_buffers=False)


def all_reduce_sum(t: torch.Tensor, world: World) -> torch.Tensor:
    if world.distributed:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_reduce_mean(t: torch.Tensor, world: World) -> torch.Tensor:
    if world.distributed:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        t /= world.world_size
    return t


def barrier(world: World) -> None:
    if world.distributed:
        dist.barrier()


def broadcast_object(obj: Any, world: World) -> Any:
    """rank 0's `obj` on every rank."""
    if not world.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def destroy(world: World) -> None:
    if world.distributed and dist.is_initialized():
        dist.destroy_process_group()
