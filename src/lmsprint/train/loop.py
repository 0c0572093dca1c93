"""The training loop: the step and the clock, nothing else.

`train(cfg, resume_dir=None) -> summary` runs one training run end to end:
device (auto -> cuda), seeds, TF32, autocast (bf16 on CUDA by default, fp16 with a GradScaler, fp32 on CPU);
data (auto-prepared, vocabulary checked, `BatchSampler` over the global batch); model (optionally
`torch.compile`d -- compile time is measured and kept out of the budget) wrapped in DDP under torchrun;
optimizer steps of n_micro micro-batches; lr = base_lr * lr_multiplier(progress), where progress is
step/iterations or, with --time_budget, elapsed *training* time / budget (eval, checkpoints and compile
excluded) and the run ends when it reaches 1. The step never syncs host and device except at log steps:
losses and MoE statistics accumulate as device tensors and are read every log_interval steps.
Every eval_freq steps (and at the end) the fixed val set is evaluated and a checkpoint written; a checkpoint
is also written at least every ckpt_interval of wall time. The accumulators live in the checkpoint, so a
resumed run (same run dir, metrics.jsonl cut back to the checkpoint) logs exactly what an uninterrupted run
would. CUDA out-of-memory becomes a `UserError` with what to change.
"""

from __future__ import annotations

import math
import os
import random
import shutil
import sys
import time
from typing import Optional

import numpy as np
import torch

from ..config import RunConfig, parse_duration
from ..bench import peak_flops
from ..errors import UserError
from ..model.transformer import Transformer
from .. import keys as K
from . import checkpoint as ckpt
from .. import rundir as runs
from .distributed import (World, all_reduce_mean, barrier, broadcast_object, destroy, init_distributed, unwrap,
                          wrap_ddp)
from .evaluate import evaluate
from .generate import sample_text
from .microbatch import OOM_ERRORS, accumulate_gradients, apply_update, autocast_context, resolve_dtype

TIMING_KEYS = (K.TRAIN_TIME, K.EVAL_TIME, K.COMPILE_TIME, K.TOKENS_PER_S, K.MFU)


# ---------------------------------------------------------------------------------------------------- helpers


def oom_user_error(err: BaseException, cfg: RunConfig) -> UserError:
    """torch.OutOfMemoryError -> a one-line UserError saying what to change."""
    t = cfg.train
    first = (str(err).strip().splitlines() or ["out of memory"])[0]
    if len(first) > 160:
        first = first[:157] + "..."
    return UserError(f"out of GPU memory at --batch_size {t.batch_size} x --sequence_length "
                     f"{cfg.model.sequence_length} ({first}); use a smaller --batch_size with a larger --acc_steps "
                     f"(e.g. --batch_size {max(1, t.batch_size // 2)} --acc_steps {t.acc_steps * 2}) "
                     "or --micro_batch auto")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def enable_tf32() -> None:
    if not torch.cuda.is_available():
        return
    if hasattr(torch.backends.cuda.matmul, "allow_tf32"):
        torch.backends.cuda.matmul.allow_tf32 = True
    if hasattr(torch.backends.cudnn, "allow_tf32"):
        torch.backends.cudnn.allow_tf32 = True


def load_data(cfg: RunConfig, world: World, progress: bool = True):
    """Prepare (rank 0 first, cached) -> (manifest, tokenizer, train tokens, val tokens)."""
    from ..data.loader import open_tokens
    from ..data.prepare import check_vocab, prepare
    from ..data.tokenizer import get_tokenizer

    if world.is_main:
        manifest = prepare(cfg.data, progress=progress)
    barrier(world)
    if not world.is_main:
        manifest = prepare(cfg.data, progress=False)
    check_vocab(manifest, cfg.model.vocab_size)
    tok = get_tokenizer(manifest)
    train_tokens = open_tokens(manifest.train_path, manifest.dtype, cfg.data.data_in_ram)
    val_tokens = open_tokens(manifest.val_path, manifest.dtype, cfg.data.data_in_ram)
    return manifest, tok, train_tokens, val_tokens


def _fmt_table(rows: list[tuple[str, str]]) -> str:
    w = max(len(k) for k, _ in rows)
    return "\n".join(f"  {k:<{w}}  {v}" for k, v in rows)


# ---------------------------------------------------------------------------------------------------- trainer


class Trainer:
    """One run: setup (data, model, optimizer, run dir, resume), `run()` the loop, `finish()` the summary."""

    def __init__(self, cfg: RunConfig, world: World, resume_dir: Optional[str] = None):
        self.cfg, self.world, self.resume_dir = cfg, world, resume_dir
        self.device = world.device
        self.is_main = world.is_main
        self.run_dir: Optional[str] = None
        self.sinks = None
        self.step = 0
        self.train_time = 0.0
        self.eval_time = 0.0
        self.compile_time = 0.0
        self.n_evals = 0
        self.rows = 0
        self.last_val: dict = {}
        self.final: dict = {}
        self.samples: list[str] = []

    # ------------------------------------------------------------------ setup
    def setup(self) -> None:
        cfg, world, dev = self.cfg, self.world, self.device
        from ..track.sinks import Sinks, check_available

        check_available(cfg)
        # a resume reads its checkpoint first: a missing or corrupt one is reported before any other work
        resume_state = ckpt.load_checkpoint(ckpt.checkpoint_path(self.resume_dir)) if self.resume_dir else None
        from ..model import check_model_config
        from ..optim import check_optim_config

        t = cfg.train  # also for configs read back from a run directory on --resume
        check_model_config(cfg.model, t.device, int(t.micro_batch) if str(t.micro_batch).isdigit() else
                           (t.batch_size if t.micro_batch == "" else 0))
        check_optim_config(cfg)
        seed_everything(cfg.train.seed)
        enable_tf32()
        self.dtype = resolve_dtype(cfg.train.dtype, dev)
        self.ctx_factory = lambda: autocast_context(dev, self.dtype)
        self.manifest, self.tok, train_tokens, self.val_tokens = load_data(cfg, world,
                                                                           progress=cfg.log.progress and world.is_main)
        self.token_bytes = self.tok.token_bytes()

        # model + loss head (+ compile, + DDP)
        from .microbatch import LossHead, resolve_micro_batch

        torch.manual_seed(cfg.train.seed)
        self.model = Transformer(cfg.model).to(dev)
        from ..optim.optimizers import build_optimizer

        self.opt = build_optimizer(self.model, cfg.optim, torch.device(dev).type)
        self.micro_bs, self.n_micro = resolve_micro_batch(cfg, self.model, dev)
        use_scaler = self.dtype == torch.float16
        self.scaler = torch.amp.GradScaler("cuda", enabled=True) if use_scaler else None
        head = LossHead(self.model, cfg.train.label_smoothing, cfg.train.loss_chunk)
        self.eval_model = self.model
        if cfg.train.compile:
            kw = {"mode": cfg.train.compile_mode} if cfg.train.compile_mode else {}
            head = torch.compile(head, **kw)
            self.eval_model = torch.compile(self.model, **kw)
        self.step_module = wrap_ddp(head, world)

        per_rank = cfg.train.batch_size * cfg.train.acc_steps
        self.global_batch = per_rank * world.world_size
        self.tokens_per_step = self.global_batch * cfg.model.sequence_length
        from ..data.loader import BatchSampler

        self.sampler = BatchSampler(train_tokens, cfg.model.sequence_length, self.global_batch, cfg.data.data_seed,
                                    rank=world.rank, world_size=world.world_size)
        self._prefetched = None  # (step, (x, y)) already on the device
        self.budget = cfg.time_budget_s
        self.ckpt_every = parse_duration(cfg.train.ckpt_interval) or float("inf")
        self.flops_per_token = self.model.flops_per_token()
        self.peak = peak_flops(dev)

        # device accumulators between log steps (saved in checkpoints for exact resumes)
        self.acc = self._zero_acc()

        # run directory
        if self.resume_dir:
            state = resume_state
            self._load_state(state)
            self.run_dir = self.resume_dir
            if self.is_main:
                ms = state["metrics_state"]
                runs.truncate_metrics(self.run_dir, ms["rows"])
                runs.truncate_file(os.path.join(self.run_dir, runs.SAMPLES_FILE), ms.get("samples_bytes", 0))
        else:
            self.run_dir = broadcast_object(runs.create_run_dir(cfg) if self.is_main else None, world)
            if self.is_main:
                runs.write_config(self.run_dir, cfg)
        self.sinks = Sinks(cfg, self.run_dir, enabled=self.is_main)
        if self.is_main:
            runs.write_summary(self.run_dir, self.summary("running"))
            print(f"run dir: {self.run_dir}" + (f" (resumed at step {self.step})" if self.resume_dir else ""),
                  file=sys.stderr)

    def _zero_acc(self) -> dict:
        z = lambda: torch.zeros((), dtype=torch.float32, device=self.device)  # noqa: E731
        return {"steps": 0, "loss": z(), "ce": z(), "n": 0, "aux": {}}

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        acc = self.acc
        return {
            "model": unwrap(self.model).state_dict(),
            "optimizer": self.opt.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "step": self.step,
            "sampler": self.sampler.state_dict(),
            "rng": ckpt.rng_state(),
            "train_time": self.train_time,
            "eval_time": self.eval_time,
            "compile_time": self.compile_time,
            "config": self.cfg.to_dict(),
            "metrics_state": {
                "rows": self.rows,
                "samples_bytes": os.path.getsize(os.path.join(self.run_dir, runs.SAMPLES_FILE))
                if os.path.exists(os.path.join(self.run_dir, runs.SAMPLES_FILE)) else 0,
                "n_evals": self.n_evals,
                "last_val": self.last_val,
                "acc": {"steps": acc["steps"], "n": acc["n"], "loss": acc["loss"].cpu(), "ce": acc["ce"].cpu(),
                        "aux": {k: v.cpu() for k, v in acc["aux"].items()}},
            },
        }

    def _load_state(self, st: dict) -> None:
        try:
            unwrap(self.model).load_state_dict(st["model"])
            self.opt.load_state_dict(st["optimizer"])
        except (RuntimeError, ValueError, KeyError) as e:
            raise UserError(f"checkpoint of {self.resume_dir} does not match this model/optimizer "
                            f"({str(e).splitlines()[0][:120]}); resume with the run's own config")
        if self.scaler is not None and st.get("scaler"):
            self.scaler.load_state_dict(st["scaler"])
        self.step = int(st["step"])
        if st.get("sampler") is not None:
            self.sampler.load_state_dict(st["sampler"])
        self.train_time = float(st["train_time"])
        self.eval_time = float(st.get("eval_time", 0.0))
        self.compile_time = float(st.get("compile_time", 0.0))
        ms = st["metrics_state"]
        self.rows, self.n_evals, self.last_val = ms["rows"], ms["n_evals"], ms.get("last_val", {})
        a = ms["acc"]
        self.acc = {"steps": a["steps"], "n": a["n"], "loss": a["loss"].to(self.device), "ce": a["ce"].to(self.device),
                    "aux": {k: v.to(self.device) for k, v in a["aux"].items()}}
        ckpt.set_rng_state(st["rng"])

    def save(self, extra_name: Optional[str] = None) -> None:
        if not self.is_main:
            return
        state = self.state_dict()
        ckpt.save_checkpoint(ckpt.checkpoint_path(self.run_dir), state)
        if extra_name:
            shutil.copyfile(ckpt.checkpoint_path(self.run_dir), ckpt.checkpoint_path(self.run_dir, extra_name))

    # ------------------------------------------------------------------ logging
    def log(self, metrics: dict) -> None:
        if self.is_main:
            self.sinks.log(metrics, self.step)
            self.rows += 1

    def progress(self) -> float:
        if self.budget:
            return min(self.train_time / self.budget, 1.0)
        return min(self.step / self.cfg.train.iterations, 1.0)

    def done(self) -> bool:
        if self.step >= self.cfg.train.iterations:
            return True
        return bool(self.budget) and self.train_time >= self.budget

    def _sync(self) -> None:
        if self.device.startswith("cuda"):
            torch.cuda.synchronize(self.device)

    # ------------------------------------------------------------------ one optimizer step
    def train_step(self) -> None:
        cfg = self.cfg
        lr_mult = self._lr_multiplier(self.progress())
        for g in self.opt.param_groups:
            g["lr"] = g["base_lr"] * lr_mult
        x, y = self._batch(self.step)
        stats = accumulate_gradients(self.step_module, x, y, self.n_micro, self.dtype, self.scaler)
        # while the device still runs this step's backward, sample the next batch and start its copy
        self._prefetched = (self.step + 1, self._batch(self.step + 1))
        apply_update(self.model, self.opt, cfg.optim.grad_clip, self.scaler)
        self.step += 1
        a = self.acc
        a["steps"] += 1
        a["loss"] += stats["loss"]
        a["ce"] += stats["ce_sum"]
        a["n"] += stats["n"]
        for k, v in stats["aux"].items():
            if k.startswith("moe/"):
                a["aux"][k] = v if k not in a["aux"] else a["aux"][k] + v

    def _lr_multiplier(self, progress: float) -> float:
        from ..optim.schedules import lr_multiplier

        return lr_multiplier(progress, self.cfg.optim, None if self.budget else self.cfg.train.iterations)

    def _batch(self, step: int):
        """This rank's batch of optimizer step `step` on the device (prefetched during the previous step)."""
        pre = self._prefetched
        if pre is not None and pre[0] == step:
            self._prefetched = None
            return pre[1]
        return self._to_device(*self.sampler.get(step))

    def _to_device(self, x, y):
        from ..data.loader import to_device

        return to_device(x, y, self.device)

    def flush_train_log(self, interval_tokens: int, interval_time: float) -> dict:
        """Read the accumulators (the only host-device sync of training), log one row, reset them."""
        a = self.acc
        if a["steps"] == 0:
            return {}
        vals = torch.stack([a["loss"] / a["steps"], a["ce"] / max(a["n"], 1)])
        vals = all_reduce_mean(vals, self.world)
        loss, ce = vals.tolist()
        m = {K.TRAIN_LOSS: loss, K.TRAIN_CE: ce, K.LR: self.opt.param_groups[0]["lr"],
             K.TOKENS: self.step * self.tokens_per_step}
        for k, v in sorted(a["aux"].items()):
            v = all_reduce_mean(v / a["steps"], self.world)
            m[k] = v.item() if v.numel() == 1 else v.tolist()
        m[K.TRAIN_TIME] = self.train_time
        if interval_time > 0:
            tps = interval_tokens / interval_time
            m[K.TOKENS_PER_S] = tps
            if self.peak:
                m[K.MFU] = self.flops_per_token * tps / (self.peak * self.world.world_size)
        self.log(m)
        self.acc = self._zero_acc()
        return m

    # ------------------------------------------------------------------ eval + samples
    def run_eval(self, max_tokens: Optional[int]) -> dict:
        from ..data.loader import val_batches

        t0 = time.perf_counter()
        bs = max(1, min(self.micro_bs, self.cfg.train.batch_size))
        batches = val_batches(self.val_tokens, self.cfg.model.sequence_length, bs, max_tokens=max_tokens,
                              rank=self.world.rank, world_size=self.world.world_size)
        res = evaluate(self.eval_model, batches, self.token_bytes, self.device, self.ctx_factory(), self.world)
        self._sync()
        self.eval_time += time.perf_counter() - t0
        return res

    def sample(self) -> str:
        lc = self.cfg.log
        if not self.is_main or lc.sample_tokens <= 0:
            return ""
        t0 = time.perf_counter()
        text = sample_text(self.model, self.tok, lc.eval_seq_prefix, max_new_tokens=lc.sample_tokens,
                           temperature=0.8, top_k=200, seed=self.cfg.train.seed + self.step, device=self.device,
                           ctx=self.ctx_factory())[0]
        self.eval_time += time.perf_counter() - t0
        self.sinks.log_text(self.step, lc.eval_seq_prefix, text)
        return text

    def periodic_eval(self) -> dict:
        res = self.run_eval(self.cfg.train.eval_tokens)
        self.n_evals += 1
        self.last_val = {k: v for k, v in res.items() if k != "eval_tokens"}
        self.log({**self.last_val, K.TOKENS: self.step * self.tokens_per_step, K.EVAL_TIME: self.eval_time})
        if self.n_evals % 5 == 1:
            self.sample()
        return res

    # ------------------------------------------------------------------ the loop
    def run(self) -> dict:
        cfg, t = self.cfg, self.cfg.train
        from tqdm.auto import tqdm

        show = self.is_main and self.cfg.log.progress
        if self.budget:
            bar = tqdm(total=int(math.ceil(self.budget)), initial=min(int(self.train_time), int(self.budget)),
                       unit="s", desc="train", disable=not show, dynamic_ncols=True,
                       bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f}s [{elapsed}<{remaining}{postfix}]")
        else:
            bar = tqdm(total=t.iterations, initial=self.step, unit="it", desc="train", disable=not show,
                       dynamic_ncols=True)
        postfix: dict = {}
        last_ckpt = time.perf_counter()
        log_tokens, log_time = 0, 0.0
        first_step = True
        # distributed + time budget: every rank must take the same decisions, so the clock is agreed on at log
        # steps and extrapolated in between (no extra syncs)
        agreed = self.world.distributed and bool(self.budget)
        sec_per_step, agreed_time, agreed_step = 0.0, self.train_time, self.step
        while not self.done():
            t0 = time.perf_counter()
            self.train_step()
            is_log = self.step % cfg.log.log_interval == 0
            is_eval = self.step % t.eval_freq == 0
            is_last = self.step >= t.iterations
            if first_step and t.compile:
                self._sync()
                self.compile_time += time.perf_counter() - t0  # first step = compilation, outside the budget
                first_step = False
            else:
                if is_log or is_eval or is_last:
                    self._sync()
                dt = time.perf_counter() - t0
                self.train_time += dt
                log_time += dt
                log_tokens += self.tokens_per_step
            if agreed:
                if is_log:
                    tt = all_reduce_mean(torch.tensor([self.train_time], dtype=torch.float64,
                                                      device=self.device), self.world).item()
                    if self.step > agreed_step:
                        sec_per_step = (tt - agreed_time) / (self.step - agreed_step)
                    agreed_time, agreed_step = tt, self.step
                self.train_time = agreed_time + (self.step - agreed_step) * sec_per_step
            if is_log:
                m = self.flush_train_log(log_tokens, log_time)
                log_tokens, log_time = 0, 0.0
                if m:
                    postfix.update(loss=f"{m[K.TRAIN_LOSS]:.3f}", tok_s=f"{m.get(K.TOKENS_PER_S, 0):.0f}")
                    bar.set_postfix(postfix, refresh=False)
            if self.budget:
                bar.update(max(0, min(int(self.train_time), bar.total) - bar.n))
            else:
                bar.update(1)
            if is_eval:
                res = self.periodic_eval()
                postfix["val"] = f"{res[K.VAL_LOSS]:.3f}"
                bar.set_postfix(postfix, refresh=False)
            extra = f"step_{self.step}.pt" if t.save_checkpoint_freq and self.step % t.save_checkpoint_freq == 0 \
                else None
            if is_eval or extra or time.perf_counter() - last_ckpt >= self.ckpt_every:
                self.save(extra)
                last_ckpt = time.perf_counter()
        # the last partial log interval
        if self.acc["steps"]:
            t0 = time.perf_counter()
            self._sync()  # the device may still be running the last steps: that time is training time too
            dt = time.perf_counter() - t0
            self.train_time += dt
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
            res = self.run_eval(None if mode == "full" else self.cfg.train.eval_tokens)
            self.final = res
            self.log({f"{K.FINAL}/{k}": v for k, v in res.items()})
        self.final_sample = self.sample()
        return self.final

    # ------------------------------------------------------------------ summary
    def summary(self, status: str, error: Optional[str] = None) -> dict:
        cfg = self.cfg
        model = getattr(self, "model", None)
        tokens = self.step * getattr(self, "tokens_per_step", cfg.tokens_per_step)
        tps = tokens / self.train_time if self.train_time > 0 else None
        peak = getattr(self, "peak", None)
        mfu = model.flops_per_token() * tps / (peak * self.world.world_size) if (model and tps and peak) else None
        s = {
            "status": status,
            "run_dir": self.run_dir,
            "name": os.path.basename(os.path.normpath(self.run_dir)) if self.run_dir else None,
            "config_format": cfg.config_format,
            "model": cfg.model.model,
            "params_total": model.num_params() if model is not None else None,
            "params_active": model.num_active_params() if model is not None else None,
            "iterations_done": self.step,
            "tokens": tokens,
            K.TRAIN_TIME: self.train_time,
            K.EVAL_TIME: self.eval_time,
            K.COMPILE_TIME: self.compile_time,
            K.TOKENS_PER_S: tps,
            K.MFU: mfu,
            K.FINAL: {k: self.final.get(k) for k in (K.VAL_LOSS, K.VAL_PPL, K.VAL_ACC, K.VAL_BPB, "eval_tokens")}
            if self.final else None,
            "seed": cfg.train.seed,
            "data_seed": cfg.data.data_seed,
            "world_size": self.world.world_size,
            "device": self.device,
            "finished_at": runs.now_iso() if status != "running" else None,
        }
        if error:
            s["error"] = error
        return s

    def report(self, summary: dict) -> None:
        if not self.is_main:
            return
        f = summary.get(K.FINAL) or {}
        rows = [("run dir", str(self.run_dir)), ("steps", str(self.step)), ("tokens", f"{summary['tokens']:,}"),
                ("train time", f"{self.train_time:.1f}s")]
        if summary.get(K.TOKENS_PER_S):
            rows.append(("tokens/s", f"{summary[K.TOKENS_PER_S]:,.0f}"))
        for k in (K.VAL_LOSS, K.VAL_PPL, K.VAL_ACC, K.VAL_BPB):
            if f.get(k) is not None:
                rows.append((k, f"{f[k]:.4f}"))
        if f.get("eval_tokens"):
            rows.append(("eval tokens", f"{f['eval_tokens']:,}"))
        print("final metrics:")
        print(_fmt_table(rows))
        if getattr(self, "final_sample", ""):
            print("sample:")
            print(self.final_sample)
        sys.stdout.flush()


# ---------------------------------------------------------------------------------------------------- entry


def train(cfg: RunConfig, resume_dir: Optional[str] = None) -> dict:
    """Run (or resume) one training run; returns its summary (status 'complete')."""
    world = init_distributed(cfg.train.device, cfg.train.distributed_backend)
    tr = Trainer(cfg, world, resume_dir)
    try:
        try:
            tr.setup()
            tr.run()
        except OOM_ERRORS as e:
            raise oom_user_error(e, cfg) from None
        summary = tr.summary("complete")
        if tr.is_main:
            runs.write_summary(tr.run_dir, summary)
        tr.report(summary)
        if tr.sinks is not None:
            tr.sinks.finish(summary)
        return summary
    except BaseException as e:
        if tr.run_dir is not None and tr.is_main:
            err = "interrupted" if isinstance(e, KeyboardInterrupt) else (str(e).splitlines() or [type(e).__name__])[0]
            summary = tr.summary("failed", error=err)
            runs.write_summary(tr.run_dir, summary)
            if tr.sinks is not None:
                tr.sinks.finish(summary)
        raise
    finally:
        destroy(world)
