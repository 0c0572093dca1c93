"""Statistics over loaded runs: which config keys differ, arms (seed groups) with mean and sample sd, and the tests
that judge arms against a reference, all from scipy.stats; the method of each is named where it is reported.

- `group_runs(runs)` (public: `compare` and `forecast` use it): complete runs whose configs differ only by `seed` /
  `data_seed` form one arm (`Group`). Bookkeeping options (config metadata `bookkeeping=True`: names, folders,
  sinks, cadence, `--target`) are never "differing". An arm is labelled by its runs' `--exp_name` stem (the name
  less its seed: `relu2_s1` -> relu2, sweep's `lr=0.01_seed=1` -> lr=0.01) when every arm's runs share one stem and
  no two arms share it; otherwise by the config keys that differ (`model=llama2 opt=muon`).
- `judge(groups, reference, metric, started_together)`: every arm against the reference arm (or the best by mean):
  the difference of means with its 95% confidence interval and a two-sided p-value, from Welch's t-test
  (`scipy.stats.ttest_ind(equal_var=False)`), or from the paired t-test (`scipy.stats.ttest_rel`) when the two arms
  ran the same seeds started together (`pair_runs`); the p-values of the arms judged against one reference are
  adjusted by Holm's step-down method (`holm`, written here: scipy has no Holm correction). An arm is
  significantly better or worse when its Holm p < ALPHA; an arm or reference with fewer than MIN_SEEDS seeds is
  "too few seeds to call", never significant. A group with a run whose metric is missing or not finite (a NaN
  run) has no mean and is never ranked.
- `target_test(values, target, metric)`: the one-sided one-sample t-test that an arm's mean is at or below the
  target (at or above for accuracy; `scipy.stats.ttest_1samp`, alternative 'less'/'greater'): modded-nanogpt's
  record rule accepts a record at p < RECORD_ALPHA.
- `throughput_flags(groups)`: arms whose mean tokens/s differs from the median arm's by more than the seed spread
  of tokens/s (pooled sd within arms): the machine's load, not the idea, may explain their time-based numbers.
  `load_warnings(groups)`: runs of one arm whose tokens/s differ by more than LOAD_RATIO.
- `seed_group_id(flat)`: a stable name of a run's seed group (wandb's `group`).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import statistics
from dataclasses import dataclass, field
from typing import Callable, Optional

import scipy.stats

from .. import keys as K
from ..config import FLAGS, flags_where
from .discover import Run

MIN_SEEDS = 3         # fewer seeds in an arm or its reference: too few to call
ALPHA = 0.05          # an arm differs significantly when its Holm-adjusted p is below this
RECORD_ALPHA = 0.01   # modded-nanogpt's record rule: mean at or below the target with one-sided p below this
CONFIDENCE = 0.95
TOO_FEW = "too few seeds to call"
NO_SPREAD = "no spread between seeds: no t-test"
NON_FINITE = "non-finite or missing"
LOAD_RATIO = 1.5
SEED_KEYS = ("seed", "data_seed")
# options that differ between runs without changing what was trained (config metadata `bookkeeping=True`)
IGNORED_KEYS = frozenset(flags_where("bookkeeping"))
METHOD = (f"Δ = arm mean - reference mean, with its {CONFIDENCE:.0%} confidence interval and two-sided p from "
          "Welch's t-test (scipy.stats.ttest_ind, equal_var=False), or from the paired t-test "
          "(scipy.stats.ttest_rel) when both arms ran the same seeds started together (one `lmsprint sweep "
          "--parallel` batch); p adjusted by Holm's step-down method over the arms judged against one reference; "
          f"'better'/'worse' when the Holm p < {ALPHA:g}, else 'not significant' (no difference shown, which is not "
          f"proof of none); an arm or reference with fewer than {MIN_SEEDS} seeds: '{TOO_FEW}'")
AGAINST_BEST = ("the best arm was picked by its mean after the runs, so p-values against it are optimistic; name the "
                "reference before running (--reference) for a clean test")


def norm(v):
    """A hashable, comparable form of a config value (lists/dicts as sorted JSON)."""
    return json.dumps(v, sort_keys=True) if isinstance(v, (dict, list)) else v


def fmt_val(v) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    return "-" if v is None else str(v)


def differing_keys(runs: list[Run]) -> list[str]:
    """Config keys (flag names, in config order) whose values are not the same in every run."""
    keys = [k for k in FLAGS if k not in IGNORED_KEYS]
    keys += sorted({k for r in runs for k in r.flat} - set(FLAGS) - IGNORED_KEYS)
    keys.insert(0, "config_format")
    return [k for k in dict.fromkeys(keys) if len({norm(r.flat.get(k)) for r in runs}) > 1]


@dataclass
class Group:
    label: str
    runs: list                         # complete runs only
    key: tuple

    @property
    def n(self) -> int:
        return len(self.runs)

    @property
    def n_seeds(self) -> int:
        """Distinct (seed, data_seed) pairs among the runs."""
        return len({tuple(norm(r.flat.get(k)) for k in SEED_KEYS) for r in self.runs})

    def values(self, metric: str) -> list[float]:
        return [r.final[metric] for r in self.runs if finite(r.final.get(metric))]

    def all_finite(self, metric: str) -> bool:
        return all(finite(r.final.get(metric)) for r in self.runs)

    def mean_sd(self, metric: str) -> tuple[Optional[float], Optional[float]]:
        """Mean and sample sd over seeds; (None, None) if any run lacks a finite value; sd None with one seed."""
        v = self.values(metric)
        if not v or not self.all_finite(metric):
            return None, None
        return statistics.fmean(v), (statistics.stdev(v) if len(v) > 1 and self.n_seeds > 1 else None)

    def seed_values(self, metric: str) -> dict:
        """{(seed, data_seed): value} of the runs (None if two runs share a seed pair or a value is not finite)."""
        out = {}
        for r in self.runs:
            key = tuple(norm(r.flat.get(k)) for k in SEED_KEYS)
            if key in out or not finite(r.final.get(metric)):
                return None
            out[key] = r.final[metric]
        return out


def finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def group_runs(runs: list[Run], diff: Optional[list[str]] = None, ignore: tuple = SEED_KEYS,
               complete_only: bool = True) -> list[Group]:
    """Runs grouped into arms by every differing config key except those in `ignore` (seed/data_seed; `forecast`
    also ignores the budget); only complete runs unless `complete_only` is False."""
    diff = differing_keys(runs) if diff is None else diff
    gkeys = [k for k in diff if k not in ignore]
    groups: dict[tuple, Group] = {}
    for r in runs:
        if complete_only and not r.complete:
            continue
        key = tuple((k, norm(r.flat.get(k))) for k in gkeys)
        if key not in groups:
            label = " ".join(f"{k}={fmt_val(r.flat.get(k))}" for k in gkeys) or "all runs"
            groups[key] = Group(label=label, runs=[], key=key)
        groups[key].runs.append(r)
    out = list(groups.values())
    stems = [{exp_stem(r.flat.get("exp_name"), r.flat.get("seed")) for r in g.runs} for g in out]
    if all(len(s) == 1 and "" not in s for s in stems) and len({next(iter(s)) for s in stems}) == len(out) > 1:
        for g, s in zip(out, stems):
            g.label = next(iter(s))
    return out


def exp_stem(name, seed) -> str:
    """A run's `--exp_name` less its seed suffix (`_s3`, `-seed3`, `_seed=3`, with `seed` the run's seed); '' when
    the run has no name."""
    name = str(name or "")
    m = re.fullmatch(r"(.+?)[_\-.](?:s|seed=?)(\d+)", name)
    return m.group(1) if m and str(seed) == m.group(2) else name


def lower_is_better(metric: str) -> bool:
    m = K.VAL_BY_KEY.get(metric)
    return True if m is None else m.lower_is_better


def best_group(groups: list[Group], metric: str) -> Optional[Group]:
    """The group with the best mean of `metric` (lowest, or highest for a higher-is-better metric); a group with a
    non-finite or missing value in any run has no mean and is never the best."""
    scored = [g for g in groups if g.mean_sd(metric)[0] is not None]
    if not scored:
        return None
    sign = 1 if lower_is_better(metric) else -1
    return min(scored, key=lambda g: sign * g.mean_sd(metric)[0])


def load_warnings(groups: list[Group], key: str = K.TOKENS_PER_S) -> list[str]:
    """One line per group of identical configs whose tokens/s differ by more than LOAD_RATIO."""
    out = []
    for g in groups:
        tps = [(r.get(key), r.name) for r in g.runs if finite(r.get(key)) and r.get(key) > 0]
        if len(tps) < 2:
            continue
        lo, hi = min(tps), max(tps)
        if hi[0] > LOAD_RATIO * lo[0]:
            out.append(f"measured under different load: {g.label}: tokens/s differ {hi[0] / lo[0]:.2f}x between runs "
                       f"of one config ({lo[1]} {lo[0]:,.0f} vs {hi[1]} {hi[0]:,.0f}); their times and tokens/s are "
                       "not comparable, their metrics per token are")
    return out


def seed_group_id(flat: dict) -> str:
    """A short stable id of a config without seeds and bookkeeping options: runs of one seed group share it."""
    items = sorted((k, norm(v)) for k, v in flat.items() if k not in IGNORED_KEYS and k not in SEED_KEYS)
    return hashlib.sha1(json.dumps(items, default=str).encode()).hexdigest()[:8]


# ---------------------------------------------------------------------------------------------------- tests


def holm(pvalues: list) -> list:
    """Holm's step-down adjustment of `pvalues` (None entries are left out and stay None): the i-th smallest of the
    m p-values becomes max over j <= i of min(1, (m - j + 1) p_(j)); reject at level a where the adjusted p < a."""
    idx = sorted((i for i, p in enumerate(pvalues) if p is not None), key=lambda i: pvalues[i])
    m = len(idx)
    out: list = [None] * len(pvalues)
    running = 0.0
    for rank, i in enumerate(idx):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        out[i] = running
    return out


@dataclass
class ArmTest:
    """One arm against the reference on one metric."""
    method: str                    # "Welch" | "paired"
    n: int                         # runs (or pairs) of the arm
    n_ref: int
    diff: float                    # arm mean - reference mean (paired: mean of the per-seed differences)
    ci: tuple                      # CONFIDENCE interval of diff
    p: float                       # two-sided p
    p_holm: Optional[float] = None


def welch_test(arm: list, ref: list) -> ArmTest:
    """Welch's t-test of two independent samples (scipy.stats.ttest_ind, equal_var=False) and its CI."""
    r = scipy.stats.ttest_ind(arm, ref, equal_var=False)
    ci = r.confidence_interval(CONFIDENCE)
    return ArmTest("Welch", len(arm), len(ref), statistics.fmean(arm) - statistics.fmean(ref),
                   (float(ci.low), float(ci.high)), float(r.pvalue))


def paired_test(arm: list, ref: list) -> ArmTest:
    """The paired t-test (scipy.stats.ttest_rel) of per-seed values in the same order, and its CI."""
    r = scipy.stats.ttest_rel(arm, ref)
    ci = r.confidence_interval(CONFIDENCE)
    return ArmTest("paired", len(arm), len(ref), statistics.fmean(a - b for a, b in zip(arm, ref)),
                   (float(ci.low), float(ci.high)), float(r.pvalue))


def pair_runs(g: Group, ref: Group, metric: str, started_together: Callable[[Run, Run], bool]
              ) -> Optional[tuple[list, list]]:
    """(arm values, reference values) in seed order when the two arms ran the same seeds started together: each arm
    has exactly one run per (seed, data_seed), the two sets of seed pairs are equal, and every pair of runs of one
    seed was started together (`started_together(a, b)`); else None."""
    a, b = g.seed_values(metric), ref.seed_values(metric)
    if not a or not b or set(a) != set(b):
        return None
    run_of = {tuple(norm(r.flat.get(k)) for k in SEED_KEYS): r for r in g.runs}
    ref_of = {tuple(norm(r.flat.get(k)) for k in SEED_KEYS): r for r in ref.runs}
    if not all(started_together(run_of[s], ref_of[s]) for s in a):
        return None
    seeds = sorted(a, key=lambda s: tuple(str(x) for x in s))
    return [a[s] for s in seeds], [b[s] for s in seeds]


@dataclass
class Verdict:
    """An arm's line against the reference: `text` for the table, `test` when one was run."""
    text: str
    test: Optional[ArmTest] = None
    notes: list = field(default_factory=list)


def judge(groups: list[Group], reference: Optional[Group], metric: str,
          started_together: Callable[[Run, Run], bool] = lambda a, b: False) -> tuple[Optional[Group], dict]:
    """-> (the arm judged against: `reference` or the best by mean, {id(group): Verdict}). See the module doc."""
    ref = reference if reference is not None else best_group(groups, metric)
    out: dict = {}
    if ref is None:
        for g in groups:
            out[id(g)] = Verdict(f"not ranked: {NON_FINITE}" if g.runs else "-")
        return None, out
    tested = []
    for g in groups:
        if g is ref:
            role = "reference" if reference is not None else "best (by mean)"
            out[id(g)] = Verdict(role + (f"; {TOO_FEW} (n={g.n_seeds})" if g.n_seeds < MIN_SEEDS else ""))
            continue
        if g.mean_sd(metric)[0] is None:
            out[id(g)] = Verdict(f"not ranked: {NON_FINITE}" if g.runs else "-")
            continue
        if ref.mean_sd(metric)[0] is None:
            out[id(g)] = Verdict("-")
            continue
        if g.n_seeds < MIN_SEEDS or ref.n_seeds < MIN_SEEDS:
            out[id(g)] = Verdict(f"{TOO_FEW} (n={g.n_seeds} vs {ref.n_seeds}; {MIN_SEEDS} each needed)")
            continue
        paired = pair_runs(g, ref, metric, started_together)
        if paired:
            no_spread = len({a - b for a, b in zip(*paired)}) == 1
        else:
            no_spread = len(set(g.values(metric))) == 1 and len(set(ref.values(metric))) == 1
        if no_spread:  # every difference (or every value of both arms) equal: no t statistic
            out[id(g)] = Verdict(NO_SPREAD)
            continue
        test = paired_test(*paired) if paired else welch_test(g.values(metric), ref.values(metric))
        out[id(g)] = Verdict("", test)
        tested.append(g)
    for g, p in zip(tested, holm([out[id(g)].test.p for g in tested])):
        v = out[id(g)]
        v.test.p_holm = p
        if p < ALPHA:
            v.text = "better" if (v.test.diff < 0) == lower_is_better(metric) else "worse"
        else:
            v.text = "not significant"
    return ref, out


@dataclass
class TargetTest:
    n: int
    mean: float
    p: Optional[float]             # one-sided; None with too few seeds
    alternative: str               # "less" | "greater"


def target_test(values: list, target: float, metric: str) -> Optional[TargetTest]:
    """One-sided one-sample t-test (scipy.stats.ttest_1samp) that the mean of `values` is at or below `target` (at
    or above it for a higher-is-better metric): p small = the mean reaches the target. p None below MIN_SEEDS."""
    if not values:
        return None
    alt = "less" if lower_is_better(metric) else "greater"
    p = None
    if len(values) >= MIN_SEEDS and max(values) > min(values):  # equal values: no t statistic (p stays None)
        p = float(scipy.stats.ttest_1samp(values, target, alternative=alt).pvalue)
    return TargetTest(len(values), statistics.fmean(values), p, alt)


def t_interval(values: list) -> Optional[tuple[float, float]]:
    """The CONFIDENCE interval of the mean of `values` (Student's t, n - 1 degrees of freedom; scipy.stats.t);
    None with fewer than 2 values."""
    if len(values) < 2:
        return None
    m, sd = statistics.fmean(values), statistics.stdev(values)
    half = float(scipy.stats.t.ppf(0.5 + CONFIDENCE / 2, len(values) - 1)) * sd / math.sqrt(len(values))
    return m - half, m + half


def throughput_flags(groups: list[Group], key: str = K.TOKENS_PER_S) -> list[str]:
    """One line per arm whose mean tokens/s differs from the median arm's by more than the seed spread (the pooled
    sample sd of tokens/s within arms; arms of 2+ runs), saying the load may explain it."""
    per = []
    for g in groups:
        v = [r.get(key) for r in g.runs if finite(r.get(key)) and r.get(key) > 0]
        if v:
            per.append((g, v))
    spreads = [statistics.variance(v) for _g, v in per if len(v) > 1]
    if len(per) < 2 or not spreads:
        return []
    spread = math.sqrt(statistics.fmean(spreads))
    mid = statistics.median(statistics.fmean(v) for _g, v in per)
    out = []
    for g, v in per:
        m = statistics.fmean(v)
        if abs(m - mid) > spread:
            cost = {r.summary.get("params_active") for r in g.runs} != {
                r.summary.get("params_active") for h, _v in per if h is not g for r in h.runs}
            out.append(f"throughput: {g.label} ran at {m:,.0f} tokens/s, the median arm at {mid:,.0f}: a difference of "
                       f"{abs(m - mid):,.0f}, more than the seed spread ({spread:,.0f}); the machine's load, not the "
                       "idea, may explain its time-based numbers (time to target, metrics at a time budget)"
                       + ("; its active parameters differ, so part of it may be the idea's own cost" if cost else
                          "; arms started together (`sweep --parallel`) share the load"))
    return out
