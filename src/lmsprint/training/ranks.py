"""A run over several processes: what each rank checkpoints, resuming on another number of processes, and keeping
FSDP's collectives in step.

- `gather_states(tr)`: collective; every rank's RNG and metric accumulators, as a list by rank on rank 0 (the
  checkpoint's `ranks`), with the `world_size` and the `global_batch` (sequences per optimizer step) that saved it
  and the run's config as its first checkpoint had it (`adapt_batch` changes only the per-process split).
  `restore_states(tr, st)`: each rank takes its own entry back, so a resume on as many processes is bit-identical
  to the uninterrupted run. On another number of processes the RNG is rank 0's and the saved accumulators are
  spread over the new ranks (summed CE and token counts split evenly, mean losses averaged), so the next logged
  loss is that of the whole global batch.
- `adapt_batch(cfg, st, world)`: on a different number of processes, the per-process batch and accumulation are
  changed so the global batch (tokens per optimizer step) stays the checkpoint's; one line says how. Returns the
  config as the checkpoint holds it, which later checkpoints keep saving.
- `save_sharded(tr, ranks, extra_name)`: collective; the fsdp checkpoint: DCP shard folder written under a temporary
  name, renamed into place, then `<name>.pt` (atomic) naming it, then older shard folders removed. A kill at any
  moment leaves the previous checkpoint whole. rank 0 also writes model.safetensors from the gathered weights.
- `lockstep(batches, n_batches, model, world, seq_len, device)`: under FSDP every forward is a collective, so a
  rank with fewer validation batches (`val_batch_count`) runs dummy forwards (outputs dropped) until all ranks have
  run as many.
- `finite_view(tr)`: the guard's non-finite check made on every rank's shards, agreed over ranks.
- `save_due(due, is_log, world)`: the wall-clock checkpoint cadence agreed over ranks (at log steps).
"""

from __future__ import annotations

import os
import shutil
import sys
import uuid
from types import SimpleNamespace

import torch
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

from .. import rundir
from ..data.loader import n_val_windows
from ..errors import CheckpointError, ConfigError
from ..export import save_weights
from . import sharded, state
from .distributed import World, all_reduce_max, barrier, broadcast_object, gather_object


# ---------------------------------------------------------------------------------------------------- every rank


def _acc_cpu(acc: dict) -> dict:
    return {"steps": acc["steps"], "n": acc["n"], "loss": acc["loss"].cpu(), "ce": acc["ce"].cpu(),
            "aux": {k: v.cpu() for k, v in acc["aux"].items()}}


def gather_states(tr) -> dict:
    """Collective: {"ranks": [{"rng", "acc"} by rank], "world_size", "global_batch"} on rank 0 ({} elsewhere)."""
    mine = {"rng": state.rng_state(), "acc": _acc_cpu(tr.acc)}
    every = gather_object(mine, tr.world)
    if not tr.world.is_main:
        return {}
    return {"ranks": every, "world_size": tr.world.world_size, "global_batch": tr.global_batch,
            "config": getattr(tr, "saved_config", None) or tr.cfg.to_dict()}


def restore_states(tr, st: dict) -> None:
    """This rank's RNG and accumulators from checkpoint `st` (after `state.restore`, which set rank 0's)."""
    every = st.get("ranks")
    if not every:
        return
    dev = tr.device
    if len(every) == tr.world.world_size:
        mine = every[tr.world.rank]
        state.set_rng_state(mine["rng"])
        tr.acc = {"steps": mine["acc"]["steps"], "n": mine["acc"]["n"], "loss": mine["acc"]["loss"].to(dev),
                  "ce": mine["acc"]["ce"].to(dev), "aux": {k: v.to(dev) for k, v in mine["acc"]["aux"].items()}}
        return
    # another number of processes: the summed CE and token counts are split evenly over the new ranks, the mean
    # losses and MoE statistics are averaged, so the next logged values are those of the whole global batch
    k, m = len(every), tr.world.world_size
    accs = [e["acc"] for e in every]
    a0 = accs[0]
    tr.acc = {"steps": a0["steps"], "n": sum(a["n"] for a in accs) // m,
              "loss": (sum(a["loss"] for a in accs) / k).to(dev), "ce": (sum(a["ce"] for a in accs) / m).to(dev),
              "aux": {key: (sum(a["aux"][key] for a in accs) / k).to(dev) for key in a0["aux"]}}


# ---------------------------------------------------------------------------------------------------- another world


def adapt_batch(cfg, st: dict, world: World) -> dict:
    """Keep checkpoint `st`'s global batch on this number of processes (see the module doc). Returns the config
    dict the checkpoints of this run keep (the checkpoint's own)."""
    saved_cfg = st.get("config") or cfg.to_dict()
    global_batch = st.get("global_batch")
    t = cfg.train
    if not global_batch or t.batch_size * t.acc_steps * world.world_size == global_batch:
        return saved_cfg
    n = world.world_size
    if global_batch % n:
        raise ConfigError(f"the run's global batch of {global_batch} sequences does not split over {n} processes; "
                          f"resume on a number of processes dividing {global_batch}")
    rows = global_batch // n
    bs = max(d for d in range(1, min(t.batch_size, rows) + 1) if rows % d == 0)
    old = (t.batch_size, t.acc_steps, st.get("world_size", "?"))
    t.batch_size, t.acc_steps = bs, rows // bs
    if isinstance(t.micro_batch, int) and rows % t.micro_batch:
        t.micro_batch = None
    if world.is_main:
        print(f"resuming on {n} processes (saved by {old[2]}): batch_size x acc_steps {old[0]} x {old[1]} -> "
              f"{bs} x {t.acc_steps} per process, so the global batch stays {global_batch} sequences "
              f"({global_batch * cfg.model.sequence_length:,} tokens) per optimizer step", file=sys.stderr)
    return saved_cfg


# ---------------------------------------------------------------------------------------------------- fsdp save


def save_sharded(tr, ranks: dict, extra_name=None) -> None:
    """Collective: the fsdp checkpoint (see the module doc)."""
    world, step_fn = tr.world, tr.step_fn
    path = rundir.checkpoint_path(tr.run_dir)
    ckpt_dir, name = os.path.dirname(path), os.path.basename(path)
    if world.is_main:
        os.makedirs(ckpt_dir, exist_ok=True)
    tag = broadcast_object(uuid.uuid4().hex[:8] if world.is_main else None, world)
    final = sharded.shard_dir_name(name, tr.step, tag)
    tmp = os.path.join(ckpt_dir, "." + final)
    try:
        sharded.save_shards(tr.model, step_fn.optimizer, tmp)
    except CheckpointError:  # raised on every rank, after every rank has stopped writing
        if world.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    full = get_model_state_dict(tr.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if world.is_main:
        os.replace(tmp, os.path.join(ckpt_dir, final))
        st = {**state.capture(tr), "model": None, "optimizer": None, "sharded": final, **ranks}
        state.save_checkpoint(path, st)  # atomic: from here on the new shards are the checkpoint
        for old in sharded.shard_dirs(ckpt_dir, name):
            if old != final:
                shutil.rmtree(os.path.join(ckpt_dir, old), ignore_errors=True)
        save_weights(rundir.weights_path(tr.run_dir), full, tr.cfg.model, extra={"step": str(int(tr.step))})
        if extra_name:
            keep = sharded.shard_dir_name(extra_name, tr.step, tag)
            shutil.copytree(os.path.join(ckpt_dir, final), os.path.join(ckpt_dir, keep))
            state.save_checkpoint(os.path.join(ckpt_dir, extra_name), {**st, "sharded": keep})
    barrier(world)


def finite_view(tr) -> SimpleNamespace:
    """What `Guard.check_before_save` reads (the loss accumulator, the weights), agreed over ranks from each rank's
    own shards: a reduction over a sharded DTensor is a collective the guard, which runs on rank 0 alone, cannot make.
    A non-finite value on any rank shows as one on every rank, so all ranks stop together."""
    loss_bad = (~torch.isfinite(tr.acc["loss"])).reshape(1)
    w_bad = torch.stack([~torch.isfinite(getattr(p, "_local_tensor", p)).all() for p in tr.model.parameters()]).any()
    bad = all_reduce_max(torch.cat([loss_bad, w_bad.reshape(1)]).float(), tr.world).tolist()
    nan = torch.full((1,), float("nan"))
    weights = [nan] if bad[1] else []
    return SimpleNamespace(acc={"loss": nan[0] if bad[0] else tr.acc["loss"]}, step=tr.step,
                           model=SimpleNamespace(parameters=lambda: weights))


# ---------------------------------------------------------------------------------------------------- collectives


def lockstep(batches, n_batches: int, model: torch.nn.Module, world: World, seq_len: int, device):
    """`batches` (`n_batches` of them on this rank), then dummy forwards until this rank has run as many forwards as
    the rank with the most (FSDP: each forward is a collective). The maximum is agreed before the first forward."""
    most = int(all_reduce_max(torch.tensor([n_batches], device=device), world).item())
    yield from batches
    with torch.no_grad():
        for _ in range(most - n_batches):
            model(torch.zeros(1, seq_len, dtype=torch.long, device=device))


def val_batch_count(n_tokens: int, seq_len: int, batch_size: int, max_tokens, world: World) -> int:
    """How many batches `data.loader.val_batches` gives this rank."""
    n = n_val_windows(n_tokens, seq_len, max_tokens)
    mine = len(range(world.rank, n, world.world_size))
    return -(-mine // batch_size)


def save_due(due: bool, is_log: bool, world: World) -> bool:
    """The wall-clock checkpoint cadence: each process alone decides in one process; under torchrun rank 0's
    clock decides, at log steps (where the ranks synchronise anyway), because a save is a collective."""
    if not world.distributed:
        return due
    if not is_log:
        return False
    return bool(broadcast_object(due, world))
