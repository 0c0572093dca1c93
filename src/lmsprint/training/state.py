"""Checkpoints: their schema (what a run saves so a resume is exact), atomic save, and checked load.

A checkpoint is one `torch.save`d dict, format `FORMAT_VERSION`:
  format, model, optimizer, scaler (float16 only), step, sampler, rng (python, numpy, torch cpu, cuda),
  train_time, eval_time, compile_time, wall_time, target (`target.TargetTracker.state_dict`), config,
  data (the dataset identity, `resume.data_identity`),
  metrics_state {rows, samples_bytes, n_evals, last_val, acc}
  and from `ranks.gather_states`: ranks (every rank's RNG and accumulators), world_size, global_batch. Under
  `data_parallel` fsdp, model and optimizer are None and `sharded` names their DCP folder (training/sharded.py).
where `acc` holds the metric accumulators between log steps, so that a resumed run (same run dir, metrics.jsonl
and samples.txt cut back to the checkpoint) logs exactly what an uninterrupted run would.
Everything in it is a tensor or a plain container (dict, list, tuple, str, int, float, bool, None): the numpy RNG
state is stored as {kind, keys (int64 tensor), pos, has_gauss, gauss}, the python one as its tuple of ints. So a
checkpoint loads with `torch.load(weights_only=True)`, which cannot run code hidden in a downloaded file.
Format 1 (older lmsprint) pickled numpy objects; it is refused with a one-line hint.

- `capture(trainer)` / `restore(trainer, state)`: the Trainer's side of that schema.
Where checkpoints live in a run directory is `rundir.checkpoint_path`'s business.
- `save_checkpoint(path, state)`: `files.atomic_open` (temporary file, fsync, `os.replace`), so a kill at any
  moment leaves either the old or the new checkpoint, never a torn one.
  A disk that fills up (ENOSPC, EFBIG, EDQUOT) is a one-line `CheckpointError`; the previous checkpoint is kept.
- `load_checkpoint(path)`: `weights_only=True`; a missing, unreadable, unsafe or other-version file is a one-line
  `CheckpointError`.
"""

from __future__ import annotations

import os
import pickle
import random

import numpy as np
import torch

from ..errors import CheckpointError
from ..files import atomic_open, write_failure
from ..hw import unwrap
from ..rundir import checkpoint_path, read_metrics, samples_path
from .resume import data_identity
from .sharded import load_shards

FORMAT_VERSION = 2
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
    if version != FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {path} has format version {version}, this lmsprint reads version "
                              f"{FORMAT_VERSION}; {_HINT}")
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


# ---------------------------------------------------------------------------------------------------- schema


def capture(tr) -> dict:
    """The checkpoint of a Trainer `tr` (see the module doc for the keys)."""
    acc, clock, step = tr.acc, tr.clock, tr.step_fn
    samples = samples_path(tr.run_dir)
    return {
        "model": unwrap(tr.model).state_dict(),
        "optimizer": step.optimizer.state_dict(),
        "scaler": step.scaler.state_dict() if step.scaler is not None else None,
        "step": tr.step,
        "sampler": tr.sampler.state_dict(),
        "rng": rng_state(),
        "train_time": clock.train_time,
        "eval_time": clock.eval_time,
        "compile_time": clock.compile_time,
        "wall_time": clock.wall_time,
        "target": tr.target.state_dict(),
        "config": tr.cfg.to_dict(),
        "data": data_identity(tr.manifest),
        "metrics_state": {
            "rows": tr.rows,
            "samples_bytes": os.path.getsize(samples) if os.path.exists(samples) else 0,
            "n_evals": tr.n_evals,
            "last_val": tr.last_val,
            "acc": {"steps": acc["steps"], "n": acc["n"], "loss": acc["loss"].cpu(), "ce": acc["ce"].cpu(),
                    "aux": {k: v.cpu() for k, v in acc["aux"].items()}},
        },
    }


def restore(tr, st: dict) -> None:
    """Load checkpoint `st` into Trainer `tr` (model, optimizer, scaler, counters, clock, accumulators, RNG)."""
    step = tr.step_fn
    built = [{k: v for k, v in g.items() if k != "params"} for g in step.optimizer.param_groups]
    try:
        if st.get("sharded"):  # data_parallel fsdp: weights and optimizer state in a DCP folder (sharded.py)
            load_shards(tr.model, step.optimizer, os.path.join(os.path.dirname(checkpoint_path(tr.resume_dir)),
                                                               st["sharded"]))
        else:
            unwrap(tr.model).load_state_dict(st["model"])
            step.optimizer.load_state_dict(st["optimizer"])
        if getattr(tr, "resume_override", None):  # accepted changes (e.g. lr): this config's hyperparameters
            for g, hyper in zip(step.optimizer.param_groups, built):
                g.update(hyper)
    except (RuntimeError, ValueError, KeyError) as e:
        raise CheckpointError(f"checkpoint of {tr.resume_dir} does not match this model/optimizer "
                              f"({str(e).splitlines()[0][:120]}); resume with the run's own config")
    if step.scaler is not None and st.get("scaler"):
        step.scaler.load_state_dict(st["scaler"])
    tr.step = int(st["step"])
    if st.get("sampler") is not None:
        tr.sampler.load_state_dict(st["sampler"])
    tr.clock.train_time = float(st["train_time"])
    tr.clock.eval_time = float(st.get("eval_time", 0.0))
    tr.clock.compile_time = float(st.get("compile_time", 0.0))
    tr.clock.wall_base = float(st.get("wall_time", 0.0))
    tr.target.load_state_dict(st.get("target"), lambda: read_metrics(tr.resume_dir)[:st["metrics_state"]["rows"]])
    ms = st["metrics_state"]
    tr.rows, tr.n_evals, tr.last_val = ms["rows"], ms["n_evals"], ms.get("last_val", {})
    a = ms["acc"]
    dev = tr.device
    tr.acc = {"steps": a["steps"], "n": a["n"], "loss": a["loss"].to(dev), "ce": a["ce"].to(dev),
              "aux": {k: v.to(dev) for k, v in a["aux"].items()}}
    set_rng_state(st["rng"])
