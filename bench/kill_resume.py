"""Random preemption against exact resume, measured through the real CLI.

    python bench/kill_resume.py --kills 20 --terms 10 [--iterations 200] [--workdir DIR] [--seed 0]

Prepares `shakespeare-char` once, trains one uninterrupted tiny CPU run (the reference), then for each trial starts
the same run, waits for its first checkpoint, sleeps a random fraction of the reference's training + eval time,
sends SIGKILL (`--kills` trials) or SIGTERM (`--terms` trials), resumes it with `lmsprint train --resume` and compares
the finished run with the reference: every model and optimizer tensor with `torch.equal`, and the metrics.jsonl rows
without their timing fields. A trial whose run finished before the signal landed is counted as such (not resumed).
Prints one line per trial and a summary; exit status 0 when every resumed trial is exact.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time

import torch

TIMING = ("time/", "perf/")


def env():
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")


def lmsprint(*args, cwd):
    return subprocess.run([sys.executable, "-m", "lmsprint", *map(str, args)], cwd=cwd, env=env(),
                          capture_output=True, text=True)


def flags(data, base, name, iterations):
    return ["train", "--dataset", data, "--results_base_folder", base, "--exp_name", name, "--device", "cpu",
            "--n_layer", 1, "--n_embd", 32, "--n_head", 2, "--vocab_size", 128, "--sequence_length", 32,
            "--batch_size", 4, "--acc_steps", 2, "--iterations", iterations, "--eval_freq", 25, "--log_interval", 3,
            "--eval_tokens", 256, "--final_eval", "fixed", "--sample_tokens", 4, "--dropout", 0.1,
            "--ckpt_interval", "1s", "--progress", "false"]


def rows(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as fh:
        return [{k: v for k, v in json.loads(line).items() if not k.startswith(TIMING)} for line in fh]


def load(run_dir):
    return torch.load(os.path.join(run_dir, "checkpoints", "latest.pt"), weights_only=True)


def equal(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(equal(x, y) for x, y in zip(a, b))
    return a == b


def trial(kind, i, data, base, iterations, delay, ref):
    name = f"{kind}{i}"
    run_dir = os.path.join(base, name)
    ckpt = os.path.join(run_dir, "checkpoints", "latest.pt")
    proc = subprocess.Popen([sys.executable, "-m", "lmsprint", *map(str, flags(data, base, name, iterations))],
                            cwd=base, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while not os.path.exists(ckpt) and proc.poll() is None:
        time.sleep(0.02)
    time.sleep(delay)
    if proc.poll() is not None:
        return {"trial": name, "result": "finished before the signal"}
    proc.send_signal(signal.SIGKILL if kind == "kill" else signal.SIGTERM)
    rc = proc.wait()
    step = int(load(run_dir)["step"])
    with open(os.path.join(run_dir, "summary.json")) as fh:
        if json.load(fh).get("status") == "complete":  # the signal landed after the run's end
            return {"trial": name, "result": "finished before the signal"}
    p = lmsprint("train", "--resume", run_dir, "--results_base_folder", base, cwd=base)
    if p.returncode != 0:
        return {"trial": name, "result": "resume failed", "rc": rc, "step": step, "error": p.stderr[-300:]}
    a, b = load(run_dir), ref["state"]
    exact = {"model": equal(a["model"], b["model"]), "optimizer": equal(a["optimizer"], b["optimizer"]),
             "metrics": rows(run_dir) == ref["rows"]}
    return {"trial": name, "result": "exact" if all(exact.values()) else "DIFFERS", "exit": rc, "stopped_at": step,
            **{k: v for k, v in exact.items() if not v}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--terms", type=int, default=10)
    ap.add_argument("--iterations", type=int, default=200)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    work = os.path.abspath(args.workdir or tempfile.mkdtemp(prefix="kill_resume_"))
    os.makedirs(work, exist_ok=True)
    rng = random.Random(args.seed)
    p = lmsprint("prepare", "--dataset", "shakespeare-char", "--data_dir", os.path.join(work, "data"), cwd=work)
    if p.returncode:
        print(p.stderr[-2000:], file=sys.stderr)
        return 1
    data = next(os.path.join(work, "data", d) for d in os.listdir(os.path.join(work, "data"))
                if os.path.isfile(os.path.join(work, "data", d, "manifest.json")))
    base = os.path.join(work, "exps")
    t0 = time.time()
    p = lmsprint(*flags(data, base, "reference", args.iterations), cwd=work)
    wall = time.time() - t0
    if p.returncode:
        print(p.stderr[-2000:], file=sys.stderr)
        return 1
    ref_dir = os.path.join(base, "reference")
    ref = {"state": load(ref_dir), "rows": rows(ref_dir)}
    with open(os.path.join(ref_dir, "summary.json")) as fh:
        s = json.load(fh)
    span = sum(v for k, v in s.items() if k.startswith("time/") and isinstance(v, (int, float)))  # train + eval
    print(f"reference: {args.iterations} steps in {wall:.1f}s wall, {span:.1f}s training + eval ({work})", flush=True)
    results = []
    kinds = ["kill"] * args.kills + ["term"] * args.terms
    for i, kind in enumerate(kinds):
        delay = rng.uniform(0.0, 0.6 * span)  # after the first checkpoint, somewhere in the training
        r = trial(kind, i, data, base, args.iterations, delay, ref)
        results.append(r)
        print(json.dumps(r), flush=True)
    for kind in ("kill", "term"):
        mine = [r for r in results if r["trial"].startswith(kind)]
        print(f"{kind}: {len(mine)} trials, {sum(r['result'] == 'exact' for r in mine)} exact, "
              f"{sum(r['result'] == 'DIFFERS' for r in mine)} differ, "
              f"{sum(r['result'] == 'resume failed' for r in mine)} resume failed, "
              f"{sum(r['result'].startswith('finished') for r in mine)} finished before the signal")
    return 0 if all(r["result"] in ("exact", "finished before the signal") for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
