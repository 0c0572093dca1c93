"""Micro-batching: choose the micro-batch actually run, and accumulate gradients over it without host syncs.

- `resolve_micro_batch(cfg, model, device) -> (micro_bs, n_micro)`: `--micro_batch ''` keeps
  (batch_size, acc_steps); `N` runs N sequences at a time; `auto` probes, on CUDA, the largest divisor of
  batch_size*acc_steps whose forward+backward fits in memory (descending, catching out-of-memory). The
  sequences per optimizer step, batch_size*acc_steps, never change.
- `LossHead(model, label_smoothing, loss_chunk)`: model + chunked head/cross-entropy as one module
  `(x, y) -> (objective, ce_sum, correct, aux)`, so `torch.compile(LossHead(...), fullgraph=True)` compiles
  the whole forward and DDP can wrap it.
- `accumulate_gradients(step_module, x, y, n_micro, autocast_dtype)`: runs the per-process batch (x, y) as
  n_micro micro-batches, each loss scaled by 1/n_micro (so gradients equal one big batch), DDP gradient
  all-reduce only on the last one, and returns detached device tensors: no `.item()`, no host-device sync.
"""

from __future__ import annotations

import contextlib
from typing import Optional

import torch
import torch.nn as nn

from ..errors import UserError
from ..model.loss import lm_loss
from .distributed import unwrap


class LossHead(nn.Module):
    """Transformer + LM loss: `(x, y) -> (objective, ce_sum, correct, aux)`; objective includes MoE aux loss."""

    def __init__(self, model: nn.Module, label_smoothing: float = 0.0, loss_chunk: int = 0):
        super().__init__()
        self.model = model
        self.label_smoothing = label_smoothing
        self.loss_chunk = loss_chunk

    def forward(self, x: torch.Tensor, y: torch.Tensor):
        hidden, aux = self.model(x)
        out = lm_loss(hidden, self.model.head_weight, y, self.label_smoothing, self.loss_chunk)
        objective = out.loss + aux["loss"] if "loss" in aux else out.loss
        return objective, out.ce_sum, out.correct, aux


def autocast_context(device: torch.device, dtype: Optional[torch.dtype]):
    """torch.autocast for low-precision dtypes, a no-op for float32/None."""
    if dtype is None or dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


def resolve_dtype(name: Optional[str], device) -> torch.dtype:
    """--dtype value -> compute dtype: default bfloat16 autocast on CUDA, float32 elsewhere; UserError where the
    device cannot run it."""
    cuda = torch.device(device).type == "cuda"
    if name is None:
        name = "bfloat16" if cuda else "float32"
    if cuda and name == "bfloat16" and hasattr(torch.cuda, "is_bf16_supported") and not torch.cuda.is_bf16_supported():
        raise UserError("this GPU does not support bfloat16; use --dtype float16 (or float32)")
    if not cuda and name == "float16":
        raise UserError("--dtype float16 needs CUDA; use --dtype bfloat16 or float32 on CPU")
    return getattr(torch, name)


def accumulate_gradients(step_module: nn.Module, x: torch.Tensor, y: torch.Tensor, n_micro: int,
                         autocast_dtype: Optional[torch.dtype] = None, scaler=None) -> dict:
    """Forward+backward of the batch (x, y) in n_micro equal micro-batches; grads accumulate into .grad (scaled
    by `scaler`, a GradScaler, for float16). Under DDP all but the last micro-batch skip the gradient all-reduce.

    Returns {"loss": mean objective, "ce_sum": summed plain CE, "correct", "n": tokens (int), "aux": {key:
    mean over micro-batches}} as detached tensors on the device (read them only at log steps)."""
    if x.shape[0] % n_micro:
        raise UserError(f"batch of {x.shape[0]} sequences cannot be split into {n_micro} equal micro-batches; "
                        "pick --micro_batch dividing batch_size*acc_steps")
    micro = x.shape[0] // n_micro
    no_sync = getattr(step_module, "no_sync", None)
    loss_sum = ce_sum = correct = None
    aux_sum: dict = {}
    for i in range(n_micro):
        xs, ys = x[i * micro:(i + 1) * micro], y[i * micro:(i + 1) * micro]
        sync_ctx = no_sync() if (no_sync is not None and i < n_micro - 1) else contextlib.nullcontext()
        with sync_ctx:
            with autocast_context(x.device, autocast_dtype):
                objective, ce, corr, aux = step_module(xs, ys)
            scaled = objective / n_micro
            (scaler.scale(scaled) if scaler is not None else scaled).backward()
        # first micro-batch: copies, not aliases (CUDA-graph replays of the next micro-batch overwrite outputs)
        obj, ce = objective.detach().float(), ce.float()
        loss_sum = obj.clone() if loss_sum is None else loss_sum + obj
        ce_sum = ce.clone() if ce_sum is None else ce_sum + ce
        correct = corr.clone() if correct is None else correct + corr
        for k, v in aux.items():
            v = v.detach().float()
            aux_sum[k] = v.clone() if k not in aux_sum else aux_sum[k] + v
    return {"loss": loss_sum / n_micro, "ce_sum": ce_sum, "correct": correct, "n": x.numel(),
            "aux": {k: v / n_micro for k, v in aux_sum.items()}}


def apply_update(model: nn.Module, optimizer, grad_clip: float = 0.0, scaler=None) -> None:
    """Clip the global gradient norm (grad_clip > 0), step the optimizer (through `scaler` for float16), zero grads."""
    if grad_clip > 0:
        if scaler is not None:
            scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def _divisors_desc(n: int) -> list[int]:
    return [d for d in range(n, 0, -1) if n % d == 0]


def _oom_types() -> tuple:
    """The out-of-memory exception classes this torch has (torch.OutOfMemoryError, torch.cuda.OutOfMemoryError)."""
    types = []
    for owner in (torch, getattr(torch, "cuda", None)):
        t = getattr(owner, "OutOfMemoryError", None)
        if isinstance(t, type) and t not in types:
            types.append(t)
    return tuple(types) or (RuntimeError,)


OOM_ERRORS = _oom_types()


def fits_in_memory(model: nn.Module, micro_bs: int, seq_len: int, device: torch.device,
                   autocast_dtype: Optional[torch.dtype], reserve_bytes: int = 0, label_smoothing: float = 0.0,
                   loss_chunk: int = 0) -> bool:
    """One forward+backward of random tokens at (micro_bs, seq_len); False on out-of-memory. Grads are cleared.

    `reserve_bytes` are held aside during the probe (the optimizer state that training will allocate)."""
    inner = unwrap(model)
    vocab = inner.cfg.vocab_size if hasattr(inner, "cfg") else 256
    head = LossHead(inner, label_smoothing, loss_chunk)

    def probe():  # locals (activations, graph) die when it returns, before the cache is emptied
        reserve = torch.empty(max(reserve_bytes, 0), dtype=torch.uint8, device=device)  # noqa: F841
        x = torch.randint(0, vocab, (micro_bs, seq_len), device=device)
        with autocast_context(device, autocast_dtype):
            objective = head(x, x)[0]
        objective.backward()
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize(device)

    try:
        probe()
        ok = True
    except OOM_ERRORS:
        ok = False
    for p in model.parameters():
        p.grad = None
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()
    return ok


def resolve_micro_batch(cfg, model: nn.Module, device) -> tuple[int, int]:
    """(micro-batch size, number of micro-batches) per optimizer step for this process; see module doc."""
    t = cfg.train
    total = t.batch_size * t.acc_steps
    mb = str(t.micro_batch or "").strip()
    if mb == "":
        return t.batch_size, t.acc_steps
    if mb != "auto":
        n = int(mb)
        if n <= 0 or total % n:
            raise UserError(f"--micro_batch {mb} must be a positive divisor of batch_size*acc_steps = {total}")
        return n, total // n
    device = torch.device(device)
    if device.type != "cuda":
        return t.batch_size, t.acc_steps
    dtype = resolve_dtype(t.dtype, device)
    n_params = sum(p.numel() for p in model.parameters())
    reserve = 2 * 4 * n_params if cfg.optim.opt in ("adamw", "lamb") else 4 * n_params  # optimizer state, fp32
    for cand in _divisors_desc(total):
        if fits_in_memory(model, cand, cfg.model.sequence_length, device, dtype, reserve,
                          t.label_smoothing, t.loss_chunk):
            return cand, total // cand
    raise UserError(f"even a micro-batch of 1 sequence of {cfg.model.sequence_length} tokens does not fit in GPU "
                    "memory; reduce --sequence_length, --n_embd or --n_layer")
