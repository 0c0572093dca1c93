"""What `lmsprint compare` shows, and `compare(specs)` which ties discovery, val sets, statistics and formatting
together; the report folder (report.md embedding the PNG plots, plus runs.csv).

Runs are first split by the val set of their final eval (track/valsets.py): only runs evaluated on the same tokens
are ranked and tested together; runs on another val set get a table of their own, headed by one line saying why.
Per table:
- the run table: final val metrics (columns from keys.VAL_METRICS), training tokens, training time, tokens/s, total
  and active parameters, the config keys whose values differ; a run that is not complete is marked `*` (its
  numbers are the last logged ones) and left out of the statistics; a complete run that diverged (summary
  `diverged`, or for older summaries keys.diverged on its final val loss and vocab_size) shows `diverged` as its
  status and is named in a note; it stays in its arm, whose numbers it makes worse, as it should;
- the arm table: runs differing only by seed/data_seed (`stats.group_runs`), n, seeds, mean ± sample sd per metric;
- the test table on `--metric`: each arm against the reference arm (`--reference`: its label, or a glob matching
  the name or path of its runs: `reference_group`) or else the best arm by mean: Δ, its 95% confidence interval,
  the test (Welch, or paired for runs of the same seeds started together by one sweep batch), p and Holm's p, the
  verdict (`stats.judge`, method named in `stats.METHOD`);
- with a target (`--target METRIC=VALUE`, or the one every run recorded with `train --target`): each arm's
  one-sided p that its mean is at or past the target (modded-nanogpt's record rule: p < 0.01) and its time to
  target (track/target.py: median [min-max] over the runs that reached it, and how many did);
- notes: tokens/s of an arm off by more than the seed spread (the load may explain it), runs of one config
  measured under different load, fixed val sets that differ inside the table.
Bad input is one line (UserError): a `--metric` or target metric no complete run has, a target that is not
METRIC=VALUE with a finite value, a reference that matches no arm. The report folder (--out, default
./reports/compare-<timestamp>) is never overwritten.
"""

from __future__ import annotations

import csv
import fnmatch
import math
import os
import time
from dataclasses import dataclass, field
from typing import Optional

from .. import keys as K
from ..errors import UserError, plural
from .discover import Run, find_runs, lm_eval_columns, load_run
from .plots import plot_curves
from .stats import (AGAINST_BEST, CONFIDENCE, METHOD, MIN_SEEDS, NO_SPREAD, NON_FINITE, RECORD_ALPHA, TOO_FEW, Group,
                    differing_keys, finite, fmt_val, group_runs, judge, load_warnings, lower_is_better, norm,
                    target_test, throughput_flags)
from .sweep import started_together_fn
from .target import arm_time_to_target, common_target
from .valsets import ValSet, align_final_prefixes, fixed_val_set, split_by_val_set, why_apart

# ---------------------------------------------------------------------------------------------------- formatting


def _si(v, unit: str = "") -> str:
    if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
        return "-"
    for div, suf in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(v) >= div:
            return f"{v / div:.3g}{suf}{unit}"
    return f"{v:.3g}{unit}"


def _secs(v) -> str:
    if not isinstance(v, (int, float)) or isinstance(v, bool):
        return "-"
    if v < 120:
        return f"{v:.1f}s"
    if v < 7200:
        return f"{v / 60:.1f}m"
    return f"{v / 3600:.2f}h"


def _num(v, fmt: str) -> str:
    return K.format_number(v, fmt)


def _p(p) -> str:
    if p is None:
        return "-"
    if not math.isfinite(p):
        return "nan"
    return f"{p:.2g}"  # two significant digits: 0.57, 0.031, 0.00023


def _signed(fmt: str) -> str:
    return fmt.replace("{:", "{:+", 1)


def _spread(t: Optional[tuple], fmt) -> str:
    """'median [min-max]' of a (median, min, max) tuple."""
    return "-" if not t else f"{fmt(t[0])} [{fmt(t[1])}-{fmt(t[2])}]"


def _pm(g: Group, metric: str, fmt: str) -> str:
    m, s = g.mean_sd(metric)
    if m is None:
        vals = [r.final.get(metric) for r in g.runs]
        return "-" if all(v is None for v in vals) else NON_FINITE
    if s is not None:
        return f"{_num(m, fmt)} ± {_num(s, fmt)}"
    return f"{_num(m, fmt)} (n=1)" if g.n < 2 else f"{_num(m, fmt)} (one seed)"


def _seeds(g: Group) -> str:
    seeds = ",".join(fmt_val(r.flat.get("seed")) for r in g.runs)
    if len({norm(r.flat.get("data_seed")) for r in g.runs}) > 1:
        seeds += " data_seed " + ",".join(fmt_val(r.flat.get("data_seed")) for r in g.runs)
    return seeds


def text_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])


def md_table(header: list[str], rows: list[list[str]]) -> str:
    esc = lambda c: str(c).replace("|", "\\|")  # noqa: E731
    out = ["| " + " | ".join(esc(h) for h in header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(esc(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------------- comparison


@dataclass
class Target:
    metric: str
    value: float
    source: str                      # "--target" | "the runs' train --target"

    @property
    def text(self) -> str:
        return f"{self.metric}={self.value:g}"


@dataclass
class Table:
    """The runs of one val set, their arms and verdicts."""
    valset: ValSet
    runs: list
    diff: list
    groups: list
    metric: str
    reference: Optional[Group] = None     # --reference's arm in this table
    against: Optional[Group] = None       # the arm every other one is judged against (reference or best)
    verdicts: dict = field(default_factory=dict)     # id(group) -> stats.Verdict
    note: Optional[str] = None            # why this table is apart from the first
    notes: list = field(default_factory=list)
    target: Optional[Target] = None
    times: dict = field(default_factory=dict)        # id(group) -> target.ArmTime
    target_tests: dict = field(default_factory=dict)  # id(group) -> stats.TargetTest

    @property
    def against_text(self) -> str:
        if self.against is None:
            return "-"
        return f"the reference arm {self.against.label}" if self.reference is not None else \
            f"the best arm by mean ({self.against.label})"


def run_table(runs: list[Run], diff: list[str], target: Optional[Target] = None, times: Optional[dict] = None
              ) -> tuple[list[str], list[list[str]]]:
    lm = lm_eval_columns(runs)  # downstream benchmarks (lmsprint eval --tasks), when any run has them
    header = ["run", "status"] + [m.label for m in K.VAL_METRICS] + lm + [
        "tokens", "train time", "tokens/s", "params", "active"]
    if target is not None:
        header.append(f"reached {target.text}")
    header += diff
    per_run = {p: rec for t in (times or {}).values() for p, rec in t.per_run.items()}
    rows = []
    for r in runs:
        mark = "" if r.complete else "*"
        row = [r.name + mark, K.DIVERGED if r.diverged else r.status] + \
            [_num(r.final.get(m.key), m.fmt) for m in K.VAL_METRICS] + \
            [_num(r.lm_eval.get(k), "{:.4f}") for k in lm] + [
            _si(r.get(K.TOKENS)), _secs(r.get(K.TRAIN_TIME)), _si(r.get(K.TOKENS_PER_S)),
            _si(r.summary.get("params_total")), _si(r.summary.get("params_active"))]
        if target is not None:
            rec = per_run.get(r.path)
            row.append("-" if r.path not in per_run else "no" if rec is None else
                       f"step {rec['step']}, {_secs(rec['train_s'])}")
        rows.append(row + [fmt_val(r.flat.get(k)) for k in diff])
    return header, rows


def arm_table(t: Table) -> tuple[list[str], list[list[str]]]:
    header = ["arm", "n", "seeds"] + [f"{m.label} mean ± sd" for m in K.VAL_METRICS] + ["tokens/s"]
    rows = []
    for g in t.groups:
        tps = [r.get(K.TOKENS_PER_S) for r in g.runs if finite(r.get(K.TOKENS_PER_S))]
        rows.append([g.label, str(g.n), _seeds(g)] + [_pm(g, m.key, m.fmt) for m in K.VAL_METRICS] +
                    [_si(sum(tps) / len(tps)) if tps else "-"])
    return header, rows


def verdict_table(t: Table) -> tuple[list[str], list[list[str]]]:
    fmt = K.VAL_BY_KEY[t.metric].fmt if t.metric in K.VAL_BY_KEY else "{:.4f}"
    header = ["arm", "n", f"Δ {t.metric}", f"{CONFIDENCE:.0%} CI", "test", "p", "p (Holm)", "verdict"]
    rows = []
    for g in t.groups:
        v = t.verdicts.get(id(g))
        x = v.test if v is not None else None
        if x is None:
            rows.append([g.label, str(g.n_seeds), "-", "-", "-", "-", "-", v.text if v else "-"])
            continue
        rows.append([g.label, str(x.n), _signed(fmt).format(x.diff),
                     f"[{_signed(fmt).format(x.ci[0])}, {_signed(fmt).format(x.ci[1])}]",
                     x.method + ("" if x.method == "Welch" else f" ({x.n} seeds)"), _p(x.p), _p(x.p_holm), v.text])
    return header, rows


def target_table(t: Table) -> tuple[list[str], list[list[str]]]:
    tg = t.target
    fmt = K.VAL_BY_KEY[tg.metric].fmt
    sign = "≤" if lower_is_better(tg.metric) else "≥"
    header = ["arm", "n", f"{tg.metric} mean", f"p (mean {sign} {tg.value:g})", f"record rule (p < {RECORD_ALPHA:g})",
              "reached", "train time to target: median [min-max]", "tokens to target", "wall time to target"]
    rows = []
    for g in t.groups:
        tt = t.target_tests.get(id(g))
        at = t.times.get(id(g))
        if tt is None:
            rule = NON_FINITE
        elif tt.p is None:
            rule = f"{TOO_FEW} (n={tt.n})" if tt.n < MIN_SEEDS else NO_SPREAD
        else:
            rule = "met" if tt.p < RECORD_ALPHA else "not met"
        rows.append([g.label, str(g.n), fmt.format(tt.mean) if tt else "-", _p(tt.p) if tt else "-", rule,
                     f"{at.reached}/{at.n}" if at else "-", _spread(at.train_s, _secs) if at else "-",
                     _spread(at.tokens, _si) if at else "-", _spread(at.wall_s, _secs) if at else "-"])
    return header, rows


def target_method(tg: Target) -> str:
    alt = "less" if lower_is_better(tg.metric) else "greater"
    return (f"target {tg.text} ({tg.source}): p = one-sided one-sample t-test (scipy.stats.ttest_1samp, alternative "
            f"'{alt}') that the arm's mean final {tg.metric} is at or {'below' if alt == 'less' else 'above'} "
            f"{tg.value:g}; modded-nanogpt accepts a record at p < {RECORD_ALPHA:g} ('met'; {MIN_SEEDS}+ seeds); "
            "time to target: the first periodic eval on the fixed val set reaching it, median [min-max] over the "
            "runs that reached it")


@dataclass
class Comparison:
    tables: list
    metric: str
    notes: list
    target: Optional[Target] = None

    # the whole comparison as one list (every table)
    @property
    def runs(self) -> list:
        return [r for t in self.tables for r in t.runs]

    @property
    def groups(self) -> list:
        return [g for t in self.tables for g in t.groups]

    @property
    def diff(self) -> list:
        return differing_keys(self.runs)

    @property
    def reference(self) -> Optional[Group]:
        return next((t.reference for t in self.tables if t.reference is not None), None)

    def table_of(self, g: Group) -> Table:
        return next(t for t in self.tables if any(h is g for h in t.groups))

    def verdict(self, g: Group):
        return self.table_of(g).verdicts.get(id(g))

    def _heading(self, i: int, t: Table) -> list[str]:
        if len(self.tables) == 1:
            return []
        return [f"== val set {i + 1} of {len(self.tables)}: {t.valset.text}"] + ([t.note] if t.note else [])

    def text(self) -> str:
        parts: list[str] = []
        for i, t in enumerate(self.tables):
            parts += self._heading(i, t)
            parts.append(text_table(*run_table(t.runs, t.diff, t.target, t.times)))
            if t.groups:
                parts += ["", "arms (complete runs; mean ± sample sd over seeds):", text_table(*arm_table(t))]
            if len(t.groups) > 1:
                parts += ["", f"{t.metric} against {t.against_text}:", text_table(*verdict_table(t))]
            if t.groups:
                if t.target is not None:
                    parts += ["", f"target {t.target.text}:", text_table(*target_table(t))]
            parts += t.notes + [""]
        parts += self.notes
        if self.groups:
            parts.append("method: " + METHOD)
            if self.target is not None:
                parts.append(target_method(self.target))
        return "\n".join(parts).rstrip()


def _matches(g: Group, spec: str) -> bool:
    return g.label == spec or any(fnmatch.fnmatchcase(r.name, spec) or fnmatch.fnmatchcase(r.path, spec)
                                  or fnmatch.fnmatchcase(os.path.relpath(r.path), spec) for r in g.runs)


def reference_group(groups: list[Group], spec: str) -> Group:
    """The one arm `spec` names: an arm label, or a glob matching the name or path of its runs."""
    hits = [g for g in groups if g.label == spec] or [g for g in groups if _matches(g, spec)]
    if len(hits) != 1:
        found = "matches no arm" if not hits else f"matches {len(hits)} arms"
        raise UserError(f"--reference '{spec}' {found}; give one arm's label or a glob of its run names: "
                        + "; ".join(g.label for g in groups))
    return hits[0]


def _available(runs: list[Run]) -> list[str]:
    return [k for k in K.VAL_KEYS if any(r.complete and finite(r.final.get(k)) for r in runs)]


def _check_metric(runs: list[Run], metric: str, flag: str) -> None:
    """UserError when complete runs exist but none has a finite final `metric`."""
    if not any(r.complete for r in runs) or any(r.complete and finite(r.final.get(metric)) for r in runs):
        return
    have = _available(runs)
    raise UserError(f"{flag} {metric}: no complete run has a final {metric}; " +
                    (f"the runs have {', '.join(have)}: choose one of them" if have else
                     "the runs have no final val metric at all (evaluate them with `lmsprint eval RUN`)"))


def parse_compare_target(text: Optional[str]) -> Optional[tuple[str, float]]:
    if text is None:
        return None
    try:
        return K.parse_target(text)
    except ValueError as e:
        raise UserError(f"--target {text}: {e}") from None


def compare(specs: list[str], metric: str = K.VAL_LOSS, only_complete: bool = False,
            reference: Optional[str] = None, target: Optional[str] = None) -> Comparison:
    parsed = parse_compare_target(target)
    runs, notes = [], []
    for path in find_runs(specs):
        try:
            runs.append(load_run(path))
        except (UserError, OSError) as e:  # a malformed file of one run: that run is skipped, with its line
            notes.append(f"skipped run {path}: {e}")
    if not runs:
        raise UserError("none of the runs could be read: " + "; ".join(notes))
    notes += [p for r in runs for p in r.problems]
    pending = [r for r in runs if not r.complete]
    if pending and only_complete:
        notes.append(f"skipped {plural(len(pending), 'run')} not complete: " + ", ".join(
            f"{r.name} ({r.status})" for r in pending))
        runs = [r for r in runs if r.complete]
    elif pending:
        notes.append(f"* not complete ({plural(len(pending), 'run')}): numbers are the last logged ones, not a final "
                     "evaluation; left out of the arms")
    if not runs:
        raise UserError("none of the runs is complete; drop --only_complete to see unfinished runs")
    bad = [r for r in runs if r.diverged]
    if bad:
        notes.append(f"diverged ({plural(len(bad), 'run')}: a complete run whose final val loss is above "
                     "ln(vocab_size), the loss of a uniform guess): " + ", ".join(r.name for r in bad))
    _check_metric(runs, metric, "--metric")
    tg = None
    if parsed is not None:
        _check_metric(runs, parsed[0], "--target")
        tg = Target(parsed[0], parsed[1], "--target")
    elif common_target(runs) is not None:
        tg = Target(*common_target(runs), "recorded by every run's train --target")
    together = started_together_fn()
    tables: list[Table] = []
    runs, aligned = align_final_prefixes(runs)
    if aligned:
        notes.append(aligned)
    parts = split_by_val_set(runs)
    for vs, truns in parts:
        diff = differing_keys(truns)
        tables.append(Table(vs, truns, diff, group_runs(truns, diff), metric, target=tg))
    if reference:
        hits = [[g for g in t.groups if g.label == reference] or [g for g in t.groups if _matches(g, reference)]
                for t in tables]
        if not any(hits):
            reference_group([g for t in tables for g in t.groups], reference)  # raises: matches no arm
        for t, h in zip(tables, hits):
            if len(h) > 1:
                reference_group(t.groups, reference)  # raises: matches several arms
            t.reference = h[0] if h else None
    for i, t in enumerate(tables):
        t.against, t.verdicts = judge(t.groups, t.reference, metric, together)
        if i:
            t.note = why_apart(t.valset, tables[0].valset)
        if reference and t.reference is None and t.groups:
            t.notes.append(f"the reference '{reference}' is not on this val set: arms here are judged against the "
                           "best arm by mean")
        if t.reference is None and any(v.test for v in t.verdicts.values()):
            t.notes.append("against the best: " + AGAINST_BEST)
        t.notes += load_warnings(t.groups) + throughput_flags(t.groups)
        fixed = {fixed_val_set(r).key: fixed_val_set(r) for g in t.groups for r in g.runs}
        if len(fixed) > 1:
            t.notes.append("the runs' fixed val sets differ (" + "; ".join(v.text for v in fixed.values()) +
                           "): their curves and times to target are on different tokens")
        if tg is not None:
            for g in t.groups:
                t.times[id(g)] = arm_time_to_target(g, tg.metric, tg.value)
                t.target_tests[id(g)] = target_test(g.values(tg.metric), tg.value, tg.metric) \
                    if g.mean_sd(tg.metric)[0] is not None else None
    return Comparison(tables=tables, metric=metric, notes=notes, target=tg)


# ---------------------------------------------------------------------------------------------------- report folder


def unique_out_dir(out: Optional[str]) -> str:
    """Create and return the report folder: --out if new/empty, else ./reports/compare-<timestamp>[-N]."""
    if out:
        if os.path.isdir(out) and os.listdir(out) or os.path.isfile(out):
            raise UserError(f"--out '{out}' already exists and is not empty; reports are never overwritten, "
                            "choose a new folder")
        os.makedirs(out, exist_ok=True)
        return out
    base = os.path.join("reports", "compare-" + time.strftime("%Y%m%d-%H%M%S"))
    os.makedirs("reports", exist_ok=True)
    for i in range(1, 10000):
        path = base if i == 1 else f"{base}-{i}"
        try:
            os.mkdir(path)
            return path
        except FileExistsError:
            continue
    raise UserError("cannot find a free report folder name under ./reports; pass --out")


def _raw(v):
    """A CSV cell: numbers as plain numbers (full precision), None as empty."""
    if v is None:
        return ""
    if isinstance(v, (dict, list)):
        return norm(v)
    return v


def write_runs_csv(c: Comparison, path: str) -> None:
    """runs.csv: one row per run, every number as a plain number (seconds, tokens, tokens/s, parameters), with its
    arm and val set (the table's number)."""
    lm = lm_eval_columns(c.runs)
    cols = [m.key for m in K.VAL_METRICS] + lm + [K.TOKENS, K.TRAIN_TIME, K.TOKENS_PER_S, "params_total",
                                                  "params_active"]
    tcols = ["target_step", "target_tokens", "target_train_s", "target_wall_s"] if c.target else []
    diff = c.diff
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "run", "status", K.DIVERGED, "seed_group", "val_set"] + cols + tcols + diff)
        for i, t in enumerate(c.tables, 1):
            label = {r.path: g.label for g in t.groups for r in g.runs}
            recs = {p: rec for at in t.times.values() for p, rec in at.per_run.items()}
            for r in t.runs:
                nums = [r.final.get(m.key) for m in K.VAL_METRICS] + [r.lm_eval.get(k) for k in lm] + [
                    r.get(K.TOKENS), r.get(K.TRAIN_TIME), r.get(K.TOKENS_PER_S), r.summary.get("params_total"),
                    r.summary.get("params_active")]
                if tcols:
                    rec = recs.get(r.path) or {}
                    nums += [rec.get("step"), rec.get("tokens"), rec.get("train_s"), rec.get("wall_s")]
                w.writerow([r.path, r.name, r.status, str(r.diverged).lower(), label.get(r.path, ""), i] +
                           [_raw(v) for v in nums] +
                           [_raw(r.flat.get(k)) for k in diff])


def final_label(t: Table) -> str:
    """The legend entry of the final-eval stars: what the final evals of this table covered."""
    vs = t.valset
    what = vs.covers or "final eval"
    return "final eval (" + what + (f", {vs.tokens:,} tokens" if vs.tokens else "") + ")"


def _plots(t: Table, out_dir: str, prefix: str) -> list[tuple[str, str]]:
    gindex = {}
    for i, g in enumerate(t.groups):
        for j, r in enumerate(g.runs):
            gindex[r.path] = (i, j)
    series = []
    for n, r in enumerate(t.runs):
        gi, si = gindex.get(r.path, (len(t.groups) + n, 1))
        series.append({"label": r.name + ("" if r.complete else " *"), "rows": r.rows, "color_index": gi,
                       "style_index": si, "tokens_per_step": r.tokens_per_step, "path": r.path,
                       "final": dict(r.final) if r.complete else {},
                       "final_x": {K.TRAIN_TIME: r.get(K.TRAIN_TIME), K.TOKENS: r.get(K.TOKENS)}})
    bands = [{"label": f"{g.label} (n={g.n}: mean, {CONFIDENCE:.0%} CI of the mean)", "color_index": i,
              "paths": [r.path for r in g.runs]} for i, g in enumerate(t.groups) if g.n > 1]
    return plot_curves(series, out_dir, bands, final_label=final_label(t), prefix=prefix)


def write_report(c: Comparison, out_dir: str, specs: list[str]) -> str:
    """Plots + runs.csv + report.md into out_dir; returns the path of report.md."""
    os.makedirs(out_dir, exist_ok=True)
    write_runs_csv(c, os.path.join(out_dir, "runs.csv"))
    md = ["# Run comparison", "", f"Generated {time.strftime('%Y-%m-%d %H:%M:%S')} from: "
          + ", ".join(f"`{s}`" for s in specs), "",
          f"{plural(len(c.runs), 'run')}. Final metrics are the final evaluation of each run (plain cross-entropy); "
          "only config keys that differ between runs are shown. Runs are ranked only against runs evaluated on "
          "the same val set.", ""]
    for i, t in enumerate(c.tables):
        if len(c.tables) > 1:
            md += [f"## Val set {i + 1} of {len(c.tables)}", "", t.valset.text, ""] + ([t.note, ""] if t.note else [])
        else:
            md += [f"Val set: {t.valset.text}.", ""]
        md += ["### Runs", "", md_table(*run_table(t.runs, t.diff, t.target, t.times)), ""]
        if t.groups:
            md += ["### Arms", "", "Complete runs that differ only by seed/data_seed; mean ± sample sd over seeds.",
                   "", md_table(*arm_table(t)), ""]
            if len(t.groups) > 1:
                md += [f"### `{t.metric}` against {t.against_text}", "", md_table(*verdict_table(t)), ""]
            if t.target is not None:
                md += [f"### Target `{t.target.text}`", "", md_table(*target_table(t)), ""]
        for note in t.notes:
            md += [note, ""]
        plots = _plots(t, out_dir, "" if i == 0 else f"set{i + 1}_")
        md += ["### Curves", "", "Each point is one periodic evaluation on the fixed val set, drawn at its own "
               "training time and tokens; a star is a run's final evaluation (the number in the tables; the "
               f"legend says what it covered); a shaded band is an arm's {CONFIDENCE:.0%} confidence interval of "
               "the mean (Student's t) over its runs' k-th evaluations; the y axis spans at least 1% of the "
               "values.", ""]
        if plots:
            for title, name in plots:
                md += [f"#### {title}", "", f"![{title}]({name})", ""]
        else:
            md += ["No validation points were logged, so there is nothing to plot.", ""]
    for note in c.notes:
        md += [note, ""]
    if c.groups:
        md += ["## Method", "", METHOD[0].upper() + METHOD[1:] + "."]
        if c.target is not None:
            md += ["", target_method(c.target)[0].upper() + target_method(c.target)[1:] + "."]
        md.append("")
    path = os.path.join(out_dir, "report.md")
    with open(path, "w") as fh:
        fh.write("\n".join(md))
    return path
