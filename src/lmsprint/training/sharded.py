"""Sharded weights and optimizer state on disk, through `torch.distributed.checkpoint` (DCP).

Under `data_parallel` fsdp a checkpoint is `checkpoints/<name>.pt` (everything but the weights and the optimizer
state: step, clock, every rank's RNG and accumulators; `state.py`) plus a DCP folder next to it, named in the
.pt's `sharded` key, holding `{"model": ..., "optimizer": ...}` as `get_state_dict` gives them (FQN-keyed,
DTensor shards). DCP stores each shard with its global offsets, so the folder loads into any number of processes.

- `save_shards(model, optimizer, path)`: every rank writes its shards into `path` (a fresh folder; DCP's
  coordinator writes the metadata last, after every rank's data). The caller renames it into place: atomic.
  A full disk (or unwritable folder) on any rank is a `CheckpointError` on every rank (DCP gathers the failures);
  the caller removes the unfinished folder.
- `load_shards(model, optimizer, path)`: read a folder into this process's (sharded or plain) model and optimizer.
- `plain_model_state(path)` / `load_plain_model(model, path)`: the whole weights as plain CPU tensors / into a
  plain model, in one process without any process group (`lmsprint eval`, `generate`, `export`).
- `shard_dirs(ckpt_dir)`, `SHARDS`: the folder naming (`<ckpt>.shards-<step>-<tag>`, temporaries start with '.').
"""

from __future__ import annotations

import os
import warnings

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.metadata import TensorStorageMetadata
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from ..errors import CheckpointError
from ..files import write_failure

SHARDS = ".shards-"
_HINT = "resume from another run or start a new one without `resume`"


def shard_dir_name(ckpt_name: str, step: int, tag: str) -> str:
    """`latest.pt` -> `latest.shards-<step>-<tag>`."""
    return f"{os.path.splitext(ckpt_name)[0]}{SHARDS}{int(step)}-{tag}"


def shard_dirs(ckpt_dir: str, ckpt_name: str) -> list[str]:
    """Names of the shard folders (finished or temporary) of checkpoint `ckpt_name` in `ckpt_dir`."""
    stem = os.path.splitext(ckpt_name)[0] + SHARDS
    if not os.path.isdir(ckpt_dir):
        return []
    return sorted(n for n in os.listdir(ckpt_dir) if n.lstrip(".").startswith(stem))


def save_shards(model: torch.nn.Module, optimizer, path: str) -> None:
    """Collective: every rank writes its shards of the model and optimizer state into the new folder `path`."""
    msd, osd = get_state_dict(model, optimizer)
    try:
        dcp.save({"model": msd, "optimizer": osd}, checkpoint_id=path)
    except CheckpointException as e:  # a BaseException holding {rank: (exception, stack)} for every failed rank
        failed = {rank: f[0] if isinstance(f, tuple) else f for rank, f in e.failures.items()}
        why = {rank: write_failure(exc) for rank, exc in failed.items()}
        if not why or None in why.values():
            raise  # not a failed write: a bug, shown with its traceback
        ranks = ", ".join(map(str, sorted(why)))
        raise CheckpointError(f"cannot write checkpoint shards {path} (rank {ranks}): {next(iter(why.values()))}; "
                              "any earlier checkpoint is kept; free space (or make the folder writable) and "
                              "continue with `resume`") from None


def _missing(path: str) -> CheckpointError:
    return CheckpointError(f"checkpoint shards {path} are missing or corrupt (no .metadata); {_HINT}")


def load_shards(model: torch.nn.Module, optimizer, path: str) -> None:
    """Collective: load the folder `path` into `model` and `optimizer` (any sharding, any number of processes)."""
    if not os.path.isfile(os.path.join(path, ".metadata")):
        raise _missing(path)
    msd, osd = get_state_dict(model, optimizer)
    sd = {"model": msd, "optimizer": osd}
    dcp.load(sd, checkpoint_id=path)
    set_state_dict(model, optimizer, model_state_dict=sd["model"], optim_state_dict=sd["optimizer"])


def plain_model_state(path: str) -> dict:
    """The weights of shard folder `path` as one plain {name: CPU tensor} dict, read in this single process without
    a process group: empty tensors shaped from DCP's metadata, filled by `dcp.load` (public API only)."""
    if not os.path.isfile(os.path.join(path, ".metadata")):
        raise _missing(path)
    meta = dcp.FileSystemReader(path).read_metadata().state_dict_metadata
    template = {k[len("model."):]: torch.empty(m.size, dtype=m.properties.dtype) for k, m in meta.items()
                if k.startswith("model.") and isinstance(m, TensorStorageMetadata)}
    sd = {"model": template}
    with warnings.catch_warnings():  # "assuming the intent is to load in a single process": it is
        warnings.simplefilter("ignore", UserWarning)
        dcp.load(sd, checkpoint_id=path)
    return sd["model"]


def load_plain_model(model: torch.nn.Module, path: str) -> torch.nn.Module:
    """Load the weights of shard folder `path` into a plain (unsharded) `model` in this single process; no
    process group needed (DCP reads every shard a tensor spans)."""
    if not os.path.isfile(os.path.join(path, ".metadata")):
        raise _missing(path)
    sd = {"model": model.state_dict()}
    dcp.load(sd, checkpoint_id=path)
    model.load_state_dict(sd["model"])
    return model
