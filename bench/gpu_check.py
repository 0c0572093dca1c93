#!/usr/bin/env python3
"""The one script to start every stretch of GPU time with; sized to end within --budget (560 s; not yet timed on a GPU).

    python3 bench/gpu_check.py [--out bench/results] [--budget 560] [--tests_budget 180] [--only NAMES]

1. Runs lmsprint from this checkout on the GPU box's own torch (>= 2.11): PYTHONPATH=src, nothing is installed or
   downloaded. Needs torch with CUDA, numpy, tiktoken, pyyaml, safetensors, tqdm and pytest (pytest-xdist is used
   when present), all on stock GPU images.
2. The CUDA tests, `pytest -m cuda tests/test_cuda.py` (they skip on machines without a GPU), within
   --tests_budget seconds, and at the same time `lmsprint bench --suite gpu --prewarm_only`: the suite's compiled
   configs compiled a few at a time, which fills torch's compile caches (compiling is CPU work; nothing is timed
   while the tests run).
3. `lmsprint bench --suite gpu` in the rest of --budget, each config compiled from the warm caches: the
   llm-baselines reference row first, every row's ratio to it, the targets judged on those ratios
   (`lmsprint/bench/suite.py`). Each row also gets its cold compile time from step 2 (`cold_compile_s`).
4. Prints one report (each CUDA test's outcome, then the suite's table) and writes OUT/<date>-<gpu>.json and .md:
   device, torch, date, the tests, and one row per config (name, tokens_per_s, mfu, peak_mem_bytes, compile_s,
   x_ref, ...). Commit them under bench/results and summarise them in the README's speed section.

`--dry_run` runs the same plumbing without a GPU (the CUDA tests skip, `--suite cpu` at toy sizes) to check the
script itself. Exit status: 0 when every test passed and every suite row ran, 1 otherwise.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "src"))  # this checkout's lmsprint, on the box's own torch

from lmsprint.bench.suite import add_cold_compile, bench_output, format_table, results_name  # noqa: E402
from lmsprint.files import atomic_write_text, json_text  # noqa: E402

OUTCOME = re.compile(r"(?:(tests/\S+::\S+) (PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS))"
                     r"|(?:(PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS) (tests/\S+::\S+))")
SHORT = re.compile(r"^(FAILED|ERROR) (tests/\S+::\S+)(?: - (.*))?$")


def environment() -> dict:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (os.path.join(ROOT, "src"), env.get("PYTHONPATH")) if p)
    return env


def device_facts(env: dict) -> dict:
    code = ("import json, platform, torch\n"
            "c = torch.cuda.is_available()\n"
            "print(json.dumps({'python': platform.python_version(), 'torch': torch.__version__, 'cuda': c,\n"
            "  'device': torch.cuda.get_device_name() if c else 'cpu', 'cuda_version': torch.version.cuda}))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    if out.returncode:
        raise SystemExit(f"gpu_check: torch does not import here: {out.stderr.strip().splitlines()[-1:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def start_tests(env: dict, log_path: str):
    """pytest -m cuda on tests/test_cuda.py, started in the background; returns (process, log file, start time)."""
    cmd = [sys.executable, "-m", "pytest", "-m", "cuda", "tests/test_cuda.py", "-v", "-rfE", "-p", "no:cacheprovider",
           "--color=no"]
    if importlib.util.find_spec("xdist") is not None:  # compiles run in parallel; the GPU has room for them
        cmd += ["-n", "4"]
    log = open(log_path, "w+")
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, text=True), log, \
        time.perf_counter(), cmd


def finish_tests(started, deadline: float) -> dict:
    """Wait for the tests until `deadline` (perf_counter), then read each test's outcome from pytest's verbose lines
    (also when the time limit stopped it half way)."""
    proc, log, t0, cmd = started
    timed_out = False
    try:
        proc.wait(timeout=max(deadline - time.perf_counter(), 1))
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        timed_out = True
    log.seek(0)
    text = log.read()
    log.close()
    outcomes: dict = {}
    for m in OUTCOME.finditer(text):
        name, res = (m.group(1), m.group(2)) if m.group(1) else (m.group(4), m.group(3))
        outcomes[name.split("::", 1)[1]] = {"outcome": res.lower(), "message": ""}
    for line in text.splitlines():
        m = SHORT.match(line.strip())
        if m:
            key = m.group(2).split("::", 1)[1]
            outcomes.setdefault(key, {"outcome": m.group(1).lower()})["message"] = (m.group(3) or "")[:240]
    counts: dict = {}
    for v in outcomes.values():
        counts[v["outcome"]] = counts.get(v["outcome"], 0) + 1
    return {"command": " ".join(cmd[1:]), "returncode": None if timed_out else proc.returncode,
            "timed_out": timed_out, "seconds": round(time.perf_counter() - t0, 1), "counts": counts,
            "tests": [{"name": k, **v} for k, v in outcomes.items()]}


def bench_json(env: dict, args: list, timeout_s: float):
    """Run `lmsprint bench ... --json`; its last JSON line, or {"error": ...}."""
    cmd = [sys.executable, "-m", "lmsprint", "bench", *args, "--json"]
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {"error": f"`lmsprint bench {' '.join(args)}` did not end within {timeout_s:.0f}s"}
    return bench_output(proc.stdout, proc.stderr, proc.returncode)


def tests_table(t: dict) -> str:
    counts = ", ".join(f"{n} {k}" for k, n in sorted(t["counts"].items())) or "no test reported"
    head = f"CUDA tests ({t['command']}): {counts} in {t['seconds']:.0f}s" + (
        " -- STOPPED at the time limit; tests not listed did not run" if t["timed_out"] else "")
    lines = [head, "", "| test | outcome | message |", "|---|---|---|"]
    lines += [f"| {x['name']} | {x['outcome']} | {x.get('message', '').replace('|', '/')} |" for x in t["tests"]]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "results"), help="folder for <date>-<gpu>.json/.md")
    ap.add_argument("--budget", type=float, default=560, help="seconds in all (default 560)")
    ap.add_argument("--tests_budget", type=float, default=180, help="seconds for the CUDA tests and, meanwhile, "
                    "the suite's compiles (default 180)")
    ap.add_argument("--only", default="", help="suite configs to run (comma-separated substrings of names)")
    ap.add_argument("--skip_tests", action="store_true", help="run the suite only")
    ap.add_argument("--dry_run", action="store_true", help="no GPU needed: the plumbing on CPU, --suite cpu")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    env = environment()
    facts = device_facts(env)
    print(f"gpu_check: {facts['device']}, torch {facts['torch']} (CUDA {facts['cuda_version']}), "
          f"python {facts['python']}", flush=True)
    if not facts["cuda"] and not args.dry_run:
        print("gpu_check: no CUDA device visible (use --dry_run to check the script on CPU)", file=sys.stderr)
        return 2
    os.makedirs(args.out, exist_ok=True)
    kind = "cpu" if args.dry_run else "gpu"
    only = args.only or ("llmb-gpt2,gpt2-124m-eager,dense2x" if args.dry_run else "")
    sel = ["--only", only] if only else []
    started = None
    if not args.skip_tests:
        print(f"gpu_check: CUDA tests (at most {args.tests_budget:.0f}s), and the suite's compiles meanwhile ...",
              flush=True)
        started = start_tests(env, os.path.join(args.out, "cuda-tests.log"))
    warm_s = max(args.tests_budget, 60)
    cold = bench_json(env, ["--suite", kind, "--prewarm_only", "--suite_budget", str(int(warm_s)), *sel], warm_s + 60)
    tests = finish_tests(started, t0 + args.tests_budget) if started else None
    if tests is not None:  # kept even if the suite is stopped before it ends
        atomic_write_text(os.path.join(args.out, "cuda-tests.json"), json_text(tests, indent=2) + "\n")
        print(tests_table(tests), flush=True)
    left = args.budget - (time.perf_counter() - t0) - 20
    print(f"gpu_check: bench --suite {kind} (at most {left:.0f}s) ...", flush=True)
    suite = bench_json(env, ["--suite", kind, "--prewarm", "0", "--suite_budget", str(int(max(left, 30))),
                             "--out", args.out, *sel], max(left, 30) + 90)
    for row in suite.get("rows", []):
        add_cold_compile(row, None if "error" in cold else cold)
    result = {"date": suite.get("date"), "device": facts["device"], "torch": facts["torch"],
              "cuda": facts["cuda_version"], "python": facts["python"], "suite": suite.get("suite", kind),
              "cuda_tests": tests, "rows": suite.get("rows", []), "notes": suite.get("notes", []),
              "suite_error": suite.get("error"), "prewarm_error": cold.get("error"), "wall_s": round(time.perf_counter() - t0, 1)}
    result["date"] = result["date"] or time.strftime("%Y-%m-%d", time.gmtime())
    report = []
    if tests is not None:
        report.append(tests_table(tests))
    report.append(f"Suite (lmsprint bench --suite {kind}):\n\n"
                  + (format_table(result["rows"], result["notes"]) if result["rows"] else f"FAILED: {suite['error']}"))
    text = "\n\n".join(report)
    base = os.path.join(args.out, results_name(result))
    atomic_write_text(base + ".json", json_text(result, indent=2) + "\n")
    atomic_write_text(base + ".md", f"# GPU check, {result['date']}, {facts['device']}, torch {facts['torch']}\n\n"
                      f"{text}\n")
    print("\n" + text + f"\n\nwrote {base}.json and .md in {result['wall_s']:.0f}s", flush=True)
    tests_ok = tests is None or (not tests["timed_out"] and tests["returncode"] == 0)
    return 0 if tests_ok and result["rows"] and all(r.get("ok") for r in result["rows"]) else 1


if __name__ == "__main__":
    sys.exit(main())
