"""Checkpoints on disk: their format (what a run saves so a resume is exact), atomic save, checked load, and the RNG
as a state.

A checkpoint is one `torch.save`d dict, format `FORMAT_VERSION` (3), written by `checkpoint.Checkpointer`:
  format, step (the step it was written at, for readers that load no clock: eval, generate, export),
  config (the run's config), data (the dataset identity, `resume.data_identity`), world_size and global_batch
  (the processes and sequences per optimizer step that saved it),
  model, optimizer (None under `data_parallel` fsdp: then `sharded` names their DCP folder, training/sharded.py),
  one entry per state saved once: clock {step, tokens, train_time, eval_time, compile_time, wall_time, finished},
  sampler {seed, step},
  record {rows, samples_bytes, n_evals, last_val}, target {spec, n_evals, record} (training/target.py), scaler
  (float16 only),
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
  `CheckpointError`. A format-2 checkpoint is brought into this format's layout (`upgrade`). Every field is then
  checked (`check_checkpoint`): its type, the tensors' shapes where the format fixes them, finite non-negative
  times, whole non-negative counters, and `sharded` one plain folder name of the checkpoint's own folder (no path,
  no symbolic link out of it; its DCP metadata is read through the allow-list of sharded.py right away). A wrong
  field is a `RunFileError` naming it.
- `check_resumable(state, path, cfg)`: what a resume needs besides that: every state it restores or checks
  (`RESUME_FIELDS`: clock, sampler, record, target, ranks, config, data; the optimizer unless the weights are
  sharded), a missing one a `RunFileError` naming it, and a step not past the run's end (`resume.check_step`).
- `RNGState`: every RNG of this process as a checkpoint state (`rng_state` / `set_rng_state`).
"""

from __future__ import annotations

import math
import os
import pickle
import random

import numpy as np
import torch

from ..errors import CheckpointError, RunFileError
from ..files import atomic_open, write_failure
from .resume import check_step
from .sharded import read_shard_metadata

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
    return check_checkpoint(upgrade(state, path), path)


# ---------------------------------------------------------------------------------------------------- checks

_DAMAGED = f"the checkpoint was edited or is damaged; {_HINT}"


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _count(v) -> bool:
    return _is_int(v) and v >= 0


def _seconds(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0


def _scalar_tensor(v) -> bool:
    return isinstance(v, torch.Tensor) and v.numel() == 1 and v.is_floating_point()


def _tensor_dict(v) -> bool:
    return isinstance(v, dict) and all(isinstance(k, str) and isinstance(t, torch.Tensor) for k, t in v.items())


def _metrics(v) -> bool:
    """A `metrics.MetricAccumulator.state_dict()`."""
    return (isinstance(v, dict) and _count(v.get("steps")) and _count(v.get("n")) and _scalar_tensor(v.get("loss"))
            and _scalar_tensor(v.get("ce")) and _tensor_dict(v.get("aux"))
            and all(t.is_floating_point() for t in v["aux"].values()))


def _rng(v) -> bool:
    if not isinstance(v, dict):
        return False
    py, n, t = v.get("python"), v.get("numpy"), v.get("torch")
    ok_py = (isinstance(py, (tuple, list)) and len(py) == 3 and _is_int(py[0])
             and isinstance(py[1], (tuple, list)) and len(py[1]) == 625 and all(_is_int(x) for x in py[1])
             and (py[2] is None or isinstance(py[2], float)))
    ok_np = (isinstance(n, dict) and n.get("kind") == "MT19937" and isinstance(n.get("keys"), torch.Tensor)
             and tuple(n["keys"].shape) == (624,) and n["keys"].dtype == torch.int64 and _count(n.get("pos"))
             and n["pos"] <= 624 and _is_int(n.get("has_gauss")) and isinstance(n.get("gauss"), float))
    ok_torch = isinstance(t, torch.Tensor) and t.dtype == torch.uint8 and t.dim() == 1
    ok_cuda = "cuda" not in v or (isinstance(v["cuda"], (list, tuple)) and all(
        isinstance(x, torch.Tensor) and x.dtype == torch.uint8 for x in v["cuda"]))
    return ok_py and ok_np and ok_torch and ok_cuda


def _clock(v) -> bool:
    """A `clock.Clock.state_dict()` (`wall_time` absent in format 2, `finished` and `tokens` absent before they were
    kept)."""
    fin = v.get("finished") if isinstance(v, dict) else None
    fin_ok = fin is None or (isinstance(fin, (list, tuple)) and len(fin) == 2 and _seconds(fin[0]) and _count(fin[1]))
    tokens_ok = not isinstance(v, dict) or v.get("tokens") is None or _count(v["tokens"])
    return (isinstance(v, dict) and _count(v.get("step")) and _seconds(v.get("train_time")) and fin_ok and tokens_ok
            and all(k not in v or _seconds(v[k]) for k in ("eval_time", "compile_time", "wall_time")))


def _record(v) -> bool:
    """A `metrics.RunRecord.state_dict()`."""
    return (isinstance(v, dict) and all(_count(v.get(k)) for k in ("rows", "n_evals"))
            and ("samples_bytes" not in v or _count(v["samples_bytes"]))
            and isinstance(v.get("last_val", {}), dict)
            and all(isinstance(k, str) and (x is None or isinstance(x, (int, float))) for k, x in
                    v.get("last_val", {}).items()))


def _target(v) -> bool:
    """A `target.TargetTracker.state_dict()`: {spec, n_evals, record: None or {step, tokens, train_s, wall_s, eval,
    measured}}, counts whole and >= 0, seconds finite and >= 0 (or None: rows of an older lmsprint had none); {} for
    a checkpoint written before targets existed."""
    if v == {}:
        return True
    if not (isinstance(v, dict) and (v.get("spec") is None or isinstance(v["spec"], str)) and _count(v.get("n_evals"))):
        return False
    r = v.get("record")
    return r is None or (isinstance(r, dict) and _count(r.get("step")) and _count(r.get("tokens"))
                         and _count(r.get("eval")) and all(r.get(k) is None or _seconds(r[k]) for k in
                                                            ("train_s", "wall_s"))
                         and isinstance(r.get("measured"), float) and math.isfinite(r["measured"]))


def _optimizer_state(v) -> bool:
    """A torch optimizer's state dict {state, param_groups}, or that of optim.optimizers' combined optimizer (Muon on
    the hidden matrices + AdamW on the rest): {combined: [class names], optimizers: [their state dicts]}."""
    if isinstance(v, dict) and "combined" in v:
        names, parts = v.get("combined"), v.get("optimizers")
        return (isinstance(names, list) and all(isinstance(n, str) for n in names) and isinstance(parts, list)
                and len(parts) == len(names) and all(_optimizer_state(o) and "combined" not in o for o in parts))
    return isinstance(v, dict) and isinstance(v.get("state"), dict) and isinstance(v.get("param_groups"), list)


def _plain_name(name) -> bool:
    return (isinstance(name, str) and bool(name) and name not in (".", "..")
            and not any(c in name for c in ("/", "\\", "\0", os.sep)))


# what a resume restores or checks besides the weights (eval, generate and export read only `model` / `sharded` and
# `step`): without one a resume would go on with a fresh state (the sampler back at the first batch) or skip a check
# (the data identity). `target` is {} in a checkpoint of an older lmsprint (a state the resume rebuilds from the
# metrics rows). Not required: `scaler` (a float16 run only, and a run resumed on another device may start using
# one), `world_size` and `global_batch` (format-2 checkpoints of older lmsprint versions lack them).
RESUME_FIELDS = ("clock", "sampler", "record", "target", "ranks", "config", "data")


def check_checkpoint(state: dict, path: str) -> dict:
    """`state` (a loaded checkpoint in this format's layout) if every field it holds has the format's type (module
    doc); RunFileError naming the first wrong field. `model` (or `sharded`) and `step` are required, the states a
    resume needs are required by `check_resumable`. The shapes of the model's tensors are checked against the model
    where they are loaded."""
    def need(field: str, ok: bool, what: str) -> None:
        if not ok:
            v = state
            for part in field.split("."):
                v = v.get(part) if isinstance(v, dict) else None
            shown = type(v).__name__ if isinstance(v, (dict, list, tuple, torch.Tensor)) else repr(v)[:40]
            raise RunFileError(path, f"field '{field}'", f"is {shown}, not {what}", _DAMAGED)

    sharded = state.get("sharded")
    need("sharded", sharded is None or _plain_name(sharded), "the name of a shard folder next to it")
    if sharded is not None:
        folder = os.path.dirname(os.path.abspath(path))
        target = os.path.join(folder, sharded)
        real = os.path.realpath(folder)
        if os.path.islink(target) or not os.path.realpath(target).startswith(real + os.sep):
            raise RunFileError(path, "field 'sharded'", f"names {sharded!r}, a symbolic link out of {folder}",
                               _DAMAGED)
        read_shard_metadata(target)  # a planted pickle is refused here, before any other work of a resume
    need("model", (sharded is not None and state["model"] is None) or _tensor_dict(state["model"]),
         "a mapping of tensor names to tensors")
    need("optimizer", state.get("optimizer") is None or _optimizer_state(state["optimizer"]),
         "an optimizer state dict")
    need("step", _count(state["step"]), "a whole number >= 0")
    need("clock", state.get("clock") is None or _clock(state["clock"]), "the clock's state lmsprint saves")
    need("record", state.get("record") is None or _record(state["record"]), "the run record lmsprint saves")
    need("target", state.get("target") is None or _target(state["target"]), "the --target record lmsprint saves")
    need("scaler", state.get("scaler") is None or isinstance(state["scaler"], dict), "a grad scaler state")
    smp = state.get("sampler")
    need("sampler", smp is None or (isinstance(smp, dict) and _count(smp.get("step"))), "a sampler state")
    need("config", state.get("config") is None or isinstance(state["config"], dict), "a config mapping")
    need("data", state.get("data") is None or isinstance(state["data"], dict), "a data identity mapping")
    if "ranks" in state:
        need("ranks", isinstance(state["ranks"], list) and bool(state["ranks"]) and all(
            isinstance(r, dict) and _rng(r.get("rng")) and _metrics(r.get("metrics")) for r in state["ranks"]),
             "a list of every rank's RNG states and loss accumulators")
    for f in ("world_size", "global_batch"):
        need(f, state.get(f) is None or (_is_int(state[f]) and state[f] >= 1), "a whole number >= 1")
    return state


def check_resumable(state: dict, path: str, cfg) -> None:
    """A checkpoint a resume can continue: the states a resume needs are there (RunFileError naming a missing one),
    the optimizer state is there unless the weights are sharded, and its step is not past the run's end
    (`resume.check_step`)."""
    for field in RESUME_FIELDS + (() if state.get("sharded") else ("optimizer",)):
        if state.get(field) is None:
            raise RunFileError(path, f"field '{field}'", "is missing; a resume needs it", _DAMAGED)
    check_step(state["step"], cfg, os.path.dirname(os.path.dirname(path)))  # <run>/checkpoints/latest.pt


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


def upgrade(st: dict, path: str = "checkpoint") -> dict:
    """A checkpoint of format 2 in the layout of this format (a format-3 checkpoint as it is); RunFileError when a
    format-2 file lacks the layout it needs."""
    if st.get("format") == FORMAT_VERSION:
        return st
    try:
        return _upgrade(st)
    except (KeyError, TypeError, AttributeError, IndexError) as e:
        raise RunFileError(path, "", f"does not have the layout of a format-2 checkpoint ({type(e).__name__}: {e})",
                           _DAMAGED) from None


def _upgrade(st: dict) -> dict:
    ms = st["metrics_state"]
    out = {k: st[k] for k in ("step", "config", "data", "world_size", "global_batch", "model", "optimizer", "sharded")
           if k in st}
    out["format"] = FORMAT_VERSION
    if st.get("scaler") is not None:
        out["scaler"] = st["scaler"]
    out["clock"] = {"step": st["step"], "train_time": st["train_time"], "eval_time": st.get("eval_time", 0.0),
                    "compile_time": st.get("compile_time", 0.0), "wall_time": st.get("wall_time", 0.0)}
    out["target"] = st.get("target") or {}  # {}: the tracker looks its target up in the rows logged before
    # format 2 saved the sampler one step ahead of the checkpoint (the batch it had prefetched); the next batch to
    # train on is the checkpoint's step
    out["sampler"] = {"seed": (st.get("sampler") or {}).get("seed"), "step": st["step"]}
    out["record"] = {"rows": ms["rows"], "samples_bytes": ms.get("samples_bytes", 0), "n_evals": ms["n_evals"],
                     "last_val": ms.get("last_val", {})}
    every = st.get("ranks") or [{"rng": st["rng"], "acc": ms["acc"]}]
    out["ranks"] = [{"rng": r["rng"], "metrics": r["acc"]} for r in every]
    return out
