"""Time to target across runs for `compare`: when each run first reached a target on its fixed val set, and each
arm's median and spread of it.

- `run_time_to_target(run, metric, value)`: the run's own `--target` record (summary.json `target`) when it is the
  same target; else the first eval row of its metrics.jsonl reaching it (at or below for a loss, at or above for an
  accuracy), at that row's own step, tokens and times (`plots.val_curve`). None when the run never reached it.
- `arm_time_to_target(group, metric, value)` -> `ArmTime`: how many of the arm's runs reached it, and the median,
  min and max of their training seconds, tokens and wall seconds. Runs that never reached it are counted, not
  timed: the median is over the runs that reached it.
- `common_target(runs)`: the target every complete run recorded with `train --target` (None if they differ or
  some have none), for a `compare` without `--target`.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Optional

from .. import keys as K
from .discover import Run
from .plots import val_curve
from .stats import Group


def run_time_to_target(run: Run, metric: str, value: float) -> Optional[dict]:
    """{"step", "tokens", "train_s", "wall_s"} of the first eval reaching the target, or None."""
    rec = run.summary.get(K.TARGET)
    if isinstance(rec, dict) and rec.get("metric") == metric and rec.get("value") == value:
        if rec.get("reached"):
            return {k: rec.get(k) for k in ("step", "tokens", "train_s", "wall_s")}
        if run.complete:  # the run watched for this very target to its end
            return None
    c = val_curve(run.rows, metric, run.tokens_per_step)
    for i, v in enumerate(c[metric]):
        if K.target_reached(metric, value, v):
            return {"step": c[K.ITER][i], "tokens": c[K.TOKENS][i], "train_s": c[K.TRAIN_TIME][i],
                    "wall_s": c[K.WALL_TIME][i]}
    return None


def _spread(values: list) -> Optional[tuple[float, float, float]]:
    v = [x for x in values if isinstance(x, (int, float))]
    return (statistics.median(v), min(v), max(v)) if v else None


@dataclass
class ArmTime:
    n: int                      # runs of the arm
    reached: int                # runs that reached the target
    train_s: Optional[tuple] = None   # (median, min, max) over the runs that reached it
    tokens: Optional[tuple] = None
    wall_s: Optional[tuple] = None
    per_run: dict = field(default_factory=dict)  # run path -> record or None


def arm_time_to_target(group: Group, metric: str, value: float) -> ArmTime:
    recs = {r.path: run_time_to_target(r, metric, value) for r in group.runs}
    hit = [x for x in recs.values() if x]
    return ArmTime(group.n, len(hit), _spread([x["train_s"] for x in hit]), _spread([x["tokens"] for x in hit]),
                   _spread([x["wall_s"] for x in hit]), recs)


def common_target(runs: list[Run]) -> Optional[tuple[str, float]]:
    """(metric, value) that every complete run recorded as its `--target`, or None."""
    found = set()
    for r in runs:
        if not r.complete:
            continue
        rec = r.summary.get(K.TARGET)
        if not isinstance(rec, dict) or rec.get("metric") not in K.VAL_BY_KEY or \
                not isinstance(rec.get("value"), (int, float)):
            return None
        found.add((rec["metric"], float(rec["value"])))
    return next(iter(found)) if len(found) == 1 else None
