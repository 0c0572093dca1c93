"""Stopping a run cleanly: termination signals and non-finite losses.

- `Guard.signals()`: a context manager around the training loop (main thread only). While it is active SIGTERM,
  SIGHUP and SIGINT only set a flag (no work in the handler; a second SIGINT raises KeyboardInterrupt at once).
  The loop asks `stop_requested(is_log)` between optimizer steps; under torchrun the flag is agreed over ranks at
  log steps (those already synchronise). The Trainer then saves a checkpoint and raises `RunInterrupted`: summary
  `interrupted` at that step, exit status 128 + the signal number (SIGHUP 129, SIGINT 130, SIGTERM 143).
- `Guard.check_loss(loss, step)`: the training loss read at a log step (the loss sums of every step since the last
  log step are accumulated on the device, so one non-finite step makes the sum non-finite; no extra host sync)
  -> `NonFiniteLoss` naming the steps. The run stops, the summary says `failed` with the reason.
- `Guard.check_eval(val_loss, step)`: the same for the val loss of a periodic eval (before it is logged or a sample
  is drawn from non-finite weights).
- `Guard.check_before_save(loss, model, step)`: a checkpoint is never written after a non-finite loss (`loss`: the
  accumulated device sum since the last log step) or with non-finite weights (one device reduction, read while
  saving, which waits for the device anyway), so the checkpoint kept is the last finite one. Under fsdp every rank
  checks its own shards and the ranks agree (a collective: every rank calls it); otherwise rank 0 alone checks.
- `Guard.peer_lost(e, step)`: under torchrun, the collective that fails when another process of the run died (kill -9, a
  crash, a lost node: gloo's "Connection closed by peer", NCCL's DistBackendError) -> `PeerLost`, a one-line
  stop: summary `interrupted` when a checkpoint is there to resume from (else `failed`), never a traceback.
"""

from __future__ import annotations

import contextlib
import math
import re
import signal
import threading
from typing import Optional

import torch
import torch.distributed as dist

from ..errors import UserError
from ..hw import unwrap
from .distributed import World, all_reduce_max, all_reduce_mean

STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)


class RunInterrupted(Exception):
    """The run stopped at a signal after saving a checkpoint; `exit_code` is 128 + the signal number."""

    def __init__(self, signum: int, step: int, run_dir: Optional[str]):
        self.signum, self.step, self.run_dir = signum, step, run_dir
        self.exit_code = 128 + signum
        name = signal.Signals(signum).name
        super().__init__(f"{name} at step {step}: checkpoint saved; continue with "
                         f"`lmsprint train --resume {run_dir}`")


class PeerLost(RunInterrupted):
    """Another process of a torchrun run ended; this one stopped at its next collective (exit status 1)."""

    def __init__(self, step: int, run_dir: Optional[str], ckpt_step: Optional[int], why: str):
        self.signum, self.step, self.run_dir, self.ckpt_step = None, step, run_dir, ckpt_step
        self.exit_code = 1
        then = (f"the checkpoint of step {ckpt_step} is kept: continue with the same launcher and "
                f"`lmsprint train --resume {run_dir}`" if ckpt_step is not None
                else "no checkpoint had been written: start the run again")
        Exception.__init__(self, f"another process of the run ended, this one stopped at step {step} ({why}); {then}")


# what gloo says when the process at the other end of a connection is gone
_PEER_GONE = ("Connection closed by peer", "Connection reset by peer", "Broken pipe", "remote worker crashing")


class NonFiniteLoss(UserError):
    """The training loss (or the weights) became NaN or infinite; the run stopped without saving over the last
    finite checkpoint."""


class Guard:
    def __init__(self, world: World):
        self.world = world
        self.signum: Optional[int] = None
        self.last_log_step = 0
        self.ckpt_step: Optional[int] = None
        self.run_dir: Optional[str] = None

    def peer_lost(self, e: BaseException, step: int) -> Optional[PeerLost]:
        """A `PeerLost` for an exception `e` raised at `step` that says another process of the run is gone, else
        None."""
        if not self.world.distributed or isinstance(e, (RunInterrupted, UserError)):
            return None
        text = str(e)
        if not (isinstance(e, dist.DistError) or (isinstance(e, RuntimeError) and any(t in text for t in _PEER_GONE))):
            return None
        first = re.sub(r"^\[[^\]]*\]\s*", "", (text.strip().splitlines() or [type(e).__name__])[0])  # gloo's [file:line]
        return PeerLost(step, self.run_dir, self.ckpt_step, first.split(". ")[0][:160])

    # ------------------------------------------------------------------ signals
    def _handler(self, signum, frame) -> None:
        if self.signum == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now, without the checkpoint
        self.signum = signum

    @contextlib.contextmanager
    def signals(self):
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        old = {s: signal.signal(s, self._handler) for s in STOP_SIGNALS}
        try:
            yield
        finally:
            for s, h in old.items():
                signal.signal(s, h)

    def stop_requested(self, is_log: bool) -> bool:
        if not self.world.distributed:
            return self.signum is not None
        if not is_log:
            return False
        flag = torch.tensor([0.0 if self.signum is None else float(self.signum)], device=self.world.device)
        got = all_reduce_mean(flag, self.world).item()
        if got and self.signum is None:
            self.signum = signal.SIGTERM  # another rank was signalled
        return bool(got)

    def interrupted(self, step: int) -> RunInterrupted:
        return RunInterrupted(self.signum or signal.SIGTERM, step, self.run_dir)

    # ------------------------------------------------------------------ non-finite numbers
    def _stopped(self, what: str, value, step: int) -> NonFiniteLoss:
        kept = (f"the last finite checkpoint (step {self.ckpt_step}) is kept" if self.ckpt_step is not None
                else "no checkpoint had been written")
        first = f"steps {self.last_log_step + 1}-{step}" if step > self.last_log_step + 1 else f"step {step}"
        return NonFiniteLoss(f"{what} is {value} at step {step} (it became non-finite in {first}); the run stopped and "
                             f"is marked failed, {kept}; lower `lr` or check the data")

    def check_loss(self, loss: float, step: int) -> None:
        if not math.isfinite(loss):
            raise self._stopped("the training loss", loss, step)
        self.last_log_step = step

    def check_eval(self, val_loss, step: int) -> None:
        """The val loss of a periodic eval (already on the host): non-finite means the weights are."""
        if val_loss is not None and not math.isfinite(val_loss):
            raise self._stopped("the val loss", val_loss, step)

    def check_before_save(self, loss: torch.Tensor, model: torch.nn.Module, step: int) -> None:
        loss_ok = torch.isfinite(loss).reshape(1)
        if self.world.sharded:  # a reduction over a sharded DTensor is a collective: each rank's shards, agreed
            w_ok = torch.stack([torch.isfinite(getattr(p, "_local_tensor", p)).all() for p in model.parameters()])
            bad = all_reduce_max((~torch.cat([loss_ok, w_ok.all().reshape(1)])).float(), self.world).tolist()
            loss_bad, weights_bad = bool(bad[0]), bool(bad[1])
        else:
            flags = [loss_ok] + [torch.isfinite(p).all().reshape(1) for p in unwrap(model).parameters()]
            if bool(torch.cat(flags).all()):
                return
            loss_bad = not bool(loss_ok)
            weights_bad = not loss_bad
        if loss_bad:
            value = float(loss) if not torch.isfinite(loss) else float("nan")  # another rank's loss
            raise self._stopped("the training loss", value, step)
        if weights_bad:
            raise self._stopped("a model weight", "not finite", step)

    def saved(self, step: int) -> None:
        self.ckpt_step = step


def end_status(e: BaseException) -> tuple[str, str]:
    """(summary status, error text) of a run that ended with exception `e`."""
    if isinstance(e, PeerLost):
        return ("interrupted" if e.ckpt_step is not None else "failed"), f"another process ended at step {e.step}"
    if isinstance(e, RunInterrupted):
        return "interrupted", f"{signal.Signals(e.signum).name} at step {e.step}"
    if isinstance(e, KeyboardInterrupt):
        return "failed", "interrupted"
    return "failed", (str(e).splitlines() or [type(e).__name__])[0]
