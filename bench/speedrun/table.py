"""Ablation rows of one race batch: arm, seeds, mean ± sd of val bpb and acc, tokens/s, steps, and the verdict of
the screen docs/recipes.md's batch tables were made with (|mean_a - mean_b| < sd_a + sd_b = within noise) against
a reference arm.

    python bench/speedrun/table.py BATCH_DIR [--ref ARM] [--order a,b,c]

This script adds the per-arm tokens/s and steps columns and the `prev` chain of an ablation ladder. The verdicts
that count are `lmsprint compare BATCH_DIR --metric val/bpb --reference ARM`'s: Welch's t-test (or the paired test)
with Holm's correction; docs/recipes.md lists them for every batch.
"""

import argparse
import json
import os
import re
import statistics as st


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("batch_dir")
    ap.add_argument("--ref", default=None, help="arm every other arm is judged against, or 'prev': the arm listed "
                    "before it (default: none)")
    ap.add_argument("--order", default=None)
    a = ap.parse_args()
    arms: dict = {}
    for d in sorted(os.listdir(a.batch_dir)):
        p = os.path.join(a.batch_dir, d, "summary.json")
        m = re.fullmatch(r"(.+)_s(\d+)(-\d+)?", d)  # -N: the name was taken (a killed run)
        if not (m and os.path.exists(p)):
            continue
        s = json.load(open(p))
        if s.get("status") != "complete":
            continue
        arms.setdefault(m.group(1), []).append(s)
    order = a.order.split(",") if a.order else list(arms)

    def ms(xs):
        return st.mean(xs), (st.stdev(xs) if len(xs) > 1 else float("nan"))

    stats = {k: (ms([r["final"]["val/bpb"] for r in v]), ms([r["final"]["val/acc"] for r in v]),
                 st.mean(r["perf/tokens_per_s"] for r in v), st.mean(r["iterations_done"] for r in v), len(v))
             for k, v in arms.items()}
    print(f"| arm | seeds | val bpb mean ± sd | val acc mean ± sd | tokens/s | steps | vs {a.ref or '-'} |")
    print("|---|---|---|---|---|---|---|")
    for i, k in enumerate(order):
        (b, bsd), (acc, accsd), tps, steps, n = stats[k]
        verdict = ""
        ref = (order[i - 1] if i else None) if a.ref == "prev" else a.ref
        if ref and k != ref:
            (rb, rsd) = stats[ref][0]
            d = b - rb
            rel = 100 * d / rb
            verdict = (f"vs {ref}: " if a.ref == "prev" else "") + f"{d:+.4f} ({rel:+.1f}%): " + ("within noise" if abs(d) < bsd + rsd else
                                                     ("better" if d < 0 else "worse") + ", beyond noise")
        print(f"| {k} | {n} | {b:.4f} ± {bsd:.4f} | {acc:.4f} ± {accsd:.4f} | {tps:,.0f} | {steps:.0f} | {verdict} |")


if __name__ == "__main__":
    main()
