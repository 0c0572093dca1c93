"""What a run tells its user: the start-up banner, progress, one line per eval, the run summary (summary.json) and
the final console table.

- `Console(cfg, is_main)`: everything printed while a run trains. On a terminal (stdout and stderr both ttys) a
  tqdm bar redraws in place and eval lines are printed above it; anywhere else (a log file, SLURM, nohup, a
  notebook) there are no carriage-return redraws: one plain line every log interval and one per eval. `--quiet`
  prints nothing but errors and the final table; `--progress false` drops the bar / the per-interval lines but
  keeps the banner and the eval lines.
- `ProgressBar(clock, show)`: tqdm over seconds of the time budget, or over iterations.
- `RunInfo`: what the banner and the summary say about a run besides its clock and metrics (config, run dir,
  processes, device, tokens per step, parameters, FLOPs, micro-batch, dtype, tokenizer, split sizes), filled in by
  the Trainer as its setup builds each part.
- `run_summary(info, clock, final, status, error, target)`: the summary dict written to summary.json (status
  running/complete/failed/interrupted, sizes, tokens, times, tokens/s, MFU, final metrics of `keys.VAL_METRICS`,
  the val sets scored (`info.val_sets`, training/valsets.py), the `--target` record (training/target.py)). A
  complete run with a final val loss also gets `diverged` (true when that loss is above `uniform_loss` =
  ln(vocab_size), a uniform guess: keys.diverged) and `uniform_loss`; its status stays `complete` (the run did
  finish: sweeps skip it, seed groups count it).
- `banner_rows(info)`: the start-up banner.
- `print_report(summary, run_dir, final_sample)`: the "final metrics:" table on stdout (with a `diverged` row when
  the run diverged); numbers through keys.format_number (a huge perplexity in scientific notation).
"""

from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass
from typing import Any, Optional

from tqdm.auto import tqdm

from .. import keys as K
from ..errors import plural
from ..hw import mfu
from ..rundir import now_iso


class ProgressBar:
    """The training progress bar (disabled unless `show`): seconds of the budget, or iterations."""

    def __init__(self, clock, show: bool):
        self.clock = clock
        step = clock.step
        self.postfix: dict = {}
        if clock.budget:
            self.bar = tqdm(total=int(math.ceil(clock.budget)), initial=min(int(clock.train_time), int(clock.budget)),
                            unit="s", desc="train", disable=not show, dynamic_ncols=True,
                            bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f}s [{elapsed}<{remaining}{postfix}]")
        else:
            self.bar = tqdm(total=clock.iterations, initial=step, unit="it", desc="train", disable=not show,
                            dynamic_ncols=True)

    def advance(self) -> None:
        if self.clock.budget:
            self.bar.update(max(0, min(int(self.clock.train_time), self.bar.total) - self.bar.n))
        else:
            self.bar.update(1)

    def show(self, **values: str) -> None:
        self.postfix.update(values)
        self.bar.set_postfix(self.postfix, refresh=False)

    def close(self) -> None:
        self.bar.close()


@dataclass
class RunInfo:
    """What the banner and summary.json say about a run besides its clock and metrics (see the module doc); parts
    not built yet keep their defaults."""

    cfg: Any
    world_size: int
    device: str
    run_dir: Optional[str] = None
    tokens_per_step: int = 0           # all processes
    params_total: Optional[int] = None
    params_active: Optional[int] = None
    flops_per_token: float = 0.0
    peak_flops: Optional[float] = None
    micro_batch: int = 0
    dtype: str = ""
    tokenizer: str = "?"
    train_tokens: int = 0
    val_tokens: int = 0
    val_sets: Optional[dict] = None    # the identities of the val sets the evals score (training/valsets.py)
    final_plan: Any = None             # training/final_eval.FinalPlan
    final_prefixes: Optional[dict] = None  # the final eval's metrics at each prefix it scored, by token count


def final_metrics(res: dict) -> dict:
    """The final evaluation's numbers as summary.json keeps them: every `keys.VAL_METRICS` key and the token count."""
    return {k: res.get(k) for k in K.VAL_KEYS + (K.EVAL_TOKENS,)}


def run_summary(info: RunInfo, clock, final: Optional[dict], status: str, error: Optional[str] = None,
                target: Optional[dict] = None) -> dict:
    """summary.json of a run (at any point of its setup: parts not built yet are None)."""
    cfg = info.cfg
    tokens = clock.tokens
    tps = tokens / clock.train_time if clock.train_time > 0 else None
    built = info.params_total is not None
    s = {
        "status": status,
        "run_dir": info.run_dir,
        "name": os.path.basename(os.path.normpath(info.run_dir)) if info.run_dir else None,
        "config_format": cfg.config_format,
        "model": cfg.model.model,
        "params_total": info.params_total,
        "params_active": info.params_active,
        "iterations_done": clock.step,
        "tokens": tokens,
        K.TRAIN_TIME: clock.train_time,
        K.EVAL_TIME: clock.eval_time,
        K.COMPILE_TIME: clock.compile_time,
        K.WALL_TIME: clock.wall_time,
        K.TOKENS_PER_S: tps,
        K.MFU: mfu(info.flops_per_token, tps or None, info.peak_flops, info.world_size) if built else None,
        K.FINAL: final_metrics(final) if final else None,
        K.VAL_SETS: info.val_sets,
        K.FINAL_PREFIXES: info.final_prefixes,
        K.TARGET: target,
        "seed": cfg.train.seed,
        "data_seed": cfg.data.data_seed,
        "world_size": info.world_size,
        "device": info.device,
        "finished_at": now_iso() if status != "running" else None,
    }
    loss = (s[K.FINAL] or {}).get(K.VAL_LOSS)
    if status == "complete" and loss is not None:
        s[K.DIVERGED] = K.diverged(loss, cfg.model.vocab_size)
        s[K.UNIFORM_LOSS] = K.uniform_loss(cfg.model.vocab_size)
    if error:
        s["error"] = error
    return s


def diverged_text(summary: dict) -> str:
    """'val/loss 11.2000 is above ln(vocab_size) = 10.8258, the loss of a uniform guess' for a diverged summary."""
    loss = (summary.get(K.FINAL) or {}).get(K.VAL_LOSS)
    return (f"final {K.VAL_LOSS} {K.format_number(loss)} is above {K.format_number(summary.get(K.UNIFORM_LOSS))} = "
            "ln(vocab_size), the loss of a uniform guess")


def format_rows(rows: list[tuple[str, str]]) -> str:
    w = max(len(k) for k, _ in rows)
    return "\n".join(f"  {k:<{w}}  {v}" for k, v in rows)


def print_report(summary: dict, run_dir: Optional[str], final_sample: str = "") -> None:
    """The end-of-run table: run dir, steps, tokens, time, tokens/s and the final validation metrics."""
    f = summary.get(K.FINAL) or {}
    rows = [("run dir", str(run_dir)), ("steps", str(summary["iterations_done"])), ("tokens", f"{summary['tokens']:,}"),
            ("train time", f"{summary[K.TRAIN_TIME]:.1f}s")]
    if summary.get(K.TOKENS_PER_S):
        rows.append(("tokens/s", f"{summary[K.TOKENS_PER_S]:,.0f}"))
    for m in K.VAL_METRICS:
        if f.get(m.key) is not None:
            rows.append((m.key, m.format(f[m.key])))
    if f.get(K.EVAL_TOKENS):
        rows.append(("eval tokens", f"{f[K.EVAL_TOKENS]:,}"))
    if summary.get(K.DIVERGED):
        rows.append((K.DIVERGED, diverged_text(summary)))
    print("final metrics:")
    print(format_rows(rows))
    if final_sample:
        print("sample:")
        print(final_sample)
    sys.stdout.flush()


# ---------------------------------------------------------------------------------------------------- console


def _si(n) -> str:
    for div, suf in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= div:
            return f"{n / div:.3g}{suf}"
    return f"{n:.3g}"


def eval_line(step: int, elapsed: float, train_loss: Optional[float], res: dict, tps: Optional[float],
              mfu_: Optional[float]) -> str:
    """'eval step 40 | 35.2s | train loss 5.123 | val loss 5.234 acc 0.231 bpb 2.011 | 2,345 tok/s | MFU 0.12%'."""
    parts = [f"eval step {step}", f"{elapsed:.1f}s"]
    if train_loss is not None:
        parts.append(f"train loss {train_loss:.4f}")
    parts.append("val " + " ".join(f"{m.console} {m.format(res.get(m.key, math.nan))}"
                                   for m in K.VAL_METRICS if m.console))
    if tps:
        parts.append(f"{tps:,.0f} tok/s")
    if mfu_ is not None:
        parts.append(f"MFU {100 * mfu_:.2f}%")
    return " | ".join(parts)


def banner_rows(info: RunInfo) -> list[tuple[str, str]]:
    """The start-up banner of a run after setup: what is being trained, on what, for how long, where."""
    cfg, m, t = info.cfg, info.cfg.model, info.cfg.train
    arch = f"{m.model} ({m.norm_kind}, {m.mlp_kind}, {m.pos_kind}): {plural(m.n_layer, 'layer')}, d={m.n_embd}, "
    arch += plural(m.n_head, "head")
    if m.attn.attention != "causal":
        arch += f", {m.attn.attention} attention (window {m.attn.attention_window})"
    if m.moe.moe_num_experts > 1:
        arch += f", MoE {plural(m.moe.moe_num_experts, 'expert')} top-{m.moe.moe_num_experts_per_tok}"
    total, active = info.params_total, info.params_active
    params = f"{total:,} total" + (f", {active:,} active per token" if active != total else "")
    ws = info.world_size
    batch = f"{t.batch_size} x {t.acc_steps} acc" + (f" x {plural(ws, 'process')}" if ws > 1 else "") + \
        f" x {m.sequence_length} tokens = {info.tokens_per_step:,} tokens/step"
    if info.micro_batch != t.batch_size:
        batch += f" (micro-batch {info.micro_batch})"
    compile_ = f"compile {t.compile_mode or 'default'}" if t.compile else "no compile"
    if cfg.time_budget_s:
        length = f"{cfg.train.time_budget} of training time (at most {plural(t.iterations, 'step')})"
    else:
        length = f"{plural(t.iterations, 'step')} ({plural(t.iterations * info.tokens_per_step, 'token')})"
    evals = eval_plan_text(info)
    data = f"{cfg.data.dataset} ({info.tokenizer}): {info.train_tokens:,} train / {info.val_tokens:,} val tokens"
    return [("model", arch), ("params", params), ("batch", batch), ("device", f"{info.device}, {info.dtype}, {compile_}"),
            ("length", length), ("eval", evals), ("data", data), ("run dir", str(info.run_dir))]


def eval_plan_text(info: RunInfo) -> str:
    """The banner's eval row: the cadence, the fixed set's true size, and what the final eval will score."""
    cfg = info.cfg
    steps, seconds = cfg.eval_cadence
    seq = cfg.model.sequence_length
    fixed = (info.val_sets or {}).get("fixed", {}).get("tokens") or min(cfg.train.eval_tokens, info.val_tokens)
    when = f"every {plural(steps, 'step')}" if steps else f"every {fmt_seconds(seconds)} of training time"
    text = f"{when} on {fixed:,} val tokens; final: "
    plan = info.final_plan
    if plan is None or plan.mode == "none":
        return text + "none (the last eval's numbers)"
    tokens, whole = plan.windows * seq, plan.grid[-1] * seq
    if plan.windows == plan.grid[-1]:
        text += f"the full val split ({whole:,} tokens)"
    elif plan.windows == plan.grid[0]:
        text += f"the fixed set ({tokens:,} of {whole:,} val tokens)"
    else:
        text += f"the first {tokens:,} of {whole:,} val tokens"
    if plan.seconds is not None:
        text += f", about {fmt_seconds(plan.seconds)}"
    if plan.limit_s is not None:
        text += (f" (auto: the largest prefix that fits in {fmt_seconds(plan.limit_s)}, 15% of the budget, never less "
                 "than the fixed set; judged again as it runs)")
    return text


def fmt_seconds(s: float) -> str:
    return f"{s:.0f}s" if s >= 10 else f"{s:.1f}s"


class Console:
    """What a run prints while it trains (see the module docstring); every method is a no-op off rank 0."""

    def __init__(self, cfg, is_main: bool, stdout=None, stderr=None):
        self.out = stdout or sys.stdout
        self.err = stderr or sys.stderr
        self.cfg = cfg
        self.quiet = cfg.log.quiet or not is_main
        self.tty = _isatty(self.out) and _isatty(self.err)
        self.bar_on = not self.quiet and cfg.log.progress and self.tty
        self.lines_on = not self.quiet and cfg.log.progress and not self.tty
        self.bar: Optional[ProgressBar] = None
        self.last_train_loss: Optional[float] = None
        self.last_tps: Optional[float] = None
        self.last_mfu: Optional[float] = None

    def print(self, text: str) -> None:
        if self.quiet:
            return
        if self.bar is not None and self.bar_on:
            self.bar.bar.write(text, file=self.out)  # above the bar, which stays at the bottom
        else:
            print(text, file=self.out)
        self.out.flush()

    def banner(self, info: RunInfo, resumed_at: Optional[int] = None) -> None:
        head = f"lmsprint train: {os.path.basename(os.path.normpath(info.run_dir))}"
        if resumed_at is not None:
            head += f" (resumed at step {resumed_at})"
        self.print(head + "\n" + format_rows(banner_rows(info)))

    def start(self, clock) -> None:
        self.clock = clock
        self.bar = ProgressBar(clock, show=self.bar_on)

    def train_log(self, step: int, m: dict) -> None:
        """A training log row: the bar's postfix on a terminal, else one plain line (every log interval)."""
        if not m:
            return
        self.last_train_loss = m.get(K.TRAIN_LOSS)
        self.last_tps, self.last_mfu = m.get(K.TOKENS_PER_S), m.get(K.MFU)
        if self.bar is not None:
            self.bar.show(loss=f"{m[K.TRAIN_LOSS]:.3f}", tok_s=f"{m.get(K.TOKENS_PER_S, 0):.0f}")
        if self.lines_on:
            c = self.clock
            when = f"{c.train_time:.1f}s/{c.budget:.0f}s" if c.budget else f"{c.train_time:.1f}s"
            total = "" if c.budget else f"/{c.iterations}"
            print(f"step {step}{total} | {when} | train loss {m[K.TRAIN_LOSS]:.4f} | "
                  f"{m.get(K.TOKENS_PER_S, 0):,.0f} tok/s | lr {m.get(K.LR, 0):.3g}", file=self.out, flush=True)

    def advance(self) -> None:
        if self.bar is not None:
            self.bar.advance()

    def eval_done(self, step: int, res: dict) -> None:
        """One persistent line per eval (never overwritten by the bar)."""
        if self.bar is not None:
            self.bar.show(val=f"{res[K.VAL_LOSS]:.3f}")
        self.print(eval_line(step, self.clock.train_time, self.last_train_loss, res, self.last_tps, self.last_mfu))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def eval_progress(self, batches, n_batches: int, n_tokens: int, desc: str = "final eval", announce: bool = True):
        """Wrap an eval's batches in `eval_progress` (nothing shown under --quiet)."""
        if self.quiet:
            return batches
        return eval_progress(batches, n_batches, n_tokens, desc, bar=self.bar_on, out=self.out, err=self.err,
                             announce=announce)


def eval_progress(batches, n_batches: int, n_tokens: int, desc: str, bar: bool, out=None, err=None,
                  announce: bool = True):
    """An eval's batches with progress: a line saying its size (`announce`), then a tqdm bar (`bar`: on a terminal)
    or, in a log, a line at every quarter of the batches."""
    out, err = out or sys.stdout, err or sys.stderr
    if announce:
        print(f"{desc}: {n_tokens:,} val tokens in {plural(n_batches, 'batch')}", file=out, flush=True)
    if bar:
        yield from tqdm(batches, total=n_batches, desc=desc, unit="batch", dynamic_ncols=True, leave=False, file=err)
        return
    t0 = time.perf_counter()
    marks = {max(1, round(n_batches * q)) for q in (0.25, 0.5, 0.75)} if n_batches >= 4 else set()
    for i, b in enumerate(batches, 1):
        yield b
        if i in marks:
            print(f"{desc}: {i}/{n_batches} batches ({time.perf_counter() - t0:.0f}s)", file=out, flush=True)


def _isatty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False
