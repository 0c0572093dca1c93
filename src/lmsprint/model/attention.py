"""Self-attention and its research variants, chosen by `cfg.attn` so the Transformer never knows which one runs.

Interface used by the Transformer (once per model, then once per forward, as nanochat's per-layer window sizes and
torchtitan's `get_attention_masks`):
- `AttentionMasks(cfg)` reads which pattern each layer has (`layer_pattern`); calling it,
  `masks(T, device, dropout=, grad=)`, gives every layer its mask for one forward of length T, each distinct mask
  built once and shared by the layers of that pattern.
- `Attention(cfg, layer_idx).forward(x, rope, mask) -> y`, `rope` = `(cos, sin)` or None, `mask` = the layer's entry:
  None (plain causal attention: SDPA's flash path), a FlexAttention `BlockMask` (FlexAttention), or a boolean
  tensor (SDPA with that mask). The mask's type selects the kernel; `attention_kernel` is the one predicate that
  decides between FlexAttention and SDPA for the masked layers.

Variants:
- `attention causal` (default): full causal attention through `scaled_dot_product_attention` (flash on GPU).
- `attention local`, `attention_window W`: sliding window, token i sees keys j with i - W < j <= i.
- `attention global_local`: a per-layer pattern (`attention_pattern SSSL`, S = local layer, L = global layer,
  tiled over the layers) and/or a per-head split (`local_heads k`: the first k heads of every non-S layer are
  local, the others global).
  Each masked pattern is one `mask_mod` (FlexAttention's `(b, h, q_idx, kv_idx) -> bool`), from which both kernels'
  masks are made: `create_block_mask` (FlexAttention: out-of-window blocks are skipped) and `create_mask` (a
  boolean SDPA mask). FlexAttention runs on CUDA, SDPA on CPU, with `attn_backend sdpa`, or when dropout is active
  (FlexAttention has neither dropout nor a CPU backward). When the window covers the whole sequence the layer is
  plain causal attention and takes the flash path.
  Masks are built eagerly once per (pattern, length, device, kernel) and cached; inside a torch.compile trace they
  are built in the graph instead (no Python-side cache is read or written while tracing: no graph break, and no
  guard that a later eager call at another length could invalidate).
- `shuffle_query_frac p --shuffle_query_mode batch|past`: while training, a fraction p of query rows (all heads
  of one (sequence, position)) is replaced by another row: the same position of another sequence of the batch
  (batch) or an earlier position of the same sequence (past). Both keep the model causal. The swap happens on the
  projected queries before RoPE, so the row keeps the rotation of the position it is used at. Random masks are
  drawn with torch.rand on the device: no host sync, compile friendly.
- `qk_norm`: queries and keys are RMS-normalised per head (no weight) before RoPE, so attention logits are
  bounded by sqrt(head_dim) times the projections' scale (modded-nanogpt, OLMo 2).
- `orthogonal_qkv`: the Q, K and V projections of every head are (head_dim x n_embd) matrices with orthonormal
  rows, held as ONE weight of shape (3 * n_head, head_dim, n_embd) under
  `torch.nn.utils.parametrizations.orthogonal` (Householder map), applied as one (3 * n_embd, n_embd) matmul.
  The underlying parameter is `c_attn.parametrizations.weight.original`; its diagonal holds fixed +-1 signs that
  must not be weight-decayed (lmsprint.optim puts it in the no-decay group).

Adding a mask pattern: a frozen dataclass like `SlidingWindow` (its `mask_mod`, and `covers(T)` when it masks
nothing but the future), chosen for its layers in `layer_pattern`, plus the option's value in the schema.
`check_attention_config(model_cfg, device, micro_batch)` refuses the combinations that cannot run (ConfigError);
model.check_model_config calls it.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Optional, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.attention.flex_attention import BlockMask, create_block_mask, create_mask, flex_attention
from torch.nn.utils.parametrizations import orthogonal

from ..config import ModelConfig
from ..errors import ConfigError
from .layers import apply_rope

# ----------------------------------------------------------------------------------------------------------------
# mask patterns: which keys each query may see, one per layer


def local_heads_of_layer(cfg: ModelConfig, layer_idx: int) -> int:
    """How many heads of layer `layer_idx` use the sliding window (0 = plain causal layer)."""
    a = cfg.attn
    if a.attention == "local":
        return cfg.n_head
    if a.attention == "global_local":
        pat = a.attention_pattern
        if pat and pat[layer_idx % len(pat)] == "S":
            return cfg.n_head
        return min(a.local_heads, cfg.n_head)
    return 0


@dataclass(frozen=True)
class SlidingWindow:
    """Heads [0, n_local) see the `window` keys up to their own position; the other heads are plain causal (all heads
    are windowed when n_local >= n_head)."""

    window: int
    n_local: int
    n_head: int

    @property
    def heads(self) -> Optional[int]:
        """The head dimension of the mask: None (one mask for every head) or n_head (a per-head split)."""
        return None if self.n_local >= self.n_head else self.n_head

    def covers(self, T: int) -> bool:
        """Whether at length T the pattern masks nothing but the future (then the layer is plain causal)."""
        return self.window >= T

    def mask_mod(self):
        window, n_local = self.window, self.n_local
        if self.heads is None:
            def mask_mod(b, h, q_idx, kv_idx):
                return (q_idx >= kv_idx) & (q_idx - kv_idx < window)
        else:
            def mask_mod(b, h, q_idx, kv_idx):
                return (q_idx >= kv_idx) & ((q_idx - kv_idx < window) | (h >= n_local))
        return mask_mod


Pattern = SlidingWindow  # the union of the pattern classes, when there are several


def layer_pattern(cfg: ModelConfig, layer_idx: int) -> Optional[Pattern]:
    """The mask pattern of layer `layer_idx` (None: plain causal attention)."""
    n_local = local_heads_of_layer(cfg, layer_idx)
    return SlidingWindow(cfg.attn.attention_window, n_local, cfg.n_head) if n_local else None


def make_block_mask(pattern: Pattern, T: int, device) -> BlockMask:
    """FlexAttention BlockMask of `pattern` at length T."""
    return create_block_mask(pattern.mask_mod(), B=None, H=pattern.heads, Q_LEN=T, KV_LEN=T, device=device)


def make_sdpa_mask(pattern: Pattern, T: int, device) -> torch.Tensor:
    """Boolean SDPA mask of `pattern` at length T, True = may attend: (T, T), or (n_head, T, T) for a per-head split.
    (Not (1, H, T, T): SDPA's CPU kernel rounds a 4-D mask's result differently in the last bit.)"""
    mask = create_mask(pattern.mask_mod(), 1, pattern.heads or 1, T, T, device=device)[0]
    return mask if pattern.heads else mask[0]


# ----------------------------------------------------------------------------------------------------------------
# the kernel, and the masks of one forward

FLEX_DROPOUT = "`attn_backend` flex does not support `dropout`; use `attn_backend` sdpa or `dropout` 0"
FLEX_CPU = "`attn_backend` flex has no backward pass on CPU; use `attn_backend` sdpa (or auto)"


def attention_kernel(backend: str, device: torch.device, dropout: bool, grad: bool) -> str:
    """"flex" or "sdpa": how the masked layers of a forward run. `dropout`: attention dropout is active;
    `grad`: a backward pass will follow. `auto` takes FlexAttention on CUDA without dropout; an explicit `flex`
    that cannot run is a ConfigError."""
    if backend == "sdpa":
        return "sdpa"
    if backend == "auto":
        return "flex" if device.type == "cuda" and not dropout else "sdpa"
    if dropout:
        raise ConfigError(FLEX_DROPOUT)
    if device.type != "cuda" and grad:
        raise ConfigError(FLEX_CPU)
    return "flex"


def _build_mask(pattern: Pattern, T: int, device: torch.device, kernel: str):
    return make_block_mask(pattern, T, device) if kernel == "flex" else make_sdpa_mask(pattern, T, device)


@functools.lru_cache(maxsize=64)
def _cached_mask(pattern: Pattern, T: int, device: torch.device, kernel: str, inference: bool):
    # `inference` is part of the key: a mask made under torch.inference_mode cannot be used by autograd later
    return _build_mask(pattern, T, device, kernel)


Mask = Union[None, BlockMask, torch.Tensor]


class AttentionMasks:
    """The masks of a model's layers, built once per forward (see the module doc). Made once per model: which
    layers share which pattern is static; the length, device, dropout and grad mode are the forward's."""

    def __init__(self, cfg: ModelConfig):
        self.backend = cfg.attn.attn_backend
        self.n_layer = cfg.n_layer
        groups: dict = {}
        for i in range(cfg.n_layer):
            p = layer_pattern(cfg, i)
            if p is not None:
                groups.setdefault(p, []).append(i)
        self.groups: list[tuple[Pattern, list[int]]] = list(groups.items())

    def __call__(self, T: int, device: torch.device, *, dropout: bool, grad: bool) -> list[Mask]:
        masks: list[Mask] = [None] * self.n_layer
        todo = [(p, layers) for p, layers in self.groups if not p.covers(T)]
        if not todo:
            return masks
        kernel = attention_kernel(self.backend, device, dropout, grad)
        compiling = torch.compiler.is_compiling()
        for p, layers in todo:
            m = _build_mask(p, T, device, kernel) if compiling else \
                _cached_mask(p, T, device, kernel, torch.is_inference_mode_enabled())
            for i in layers:
                masks[i] = m
        return masks


# ----------------------------------------------------------------------------------------------------------------
# query shuffle


def shuffle_queries(q: torch.Tensor, frac: float, mode: str) -> torch.Tensor:
    """q: (B, T, H, D). Replace each (b, t) row with probability `frac` by a causally safe other row."""
    B, T = q.shape[0], q.shape[1]
    dev = q.device
    replace = torch.rand(B, T, device=dev) < frac
    rows = torch.arange(B, device=dev)[:, None]
    pos = torch.arange(T, device=dev)
    if mode == "batch":
        if B < 2:
            return q
        src_b = (rows + torch.randint(1, B, (B, T), device=dev)) % B  # another sequence, same position
        src = q[src_b, pos[None, :]]
    else:
        src_t = (torch.rand(B, T, device=dev) * pos).long()  # j in [0, t-1] (t = 0 keeps its own row)
        src = q[rows, src_t]
    return torch.where(replace[:, :, None, None], src, q)


# ----------------------------------------------------------------------------------------------------------------
# projections


class OrthogonalQKV(nn.Module):
    """Q/K/V projection whose per-head (head_dim x n_embd) matrices have orthonormal rows; one matmul for all."""

    def __init__(self, n_embd: int, n_head: int, bias: bool):
        super().__init__()
        self.n_embd = n_embd
        self.weight = nn.Parameter(torch.randn(3 * n_head, n_embd // n_head, n_embd))
        self.bias = nn.Parameter(torch.zeros(3 * n_embd)) if bias else None
        orthogonal(self, "weight", orthogonal_map="householder")

    def forward(self, x):
        return F.linear(x, self.weight.reshape(3 * self.n_embd, self.n_embd), self.bias)


# ----------------------------------------------------------------------------------------------------------------
# the module


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_idx: int = 0):
        super().__init__()
        a = cfg.attn
        self.n_head, self.head_dim = cfg.n_head, cfg.head_dim
        if a.orthogonal_qkv:
            self.c_attn = OrthogonalQKV(cfg.n_embd, cfg.n_head, cfg.bias)
        else:
            self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.bias)
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.c_proj.residual_proj = True
        self.dropout = cfg.dropout
        self.resid_dropout = nn.Dropout(cfg.dropout)
        self.shuffle_frac = a.shuffle_query_frac
        self.shuffle_mode = a.shuffle_query_mode
        self.qk_norm = cfg.qk_norm

    def extra_repr(self) -> str:
        return f"shuffle={self.shuffle_frac}/{self.shuffle_mode}"

    def forward(self, x, rope=None, mask: Mask = None):
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        q = q.view(B, T, self.n_head, self.head_dim)
        if self.training and self.shuffle_frac > 0:
            q = shuffle_queries(q, self.shuffle_frac, self.shuffle_mode)
        q = q.transpose(1, 2)
        k = k.view(B, T, self.n_head, self.head_dim).transpose(1, 2)
        v = v.view(B, T, self.n_head, self.head_dim).transpose(1, 2)
        if self.qk_norm:
            q, k = F.rms_norm(q, (self.head_dim,)), F.rms_norm(k, (self.head_dim,))
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        y = self.attend(q, k, v, mask)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))

    # ------------------------------------------------------------------ attention kernels
    def attend(self, q, k, v, mask: Mask = None):
        """q, k, v: (B, H, T, D) -> (B, H, T, D) under `mask` (see the module doc: its type selects the kernel)."""
        p = self.dropout if self.training else 0.0
        if mask is None:  # plain causal (flash)
            return F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)
        if isinstance(mask, BlockMask):
            # contiguous: inductor's CPU flex kernel misreads a strided v (a view of the fused QKV output) when q/k
            # come from RoPE, giving wrong outputs (torch 2.13, tests/test_attention.py); one copy per layer
            q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
            return _FLEX(q, k, v, block_mask=mask)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)


# FlexAttention compiled once per process on CUDA (eager FlexAttention materializes the scores); torch.compile only
# wraps it here, it compiles at the first call. A constant, not set lazily: a compiled graph that reads it must not
# see it change (a guard on it would recompile the model after the first eager call).
_FLEX = torch.compile(flex_attention, dynamic=False) if torch.cuda.is_available() else flex_attention


# ----------------------------------------------------------------------------------------------------------------
# config compatibility

def check_attention_config(model_cfg: ModelConfig, device: str = "auto", micro_batch: int = 0) -> None:
    """Refuse attention options that cannot run together; raises ConfigError.

    `device`: the requested device ("cpu", "cuda", "auto", ...); `micro_batch`: sequences per micro-batch when
    known in advance (0 = not known, e.g. chosen at run time)."""
    a = model_cfg.attn
    if a.shuffle_query_frac > 0 and a.shuffle_query_mode == "batch" and micro_batch == 1:
        raise ConfigError("`shuffle_query_mode` batch needs at least 2 sequences per micro-batch; raise "
                          "`batch_size` or use `shuffle_query_mode` past")
    if a.attn_backend == "flex":
        if device == "cpu":
            raise ConfigError(FLEX_CPU)
        if model_cfg.dropout > 0:
            raise ConfigError(FLEX_DROPOUT)


__all__ = ["Attention", "AttentionMasks", "SlidingWindow", "OrthogonalQKV", "attention_kernel", "check_attention_config",
           "layer_pattern", "local_heads_of_layer", "make_block_mask", "make_sdpa_mask", "shuffle_queries"]
