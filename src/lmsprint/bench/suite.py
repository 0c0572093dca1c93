"""The bench suite: every config of the speed, MoE and attention work, run one by one into one table.

`--suite gpu`: GPT-2/Llama-2 124M at the hackathon's 32x4x512 tokens per step, eager and compiled, 24 layers, the
4-expert top-2 MoE against a dense model of equal active FLOPs, local vs causal attention at 4096 tokens,
orthogonal Q/K/V, --micro_batch auto, max-autotune; `--suite cpu`: the same set at toy sizes. Each config runs
in its own subprocess with a time limit (or in this process after a dynamo reset); failures and timeouts are
rows, never an abort. The table shows each row's ratio to the reference figures in `ANCHORS` -- context for
reading a result (measured once on an H200), not a pass/fail test. `run_suite(..., out=DIR)` writes bench.json
and bench.md.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Optional

import torch

from ..config import SuggestingParser
from ..errors import UserError
from ..files import json_text
from .measure import add_measure_arguments, bench_config, config_from_args

# reference figures: H200, torch 2.11, hackathon defaults (tokens/s) and the targets of the speed work
ANCHORS = {
    "gpt2-124m-eager": {"anchor": 409.6e3},
    "gpt2-124m-compiled": {"anchor": 527.8e3, "target": 690e3},
    "llama2-124m-eager": {"anchor": 282.7e3},
    "llama2-124m-compiled": {"anchor": 470.6e3, "target": 660e3},
    "gpt2-24l-eager": {"anchor": 243.3e3},
    "llama2-moe4top2-eager": {"anchor": 102.7e3},
    "llama2-moe4top2-compiled": {"anchor": 91.9e3, "target": 310e3},
}
MOE_VS_DENSE_TARGET = 1.35  # MoE step time <= 1.35 x the same-active-FLOPs dense model's (both compiled)

_MOE = ["--model", "llama2", "--moe_num_experts", "4", "--moe_num_experts_per_tok", "2"]


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
        ("gpt2-124m-eager", size + ["--model", "base"]),
        ("gpt2-124m-compiled", size + ["--model", "base"] + c),
        ("llama2-124m-eager", size + ["--model", "llama2"]),
        ("llama2-124m-compiled", size + ["--model", "llama2"] + c),
        ("llama2-moe4top2-compiled", size + _MOE + c),
        ("llama2-moe4top2-eager", size + _MOE),
        ("llama2-dense2x-compiled", size + ["--model", "llama2"] + dense2x + c),
        ("gpt2-24l-eager", size + ["--model", "base"] + big),
        ("llama2-causal-4k-sdpa-compiled", size + ["--model", "llama2"] + long + ["--attn_backend", "sdpa"] + c),
        ("llama2-local-4k-flex-compiled", size + ["--model", "llama2"] + long + seq_local +
         ["--attention", "local"] + c),
        ("llama2-orthoqkv-compiled", size + ["--model", "llama2", "--orthogonal_qkv"] + c),
        ("gpt2-124m-microauto-eager", size + ["--model", "base", "--micro_batch", "auto"]),
        ("gpt2-124m-maxautotune", size + ["--model", "base", "--compile_mode", "max-autotune-no-cudagraphs"] + c),
    ]


def _run_one_subprocess(name: str, flags: list[str], warmup: int, steps: int, limit_s: float,
                        extra: list[str]) -> dict:
    cmd = [sys.executable, "-m", "lmsprint", "bench", *flags, "--warmup", str(warmup), "--steps", str(steps),
           "--json", *extra]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=limit_s)
    except subprocess.TimeoutExpired:
        return {"name": name, "ok": False, "error": f"timeout after {limit_s:.0f}s", "wall_s": limit_s}
    wall = time.perf_counter() - t0
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("{"):
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            row.update(name=name, wall_s=wall)
            return row
    err = [ln for ln in (proc.stderr or "").strip().splitlines() if ln.strip()]
    msg = err[-1] if err else f"exit code {proc.returncode}, no output"
    return {"name": name, "ok": False, "error": msg[:300], "wall_s": wall}


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
                           args.measure_peak, args.compile_backend or "inductor")
    except Exception as e:  # noqa: BLE001 -- a failed config is a row of the table
        msg = (str(e).strip().splitlines() or [""])[0]
        row = {"ok": False, "error": f"{type(e).__name__}: {msg}"[:300]}
    row.update(name=name, wall_s=time.perf_counter() - t0)
    return row


def run_suite(kind: str, warmup: int, steps: int, per_config_s: float, budget_s: float,
              only: Optional[list[str]] = None, extra: Optional[list[str]] = None, out: Optional[str] = None,
              progress: bool = True, isolate: bool = True) -> dict:
    """Run the suite's configs (one subprocess each with `isolate`, else in this process after a dynamo reset);
    returns {"suite", "rows", "notes", "table"} and writes bench.json / bench.md under `out`."""
    configs = suite_configs(kind)
    if only:
        configs = [(n, f) for n, f in configs if any(o in n for o in only)]
        if not configs:
            raise UserError(f"--only {','.join(only)} matches no config of --suite {kind}; names: "
                            + ", ".join(n for n, _ in suite_configs(kind)))
    rows = []
    t_start = time.perf_counter()
    for name, flags in configs:
        left = budget_s - (time.perf_counter() - t_start)
        if left < 10:
            rows.append({"name": name, "ok": False, "error": "skipped: suite time budget spent"})
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
        if kind == "gpu":
            row.update({k: v for k, v in ANCHORS.get(name, {}).items()})
        if row.get("ok") and row.get("anchor"):
            row["ratio"] = row["tokens_per_s"] / row["anchor"]
        rows.append(row)
    notes = suite_notes(rows)
    if kind == "cpu":
        notes.append("cpu suite: toy sizes (names refer to the GPU configs); not comparable to the GPU anchors")
        if not isolate:
            notes.append("configs ran in one process: peak mem is the process's peak resident set so far")
    table = format_table(rows, notes)
    result = {"suite": kind, "rows": rows, "notes": notes, "table": table, "wall_s": time.perf_counter() - t_start}
    if out:
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, "bench.json"), "w") as fh:
            fh.write(json_text(result, indent=2))
        with open(os.path.join(out, "bench.md"), "w") as fh:
            fh.write(f"# lmsprint bench --suite {kind}\n\n{table}\n")
    return result


def suite_notes(rows: list[dict]) -> list[str]:
    by = {r["name"]: r for r in rows if r.get("ok")}
    notes = []
    moe, dense = by.get("llama2-moe4top2-compiled"), by.get("llama2-dense2x-compiled")
    if moe and dense and moe["tokens_per_s"] > 0:
        r = dense["tokens_per_s"] / moe["tokens_per_s"]
        notes.append(f"MoE step / same-active-FLOPs dense step (compiled): {r:.2f}x "
                     f"(target <= {MOE_VS_DENSE_TARGET}x: {'met' if r <= MOE_VS_DENSE_TARGET else 'not met'})")
    loc, cau = by.get("llama2-local-4k-flex-compiled"), by.get("llama2-causal-4k-sdpa-compiled")
    if loc and cau and cau["tokens_per_s"] > 0:
        notes.append(f"local window (flex) / causal (SDPA) at long context: {loc['tokens_per_s'] / cau['tokens_per_s']:.2f}x "
                     "tokens/s")
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
        notes.append("anchors (ratio column): H200, torch 2.11, hackathon code; compare like with like")
    return notes


def fmt_si(v: Optional[float], unit: str = "") -> str:
    if v is None:
        return "-"
    for div, suf in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(v) >= div:
            return f"{v / div:.1f}{suf}{unit}"
    return f"{v:.1f}{unit}"


def format_table(rows: list[dict], notes: Optional[list[str]] = None) -> str:
    """Markdown table: config, tokens/s, MFU, peak memory, compile time, ratio to anchor, target."""
    head = "| config | tokens/s | MFU | peak mem | compile s | x anchor | target |"
    lines = [head, "|" + "---|" * 7]
    for r in rows:
        if not r.get("ok"):
            lines.append(f"| {r['name']} | FAILED: {r.get('error', '?')} | | | | | |")
            continue
        mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") is not None else "-"
        ratio = f"{r['ratio']:.2f}" if r.get("ratio") is not None else "-"
        tgt = r.get("target")
        tgt_s = "-" if not tgt else f"{fmt_si(tgt)} ({'met' if r['tokens_per_s'] >= tgt else 'not met'})"
        comp = f"{r['compile_s']:.1f}" if r.get("compile") else "-"
        lines.append(f"| {r['name']} | {fmt_si(r['tokens_per_s'])} | {mfu} | {fmt_si(r['peak_mem_bytes'], 'B')} | "
                     f"{comp} | {ratio} | {tgt_s} |")
    if notes:
        lines.append("")
        lines.extend(f"- {n}" for n in notes)
    return "\n".join(lines)
