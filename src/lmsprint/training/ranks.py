"""A run over several processes: resuming on another number of processes, and keeping FSDP's collectives in step.
(What each rank checkpoints, and how a resume on another number of processes spreads it, is the checkpointer's:
training/checkpoint.py.)

- `adapt_batch(cfg, st, world, overrides)`: on a different number of processes, the per-process batch and
  accumulation are changed so the global batch (tokens per optimizer step) stays the checkpoint's; one line says
  how. A resume that overrides `batch_size` or `acc_steps` (`--resume_override`) asked for another batch: those
  values stand, and one line says how the global batch changes. Returns the config as the checkpoint holds it, which
  later checkpoints keep saving (with the changes accepted by `resume_override`: `resume.kept_config`).
- `lockstep(batches, n_batches, model, world, seq_len, device)`: under FSDP every forward is a collective, so a
  rank with fewer validation batches (`val_batch_count`) runs dummy forwards (outputs dropped) until all ranks have
  run as many.
- `save_due(due, is_log, world)`: the wall-clock checkpoint cadence agreed over ranks (at log steps).
"""

from __future__ import annotations

import sys

import torch

from ..data.loader import n_val_windows
from ..errors import ConfigError, plural
from .distributed import World, all_reduce_max, broadcast_object


# ---------------------------------------------------------------------------------------------------- another world


BATCH_OPTIONS = ("batch_size", "acc_steps")  # what sets the global batch on a given number of processes


def adapt_batch(cfg, st: dict, world: World, overrides=frozenset()) -> dict:
    """Keep checkpoint `st`'s global batch on this number of processes, unless `overrides` names one of
    BATCH_OPTIONS (see the module doc). Returns the config dict the checkpoints of this run keep (the checkpoint's
    own)."""
    saved_cfg = st.get("config") or cfg.to_dict()
    global_batch = st.get("global_batch")
    t = cfg.train
    n = world.world_size
    now = t.batch_size * t.acc_steps * n
    if not global_batch or now == global_batch:
        return saved_cfg
    chosen = [o for o in BATCH_OPTIONS if o in overrides]
    if chosen:  # the user's batch stands: the steps so far keep their tokens (clock.tokens), later ones use this one
        if world.is_main:
            print(f"resuming with another global batch (--resume_override {','.join(chosen)}): {global_batch} -> "
                  f"{plural(now, 'sequence')} ({now * cfg.model.sequence_length:,} tokens) per optimizer step "
                  f"from step {st.get('step', '?')} on", file=sys.stderr)
        return saved_cfg
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
        print(f"resuming on {plural(n, 'process')} (saved by {old[2]}): batch_size x acc_steps {old[0]} x {old[1]} -> "
              f"{bs} x {t.acc_steps} per process, so the global batch stays {global_batch} sequences "
              f"({global_batch * cfg.model.sequence_length:,} tokens) per optimizer step", file=sys.stderr)
    return saved_cfg


# ---------------------------------------------------------------------------------------------------- collectives


def lockstep(batches, n_batches: int, model: torch.nn.Module, world: World, seq_len: int, device):
    """`batches` (`n_batches` of them on this rank), then dummy forwards until this rank has run as many forwards as
    the rank with the most (FSDP: each forward is a collective). The maximum is agreed before the first forward."""
    most = int(all_reduce_max(torch.tensor([n_batches], device=device), world).item())
    yield from batches
    with torch.no_grad():
        for _ in range(most - n_batches):
            model(torch.zeros(1, seq_len, dtype=torch.long, device=device))


def val_batch_count(n_tokens: int, seq_len: int, batch_size: int, max_tokens, world: World,
                    first_window: int = 0) -> int:
    """How many batches `data.loader.val_batches` gives this rank."""
    n = n_val_windows(n_tokens, seq_len, max_tokens)
    mine = len(range(first_window + world.rank, n, world.world_size))
    return -(-mine // batch_size)


def save_due(due: bool, is_log: bool, world: World) -> bool:
    """The wall-clock checkpoint cadence: each process alone decides in one process; under torchrun rank 0's
    clock decides, at log steps (where the ranks synchronise anyway), because a save is a collective."""
    if not world.distributed:
        return due
    if not is_log:
        return False
    return bool(broadcast_object(due, world))
