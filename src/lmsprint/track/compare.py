"""`lmsprint compare RUN_DIR...`: a table of finished runs, seed groups with mean +- sd, plots and a report.

Inputs are run directories, glob patterns, or folders searched (recursively) for run directories. For every run:
final val loss / acc / perplexity / bpb (from summary.json), training tokens, training time, tokens/s, total and
active parameters, and only the config keys whose values differ between the runs. A run whose summary status is
not "complete" is listed with its status and a `*` (its numbers are the last logged ones) and left out of the
seed statistics.

Runs whose configs differ only by `seed` / `data_seed` form a group; each group shows n, mean and sample sd of
every final metric. NOISE RULE: two groups differ "within noise" when |mean_a - mean_b| < sd_a + sd_b; with one
seed in a group the verdict is "single seed: noise unknown". The verdicts compare each group with the best one.

The table is printed; the report folder (--out, default ./reports/compare-<timestamp>, never overwritten) gets
report.md embedding PNG plots (val bpb and val acc against training time and tokens) and runs.csv.
"""

from __future__ import annotations

import argparse
import csv
import glob
import json
import math
import os
import statistics
import time
from dataclasses import dataclass, field
from typing import Optional

from ..config import FLAGS, flatten
from ..errors import UserError
from ..rundir import LATEST_POINTER, resolve_run_dir
from .. import keys as K

NOISE_RULE = ("noise rule: a difference between two seed groups is 'within noise' when |mean_a - mean_b| < "
              "sd_a + sd_b (sample sd over seeds); a group with one seed has 'single seed: noise unknown'")
SINGLE_SEED = "single seed: noise unknown"
SEED_KEYS = ("seed", "data_seed")
# bookkeeping keys that differ between runs without changing what was trained
IGNORED_KEYS = {"exp_name", "run_prefix", "results_base_folder", "resume", "wandb", "wandb_project",
                "wandb_run_prefix", "wandb_entity", "tensorboard", "progress", "data_dir", "num_proc", "log_interval",
                "ckpt_interval", "save_checkpoint_freq"}
FINAL_METRICS = [(K.VAL_LOSS, "val loss", "{:.4f}"), (K.VAL_ACC, "val acc", "{:.4f}"),
                 (K.VAL_PPL, "val ppl", "{:.2f}"), (K.VAL_BPB, "val bpb", "{:.4f}")]
LOWER_IS_BETTER = {K.VAL_LOSS: True, K.VAL_PPL: True, K.VAL_BPB: True, K.VAL_ACC: False}


# ---------------------------------------------------------------------------------------------------- loading


@dataclass
class Run:
    path: str
    name: str
    status: str                       # complete | running | failed | no summary
    flat: dict                        # flat {flag: value} of config.yaml
    summary: dict
    rows: list                        # metrics.jsonl rows
    final: dict = field(default_factory=dict)   # val/loss, val/acc, val/perplexity, val/bpb

    @property
    def complete(self) -> bool:
        return self.status == "complete"

    def get(self, key: str):
        """A complete run's summary number; for an unfinished run (or a missing number) the last value logged."""
        v = self.summary.get(key) if self.complete else None
        if v is None:
            for r in reversed(self.rows):
                if r.get(key) is not None:
                    return r[key]
        return self.summary.get(key) if v is None else v

    @property
    def tokens_per_step(self) -> Optional[int]:
        try:
            return int(self.flat["batch_size"]) * int(self.flat["acc_steps"]) * int(self.flat["sequence_length"])
        except (KeyError, TypeError, ValueError):
            return None


def is_run_dir(path: str) -> bool:
    return os.path.isdir(path) and (os.path.isfile(os.path.join(path, "config.yaml"))
                                    or os.path.isfile(os.path.join(path, "summary.json")))


def _walk_runs(folder: str) -> list[str]:
    found = []
    for root, dirs, _files in os.walk(folder):
        if is_run_dir(root):
            found.append(root)
            dirs[:] = []  # a run directory's subfolders (checkpoints, wandb, tb) hold no runs
        else:
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
    return found


def find_runs(specs: list[str]) -> list[str]:
    """Run directories named by `specs` (run dirs, folders of runs, glob patterns), in order, without repeats."""
    out: list[str] = []
    for spec in specs:
        matches = [spec] if os.path.exists(spec) else sorted(glob.glob(spec))
        found = []
        for m in matches:
            if is_run_dir(m):
                found.append(m)
            elif os.path.isdir(m):
                found.extend(_walk_runs(m))
            elif os.path.basename(m) == LATEST_POINTER and os.path.isfile(m):  # `exps/*` includes the pointer
                found.append(resolve_run_dir("latest", os.path.dirname(m) or "."))
        if not found:
            raise UserError(f"no run directories found in '{spec}'; pass run directories (with config.yaml / "
                            "summary.json), a results folder or a glob pattern")
        for f in found:
            f = os.path.normpath(f)
            if f not in out:
                out.append(f)
    return out


def _read_json(path: str) -> Optional[dict]:
    try:
        with open(path) as fh:
            d = json.load(fh)
        return d if isinstance(d, dict) else None
    except (OSError, ValueError):
        return None


def read_rows(path: str) -> list[dict]:
    rows = []
    if os.path.exists(path):
        with open(path) as fh:
            for line in fh:
                if not line.endswith("\n"):
                    break  # a half-written last line of a run still going
                try:
                    rows.append(json.loads(line))
                except ValueError:
                    continue
    return rows


def load_run(path: str) -> Run:
    import yaml

    cfg: dict = {}
    try:
        with open(os.path.join(path, "config.yaml")) as fh:
            cfg = yaml.safe_load(fh) or {}
    except (OSError, yaml.YAMLError):
        pass
    summary = _read_json(os.path.join(path, "summary.json")) or {}
    rows = read_rows(os.path.join(path, "metrics.jsonl"))
    flat = flatten(cfg) if isinstance(cfg, dict) else {}
    status = summary.get("status") or "no summary"
    run = Run(path=path, name=os.path.basename(os.path.normpath(path)), status=status, flat=flat,
              summary=summary, rows=rows)
    final = summary.get(K.FINAL) if isinstance(summary.get(K.FINAL), dict) else {}
    for key, _label, _fmt in FINAL_METRICS:
        v = final.get(key)
        if v is None and not run.complete:  # an unfinished run: its last logged val numbers
            v = run.get(key)
        run.final[key] = v if isinstance(v, (int, float)) and not isinstance(v, bool) else None
    return run


# ---------------------------------------------------------------------------------------------------- analysis


def _norm(v):
    return json.dumps(v, sort_keys=True) if isinstance(v, (dict, list)) else v


def differing_keys(runs: list[Run]) -> list[str]:
    """Config keys (flag names, in config order) whose values are not the same in every run."""
    keys = [k for k in FLAGS if k not in IGNORED_KEYS]
    keys += sorted({k for r in runs for k in r.flat} - set(FLAGS) - IGNORED_KEYS)
    keys.insert(0, "config_format")
    out = []
    for k in dict.fromkeys(keys):
        vals = {_norm(r.flat.get(k)) for r in runs}
        if len(vals) > 1:
            out.append(k)
    return out


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
        key = tuple((k, _norm(r.flat.get(k))) for k in gkeys)
        if key not in groups:
            label = " ".join(f"{k}={_fmt_val(r.flat.get(k))}" for k in gkeys) or "all runs"
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


def best_group(groups: list[Group], metric: str) -> Optional[Group]:
    scored = [g for g in groups if g.mean_sd(metric)[0] is not None]
    if not scored:
        return None
    sign = 1 if LOWER_IS_BETTER.get(metric, True) else -1
    return min(scored, key=lambda g: sign * g.mean_sd(metric)[0])


# ---------------------------------------------------------------------------------------------------- formatting


def _fmt_val(v) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    return "-" if v is None else str(v)


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
    return fmt.format(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else "-"


def run_table(runs: list[Run], diff: list[str]) -> tuple[list[str], list[list[str]]]:
    header = ["run", "status"] + [label for _k, label, _f in FINAL_METRICS] + [
        "tokens", "train time", "tokens/s", "params", "active"] + diff
    rows = []
    for r in runs:
        mark = "" if r.complete else "*"
        rows.append([r.name + mark, r.status] + [_num(r.final.get(k), f) for k, _l, f in FINAL_METRICS] + [
            _si(r.get(K.TOKENS)), _secs(r.get(K.TRAIN_TIME)), _si(r.get(K.TOKENS_PER_S)),
            _si(r.summary.get("params_total")), _si(r.summary.get("params_active"))] + [
            _fmt_val(r.flat.get(k)) for k in diff])
    return header, rows


def _pm(m, s, fmt) -> str:
    if m is None:
        return "-"
    return f"{fmt.format(m)} ± {fmt.format(s)}" if s is not None else f"{fmt.format(m)} (n=1)"


def group_table(groups: list[Group], metric: str) -> tuple[list[str], list[list[str]]]:
    best = best_group(groups, metric)
    header = ["group", "n", "seeds"] + [f"{label} mean ± sd" for _k, label, _f in FINAL_METRICS] + [
        f"{metric} vs best"]
    rows = []
    for g in groups:
        seeds = ",".join(_fmt_val(r.flat.get("seed")) for r in g.runs)
        if len({_norm(r.flat.get("data_seed")) for r in g.runs}) > 1:
            seeds += " data_seed " + ",".join(_fmt_val(r.flat.get("data_seed")) for r in g.runs)
        if best is None:
            verdict = "-"
        elif g is best:
            verdict = "best" + (f" ({SINGLE_SEED})" if g.n < 2 else "")
        else:
            d = g.mean_sd(metric)[0] - best.mean_sd(metric)[0]
            verdict = f"{d:+.4f}: {noise_verdict(g, best, metric)}"
        rows.append([g.label, str(g.n), seeds] + [_pm(*g.mean_sd(k), f) for k, _l, f in FINAL_METRICS] + [verdict])
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


# ---------------------------------------------------------------------------------------------------- report


@dataclass
class Comparison:
    runs: list
    diff: list
    groups: list
    metric: str
    notes: list

    def text(self) -> str:
        parts = [text_table(*run_table(self.runs, self.diff))]
        if self.groups:
            parts += ["", f"seed groups (complete runs; verdicts on {self.metric}):",
                      text_table(*group_table(self.groups, self.metric)), NOISE_RULE]
        parts += self.notes
        return "\n".join(parts)


def compare(specs: list[str], metric: str = K.VAL_LOSS, only_complete: bool = False) -> Comparison:
    runs = [load_run(p) for p in find_runs(specs)]
    notes = []
    pending = [r for r in runs if not r.complete]
    if pending and only_complete:
        notes.append(f"skipped {len(pending)} run(s) not complete: " + ", ".join(
            f"{r.name} ({r.status})" for r in pending))
        runs = [r for r in runs if r.complete]
    elif pending:
        notes.append(f"* not complete ({len(pending)} run(s)): numbers are the last logged ones, not a final "
                     "evaluation; left out of the seed groups")
    if not runs:
        raise UserError("none of the runs is complete; drop --only_complete to see unfinished runs")
    diff = differing_keys(runs)
    groups = group_runs(runs, diff)
    return Comparison(runs=runs, diff=diff, groups=groups, metric=metric, notes=notes)


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


def write_report(c: Comparison, out_dir: str, specs: list[str]) -> str:
    """Plots + runs.csv + report.md into out_dir; returns the path of report.md."""
    from .plots import plot_curves

    os.makedirs(out_dir, exist_ok=True)
    gindex = {}
    for i, g in enumerate(c.groups):
        for j, r in enumerate(g.runs):
            gindex[r.path] = (i, j)
    series = []
    for n, r in enumerate(c.runs):
        gi, si = gindex.get(r.path, (len(c.groups) + n, 1))
        series.append({"label": r.name + ("" if r.complete else " *"), "rows": r.rows, "color_index": gi,
                       "style_index": si, "tokens_per_step": r.tokens_per_step})
    plots = plot_curves(series, out_dir)

    header, rows = run_table(c.runs, c.diff)
    with open(os.path.join(out_dir, "runs.csv"), "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path"] + header)
        for r, row in zip(c.runs, rows):
            w.writerow([r.path] + row)

    md = ["# Run comparison", "", f"Generated {time.strftime('%Y-%m-%d %H:%M:%S')} from: "
          + ", ".join(f"`{s}`" for s in specs), "",
          f"{len(c.runs)} runs. Final metrics are the final evaluation of each run (plain cross-entropy); "
          "only config keys that differ between runs are shown.", "", "## Runs", "", md_table(header, rows), ""]
    for note in c.notes:
        md += [note, ""]
    if c.groups:
        md += ["## Seed groups", "", f"Runs that differ only by seed/data_seed, verdicts on `{c.metric}` "
               "against the best group.", "", md_table(*group_table(c.groups, c.metric)), "",
               NOISE_RULE[0].upper() + NOISE_RULE[1:] + ".", ""]
    md += ["## Curves", ""]
    if plots:
        for title, name in plots:
            md += [f"### {title}", "", f"![{title}]({name})", ""]
    else:
        md += ["No validation points were logged, so there is nothing to plot.", ""]
    path = os.path.join(out_dir, "report.md")
    with open(path, "w") as fh:
        fh.write("\n".join(md))
    return path


# ---------------------------------------------------------------------------------------------------- CLI


def add_compare_arguments(p: argparse.ArgumentParser) -> None:
    p.epilog = "Runs differing only by seed/data_seed are grouped (mean ± sample sd). " + NOISE_RULE[0].upper() + \
        NOISE_RULE[1:] + "."
    p.add_argument("runs", nargs="+", metavar="RUN",
                   help="run directories, folders holding runs (searched recursively) or glob patterns")
    p.add_argument("--out", default=None, help="report folder (default: ./reports/compare-<timestamp>; an existing "
                   "non-empty folder is refused, never overwritten)")
    p.add_argument("--metric", default=K.VAL_LOSS, choices=[k for k, _l, _f in FINAL_METRICS],
                   help="final metric whose group differences get a noise verdict (default: val/loss)")
    p.add_argument("--only_complete", action="store_true", help="skip runs whose status is not complete")
    p.add_argument("--no_report", action="store_true", help="print the table only; write no report folder")


def run_compare(args: argparse.Namespace) -> int:
    c = compare(args.runs, metric=args.metric, only_complete=args.only_complete)
    print(c.text())
    if not args.no_report:
        out = unique_out_dir(args.out)
        path = write_report(c, out, args.runs)
        print(f"report: {path}")
    return 0
