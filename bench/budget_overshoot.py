"""How far time-budgeted runs pass their budget, measured through the real CLI.

    python bench/budget_overshoot.py [--runs 20] [--budget 60s] [--workdir DIR] [-- extra train flags]

Runs `lmsprint train --config_format demo --time_budget BUDGET` (the README demo's shape: GPT-2 BPE, 4 x 128, batch
16 x 128 on Shakespeare) `--runs` times, one after another, with the periodic and final evals and the samples off
(`--eval_freq` past the end, `--final_eval none`, `--sample_tokens 0`: they do not count against the budget, and
leaving them out makes 20 runs take about half an hour). Each run logs every step (`--log_interval 1`), so its step
times are read from metrics.jsonl. For each run it prints the training time (summary.json `time/train_s`), the
overshoot (training time - budget; negative: the run stopped that much before it), the run's last, longest and mean
step, then the worst overshoot, the worst overshoot in mean steps of its run, and the machine's load average before
and after. The budget rule holds when no run passes its budget by more than its last step (training/clock.py: a step
runs only if the last log interval's mean step says it ends within the budget; with `--log_interval 1`, the
last step).
Exit status 0 when it holds for every run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile


def train(base: str, name: str, budget: str, extra: list) -> dict:
    args = ["train", "--config_format", "demo", "--time_budget", budget, "--results_base_folder", base,
            "--exp_name", name, "--eval_freq", "1000000", "--final_eval", "none", "--sample_tokens", "0",
            "--log_interval", "1", "--progress", "false", "--ckpt_interval", "1h", *extra]
    p = subprocess.run([sys.executable, "-m", "lmsprint", *args], capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"run {name} failed ({p.returncode}): {p.stderr.strip().splitlines()[-1:]}")
    run_dir = os.path.join(base, name)
    with open(os.path.join(run_dir, "summary.json")) as fh:
        summary = json.load(fh)
    with open(os.path.join(run_dir, "metrics.jsonl")) as fh:
        times = [0.0] + [r["time/train_s"] for r in map(json.loads, fh) if "train/loss" in r]
    dts = [b - a for a, b in zip(times, times[1:])]
    return {"train_s": summary["time/train_s"], "steps": summary["iterations_done"], "last": dts[-1],
            "longest": max(dts), "mean": sum(dts) / len(dts)}


def main() -> int:
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--budget", default="60s")
    ap.add_argument("--workdir", default=None)
    a = ap.parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    budget_s = float(a.budget.rstrip("s"))
    work = a.workdir or tempfile.mkdtemp(prefix="overshoot_")
    load0 = os.getloadavg()
    print(f"{a.runs} runs of --config_format demo --time_budget {a.budget} in {work}; load average {load0[0]:.1f}")
    print(f"{'run':>4} {'steps':>6} {'train s':>8} {'over s':>8} {'last step s':>12} {'longest step s':>15} "
          f"{'mean step s':>12}")
    worst, worst_steps, held = float("-inf"), float("-inf"), True
    for i in range(a.runs):
        r = train(os.path.join(work, "exps"), f"r{i}", a.budget, extra)
        over = r["train_s"] - budget_s
        worst, worst_steps = max(worst, over), max(worst_steps, over / r["mean"])
        held &= over <= r["last"]
        print(f"{i:>4} {r['steps']:>6} {r['train_s']:>8.2f} {over:>+8.2f} {r['last']:>12.2f} {r['longest']:>15.2f} "
              f"{r['mean']:>12.2f}", flush=True)
    load1 = os.getloadavg()
    print(f"worst overshoot {worst:+.2f} s; worst overshoot in mean steps of its run {worst_steps:+.2f}; "
          f"load average {load0[0]:.1f} before, {load1[0]:.1f} after; rule held: {'yes' if held else 'NO'}")
    return 0 if held else 1


if __name__ == "__main__":
    sys.exit(main())
