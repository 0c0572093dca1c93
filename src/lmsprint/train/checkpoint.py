"""Checkpoints: atomic save and checked load of a dict of named states, and the RNG states a resume needs.

A checkpoint is one `torch.save`d dict: model, optimizer, (grad scaler), step, sampler, RNG states (python,
numpy, torch cpu, cuda), elapsed training time, the config, and the metric accumulators needed so that a
resumed run logs exactly what an uninterrupted one would. `save_checkpoint` writes a temporary file in the same
directory, fsyncs it and `os.replace`s it over the target, so a kill at any moment leaves either the old or the
new checkpoint, never a torn one. `load_checkpoint` turns a missing or unreadable file into a `UserError`.
"""

from __future__ import annotations

import os
import random

import numpy as np
import torch

from ..errors import UserError

FORMAT_VERSION = 1
LATEST = "latest.pt"


def checkpoint_path(run_dir: str, name: str = LATEST) -> str:
    return os.path.join(run_dir, "checkpoints", name)


def save_checkpoint(path: str, state: dict) -> None:
    """Atomically write `state` to `path` (tmp file in the same directory, fsync, os.replace, fsync dir)."""
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    tmp = os.path.join(d, f".{os.path.basename(path)}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            torch.save({"format": FORMAT_VERSION, **state}, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    try:  # make the rename itself durable
        fd = os.open(d, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def load_checkpoint(path: str, map_location="cpu") -> dict:
    """Load a checkpoint written by `save_checkpoint`; UserError if it is missing or corrupt."""
    hint = "resume from another run or start a new one without --resume"
    if not os.path.isfile(path):
        raise UserError(f"checkpoint {path} is missing or corrupt (no such file); {hint}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as e:  # truncated zip, unpickling errors, ...
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(f"checkpoint {path} is missing or corrupt ({msg}); {hint}")
    if not isinstance(state, dict) or "model" not in state or "step" not in state:
        raise UserError(f"checkpoint {path} is missing or corrupt (not an lmsprint checkpoint); {hint}")
    return state


def rng_state() -> dict:
    st = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def set_rng_state(st: dict) -> None:
    random.setstate(st["python"])
    np.random.set_state(st["numpy"])
    torch.set_rng_state(st["torch"].cpu() if hasattr(st["torch"], "cpu") else st["torch"])
    if "cuda" in st and torch.cuda.is_available():
        cuda = st["cuda"]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([s.cpu() for s in cuda])
