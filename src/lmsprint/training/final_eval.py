"""How much of the val split a run's final evaluation scores: nested prefixes, and the largest that fits its time.

The final eval scores the val split in nested prefixes (`prefix_grid`): the fixed set of the periodic evals, then
twice as many windows, four times, ... and the full split. Each prefix's metrics are recorded (summary.json
`final_prefixes`), so runs whose final evals stopped at different prefixes still share the smaller ones.

- `--final_eval full`: every prefix up to the full split; `fixed`: the fixed set alone; `none`: no final eval.
- `--final_eval auto` (the default): with --time_budget, the largest prefix whose eval fits in `FINAL_EVAL_SHARE` of
  the budget, never less than the fixed set; without a budget, the full split. Before training, `plan_final_eval`
  sizes it from the speed of one timed eval batch (what the banner states); during the eval, `next_fits` decides
  before each next prefix from the speed measured so far, so a slower or faster eval than planned still stays
  within the share.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

FINAL_EVAL_SHARE = 0.15  # auto: the final eval may take up to this share of the time budget


def prefix_grid(fixed_windows: int, total_windows: int) -> list[int]:
    """Window counts of the nested prefixes: fixed, 2 x fixed, 4 x fixed, ... below the total, then the total."""
    w = max(1, min(fixed_windows, total_windows))
    out = []
    while w < total_windows:
        out.append(w)
        w *= 2
    return out + [total_windows]


@dataclass(frozen=True)
class FinalPlan:
    """What the final eval will score: `grid` (window counts of the prefixes it may score, in order), `limit_s` (the
    time it may take; None: no limit) and, for the banner, the planned windows and their estimated seconds."""

    mode: str
    grid: tuple[int, ...]
    limit_s: Optional[float] = None
    windows: int = 0
    seconds: Optional[float] = None


def plan_final_eval(mode: str, budget_s: Optional[float], fixed_windows: int, total_windows: int,
                    windows_per_s: Optional[float] = None) -> FinalPlan:
    """The plan of `--final_eval mode` (auto, full, fixed, none); `windows_per_s`: the measured eval speed (auto with
    a budget), used for the planned size shown in the banner."""
    if mode == "none":
        return FinalPlan(mode, ())
    if mode == "fixed":
        w = min(fixed_windows, total_windows)
        return FinalPlan(mode, (w,), None, w, w / windows_per_s if windows_per_s else None)
    grid = tuple(prefix_grid(fixed_windows, total_windows))
    if mode == "full" or not budget_s:
        return FinalPlan(mode, grid, None, grid[-1], grid[-1] / windows_per_s if windows_per_s else None)
    limit = FINAL_EVAL_SHARE * budget_s
    if not windows_per_s:
        return FinalPlan(mode, grid, limit, grid[0], None)
    fitting = [w for w in grid if w / windows_per_s <= limit]
    w = fitting[-1] if fitting else grid[0]
    return FinalPlan(mode, grid, limit, w, w / windows_per_s)


def next_fits(done_windows: int, elapsed_s: float, next_windows: int, limit_s: Optional[float]) -> bool:
    """Whether scoring up to `next_windows` keeps the eval within `limit_s`, at the speed measured so far."""
    if limit_s is None or done_windows == 0:
        return True
    if elapsed_s <= 0:
        return True
    return elapsed_s + (next_windows - done_windows) * elapsed_s / done_windows <= limit_s
