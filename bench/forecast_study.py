"""Validation of `lmsprint ladder` + `lmsprint forecast`: forecasts from short rungs against actual runs at the target.

    python bench/forecast_study.py OUT_DIR [--target 3200] [--seeds 2] [--parallel 2] [--skip_training]
        [--corpora shakespeare-char,docstrings-char] [--ablations]

For every corpus and arm (base = GPT-2 + AdamW + cos; m0 = Llama-2 + Muon + wsd, the untuned row of
docs/recipes.md; speedrun = the recipe) one `lmsprint ladder` trains rungs 1/16, 1/8, 1/4, 1/2 AND 1 (the target
itself, the "actual") x 2 seeds at a tiny shape on one CPU thread each, iteration budgets (independent of machine
load). Under wsd the rungs branch from the target run (the ladder's stable run), which the ladder tests show is
bit-identical to training each rung on its own. Then `forecast` is asked, per corpus, for the target from the
rungs 1/16..1/2 (4 rungs) and 1/16..1/4 (3 rungs), and each forecast is compared with the mean of the two actual
runs at the target. `--ablations` adds, on the first corpus, ladders (without the target rung) of the speedrun
recipe less one kept ingredient at a time, forecast at the target next to speedrun and m0.

Writes OUT_DIR/study.md (the tables of docs/forecast.md), OUT_DIR/study.json and one plot per corpus and
ladder. Rerunning skips every training that finished (the ladders are resumable), so `--skip_training` or a rerun
only recomputes the forecasts.
"""

import argparse
import json
import os
import statistics as st
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "src"))

from lmsprint import rundir  # noqa: E402
from lmsprint.track.forecast import Forecast, forecast_arm, group_arms, p_best, plot_forecast  # noqa: E402
from lmsprint.track.discover import find_runs, load_run  # noqa: E402

SHAPE = ("--threads 1 --device cpu --n_layer 2 --n_embd 64 --n_head 4 --sequence_length 64 --batch_size 16 "
         "--acc_steps 1 --vocab_size 128 --eval_freq 100000 --eval_tokens 8192 --final_eval full --sample_tokens 0 "
         "--log_interval 50 --progress false --quiet true --ckpt_interval 1h").split()
DOCS = os.path.join(ROOT, "data_cache", "src", "stdlib_docstrings.jsonl")
CORPORA = {"shakespeare-char": ["--dataset", "shakespeare-char"],
           "docstrings-char": ["--dataset", DOCS, "--val_fraction", "0.05", "--tokenizer", "char"]}
ARMS = {"base": ["--config_format", "base"],
        "m0": "--model llama2 --opt muon --scheduler wsd --lr 3e-3 --grad_clip 1".split(),
        "speedrun": ["--config_format", "speedrun"]}
# the speedrun recipe less one kept ingredient (docs/recipes.md): what each one is worth at the target
ABLATIONS = {"speedrun-relu2": ["--config_format", "speedrun", "--mlp", "swiglu"],
             "speedrun-untied": ["--config_format", "speedrun", "--tie_embeddings", "true"],
             "speedrun-lr": ["--config_format", "speedrun", "--lr", "3e-3"]}
FULL_RUNGS = "1/16,1/8,1/4,1/2,1"


def ladder(out, name, target, corpus_flags, arm_flags, seeds, parallel, rungs=FULL_RUNGS):
    cmd = [sys.executable, "-m", "lmsprint", "ladder", "--at", str(target), "--rungs", rungs, "--seeds", str(seeds),
           "--parallel", str(parallel), "--name", name, "--"] + SHAPE + corpus_flags + arm_flags + [
        "--data_dir", os.path.join(ROOT, "data_cache"), "--results_base_folder", out]
    print("$ " + " ".join(cmd[1:]), flush=True)
    rc = subprocess.run(cmd, cwd=ROOT).returncode
    if rc:
        sys.exit(f"ladder {name} failed (exit {rc}); rerun this script to continue it")


def runs_at(folder, budgets):
    return [load_run(p) for p in find_runs([folder])
            if int(rundir.read_config(p).train.iterations) in budgets]


def forecast_of(folders, budgets, target, metric="val/loss"):
    """Forecast of each arm (a ladder folder) at `target` from its runs at `budgets` only."""
    runs = [r for f in folders for r in runs_at(f, budgets)]
    arms = group_arms(runs, metric)
    out = []
    for a in arms:
        x, y, seeds = a.points(metric)
        out.append(forecast_arm(a.label, a.kind, x, y, seeds, target))
    p_best(out)
    return Forecast(metric, "iterations", target, out)


def actual(folder, target, metric="val/loss"):
    vals = [r.final[metric] for r in runs_at(folder, {target}) if r.complete]
    return (st.mean(vals), st.stdev(vals) if len(vals) > 1 else None, len(vals)) if vals else (None, None, 0)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--target", type=int, default=3200)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--parallel", type=int, default=2)
    ap.add_argument("--corpora", default=",".join(CORPORA))
    ap.add_argument("--ablations", action="store_true")
    ap.add_argument("--skip_training", action="store_true")
    a = ap.parse_args()
    out = os.path.abspath(a.out)
    corpora = a.corpora.split(",")
    T = a.target
    if "docstrings-char" in corpora and not os.path.exists(DOCS):
        os.makedirs(os.path.dirname(DOCS), exist_ok=True)
        subprocess.run([sys.executable, os.path.join(ROOT, "bench", "speedrun", "docstrings_corpus.py"), DOCS],
                       check=True)
    if not a.skip_training:
        for c in corpora:
            for arm, flags in ARMS.items():
                ladder(out, f"{c}-{arm}", T, CORPORA[c], flags, a.seeds, a.parallel)
        if a.ablations:
            for arm, flags in ABLATIONS.items():
                ladder(out, f"{corpora[0]}-{arm}", T, CORPORA[corpora[0]], flags, a.seeds, a.parallel,
                       rungs="1/16,1/8,1/4,1/2")

    rungs = {"1/16..1/2": {T // 16, T // 8, T // 4, T // 2}, "1/16..1/4": {T // 16, T // 8, T // 4}}
    rows, record = [], []
    for c in corpora:
        folders = [os.path.join(out, f"{c}-{arm}") for arm in ARMS]
        acts = {f"{c}-{arm}": actual(os.path.join(out, f"{c}-{arm}"), T) for arm in ARMS}
        for lname, budgets in rungs.items():
            fc = forecast_of(folders, budgets, T)
            plot_forecast(fc, os.path.join(out, f"{c}-{lname.replace('/', '_')}.png"))
            order_fc = [f.arm for f in sorted(fc.live, key=lambda f: f.forecast)]
            order_act = [k for k, _ in sorted(((f.arm, acts[f.arm][0]) for f in fc.live), key=lambda t: t[1])]
            for f in fc.arms:
                m, sd, n = acts[f.arm]
                err = None if f.forecast is None or m is None else (f.forecast - m) / m
                inside = None if f.low is None or m is None else f.low <= m <= f.high
                rec = {"corpus": c, "ladder": lname, **f.as_json(), "arm": f.arm[len(c) + 1:], "actual": m, "actual_sd": sd, "actual_n": n,
                       "error": err, "inside": inside, "order_right": order_fc == order_act}
                record.append(rec)
                rows.append(rec)
    if a.ablations:
        c = corpora[0]
        folders = [os.path.join(out, f"{c}-{arm}") for arm in ("m0", "speedrun")] + [
            os.path.join(out, f"{c}-{arm}") for arm in ABLATIONS]
        fc = forecast_of(folders, rungs["1/16..1/2"], T)
        plot_forecast(fc, os.path.join(out, f"{c}-ablations.png"))
        for f in fc.arms:
            m, sd, n = actual(os.path.join(out, f.arm), T)
            record.append({"corpus": c, "ladder": "ablation 1/16..1/2", **f.as_json(), "arm": f.arm[len(c) + 1:],
                           "actual": m,
                           "actual_sd": sd, "actual_n": n})
    with open(os.path.join(out, "study.json"), "w") as fh:
        json.dump(record, fh, indent=2)
    lines = [f"Target {T:,} iterations; forecasts of val/loss (nats/token) from 2 seeds per rung; actual = mean ± sd "
             "of 2 runs at the target.", "",
             "| corpus | rungs | arm | forecast | 80% interval | actual | error | inside | p_best | backtest | "
             "status | order right |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    fmt = lambda v, f="{:.4f}": "-" if v is None else f.format(v)  # noqa: E731
    for r in record:
        act = "-" if r["actual"] is None else (f"{r['actual']:.4f} ± {r['actual_sd']:.4f}" if r["actual_sd"]
                                              is not None else f"{r['actual']:.4f}")
        interval = "-" if r["low"] is None else f"{r['low']:.4f} – {r['high']:.4f}"
        bt = "-" if r["backtest_error"] is None else f"{r['backtest_error']:+.4f}"
        lines.append(f"| {r['corpus']} | {r['ladder']} | {r['arm']}"
                     f" | {fmt(r['forecast'])} | {interval} | {act} | {fmt(r.get('error'), '{:+.2%}')} | "
                     f"{'-' if r.get('inside') is None else ('yes' if r['inside'] else '**no**')} | "
                     f"{fmt(r['p_best'], '{:.2f}')} | {bt} | {r['status']}: {r['message']} | "
                     f"{'-' if r.get('order_right') is None else ('yes' if r['order_right'] else '**no**')} |")
    with open(os.path.join(out, "study.md"), "w") as fh:
        fh.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
