"""Metric names, written once and used by metrics.jsonl, wandb, TensorBoard and `compare` alike, and the table of
validation metrics (`VAL_METRICS`) that compare's columns, its best-group direction and the plots are made from.

llm-baselines' names are kept (`iter`, `train/loss`, `val/loss`, `val/perplexity`, `val/acc`, `lr`).
Adding a validation metric: a `ValMetric` row here + the code computing it (`training/evaluate.py`); summary.json,
the console, `lmsprint eval` and `compare` take their metrics from `VAL_METRICS`.

Also here, so that training, `eval` and `compare` say the same: `format_number(v, fmt)` (every printed metric: a
huge perplexity in scientific notation, never a 305-digit integer) and the divergence rule `diverged(val_loss,
vocab_size)`: a final val loss above ln(vocab_size), the loss of a uniform guess over the model's vocabulary.
"""

from __future__ import annotations

import math
import re
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
WALL_TIME = "time/wall_s"          # wall time since training started (compile, eval, checkpoints included; summed
                                   # over the processes of a resumed run, never the time in between)
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


# summary.json: the identity of the val sets a run was evaluated on ({"fixed": ..., "final": ...})
VAL_SETS = "val_sets"
FINAL_PREFIXES = "final_prefixes"  # summary.json: the final eval's metrics at each nested prefix, by token count
# summary.json: the `--target` record; metrics.jsonl: one row with these keys at the first eval reaching it
TARGET = "target"
TARGET_STEP = "target/step"
TARGET_TOKENS = "target/tokens"
TARGET_TRAIN_TIME = "target/train_s"
TARGET_WALL_TIME = "target/wall_s"
TARGET_VALUE = "target/value"      # the metric's value at that eval


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

    def format(self, v) -> str:
        return format_number(v, self.fmt)


# in the order of compare's columns
VAL_METRICS = (
    ValMetric(VAL_LOSS, "val loss", "{:.4f}", lower_is_better=True, plot_label="val loss (nats/token)", console="loss"),
    ValMetric(VAL_ACC, "val acc", "{:.4f}", lower_is_better=False, plot_label="val next-token accuracy", console="acc"),
    ValMetric(VAL_PPL, "val ppl", "{:.2f}", lower_is_better=True),
    ValMetric(VAL_BPB, "val bpb", "{:.4f}", lower_is_better=True, plot_label="val bits per byte", console="bpb"),
)
VAL_KEYS = tuple(m.key for m in VAL_METRICS)
VAL_BY_KEY = {m.key: m for m in VAL_METRICS}


# how a number is written wherever lmsprint reads one (flags, config files, --target): ASCII digits, an optional
# exponent, or inf/nan (refused by the caller's finiteness rule with its own reason); not '3_28' or '３.２８'
NUMBER = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|[+-]?(?:inf|infinity|nan)", re.IGNORECASE)


def parse_target(text) -> tuple[str, float]:
    """'val/loss=3.28' -> ('val/loss', 3.28): a target on a val metric. ValueError saying what is wrong: a metric
    that is not in VAL_METRICS, a value that is not a finite number, or one no run can reach (an accuracy outside
    [0, 1], a negative loss, bpb or a perplexity below 1)."""
    metric, sep, raw = str(text).partition("=")
    metric, raw = metric.strip(), raw.strip()
    if not sep or not metric or not raw:
        raise ValueError(f"'{text}' is not METRIC=VALUE; e.g. {VAL_LOSS}=3.28 or {VAL_ACC}=0.4361")
    if metric not in VAL_BY_KEY:
        raise ValueError(f"'{metric}' is not a val metric; use one of {', '.join(VAL_KEYS)} (e.g. {VAL_LOSS}=3.28)")
    if not NUMBER.fullmatch(raw):
        raise ValueError(f"'{raw}' is not a number; e.g. {metric}=3.28")
    value = float(raw)
    if not math.isfinite(value):
        raise ValueError(f"'{raw}' is not a finite number; give the value to reach, e.g. {VAL_LOSS}=3.28")
    lowest = {VAL_ACC: 0.0, VAL_PPL: 1.0}.get(metric, 0.0)
    if value < lowest or (metric == VAL_ACC and value > 1.0):
        bounds = "[0, 1]" if metric == VAL_ACC else f">= {lowest:g}"
        raise ValueError(f"{raw} can never be reached: {metric} is {bounds}")
    return metric, value


def target_reached(metric: str, target: float, value) -> bool:
    """`value` of `metric` is at or past `target` in the metric's good direction (at or below a loss, at or above an
    accuracy); False for a missing or non-finite value."""
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        return False
    return value <= target if VAL_BY_KEY[metric].lower_is_better else value >= target
