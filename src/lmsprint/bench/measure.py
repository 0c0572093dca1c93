"""One bench config: time `steps` training steps after `warmup` ones on random tokens already on the device.

The step is the one training runs (`build_train_step`: micro-batched fwd+bwd, grad clip, optimizer of --opt,
--compile), so every model/optim/train flag of `lmsprint train` applies (`options.add_measure_arguments`). Data
loading is excluded. The result row (`bench_config`) has tokens/s, MFU (active training FLOPs per token from the
model vs the accelerator's dense bf16 peak, `hw.mfu`), peak memory, compile time and, with `check_sync`, the
host-device syncs counted in the timed steps (on CUDA any sync raises). `--reference` times llm-baselines' step
instead (`bench/reference.py`): the suite's in-run reference row.
"""

from __future__ import annotations

import argparse
import contextlib
import platform
import resource
import sys
import time
from typing import Optional

import torch

from ..config import FLAGS, build_config
from ..hw import (count_host_syncs, cuda_sync_errors, enable_tf32, host_resident, measure_peak_flops, mfu, peak_flops,
                  resolve_device, sync)
from ..model.transformer import Transformer
from ..training.checks import check_run
from ..training.step import TrainStep, build_train_step
from .reference import ReferenceStep

def config_from_args(args: argparse.Namespace):
    """The RunConfig of the parsed flags (defaults < preset < --config file < flags)."""
    return build_config({k: v for k, v in vars(args).items() if k in FLAGS}, args.config)


def synthetic_batches(step: "TrainStep | ReferenceStep", n: int, seed: int = 0) -> list:
    """`n` batches (x, y) of uniformly random tokens for one optimizer step each, already on the device."""
    g = torch.Generator().manual_seed(seed)
    T, V = step.cfg.model.sequence_length, step.cfg.model.vocab_size
    out = []
    for _ in range(n):
        seq = torch.randint(0, V, (step.rows, T + 1), generator=g).to(step.device)
        out.append((seq[:, :-1], seq[:, 1:]))
    return out


def build_bench_step(cfg, device, compile_backend: str = "inductor", reference: bool = False):
    """The training step of `cfg` on `device` (a TrainStep; with `reference`, llm-baselines' step), its model
    seeded like training's."""
    torch.manual_seed(cfg.train.seed)
    model = Transformer(cfg.model).to(device)
    model.train()
    if reference:
        return ReferenceStep(cfg, model, device, compile_backend)
    return build_train_step(cfg, model, device, compile_backend=compile_backend)


def bench_config(cfg, warmup: int = 3, steps: int = 10, check_sync: bool = False, peak: Optional[float] = None,
                 measure_peak: bool = False, compile_backend: str = "inductor", reference: bool = False) -> dict:
    """Time `steps` training steps after `warmup` ones (`reference`: llm-baselines' step, `ReferenceStep`);
    returns a result row."""
    check_run(cfg)
    device = torch.device(resolve_device(cfg.train.device))
    if device.type == "cuda":
        enable_tf32()
    step = build_bench_step(cfg, device, compile_backend, reference)
    model = step.model
    data = synthetic_batches(step, min(max(warmup + steps, 1), 4))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    first_s = None
    for i in range(warmup):
        step(*data[i % len(data)])
        sync(device)
        if i == 0:
            first_s = time.perf_counter() - t0
    warm_s = time.perf_counter() - t0
    syncs = None
    with contextlib.ExitStack() as stack:
        if check_sync:
            stack.enter_context(cuda_sync_errors(device))
            counts = stack.enter_context(count_host_syncs(exempt=host_resident(device, step.optimizer),
                                                          dispatch=not cfg.train.compile))
        t1 = time.perf_counter()
        for i in range(steps):
            step(*data[i % len(data)])
        if check_sync:
            syncs = {k: v for k, v in counts.items() if v}
    sync(device)
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
        "ok": True, "reference": reference, "device": dev_name, "torch": torch.__version__, "model": cfg.model.model,
        "params_total": model.num_params(), "params_active": model.num_active_params(),
        "flops_per_token": fpt, "tokens_per_step": step.tokens_per_step, "micro_batch": step.micro_bs,
        "n_micro": step.n_micro, "compile": bool(cfg.train.compile), "compile_mode": cfg.train.compile_mode,
        "warmup": warmup, "steps": steps, "step_s": step_s, "tokens_per_s": tps,
        "mfu": mfu(fpt, tps, peak), "peak_flops": peak, "peak_mem_bytes": int(mem),
        "compile_s": compile_s, "warmup_s": warm_s,
        "host_syncs": None if syncs is None else sum(syncs.values()), "host_sync_detail": syncs,
    }
