"""What `lmsprint compare` shows: the run table, the seed-group table, as text or markdown, and the report folder
(report.md embedding the PNG plots, plus runs.csv), and `compare(specs)` which ties discovery, statistics and
formatting together.

Run table: final val metrics (columns from keys.VAL_METRICS), training tokens, training time, tokens/s, total and
active parameters, and only the config keys whose values differ between the runs. A run that is not complete is marked
`*` (its numbers are the last logged ones) and left out of the seed statistics. A complete run that diverged (summary
`diverged`, or for older summaries keys.diverged on its final val loss and vocab_size) shows `diverged` as its status
and is named in a note; it stays in its seed group, whose numbers it makes worse, as it should. Seed groups are judged
with the noise rule against the best group, or against the group chosen by `--reference` (its label, or a glob
matching the name or path of one of its runs: `reference_group`). The report folder (--out, default
./reports/compare-<timestamp>) is never overwritten.
"""

from __future__ import annotations

import csv
import fnmatch
import math
import os
import time
from dataclasses import dataclass
from typing import Optional

from .. import keys as K
from ..errors import UserError, plural
from .discover import Run, find_runs, lm_eval_columns, load_run
from .plots import plot_curves
from .stats import (NOISE_RULE, NON_FINITE, Group, best_group, differing_keys, fmt_val, group_runs, load_warnings,
                    lower_is_better, noise_verdict, norm)

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


def _pm(g: Group, metric: str, fmt: str) -> str:
    m, s = g.mean_sd(metric)
    if m is None:
        vals = [r.final.get(metric) for r in g.runs]
        return "-" if all(v is None for v in vals) else NON_FINITE
    if s is not None:
        return f"{_num(m, fmt)} ± {_num(s, fmt)}"
    return f"{_num(m, fmt)} (n=1)" if g.n < 2 else f"{_num(m, fmt)} (one seed)"


def run_table(runs: list[Run], diff: list[str]) -> tuple[list[str], list[list[str]]]:
    lm = lm_eval_columns(runs)  # downstream benchmarks (lmsprint eval --tasks), when any run has them
    header = ["run", "status"] + [m.label for m in K.VAL_METRICS] + lm + [
        "tokens", "train time", "tokens/s", "params", "active"] + diff
    rows = []
    for r in runs:
        mark = "" if r.complete else "*"
        status = K.DIVERGED if r.diverged else r.status
        rows.append([r.name + mark, status] + [_num(r.final.get(m.key), m.fmt) for m in K.VAL_METRICS] +
                    [_num(r.lm_eval.get(k), "{:.4f}") for k in lm] + [
            _si(r.get(K.TOKENS)), _secs(r.get(K.TRAIN_TIME)), _si(r.get(K.TOKENS_PER_S)),
            _si(r.summary.get("params_total")), _si(r.summary.get("params_active"))] + [
            fmt_val(r.flat.get(k)) for k in diff])
    return header, rows


def reference_verdict(g: Group, ref: Group, metric: str) -> str:
    """'-0.0123 (-1.2%): better, beyond noise' | '... within noise' | the reason noise is unknown, for g vs ref."""
    if g is ref:
        return "reference" + (f" ({g.noise_note()})" if g.noise_note() else "")
    m, r = g.mean_sd(metric)[0], ref.mean_sd(metric)[0]
    if m is None:
        return f"not ranked: {NON_FINITE}" if g.runs else "-"
    if r is None:
        return "-"
    d = m - r
    verdict = noise_verdict(g, ref, metric)
    if verdict == "beyond noise":
        verdict = ("better" if (d < 0) == lower_is_better(metric) else "worse") + ", beyond noise"
    return f"{d:+.4f}" + (f" ({100 * d / abs(r):+.1f}%)" if r else "") + f": {verdict}"


def group_table(groups: list[Group], metric: str, reference: Optional[Group] = None
                ) -> tuple[list[str], list[list[str]]]:
    best = best_group(groups, metric)
    header = ["group", "n", "seeds"] + [f"{m.label} mean ± sd" for m in K.VAL_METRICS] + [
        f"{metric} vs {'reference' if reference is not None else 'best'}"]
    rows = []
    for g in groups:
        seeds = ",".join(fmt_val(r.flat.get("seed")) for r in g.runs)
        if len({norm(r.flat.get("data_seed")) for r in g.runs}) > 1:
            seeds += " data_seed " + ",".join(fmt_val(r.flat.get("data_seed")) for r in g.runs)
        if reference is not None:
            verdict = reference_verdict(g, reference, metric)
        elif g.mean_sd(metric)[0] is None:
            verdict = f"not ranked: {NON_FINITE}" if g.runs else "-"
        elif best is None:
            verdict = "-"
        elif g is best:
            verdict = "best" + (f" ({g.noise_note()})" if g.noise_note() else "")
        else:
            d = g.mean_sd(metric)[0] - best.mean_sd(metric)[0]
            verdict = f"{d:+.4f}: {noise_verdict(g, best, metric)}"
        rows.append([g.label, str(g.n), seeds] + [_pm(g, m.key, m.fmt) for m in K.VAL_METRICS] + [verdict])
    return header, rows


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
class Comparison:
    runs: list
    diff: list
    groups: list
    metric: str
    notes: list
    reference: Optional[Group] = None

    @property
    def against(self) -> str:
        return f"the reference group {self.reference.label}" if self.reference is not None else "the best group"

    def text(self) -> str:
        parts = [text_table(*run_table(self.runs, self.diff))]
        if self.groups:
            parts += ["", f"seed groups (complete runs; verdicts on {self.metric} against {self.against}):",
                      text_table(*group_table(self.groups, self.metric, self.reference)), NOISE_RULE]
        parts += self.notes
        return "\n".join(parts)


def reference_group(groups: list[Group], spec: str) -> Group:
    """The one seed group `spec` names: a group label, or a glob matching the name or path of its runs."""
    hits = [g for g in groups if g.label == spec] or [
        g for g in groups if any(fnmatch.fnmatchcase(r.name, spec) or fnmatch.fnmatchcase(r.path, spec)
                                 or fnmatch.fnmatchcase(os.path.relpath(r.path), spec) for r in g.runs)]
    if len(hits) != 1:
        found = "matches no seed group" if not hits else f"matches {len(hits)} seed groups"
        raise UserError(f"--reference '{spec}' {found}; give one group's label or a glob of its run names: "
                        + "; ".join(g.label for g in groups))
    return hits[0]


def compare(specs: list[str], metric: str = K.VAL_LOSS, only_complete: bool = False,
            reference: Optional[str] = None) -> Comparison:
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
                     "evaluation; left out of the seed groups")
    if not runs:
        raise UserError("none of the runs is complete; drop --only_complete to see unfinished runs")
    bad = [r for r in runs if r.diverged]
    if bad:
        notes.append(f"diverged ({len(bad)} run(s): a complete run whose final val loss is above ln(vocab_size), the "
                     "loss of a uniform guess): " + ", ".join(r.name for r in bad))
    diff = differing_keys(runs)
    groups = group_runs(runs, diff)
    notes += load_warnings(groups)
    ref = reference_group(groups, reference) if reference else None
    return Comparison(runs=runs, diff=diff, groups=groups, metric=metric, notes=notes, reference=ref)


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
    """runs.csv: one row per run, every number as a plain number (seconds, tokens, tokens/s, parameters)."""
    lm = lm_eval_columns(c.runs)
    cols = [m.key for m in K.VAL_METRICS] + lm + [K.TOKENS, K.TRAIN_TIME, K.TOKENS_PER_S, "params_total",
                                                  "params_active"]
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "run", "status", K.DIVERGED, "seed_group"] + cols + c.diff)
        label = {r.path: g.label for g in c.groups for r in g.runs}
        for r in c.runs:
            nums = [r.final.get(m.key) for m in K.VAL_METRICS] + [r.lm_eval.get(k) for k in lm] + [
                r.get(K.TOKENS), r.get(K.TRAIN_TIME), r.get(K.TOKENS_PER_S), r.summary.get("params_total"),
                r.summary.get("params_active")]
            w.writerow([r.path, r.name, r.status, str(r.diverged).lower(), label.get(r.path, "")] +
                       [_raw(v) for v in nums] +
                       [_raw(r.flat.get(k)) for k in c.diff])


def write_report(c: Comparison, out_dir: str, specs: list[str]) -> str:
    """Plots + runs.csv + report.md into out_dir; returns the path of report.md."""
    os.makedirs(out_dir, exist_ok=True)
    gindex = {}
    for i, g in enumerate(c.groups):
        for j, r in enumerate(g.runs):
            gindex[r.path] = (i, j)
    series = []
    for n, r in enumerate(c.runs):
        gi, si = gindex.get(r.path, (len(c.groups) + n, 1))
        series.append({"label": r.name + ("" if r.complete else " *"), "rows": r.rows, "color_index": gi,
                       "style_index": si, "tokens_per_step": r.tokens_per_step, "path": r.path,
                       "final": dict(r.final) if r.complete else {},
                       "final_x": {K.TRAIN_TIME: r.get(K.TRAIN_TIME), K.TOKENS: r.get(K.TOKENS)}})
    bands = [{"label": f"{g.label} (n={g.n}, mean ± sd)", "color_index": i,
              "paths": [r.path for r in g.runs]} for i, g in enumerate(c.groups) if g.n > 1]
    plots = plot_curves(series, out_dir, bands)
    write_runs_csv(c, os.path.join(out_dir, "runs.csv"))
    header, rows = run_table(c.runs, c.diff)

    md = ["# Run comparison", "", f"Generated {time.strftime('%Y-%m-%d %H:%M:%S')} from: "
          + ", ".join(f"`{s}`" for s in specs), "",
          f"{plural(len(c.runs), 'run')}. Final metrics are the final evaluation of each run (plain cross-entropy); "
          "only config keys that differ between runs are shown.", "", "## Runs", "", md_table(header, rows), ""]
    for note in c.notes:
        md += [note, ""]
    if c.groups:
        md += ["## Seed groups", "", f"Runs that differ only by seed/data_seed, verdicts on `{c.metric}` "
               f"against {c.against}.", "", md_table(*group_table(c.groups, c.metric, c.reference)), "",
               NOISE_RULE[0].upper() + NOISE_RULE[1:] + ".", ""]
    md += ["## Curves", "", "Curves are the periodic evaluations on the fixed val set; a star is a run's final evaluation "
           "(the full val split unless the run said otherwise: the number in the tables); a shaded band is a seed "
           "group's mean ± sd over its runs' k-th evaluations; the y axis spans at least 1% of the values.", ""]
    if plots:
        for title, name in plots:
            md += [f"### {title}", "", f"![{title}]({name})", ""]
    else:
        md += ["No validation points were logged, so there is nothing to plot.", ""]
    path = os.path.join(out_dir, "report.md")
    with open(path, "w") as fh:
        fh.write("\n".join(md))
    return path
