"""The run's clock: elapsed training / eval / compile time, the time budget, and when to stop.

- `wall_time`: wall seconds since training started (what `--target` records next to training time).
- Progress is step/iterations or, with --time_budget, elapsed *training* time / budget (eval, checkpoints and
  compilation are kept out of the budget, in `eval_time` and `compile_time`); the run is done at 1.
- Under torchrun with a time budget every rank must stop at the same step and use the same learning rate, so the
  ranks agree on the training time at log steps (one all-reduce, where the loop syncs anyway) and extrapolate
  it in between with the agreed seconds per step, without extra syncs (`agree`).
"""

from __future__ import annotations

import contextlib
import time
from typing import Optional

import torch

from ..hw import sync
from .distributed import World, all_reduce_mean


class Clock:
    def __init__(self, budget: Optional[float], iterations: int, world: World):
        self.budget = budget or 0.0
        self.iterations = iterations
        self.world = world
        self.train_time = 0.0
        self.eval_time = 0.0
        self.compile_time = 0.0
        self._agreed = world.distributed and bool(self.budget)
        self._sec_per_step, self._agreed_time, self._agreed_step = 0.0, 0.0, 0
        self.wall_base = 0.0  # wall seconds of this run's earlier processes (from the checkpoint, `wall_time`)
        self._wall_t0: Optional[float] = None

    def progress(self, step: int) -> float:
        if self.budget:
            return min(self.train_time / self.budget, 1.0)
        return min(step / self.iterations, 1.0)

    def done(self, step: int) -> bool:
        if step >= self.iterations:
            return True
        return bool(self.budget) and self.train_time >= self.budget

    def start(self, step: int) -> None:
        """Begin agreeing (and counting wall time) from here (after setup or a resume)."""
        self._sec_per_step, self._agreed_time, self._agreed_step = 0.0, self.train_time, step
        self._wall_t0 = time.perf_counter()

    @property
    def wall_time(self) -> float:
        """Wall seconds since training started (compile, evals, checkpoints included), summed over the processes of
        a resumed run up to each one's last checkpoint; setup and the time between processes are not counted."""
        return self.wall_base + (time.perf_counter() - self._wall_t0 if self._wall_t0 is not None else 0.0)

    def agree(self, step: int, is_log: bool) -> None:
        """Distributed + time budget: all-reduce the training time at log steps, extrapolate it in between."""
        if not self._agreed:
            return
        if is_log:
            tt = all_reduce_mean(torch.tensor([self.train_time], dtype=torch.float64, device=self.world.device),
                                 self.world).item()
            if step > self._agreed_step:
                self._sec_per_step = (tt - self._agreed_time) / (step - self._agreed_step)
            self._agreed_time, self._agreed_step = tt, step
        self.train_time = self._agreed_time + (step - self._agreed_step) * self._sec_per_step

    @contextlib.contextmanager
    def eval_timer(self, device):
        """Time the block (waiting for the device at its end) as evaluation time."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            sync(device)
            self.eval_time += time.perf_counter() - t0
