"""Metric names, written once and used by metrics.jsonl, wandb, TensorBoard and `compare` alike, and the table of
validation metrics (`VAL_METRICS`) that compare's columns, its best-group direction and the plots are made from.

llm-baselines' names are kept (`iter`, `train/loss`, `val/loss`, `val/perplexity`, `val/acc`, `lr`).
Adding a validation metric: a `ValMetric` row here + the code computing it (`training/evaluate.py`); summary.json,
the console, `lmsprint eval` and `compare` take their metrics from `VAL_METRICS`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

ITER = "iter"
TRAIN_LOSS = "train/loss"          # the objective actually optimised (smoothed CE + MoE aux terms)
TRAIN_CE = "train/ce"              # plain cross-entropy of the training batch
VAL_LOSS = "val/loss"              # plain cross-entropy on the fixed val set (nats/token)
VAL_PPL = "val/perplexity"
VAL_ACC = "val/acc"                # next-token accuracy
VAL_BPB = "val/bpb"                # bits per byte
LR = "lr"
TOKENS = "tokens"                  # training tokens seen (all processes)
TRAIN_TIME = "time/train_s"        # training time, excluding compile and eval
EVAL_TIME = "time/eval_s"
COMPILE_TIME = "time/compile_s"
TOKENS_PER_S = "perf/tokens_per_s"
MFU = "perf/mfu"
MOE_AUX = "moe/aux_loss"
MOE_Z = "moe/z_loss"
MOE_LOAD = "moe/load"              # per-layer fraction of routed tokens per expert
MOE_DROPPED = "moe/dropped_frac"

# summary.json holds the final full-val numbers under this key (VAL_KEYS and EVAL_TOKENS)
FINAL = "final"
EVAL_TOKENS = "eval_tokens"        # tokens an evaluation ran on


@dataclass(frozen=True)
class ValMetric:
    """One validation metric: its key, the short column label, the number format, which direction is better, the
    axis label of its plot (None: not plotted) and its word in the console's eval line (None: not shown there)."""
    key: str
    label: str
    fmt: str
    lower_is_better: bool
    plot_label: Optional[str] = None
    console: Optional[str] = None


# in the order of compare's columns
VAL_METRICS = (
    ValMetric(VAL_LOSS, "val loss", "{:.4f}", lower_is_better=True, plot_label="val loss (nats/token)", console="loss"),
    ValMetric(VAL_ACC, "val acc", "{:.4f}", lower_is_better=False, plot_label="val next-token accuracy", console="acc"),
    ValMetric(VAL_PPL, "val ppl", "{:.2f}", lower_is_better=True),
    ValMetric(VAL_BPB, "val bpb", "{:.4f}", lower_is_better=True, plot_label="val bits per byte", console="bpb"),
)
VAL_KEYS = tuple(m.key for m in VAL_METRICS)
VAL_BY_KEY = {m.key: m for m in VAL_METRICS}
