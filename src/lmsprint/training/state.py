"""Checkpoints on disk: their format (what a run saves so a resume is exact), atomic save, checked load, and the RNG
as a state.

A checkpoint is one `torch.save`d dict, format `FORMAT_VERSION` (3), written by `checkpoint.Checkpointer`:
  format, step (the step it was written at, for readers that load no clock: eval, generate, export),
  config (the run's config), data (the dataset identity, `resume.data_identity`), world_size and global_batch
  (the processes and sequences per optimizer step that saved it),
  model, optimizer (None under `data_parallel` fsdp: then `sharded` names their DCP folder, training/sharded.py),
  one entry per state saved once: clock {step, train_time, eval_time, compile_time}, sampler {seed, step},
  record {rows, samples_bytes, n_evals, last_val}, scaler (float16 only),
  ranks: one dict per process, by rank, of the states every process has: rng, metrics (the loss accumulators
  between log steps).
A resumed run (same run dir, metrics.jsonl and samples.txt cut back to the record) logs exactly what an
uninterrupted run would.
Everything in it is a tensor or a plain container (dict, list, tuple, str, int, float, bool, None): the numpy RNG
state is stored as {kind, keys (int64 tensor), pos, has_gauss, gauss}, the python one as its tuple of ints. So a
checkpoint loads with `torch.load(weights_only=True)`, which cannot run code hidden in a downloaded file.
Format 2 (the same states in another layout) is read and `upgrade`d; format 1 (older lmsprint) pickled numpy
objects and is refused with a one-line hint.

Where checkpoints live in a run directory is `rundir.checkpoint_path`'s business.
- `save_checkpoint(path, state)`: `files.atomic_open` (temporary file, fsync, `os.replace`), so a kill at any
  moment leaves either the old or the new checkpoint, never a torn one.
  A disk that fills up (ENOSPC, EFBIG, EDQUOT) is a one-line `CheckpointError`; the previous checkpoint is kept.
- `load_checkpoint(path)`: `weights_only=True`; a missing, unreadable, unsafe or other-version file is a one-line
  `CheckpointError`. `upgrade(state)`: a format-2 checkpoint in this format's layout.
- `RNGState`: every RNG of this process as a checkpoint state (`rng_state` / `set_rng_state`).
"""

from __future__ import annotations

import os
import pickle
import random

import numpy as np
import torch

from ..errors import CheckpointError
from ..files import atomic_open, write_failure

FORMAT_VERSION = 3
READABLE_VERSIONS = (2, FORMAT_VERSION)  # format 2 is read through `upgrade`
_HINT = "resume from another run or start a new one without `resume`"


# ---------------------------------------------------------------------------------------------------- file


def save_checkpoint(path: str, state: dict) -> None:
    """Atomically write `state` (+ its format version) to `path` (tmp file, fsync, os.replace, fsync dir)."""
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    try:
        with atomic_open(path, "wb") as fh:
            torch.save({"format": FORMAT_VERSION, **state}, fh)
    except (OSError, RuntimeError) as e:  # torch.save reports a failed write as RuntimeError (files.write_failure)
        kept = "the previous checkpoint is kept" if os.path.exists(path) else "no checkpoint was kept"
        reason = write_failure(e)
        if reason is None:
            raise
        raise CheckpointError(f"cannot write checkpoint {path}: {reason}; {kept}; free space (or make the folder "
                              "writable) and continue with `resume`")
    try:  # make the rename itself durable
        fd = os.open(d, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass



def load_checkpoint(path: str, map_location="cpu") -> dict:
    """Load a checkpoint written by `save_checkpoint` (weights_only: tensors and plain containers only);
    CheckpointError if it is missing, corrupt, unsafe to load or of another format version."""
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path} is missing or corrupt (no such file); {_HINT}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:  # weights_only refused a Python object (format 1 pickled numpy state)
        raise CheckpointError(f"checkpoint {path} holds pickled Python objects, which lmsprint does not load (they "
                              "could run code); it was written by an older lmsprint (format 1) or by something "
                              f"else: start a new run, or load it yourself only if you trust its source ({_first(e)})")
    except Exception as e:  # truncated zip, unpickling errors, ...
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(f"checkpoint {path} is missing or corrupt ({msg}); {_HINT}")
    if not isinstance(state, dict) or "model" not in state or "step" not in state:
        raise CheckpointError(f"checkpoint {path} is missing or corrupt (not an lmsprint checkpoint); {_HINT}")
    version = state.get("format")
    if version not in READABLE_VERSIONS:
        raise CheckpointError(f"checkpoint {path} has format version {version}, this lmsprint reads version "
                              f"{FORMAT_VERSION} (and {READABLE_VERSIONS[0]}); {_HINT}")
    return state


def _first(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return " ".join(lines[0].split())[:160] if lines else type(e).__name__


def rng_state() -> dict:
    """Every RNG's state as tensors and plain containers (loadable with weights_only)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, py_gauss = random.getstate()
    st = {"python": (int(version), tuple(int(x) for x in internal), py_gauss),
          "numpy": {"kind": str(kind), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
                    "has_gauss": int(has_gauss), "gauss": float(gauss)},
          "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def set_rng_state(st: dict) -> None:
    version, internal, py_gauss = st["python"]
    random.setstate((version, tuple(internal), py_gauss))
    n = st["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(st["torch"].cpu())
    if "cuda" in st and torch.cuda.is_available():
        cuda = st["cuda"]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([s.cpu() for s in cuda])


class RNGState:
    """Every RNG of this process (python, numpy, torch, CUDA) as a checkpoint state (saved by every process)."""

    def state_dict(self) -> dict:
        return rng_state()

    def load_state_dict(self, st: dict) -> None:
        set_rng_state(st)

    @staticmethod
    def respread(states: list[dict], world_size: int) -> dict:
        """On another number of processes every process takes rank 0's RNG."""
        return states[0]


# ---------------------------------------------------------------------------------------------------- format 2


def upgrade(st: dict) -> dict:
    """A checkpoint of format 2 in the layout of this format (a format-3 checkpoint as it is)."""
    if st.get("format") == FORMAT_VERSION:
        return st
    ms = st["metrics_state"]
    out = {k: st[k] for k in ("step", "config", "data", "world_size", "global_batch", "model", "optimizer", "sharded")
           if k in st}
    out["format"] = FORMAT_VERSION
    if st.get("scaler") is not None:
        out["scaler"] = st["scaler"]
    out["clock"] = {"step": st["step"], "train_time": st["train_time"], "eval_time": st.get("eval_time", 0.0),
                    "compile_time": st.get("compile_time", 0.0)}
    # format 2 saved the sampler one step ahead of the checkpoint (the batch it had prefetched); the next batch to
    # train on is the checkpoint's step
    out["sampler"] = {"seed": (st.get("sampler") or {}).get("seed"), "step": st["step"]}
    out["record"] = {"rows": ms["rows"], "samples_bytes": ms.get("samples_bytes", 0), "n_evals": ms["n_evals"],
                     "last_val": ms.get("last_val", {})}
    every = st.get("ranks") or [{"rng": st["rng"], "acc": ms["acc"]}]
    out["ranks"] = [{"rng": r["rng"], "metrics": r["acc"]} for r in every]
    return out
