"""The training run: `train(cfg, make_sinks, resume_dir) -> summary` and the `Trainer` it drives.

One run end to end: device (auto -> cuda), seeds, TF32; data (auto-prepared, vocabulary checked, `BatchSampler`
over the global batch, `DeviceBatches` on the device); model and its training step (`step.build_train_step`:
optimizer, dtype, micro-batches, --compile, DDP under torchrun); optimizer steps with lr = base_lr *
lr_multiplier(progress). The clock (`clock.Clock`) owns the step and the time and says what each step asks for:
a log row, an evaluation, the end. The step never syncs host and device except where the clock needs it (log,
eval and last steps): losses and MoE statistics accumulate as device tensors (`metrics.MetricAccumulator`) and are
read every log_interval steps.
At each eval the clock asks for (every N steps, or every S seconds of training time) the fixed val set is evaluated
and a checkpoint written (`checkpoint.Checkpointer`, which saves the components' states: model, optimizer, clock,
sampler, run record, and every rank's RNG and accumulators); a checkpoint is also written at least every
ckpt_interval of wall time, and at the last step. A resumed run logs exactly what an uninterrupted run would. After
the last step the final eval scores nested prefixes of the val split as `final_eval.plan_final_eval` planned at setup
(with `auto` and a budget: sized from one timed eval batch, and judged again before each prefix), and stops within
a batch at a stop signal (the run is then `interrupted`; its resume runs only the final eval). Out-of-memory
becomes a one-line error (`step.oom_as_user_error`).

Metrics go to `make_sinks(cfg, run_dir, enabled)` (the CLI passes `track.sinks.Sinks`): this layer never
imports the tracking layer above it.
"""

from __future__ import annotations

import random
from typing import Callable, Optional

import numpy as np
import torch

from .. import keys as K
from .. import rundir
from ..config import RunConfig, checkpoint_steps, parse_duration
from ..data.loader import BatchSampler, DeviceBatches, n_val_windows, val_batches
from ..hw import autocast_context, enable_tf32, mfu, peak_flops, set_cpu_threads
from ..model.transformer import Transformer
from ..optim.schedules import apply_schedule
from . import artifacts, ranks, resume, state
from .checkpoint import Checkpointer, read_checkpoint
from .checks import check_run
from .clock import Clock, Tick
from .data import load_data
from .distributed import World, all_reduce_max, broadcast_object, destroy, init_distributed
from .evaluate import eval_sums, val_metrics
from .final_eval import FinalPlan, next_fits, plan_final_eval
from .generate import sample_text
from .guard import Guard, end_status
from .metrics import MetricAccumulator, RunRecord
from .report import Console, RunInfo, print_report, run_summary
from .state import RNGState
from .step import build_train_step, oom_as_user_error
from .target import TargetTracker
from .valsets import val_set_identities


# eval batch on a GPU = this x the training micro-batch: no activations are kept for a backward pass, and a larger
# batch keeps the GPU busy; on a CPU a larger batch measured no faster, so it stays the micro-batch there
EVAL_BATCH_MULT = 4


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class Trainer:
    """One run: `setup()` (data, model, step, run dir, resume), `run()` the loop; `info`, `clock` and `final` make
    its summary (`report.run_summary`)."""

    def __init__(self, cfg: RunConfig, world: World, make_sinks: Callable, resume_dir: Optional[str] = None,
                 resume_override=frozenset()):
        self.cfg, self.world, self.resume_dir, self.make_sinks = cfg, world, resume_dir, make_sinks
        self.resume_override = frozenset(resume_override)
        self.guard = Guard(world)  # signals and non-finite losses
        self.device = world.device
        self.is_main = world.is_main
        t = cfg.train
        eval_steps, eval_seconds = cfg.eval_cadence
        self.clock = Clock(cfg.time_budget_s, t.iterations, world, log_every=cfg.log.log_interval,
                           eval_every=eval_steps, compiled=t.compile, eval_seconds=eval_seconds)
        self.info = RunInfo(cfg, world.world_size, world.device)
        self.record = RunRecord()
        self.target = TargetTracker(t.target, t.stop_at_target)  # --target: time to target
        # a resume that adds or changes --target looks for it among the eval rows logged up to the checkpoint
        self.target.history = lambda: rundir.read_metrics(self.run_dir)[:self.record.rows]
        self.run_dir: Optional[str] = None
        # summary.json is this process's to rewrite: a new run's from its creation, a resumed run's once the resume
        # has passed every check and restored every state (a refused resume leaves the run's summary as it was)
        self.owns_summary = False
        self.sinks = None
        self.final: dict = {}
        self.final_sample = ""

    # ------------------------------------------------------------------ setup
    def setup(self) -> None:
        cfg, world = self.cfg, self.world
        # a resume reads its checkpoint first: a missing or corrupt one is reported before any other work
        resume_state = read_checkpoint(self.resume_dir) if self.resume_dir else None
        if resume_state is not None:
            if self.is_main:
                rundir.lock_run_dir(self.resume_dir)
            resume.check_config(resume_state.get("config"), cfg, self.resume_override, self.resume_dir)
            state.check_resumable(resume_state, rundir.checkpoint_path(self.resume_dir), cfg)  # never past the end
        seed_everything(cfg.train.seed)
        enable_tf32()
        set_cpu_threads(cfg.train.threads)
        manifest, self.tok, train_tokens, self.val_tokens = load_data(cfg, world,
                                                                      progress=world.is_main and Console(cfg, True).bar_on)
        self.token_bytes = self.tok.token_bytes()
        self.manifest = manifest
        if resume_state is not None:
            resume.check_data(resume_state.get("data"), manifest, self.resume_override, self.resume_dir)
        # another number of processes than the checkpoint's: same global batch, another per-process split (unless
        # --resume_override names batch_size or acc_steps: then the new batch stands)
        saved_config = (ranks.adapt_batch(cfg, resume_state, world, self.resume_override) if resume_state is not None
                        else None)
        self._build(train_tokens, manifest)
        self._open_run_dir()
        self.checkpointer = Checkpointer(
            world, self.model, self.opt,
            states={"clock": self.clock, "sampler": self.batches, "record": self.record, "target": self.target,
                    "scaler": self.step_fn.scaler},
            rank_states={"rng": RNGState(), "metrics": self.metrics},
            header={"config": resume.kept_config(saved_config, cfg, self.resume_override) if saved_config
                    else cfg.to_dict(), "data": resume.data_identity(manifest),
                    "global_batch": self.batches.sampler.global_batch},
            model_cfg=cfg.model, run_dir=self.run_dir)
        if resume_state is not None:
            self._restore(resume_state)
        self.final_plan = self._plan_final_eval()
        self.info.final_plan = self.final_plan  # summary.json: what the evals score (the final one: as planned)
        self.info.val_sets = val_set_identities(cfg, manifest, len(self.val_tokens), self.final_plan.windows)
        self.sinks = self.make_sinks(cfg, self.run_dir, enabled=self.is_main)
        if self.is_main:  # what eval/generate/export need besides the weights (rebuilt offline from the run dir)
            artifacts.write_run_files(self.run_dir, self.tok)
        self.console = Console(cfg, self.is_main)
        if self.is_main:
            rundir.write_summary(self.run_dir, self.summary("running"))
            self.console.banner(self.info, self.clock.step if self.resume_dir else None)
        self.owns_summary = True

    def _build(self, train_tokens, manifest) -> None:
        """The model, its training step, the batches and the accumulators; what the banner says of them."""
        cfg, world, dev, info = self.cfg, self.world, self.device, self.info
        torch.manual_seed(cfg.train.seed)
        self.model = Transformer(cfg.model).to(dev)
        self.step_fn = build_train_step(cfg, self.model, dev, world)
        self.opt = self.step_fn.optimizer
        global_batch = cfg.train.batch_size * cfg.train.acc_steps * world.world_size
        self.clock.tokens_per_step = global_batch * cfg.model.sequence_length  # the clock counts the tokens
        sampler = BatchSampler(train_tokens, cfg.model.sequence_length, global_batch, cfg.data.data_seed,
                               rank=world.rank, world_size=world.world_size)
        self.batches = DeviceBatches(sampler, dev)
        self.metrics = MetricAccumulator(dev)  # device sums between log steps (in checkpoints: exact resumes)
        self.clock.checkpoint_every = parse_duration(cfg.train.ckpt_interval) or float("inf")
        self.keep_steps = checkpoint_steps(cfg.train)  # step_N.pt copies kept at these steps (a ladder's branches)
        info.tokens_per_step = self.clock.tokens_per_step
        info.params_total, info.params_active = self.model.num_params(), self.model.num_active_params()
        info.flops_per_token, info.peak_flops = self.model.flops_per_token(), peak_flops(dev)
        info.micro_batch, info.dtype = self.step_fn.micro_bs, str(self.step_fn.dtype).replace("torch.", "")
        info.tokenizer = str(getattr(manifest, "tokenizer", "?"))
        info.train_tokens, info.val_tokens = len(train_tokens), len(self.val_tokens)

    def _open_run_dir(self) -> None:
        """The resumed run's directory, or a new one (locked, config.yaml written)."""
        if self.resume_dir:
            self.run_dir = self.resume_dir
        else:
            self.run_dir = broadcast_object(rundir.create_run_dir(self.cfg) if self.is_main else None, self.world)
            if self.is_main:
                rundir.lock_run_dir(self.run_dir)  # before config.yaml: a run dir without the lock is a dead one
                rundir.write_config(self.run_dir, self.cfg)
        self.info.run_dir = self.record.run_dir = self.guard.run_dir = self.run_dir

    def _restore(self, resume_state: dict) -> None:
        """Every state from the checkpoint; metrics.jsonl and samples.txt cut back to what it had written."""
        self.checkpointer.restore(resume_state, keep_hyperparameters=bool(self.resume_override))
        if self.is_main:
            rundir.truncate_metrics(self.run_dir, self.record.rows)
            rundir.truncate_file(rundir.samples_path(self.run_dir), self.record.samples_bytes)
            if self.resume_override:  # the accepted changes are now this run's config
                rundir.write_config(self.run_dir, self.cfg)
        self.guard.ckpt_step = self.guard.last_log_step = self.clock.step

    def summary(self, status: str, error: Optional[str] = None) -> dict:
        return run_summary(self.info, self.clock, self.final, status, error, self.target.summary())

    def save(self, keep: Optional[str] = None) -> None:
        """A checkpoint of this step (collective); never after a non-finite loss or with non-finite weights."""
        step = self.clock.step
        if self.world.sharded or self.is_main:
            self.guard.check_before_save(self.metrics.loss, self.model, step)
        self.checkpointer.save(step, keep)
        self.guard.saved(step)

    def log(self, metrics: dict) -> None:
        if self.is_main:
            self.sinks.log(metrics, self.clock.step)
            self.record.rows += 1

    def autocast(self):
        return autocast_context(self.device, self.step_fn.dtype)

    # ------------------------------------------------------------------ one optimizer step
    def train_step(self) -> Tick:
        """One optimizer step, timed by the clock; returns what the clock says it asks for."""
        clock = self.clock
        clock.begin_step()
        apply_schedule(self.opt.param_groups, clock.progress(), self.cfg.optim, clock.total_steps)
        x, y = self.batches.next()
        # while the device still runs this step's backward, sample the next batch and start its copy
        self.metrics.add(self.step_fn.step(x, y, during_backward=self.batches.prefetch))
        return clock.end_step()

    def flush_train_log(self, interval_tokens: int, interval_time: float) -> dict:
        """Read the accumulators (the only host-device sync of training), log one row, reset them."""
        read = self.metrics.read(self.world)
        if read is None:
            return {}
        loss, ce, aux = read
        step = self.clock.step
        self.guard.check_loss(loss, step)
        m = {K.TRAIN_LOSS: loss, K.TRAIN_CE: ce, K.LR: self.opt.param_groups[0]["lr"],
             K.TOKENS: self.clock.tokens, **aux, K.TRAIN_TIME: self.clock.train_time}
        if interval_time > 0:
            tps = interval_tokens / interval_time
            m[K.TOKENS_PER_S] = tps
            u = mfu(self.info.flops_per_token, tps, self.info.peak_flops, self.world.world_size)
            if u is not None:
                m[K.MFU] = u
        self.log(m)
        return m

    # ------------------------------------------------------------------ eval + samples
    def _eval_batch_size(self) -> int:
        bs = max(1, min(self.step_fn.micro_bs, self.cfg.train.batch_size))
        return bs * (EVAL_BATCH_MULT if str(self.device).startswith("cuda") else 1)

    def eval_sums(self, first_window: int, end_window: int, final: bool = False, stop=None) -> torch.Tensor:
        """The all-reduced eval sums over val windows [first_window, end_window) (`evaluate.eval_sums`)."""
        seq, bs = self.cfg.model.sequence_length, self._eval_batch_size()
        n_tok, end = len(self.val_tokens), end_window * seq
        batches = val_batches(self.val_tokens, seq, bs, max_tokens=end, rank=self.world.rank,
                              world_size=self.world.world_size, first_window=first_window)
        n_mine = ranks.val_batch_count(n_tok, seq, bs, end, self.world, first_window)
        if final:  # a large piece of the split can take minutes: show progress
            batches = self.console.eval_progress(batches, n_mine, (end_window - first_window) * seq, announce=False)
        if self.world.sharded:  # every forward is a collective: all ranks run as many
            batches = ranks.lockstep(batches, n_mine, self.step_fn.eval_model, self.world, seq, self.device)
        return eval_sums(self.step_fn.eval_model, batches, self.token_bytes, self.device, self.autocast(),
                         self.world, inference=final, stop=stop)

    def run_eval(self, max_tokens: Optional[int]) -> dict:
        """The metrics of a periodic eval on the first `max_tokens` val tokens."""
        with self.clock.evaluating():
            end = n_val_windows(len(self.val_tokens), self.cfg.model.sequence_length, max_tokens)
            return val_metrics(self.eval_sums(0, end))

    def _plan_final_eval(self) -> FinalPlan:
        """The final eval's plan (training/final_eval.py); auto with a budget times one eval batch for the banner."""
        t, seq = self.cfg.train, self.cfg.model.sequence_length
        total = n_val_windows(len(self.val_tokens), seq)
        fixed = n_val_windows(len(self.val_tokens), seq, t.eval_tokens)
        speed = None
        if t.final_eval == "auto" and self.cfg.time_budget_s:
            speed = self._eval_speed()
        return plan_final_eval(t.final_eval, self.cfg.time_budget_s, fixed, total, speed)

    def _eval_speed(self) -> float:
        """Val windows per second of the eval model, all processes together: one eval batch timed after a warm-up
        one (the slowest process's time)."""
        n = min(self._eval_batch_size(), n_val_windows(len(self.val_tokens), self.cfg.model.sequence_length))
        seconds = 0.0
        for _ in range(2):  # the second, warm one counts
            seconds = self.clock.time_block(lambda: self.eval_sums(0, n * self.world.world_size))
        seconds = all_reduce_max(torch.tensor([seconds], dtype=torch.float64, device=self.device), self.world).item()
        return n * self.world.world_size / max(seconds, 1e-9)

    def sample(self) -> str:
        lc = self.cfg.log
        if (not self.is_main and not self.world.sharded) or lc.sample_tokens <= 0:  # FSDP: all ranks forward
            return ""
        with self.clock.evaluating():
            text = sample_text(self.model, self.tok, lc.eval_seq_prefix, max_new_tokens=lc.sample_tokens,
                               temperature=0.8, top_k=200, seed=self.cfg.train.seed + self.clock.step,
                               device=self.device, ctx=self.autocast())[0]
        if self.is_main:
            self.sinks.log_text(self.clock.step, lc.eval_seq_prefix, text)
        return text

    def periodic_eval(self) -> dict:
        res = self.run_eval(self.cfg.train.eval_tokens)
        step, rec = self.clock.step, self.record
        self.guard.check_eval(res.get(K.VAL_LOSS), step)  # NaN weights: stop before logging or sampling
        rec.n_evals += 1
        rec.last_val = {k: v for k, v in res.items() if k != K.EVAL_TOKENS}
        tokens, train_s, wall_s = self.clock.tokens, self.clock.train_time, self.clock.wall_time
        self.log({**rec.last_val, K.TOKENS: tokens, K.EVAL_TIME: self.clock.eval_time, K.TRAIN_TIME: train_s,
                  K.WALL_TIME: wall_s})  # every eval row carries its own step, tokens and times
        if self.target.observe(res, step, tokens, train_s, wall_s):  # the first eval reaching --target
            self.log(self.target.row())
            self.console.print(self.target.describe())
        if rec.n_evals % 5 == 1:
            self.sample()
        return res

    # ------------------------------------------------------------------ the loop
    def run(self) -> dict:
        t, clock, bar = self.cfg.train, self.clock, self.console
        bar.start(clock)
        clock.start()
        while not clock.done() and not self.target.stop():  # --stop_at_target ends the loop after that eval
            tick = self.train_step()
            if tick.log:  # every log_interval steps, and the last (partial) interval at the last step
                m = self.flush_train_log(tick.interval_steps * clock.tokens_per_step, tick.interval_time)
                if m:
                    bar.train_log(tick.step, m)
            bar.advance()
            if tick.eval:
                bar.eval_done(tick.step, self.periodic_eval())
            kept = (t.save_checkpoint_freq and tick.step % t.save_checkpoint_freq == 0) or tick.step in self.keep_steps
            keep = f"step_{tick.step}.pt" if kept else None
            due = ranks.save_due(clock.checkpoint_due(), tick.log, self.world)
            saved = tick.eval or tick.last or bool(keep) or due
            if saved:
                self.save(keep)
                clock.checkpointed()
            if self.guard.stop_requested(tick.log):  # SIGTERM/SIGHUP/SIGINT: checkpoint here, summary `interrupted`
                if not saved:
                    self.save()
                raise self.guard.interrupted(tick.step)
        bar.close()
        return self.final_eval()

    def final_eval(self) -> dict:
        """The final eval over the plan's nested prefixes (training/final_eval.py), each one's metrics kept; a stop
        signal ends it within a batch (between prefixes under torchrun) and the run is `interrupted`, resumable."""
        plan = self.final_plan
        if plan.mode == "none":
            self.final = dict(self.record.last_val)
        else:
            self.final = self._score_prefixes(plan)
            self.log({f"{K.FINAL}/{k}": v for k, v in self.final.items()})
        self.final_sample = self.sample()
        return self.final

    def _score_prefixes(self, plan: FinalPlan) -> dict:
        seq, guard = self.cfg.model.sequence_length, self.guard
        stop = None if self.world.distributed else (lambda: guard.signum is not None)
        sums = torch.zeros(4, dtype=torch.float64, device=self.device)
        done, prefixes = 0, {}
        with self.clock.evaluating() as seconds:
            for w in plan.grid:
                elapsed = all_reduce_max(torch.tensor([seconds()], dtype=torch.float64, device=self.device),
                                         self.world).item()
                if not next_fits(done, elapsed, w, plan.limit_s):
                    break
                part = self.eval_sums(done, w, final=True, stop=stop)
                if guard.stop_requested(True):  # the run's last checkpoint is there: a resume runs this eval again
                    raise guard.interrupted(self.clock.step)
                sums += part
                done = w
                prefixes[str(w * seq)] = res = val_metrics(sums)
                if len(plan.grid) > 1:
                    self.console.print(f"final eval: {w * seq:,} val tokens, val loss {res[K.VAL_LOSS]:.4f} "
                                       f"({seconds():.1f}s)")
        self.info.final_prefixes = prefixes
        self.info.val_sets = val_set_identities(self.cfg, self.manifest, len(self.val_tokens), done)
        return prefixes[str(done * seq)]


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
        summary = tr.summary("complete")
        if tr.is_main:
            rundir.write_summary(tr.run_dir, summary)
            print_report(summary, tr.run_dir, tr.final_sample)
        if tr.sinks is not None:
            tr.sinks.finish(summary)
        return summary
    except BaseException as e:
        lost = tr.guard.peer_lost(e, tr.clock.step)  # another torchrun process died: `interrupted` if checkpointed
        if tr.run_dir is not None and tr.is_main and (tr.owns_summary or tr.resume_dir is None):
            status, err = end_status(lost or e)
            summary = tr.summary(status, error=err)
            try:
                rundir.write_summary(tr.run_dir, summary)
                if tr.sinks is not None:
                    tr.sinks.finish(summary)
            except OSError:
                pass  # e.g. the disk is full: the error being raised says more than this one
        if lost is not None:
            raise lost from None
        raise
    finally:
        if tr.run_dir is not None and tr.is_main:
            rundir.unlock_run_dir(tr.run_dir)
        destroy(world)
