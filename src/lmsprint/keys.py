"""Metric names, written once and used by metrics.jsonl, wandb, TensorBoard and `compare` alike, and the table of
validation metrics (`VAL_METRICS`) that compare's columns, its best-group direction and the plots are made from.

llm-baselines' names are kept (`iter`, `train/loss`, `val/loss`, `val/perplexity`, `val/acc`, `lr`).
Adding a validation metric: a `ValMetric` row here + the code computing it (`training/evaluate.py`).

Also here, so that training, `eval` and `compare` say the same: `format_number(v, fmt)` (every printed metric: a
huge perplexity in scientific notation, never a 305-digit integer) and the divergence rule `diverged(val_loss,
vocab_size)`: a final val loss above ln(vocab_size), the loss of a uniform guess over the model's vocabulary.
"""

from __future__ import annotations

import math
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

# summary.json holds the final full-val numbers under these keys
FINAL = "final"
# summary.json of a complete run: `diverged` true when its final val loss is above `uniform_loss` = ln(vocab_size)
DIVERGED = "diverged"
UNIFORM_LOSS = "uniform_loss"

SCIENTIFIC_ABOVE = 1e6  # numbers this large are printed as 1.234e+07


def format_number(v, fmt: str = "{:.4f}") -> str:
    """A metric as printed: `fmt` below 1e6 in magnitude, scientific notation above, `inf`/`nan` as such, '-' for
    a missing value (None or not a number)."""
    if not isinstance(v, (int, float)) or isinstance(v, bool):
        return "-"
    if not math.isfinite(v):
        return str(float(v))
    if abs(v) >= SCIENTIFIC_ABOVE:
        return f"{v:.3e}"
    return fmt.format(v)


def uniform_loss(vocab_size: int) -> float:
    """Cross-entropy (nats/token) of a uniform guess over `vocab_size` tokens: ln(vocab_size)."""
    return math.log(max(int(vocab_size), 1))


def diverged(val_loss, vocab_size) -> bool:
    """True when a (final) val loss is worse than a uniform guess: above ln(vocab_size), or not finite. A run that
    ends there has learned nothing a constant prediction would not, whatever its other numbers say."""
    if not isinstance(val_loss, (int, float)) or isinstance(val_loss, bool) or not vocab_size:
        return False
    return not math.isfinite(val_loss) or val_loss > uniform_loss(vocab_size)


@dataclass(frozen=True)
class ValMetric:
    """One validation metric: its key, the short column label, the number format, which direction is better, and
    the axis label of its plot (None: not plotted)."""
    key: str
    label: str
    fmt: str
    lower_is_better: bool
    plot_label: Optional[str] = None

    def format(self, v) -> str:
        return format_number(v, self.fmt)


# in the order of compare's columns
VAL_METRICS = (
    ValMetric(VAL_LOSS, "val loss", "{:.4f}", lower_is_better=True, plot_label="val loss (nats/token)"),
    ValMetric(VAL_ACC, "val acc", "{:.4f}", lower_is_better=False, plot_label="val next-token accuracy"),
    ValMetric(VAL_PPL, "val ppl", "{:.2f}", lower_is_better=True),
    ValMetric(VAL_BPB, "val bpb", "{:.4f}", lower_is_better=True, plot_label="val bits per byte"),
)
VAL_KEYS = tuple(m.key for m in VAL_METRICS)
VAL_BY_KEY = {m.key: m for m in VAL_METRICS}
