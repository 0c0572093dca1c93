"""Self-attention and its research variants, chosen by `cfg.attn` so the Transformer never knows which one runs.

Interface used by the Transformer: `Attention(cfg: ModelConfig, layer_idx)`, `forward(x, rope) -> y` where
`rope` is `(cos, sin)` or None.

Variants:
- `attention causal` (default): full causal attention through `scaled_dot_product_attention` (flash on GPU).
- `attention local`, `attention_window W`: sliding window, token i sees keys j with i - W < j <= i.
- `attention global_local`: a per-layer pattern (`attention_pattern SSSL`, S = local layer, L = global layer,
  tiled over the layers) and/or a per-head split (`local_heads k`: the first k heads of every non-S layer are
  local, the others global). On CUDA windows run through FlexAttention block masks (compiled; the block mask is
  cached per (T, device), and `prepare_block_masks` builds them before torch.compile so the compiled graph reads
  them) so out-of-window blocks are skipped; on CPU, with `attn_backend sdpa`, or when dropout
  is active, SDPA with a boolean mask runs instead (FlexAttention has neither dropout nor a CPU backward). When the
  window covers the whole sequence the layer is plain causal attention and takes the flash path.
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

`check_attention_config(model_cfg, device, micro_batch)` refuses the combinations that cannot run (ConfigError);
model.check_model_config calls it.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.attention.flex_attention import create_block_mask, flex_attention
from torch.nn.utils.parametrizations import orthogonal

from ..config import ModelConfig
from ..errors import ConfigError
from .layers import apply_rope

# ----------------------------------------------------------------------------------------------------------------
# masks


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


def window_mask(T: int, window: int, n_head: int, n_local: int, device=None) -> torch.Tensor:
    """Boolean SDPA mask, True = may attend. (T, T) if every head is local, else (n_head, T, T) where the first
    `n_local` heads are windowed and the others causal."""
    i = torch.arange(T, device=device)
    causal = i[:, None] >= i[None, :]
    local = causal & ((i[:, None] - i[None, :]) < window)
    if n_local >= n_head:
        return local
    is_local = (torch.arange(n_head, device=device) < n_local)[:, None, None]
    return torch.where(is_local, local, causal)


_flex_fn = None


def _flex_attention():
    """FlexAttention compiled once per process (eager FlexAttention materializes the scores)."""
    global _flex_fn
    if _flex_fn is None:
        _flex_fn = torch.compile(flex_attention, dynamic=False) if torch.cuda.is_available() else flex_attention
    return _flex_fn


def make_block_mask(T: int, window: int, n_head: int, n_local: int, device):
    """FlexAttention BlockMask of the same pattern as `window_mask`."""
    if n_local >= n_head:
        def mask_mod(b, h, q_idx, kv_idx):
            return (q_idx >= kv_idx) & (q_idx - kv_idx < window)
        heads = None
    else:
        def mask_mod(b, h, q_idx, kv_idx):
            return (q_idx >= kv_idx) & ((q_idx - kv_idx < window) | (h >= n_local))
        heads = n_head
    return create_block_mask(mask_mod, B=None, H=heads, Q_LEN=T, KV_LEN=T, device=device)


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
        self.window = a.attention_window
        self.n_local = local_heads_of_layer(cfg, layer_idx)
        self.backend = a.attn_backend
        self.shuffle_frac = a.shuffle_query_frac
        self.shuffle_mode = a.shuffle_query_mode
        self.qk_norm = cfg.qk_norm
        self._block_masks: dict = {}
        self._prepared: Optional[tuple] = None  # ((T, device), BlockMask) built before torch.compile

    def extra_repr(self) -> str:
        return f"local_heads={self.n_local}, window={self.window}, shuffle={self.shuffle_frac}/{self.shuffle_mode}"

    def forward(self, x, rope=None):
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
        y = self.attend(q, k, v)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))

    # ------------------------------------------------------------------ attention kernels
    def attend(self, q, k, v):
        """q, k, v: (B, H, T, D) -> (B, H, T, D) under this layer's mask."""
        T = q.shape[-2]
        p = self.dropout if self.training else 0.0
        if not self.windowed(T):  # the window covers everything: plain causal (flash)
            return F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)
        if self._use_flex(q, p):
            # contiguous: inductor's CPU flex kernel misreads a strided v (a view of the fused QKV output) when q/k
            # come from RoPE, giving wrong outputs (torch 2.13, tests/test_attention.py); one copy per layer
            q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
            return _flex_attention()(q, k, v, block_mask=self._block_mask(T, q.device))
        mask = window_mask(T, self.window, self.n_head, self.n_local, q.device)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)

    def _use_flex(self, q, dropout_p: float) -> bool:
        if self.backend == "sdpa":
            return False
        if self.backend == "auto":
            return q.is_cuda and dropout_p == 0.0
        # explicitly asked for flex
        if dropout_p > 0:
            raise ConfigError(FLEX_DROPOUT)
        if not q.is_cuda and torch.is_grad_enabled() and q.requires_grad:
            raise ConfigError(FLEX_CPU)
        return True

    def windowed(self, T: int) -> bool:
        """Whether some head's window is shorter than T (else the layer is plain causal attention)."""
        return self.n_local > 0 and self.window < T

    def uses_flex(self, T: int, device) -> bool:
        """Whether a forward at length T on `device` (without dropout) runs FlexAttention."""
        if not self.windowed(T) or self.backend == "sdpa":
            return False
        return torch.device(device).type == "cuda" or self.backend == "flex"

    def _block_mask(self, T: int, device):
        key = (T, str(device))
        if self._prepared is not None and self._prepared[0] == key:  # set once before compile: read by the graph
            return self._prepared[1]
        if torch.compiler.is_compiling():  # built in the graph at every call; no Python-side mutation while tracing
            return make_block_mask(T, self.window, self.n_head, self.n_local, device)
        bm = self._block_masks.get(key)  # eager calls (generation's growing lengths) never touch `_prepared`
        if bm is None:
            bm = self._block_masks[key] = make_block_mask(T, self.window, self.n_head, self.n_local, device)
        return bm

    def prepare_block_mask(self, T: int, device) -> None:
        """Build the block mask of length T once, for compiled graphs to read as a constant (`prepare_block_masks`);
        kept apart from the eager cache so that later eager calls do not invalidate the compiled graph's guards."""
        key = (T, str(device))
        self._prepared = (key, make_block_mask(T, self.window, self.n_head, self.n_local, device))


def prepare_block_masks(model: nn.Module, T: int, device) -> int:
    """Build and cache the FlexAttention block masks that a forward of length T on `device` needs, before the model
    is compiled, so the compiled graph reads them instead of rebuilding them at every call. Returns how many."""
    dev = torch.empty(0, device=device).device  # "cuda" -> "cuda:0", the key a tensor's .device gives
    n = 0
    for m in model.modules():
        if isinstance(m, Attention) and m.uses_flex(T, dev):
            m.prepare_block_mask(T, dev)
            n += 1
    return n


# ----------------------------------------------------------------------------------------------------------------
# config compatibility

FLEX_DROPOUT = "`attn_backend` flex does not support `dropout`; use `attn_backend` sdpa or `dropout` 0"
FLEX_CPU = "`attn_backend` flex has no backward pass on CPU; use `attn_backend` sdpa (or auto)"


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


__all__ = ["Attention", "OrthogonalQKV", "shuffle_queries", "window_mask", "make_block_mask", "prepare_block_masks",
           "local_heads_of_layer", "check_attention_config"]
