"""The run's clock: it owns the step counter and the time, and alone decides progress, the schedule mode, the cadence
of log rows and evaluations, and when the run is done.

- Time: the clock times each optimizer step (`begin_step()` / `end_step()`; the first step of a process with
  --compile is compilation, kept in `compile_time`, outside the budget) and evaluations (`with clock.evaluating():`,
  `eval_time`). Only `train_time` counts against --time_budget. The device is synchronised only where a step needs
  its time exactly: log and eval steps, the first compiled step and the last step.
- Decisions: `progress()` is step/iterations or, with --time_budget, train_time/budget; `total_steps` is the step
  count the schedule is fitted to (None: the schedule runs on time); `done()` says whether another step may run.
  `end_step()` returns a `Tick` saying what the step that just ended must do: write a log row (every log_interval
  steps, and at the last step), evaluate (every eval_freq steps), finish (`last`: the iterations are done or the
  budget is spent; the device is synchronised first so that its last work counts as training time).
- Several processes with a time budget: every rank must stop at the same step and use the same learning rate, so the
  ranks agree on the training time at log steps (one all-reduce, where the loop syncs anyway) and extrapolate it in
  between with the agreed seconds per step, without extra syncs.
- `wall_time`: wall seconds since training started, summed over the processes of a resumed run (what `--target`
  records next to training time).
- `state_dict()` / `load_state_dict()`: step and times, for checkpoints (training/checkpoint.py).

Where a follow-up plugs in: `_spent()` is the one budget rule (e.g. "stop when the next step would pass the budget",
from the measured seconds per step), `_eval_due()` the one eval cadence (e.g. every N seconds of training time,
agreed over ranks like the budget), and `budget` the training share of the time (e.g. less a final eval's share).
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Optional

import torch

from ..hw import sync
from .distributed import World, all_reduce_mean


@dataclass(frozen=True)
class Tick:
    """What the optimizer step that just ended (`step`, counted from 1) asks of the loop."""

    step: int
    log: bool            # write a training log row (every log_interval steps and at the last step)
    eval: bool           # run a periodic evaluation
    last: bool           # the run's last step: iterations done or budget spent
    seconds: float       # training seconds of this step (0 for a compile step)
    interval_steps: int = 0      # at log ticks: training steps since the previous log tick (compile steps excluded)
    interval_time: float = 0.0   # at log ticks: their training seconds


class Clock:
    def __init__(self, budget: Optional[float], iterations: int, world: World, log_every: int = 1,
                 eval_every: int = 0, compiled: bool = False):
        self.budget = budget or 0.0
        self.iterations = iterations
        self.world = world
        self.log_every, self.eval_every = log_every, eval_every
        self.compiled = compiled
        self.step = 0
        self.train_time = 0.0
        self.eval_time = 0.0
        self.compile_time = 0.0
        self._agreed = world.distributed and bool(self.budget)
        self._sec_per_step, self._agreed_time, self._agreed_step = 0.0, 0.0, 0
        self._first = compiled
        self._t0 = 0.0
        self._interval_steps, self._interval_time = 0, 0.0
        self.wall_base = 0.0  # wall seconds of this run's earlier processes (from the checkpoint, `wall_time`)
        self._wall_t0: Optional[float] = None

    # ------------------------------------------------------------------ decisions
    @property
    def total_steps(self) -> Optional[int]:
        """The step count the lr schedule is fitted to; None when it runs on training time (a time budget)."""
        return None if self.budget else self.iterations

    def progress(self) -> float:
        if self.budget:
            return min(self.train_time / self.budget, 1.0)
        return min(self.step / self.iterations, 1.0)

    def done(self) -> bool:
        """Whether the run has no step left (also right after a resume from its last checkpoint)."""
        return self._spent()

    def _spent(self) -> bool:
        if self.step >= self.iterations:
            return True
        return bool(self.budget) and self.train_time >= self.budget

    def _eval_due(self) -> bool:
        return bool(self.eval_every) and self.step % self.eval_every == 0

    @property
    def wall_time(self) -> float:
        """Wall seconds since training started (compile, evals, checkpoints included), summed over the processes of
        a resumed run up to each one's last checkpoint; setup and the time between processes are not counted."""
        return self.wall_base + (time.perf_counter() - self._wall_t0 if self._wall_t0 is not None else 0.0)

    # ------------------------------------------------------------------ time
    def start(self) -> None:
        """Before the loop (after setup or a resume): the agreement over ranks and the wall time start from here."""
        self._sec_per_step, self._agreed_time, self._agreed_step = 0.0, self.train_time, self.step
        self._wall_t0 = time.perf_counter()

    def begin_step(self) -> None:
        self._t0 = time.perf_counter()

    def end_step(self) -> Tick:
        """Count the optimizer step begun at `begin_step` and say what it asks of the loop (see the module doc)."""
        self.step += 1
        step = self.step
        log = step % self.log_every == 0
        ev = self._eval_due()
        compiling, self._first = self._first, False
        synced = log or ev or step >= self.iterations or compiling
        if synced:
            sync(self.world.device)
        dt = time.perf_counter() - self._t0
        if compiling:  # the first step compiles: outside the budget and the throughput
            self.compile_time += dt
            dt = 0.0
        else:
            self.train_time += dt
            self._interval_steps += 1
        self._agree(log)
        last = self._spent()
        if last and not synced:  # the device may still run the last steps: that time is training time too
            t1 = time.perf_counter()
            sync(self.world.device)
            extra = time.perf_counter() - t1
            self.train_time += extra
            dt += extra
        self._interval_time += dt
        if not (log or last):
            return Tick(step, False, ev, last, dt)
        tick = Tick(step, True, ev, last, dt, self._interval_steps, self._interval_time)
        self._interval_steps, self._interval_time = 0, 0.0
        return tick

    def _agree(self, is_log: bool) -> None:
        """Distributed + time budget: all-reduce the training time at log steps, extrapolate it in between."""
        if not self._agreed:
            return
        if is_log:
            tt = all_reduce_mean(torch.tensor([self.train_time], dtype=torch.float64, device=self.world.device),
                                 self.world).item()
            if self.step > self._agreed_step:
                self._sec_per_step = (tt - self._agreed_time) / (self.step - self._agreed_step)
            self._agreed_time, self._agreed_step = tt, self.step
        self.train_time = self._agreed_time + (self.step - self._agreed_step) * self._sec_per_step

    @contextlib.contextmanager
    def evaluating(self):
        """Time the block (waiting for the device at its end) as evaluation time."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            sync(self.world.device)
            self.eval_time += time.perf_counter() - t0

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        return {"step": self.step, "train_time": self.train_time, "eval_time": self.eval_time,
                "compile_time": self.compile_time, "wall_time": self.wall_time}

    def load_state_dict(self, st: dict) -> None:
        self.step = int(st["step"])
        self.train_time = float(st["train_time"])
        self.eval_time = float(st.get("eval_time", 0.0))
        self.compile_time = float(st.get("compile_time", 0.0))
        self.wall_base = float(st.get("wall_time", 0.0))
