"""The run's clock: it owns the step counter and the time, and alone decides progress, the schedule mode, the cadence
of log rows and evaluations, and when the run is done.

- Time: the clock times each optimizer step (`begin_step()` / `end_step()`; the first step of a process with
  --compile is compilation, kept in `compile_time`, outside the budget) and evaluations (`with clock.evaluating():`,
  `eval_time`). Only `train_time` counts against --time_budget. The device is synchronised only where a step needs
  its time exactly: log and eval steps, the first compiled step and the last step.
- Decisions: `total_steps` is the step count the schedule is fitted to (None: the schedule runs on time);
  `done()` says whether another step may run. With --time_budget a step runs only if the measured seconds per step
  (`step_estimate()`: the mean step of the last log interval) say it ends within the budget, so a run ends at most
  one step's time over the budget and usually just under it; the step after which none fits is known before it runs, and `progress()` (the schedule's
  position: step/iterations, or training time over the start time of that last step) is exactly 1 there, so the
  schedule ends at the last step. `end_step()` returns a `Tick` saying what the step that just ended must do: write
  a log row (every log_interval steps, and at the last step), evaluate (every eval_every steps, or the first step
  ending in each new period of eval_seconds of training time: --eval_every, or auto = a tenth of the budget), finish
  (`last`; the device is synchronised first so that its last work counts as training time).
- Several processes with a time budget or --eval_every: every rank must stop and evaluate at the same step and use
  the same learning rate, so the ranks agree on the training time at log steps (one all-reduce, where the loop
  syncs anyway) and extrapolate it in between with the agreed seconds per step, without extra syncs.
- Other time the run measures: `checkpoint_due()` / `checkpointed()` (the --ckpt_interval cadence of wall time),
  `time_block(fn)` (a measurement outside every total, e.g. the eval speed), and the seconds `evaluating()` yields.
- `wall_time`: wall seconds since training started, summed over the processes of a resumed run (what `--target`
  records next to training time).
- `tokens`: training tokens so far, counted step by step at `tokens_per_step` (the global batch times the sequence
  length, set by the trainer), so a resume that changes the global batch (`--resume_override batch_size`) counts
  the earlier steps at their own batch.
- `state_dict()` / `load_state_dict()`: step, tokens, times and whether the last step has run (under which budget
  and iterations: a resume that extends either trains on), for checkpoints (training/checkpoint.py). A checkpoint
  without `tokens` (an older lmsprint) counts its steps at `tokens_per_step`.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Callable, Optional

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
                 eval_every: int = 0, compiled: bool = False, eval_seconds: float = 0.0,
                 timer: Callable[[], float] = time.perf_counter):
        self._now = timer  # seconds (a test passes a clock it advances itself)
        self.budget = budget or 0.0
        self.iterations = iterations
        self.world = world
        self.log_every, self.eval_every, self.eval_seconds = log_every, eval_every, eval_seconds
        self.compiled = compiled
        self.step = 0
        self.tokens_per_step = 0  # training tokens of one optimizer step over all processes (set by the trainer)
        self.tokens = 0
        self.train_time = 0.0
        self.eval_time = 0.0
        self.compile_time = 0.0
        self.finished = False  # the last step has run (kept in checkpoints: a resume then only runs the final eval)
        self._agreed = world.distributed and bool(self.budget or self.eval_seconds)
        self._sec_per_step, self._agreed_time, self._agreed_step = 0.0, 0.0, 0
        self._first = compiled
        self._t0 = 0.0
        self._interval_steps, self._interval_time = 0, 0.0
        self._timed_steps, self._timed_time = 0, 0.0  # this process's training steps and their seconds
        self._recent = 0.0  # seconds per step over the last log interval (synced at both ends)
        self._final = False  # the step under way is the last one the budget allows (decided before it runs)
        self._eval_slot = 0  # --eval_every: how many eval periods of training time have passed
        self.wall_base = 0.0  # wall seconds of this run's earlier processes (from the checkpoint, `wall_time`)
        self.checkpoint_every = float("inf")  # --ckpt_interval in seconds (set by the trainer; inf: never by time)
        self._last_save = 0.0
        self._wall_t0: Optional[float] = None

    # ------------------------------------------------------------------ decisions
    @property
    def total_steps(self) -> Optional[int]:
        """The step count the lr schedule is fitted to; None when it runs on training time (a time budget)."""
        return None if self.budget else self.iterations

    def step_estimate(self) -> float:
        """Seconds the next step is expected to take: the mean step of the last log interval (the device is synced
        at both ends, so it is exact on a GPU too, and it follows a machine whose speed changes); under several
        processes the ranks' agreed mean of that interval; before the first log step this process's mean so far
        (0 before any step)."""
        if self._agreed:
            return self._sec_per_step
        if self._recent:
            return self._recent
        return self._timed_time / self._timed_steps if self._timed_steps else 0.0

    def progress(self) -> float:
        """The schedule's position for the step about to run: step / iterations, or with a time budget the training
        time over the time at which the last step starts (budget - one step), and exactly 1 at that last step."""
        if self.budget:
            if self._final:
                return 1.0
            horizon = self.budget - self.step_estimate()
            return min(self.train_time / horizon, 1.0) if horizon > 0 else 1.0
        return min(self.step / self.iterations, 1.0)

    def done(self) -> bool:
        """Whether the run has no step left (also right after a resume from its last checkpoint)."""
        return self._spent()

    def _spent(self) -> bool:
        """The budget rule: the iterations are done, or the next step would pass the time budget (judged from the
        measured seconds per step: a run ends at most one step's time over its budget, usually under it)."""
        if self.finished or self.step >= self.iterations:
            return True
        if not self.budget:
            return False
        return self.train_time >= self.budget or self.train_time + self.step_estimate() > self.budget

    def _last_by_budget(self) -> bool:
        """Before a step: whether the budget leaves room for no step after this one."""
        est = self.step_estimate()
        return bool(self.budget) and est > 0 and self.train_time + 2 * est > self.budget

    def _eval_due(self) -> bool:
        """The eval cadence: every eval_every steps, or (--eval_every, auto with a time budget) the first step
        that ends in a new period of eval_seconds of training time (agreed over ranks like the budget)."""
        if self.eval_seconds:
            slot = int(self.train_time // self.eval_seconds)
            due, self._eval_slot = slot > self._eval_slot, max(slot, self._eval_slot)
            return due
        return bool(self.eval_every) and self.step % self.eval_every == 0

    @property
    def wall_time(self) -> float:
        """Wall seconds since training started (compile, evals, checkpoints included), summed over the processes of
        a resumed run up to each one's last checkpoint; setup and the time between processes are not counted."""
        return self.wall_base + (self._now() - self._wall_t0 if self._wall_t0 is not None else 0.0)

    # ------------------------------------------------------------------ time
    def start(self) -> None:
        """Before the loop (after setup or a resume): the agreement over ranks and the wall time start from here."""
        self._sec_per_step, self._agreed_time, self._agreed_step = 0.0, self.train_time, self.step
        self._wall_t0 = self._last_save = self._now()

    def begin_step(self) -> None:
        self._final = self._last_by_budget()
        self._t0 = self._now()

    def end_step(self) -> Tick:
        """Count the optimizer step begun at `begin_step` and say what it asks of the loop (see the module doc)."""
        self.step += 1
        self.tokens += self.tokens_per_step
        step = self.step
        log = step % self.log_every == 0
        step_eval = not self.eval_seconds and self._eval_due()
        compiling, self._first = self._first, False
        synced = log or step_eval or step >= self.iterations or compiling or self._final
        if synced:
            sync(self.world.device)
        dt = self._now() - self._t0
        if compiling:  # the first step compiles: outside the budget and the throughput
            self.compile_time += dt
            dt = 0.0
        else:
            self.train_time += dt
            self._interval_steps += 1
            self._timed_steps += 1
            self._timed_time += dt
        self._agree(log)
        if log and self._interval_steps:  # the estimate the budget rule uses from here on (synced at this step)
            self._recent = (self._interval_time + dt) / self._interval_steps
        # judged on the time and the estimate as they now stand, so that `done()` is true exactly after a `last` tick
        last = self._final or self._spent()
        ev = step_eval or (bool(self.eval_seconds) and self._eval_due())
        if (last or ev) and not synced:  # the device may still run queued steps: that time is training time too
            t1 = self._now()
            sync(self.world.device)
            extra = self._now() - t1
            self.train_time += extra
            dt += extra
            last = last or self._spent()
        self._interval_time += dt
        self._final = False
        if last:
            self.finished = True
        if not (log or last):
            return Tick(step, False, ev, last, dt)
        tick = Tick(step, True, ev, last, dt, self._interval_steps, self._interval_time)
        if self._interval_steps:
            self._recent = self._interval_time / self._interval_steps
        self._interval_steps, self._interval_time = 0, 0.0
        return tick

    def _agree(self, is_log: bool) -> None:
        """Distributed + time budget or --eval_every: all-reduce the training time at log steps, extrapolate it in
        between."""
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
        """Time the block (waiting for the device at its end) as evaluation time; yields a function giving the
        seconds since the block began (the final eval sizes itself by them)."""
        t0 = self._now()
        try:
            yield lambda: self._now() - t0
        finally:
            sync(self.world.device)
            self.eval_time += self._now() - t0

    def time_block(self, fn: Callable[[], object]) -> float:
        """Seconds `fn()` takes on the device (synchronised before and after), counted in no total: a measurement
        such as the eval speed the final eval is planned from."""
        sync(self.world.device)
        t0 = self._now()
        fn()
        sync(self.world.device)
        return self._now() - t0

    # ------------------------------------------------------------------ wall-clock checkpoints
    def checkpoint_due(self) -> bool:
        """Whether `checkpoint_every` wall seconds (--ckpt_interval) have passed since `start()` or the last
        `checkpointed()` (this process's view; the ranks agree on it at log steps: ranks.save_due)."""
        return self._now() - self._last_save >= self.checkpoint_every

    def checkpointed(self) -> None:
        self._last_save = self._now()

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        return {"step": self.step, "tokens": self.tokens, "train_time": self.train_time, "eval_time": self.eval_time,
                "compile_time": self.compile_time, "wall_time": self.wall_time,
                "finished": [self.budget, self.iterations] if self.finished else None}

    def load_state_dict(self, st: dict) -> None:
        self.step = int(st["step"])
        self.tokens = int(st["tokens"]) if st.get("tokens") is not None else self.step * self.tokens_per_step
        self.train_time = float(st["train_time"])
        self.eval_time = float(st.get("eval_time", 0.0))
        self.compile_time = float(st.get("compile_time", 0.0))
        self.wall_base = float(st.get("wall_time", 0.0))
        # finished under the same budget and iterations (a resume that extends either trains on)
        self.finished = st.get("finished") == [self.budget, self.iterations]
        if self.eval_seconds:
            self._eval_slot = int(self.train_time // self.eval_seconds)
