"""Forecasting each arm's final metric at a budget from a ladder of shorter runs: the fit, the bootstrap, the
checks of the power-law regime, the grouping of runs into arms and the plot (`plot_forecast`, matplotlib). `lmsprint
forecast` (cli/forecast.py) prints what `forecast_runs` returns.

The model (Kaplan et al. 2020, Hoffmann et al. 2022): the final loss of a run trained with a schedule fitted to
its budget x is L(x) = E + A * (x / x_ref)^(-alpha), x_ref the largest rung. `fit_power_law` fits it to every run
of an arm (every rung, the seeds as replicates) with `scipy.optimize.least_squares` (trust-region reflective,
bounds E in [0, lowest value seen], A >= 0, alpha in ALPHA_BOUNDS, several starts, the lowest cost kept).

Per arm (`forecast_arm`):
- forecast: the fit at the target budget;
- bootstrap (N_DRAWS draws, seeded per arm): each draw perturbs every run by its rung's seed noise (a wild
  bootstrap: the run's deviation from its rung mean times a random sign, scaled by sqrt(n/(n-1)) so the variance
  of a rung mean is the sample one; a rung with one seed gets the arm's pooled relative seed sd) and, with 4 or
  more rungs, refits on a random subset of the rungs (all of them, or all but one), so the draws carry both the
  seed noise and how much the forecast depends on which rungs were run. The interval is the draws' 10th-90th
  percentile (80%), and its low side always reaches the straight log-log line through the last two rungs (the
  10th percentile of that line's extrapolation under the same draws): the floor E is the least certain
  parameter, and a curve that flattens no further than it already has is the lowest that the checked regime
  allows (added after the first validation run, whose intervals missed low on a second corpus: docs/forecast.md);
- backtest (4+ rungs): the fit without the largest rung predicts it; the error is prediction - mean of that rung;
- regime checks, each widening the interval on the side the evidence points to, or refusing:
  - backtest error beyond the seed noise (0 outside the 5-95% range of the bootstrap's backtest errors): that side
    extends by |error| x max(1, reach), reach = log(target / x_k) / log(x_k / x_(k-1)), the number of such
    extrapolation steps between the largest rung and the target;
  - the last log-log slope steeper than the one before (the loss still falls faster with each doubling: not yet
    the power law's flattening): refused when 90% of the draws agree, else the low side extends to where that
    steepening, continued, would reach;
  - the fit's floor E at the lowest value seen, or alpha at its upper bound: a plateau, which can end: refused;
  - no backtest (3 rungs), E at 0 or alpha at its lower bound: the high side extends by the gap between the fit
    and the straight log-log line through the last two rungs (the curve may also flatten faster than fitted).
  Status: `ok` (no finding), `widened` (says why and which rung to add: twice the largest), `refused`;
- p_best: the share of bootstrap draws in which the arm has the lowest forecast, the draws of all arms taken
  jointly (draw i of every arm; each draw moves a uniform share of the way to its straight line, and a widened
  arm's draws carry the widening as a uniform shift); only arms with a number take part, so the shares sum to 1.

The interval is for the arm's expected metric at the target (the mean over seeds), not for one run of it.
Refused (no number, one line saying what to run): fewer than MIN_RUNGS distinct budgets, a fit that does not
converge, no rung with two seeds (the noise is unknown), or rungs clearly not in the power-law regime.
"""

from __future__ import annotations

import math
import os
import re
import zlib
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np
from scipy.optimize import least_squares

from .. import keys as K
from ..config import parse_duration
from ..config.options import parse_budget
from ..errors import UserError
from .discover import Run, find_runs, load_run
from .stats import SEED_KEYS, exp_stem, group_runs, norm

MIN_RUNGS = 3
LEVEL = 0.80                      # the interval's coverage
N_DRAWS = 1000
ALPHA_BOUNDS = (0.01, 4.0)
BUDGET_KEYS = ("iterations", "time_budget")
BOOT_SEED = 20240522              # draws are reproducible: the same runs give the same interval
MAX_NFEV = 2000                   # least_squares evaluations per start; a start that needs more has not converged


# ---------------------------------------------------------------------------------------------------- the fit


@dataclass
class PowerLawFit:
    E: float
    A: float
    alpha: float
    x_ref: float
    cost: float                    # 0.5 * sum of squared residuals (least_squares' cost)
    at_bound: tuple = ()           # which of "E=0", "E=min", "alpha=min", "alpha=max" the fit sits on

    def __call__(self, x):
        x = np.asarray(x, dtype=float)
        return self.E + self.A * (x / self.x_ref) ** (-self.alpha)

    def local_slope(self, x) -> float:
        """d log L / d log x at x."""
        lx = float(self(x))
        return -self.alpha * (lx - self.E) / lx if lx > 0 else float("nan")


def _residuals(p, lx, y):
    E, A, alpha = p
    return E + A * np.exp(-alpha * lx) - y


def _jac(p, lx, y):
    E, A, alpha = p
    t = np.exp(-alpha * lx)
    return np.stack([np.ones_like(lx), t, -A * lx * t], axis=1)


def fit_power_law(x: Sequence[float], y: Sequence[float], x_ref: Optional[float] = None,
                  start: Optional[tuple] = None) -> Optional[PowerLawFit]:
    """Least-squares fit of y = E + A (x / x_ref)^(-alpha) with bounds; None when no start converges.

    `x_ref` defaults to the largest x (so A is the excess over E there). `start` (E, A, alpha) tries that start
    first and alone if it converges (the bootstrap's warm start)."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(x) < 3 or not np.all(np.isfinite(y)) or not np.all(x > 0):
        return None
    x_ref = float(x.max() if x_ref is None else x_ref)
    lx = np.log(x / x_ref)
    y_min = float(y.min())
    e_hi = max(y_min, 0.0)
    span = float(y.max() - y.min())
    lo = np.array([0.0, 0.0, ALPHA_BOUNDS[0]])
    hi = np.array([e_hi if e_hi > 0 else 1e-12, max(10.0 * (abs(float(y.max())) + span), 1.0), ALPHA_BOUNDS[1]])
    y_top = float(y[x == x.max()].mean())
    starts = []
    if start is not None:
        starts.append(start)
    for e_frac in (0.0, 0.5, 0.9):
        for a0 in (0.3, 1.0):
            e0 = e_frac * e_hi
            starts.append((e0, max(y_top - e0, 1e-3 * (span + 1e-9)), a0))
    best = None
    for i, s in enumerate(starts):
        p0 = np.clip(np.asarray(s, dtype=float), lo, hi)
        p0 = np.where(p0 >= hi, hi - 1e-9 * (hi - lo), p0)
        try:
            res = least_squares(_residuals, p0, jac=_jac, bounds=(lo, hi), args=(lx, y), method="trf",
                                x_scale="jac", xtol=1e-12, ftol=1e-12, gtol=1e-12, max_nfev=MAX_NFEV)
        except (ValueError, FloatingPointError):
            continue
        if res.status <= 0 or not np.all(np.isfinite(res.x)):
            continue
        if best is None or res.cost < best.cost - 1e-15:
            best = res
        if i == 0 and start is not None:
            break  # the warm start converged: enough for a bootstrap draw
    if best is None:
        return None
    E, A, alpha = (float(v) for v in best.x)
    tol = 1e-6 * max(abs(e_hi), 1.0)
    bound = []
    if E <= tol:
        bound.append("E=0")
    if E >= e_hi - tol:
        bound.append("E=min")
    if alpha <= ALPHA_BOUNDS[0] * (1 + 1e-6):
        bound.append("alpha=min")
    if alpha >= ALPHA_BOUNDS[1] * (1 - 1e-6):
        bound.append("alpha=max")
    return PowerLawFit(E, A, alpha, x_ref, float(best.cost), tuple(bound))


# ---------------------------------------------------------------------------------------------------- budgets


def parse_target(text: str) -> tuple[str, float]:
    """`--at`: '25000' / '2.5e4' -> ('iterations', 25000); '3h' / '90m' / '1h30m' -> ('time', seconds)
    (`config.options.parse_budget`, the rule the CLI checks the flag with); UserError otherwise."""
    try:
        return parse_budget(text)
    except ValueError as e:
        raise UserError(f"--at '{text}' {e}") from None


def run_budget(run: Run) -> tuple[str, Optional[float]]:
    """('time', seconds) for a run trained with --time_budget, else ('iterations', its --iterations)."""
    tb = run.flat.get("time_budget")
    try:
        secs = parse_duration(tb)
    except ValueError:
        secs = None
    if secs:
        return "time", secs
    it = run.flat.get("iterations")
    return "iterations", (float(it) if isinstance(it, (int, float)) and not isinstance(it, bool) and it > 0 else None)


def fmt_budget(kind: str, x: float) -> str:
    if kind == "iterations":
        return f"{int(round(x)):,}"
    if x >= 3600:
        return f"{x / 3600:g}h"
    return f"{x / 60:g}m" if x >= 60 else f"{x:g}s"


# ---------------------------------------------------------------------------------------------------- arms


@dataclass
class Arm:
    label: str
    kind: str                          # iterations | time
    runs: list                         # complete runs with a finite metric
    left_out: list = field(default_factory=list)   # (run name, why)

    def points(self, metric: str) -> tuple[np.ndarray, np.ndarray, list]:
        x = np.array([run_budget(r)[1] for r in self.runs], dtype=float)
        y = np.array([r.final[metric] for r in self.runs], dtype=float)
        seeds = [tuple(norm(r.flat.get(k)) for k in SEED_KEYS) for r in self.runs]
        return x, y, seeds


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def group_arms(runs: list[Run], metric: str) -> list[Arm]:
    """Runs grouped into arms as `compare` groups them (`stats.group_runs`), with the budget (iterations,
    time_budget) ignored too: configs that differ only in seed, data_seed and the budget; bookkeeping options
    ignored. Runs that are not complete, or lack a finite `metric`, are listed in `left_out` of their arm."""
    out = []
    for g in group_runs(runs, ignore=SEED_KEYS + BUDGET_KEYS, complete_only=False):
        arm = Arm(label=g.label, kind=run_budget(g.runs[0])[0], runs=[])
        for r in g.runs:
            kind, x = run_budget(r)
            if not r.complete:
                arm.left_out.append((r.name, f"status {r.status}"))
            elif x is None:
                arm.left_out.append((r.name, "no budget in its config"))
            elif not _finite(r.final.get(metric)):
                arm.left_out.append((r.name, f"no finite final {metric}"))
            else:
                arm.runs.append(r)
        out.append(arm)
    for arm in out:
        kinds = {run_budget(r)[0] for r in arm.runs}
        if len(kinds) > 1:
            raise UserError(f"arm '{arm.label}' mixes runs budgeted by --iterations and by --time_budget; forecast "
                            "one kind at a time (pass the runs of one kind)")
        if kinds:
            arm.kind = kinds.pop()
    _name_arms(out)
    return out


def _name_arms(arms: list[Arm]) -> None:
    """Short labels: the folder each arm's runs share (a ladder's folder) when every arm has its own, else the
    runs' common --exp_name stem less the rung, else the differing config keys (already set)."""
    if len(arms) < 1:
        return
    parents = []
    for a in arms:
        ps = {os.path.dirname(os.path.abspath(r.path)) for r in a.runs + []}
        parents.append(next(iter(ps)) if len(ps) == 1 else None)
    names = [os.path.basename(p) if p else None for p in parents]
    if all(names) and len(set(names)) == len(names) and (len(arms) > 1 or arms[0].label == "all runs"):
        for a, n in zip(arms, names):
            a.label = n
        return
    stems = []
    for a in arms:
        s = {re.sub(r"[_\-.]?(?:r\d+of\d+|i\d+|it\d+|rung\d+)$", "", exp_stem(r.flat.get("exp_name"), r.flat.get("seed")))
             for r in a.runs}
        stems.append(next(iter(s)) if len(s) == 1 else "")
    if all(stems) and len(set(stems)) == len(stems) and len(arms) > 1:
        for a, s in zip(arms, stems):
            a.label = s


def load_arms(specs: list[str], metric: str) -> list[Arm]:
    runs = [load_run(p) for p in find_runs(specs)]
    return group_arms(runs, metric)


# ---------------------------------------------------------------------------------------------------- one arm


@dataclass
class Rungs:
    """An arm's points grouped by budget: x (distinct budgets, ascending), mean, sd (None with one seed), n."""
    x: np.ndarray
    mean: np.ndarray
    sd: list
    n: list
    index: list                        # per point: its rung's position in x

    @classmethod
    def of(cls, x: np.ndarray, y: np.ndarray) -> "Rungs":
        xs = np.unique(x)
        index = [int(np.searchsorted(xs, v)) for v in x]
        mean, sd, n = [], [], []
        for i in range(len(xs)):
            v = y[np.array(index) == i]
            mean.append(float(v.mean()))
            n.append(len(v))
            sd.append(float(v.std(ddof=1)) if len(v) > 1 else None)
        return cls(xs, np.array(mean), sd, n, index)

    def pooled_rel_sd(self) -> Optional[float]:
        """sqrt of the mean squared relative sd over the rungs with 2+ seeds (None if none has)."""
        rel = [(s / m) ** 2 for s, m in zip(self.sd, self.mean) if s is not None and m]
        return math.sqrt(sum(rel) / len(rel)) if rel else None


def log_slopes(x: np.ndarray, means: np.ndarray) -> np.ndarray:
    """Local slopes d log L / d log x between consecutive rungs (per doubling of the budget: x log(2))."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.diff(np.log(means), axis=-1) / np.diff(np.log(x))


@dataclass
class ArmForecast:
    arm: str
    kind: str
    rungs: list                        # distinct budgets
    seeds: list                        # distinct seeds (seed values; "seed/data_seed" when data seeds differ)
    n_runs: int
    status: str                        # ok | widened | refused
    message: str                       # refused: what to run; widened: why, and which rung to add
    forecast: Optional[float] = None
    low: Optional[float] = None
    high: Optional[float] = None
    p_best: Optional[float] = None
    backtest_error: Optional[float] = None      # prediction of the largest rung without it - its mean
    backtest_rel: Optional[float] = None
    fit: Optional[PowerLawFit] = None
    draws: Optional[np.ndarray] = None          # bootstrap forecasts at the target (widening included)
    band: Optional[tuple] = None                # (xs, lo, hi) of the interval along the curve, for the plot
    checks: list = field(default_factory=list)  # the regime checks' findings, one phrase each
    left_out: list = field(default_factory=list)
    points: tuple = ()                          # (x, y) of every run

    def as_json(self) -> dict:
        r = lambda v: None if v is None else float(v)  # noqa: E731
        return {"arm": self.arm, "forecast": r(self.forecast), "low": r(self.low), "high": r(self.high),
                "p_best": r(self.p_best), "rungs": [float(x) if self.kind == "time" else int(x) for x in self.rungs],
                "seeds": self.seeds, "backtest_error": r(self.backtest_error), "status": self.status,
                "message": self.message, "budget_unit": "iterations" if self.kind == "iterations" else "seconds",
                "fit": None if self.fit is None else {"E": self.fit.E, "A": self.fit.A, "alpha": self.fit.alpha,
                                                       "x_ref": self.fit.x_ref}}


def _seed_labels(seeds: list) -> list:
    data_seeds = {d for _s, d in seeds}
    if len(data_seeds) <= 1:
        return sorted({s for s, _d in seeds}, key=str)
    return sorted({f"{s}/{d}" for s, d in seeds})


def next_rung(xs: np.ndarray, target: float, kind: str) -> str:
    """The rung to add: twice the largest (the target itself when that reaches it)."""
    nxt = 2 * float(xs.max())
    if nxt >= target:
        return f"{fmt_budget(kind, target)} (the target itself: no shorter rung can settle it)"
    return fmt_budget(kind, nxt)


def forecast_arm(label: str, kind: str, x: Sequence[float], y: Sequence[float], seeds: list, target: float,
                 n_draws: int = N_DRAWS, seed: Optional[int] = None) -> ArmForecast:
    """Fit, bootstrap, backtest and regime checks of one arm (see the module doc); never raises for bad data:
    a refusal is an ArmForecast with status `refused` and the one line saying what to run. The draws' random
    stream is BOOT_SEED + a hash of the label unless `seed` is given: reproducible, and independent between arms
    (so p_best's joint draws do not pair one arm's sign flips with another's)."""
    if seed is None:
        seed = BOOT_SEED + zlib.crc32(label.encode())
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    order = np.lexsort((y, x))  # the same runs give the same draws, in whatever order they were passed
    x, y, seeds = x[order], y[order], [seeds[i] for i in order]
    R = Rungs.of(x, y)
    k = len(R.x)
    out = ArmForecast(label, kind, [float(v) for v in R.x], _seed_labels(seeds), len(y), "refused", "",
                      points=(x, y))
    shown = ", ".join(fmt_budget(kind, v) for v in R.x)
    if k < MIN_RUNGS:
        more = [fmt_budget(kind, float(R.x.max()) * 2 ** i) for i in range(1, MIN_RUNGS - k + 1)] if k else []
        out.message = (f"{k} distinct budget{'s' if k != 1 else ''} ({shown or 'no complete run'}): a forecast "
                       f"needs {MIN_RUNGS}; run rungs at {' and '.join(more) if more else '3 budgets'}")
        return out
    nxt = next_rung(R.x, target, kind)
    if R.pooled_rel_sd() is None:
        out.message = ("one seed per rung: the seed noise is unknown, so no interval can be given; run a second seed "
                       "of every rung (lmsprint ladder --seeds 2)")
        return out
    fit = fit_power_law(x, y)
    if fit is None:
        out.message = f"the power-law fit did not converge on the rungs {shown}; add a rung at {nxt}"
        return out
    out.fit, out.forecast = fit, float(fit(target))
    draws, bt, slopes, lines, grid_x, grid, line_grid = _bootstrap(x, y, R, fit, target, n_draws, seed)
    ok = np.isfinite(draws)
    if ok.mean() < 0.9:
        out.message = (f"the fit is unstable: {100 * (1 - ok.mean()):.0f}% of bootstrap refits did not converge; "
                       f"add a rung at {nxt}")
        out.forecast = None
        return out
    # ---- regime checks: findings, widening (amounts in the metric's units), refusal
    checks, lo_w, hi_w, refuse = [], 0.0, 0.0, None
    top = float(R.mean[-1])
    backtested = False
    if k >= 4:
        fit_bt = fit_power_law(x[np.array(R.index) < k - 1], y[np.array(R.index) < k - 1], x_ref=fit.x_ref)
        if fit_bt is not None:
            backtested = True
            e = float(fit_bt(R.x[-1])) - top
            out.backtest_error, out.backtest_rel = e, e / top
            q_lo, q_hi = np.nanquantile(bt, [0.05, 0.95]) if np.isfinite(bt).any() else (np.nan, np.nan)
            reach = math.log(target / R.x[-1]) / math.log(R.x[-1] / R.x[-2]) if target > R.x[-1] else 0.0
            if not (q_lo <= 0 <= q_hi):
                checks.append(f"backtest {_pct(e / top)} off {fmt_budget(kind, R.x[-1])}, beyond the seed noise")
                if e > 0:
                    lo_w = max(lo_w, e * max(reach, 1.0))
                else:
                    hi_w = max(hi_w, -e * max(reach, 1.0))
        else:
            checks.append("the backtest fit did not converge")
    else:
        checks.append(f"no backtest with {k} rungs")
    if R.x[-1] >= target:
        checks.append("the rungs reach the target: this interpolates, it does not forecast")
    s = log_slopes(R.x, R.mean)
    if len(s) >= 2 and s[-1] < s[-2]:
        p_steep = float(np.nanmean(slopes[:, -1] < slopes[:, -2]))
        per = math.log(2)
        phrase = (f"the loss still falls faster with each doubling ({s[-2] * per:+.3f} then {s[-1] * per:+.3f} "
                  "log-loss per doubling)")
        if p_steep >= 0.9:
            refuse = f"not yet in the power-law regime: {phrase}"
        else:
            checks.append(phrase + ", within the seed noise")
            lo_w = max(lo_w, out.forecast - _steepening_continued(R, s, target))
    if "E=min" in fit.at_bound or "alpha=max" in fit.at_bound:
        refuse = refuse or ("the rungs look like a plateau (the fit's floor E is the lowest loss seen): a plateau "
                            "can end, and nothing before it says when")
    if "E=0" in fit.at_bound or "alpha=min" in fit.at_bound or not backtested:
        # no floor in sight (or nothing to backtest): the curve may also flatten faster than fitted; the high side
        # extends by the gap between the fit and the straight log-log line through the last two rungs (the low
        # side reaches that line anyway, below)
        lin = top * (target / R.x[-1]) ** s[-1]
        gap = abs(out.forecast - lin)
        if "E=0" in fit.at_bound:
            checks.append("the fit has no floor (E at 0)")
        if "alpha=min" in fit.at_bound:
            checks.append("alpha at its lower bound")
        hi_w = max(hi_w, gap)
    if refuse:
        out.forecast = None
        out.checks = checks + [refuse]
        out.message = f"{refuse}; add a rung at {nxt}"
        return out
    half = (1 - LEVEL) / 2
    lo, hi = np.nanquantile(draws, [half, 1 - half])
    band_lo, band_hi = np.nanquantile(grid, half, axis=0), np.nanquantile(grid, 1 - half, axis=0)
    rng = np.random.default_rng(seed + 1)
    if target > R.x[-1]:
        # the floor E is the least certain parameter: the low side always reaches the straight log-log line through
        # the last two rungs (the curve flattening no further than it has), under the seed noise; each p_best draw
        # takes a uniform point between its fit and its line
        lo = min(lo, float(np.nanquantile(lines, half)))
        beyond = grid_x >= R.x[-1]
        band_lo[beyond] = np.fmin(band_lo[beyond], np.nanquantile(line_grid[:, beyond], half, axis=0))
        draws = np.where(lines < draws, draws + rng.random(len(draws)) * (lines - draws), draws)
    out.low, out.high = float(min(lo, out.forecast) - lo_w), float(max(hi, out.forecast) + hi_w)
    if lo_w or hi_w:  # the widening grows along the curve from the largest rung to the target (for the plot)
        ramp = np.clip(np.log(grid_x / R.x[-1]) / math.log(target / R.x[-1]), 0, 1) if target > R.x[-1] else 0
        band_lo, band_hi = band_lo - lo_w * ramp, band_hi + hi_w * ramp
        # p_best's draws carry the widening too: each draw moves by a uniform share of it, down or up
        u, side = rng.random(len(draws)), rng.random(len(draws)) < lo_w / (lo_w + hi_w)
        draws = np.where(side, draws - lo_w * u, draws + hi_w * u)
    out.draws = draws
    out.band = (grid_x, band_lo, band_hi)
    out.checks = checks
    if lo_w or hi_w:
        out.status = "widened"
        out.message = "interval widened: " + "; ".join(checks) + f"; add a rung at {nxt} to narrow it"
    else:
        out.status = "ok"
        out.message = "; ".join(["backtest within the seed noise, slopes flattening"] + checks)
    return out


def _pct(v: float) -> str:
    return f"{100 * v:+.1f}%"


def _steepening_continued(R: Rungs, s: np.ndarray, target: float) -> float:
    """The metric at the target if the log-log slope keeps steepening by the same amount per rung interval."""
    ds = s[-1] - s[-2]
    step = math.log(R.x[-1] / R.x[-2])
    lx, ly, slope = math.log(R.x[-1]), math.log(R.mean[-1]), s[-1]
    goal = math.log(target)
    while lx < goal - 1e-12:
        d = min(step, goal - lx)
        slope += ds
        ly += slope * d
        lx += d
    return math.exp(ly)


def _bootstrap(x, y, R: Rungs, fit: PowerLawFit, target: float, n_draws: int, seed: int):
    """Wild bootstrap over seeds, random rung subsets (4+ rungs): forecasts at the target, backtest errors, the
    rung means' log-log slopes, and each draw's curve on a grid (for the plot's band)."""
    rng = np.random.default_rng(seed)
    idx = np.array(R.index)
    k = len(R.x)
    dev = y - R.mean[idx]
    n = np.array(R.n)[idx]
    scale = np.where(n > 1, np.sqrt(n / np.maximum(n - 1, 1)), 0.0)
    single = n == 1
    sigma1 = (R.pooled_rel_sd() or 0.0) * y
    grid_x = np.geomspace(R.x[0], max(target, R.x[-1]), 60)
    draws = np.full(n_draws, np.nan)
    bt = np.full(n_draws, np.nan)
    slopes = np.full((n_draws, k - 1), np.nan)
    grid = np.full((n_draws, len(grid_x)), np.nan)
    lines = np.full(n_draws, np.nan)               # the straight log-log line through the last two rungs
    line_grid = np.full((n_draws, len(grid_x)), np.nan)
    beyond = grid_x >= R.x[-1]
    start = (fit.E, fit.A, fit.alpha)
    cache: dict = {}  # a fit depends only on the multiset of points: with 2 seeds a rung has 3 distinct draws

    def refit(drop: int, ys: np.ndarray) -> Optional[PowerLawFit]:
        keep = idx != drop
        key = (drop, tuple(tuple(sorted(np.round(ys[idx == i], 12))) for i in range(k) if i != drop))
        if key not in cache:
            cache[key] = fit_power_law(x[keep], ys[keep], x_ref=fit.x_ref, start=start)
        return cache[key]

    for b in range(n_draws):
        v = rng.choice((-1.0, 1.0), size=len(y))
        ys = np.where(single, y + sigma1 * v, R.mean[idx] + scale * dev * v)
        means = np.array([ys[idx == i].mean() for i in range(k)])
        slopes[b] = log_slopes(R.x, means)
        lines[b] = means[-1] * (target / R.x[-1]) ** slopes[b, -1]
        line_grid[b, beyond] = means[-1] * (grid_x[beyond] / R.x[-1]) ** slopes[b, -1]
        drop = -1  # all rungs, or (4+ rungs, half the draws) all but one
        if k >= 4 and rng.random() >= 0.5:
            drop = int(rng.integers(k))
        fb = refit(drop, ys)
        if fb is not None:
            draws[b] = fb(target)
            grid[b] = fb(grid_x)
        if k >= 4:
            fbt = refit(k - 1, ys)
            if fbt is not None:
                bt[b] = float(fbt(R.x[-1])) - means[-1]
    return draws, bt, slopes, lines, grid_x, grid, line_grid


def p_best(forecasts: list[ArmForecast]) -> None:
    """Set each forecast arm's p_best: the share of joint bootstrap draws (draw i of every arm) in which it is the
    lowest; draws where any arm has no value are left out. Refused arms get None."""
    live = [f for f in forecasts if f.draws is not None]
    for f in forecasts:
        f.p_best = None
    if not live:
        return
    n = min(len(f.draws) for f in live)
    D = np.stack([f.draws[:n] for f in live])
    keep = np.all(np.isfinite(D), axis=0)
    if not keep.any():
        return
    best = np.argmin(D[:, keep], axis=0)
    for i, f in enumerate(live):
        f.p_best = float(np.mean(best == i))


# ---------------------------------------------------------------------------------------------------- all arms


@dataclass
class Forecast:
    metric: str
    kind: str
    target: float
    arms: list                         # ArmForecast per arm, in the order the runs were given
    n_draws: int = N_DRAWS

    @property
    def live(self) -> list:
        return [a for a in self.arms if a.status != "refused"]


def throughput_hint(arms: list[Arm], kind: str, target: float) -> str:
    """For a budget-kind mismatch: the target converted with the steps per second the runs measured."""
    rates = []
    for a in arms:
        for r in a.runs:
            steps, secs = r.summary.get("iterations_done"), r.summary.get(K.TRAIN_TIME)
            if _finite(steps) and _finite(secs) and secs > 0:
                rates.append(steps / secs)
    if not rates:
        return ""
    rate = float(np.median(rates))
    if kind == "time":  # the runs are in iterations, the target a duration
        return (f"; at the {rate:.3g} steps/s these runs measured (on this machine, under its load then), "
                f"{fmt_budget('time', target)} is about --at {int(rate * target)}")
    return (f"; at the {rate:.3g} steps/s these runs measured, {int(target):,} iterations take about "
            f"{fmt_budget('time', target / rate)}")


def forecast_runs(specs: list[str], at: str, metric: str = K.VAL_LOSS, n_draws: int = N_DRAWS) -> Forecast:
    """Find the runs, group them into arms, forecast each at `at`; UserError for a budget-kind mismatch."""
    m = K.VAL_BY_KEY.get(metric)
    if m is None or not m.lower_is_better:
        raise UserError(f"--metric {metric}: forecast fits metrics that fall with the budget "
                        f"({', '.join(x.key for x in K.VAL_METRICS if x.lower_is_better)})")
    kind, target = parse_target(at)
    arms = load_arms(specs, metric)
    kinds = {a.kind for a in arms if a.runs}
    if len(kinds) > 1:
        raise UserError("the runs mix budgets in --iterations and in --time_budget; forecast one kind at a time")
    if kinds and kind not in kinds:
        have = kinds.pop()
        word = {"iterations": "iterations (--iterations)", "time": "training time (--time_budget)"}
        want = "a number of iterations, e.g. --at 25000" if have == "iterations" else "a duration, e.g. --at 3h"
        raise UserError(f"--at {at} is {word[kind].split(' (')[0]} but the runs were budgeted in {word[have]}; give "
                        f"{want}{throughput_hint(arms, kind, target)}")
    out = []
    for a in arms:
        x, y, seeds = a.points(metric)
        f = forecast_arm(a.label, a.kind, x, y, seeds, target, n_draws=n_draws)
        f.left_out = a.left_out
        out.append(f)
    p_best(out)
    return Forecast(metric, kind, target, out, n_draws)


def plot_forecast(fc: Forecast, path: str, actual: Optional[dict] = None) -> str:
    """One PNG: each arm's runs (dots), its fit (solid over the rungs, dashed beyond), the 80% band, the forecast
    with its interval at the target, and the target marked; `actual` ({arm: value at the target}, a validation's
    runs) adds those values as crosses."""
    from matplotlib.figure import Figure  # lazy: matplotlib is the optional `plots` extra

    fig = Figure(figsize=(7.5, 4.8), dpi=110)
    ax = fig.add_subplot(1, 1, 1)
    for i, a in enumerate(fc.arms):
        color = f"C{i % 10}"
        x, y = a.points
        ax.plot(x, y, "o", color=color, alpha=0.7, markersize=4,
                label=a.arm + ("" if a.status != "refused" else " (refused)"))
        if a.fit is None or a.status == "refused":
            continue
        xs = np.geomspace(min(x), max(x), 50)
        ax.plot(xs, a.fit(xs), "-", color=color, linewidth=1.5)
        if fc.target > max(x):
            xe = np.geomspace(max(x), fc.target, 30)
            ax.plot(xe, a.fit(xe), "--", color=color, linewidth=1.2)
        if a.band is not None:
            gx, lo, hi = a.band
            ax.fill_between(gx, lo, hi, color=color, alpha=0.15, linewidth=0)
        ax.errorbar([fc.target], [a.forecast], yerr=[[a.forecast - a.low], [a.high - a.forecast]], fmt="D",
                    color=color, markeredgecolor="black", capsize=4, zorder=10)
    for i, a in enumerate(fc.arms):
        if actual and actual.get(a.arm) is not None:
            ax.plot([fc.target * 1.04], [actual[a.arm]], "X", color=f"C{i % 10}", markeredgecolor="black",
                    markersize=9, zorder=11, label=f"{a.arm}: actual")
    ax.axvline(fc.target, color="grey", linestyle=":", linewidth=1)
    ax.set_xscale("log")
    unit = "iterations" if fc.kind == "iterations" else "training time (s)"
    ax.set_xlabel(unit)
    ax.set_ylabel(fc.metric)
    ax.set_title(f"{fc.metric} forecast at {fmt_budget(fc.kind, fc.target)}"
                 + (" iterations" if fc.kind == "iterations" else "") + " (80% intervals)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path)
    return path
