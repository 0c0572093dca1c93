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
  `CheckpointError`. Every field is then checked (`check_checkpoint`): its type, the tensors' shapes where the
  schema fixes them, finite non-negative times, whole non-negative counters, and `sharded` one plain folder name of
  the checkpoint's own folder (no path, no symbolic link out of it; its DCP metadata is read through the
  allow-list of sharded.py right away). A wrong field is a `RunFileError` naming it.
- `check_resumable(state, path, cfg)`: what a resume needs besides that: every field it restores, and a step not
  past the run's end (`resume.check_step`).
"""

from __future__ import annotations

import math
import os
import pickle
import random

import numpy as np
import torch

from ..errors import CheckpointError, RunFileError, UserError
from ..files import atomic_open, write_failure
from ..hw import unwrap
from ..rundir import checkpoint_path, read_metrics, samples_path
from .resume import check_step, data_identity
from .sharded import load_shards, read_shard_metadata

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
    return check_checkpoint(state, path)


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


def _acc(v) -> bool:
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


def _target(v) -> bool:
    """A `target.TargetTracker.state_dict()`: {spec, n_evals, record: None or {step, tokens, train_s, wall_s, eval,
    measured}}, counts whole and >= 0, seconds finite and >= 0 (or None: rows of an older lmsprint had none)."""
    if not (isinstance(v, dict) and (v.get("spec") is None or isinstance(v["spec"], str)) and _count(v.get("n_evals"))):
        return False
    r = v.get("record")
    return r is None or (isinstance(r, dict) and _count(r.get("step")) and _count(r.get("tokens"))
                         and _count(r.get("eval")) and all(r.get(k) is None or _seconds(r[k]) for k in
                                                            ("train_s", "wall_s"))
                         and isinstance(r.get("measured"), float) and math.isfinite(r["measured"]))


def _plain_name(name) -> bool:
    return (isinstance(name, str) and bool(name) and name not in (".", "..")
            and not any(c in name for c in ("/", "\\", "\0", os.sep)))


# what a resume needs besides the weights (eval, generate and export read only `model` / `sharded` and `step`)
RESUME_FIELDS = ("rng", "train_time", "config", "metrics_state", "metrics_state.rows", "metrics_state.n_evals",
                 "metrics_state.acc")


def check_checkpoint(state: dict, path: str) -> dict:
    """`state` (a loaded checkpoint) if every field it holds has the schema's type (module doc); RunFileError
    naming the first wrong field. `model` (or `sharded`) and `step` are required, the fields a resume needs are
    required by `check_resumable`. The shapes of the model's tensors are checked against the model where they
    are loaded."""
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
    opt = state.get("optimizer")
    need("optimizer", opt is None or (
        isinstance(opt, dict) and isinstance(opt.get("state"), dict) and isinstance(opt.get("param_groups"), list)),
         "an optimizer state dict")
    need("step", _count(state["step"]), "a whole number >= 0")
    for f in ("train_time", "eval_time", "compile_time", "wall_time"):
        need(f, f not in state or _seconds(state[f]), "a finite number of seconds >= 0")
    need("target", state.get("target") is None or _target(state["target"]), "the --target record lmsprint saves")
    need("scaler", state.get("scaler") is None or isinstance(state["scaler"], dict), "a grad scaler state")
    smp = state.get("sampler")
    need("sampler", smp is None or (isinstance(smp, dict) and _count(smp.get("step"))), "a sampler state")
    need("rng", "rng" not in state or _rng(state["rng"]), "the RNG states lmsprint saves")
    need("config", state.get("config") is None or isinstance(state["config"], dict), "a config mapping")
    need("data", state.get("data") is None or isinstance(state["data"], dict), "a data identity mapping")
    ms = state.get("metrics_state", {})
    need("metrics_state", isinstance(ms, dict), "a mapping")
    for f in ("rows", "samples_bytes", "n_evals"):
        need(f"metrics_state.{f}", f not in ms or _count(ms[f]), "a whole number >= 0")
    lv = ms.get("last_val", {})
    need("metrics_state.last_val", isinstance(lv, dict) and all(
        isinstance(k, str) and (x is None or isinstance(x, (int, float))) for k, x in lv.items()),
         "a mapping of metric names to numbers")
    need("metrics_state.acc", "acc" not in ms or _acc(ms["acc"]), "the metric accumulators lmsprint saves")
    if "ranks" in state:
        ranks = state["ranks"]
        need("ranks", isinstance(ranks, list) and bool(ranks) and all(
            isinstance(r, dict) and _rng(r.get("rng")) and _acc(r.get("acc")) for r in ranks),
             "a list of every rank's RNG states and accumulators")
    for f in ("world_size", "global_batch"):
        need(f, state.get(f) is None or (_is_int(state[f]) and state[f] >= 1), "a whole number >= 1")
    return state


def check_resumable(state: dict, path: str, cfg) -> None:
    """A checkpoint a resume can continue: the fields a resume needs are there (RunFileError naming a missing one),
    the optimizer state is there unless the weights are sharded, and its step is not past the run's end
    (`resume.check_step`)."""
    for field in RESUME_FIELDS + (() if state.get("sharded") else ("optimizer",)):
        v = state
        for part in field.split("."):
            v = v.get(part) if isinstance(v, dict) else None
        if v is None:
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
    except UserError:  # e.g. a damaged shard folder, already said in one line (lmsprint's errors are ValueErrors)
        raise
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
