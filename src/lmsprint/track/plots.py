"""PNG plots of validation curves for `lmsprint compare`: each val metric with a plot label in keys.VAL_METRICS
(val acc, val bpb) against training time and tokens.

`val_curve(run_rows, tokens_per_step)` pulls (train seconds, tokens, value) points out of metrics.jsonl rows (a row
that lacks tokens/time gets the last value logged before it, or iter * tokens_per_step). `plot_curves(...)`
draws one PNG per (metric, x axis) with matplotlib's object API on the Agg canvas (imported lazily, no pyplot
state, no display needed); runs of one seed group share a colour.
"""

from __future__ import annotations

import os
from typing import Optional, Sequence

from .. import keys as K

# (metric key, axis label) for every val metric with a plot label in keys.VAL_METRICS, x (x key, label, file stem)
METRICS = [(m.key, m.plot_label) for m in K.VAL_METRICS if m.plot_label]
X_AXES = [(K.TRAIN_TIME, "training time (s)", "time"), (K.TOKENS, "training tokens", "tokens")]


def val_curve(rows: Sequence[dict], metric: str, tokens_per_step: Optional[int] = None) -> dict[str, list]:
    """-> {"iter": [...], "time/train_s": [...], "tokens": [...], metric: [...]} for rows that hold `metric`.

    Missing time/tokens in a val row are taken from the latest earlier row that has them (None if none)."""
    out: dict[str, list] = {K.ITER: [], K.TRAIN_TIME: [], K.TOKENS: [], metric: []}
    last_time = last_tokens = None
    for r in rows:
        if isinstance(r.get(K.TRAIN_TIME), (int, float)):
            last_time = r[K.TRAIN_TIME]
        if isinstance(r.get(K.TOKENS), (int, float)):
            last_tokens = r[K.TOKENS]
        v = r.get(metric)
        if not isinstance(v, (int, float)) or isinstance(v, bool):
            continue
        it = r.get(K.ITER)
        tokens = last_tokens
        if tokens is None and tokens_per_step and isinstance(it, int):
            tokens = it * tokens_per_step
        out[K.ITER].append(it)
        out[K.TRAIN_TIME].append(last_time)
        out[K.TOKENS].append(tokens)
        out[metric].append(float(v))
    return out


def plot_curves(series: Sequence[dict], out_dir: str) -> list[tuple[str, str]]:
    """Draw the val curves of several runs.

    `series`: [{"label": run name, "color_index": group index, "rows": metrics rows, "tokens_per_step": int}].
    Writes `val_<metric>_vs_<x>.png` into out_dir and returns [(title, file name)] of the plots written (a plot
    with no data point at all is not written)."""
    from matplotlib.figure import Figure  # lazy: only `compare` needs matplotlib

    written = []
    for metric, mlabel in METRICS:
        curves = [(s, val_curve(s["rows"], metric, s.get("tokens_per_step"))) for s in series]
        for xkey, xlabel, stem in X_AXES:
            fig = Figure(figsize=(7, 4.5), dpi=110)
            ax = fig.add_subplot(1, 1, 1)
            n_lines = 0
            for s, c in curves:
                pts = [(x, y) for x, y in zip(c[xkey], c[metric]) if x is not None]
                if not pts:
                    continue
                xs, ys = zip(*pts)
                ax.plot(xs, ys, marker="o", markersize=3, linewidth=1.4, label=s["label"],
                        color=f"C{s.get('color_index', n_lines) % 10}",
                        linestyle=["-", "--", ":", "-."][s.get("style_index", 0) % 4])
                n_lines += 1
            if not n_lines:
                continue
            title = f"{mlabel} vs {xlabel.split(' (')[0]}"
            ax.set_title(title)
            ax.set_xlabel(xlabel)
            ax.set_ylabel(mlabel)
            ax.grid(True, alpha=0.3)
            if n_lines <= 12:
                ax.legend(fontsize=7)
            fig.tight_layout()
            name = f"{metric.replace('/', '_')}_vs_{stem}.png"
            fig.savefig(os.path.join(out_dir, name))
            written.append((title, name))
    return written
