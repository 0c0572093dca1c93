"""Small building blocks chosen by config: norms and rotary position embeddings (real arithmetic).

RoPE is written with real cos/sin tensors (rotate-half form) instead of complex numbers so that
torch.compile fuses it into the surrounding kernels. Rotate-half pairs dimension i with i + d/2 rather than
llm-baselines' adjacent pairs (2i, 2i+1); the two differ only by a fixed permutation of each head's q/k
dimensions, which leaves q.k and therefore the model family unchanged.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class LayerNorm(nn.Module):
    """LayerNorm with an optional bias (GPT-2 preset: no bias)."""

    def __init__(self, dim: int, bias: bool, eps: float = 1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim)) if bias else None
        self.eps = eps

    def forward(self, x):
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, self.eps)


class RMSNorm(nn.Module):
    """RMSNorm (llama2 preset), computed in float32 like Llama's reference."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        return F.rms_norm(x.float(), self.weight.shape, self.weight.float(), self.eps).type_as(x)


def make_norm(kind: str, dim: int, bias: bool, eps: float) -> nn.Module:
    return RMSNorm(dim, eps) if kind == "rmsnorm" else LayerNorm(dim, bias, eps)


def rope_cache(seq_len: int, head_dim: int, theta: float = 10000.0, device=None):
    """cos, sin of shape (seq_len, head_dim // 2), float32."""
    inv = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim))
    t = torch.arange(seq_len, device=device, dtype=torch.float32)
    freqs = torch.outer(t, inv)
    return freqs.cos(), freqs.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: (B, H, T, D); cos/sin: (T, D/2). Rotate-half form, real arithmetic, keeps x's dtype."""
    d = x.shape[-1] // 2
    x1, x2 = x[..., :d].float(), x[..., d:].float()
    c, s = cos[: x.shape[-2]], sin[: x.shape[-2]]
    return torch.cat((x1 * c - x2 * s, x1 * s + x2 * c), dim=-1).type_as(x)
