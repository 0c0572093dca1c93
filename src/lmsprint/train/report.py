"""What a run tells its user: the progress bar, the run summary (summary.json) and the final console table.

- `ProgressBar(clock, step, show)`: tqdm over seconds of the time budget, or over iterations.
- `run_summary(tr, status, error)`: the summary dict written to summary.json (status running/complete/failed,
  sizes, tokens, times, tokens/s, MFU, final metrics).
- `print_report(summary, run_dir, final_sample)`: the "final metrics:" table on stdout.
"""

from __future__ import annotations

import math
import os
import sys
from typing import Optional

from tqdm.auto import tqdm

from .. import keys as K
from ..hw import mfu
from ..rundir import now_iso


class ProgressBar:
    """The training progress bar (disabled unless `show`): seconds of the budget, or iterations."""

    def __init__(self, clock, step: int, show: bool):
        self.clock = clock
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


def run_summary(tr, status: str, error: Optional[str] = None) -> dict:
    """summary.json of Trainer `tr` (works at any point of setup: parts not built yet are None)."""
    cfg, clock = tr.cfg, tr.clock
    model = getattr(tr, "model", None)
    tokens = tr.step * getattr(tr, "tokens_per_step", cfg.tokens_per_step)
    tps = tokens / clock.train_time if clock.train_time > 0 else None
    s = {
        "status": status,
        "run_dir": tr.run_dir,
        "name": os.path.basename(os.path.normpath(tr.run_dir)) if tr.run_dir else None,
        "config_format": cfg.config_format,
        "model": cfg.model.model,
        "params_total": model.num_params() if model is not None else None,
        "params_active": model.num_active_params() if model is not None else None,
        "iterations_done": tr.step,
        "tokens": tokens,
        K.TRAIN_TIME: clock.train_time,
        K.EVAL_TIME: clock.eval_time,
        K.COMPILE_TIME: clock.compile_time,
        K.TOKENS_PER_S: tps,
        K.MFU: mfu(tr.flops_per_token, tps or None, tr.peak, tr.world.world_size) if model is not None else None,
        K.FINAL: {k: tr.final.get(k) for k in (K.VAL_LOSS, K.VAL_PPL, K.VAL_ACC, K.VAL_BPB, "eval_tokens")}
        if tr.final else None,
        "seed": cfg.train.seed,
        "data_seed": cfg.data.data_seed,
        "world_size": tr.world.world_size,
        "device": tr.device,
        "finished_at": now_iso() if status != "running" else None,
    }
    if error:
        s["error"] = error
    return s


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
    for k in (K.VAL_LOSS, K.VAL_PPL, K.VAL_ACC, K.VAL_BPB):
        if f.get(k) is not None:
            rows.append((k, f"{f[k]:.4f}"))
    if f.get("eval_tokens"):
        rows.append(("eval tokens", f"{f['eval_tokens']:,}"))
    print("final metrics:")
    print(format_rows(rows))
    if final_sample:
        print("sample:")
        print(final_sample)
    sys.stdout.flush()
