"""PNG plots of validation curves for `lmsprint compare`: each val metric with a plot label in keys.VAL_METRICS
(val loss, val acc, val bpb) against training time and tokens.

`val_curve(run_rows, tokens_per_step)` pulls (step, train seconds, wall seconds, tokens, value) points out of
metrics.jsonl rows. Each eval row carries its own step, tokens and times; a row of an older lmsprint without a time
gets the training time interpolated at its step between the training rows around it (the last one's after the last),
and without tokens iter * tokens_per_step. `plot_curves(...)` draws one PNG per (metric, x axis) with matplotlib's
object API on the Agg canvas (imported lazily, no pyplot state, no display needed).

What the plots promise:
- every run is visible: runs of one seed group share a colour, and each run has its own marker and line style;
  runs drawn first are drawn thicker, so a curve lying exactly under another still shows around it;
- each complete run's final evaluation (the number the tables report) is a star at the end of its curve; the
  legend says what it covered (the full split or the fixed set, and how many tokens: `final_label`);
- seed groups with 2+ runs get a band: the t-based 95% confidence interval of the mean over the runs' k-th eval
  points (`stats.t_interval`; with 2 seeds it is wide, as it should be), named after the group;
- the y axis spans at least MIN_REL_SPAN of the values' magnitude (and MIN_ABS_SPAN), so noise is not zoomed
  into a trend.
"""

from __future__ import annotations

import math
import os
import statistics
from typing import Optional, Sequence

from .. import keys as K
from .stats import t_interval

# (metric key, axis label) for every val metric with a plot label in keys.VAL_METRICS, x (x key, label, file stem)
METRICS = [(m.key, m.plot_label) for m in K.VAL_METRICS if m.plot_label]
X_AXES = [(K.TRAIN_TIME, "training time (s)", "time"), (K.TOKENS, "training tokens", "tokens")]
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*", "<", ">"]
LINESTYLES = ["-", "--", "-.", ":"]
MIN_REL_SPAN = 0.01   # the y axis covers at least 1% of the mean |value| ...
MIN_ABS_SPAN = 0.01   # ... and at least 0.01 (one accuracy point)


def _interpolate(points: list[tuple[int, float]], it) -> Optional[float]:
    """The time at step `it` on the (step, time) points of the training rows: linear between the two around it, the
    last one's after the last, proportional to the step before the first; None without points."""
    if not points or not isinstance(it, (int, float)):
        return None
    if it >= points[-1][0]:
        return points[-1][1]
    prev = (0, 0.0)
    for p in points:
        if p[0] >= it:
            if p[0] == prev[0]:
                return p[1]
            return prev[1] + (p[1] - prev[1]) * (it - prev[0]) / (p[0] - prev[0])
        prev = p
    return points[-1][1]


def val_curve(rows: Sequence[dict], metric: str, tokens_per_step: Optional[int] = None) -> dict[str, list]:
    """-> {"iter": [...], "time/train_s": [...], "time/wall_s": [...], "tokens": [...], metric: [...]} for the rows
    that hold `metric`, each at its own step and time (see the module doc for rows without them)."""
    out: dict[str, list] = {K.ITER: [], K.TRAIN_TIME: [], K.WALL_TIME: [], K.TOKENS: [], metric: []}
    timed = sorted((r[K.ITER], r[K.TRAIN_TIME]) for r in rows if K.TRAIN_LOSS in r  # the training rows
                   and isinstance(r.get(K.ITER), (int, float)) and isinstance(r.get(K.TRAIN_TIME), (int, float))
                   and not isinstance(r.get(K.TRAIN_TIME), bool))
    for r in rows:
        v = r.get(metric)
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
            continue
        it = r.get(K.ITER)
        tokens = r.get(K.TOKENS) if isinstance(r.get(K.TOKENS), (int, float)) else None
        if tokens is None and tokens_per_step and isinstance(it, int):
            tokens = it * tokens_per_step
        t = r.get(K.TRAIN_TIME)
        out[K.ITER].append(it)
        out[K.TRAIN_TIME].append(t if isinstance(t, (int, float)) else _interpolate(timed, it))
        out[K.WALL_TIME].append(r.get(K.WALL_TIME) if isinstance(r.get(K.WALL_TIME), (int, float)) else None)
        out[K.TOKENS].append(tokens)
        out[metric].append(float(v))
    return out


def min_span_limits(lo: float, hi: float) -> tuple[float, float]:
    """(lo, hi) widened around its centre to at least max(MIN_REL_SPAN * |centre|, MIN_ABS_SPAN), plus 5% margins."""
    centre = (lo + hi) / 2
    span = max(hi - lo, MIN_REL_SPAN * abs(centre), MIN_ABS_SPAN)
    half = span / 2 * 1.05
    return centre - half, centre + half


def _band(curves: list[tuple[list, list]]) -> tuple[list, list, list, list]:
    """Mean x, mean y and the 95% confidence interval (low, high) of the mean y over the runs' k-th points (k up to
    the shortest run)."""
    n = min(len(xs) for xs, _ in curves)
    mx, my, lo, hi = [], [], [], []
    for k in range(n):
        ys = [c[1][k] for c in curves]
        mx.append(statistics.fmean(c[0][k] for c in curves))
        my.append(statistics.fmean(ys))
        low, high = t_interval(ys)
        lo.append(low)
        hi.append(high)
    return mx, my, lo, hi


def plot_curves(series: Sequence[dict], out_dir: str, bands: Sequence[dict] = (), final_label: str = "final eval",
                prefix: str = "") -> list[tuple[str, str]]:
    """Draw the val curves of several runs.

    `series`: [{"label", "color_index" (group index), "style_index", "rows" (metrics rows), "tokens_per_step",
    "path", "final" ({metric: value} of the final full-split evaluation), "final_x" ({x key: value})}].
    `bands`: [{"label", "color_index", "paths" (the group's runs)}] for seed groups of 2+ runs.
    `final_label`: the legend entry of the final-eval stars (what they covered).
    Writes `<prefix>val_<metric>_vs_<x>.png` into out_dir and returns [(title, file name)] of the plots written (a
    plot with no data point at all is not written)."""
    from matplotlib.figure import Figure  # lazy: only `compare` needs matplotlib
    from matplotlib.lines import Line2D  # lazy: as above

    written = []
    n_series = len(series)
    for metric, mlabel in METRICS:
        curves = [(s, val_curve(s["rows"], metric, s.get("tokens_per_step"))) for s in series]
        for xkey, xlabel, stem in X_AXES:
            fig = Figure(figsize=(7.5, 4.8), dpi=110)
            ax = fig.add_subplot(1, 1, 1)
            ys_all: list[float] = []
            n_lines, n_final = 0, 0
            by_path = {}
            for i, (s, c) in enumerate(curves):
                pts = [(x, y) for x, y in zip(c[xkey], c[metric]) if x is not None]
                color = f"C{s.get('color_index', i) % 10}"
                fx, fy = (s.get("final_x") or {}).get(xkey), (s.get("final") or {}).get(metric)
                has_final = isinstance(fx, (int, float)) and isinstance(fy, (int, float)) and math.isfinite(fy)
                if not pts and not has_final:
                    continue
                # first drawn = thickest and lowest: a curve hidden exactly under a later one still shows around it
                rank = (n_series - i) / max(n_series, 1)  # 1 for the first run drawn, -> 0 for the last
                width = 1.0 + 3.5 * rank
                if pts:
                    xs, ys = zip(*pts)
                    by_path[s.get("path")] = (list(xs), list(ys))
                    ax.plot(xs, ys, marker=MARKERS[i % len(MARKERS)], markersize=4 + 6 * rank,
                            markerfacecolor="none", linewidth=width, alpha=0.75, label=s["label"], color=color,
                            linestyle=LINESTYLES[s.get("style_index", i) % len(LINESTYLES)], zorder=2 + i)
                    ys_all += ys
                    n_lines += 1
                if has_final:
                    ax.plot([fx], [fy], marker="*", markersize=9 + 9 * rank, color=color, markeredgecolor="black",
                            linestyle="none", zorder=50 + i)
                    ys_all.append(fy)
                    n_final += 1
            if not n_lines and not n_final:
                fig.clear()
                continue
            for b in bands:
                members = [by_path[p] for p in b["paths"] if p in by_path]
                if len(members) < 2 or min(len(m[0]) for m in members) == 0:
                    continue
                mx, my, lo, hi = _band(members)
                color = f"C{b['color_index'] % 10}"
                ax.fill_between(mx, lo, hi, color=color, alpha=0.18, linewidth=0, zorder=1)
                ax.plot(mx, my, color=color, linewidth=1.0, alpha=0.6, zorder=1.5, label=b["label"])
                # the axis fits the curves, not the band: a band wider than the plot says "very uncertain" as is
            ax.set_ylim(*min_span_limits(min(ys_all), max(ys_all)))
            title = f"{mlabel} vs {xlabel.split(' (')[0]}"
            ax.set_title(title)
            ax.set_xlabel(xlabel)
            ax.set_ylabel(mlabel)
            ax.grid(True, alpha=0.3)
            handles, labels = ax.get_legend_handles_labels()
            if n_final:
                handles.append(Line2D([], [], marker="*", markersize=10, color="grey", markeredgecolor="black",
                                      linestyle="none"))
                labels.append(final_label)
            if len(labels) <= 16:
                ax.legend(handles, labels, fontsize=7)
            fig.tight_layout()
            name = f"{prefix}{metric.replace('/', '_')}_vs_{stem}.png"
            fig.savefig(os.path.join(out_dir, name))
            written.append((title, name))
    return written
