"""Per-GPU training memory, computed (not measured): weights, gradients, optimizer state, activations and the loss.

`memory_table(shapes, world_size, mode, ...) -> rows` gives one row per model shape for `data_parallel` ddp or fsdp
at a micro-batch (default the hackathon one: 32 sequences of 512 tokens under bfloat16 autocast). Figures are in
bytes per GPU. `lmsprint bench --memory [--world_size N]` prints them (`format_memory_table`).

What each column counts (P = parameters, the tied embedding once; N = world size):
- weights: ddp: fp32 master weights (4P) + the bf16 copies autocast makes of every matrix a Linear uses, kept for
  backward (2 bytes per block matrix parameter). fsdp: the fp32 shard (4P/N) + the bf16 all-gathered working set:
  the root (embeddings, final norm: kept unsharded from forward to backward) and two blocks (the one computing and
  the one prefetched). Under fsdp the mixed-precision policy gathers bf16 parameters, so autocast makes no copies.
- gradients: ddp: fp32 `.grad` (4P) + DDP's fp32 bucket buffers (4P; `gradient_as_bucket_view` is off).
  fsdp: the fp32 gradient shard (4P/N) + the unsharded gradients of the root and of one block awaiting their
  reduce-scatter (bf16, then cast to the fp32 reduce dtype: 6 bytes per parameter).
- optimizer: `lmsprint.optim.optimizer_state_bytes` for `opt` (AdamW: 8 bytes per parameter), / N under fsdp.
- activations: the tensors autograd saves for backward (the same on every GPU under ddp and fsdp), per block:
  LayerNorm inputs (fp32 residual, B*T*d*4) and their mean/rstd (2 * B*T*4) twice; the bf16 inputs of the
  Q/K/V and fc projections (2 * B*T*d*2); SDPA/flash's q, k, v (one bf16 (B, T, 3d) storage: the split of
  c_attn's output), out (B*T*d*2; c_proj reads it through a no-copy transpose) and logsumexp (fp32, B*h*T*4);
  the GELU's input and output (2 * B*T*4d*2). Once per model: the final norm's input and statistics and the
  token/position indices (int64). `activation_bytes` sums these.
- loss: what `model/loss.py`'s chunked head + cross-entropy keeps: the gradients it computes in forward and saves
  (d hidden: B*T*d in bf16, d head: V*d in fp32), plus the transient of one chunk (its fp32 logits and the
  softmax/gradient buffer: 2 * c*V*4, c = 8192 tokens on CUDA).
Not counted: the CUDA context and allocator caches/fragmentation, NCCL buffers, flash's two int64 RNG scalars per
layer, and (under fsdp) the small padding of shards. The model is GPT-2 (`model` base: LayerNorm, GELU MLP,
learned positions, tied head); llama2/MoE variants are not covered here.
"""

from __future__ import annotations

from typing import Iterable, Union

import torch

from ..config import ModelConfig, OptimConfig
from ..errors import ConfigError
from ..model.loss import CUDA_CHUNK
from ..model.transformer import Transformer
from ..optim import optimizer_state_bytes

# name -> (n_layer, n_embd, n_head)
SHAPES: dict[str, tuple[int, int, int]] = {
    "124M": (12, 768, 12),   # GPT-2 small
    "350M": (24, 1024, 16),  # GPT-2 medium
    "1.3B": (24, 2048, 16),  # GPT-3 XL (GPT-2 XL is 48 x 1600, 1.5B)
}
COLUMNS = ("weights", "grads", "optimizer", "activations", "loss")
BF16, FP32, INT64 = 2, 4, 8

Shape = Union[str, tuple]


def model_config(n_layer: int, n_embd: int, n_head: int, seq: int = 512, vocab: int = 50304) -> ModelConfig:
    return ModelConfig(n_layer=n_layer, n_embd=n_embd, n_head=n_head, sequence_length=seq, vocab_size=vocab)


def meta_model(mcfg: ModelConfig) -> Transformer:
    """The model with parameters on the meta device: shapes and roles without allocating them."""
    with torch.device("meta"):
        return Transformer(mcfg)


def block_activation_bytes(batch: int, seq: int, n_embd: int, n_head: int) -> int:
    """Bytes autograd saves for one GPT-2 block under bf16 autocast (see the module doc)."""
    bt, d = batch * seq, n_embd
    norms = 2 * (bt * d * FP32 + 2 * bt * FP32)
    proj_inputs = 2 * bt * d * BF16                       # c_attn and c_fc inputs, cast to bf16
    attention = bt * 3 * d * BF16 + bt * d * BF16 + batch * n_head * seq * FP32  # qkv, out, logsumexp
    mlp = 2 * bt * 4 * d * BF16                           # GELU input and output (c_proj's input)
    return norms + proj_inputs + attention + mlp


def activation_bytes(mcfg: ModelConfig, batch: int) -> int:
    """Bytes autograd saves in a training forward of `batch` sequences (blocks + final norm + indices)."""
    _check_covered(mcfg)
    T, d = mcfg.sequence_length, mcfg.n_embd
    bt = batch * T
    final_norm = bt * d * FP32 + 2 * bt * FP32
    indices = bt * INT64 + (T * INT64 if mcfg.pos_kind == "learned" else 0)
    return mcfg.n_layer * block_activation_bytes(batch, T, d, mcfg.n_head) + final_norm + indices


def loss_saved_bytes(n_tokens: int, vocab: int, n_embd: int) -> int:
    """What the chunked loss saves for backward: d hidden (bf16) and d head weight (fp32)."""
    return n_tokens * n_embd * BF16 + vocab * n_embd * FP32


def loss_transient_bytes(n_tokens: int, vocab: int, chunk: int = CUDA_CHUNK) -> int:
    """One chunk's fp32 logits and its softmax/gradient buffer."""
    return 2 * min(chunk, n_tokens) * vocab * FP32


def autocast_copy_bytes(model: torch.nn.Module) -> int:
    """bf16 copies autocast makes of the blocks' matrices (kept for backward)."""
    return sum(p.numel() * BF16 for b in model.blocks for p in b.parameters() if p.dim() >= 2)


def _check_covered(mcfg: ModelConfig) -> None:
    if mcfg.model != "base" or mcfg.mlp_kind != "gelu" or mcfg.norm_kind != "layernorm" or mcfg.moe.moe_num_experts > 1:
        raise ConfigError("the memory table covers the GPT-2 model (`model` base, dense) only")


def _shape(s: Shape) -> tuple[str, int, int, int]:
    if isinstance(s, str):
        if s not in SHAPES:
            raise ConfigError(f"unknown shape '{s}'; known: {', '.join(SHAPES)}")
        return (s, *SHAPES[s])
    return tuple(s)


def memory_row(name: str, mcfg: ModelConfig, world_size: int, mode: str, batch: int, optim_cfg: OptimConfig,
               chunk: int = CUDA_CHUNK) -> dict:
    """One row: per-GPU bytes of each column (see the module doc) for one model under `mode` on `world_size`."""
    if mode not in ("ddp", "fsdp"):
        raise ConfigError(f"`data_parallel` must be ddp or fsdp, not '{mode}'")
    if world_size < 1:
        raise ConfigError("`world_size` must be >= 1")
    model = meta_model(mcfg)
    P = model.num_params()
    block = max(sum(p.numel() for p in b.parameters()) for b in model.blocks)
    root = P - sum(p.numel() for p in model.blocks.parameters())
    state = optimizer_state_bytes(optim_cfg, model)
    n_tok = batch * mcfg.sequence_length
    if mode == "ddp":
        weights, grads, optim = P * FP32 + autocast_copy_bytes(model), 2 * P * FP32, state
    else:
        N = world_size
        weights = -(-P * FP32 // N) + (root + 2 * block) * BF16
        grads = -(-P * FP32 // N) + (root + block) * (BF16 + FP32)
        optim = -(-state // N)
    row = {"shape": name, "n_layer": mcfg.n_layer, "n_embd": mcfg.n_embd, "n_head": mcfg.n_head, "params": P,
           "mode": mode, "world_size": world_size, "batch": batch, "seq": mcfg.sequence_length, "opt": optim_cfg.opt,
           "weights": weights, "grads": grads, "optimizer": optim, "activations": activation_bytes(mcfg, batch),
           "loss": loss_saved_bytes(n_tok, mcfg.vocab_size, mcfg.n_embd)
           + loss_transient_bytes(n_tok, mcfg.vocab_size, chunk)}
    row["total"] = sum(row[c] for c in COLUMNS)
    return row


def memory_table(shapes: Iterable[Shape] = tuple(SHAPES), world_size: int = 8, mode: str = "fsdp", batch: int = 32,
                 seq: int = 512, vocab: int = 50304, opt: str = "adamw") -> list[dict]:
    """Rows of per-GPU bytes for each shape (a name of SHAPES or (name, n_layer, n_embd, n_head)) under `mode`
    (ddp|fsdp) on `world_size` GPUs, at micro-batch `batch` x `seq` tokens under bf16 autocast, optimizer `opt`."""
    optim_cfg = OptimConfig(opt=opt)
    rows = []
    for s in shapes:
        name, n_layer, n_embd, n_head = _shape(s)
        rows.append(memory_row(name, model_config(n_layer, n_embd, n_head, seq, vocab), world_size, mode, batch,
                               optim_cfg))
    return rows


def _gib(b: int) -> str:
    return f"{b / 2**30:.2f}"


def format_memory_table(rows: list[dict]) -> str:
    """Markdown table in GiB per GPU."""
    lines = ["| shape (layers x width) | params | mode | weights | grads | optimizer | activations | loss | total |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        mode = r["mode"] + (f" x{r['world_size']}" if r["mode"] == "fsdp" else "")
        lines.append(f"| {r['shape']} ({r['n_layer']}x{r['n_embd']}) | {r['params'] / 1e6:.0f}M | {mode} | "
                     + " | ".join(_gib(r[c]) for c in (*COLUMNS, "total")) + " |")
    r = rows[0] if rows else None
    if r:
        lines.append(f"\nGiB per GPU, computed (not measured): micro-batch {r['batch']} x {r['seq']} tokens, bf16 "
                     f"autocast, opt {r['opt']}; ddp figures do not depend on the number of GPUs.")
    return "\n".join(lines)


__all__ = ["SHAPES", "memory_table", "memory_row", "format_memory_table", "activation_bytes",
           "block_activation_bytes", "loss_saved_bytes", "loss_transient_bytes", "autocast_copy_bytes", "meta_model",
           "model_config"]
