"""The run's one checkpointer: a dict of named states saved and restored as one checkpoint, in one process or with
sharded weights alike (torchtitan's `CheckpointManager` and its `states`).

`Checkpointer(world, model, optimizer, states, rank_states, header, model_cfg, run_dir)`:
- `model`, `optimizer`: under `data_parallel` fsdp they go to a DCP shard folder (training/sharded.py), else into
  the checkpoint file as `model` / `optimizer`.
- `states`: name -> an object with `state_dict()` / `load_state_dict()` whose state is the same on every process,
  saved once (rank 0's): the clock, the sampler, the run record, the float16 GradScaler.
- `rank_states`: name -> such an object whose state is each process's own (the RNG, the loss accumulators), saved
  as `ranks`, one dict per rank. A resume on as many processes gives each rank its own; on another number each
  takes `type(obj).respread(the saved ranks' states, world_size)`.
- `header`: facts the resume checks but nothing restores (config, data identity, global batch).
The file's layout and format version are state.py's.

- `save(step, keep=None)`: collective (every rank calls it). One process / ddp: rank 0 writes `checkpoints/latest.pt`
  atomically, then model.safetensors, then (with `keep`) an atomic copy `checkpoints/<keep>`. fsdp: every rank writes
  its shards into a folder under a temporary name, renamed into place, then rank 0 writes `latest.pt` (atomic)
  naming it, then removes older shard folders and writes model.safetensors from the gathered weights; a kill at any
  moment leaves the previous checkpoint whole.
- `read_checkpoint(run_dir)`: the run's latest checkpoint (`state.load_checkpoint`: checked, an older format brought
  into this one's layout), read before anything is built so that a missing or corrupt one is reported first.
- `restore(st, keep_hyperparameters)`: every state from checkpoint `st`; the model and optimizer must match
  (else one-line CheckpointError). `keep_hyperparameters`: the optimizer keeps this config's hyperparameters (a
  resume that accepted a change of e.g. lr).
"""

from __future__ import annotations

import os
import shutil
import uuid
from typing import Optional

import torch
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

from .. import rundir
from ..errors import CheckpointError, UserError
from ..export import save_weights
from ..files import atomic_copy
from ..hw import unwrap
from . import sharded
from .artifacts import write_weights
from .distributed import World, barrier, broadcast_object, gather_object
from .state import load_checkpoint, save_checkpoint


def read_checkpoint(run_dir: str) -> dict:
    """The latest checkpoint of `run_dir` in this format's layout (see the module doc)."""
    return load_checkpoint(rundir.checkpoint_path(run_dir))


class Checkpointer:
    def __init__(self, world: World, model: torch.nn.Module, optimizer, states: dict, rank_states: dict,
                 header: dict, model_cfg, run_dir: Optional[str] = None):
        self.world, self.model, self.optimizer = world, model, optimizer
        self.states = {name: s for name, s in states.items() if s is not None}
        self.rank_states = dict(rank_states)
        self.header, self.model_cfg, self.run_dir = header, model_cfg, run_dir

    # ------------------------------------------------------------------ save
    def save(self, step: int, keep: Optional[str] = None) -> None:
        """Collective: the checkpoint of `step` (and a kept copy named `keep`); see the module doc."""
        ranks = gather_object({name: s.state_dict() for name, s in self.rank_states.items()}, self.world)
        if self.world.sharded:
            self._save_sharded(step, ranks, keep)
        elif self.world.is_main:
            self._save_plain(step, ranks, keep)

    def _file(self, step: int, ranks: list) -> dict:
        return {"step": int(step), **self.header, "world_size": self.world.world_size,
                **{name: s.state_dict() for name, s in self.states.items()}, "ranks": ranks}

    def _save_plain(self, step: int, ranks: list, keep: Optional[str]) -> None:
        path = rundir.checkpoint_path(self.run_dir)
        model = unwrap(self.model)
        save_checkpoint(path, {"model": model.state_dict(), "optimizer": self.optimizer.state_dict(),
                               **self._file(step, ranks)})
        write_weights(self.run_dir, model, self.model_cfg, step)  # model.safetensors, no pickle
        if keep:
            atomic_copy(path, rundir.checkpoint_path(self.run_dir, keep))  # never a torn step_N.pt

    def _save_sharded(self, step: int, ranks: list, keep: Optional[str]) -> None:
        world = self.world
        path = rundir.checkpoint_path(self.run_dir)
        ckpt_dir, name = os.path.dirname(path), os.path.basename(path)
        if world.is_main:
            os.makedirs(ckpt_dir, exist_ok=True)
        tag = broadcast_object(uuid.uuid4().hex[:8] if world.is_main else None, world)
        final = sharded.shard_dir_name(name, step, tag)
        tmp = os.path.join(ckpt_dir, "." + final)
        try:
            sharded.save_shards(self.model, self.optimizer, tmp)
        except CheckpointError:  # raised on every rank, after every rank has stopped writing
            if world.is_main:
                shutil.rmtree(tmp, ignore_errors=True)
            raise
        full = get_model_state_dict(self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if world.is_main:
            os.replace(tmp, os.path.join(ckpt_dir, final))
            st = {"model": None, "optimizer": None, "sharded": final, **self._file(step, ranks)}
            save_checkpoint(path, st)  # atomic: from here on the new shards are the checkpoint
            for old in sharded.shard_dirs(ckpt_dir, name):
                if old != final:
                    shutil.rmtree(os.path.join(ckpt_dir, old), ignore_errors=True)
            save_weights(rundir.weights_path(self.run_dir), full, self.model_cfg, extra={"step": str(int(step))})
            if keep:
                kept = sharded.shard_dir_name(keep, step, tag)
                shutil.copytree(os.path.join(ckpt_dir, final), os.path.join(ckpt_dir, kept))
                save_checkpoint(os.path.join(ckpt_dir, keep), {**st, "sharded": kept})
        barrier(world)

    # ------------------------------------------------------------------ restore
    def restore(self, st: dict, keep_hyperparameters: bool = False) -> None:
        """Every state from checkpoint `st` (as `read_checkpoint` gives it); see the module doc."""
        opt = self.optimizer
        built = [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups]
        try:
            if st.get("sharded"):  # data_parallel fsdp: weights and optimizer state in a DCP folder (sharded.py)
                folder = os.path.join(os.path.dirname(rundir.checkpoint_path(self.run_dir)), st["sharded"])
                sharded.load_shards(self.model, opt, folder)
            else:
                unwrap(self.model).load_state_dict(st["model"])
                opt.load_state_dict(st["optimizer"])
            if keep_hyperparameters:  # accepted changes (e.g. lr): this config's hyperparameters
                for g, hyper in zip(opt.param_groups, built):
                    g.update(hyper)
        except UserError:  # e.g. a damaged shard folder, already said in one line (lmsprint's errors are ValueErrors)
            raise
        except (RuntimeError, ValueError, KeyError) as e:
            raise CheckpointError(f"checkpoint of {self.run_dir} does not match this model/optimizer "
                                  f"({str(e).splitlines()[0][:120]}); resume with the run's own config")
        for name, s in self.states.items():
            if st.get(name) is not None:
                s.load_state_dict(st[name])
        every = st.get("ranks") or []
        if every:
            ws = self.world.world_size
            for name, s in self.rank_states.items():
                if len(every) == ws:
                    s.load_state_dict(every[self.world.rank][name])
                else:  # another number of processes (`ranks.adapt_batch` kept the global batch)
                    s.load_state_dict(type(s).respread([e[name] for e in every], ws))
