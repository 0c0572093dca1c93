"""Statistics over loaded runs: which config keys differ, seed groups with mean and sample sd, the noise verdict
between two groups and the best group for a metric (its direction from keys.VAL_METRICS).

Runs whose configs differ only by `seed` / `data_seed` form a group. NOISE RULE: two groups differ "within noise"
when |mean_a - mean_b| < sd_a + sd_b; with one seed in a group the verdict is "single seed: noise unknown", and a
group whose runs all share one seed says so (their spread is not seed noise). A group with a run whose metric is
missing or not finite (a NaN run) has no mean for it and is never the best group.
`load_warnings(groups)`: runs of one config whose tokens/s differ by more than LOAD_RATIO were measured under
different machine load. `seed_group_id(flat)`: a stable name of a run's seed group (wandb's `group`).
Bookkeeping options (config metadata `bookkeeping=True`: names, folders, sinks, cadence) are never "differing".
A group is labelled by its runs' `--exp_name` stem (the name less its seed: `relu2_s1` -> relu2, sweep's
`lr=0.01_seed=1` -> lr=0.01) when every group's runs share one stem and no two groups share it; otherwise by the
config keys that differ (`model=llama2 opt=muon`).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import statistics
from dataclasses import dataclass
from typing import Optional

from .. import keys as K
from ..config import FLAGS, flags_where
from .discover import Run

NOISE_RULE = ("noise rule: a difference between two seed groups is 'within noise' when |mean_a - mean_b| < "
              "sd_a + sd_b (sample sd over seeds); a group with one seed, or whose runs share one seed, has "
              "'noise unknown'; a group with a non-finite metric is not ranked")
SINGLE_SEED = "single seed: noise unknown"
SAME_SEED = "runs share one seed: noise unknown"
NON_FINITE = "non-finite or missing"
LOAD_RATIO = 1.5
SEED_KEYS = ("seed", "data_seed")
# options that differ between runs without changing what was trained (config metadata `bookkeeping=True`)
IGNORED_KEYS = frozenset(flags_where("bookkeeping"))


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

    def noise_note(self) -> Optional[str]:
        """Why this group's sd says nothing about seed noise (None when it does)."""
        if self.n < 2:
            return SINGLE_SEED
        return SAME_SEED if self.n_seeds < 2 else None


def finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def group_runs(runs: list[Run], diff: Optional[list[str]] = None) -> list[Group]:
    """Complete runs grouped by every differing config key except seed/data_seed."""
    diff = differing_keys(runs) if diff is None else diff
    gkeys = [k for k in diff if k not in SEED_KEYS]
    groups: dict[tuple, Group] = {}
    for r in runs:
        if not r.complete:
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


def noise_verdict(a: Group, b: Group, metric: str) -> str:
    """'within noise' | 'beyond noise' | 'single seed: noise unknown' for the difference of two groups' means."""
    ma, sa = a.mean_sd(metric)
    mb, sb = b.mean_sd(metric)
    if ma is None or mb is None:
        return "no value"
    if sa is None or sb is None:
        return (a.noise_note() if sa is None else b.noise_note()) or SINGLE_SEED
    return "within noise" if abs(ma - mb) < sa + sb else "beyond noise"


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
