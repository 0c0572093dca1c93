"""Data-parallel plumbing: torchrun environment -> process group, DDP or FSDP2 wrapping, reductions.

`init_distributed(device, backend, data_parallel)` reads torchrun's RANK / WORLD_SIZE / LOCAL_RANK; with one
process it returns a single-process `World` (under `data_parallel` fsdp it still opens a one-process group, so
that one process shards, saves and loads exactly as N do). Backend: nccl on CUDA, gloo on CPU, unless one is given.
All helpers (`all_reduce_sum`, `all_reduce_mean`, `all_reduce_max`, `barrier`, `broadcast_object`,
`gather_object`) are no-ops in one process, so the training loop calls them unconditionally.

- `wrap_ddp(module, world)`: DistributedDataParallel over the loss head (`data_parallel` ddp).
- `shard_model(model, dtype, compile_kw)`: FSDP2 (`torch.distributed.fsdp.fully_shard`) on every Transformer block
  and then on the model (the root: embeddings, final norm, head). On CUDA with a bfloat16 compute dtype the
  parameters are all-gathered and computed in bfloat16 and gradients reduced in float32 (MixedPrecisionPolicy).
  With `compile` each block is compiled in place before it is sharded (per-block compilation: the FSDP hooks stay
  outside the compiled graphs). The root keeps its parameters unsharded after its forward, so the loss head
  (which uses the tied embedding as the output matrix outside the model's forward) reads whole tensors.
- `check_data_parallel(cfg)`: the combinations fsdp cannot run (ConfigError naming the options).
- `launched_rank()`: this process's rank under torchrun (0 otherwise); `quiet_under_torchrun()`: rank 0 alone
  speaks, so third-party warnings (DDP's FutureWarning, once per rank) are silenced on every rank under torchrun.
Device resolution is `hw.resolve_device`.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
import torch.distributed as dist
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.nn.parallel import DistributedDataParallel as DDP

from ..errors import ConfigError
from ..hw import resolve_device
from ..optim.optimizers import OPTIMIZERS


@dataclass
class World:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: str = "cpu"
    sharded: bool = False  # data_parallel fsdp: the model is sharded over the process group (of >= 1 process)
    ddp: list = field(default_factory=list, repr=False)  # the DDP modules `wrap_ddp` made (released by `destroy`)

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_spec: str = "auto", backend: Optional[str] = None, data_parallel: str = "ddp") -> World:
    """Initialise torch.distributed from torchrun's env vars (if WORLD_SIZE > 1) and pick this rank's device."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    device = resolve_device(device_spec)
    sharded = data_parallel == "fsdp"
    if world_size <= 1 and not sharded:
        return World(device=device)
    if world_size <= 1:  # fsdp in one process: a one-process group (in-memory store, no rendezvous)
        backend = backend or ("nccl" if device.startswith("cuda") else "gloo")
        if not dist.is_initialized():
            kw = {"device_id": torch.device(device)} if backend == "nccl" else {}
            dist.init_process_group(backend=backend, store=dist.HashStore(), rank=0, world_size=1, **kw)
        return World(device=device, sharded=True)
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
    return World(rank=rank, local_rank=local_rank, world_size=world_size, device=device, sharded=sharded)


def wrap_ddp(model: torch.nn.Module, world: World) -> torch.nn.Module:
    if not world.distributed:
        return model
    ids = [torch.device(world.device).index] if world.device.startswith("cuda") else None
    # the only buffers are constant RoPE tables: no need to broadcast them before every forward
    ddp = DDP(model, device_ids=ids, broadcast_buffers=False)
    world.ddp.append(ddp)
    return ddp


def shard_model(model: torch.nn.Module, dtype: torch.dtype, compile_kw: Optional[dict] = None) -> torch.nn.Module:
    """FSDP2 on each block, then on the model itself (see the module doc); returns the model, sharded in place."""
    cuda = next(model.parameters()).device.type == "cuda"
    kw = {}
    if cuda and dtype == torch.bfloat16:
        kw["mp_policy"] = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    for block in model.blocks:
        if compile_kw is not None:
            block.compile(**compile_kw)
        fully_shard(block, **kw)
    fully_shard(model, **kw)
    return model


def check_data_parallel(cfg) -> None:
    """ConfigError for what `data_parallel` fsdp cannot run."""
    t = cfg.train
    if t.data_parallel != "fsdp":
        return
    why = OPTIMIZERS[cfg.optim.opt].no_fsdp if cfg.optim.opt in OPTIMIZERS else None
    if why:
        ok = [name for name, spec in OPTIMIZERS.items() if spec.no_fsdp is None]
        raise ConfigError(f"`opt` {cfg.optim.opt} cannot run under `data_parallel` fsdp ({why}); use `data_parallel` "
                          f"ddp, or `opt` {', '.join(ok[:-1])} or {ok[-1]}")
    if t.dtype == "float16":
        raise ConfigError("`dtype` float16 is not supported under `data_parallel` fsdp (no sharded gradient scaler); "
                          "use `dtype` bfloat16 or float32")


def launched_rank() -> int:
    """This process's rank under torchrun (its RANK variable), 0 when run alone."""
    return int(os.environ.get("RANK", "0") or 0)


def quiet_under_torchrun() -> None:
    """Under torchrun (WORLD_SIZE > 1) no Python warnings on any rank: lmsprint's own messages are printed lines
    (on rank 0 only); what remains are other libraries' warnings, repeated by every rank (DDP's FutureWarning)."""
    if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
        warnings.simplefilter("ignore")


def all_reduce_sum(t: torch.Tensor, world: World) -> torch.Tensor:
    if world.distributed:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_reduce_mean(t: torch.Tensor, world: World) -> torch.Tensor:
    if world.distributed:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        t /= world.world_size
    return t


def all_reduce_max(t: torch.Tensor, world: World) -> torch.Tensor:
    if world.distributed:
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
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


def gather_object(obj: Any, world: World) -> Optional[list]:
    """[every rank's `obj`] on rank 0, None elsewhere."""
    if not world.distributed:
        return [obj]
    out = [None] * world.world_size if world.is_main else None
    dist.gather_object(obj, out, dst=0)
    return out


def destroy(world: World) -> None:
    """Release DDP's reducers, then the process group. Order matters: a reducer holding the last reference to the
    gloo group would destroy it when the module is garbage collected, joining gloo's threads while holding the GIL,
    and a gloo thread still releasing a tensor needs the GIL -- the process would hang at exit."""
    for m in world.ddp:
        m.reducer = m.logger = None  # the C++ reducer (and the logger holding it) go now, the group stays referenced
    world.ddp.clear()
    if (world.distributed or world.sharded) and dist.is_initialized():
        dist.destroy_process_group()
