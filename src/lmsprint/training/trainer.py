"""The training run: `train(cfg, make_sinks, resume_dir) -> summary` and the `Trainer` it drives.

One run end to end: device (auto -> cuda), seeds, TF32; data (auto-prepared, vocabulary checked, `BatchSampler`
over the global batch); model and its training step (`step.build_train_step`: optimizer, dtype, micro-batches,
--compile, DDP under torchrun); optimizer steps with lr = base_lr * lr_multiplier(progress) (`clock.Clock`: step
/ iterations, or training time / --time_budget). The step never syncs host and device except at log steps:
losses and MoE statistics accumulate as device tensors and are read every log_interval steps.
Every eval_freq steps (and at the end) the fixed val set is evaluated and a checkpoint written (`state`); a
checkpoint is also written at least every ckpt_interval of wall time. A resumed run logs exactly what an
uninterrupted run would. Out-of-memory becomes a one-line error (`step.oom_as_user_error`).

Metrics go to `make_sinks(cfg, run_dir, enabled)` (the CLI passes `track.sinks.Sinks`): this layer never
imports the tracking layer above it.
"""

from __future__ import annotations

import os
import random
import time
from typing import Callable, Optional

import numpy as np
import torch

from .. import keys as K
from .. import rundir
from ..config import RunConfig, checkpoint_steps, parse_duration
from ..data.loader import BatchSampler, n_val_windows, to_device, val_batches
from ..files import atomic_copy
from ..hw import autocast_context, enable_tf32, mfu, peak_flops, set_cpu_threads, sync
from ..model.transformer import Transformer
from ..optim.schedules import apply_schedule
from . import artifacts, ranks, state
from .checks import check_run
from .clock import Clock
from .data import load_data
from .distributed import World, all_reduce_mean, broadcast_object, destroy, init_distributed
from .evaluate import evaluate
from .generate import sample_text
from .guard import Guard, end_status
from . import resume
from .report import Console, print_report, run_summary
from .step import build_train_step, oom_as_user_error


# eval batch on a GPU = this x the training micro-batch: no activations are kept for a backward pass, and a larger
# batch keeps the GPU busy; on a CPU a larger batch measured no faster, so it stays the micro-batch there
EVAL_BATCH_MULT = 4


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class Trainer:
    """One run: `setup()` (data, model, step, run dir, resume), `run()` the loop, `run_summary` the summary."""

    def __init__(self, cfg: RunConfig, world: World, make_sinks: Callable, resume_dir: Optional[str] = None,
                 resume_override=frozenset()):
        self.cfg, self.world, self.resume_dir, self.make_sinks = cfg, world, resume_dir, make_sinks
        self.resume_override = frozenset(resume_override)
        self.guard = Guard(world)  # signals and non-finite losses
        self.device = world.device
        self.is_main = world.is_main
        self.clock = Clock(cfg.time_budget_s, cfg.train.iterations, world)
        self.run_dir: Optional[str] = None
        self.sinks = None
        self.model = None
        self.flops_per_token, self.peak = 0.0, None
        self.step = 0
        self.n_evals = 0
        self.rows = 0
        self.last_val: dict = {}
        self.final: dict = {}
        self.final_sample = ""

    # ------------------------------------------------------------------ setup
    def setup(self) -> None:
        cfg, world, dev = self.cfg, self.world, self.device
        # a resume reads its checkpoint first: a missing or corrupt one is reported before any other work
        resume_state = state.load_checkpoint(rundir.checkpoint_path(self.resume_dir)) if self.resume_dir else None
        if resume_state is not None:
            if self.is_main:
                rundir.lock_run_dir(self.resume_dir)
            resume.check_config(resume_state.get("config"), cfg, self.resume_override, self.resume_dir)
        seed_everything(cfg.train.seed)
        enable_tf32()
        set_cpu_threads(cfg.train.threads)
        self.manifest, self.tok, train_tokens, self.val_tokens = load_data(cfg, world,
                                                                           progress=world.is_main and Console(cfg, True).bar_on)
        self.token_bytes = self.tok.token_bytes()
        if resume_state is not None:
            resume.check_data(resume_state.get("data"), self.manifest, self.resume_override, self.resume_dir)

        # another number of processes than the checkpoint's: same global batch, another per-process split
        self.saved_config = ranks.adapt_batch(cfg, resume_state, world) if resume_state is not None else None
        torch.manual_seed(cfg.train.seed)
        self.model = Transformer(cfg.model).to(dev)
        self.step_fn = build_train_step(cfg, self.model, dev, world)
        self.opt = self.step_fn.optimizer
        self.micro_bs = self.step_fn.micro_bs
        self.global_batch = cfg.train.batch_size * cfg.train.acc_steps * world.world_size
        self.tokens_per_step = self.global_batch * cfg.model.sequence_length
        self.sampler = BatchSampler(train_tokens, cfg.model.sequence_length, self.global_batch, cfg.data.data_seed,
                                    rank=world.rank, world_size=world.world_size)
        self._prefetched = None  # (step, (x, y)) already on the device
        self.ckpt_every = parse_duration(cfg.train.ckpt_interval) or float("inf")
        self.keep_steps = checkpoint_steps(cfg.train)  # step_N.pt copies kept (a ladder's branch points)
        self.flops_per_token = self.model.flops_per_token()
        self.peak = peak_flops(dev)
        self.acc = self._zero_acc()  # device accumulators between log steps (in checkpoints: exact resumes)

        if self.resume_dir:
            state.restore(self, resume_state)
            ranks.restore_states(self, resume_state)  # this rank's own RNG and accumulators
            self.run_dir = self.resume_dir
            if self.is_main:
                ms = resume_state["metrics_state"]
                rundir.truncate_metrics(self.run_dir, ms["rows"])
                rundir.truncate_file(rundir.samples_path(self.run_dir), ms.get("samples_bytes", 0))
                if self.resume_override:  # the accepted changes are now this run's config
                    rundir.write_config(self.run_dir, cfg)
            self.guard.ckpt_step = self.guard.last_log_step = self.step
        else:
            self.run_dir = broadcast_object(rundir.create_run_dir(cfg) if self.is_main else None, world)
            if self.is_main:
                rundir.lock_run_dir(self.run_dir)  # before config.yaml: a run dir without the lock is a dead one
                rundir.write_config(self.run_dir, cfg)
        self.guard.run_dir = self.run_dir
        self.sinks = self.make_sinks(cfg, self.run_dir, enabled=self.is_main)
        if self.is_main:  # what eval/generate/export need besides the weights (rebuilt offline from the run dir)
            artifacts.write_run_files(self.run_dir, self.tok)
        self.console = Console(cfg, self.is_main)
        if self.is_main:
            rundir.write_summary(self.run_dir, run_summary(self, "running"))
            self.console.banner(self, len(train_tokens), len(self.val_tokens), self.step if self.resume_dir else None)

    def _zero_acc(self) -> dict:
        z = lambda: torch.zeros((), dtype=torch.float32, device=self.device)  # noqa: E731
        return {"steps": 0, "loss": z(), "ce": z(), "n": 0, "aux": {}}

    def save(self, extra_name: Optional[str] = None) -> None:
        every_rank = ranks.gather_states(self)  # all ranks take part: each one's RNG and accumulators
        if self.world.sharded:  # FSDP: every rank writes its shards (training/ranks.py)
            self.guard.check_before_save(ranks.finite_view(self))
            ranks.save_sharded(self, every_rank, extra_name)
            self.guard.saved(self.step)
            return
        if not self.is_main:
            return
        self.guard.check_before_save(self)  # never a checkpoint after a non-finite loss
        path = rundir.checkpoint_path(self.run_dir)
        state.save_checkpoint(path, {**state.capture(self), **every_rank})
        artifacts.write_weights(self.run_dir, self.model, self.cfg.model, self.step)  # model.safetensors, no pickle
        self.guard.saved(self.step)
        if extra_name:
            atomic_copy(path, rundir.checkpoint_path(self.run_dir, extra_name))  # never a torn step_N.pt

    def log(self, metrics: dict) -> None:
        if self.is_main:
            self.sinks.log(metrics, self.step)
            self.rows += 1

    def autocast(self):
        return autocast_context(self.device, self.step_fn.dtype)

    # ------------------------------------------------------------------ one optimizer step
    def train_step(self) -> None:
        apply_schedule(self.opt.param_groups, self.clock.progress(self.step), self.cfg.optim,
                       None if self.clock.budget else self.cfg.train.iterations)
        x, y = self._batch(self.step)
        stats = self.step_fn.forward_backward(x, y)
        # while the device still runs this step's backward, sample the next batch and start its copy
        self._prefetched = (self.step + 1, self._batch(self.step + 1))
        self.step_fn.update()
        self.step += 1
        a = self.acc
        a["steps"] += 1
        a["loss"] += stats["loss"]
        a["ce"] += stats["ce_sum"]
        a["n"] += stats["n"]
        for k, v in stats["aux"].items():
            if k.startswith("moe/"):
                a["aux"][k] = v if k not in a["aux"] else a["aux"][k] + v

    def _batch(self, step: int):
        """This rank's batch of optimizer step `step` on the device (prefetched during the previous step)."""
        pre = self._prefetched
        if pre is not None and pre[0] == step:
            self._prefetched = None
            return pre[1]
        return to_device(*self.sampler.get(step), self.device)

    def flush_train_log(self, interval_tokens: int, interval_time: float) -> dict:
        """Read the accumulators (the only host-device sync of training), log one row, reset them."""
        a = self.acc
        if a["steps"] == 0:
            return {}
        vals = torch.stack([a["loss"] / a["steps"], a["ce"] / max(a["n"], 1)])
        loss, ce = all_reduce_mean(vals, self.world).tolist()
        self.guard.check_loss(loss, self.step)
        m = {K.TRAIN_LOSS: loss, K.TRAIN_CE: ce, K.LR: self.opt.param_groups[0]["lr"],
             K.TOKENS: self.step * self.tokens_per_step}
        for k, v in sorted(a["aux"].items()):
            v = all_reduce_mean(v / a["steps"], self.world)
            m[k] = v.item() if v.numel() == 1 else v.tolist()
        m[K.TRAIN_TIME] = self.clock.train_time
        if interval_time > 0:
            tps = interval_tokens / interval_time
            m[K.TOKENS_PER_S] = tps
            u = mfu(self.flops_per_token, tps, self.peak, self.world.world_size)
            if u is not None:
                m[K.MFU] = u
        self.log(m)
        self.acc = self._zero_acc()
        return m

    # ------------------------------------------------------------------ eval + samples
    def run_eval(self, max_tokens: Optional[int], final: bool = False) -> dict:
        bs = max(1, min(self.micro_bs, self.cfg.train.batch_size))
        bs *= EVAL_BATCH_MULT if str(self.device).startswith("cuda") else 1
        with self.clock.eval_timer(self.device):
            batches = val_batches(self.val_tokens, self.cfg.model.sequence_length, bs, max_tokens=max_tokens,
                                  rank=self.world.rank, world_size=self.world.world_size)
            if final:  # the full split can take minutes: show progress
                n = n_val_windows(len(self.val_tokens), self.cfg.model.sequence_length, max_tokens)
                mine = -(-n // self.world.world_size)
                batches = self.console.eval_progress(batches, -(-mine // bs), n * self.cfg.model.sequence_length)
            if self.world.sharded:  # every forward is a collective: all ranks run as many
                seq = self.cfg.model.sequence_length
                n = ranks.val_batch_count(len(self.val_tokens), seq, bs, max_tokens, self.world)
                batches = ranks.lockstep(batches, n, self.step_fn.eval_model, self.world, seq, self.device)
            return evaluate(self.step_fn.eval_model, batches, self.token_bytes, self.device, self.autocast(),
                            self.world, inference=final)

    def sample(self) -> str:
        lc = self.cfg.log
        if (not self.is_main and not self.world.sharded) or lc.sample_tokens <= 0:  # FSDP: all ranks forward
            return ""
        with self.clock.eval_timer(self.device):
            text = sample_text(self.model, self.tok, lc.eval_seq_prefix, max_new_tokens=lc.sample_tokens,
                               temperature=0.8, top_k=200, seed=self.cfg.train.seed + self.step, device=self.device,
                               ctx=self.autocast())[0]
        if self.is_main:
            self.sinks.log_text(self.step, lc.eval_seq_prefix, text)
        return text

    def periodic_eval(self) -> dict:
        res = self.run_eval(self.cfg.train.eval_tokens)
        self.guard.check_eval(res.get(K.VAL_LOSS), self.step)  # NaN weights: stop before logging or sampling
        self.n_evals += 1
        self.last_val = {k: v for k, v in res.items() if k != "eval_tokens"}
        self.log({**self.last_val, K.TOKENS: self.step * self.tokens_per_step, K.EVAL_TIME: self.clock.eval_time})
        if self.n_evals % 5 == 1:
            self.sample()
        return res

    # ------------------------------------------------------------------ the loop
    def run(self) -> dict:
        cfg, t, clock = self.cfg, self.cfg.train, self.clock
        bar = self.console
        bar.start(clock, self.step)
        last_ckpt = time.perf_counter()
        log_tokens, log_time = 0, 0.0
        first_step = True
        clock.start(self.step)
        while not clock.done(self.step):
            t0 = time.perf_counter()
            self.train_step()
            is_log = self.step % cfg.log.log_interval == 0
            is_eval = self.step % t.eval_freq == 0
            is_last = self.step >= t.iterations
            if first_step and t.compile:
                sync(self.device)
                clock.compile_time += time.perf_counter() - t0  # first step = compilation, outside the budget
                first_step = False
            else:
                if is_log or is_eval or is_last:
                    sync(self.device)
                dt = time.perf_counter() - t0
                clock.train_time += dt
                log_time += dt
                log_tokens += self.tokens_per_step
            clock.agree(self.step, is_log)
            if is_log:
                m = self.flush_train_log(log_tokens, log_time)
                log_tokens, log_time = 0, 0.0
                if m:
                    bar.train_log(self.step, m)
            bar.advance()
            if is_eval:
                res = self.periodic_eval()
                bar.eval_done(self.step, res)
            extra = f"step_{self.step}.pt" if (t.save_checkpoint_freq and self.step % t.save_checkpoint_freq == 0) \
                or self.step in self.keep_steps else None
            due = ranks.save_due(time.perf_counter() - last_ckpt >= self.ckpt_every, is_log, self.world)
            if is_eval or extra or due:
                self.save(extra)
                last_ckpt = time.perf_counter()
            if self.guard.stop_requested(is_log):  # SIGTERM/SIGHUP/SIGINT: checkpoint here, summary `interrupted`
                self.save()
                raise self.guard.interrupted(self.step)
        # the last partial log interval
        if self.acc["steps"]:
            t0 = time.perf_counter()
            sync(self.device)  # the device may still be running the last steps: that time is training time too
            dt = time.perf_counter() - t0
            clock.train_time += dt
            log_time += dt
            self.flush_train_log(log_tokens, log_time)
        bar.close()
        self.save()
        return self.final_eval()

    def final_eval(self) -> dict:
        mode = self.cfg.train.final_eval
        if mode == "none":
            self.final = dict(self.last_val)
        else:
            self.final = self.run_eval(None if mode == "full" else self.cfg.train.eval_tokens, final=True)
            self.log({f"{K.FINAL}/{k}": v for k, v in self.final.items()})
        self.final_sample = self.sample()
        return self.final


def train(cfg: RunConfig, make_sinks: Callable, resume_dir: Optional[str] = None,
          resume_override=frozenset()) -> dict:
    """Run (or resume) one training run; returns its summary (status 'complete'). `make_sinks(cfg, run_dir,
    enabled)` returns the metric sinks (`log`, `log_text`, `finish`). `resume_override`: option names (or
    `dataset`) a resume may change (`resume.check_config`). Raises `guard.RunInterrupted` after a stop signal."""
    check_run(cfg)  # also for configs read back from a run directory on --resume
    world = init_distributed(cfg.train.device, cfg.train.distributed_backend, cfg.train.data_parallel)
    tr = Trainer(cfg, world, make_sinks, resume_dir, resume_override)
    try:
        with oom_as_user_error(cfg):
            tr.setup()
            with tr.guard.signals():
                tr.run()
        summary = run_summary(tr, "complete")
        if tr.is_main:
            rundir.write_summary(tr.run_dir, summary)
            print_report(summary, tr.run_dir, tr.final_sample)
        if tr.sinks is not None:
            tr.sinks.finish(summary)
        return summary
    except BaseException as e:
        if tr.run_dir is not None and tr.is_main:
            status, err = end_status(e)
            summary = run_summary(tr, status, error=err)
            try:
                rundir.write_summary(tr.run_dir, summary)
                if tr.sinks is not None:
                    tr.sinks.finish(summary)
            except OSError:
                pass  # e.g. the disk is full: the error being raised says more than this one
        raise
    finally:
        if tr.run_dir is not None and tr.is_main:
            rundir.unlock_run_dir(tr.run_dir)
        destroy(world)
