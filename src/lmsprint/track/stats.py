"""Statistics over loaded runs: which config keys differ, seed groups with mean and sample sd, the noise verdict
between two groups and the best group for a metric (its direction from keys.VAL_METRICS).

Runs whose configs differ only by `seed` / `data_seed` form a group. NOISE RULE: two groups differ "within noise"
when |mean_a - mean_b| < sd_a + sd_b; with one seed in a group the verdict is "single seed: noise unknown".
Bookkeeping options (config metadata `bookkeeping=True`: names, folders, sinks, cadence) are never "differing".
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from typing import Optional

from .. import keys as K
from ..config import FLAGS, flags_where
from .discover import Run

NOISE_RULE = ("noise rule: a difference between two seed groups is 'within noise' when |mean_a - mean_b| < "
              "sd_a + sd_b (sample sd over seeds); a group with one seed has 'single seed: noise unknown'")
SINGLE_SEED = "single seed: noise unknown"
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

    def values(self, metric: str) -> list[float]:
        return [r.final[metric] for r in self.runs if r.final.get(metric) is not None]

    def mean_sd(self, metric: str) -> tuple[Optional[float], Optional[float]]:
        v = self.values(metric)
        if not v:
            return None, None
        return statistics.fmean(v), (statistics.stdev(v) if len(v) > 1 else None)


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
    return list(groups.values())


def noise_verdict(a: Group, b: Group, metric: str) -> str:
    """'within noise' | 'beyond noise' | 'single seed: noise unknown' for the difference of two groups' means."""
    ma, sa = a.mean_sd(metric)
    mb, sb = b.mean_sd(metric)
    if ma is None or mb is None:
        return "no value"
    if sa is None or sb is None:
        return SINGLE_SEED
    return "within noise" if abs(ma - mb) < sa + sb else "beyond noise"


def lower_is_better(metric: str) -> bool:
    m = K.VAL_BY_KEY.get(metric)
    return True if m is None else m.lower_is_better


def best_group(groups: list[Group], metric: str) -> Optional[Group]:
    """The group with the best mean of `metric` (lowest, or highest for a higher-is-better metric)."""
    scored = [g for g in groups if g.mean_sd(metric)[0] is not None]
    if not scored:
        return None
    sign = 1 if lower_is_better(metric) else -1
    return min(scored, key=lambda g: sign * g.mean_sd(metric)[0])
