"""Helpers for tests that train with real processes (torchrun + gloo on CPU): launch, kill -9 (launcher and its
workers), resume, and read/compare what runs wrote (metrics rows without timings, final weights).

Used by tests/test_ddp.py and tests/test_fsdp.py. A run is started with `start(nproc, flags, base, cwd)`; `nproc` 1
is a plain `python -m lmsprint`, more is `python -m torch.distributed.run --standalone --nproc_per_node N`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import torch
from safetensors.torch import load_file

TIMING = ("time/", "perf/")  # wall-clock metrics differ between any two runs


def env() -> dict:
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")


def cmd(nproc: int, *args) -> list:
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc)] \
        if nproc > 1 else [sys.executable]
    return [*launch, "-m", "lmsprint", *map(str, args)]


def start(nproc: int, flags: list, base, cwd) -> subprocess.Popen:
    """`lmsprint train FLAGS --results_base_folder BASE` on `nproc` processes, in the background."""
    return subprocess.Popen(cmd(nproc, "train", *flags, "--results_base_folder", base), cwd=cwd, env=env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(*ps: subprocess.Popen) -> list:
    """Wait for each run; assert it succeeded; their stderr."""
    errs = []
    for p in ps:
        _, err = p.communicate(timeout=400)
        assert p.returncode == 0, err[-3000:]
        errs.append(err)
    return errs


def kill_tree(pid: int) -> None:
    """SIGKILL a launcher and its workers (torchrun starts each worker in its own session)."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as fh:
            kids = [int(k) for k in fh.read().split()]
    except OSError:
        kids = []
    for k in kids + [pid]:
        try:
            os.kill(k, signal.SIGKILL)
        except ProcessLookupError:
            pass


def kill_after_first_checkpoint(p: subprocess.Popen, run_dir) -> None:
    """kill -9 the run as soon as its first checkpoint is complete (`latest.pt` is written last), so it dies in the
    interval after it; assert the run was still running (summary status `running`)."""
    ckpt = os.path.join(run_dir, "checkpoints", "latest.pt")
    deadline = time.time() + 300
    while not os.path.exists(ckpt) and p.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    kill_tree(p.pid)
    p.communicate()
    assert os.path.exists(ckpt), "no checkpoint before the kill"
    with open(os.path.join(run_dir, "summary.json")) as fh:
        assert json.load(fh)["status"] == "running"  # killed mid-run, not after it finished


def resume(nproc: int, base, cwd, wait: bool = True):
    """`lmsprint train --resume latest` in BASE on `nproc` processes: its stderr (wait) or the Popen."""
    p = subprocess.Popen(cmd(nproc, "train", "--resume", "latest", "--results_base_folder", base, "--device", "cpu"),
                         cwd=cwd, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return finish(p)[0] if wait else p


def rows(run_dir) -> list:
    """metrics.jsonl rows without the wall-clock metrics."""
    with open(os.path.join(run_dir, "metrics.jsonl")) as fh:
        out = [json.loads(line) for line in fh]
    return [{k: v for k, v in r.items() if not k.startswith(TIMING)} for r in out]


def close(a: list, b: list, tol: float = 2e-4) -> None:
    """Same rows, same keys, floats within `tol` (relative above 1)."""
    assert [sorted(r) for r in a] == [sorted(r) for r in b]
    for ra, rb in zip(a, b):
        for k, va in ra.items():
            vb = rb[k]
            if isinstance(va, float):
                assert abs(va - vb) <= tol * max(1.0, abs(va)), (k, ra["iter"], va, vb)
            else:
                assert va == vb, (k, va, vb)


def same_weights(run_a, run_b) -> None:
    """The final model.safetensors of two runs hold equal tensors (torch.equal: bit for bit)."""
    wa = load_file(os.path.join(run_a, "model.safetensors"))
    wb = load_file(os.path.join(run_b, "model.safetensors"))
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa), [k for k in wa if not torch.equal(wa[k], wb[k])]
