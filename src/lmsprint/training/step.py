"""The training step, built once for training and for `lmsprint bench`: `build_train_step(cfg, model, device)`.

- `TrainStep`: model + optimizer (+ GradScaler for float16) + the loss head (compiled with --compile, wrapped
  in DDP under torchrun; or the model sharded with FSDP2 per block under `data_parallel` fsdp) + the micro-batch
  split. `step(x, y, during_backward)` accumulates the gradients of one optimizer step's batch, runs
  `during_backward()` (the trainer prefetches the next batch there), then clips, steps and zeroes them. It never
  syncs host and device (no .item(), no data-dependent Python branch): statistics come back as device tensors.
- `LossHead(model, label_smoothing, loss_chunk)`: model + chunked head/cross-entropy as one module
  `(x, y) -> (objective, ce_sum, correct, aux)`, so `torch.compile` compiles the whole forward and DDP can wrap it.
- `accumulate_gradients(...)`, `apply_update(...)`: the two halves of a step, usable on their own.
- `resolve_micro_batch(cfg, model, device) -> (micro_bs, n_micro)`: `micro_batch` unset keeps
  (batch_size, acc_steps); `N` runs N sequences at a time (the config's rules checked it divides
  batch_size*acc_steps); `auto` probes, on CUDA, the largest divisor of batch_size*acc_steps whose
  forward+backward fits in memory. The sequences per optimizer step never change.
- `oom_user_error(err, cfg)`: the one translation of out-of-memory (GPU or CPU) into a message saying what to change.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Optional

import torch
import torch.nn as nn

from ..config import AUTO
from ..errors import ConfigError, is_out_of_memory, out_of_memory_text
from ..hw import OOM_ERRORS, autocast_context, resolve_dtype, sync, unwrap
from ..model.loss import lm_loss
from ..optim import optimizer_state_bytes
from ..optim.optimizers import build_optimizer
from .distributed import World, shard_model, wrap_ddp


class LossHead(nn.Module):
    """Transformer + LM loss: `(x, y) -> (objective, ce_sum, correct, aux)`; objective includes MoE aux loss."""

    def __init__(self, model: nn.Module, label_smoothing: float = 0.0, loss_chunk: int = 0):
        super().__init__()
        self.model = model
        self.label_smoothing = label_smoothing
        self.loss_chunk = loss_chunk

    def forward(self, x: torch.Tensor, y: torch.Tensor):
        hidden, aux = self.model(x)
        out = lm_loss(hidden, self.model.head_weight, y, self.label_smoothing, self.loss_chunk,
                      self.model.softcap)
        objective = out.loss + aux["loss"] if "loss" in aux else out.loss
        return objective, out.ce_sum, out.correct, aux


# ---------------------------------------------------------------------------------------------------- one step


def accumulate_gradients(step_module: nn.Module, x: torch.Tensor, y: torch.Tensor, n_micro: int,
                         autocast_dtype: Optional[torch.dtype] = None, scaler=None) -> dict:
    """Forward+backward of the batch (x, y) in n_micro equal micro-batches; grads accumulate into .grad (scaled
    by `scaler`, a GradScaler, for float16). Under DDP all but the last micro-batch skip the gradient all-reduce.

    Returns {"loss": mean objective, "ce_sum": summed plain CE, "correct", "n": tokens (int), "aux": {key:
    mean over micro-batches}} as detached tensors on the device (read them only at log steps)."""
    if x.shape[0] % n_micro:
        raise ConfigError(f"batch of {x.shape[0]} sequences cannot be split into {n_micro} equal micro-batches; "
                          "pick `micro_batch` dividing batch_size*acc_steps")
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


class TrainStep:
    """What `build_train_step` returns: the parts of a training step and the step itself (see module doc)."""

    def __init__(self, cfg, model: nn.Module, device: str, optimizer, scaler, dtype: torch.dtype,
                 step_module: nn.Module, eval_model: nn.Module, micro_bs: int, n_micro: int):
        self.cfg, self.model, self.device = cfg, model, torch.device(device)
        self.optimizer, self.scaler, self.dtype = optimizer, scaler, dtype
        self.step_module, self.eval_model = step_module, eval_model
        self.micro_bs, self.n_micro = micro_bs, n_micro
        self.rows = micro_bs * n_micro  # sequences per optimizer step on this process
        self.tokens_per_step = self.rows * cfg.model.sequence_length

    def step(self, x: torch.Tensor, y: torch.Tensor, during_backward: Optional[Callable[[], None]] = None) -> dict:
        """One optimizer step on the batch (x, y). `during_backward()` runs once the forward and backward passes are
        queued, before the update: host work (the next batch) that overlaps the device's backward pass."""
        stats = accumulate_gradients(self.step_module, x, y, self.n_micro, self.dtype, self.scaler)
        if during_backward is not None:
            during_backward()
        apply_update(self.model, self.optimizer, self.cfg.optim.grad_clip, self.scaler)
        return stats

    __call__ = step


def build_train_step(cfg, model: nn.Module, device, world: Optional[World] = None,
                     compile_backend: Optional[str] = None) -> TrainStep:
    """The training step of `cfg` for `model` (already on `device`): optimizer of --opt, compute dtype (GradScaler
    for float16), micro-batch split, loss head compiled with --compile (`compile_backend`, default inductor, which
    alone takes --compile_mode) and wrapped in DDP when `world` is distributed; under fsdp the model is sharded with
    FSDP2 and its blocks compiled one by one instead."""
    t = cfg.train
    dev = torch.device(device)
    dtype = resolve_dtype(t.dtype, dev)
    kw: dict = {}
    if t.compile_mode not in (None, "", "default") and compile_backend in (None, "inductor"):
        kw["mode"] = t.compile_mode
    if compile_backend is not None:
        kw["backend"] = compile_backend
    sharded = world is not None and world.sharded
    if sharded:  # FSDP2 before the optimizer is built: it must hold the sharded parameters
        shard_model(model, dtype, kw if t.compile else None)
    optimizer = build_optimizer(model, cfg.optim, dev.type)
    micro_bs, n_micro = resolve_micro_batch(cfg, model, dev)
    scaler = torch.amp.GradScaler("cuda", enabled=True) if dtype == torch.float16 else None
    head: nn.Module = LossHead(model, t.label_smoothing, t.loss_chunk)
    eval_model: nn.Module = model
    if t.compile and not sharded:
        head = torch.compile(head, **kw)
        eval_model = torch.compile(model, **kw)  # compiled on its first call: never, in bench
    if world is not None and not sharded:
        head = wrap_ddp(head, world)
    return TrainStep(cfg, model, str(device), optimizer, scaler, dtype, head, eval_model, micro_bs, n_micro)


# ---------------------------------------------------------------------------------------------------- micro-batches


def _divisors_desc(n: int) -> list[int]:
    return [d for d in range(n, 0, -1) if n % d == 0]


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
        sync(device)

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
    if t.micro_batch is None:
        return t.batch_size, t.acc_steps
    if t.micro_batch != AUTO:
        return t.micro_batch, total // t.micro_batch
    device = torch.device(device)
    if device.type != "cuda":
        return t.batch_size, t.acc_steps
    dtype = resolve_dtype(t.dtype, device)
    reserve = optimizer_state_bytes(cfg.optim, model)  # held aside: training allocates it at the first step
    for cand in _divisors_desc(total):
        if fits_in_memory(model, cand, cfg.model.sequence_length, device, dtype, reserve,
                          t.label_smoothing, t.loss_chunk):
            return cand, total // cand
    raise ConfigError(f"even a micro-batch of 1 sequence of {cfg.model.sequence_length} tokens does not fit in GPU "
                      "memory; reduce `sequence_length`, `n_embd` or `n_layer`")


# ---------------------------------------------------------------------------------------------------- out of memory


def oom_user_error(err: BaseException, cfg) -> ConfigError:
    """Out of memory on any device (errors.is_out_of_memory) -> a one-line error saying what to change."""
    t, m = cfg.train, cfg.model
    text = out_of_memory_text(err)  # "out of GPU memory (...)" / "out of CPU memory (tried to allocate 13.19 GB)"
    what, detail = text.split(" (", 1) if " (" in text else (text, "")
    gpu = what.endswith("GPU memory")
    model = (f"; or a smaller model (`n_layer` {m.n_layer}, `n_embd` {m.n_embd}, `vocab_size` {m.vocab_size}"
             + (f", `moe_num_experts` {m.moe.moe_num_experts}" if m.moe.moe_num_experts > 1 else "") + ")")
    return ConfigError(f"{what} at `batch_size` {t.batch_size} x `sequence_length` {m.sequence_length}"
                       f"{' (' + detail if detail else ''}; use a smaller `batch_size` with a larger `acc_steps` "
                       f"(e.g. `batch_size` {max(1, t.batch_size // 2)} `acc_steps` {t.acc_steps * 2})"
                       f"{' or `micro_batch` auto' if gpu else ''}{model}")


@contextlib.contextmanager
def oom_as_user_error(cfg):
    """Re-raise out-of-memory inside the block (building the model, its optimizer, a step, an eval; CUDA's
    OutOfMemoryError, torch's CPU allocator's RuntimeError, MemoryError) as `oom_user_error` (one line at the CLI)."""
    try:
        yield
    except (*OOM_ERRORS, RuntimeError, MemoryError) as e:
        if not is_out_of_memory(e):
            raise
        raise oom_user_error(e, cfg) from None
