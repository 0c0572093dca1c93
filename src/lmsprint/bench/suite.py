"""The bench suite: every config of the speed, MoE and attention work, run one by one into one table.

`--suite gpu`: GPT-2/Llama-2 124M at the hackathon's 32x4x512 tokens per step, eager and compiled, 24 layers, the
4-expert top-2 MoE against a dense model of equal active FLOPs, local vs causal attention at 4096 tokens,
orthogonal Q/K/V, --micro_batch auto, max-autotune; `--suite cpu`: the same set at toy sizes. Most important
first: a time budget that runs out skips the tail.

The first row, `llmb-gpt2-124m-reference`, is the in-run reference: the hackathon llm-baselines step
(`bench/reference.py`: eager, full-logits cross-entropy, its AdamW, bf16 autocast) on the same GPU in the same
run. Every row's `x ref` is its tokens/s over that row's, and the targets are ratios over it (the absolute targets
were set on an H200 over llm-baselines' own 409.6K tokens/s; `TARGETS`), so a result holds on whatever GPU ran it.
The fixed H200 figures in `ANCHORS` stay as context (`x H200 anchor`). Each config runs in its own subprocess with
a time limit (or in this process after a dynamo reset); failures and timeouts are rows, never an abort.
`run_suite(..., out=DIR)` writes DIR/<date>-<device>.json and .md (`results_name`).
"""

from __future__ import annotations

import datetime
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from typing import Optional

import torch

from ..config import SuggestingParser
from ..errors import UserError
from ..files import atomic_write_text, json_text
from .measure import bench_config, config_from_args
from .options import add_measure_arguments

REFERENCE = "llmb-gpt2-124m-reference"
# tokens/s measured once on an H200 (torch 2.11, bf16) with the hackathon's code and defaults: context only
ANCHORS = {
    REFERENCE: 409.6e3,  # llm-baselines GPT-2 124M, eager: what the reference row reproduces
    "gpt2-124m-compiled": 527.8e3,  # llm-baselines with --compile (the step, not lmsprint's)
    "llmb-llama2-124m-reference": 282.7e3,
    "llama2-124m-compiled": 470.6e3,
    "llama2-moe4top2-eager": 102.7e3,  # the seed team's MoE
    "llama2-moe4top2-compiled": 91.9e3,
    "gpt2-24l-eager": 243.3e3,
}
# the targets, set as tokens/s on an H200 where the reference step runs at ANCHORS[REFERENCE]; judged as ratios
TARGETS = {"gpt2-124m-compiled": 690e3, "llama2-124m-compiled": 660e3, "llama2-moe4top2-compiled": 310e3}
MOE_VS_DENSE_TARGET = 1.35  # MoE step time <= 1.35 x the same-active-FLOPs dense model's (both compiled)

_MOE = ["--model", "llama2", "--moe_num_experts", "4", "--moe_num_experts_per_tok", "2"]


def target_ratio(name: str) -> Optional[float]:
    """The target of config `name` as a multiple of the reference row's tokens/s (None: no target)."""
    t = TARGETS.get(name)
    return None if t is None else t / ANCHORS[REFERENCE]


def suite_configs(kind: str) -> list[tuple[str, list[str]]]:
    """(name, flags) of the suite, most important first. `gpu`: real sizes; `cpu`: the same set, toy sizes."""
    if kind == "gpu":
        size: list[str] = []
        long = ["--sequence_length", "4096", "--batch_size", "4", "--acc_steps", "4"]
        big = ["--n_layer", "24"]
        dense2x = ["--multiple_of", "4096"]  # SwiGLU hidden 4096 = 2 x the experts' 2048
        seq_local = ["--attention_window", "512", "--attn_backend", "flex"]
    elif kind == "cpu":
        size = ["--n_layer", "2", "--n_embd", "64", "--n_head", "4", "--sequence_length", "64", "--batch_size", "4",
                "--acc_steps", "2", "--vocab_size", "512", "--multiple_of", "32"]
        long = ["--sequence_length", "256", "--batch_size", "1", "--acc_steps", "2"]
        big = ["--n_layer", "4"]
        dense2x = ["--multiple_of", "384"]  # SwiGLU hidden 384 = 2 x the experts' 192
        seq_local = ["--attention_window", "32", "--attn_backend", "auto"]  # flex has no CPU backward
    else:
        raise UserError(f"--suite '{kind}' is not one of: gpu, cpu")
    c = ["--compile"]
    return [
        (REFERENCE, size + ["--model", "base", "--reference"]),
        ("gpt2-124m-compiled", size + ["--model", "base"] + c),
        ("llama2-124m-compiled", size + ["--model", "llama2"] + c),
        ("llama2-moe4top2-compiled", size + _MOE + c),
        ("llama2-dense2x-compiled", size + ["--model", "llama2"] + dense2x + c),
        ("llama2-causal-4k-sdpa-compiled", size + ["--model", "llama2"] + long + ["--attn_backend", "sdpa"] + c),
        ("llama2-local-4k-flex-compiled", size + ["--model", "llama2"] + long + seq_local +
         ["--attention", "local"] + c),
        ("gpt2-124m-eager", size + ["--model", "base"]),
        ("llama2-124m-eager", size + ["--model", "llama2"]),
        ("llama2-moe4top2-eager", size + _MOE),
        ("llmb-llama2-124m-reference", size + ["--model", "llama2", "--reference"]),
        ("gpt2-24l-eager", size + ["--model", "base"] + big),
        ("gpt2-124m-microauto-eager", size + ["--model", "base", "--micro_batch", "auto"]),
        ("llama2-orthoqkv-compiled", size + ["--model", "llama2", "--orthogonal_qkv"] + c),
        ("gpt2-124m-maxautotune", size + ["--model", "base", "--compile_mode", "max-autotune-no-cudagraphs"] + c),
    ]


def _bench_cmd(flags: list[str], warmup: int, steps: int, extra: list[str]) -> list[str]:
    return [sys.executable, "-m", "lmsprint", "bench", *flags, "--warmup", str(warmup), "--steps", str(steps),
            "--json", *extra]


def bench_output(stdout: str, stderr: str, returncode: Optional[int]) -> dict:
    """The last JSON object a `lmsprint bench --json` process printed, or {"ok": False, "error": its last stderr
    line}."""
    for line in reversed(stdout.splitlines()):
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                continue
    err = [ln for ln in (stderr or "").strip().splitlines() if ln.strip()]
    msg = err[-1] if err else f"exit code {returncode}, no output"
    return {"ok": False, "error": msg[:300]}


def _row_of_output(name: str, stdout: str, stderr: str, returncode: Optional[int], wall: float) -> dict:
    """The row a `lmsprint bench --json` process printed (or its failure row), named and timed."""
    row = bench_output(stdout, stderr, returncode)
    row.update(name=name, wall_s=wall)
    return row


def add_cold_compile(row: dict, cold: Optional[dict]) -> None:
    """Give a suite row the cold compile time `prewarm` measured for its config (`cold`: {name: prewarm row})."""
    c = (cold or {}).get(row["name"])
    if c is None:
        return
    row["cold_compile_s"] = c.get("compile_s") if c.get("ok") else None
    if not c.get("ok"):
        row["prewarm_error"] = c.get("error")


def _run_one_subprocess(name: str, flags: list[str], warmup: int, steps: int, limit_s: float,
                        extra: list[str]) -> dict:
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(_bench_cmd(flags, warmup, steps, extra), capture_output=True, text=True,
                              timeout=limit_s)
    except subprocess.TimeoutExpired:
        return {"name": name, "ok": False, "error": f"timeout after {limit_s:.0f}s", "wall_s": limit_s}
    return _row_of_output(name, proc.stdout, proc.stderr, proc.returncode, time.perf_counter() - t0)


def prewarm(configs: list[tuple[str, list[str]]], jobs: int, limit_s: float, extra: Optional[list[str]] = None,
            progress: bool = True) -> dict:
    """Compile the `--compile` configs `jobs` at a time in parallel subprocesses (one untimed step each), so that the
    timed pass after it compiles from torch's warm caches (FX graph, autotuning) instead of from scratch: compiling
    is CPU work that one config at a time leaves mostly idle. Returns {name: row of that cold run} (its compile_s is
    the cold compile time, under `jobs`-way contention); processes still running after `limit_s` are killed."""
    pending = [(n, f) for n, f in configs if "--compile" in f]
    running: dict = {}
    done: dict = {}
    deadline = time.perf_counter() + limit_s
    with tempfile.TemporaryDirectory(prefix="lmsprint-prewarm-") as tmp:
        while True:
            while pending and len(running) < max(jobs, 1) and time.perf_counter() < deadline:
                name, flags = pending.pop(0)
                if progress:
                    print(f"[bench] compiling {name} (in parallel) ...", file=sys.stderr, flush=True)
                out_f = open(os.path.join(tmp, f"{name}.out"), "w+")
                err_f = open(os.path.join(tmp, f"{name}.err"), "w+")
                proc = subprocess.Popen(_bench_cmd(flags, 1, 1, extra or []), stdout=out_f, stderr=err_f, text=True)
                running[name] = (proc, out_f, err_f, time.perf_counter())
            if time.perf_counter() >= deadline:
                for name, _ in pending:
                    done[name] = {"name": name, "ok": False, "error": "prewarm time limit spent before it started"}
                pending = []
            if not running:
                break
            time.sleep(0.5)
            for name, (proc, out_f, err_f, t0) in list(running.items()):
                if proc.poll() is None and time.perf_counter() < deadline:
                    continue
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
                    done[name] = {"name": name, "ok": False, "error": f"prewarm stopped at its {limit_s:.0f}s limit"}
                else:
                    out_f.seek(0)
                    err_f.seek(0)
                    done[name] = _row_of_output(name, out_f.read(), err_f.read(), proc.returncode,
                                                time.perf_counter() - t0)
                out_f.close()
                err_f.close()
                del running[name]
    return done


def default_prewarm_jobs() -> int:
    """Configs compiled at once by `prewarm` on this machine: one per 40 GB of GPU memory (a 124M config at the
    hackathon's micro-batch peaks near 25 GB), at most 3 and at most a third of the CPU cores; 0 without CUDA."""
    if not torch.cuda.is_available():
        return 0
    gb = torch.cuda.get_device_properties(0).total_memory / 1e9
    return max(1, min(3, int(gb // 40), (os.cpu_count() or 1) // 3))


def _run_one_inprocess(name: str, flags: list[str], warmup: int, steps: int, extra: list[str]) -> dict:
    """Same as the subprocess runner, in this process: dynamo state and CUDA cache are reset first."""
    torch._dynamo.reset()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    try:
        parser = SuggestingParser(prog="lmsprint bench")
        add_measure_arguments(parser)
        args = parser.parse_args([*flags, *extra])
        row = bench_config(config_from_args(args), warmup, steps, args.check_sync, args.peak_flops,
                           args.measure_peak, args.compile_backend or "inductor", args.reference)
    except Exception as e:  # noqa: BLE001 -- a failed config is a row of the table
        msg = (str(e).strip().splitlines() or [""])[0]
        row = {"ok": False, "error": f"{type(e).__name__}: {msg}"[:300]}
    row.update(name=name, wall_s=time.perf_counter() - t0)
    return row


def run_suite(kind: str, warmup: int, steps: int, per_config_s: float, budget_s: float,
              only: Optional[list[str]] = None, extra: Optional[list[str]] = None, out: Optional[str] = None,
              progress: bool = True, isolate: bool = True, prewarm_jobs: int = 0,
              cold: Optional[dict] = None) -> dict:
    """Run the suite's configs (one subprocess each with `isolate`, else in this process after a dynamo reset);
    returns {"suite", "date", "device", "torch", "rows", "notes", "table", "wall_s"} and, with `out`, writes
    OUT/<results_name>.json and .md. `prewarm_jobs` > 0 first compiles the compiled configs that many at a time
    (`prewarm`, within half the budget); `cold` ({name: row}) gives rows of an earlier prewarm instead. Their
    compile times become each row's `cold_compile_s`."""
    configs = select_configs(kind, only)
    rows = []
    t_start = time.perf_counter()
    if prewarm_jobs > 0 and isolate and cold is None:
        cold = prewarm(configs, prewarm_jobs, budget_s / 2, extra, progress)
    for name, flags in configs:
        left = budget_s - (time.perf_counter() - t_start)
        if left < 10:
            rows.append({"name": name, "ok": False, "error": "skipped: suite time budget spent", "flags": " ".join(flags)})
            continue
        if progress:
            print(f"[bench] {name} ...", file=sys.stderr, flush=True)
        if isolate:
            row = _run_one_subprocess(name, flags, warmup, steps, min(per_config_s, left), extra or [])
        else:
            row = _run_one_inprocess(name, flags, warmup, steps, extra or [])
            if row.get("ok") and row["wall_s"] > per_config_s:
                row = {"name": name, "ok": False, "error": f"over the {per_config_s:.0f}s per-config limit "
                       f"({row['wall_s']:.0f}s)", "wall_s": row["wall_s"]}
        row["flags"] = " ".join(flags)
        add_cold_compile(row, cold)
        rows.append(row)
        if out and any(r.get("ok") for r in rows) and len(rows) < len(configs):  # a killed suite keeps its rows
            write_results(_result(kind, rows, isolate, t_start, partial=True), out)
    result = _result(kind, rows, isolate, t_start)
    if out:
        result["files"] = write_results(result, out)
    return result


def _result(kind: str, rows: list[dict], isolate: bool, t_start: float, partial: bool = False) -> dict:
    rows = [dict(r) for r in rows]
    annotate_rows(rows, kind)
    notes = suite_notes(rows, kind)
    if kind == "cpu":
        notes.append("cpu suite: toy sizes (names refer to the GPU configs); not comparable to the GPU anchors")
        if not isolate:
            notes.append("configs ran in one process: peak mem is the process's peak resident set so far")
    if partial:
        notes.append("PARTIAL: the suite was still running when this file was written")
    ok = [r for r in rows if r.get("ok")]
    return {"suite": kind, "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d"),
            "device": ok[0]["device"] if ok else None, "torch": torch.__version__, "partial": partial, "rows": rows,
            "notes": notes, "table": format_table(rows, notes), "wall_s": time.perf_counter() - t_start}


def write_results(result: dict, out: str) -> list[str]:
    """OUT/<results_name>.json and .md of a suite result (atomically); returns their paths."""
    os.makedirs(out, exist_ok=True)
    base = os.path.join(out, results_name(result))
    atomic_write_text(base + ".json", json_text(result, indent=2) + "\n")
    atomic_write_text(base + ".md", f"# lmsprint bench --suite {result['suite']}, {result['date']}, "
                      f"{result['device']}, torch {result['torch']}\n\n{result['table']}\n")
    return [base + ".json", base + ".md"]


def select_configs(kind: str, only: Optional[list[str]] = None) -> list[tuple[str, list[str]]]:
    """The suite's configs whose names contain one of `only` (all without it); UserError when none does."""
    configs = suite_configs(kind)
    if only:
        configs = [(n, f) for n, f in configs if any(o in n for o in only)]
        if not configs:
            raise UserError(f"--only {','.join(only)} matches no config of --suite {kind}; names: "
                            + ", ".join(n for n, _ in suite_configs(kind)))
    return configs


def results_name(result: dict) -> str:
    """`<date>-<device>` for a suite result, e.g. 2026-11-28-nvidia-h200 (cpu: <date>-cpu)."""
    dev = result.get("device") or "unknown"
    if dev.startswith("cpu"):
        slug = "cpu"
    else:
        slug = re.sub(r"[^a-z0-9]+", "-", dev.lower()).strip("-") or "unknown"
    return f"{result['date']}-{slug}"


def annotate_rows(rows: list[dict], kind: str) -> None:
    """Add to each row its ratio to the in-run reference (`x_ref`) and, on the gpu suite, the H200 anchor
    (`anchor`, `x_anchor`) and the target as a ratio to the reference (`target_x_ref`, `target_met`)."""
    ref = next((r for r in rows if r["name"] == REFERENCE and r.get("ok") and r.get("tokens_per_s")), None)
    for r in rows:
        if kind == "gpu":
            if r["name"] in ANCHORS:
                r["anchor"] = ANCHORS[r["name"]]
            if target_ratio(r["name"]) is not None:
                r["target_x_ref"] = target_ratio(r["name"])
        if not r.get("ok"):
            continue
        if ref is not None:
            r["x_ref"] = r["tokens_per_s"] / ref["tokens_per_s"]
            if r.get("target_x_ref") is not None:
                r["target_met"] = r["x_ref"] >= r["target_x_ref"]
        if r.get("anchor"):
            r["x_anchor"] = r["tokens_per_s"] / r["anchor"]


def suite_notes(rows: list[dict], kind: str = "gpu") -> list[str]:
    by = {r["name"]: r for r in rows if r.get("ok")}
    notes = []
    ref = by.get(REFERENCE)
    if ref is None:
        notes.append(f"no reference row ({REFERENCE} failed or was not run): no x ref ratios, no target verdicts")
    elif kind == "gpu":
        notes.append(f"reference row (llm-baselines' step, same GPU, same run): {fmt_si(ref['tokens_per_s'])} "
                     f"tokens/s = {ref['tokens_per_s'] / ANCHORS[REFERENCE]:.2f}x what llm-baselines' own code "
                     f"ran at on an H200 ({fmt_si(ANCHORS[REFERENCE])})")
    moe, dense = by.get("llama2-moe4top2-compiled"), by.get("llama2-dense2x-compiled")
    if moe and dense and moe["tokens_per_s"] > 0:
        r = dense["tokens_per_s"] / moe["tokens_per_s"]
        notes.append(f"MoE step / same-active-FLOPs dense step (compiled): {r:.2f}x "
                     f"(target <= {MOE_VS_DENSE_TARGET}x: {'met' if r <= MOE_VS_DENSE_TARGET else 'not met'})")
    loc, cau = by.get("llama2-local-4k-flex-compiled"), by.get("llama2-causal-4k-sdpa-compiled")
    if loc and cau and cau["tokens_per_s"] > 0:
        r = loc["tokens_per_s"] / cau["tokens_per_s"]
        notes.append(f"local window (flex) / causal (SDPA) at long context: {r:.2f}x tokens/s "
                     f"(target > 1: {'met' if r > 1 else 'not met'})")
    ortho, base = by.get("llama2-orthoqkv-compiled"), by.get("llama2-124m-compiled")
    if ortho and base and ortho["tokens_per_s"] > 0:
        notes.append(f"orthogonal_qkv step time overhead: {base['tokens_per_s'] / ortho['tokens_per_s'] - 1:+.1%}")
    auto = by.get("gpt2-124m-microauto-eager")
    if auto:
        notes.append(f"micro_batch auto chose {auto['micro_batch']} x {auto['n_micro']}")
    devices = sorted({r["device"] for r in by.values()})
    if devices:
        notes.append("device: " + "; ".join(devices) + f"; torch {next(iter(by.values()))['torch']}")
    if any(r.get("anchor") for r in rows):
        notes.append("x H200 anchor: over figures measured once on an H200 (torch 2.11) with the hackathon's code; "
                     "context only -- targets are judged on x ref")
    return notes


def fmt_si(v: Optional[float], unit: str = "") -> str:
    if v is None:
        return "-"
    for div, suf in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(v) >= div:
            return f"{v / div:.1f}{suf}{unit}"
    return f"{v:.1f}{unit}"


def format_table(rows: list[dict], notes: Optional[list[str]] = None) -> str:
    """Markdown table: config, tokens/s, x ref, target (as x ref), MFU, peak memory, compile time, x H200 anchor."""
    head = "| config | tokens/s | x ref | target | MFU | peak mem | compile s | x H200 anchor |"
    lines = [head, "|" + "---|" * 8]
    for r in rows:
        tgt = r.get("target_x_ref")
        if not r.get("ok"):
            tgt_s = f">= {tgt:.2f} (not run)" if tgt else ""
            lines.append(f"| {r['name']} | FAILED: {r.get('error', '?')} | | {tgt_s} | | | | |")
            continue
        mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") is not None else "-"
        x_ref = f"{r['x_ref']:.2f}" if r.get("x_ref") is not None else "-"
        if not tgt:
            tgt_s = "-"
        elif r.get("target_met") is None:
            tgt_s = f">= {tgt:.2f} (no reference)"
        else:
            tgt_s = f">= {tgt:.2f} ({'met' if r['target_met'] else 'not met'})"
        comp = f"{r['compile_s']:.1f}" if r.get("compile") else "-"
        if r.get("compile") and r.get("cold_compile_s") is not None:  # compiled from caches a prewarm filled
            comp += f" (cold {r['cold_compile_s']:.0f})"
        anchor = f"{r['x_anchor']:.2f}" if r.get("x_anchor") is not None else "-"
        lines.append(f"| {r['name']} | {fmt_si(r['tokens_per_s'])} | {x_ref} | {tgt_s} | {mfu} | "
                     f"{fmt_si(r['peak_mem_bytes'], 'B')} | {comp} | {anchor} |")
    if notes:
        lines.append("")
        lines.extend(f"- {n}" for n in notes)
    return "\n".join(lines)
