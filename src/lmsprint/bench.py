"""`lmsprint bench`: time training steps (forward + backward + optimizer) on synthetic tokens.

One config: every model/optim/train flag of `lmsprint train` works (they are generated from the config tree),
plus --warmup/--steps, --compile, --check_sync, --peak_flops/--measure_peak and --json. It prints tokens/s,
MFU (active training FLOPs per token from the model vs the accelerator's dense bf16 peak), peak memory and
compile time. Data loading is excluded: batches are random tokens already on the device.

Suites: `--suite gpu` runs every config of the speed, MoE and attention work (GPT-2/Llama-2 124M at the
hackathon's 32x4x512 tokens per step, eager and compiled, 24 layers, the 4-expert top-2 MoE against a dense
model of equal active FLOPs, local vs causal attention at 4096 tokens, orthogonal Q/K/V, --micro_batch auto,
max-autotune) each in its own subprocess with a time limit, and prints one table with the ratio to the
reference figures (`ANCHORS`); failures and timeouts are rows, never an abort. `--suite cpu` is the same table
at toy sizes. `--out DIR` writes bench.json and bench.md.

Also used by training: `peak_flops(device)` (MFU denominator) and `count_host_syncs()`.
This module imports only torch and the standard library, so `python -m lmsprint bench` runs on a bare GPU box.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import subprocess
import sys
import time
from typing import Optional

from .errors import UserError

# ----------------------------------------------------------------------------------------------------------------
# accelerator peaks

# dense bf16 tensor-core peak (no sparsity), FLOP/s; matched against torch.cuda.get_device_name(), first hit wins
PEAK_BF16 = [
    ("H100 PCIe", 756e12), ("H100 NVL", 835e12), ("H100", 989e12), ("H200", 989e12), ("H800", 989e12),
    ("GH200", 989e12), ("B200", 2250e12), ("B100", 1750e12), ("A100", 312e12), ("A800", 312e12),
    ("L40S", 362e12), ("L40", 181e12), ("L4", 121e12), ("A10G", 70e12), ("A10", 125e12), ("A6000", 155e12),
    ("RTX 6000 Ada", 364e12), ("4090", 165e12), ("3090", 71e12), ("V100", 125e12), ("T4", 65e12),
]


def peak_flops(device=None) -> Optional[float]:
    """Dense bf16 peak FLOP/s of a CUDA device from its name (`PEAK_BF16`); None for CPUs and unknown GPUs."""
    import torch

    dev = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if dev.type != "cuda" or not torch.cuda.is_available():
        return None
    return peak_flops_for_name(torch.cuda.get_device_name(dev))


def peak_flops_for_name(name: str) -> Optional[float]:
    """`PEAK_BF16` lookup: the first key contained in the device name (case-insensitive), else None."""
    for key, value in PEAK_BF16:
        if key.lower() in name.lower():
            return value
    return None


def measure_peak_flops(device, n: int = 8192, reps: int = 20) -> float:
    """Achieved FLOP/s of a large matmul: bf16 on CUDA, float32 (n capped at 2048) on CPU."""
    import torch

    dev = torch.device(device)
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    n = n if dev.type == "cuda" else min(n, 2048)
    a = torch.randn(n, n, device=dev, dtype=dtype)
    b = torch.randn(n, n, device=dev, dtype=dtype)
    for _ in range(3):
        a @ b
    _sync(dev)
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    _sync(dev)
    return 2 * n**3 * reps / (time.perf_counter() - t0)


def _sync(dev) -> None:
    import torch

    if torch.device(dev).type == "cuda":
        torch.cuda.synchronize(dev)


# ----------------------------------------------------------------------------------------------------------------
# host-sync detection

_SYNC_METHODS = ("item", "tolist", "cpu", "numpy", "__bool__", "__int__", "__float__")


# ops whose output shape depends on tensor values: on CUDA they wait for the device (nonzero and friends)
_DATA_DEPENDENT_OPS = ("nonzero", "masked_select", "_unique2", "unique_dim", "unique_consecutive", "_local_scalar_dense",
                       "is_nonzero", "equal")


def _dispatch_counter(counts: dict, exempt):
    """A TorchDispatchMode counting data-dependent ops (and boolean-mask / tensor-repeat indexing)."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    class _Count(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            name = func.overloadpacket.__name__
            hit = name in _DATA_DEPENDENT_OPS
            if name == "index" and len(args) > 1:
                hit = any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in args[1] if i is not None)
            if name == "repeat_interleave" and args and isinstance(args[0], torch.Tensor) and len(args) == 1:
                hit = True  # repeats given as a tensor
            if hit and name != "_local_scalar_dense":  # .item()/bool() are counted by the method wrappers
                first = next((a for a in args if isinstance(a, torch.Tensor)), None)
                if first is None or exempt is None or not exempt(first):
                    counts["aten." + name] = counts.get("aten." + name, 0) + 1
            return func(*args, **kwargs)

    return _Count()


@contextlib.contextmanager
def count_host_syncs(exempt=None, dispatch: bool = True):
    """Count host-device syncs: calls of .item/.tolist/.cpu/.numpy/bool()/int()/float() on tensors, and (with
    `dispatch`, eager code only) data-dependent ops such as nonzero or boolean-mask indexing.

    Yields a dict {what: count}. `exempt(tensor) -> bool` skips tensors that stay on the host on every device
    (e.g. the optimizer's step counters), so the count means on CPU what it would on CUDA."""
    import torch

    counts = {m: 0 for m in _SYNC_METHODS}
    saved = {m: torch.Tensor.__dict__.get(m) for m in _SYNC_METHODS}
    originals = {m: getattr(torch.Tensor, m) for m in _SYNC_METHODS}

    def wrap(name):
        orig = originals[name]

        def counted(self, *a, **k):
            if exempt is None or not exempt(self):
                counts[name] += 1
            return orig(self, *a, **k)

        return counted

    for m in _SYNC_METHODS:
        setattr(torch.Tensor, m, wrap(m))
    mode = _dispatch_counter(counts, exempt) if dispatch else contextlib.nullcontext()
    try:
        with mode:
            yield counts
    finally:
        for m in _SYNC_METHODS:
            if saved[m] is None:
                delattr(torch.Tensor, m)
            else:
                setattr(torch.Tensor, m, saved[m])


@contextlib.contextmanager
def cuda_sync_errors(device, enabled: bool = True):
    """On CUDA, make any synchronizing call raise (torch.cuda.set_sync_debug_mode('error')); no-op elsewhere."""
    import torch

    use = enabled and torch.device(device).type == "cuda" and hasattr(torch.cuda, "set_sync_debug_mode")
    if use:
        prev = torch.cuda.get_sync_debug_mode()
        torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        if use:
            torch.cuda.set_sync_debug_mode(prev)


# ----------------------------------------------------------------------------------------------------------------
# one config


def resolve_device(name: str):
    """--device -> torch.device (the training loop's rules: auto = CUDA when available)."""
    import torch

    from .train.distributed import resolve_device as resolve

    return torch.device(resolve(name))


class BenchStep:
    """A training step on the device: micro-batched fwd+bwd (`accumulate_gradients`), grad clip, optimizer step.

    Does not synchronize with the host (no .item(), no data-dependent Python branches)."""

    def __init__(self, cfg, device, compile_backend: str = "inductor"):
        import torch

        from .model.transformer import Transformer
        from .optim.optimizers import build_optimizer
        from .train.microbatch import LossHead, resolve_dtype, resolve_micro_batch

        self.cfg, self.device = cfg, device
        torch.manual_seed(cfg.train.seed)
        self.model = Transformer(cfg.model).to(device)
        self.model.train()
        self.micro_bs, self.n_micro = resolve_micro_batch(cfg, self.model, device)
        self.dtype = resolve_dtype(cfg.train.dtype, device)
        self.optimizer = build_optimizer(self.model, cfg.optim, device.type)
        head = LossHead(self.model, cfg.train.label_smoothing, cfg.train.loss_chunk)
        if cfg.train.compile:
            kw = {}
            if cfg.train.compile_mode not in (None, "default") and compile_backend == "inductor":
                kw["mode"] = cfg.train.compile_mode
            head = torch.compile(head, backend=compile_backend, **kw)
        self.head = head
        self.rows = self.micro_bs * self.n_micro
        self.tokens_per_step = self.rows * cfg.model.sequence_length

    def batches(self, n: int, seed: int = 0):
        import torch

        g = torch.Generator().manual_seed(seed)
        T, V = self.cfg.model.sequence_length, self.cfg.model.vocab_size
        out = []
        for _ in range(n):
            seq = torch.randint(0, V, (self.rows, T + 1), generator=g).to(self.device)
            out.append((seq[:, :-1], seq[:, 1:]))
        return out

    def __call__(self, x, y) -> dict:

        from .train.microbatch import accumulate_gradients, apply_update

        stats = accumulate_gradients(self.head, x, y, self.n_micro, self.dtype)
        apply_update(self.model, self.optimizer, self.cfg.optim.grad_clip)
        return stats


def host_resident(step: "BenchStep"):
    """Predicate for `count_host_syncs(exempt=...)`: tensors that are on the host by design, not by a sync.

    On CUDA every CPU tensor qualifies; on CPU, the optimizer's per-parameter step counters (kept on the host
    on CUDA too by torch's non-capturable optimizers)."""
    if step.device.type != "cpu":
        return lambda t: t.device.type == "cpu"
    ids = {id(v) for st in step.optimizer.state.values() for k, v in st.items() if k == "step"}
    return lambda t: id(t) in ids


def bench_config(cfg, warmup: int = 3, steps: int = 10, check_sync: bool = False, peak: Optional[float] = None,
                 measure_peak: bool = False, compile_backend: str = "inductor") -> dict:
    """Time `steps` training steps after `warmup` ones; returns a result row (see `ROW_KEYS`)."""
    import torch

    device = resolve_device(cfg.train.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    step = BenchStep(cfg, device, compile_backend)
    model = step.model
    data = step.batches(min(max(warmup + steps, 1), 4))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    first_s = None
    for i in range(warmup):
        step(*data[i % len(data)])
        _sync(device)
        if i == 0:
            first_s = time.perf_counter() - t0
    warm_s = time.perf_counter() - t0
    syncs = None
    with contextlib.ExitStack() as stack:
        if check_sync:
            stack.enter_context(cuda_sync_errors(device))
            counts = stack.enter_context(count_host_syncs(exempt=host_resident(step), dispatch=not cfg.train.compile))
        t1 = time.perf_counter()
        for i in range(steps):
            step(*data[i % len(data)])
        if check_sync:
            syncs = {k: v for k, v in counts.items() if v}
    _sync(device)
    elapsed = time.perf_counter() - t1
    step_s = elapsed / max(steps, 1)
    tps = step.tokens_per_step * steps / elapsed if steps and elapsed > 0 else 0.0
    compile_s = max(0.0, first_s - step_s) if (cfg.train.compile and first_s is not None) else 0.0
    if peak is None:
        peak = measure_peak_flops(device) if measure_peak else peak_flops(device)
    fpt = model.flops_per_token()
    if device.type == "cuda":
        mem = torch.cuda.max_memory_allocated(device)
        dev_name = torch.cuda.get_device_name(device)
    else:
        mem = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
        dev_name = f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    return {
        "ok": True, "device": dev_name, "torch": torch.__version__, "model": cfg.model.model,
        "params_total": model.num_params(), "params_active": model.num_active_params(),
        "flops_per_token": fpt, "tokens_per_step": step.tokens_per_step, "micro_batch": step.micro_bs,
        "n_micro": step.n_micro, "compile": bool(cfg.train.compile), "compile_mode": cfg.train.compile_mode,
        "warmup": warmup, "steps": steps, "step_s": step_s, "tokens_per_s": tps,
        "mfu": (tps * fpt / peak) if peak else None, "peak_flops": peak, "peak_mem_bytes": int(mem),
        "compile_s": compile_s, "warmup_s": warm_s,
        "host_syncs": None if syncs is None else sum(syncs.values()), "host_sync_detail": syncs,
    }


# ----------------------------------------------------------------------------------------------------------------
# suites

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
    import torch

    from .config import SuggestingParser, build_config

    torch._dynamo.reset()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    try:
        parser = SuggestingParser(prog="lmsprint bench")
        add_bench_arguments(parser)
        args = parser.parse_args([*flags, *extra])
        cfg = build_config(_cli_values(args), args.config)
        row = bench_config(cfg, warmup, steps, args.check_sync, args.peak_flops, args.measure_peak,
                           args.compile_backend or "inductor")
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
            json.dump(result, fh, indent=2)
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


def _fmt_si(v: Optional[float], unit: str = "") -> str:
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
        tgt_s = "-" if not tgt else f"{_fmt_si(tgt)} ({'met' if r['tokens_per_s'] >= tgt else 'not met'})"
        comp = f"{r['compile_s']:.1f}" if r.get("compile") else "-"
        lines.append(f"| {r['name']} | {_fmt_si(r['tokens_per_s'])} | {mfu} | {_fmt_si(r['peak_mem_bytes'], 'B')} | "
                     f"{comp} | {ratio} | {tgt_s} |")
    if notes:
        lines.append("")
        lines.extend(f"- {n}" for n in notes)
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------------
# CLI

_SECTIONS = ("run", "model", "optim", "train")


def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    from .config import add_flags

    g = parser.add_argument_group("bench options")
    g.add_argument("--warmup", type=int, default=None, help="untimed steps first (default: 3; compile happens here)")
    g.add_argument("--steps", type=int, default=None, help="timed steps (default: 10)")
    g.add_argument("--check_sync", action="store_true", help="fail on host-device syncs in timed steps "
                   "(CUDA: torch.cuda.set_sync_debug_mode('error')); also counts .item()/.cpu()/bool() calls")
    g.add_argument("--peak_flops", type=float, default=None, help="accelerator peak FLOP/s for MFU "
                   "(default: from the GPU's name, e.g. H100 SXM 989e12)")
    g.add_argument("--measure_peak", action="store_true", help="measure the peak with a large bf16 matmul instead")
    g.add_argument("--compile_backend", default=None, help="torch.compile backend with --compile (default inductor; "
                   "--suite cpu defaults to aot_eager, which traces like inductor but compiles in seconds)")
    g.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's; --suite cpu: 1, "
                   "which is robust on a busy machine)")
    g.add_argument("--json", action="store_true", help="print one machine-readable JSON line")
    g.add_argument("--suite", choices=["gpu", "cpu"], default=None, help="run the benchmark suite (one table)")
    g.add_argument("--only", default="", help="suite: comma-separated substrings of config names to run")
    g.add_argument("--config_timeout", type=float, default=None, help="suite: seconds per config (gpu 150, cpu 60)")
    g.add_argument("--suite_budget", type=float, default=None, help="suite: total seconds; later configs are "
                   "skipped as rows (gpu 450, cpu 110)")
    g.add_argument("--out", default=None, help="suite: folder for bench.json and bench.md")
    g.add_argument("--isolate", default=None, choices=["subprocess", "inprocess"], help="suite: run each config in "
                   "its own subprocess (default on gpu) or in this process after torch._dynamo.reset() (default on cpu)")
    g.add_argument("--config", default=None, help="YAML/TOML config file (as in lmsprint train)")
    add_flags(parser, sections=_SECTIONS)


def _cli_values(args) -> dict:
    from .config import FLAGS

    return {k: v for k, v in vars(args).items() if k in FLAGS}


def run_bench(args) -> int:
    from .config import build_config

    threads = args.threads if args.threads is not None else (1 if args.suite == "cpu" else None)
    if threads is not None:
        if threads < 1:
            raise UserError("--threads must be >= 1")
        import torch

        torch.set_num_threads(threads)

    if args.suite:
        gpu = args.suite == "gpu"
        warmup = args.warmup if args.warmup is not None else (2 if gpu else 1)
        steps = args.steps if args.steps is not None else (6 if gpu else 2)
        only = [o for o in args.only.split(",") if o.strip()]
        backend = args.compile_backend if args.compile_backend or gpu else "aot_eager"
        extra = ["--compile_backend", backend or "inductor"] + (["--threads", str(threads)] if threads else [])
        isolate = (args.isolate or ("subprocess" if gpu else "inprocess")) == "subprocess"
        if args.peak_flops:
            extra += ["--peak_flops", str(args.peak_flops)]
        res = run_suite(args.suite, warmup, steps, args.config_timeout or (150 if gpu else 60),
                        args.suite_budget or (450 if gpu else 110), only, extra, args.out, isolate=isolate)
        print(json.dumps({k: res[k] for k in ("suite", "rows", "notes")}) if args.json else res["table"])
        return 0 if any(r.get("ok") for r in res["rows"]) else 1
    cfg = build_config(_cli_values(args), args.config)
    warmup = 3 if args.warmup is None else args.warmup
    steps = 10 if args.steps is None else args.steps
    if warmup < 0 or steps < 1:
        raise UserError("--warmup must be >= 0 and --steps >= 1")
    row = bench_config(cfg, warmup, steps, args.check_sync, args.peak_flops, args.measure_peak,
                       args.compile_backend or "inductor")
    if args.json:
        print(json.dumps(row))
    else:
        mfu = f"{100 * row['mfu']:.1f}%" if row["mfu"] is not None else "- (unknown peak; pass --peak_flops)"
        print(f"device {row['device']}, torch {row['torch']}, {row['model']} "
              f"{row['params_active'] / 1e6:.1f}M active / {row['params_total'] / 1e6:.1f}M params")
        print(f"{row['tokens_per_step']} tokens/step ({row['micro_batch']} x {row['n_micro']} micro-batches), "
              f"{row['step_s'] * 1e3:.1f} ms/step")
        print(f"tokens/s {row['tokens_per_s']:,.0f} | MFU {mfu} | peak mem {_fmt_si(row['peak_mem_bytes'], 'B')} | "
              f"compile {row['compile_s']:.1f}s" + (f" | host syncs {row['host_syncs']} {row['host_sync_detail'] or ''}"
                                                 if args.check_sync else ""))
    return 0
