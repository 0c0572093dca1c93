"""`lmsprint bench`: what runs one measurement (`bench/measure.py`) or of the suite
(`bench/suite.py`). Every model/optim/train flag of `lmsprint train` works, plus --warmup/--steps, --compile,
--check_sync, --peak_flops/--measure_peak, --reference (llm-baselines' step) and --json; `--suite gpu|cpu` runs
the suite (`--prewarm N` compiles its compiled configs N at a time first, `--prewarm_only` does only that), `--out
DIR` writes DIR/<date>-<device>.json and .md; `--memory [--world_size N]` prints the computed per-GPU memory table
(bench/memory.py). The flags are defined in bench/options.py and cli/arguments.py (`BenchOptions`).
Imports only torch and the standard library beyond lmsprint, so `python -m lmsprint bench` runs on a bare GPU box.
"""

from __future__ import annotations

import sys

import torch

from ..bench.measure import bench_config, config_from_args
from ..bench.memory import format_memory_table, memory_table
from ..bench.suite import default_prewarm_jobs, fmt_si, prewarm, run_suite, select_configs
from ..errors import plural
from ..files import json_text
from ..hw import check_compile_backend


def _run_suite(args, threads) -> int:
    gpu = args.suite == "gpu"
    warmup = args.warmup if args.warmup is not None else (2 if gpu else 1)
    steps = args.steps if args.steps is not None else (6 if gpu else 2)
    only = [o for o in args.only.split(",") if o.strip()]
    backend = args.compile_backend if args.compile_backend or gpu else "aot_eager"
    extra = ["--compile_backend", backend or "inductor"] + (["--threads", str(threads)] if threads else [])
    isolate = (args.isolate or ("subprocess" if gpu else "inprocess")) == "subprocess"
    if args.peak_flops:
        extra += ["--peak_flops", str(args.peak_flops)]
    budget = args.suite_budget or (450 if gpu else 110)
    jobs = args.prewarm if args.prewarm is not None else (default_prewarm_jobs() if gpu else 0)
    if args.prewarm_only:
        cold = prewarm(select_configs(args.suite, only), max(jobs, 1), budget, extra)
        print(json_text(cold) if args.json else "\n".join(
            f"{n}: " + (f"compiled in {r['compile_s']:.1f}s" if r.get("ok") else f"FAILED: {r.get('error')}")
            for n, r in cold.items()))
        return 0 if all(r.get("ok") for r in cold.values()) else 1
    res = run_suite(args.suite, warmup, steps, args.config_timeout or (150 if gpu else 60), budget, only, extra,
                    args.out, isolate=isolate, prewarm_jobs=jobs)
    print(json_text({k: res[k] for k in ("suite", "date", "device", "torch", "rows", "notes")}) if args.json
          else res["table"])
    for path in res.get("files", []):
        print(f"wrote {path}", file=sys.stderr)
    return 0 if any(r.get("ok") for r in res["rows"]) else 1


def _print_row(row: dict, check_sync: bool) -> None:
    mfu = f"{100 * row['mfu']:.1f}%" if row["mfu"] is not None else "- (unknown peak; pass --peak_flops)"
    print(("llm-baselines reference step: " if row["reference"] else "")
          + f"device {row['device']}, torch {row['torch']}, {row['model']} "
          f"{row['params_active'] / 1e6:.1f}M active / {row['params_total'] / 1e6:.1f}M params")
    print(f"{row['tokens_per_step']} tokens/step ({row['micro_batch']} x {plural(row['n_micro'], 'micro-batch')}), "
          f"{row['step_s'] * 1e3:.1f} ms/step")
    print(f"tokens/s {row['tokens_per_s']:,.0f} | MFU {mfu} | peak mem {fmt_si(row['peak_mem_bytes'], 'B')} | "
          f"compile {row['compile_s']:.1f}s" + (f" | host syncs {row['host_syncs']} {row['host_sync_detail'] or ''}"
                                             if check_sync else ""))


def _print_memory(args) -> int:
    cfg = config_from_args(args)
    kw = dict(world_size=args.world_size, batch=cfg.train.batch_size, seq=cfg.model.sequence_length,
              vocab=cfg.model.vocab_size, opt=cfg.optim.opt)
    rows = memory_table(mode="ddp", **kw) + memory_table(mode="fsdp", **kw)
    print(json_text(rows) if args.json else format_memory_table(rows))
    return 0


def run_bench(args) -> int:
    # --threads is the train flag (0 = torch's default); the CPU suite defaults to 1, robust on a busy machine
    threads = config_from_args(args).train.threads if "threads" in vars(args) else (1 if args.suite == "cpu" else 0)
    if threads:
        torch.set_num_threads(threads)
    if args.compile_backend:
        check_compile_backend(args.compile_backend)  # a misspelt backend is one line, not a traceback at compile
    if args.suite:
        return _run_suite(args, threads)
    if args.memory:
        return _print_memory(args)
    cfg = config_from_args(args)
    warmup = 3 if args.warmup is None else args.warmup
    steps = 10 if args.steps is None else args.steps
    row = bench_config(cfg, warmup, steps, args.check_sync, args.peak_flops, args.measure_peak,
                       args.compile_backend or "inductor", args.reference)
    if args.json:
        print(json_text(row))
    else:
        _print_row(row, args.check_sync)
    return 0
