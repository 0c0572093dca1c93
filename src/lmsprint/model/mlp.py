"""Dense feed-forward parts: GELU MLP (GPT-2, 4x), ReLU² MLP (modded-nanogpt, 4x) and SwiGLU (Llama-2, hidden sized
by multiple_of).

Every feed-forward part returns `(y, aux)` where `aux` is a dict of tensors (empty for dense MLPs; MoE layers
return their losses and load statistics there) so the Transformer treats MLP and MoE alike.
"""

from __future__ import annotations

import torch.nn as nn
import torch.nn.functional as F


class GeluMLP(nn.Module):
    """c_proj(act(c_fc(x))) with act = GELU; `Relu2MLP` swaps in relu(x)**2."""

    def __init__(self, dim: int, hidden: int, bias: bool = False, dropout: float = 0.0):
        super().__init__()
        self.c_fc = nn.Linear(dim, hidden, bias=bias)
        self.c_proj = nn.Linear(hidden, dim, bias=bias)
        self.c_proj.residual_proj = True
        self.dropout = nn.Dropout(dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(self.act(self.c_fc(x)))), {}

    @staticmethod
    def act(h):
        return F.gelu(h)


class Relu2MLP(GeluMLP):
    @staticmethod
    def act(h):
        return F.relu(h).square()


class SwiGLU(nn.Module):
    def __init__(self, dim: int, hidden: int, bias: bool = False, dropout: float = 0.0):
        super().__init__()
        self.w1 = nn.Linear(dim, hidden, bias=bias)  # gate
        self.w3 = nn.Linear(dim, hidden, bias=bias)  # up
        self.c_proj = nn.Linear(hidden, dim, bias=bias)  # down
        self.c_proj.residual_proj = True
        self.dropout = nn.Dropout(dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(F.silu(self.w1(x)) * self.w3(x))), {}


def make_dense_mlp(kind: str, dim: int, hidden: int, bias: bool, dropout: float) -> nn.Module:
    cls = {"swiglu": SwiGLU, "relu2": Relu2MLP, "gelu": GeluMLP}[kind]
    return cls(dim, hidden, bias, dropout)
