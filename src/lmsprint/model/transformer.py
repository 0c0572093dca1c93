"""The one decoder-only Transformer. GPT-2 (`base`) and Llama-2 (`llama2`) are presets choosing its parts.

Parts chosen by `ModelConfig`: norm (LayerNorm/RMSNorm), positions (learned/RoPE), attention (see
attention.py: the attention masks of all layers are built once per forward, `attention.AttentionMasks`, and passed
to each block), feed-forward (GELU MLP / ReLU² / SwiGLU / MoE, see mlp.py and moe.py). Weights are tied by default;
`zero_init_proj` starts the residual projections (and an untied head) at zero; `logit_softcap C` makes the
output logits C*tanh(logits/C) (`softcap`, read by the loss and by generation).

Interface:
- `Transformer(cfg)(idx) -> (hidden, aux)`: final-normed hidden states (B, T, d) and a dict of auxiliary
  tensors from MoE layers ({} for dense models): `aux["loss"]` is the weighted sum to add to the training
  loss; other keys (`moe/...`) are statistics for logging. The output head lives in `head_weight`; the loss
  (label smoothing, chunking) is computed outside, in `lmsprint.model.loss`.
- `logits(idx)`: convenience for generation/eval of small batches.
- `num_params()` / `num_active_params()` count as llm-baselines does (tied embedding once, learned positions
  included); `flops_per_token()` counts active matmul FLOPs of a training step (fwd+bwd) per token.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from ..config import ModelConfig
from .attention import Attention, AttentionMasks
from .layers import make_norm, rope_cache
from .loss import softcap_logits
from .mlp import make_dense_mlp
from .moe import MoE


def make_ffn(cfg: ModelConfig, layer_idx: int) -> nn.Module:
    if cfg.is_moe_layer(layer_idx):
        return MoE(cfg)
    return make_dense_mlp(cfg.mlp_kind, cfg.n_embd, cfg.mlp_hidden, cfg.bias, cfg.dropout)


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__()
        self.ln_1 = make_norm(cfg.norm_kind, cfg.n_embd, cfg.bias, cfg.rmsnorm_eps)
        self.attn = Attention(cfg, layer_idx)
        self.ln_2 = make_norm(cfg.norm_kind, cfg.n_embd, cfg.bias, cfg.rmsnorm_eps)
        self.mlp = make_ffn(cfg, layer_idx)

    def forward(self, x, rope=None, mask=None):
        x = x + self.attn(self.ln_1(x), rope, mask)
        h, aux = self.mlp(self.ln_2(x))
        return x + h, aux


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.wpe = nn.Embedding(cfg.sequence_length, cfg.n_embd) if cfg.pos_kind == "learned" else None
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layer))
        self.ln_f = make_norm(cfg.norm_kind, cfg.n_embd, cfg.bias, cfg.rmsnorm_eps)
        self.lm_head = None if cfg.tie_embeddings else nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.attn_masks = AttentionMasks(cfg)  # which layers share which attention mask (attention.py)
        if cfg.pos_kind == "rope":
            cos, sin = rope_cache(cfg.sequence_length, cfg.head_dim, cfg.rope_theta)
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
        self.reset_parameters()

    # ------------------------------------------------------------------ init
    def reset_parameters(self):
        """N(0, 0.02) everywhere; residual projections N(0, 0.02/sqrt(2 n_layer)) (GPT-2 / llm-baselines), or zero
        with `zero_init_proj` (then an untied head starts at zero too, as in modded-nanogpt)."""
        std_resid = 0.0 if self.cfg.zero_init_proj else 0.02 / math.sqrt(2 * self.cfg.n_layer)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                zero_head = m is self.lm_head and self.cfg.zero_init_proj
                std = std_resid if getattr(m, "residual_proj", False) else 0.0 if zero_head else 0.02
                nn.init.normal_(m.weight, 0.0, std)  # std 0 -> zeros
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Embedding):
                nn.init.normal_(m.weight, 0.0, 0.02)
            elif hasattr(m, "reset_expert_parameters"):
                m.reset_expert_parameters(std=0.02, std_resid=std_resid)

    # ------------------------------------------------------------------ forward
    @property
    def softcap(self) -> float:
        return self.cfg.logit_softcap

    @property
    def head_weight(self) -> torch.Tensor:
        return self.wte.weight if self.lm_head is None else self.lm_head.weight

    def forward(self, idx: torch.Tensor):
        B, T = idx.shape
        x = self.wte(idx)
        rope = None
        if self.wpe is not None:
            x = x + self.wpe(torch.arange(T, device=idx.device))
        else:
            rope = (self.rope_cos[:T], self.rope_sin[:T])
        x = self.drop(x)
        # every layer's attention mask, built once for this forward (None: plain causal attention)
        masks = self.attn_masks(T, idx.device, dropout=self.training and self.cfg.dropout > 0,
                                grad=torch.is_grad_enabled() and self.wte.weight.requires_grad)
        auxes = []
        for block, mask in zip(self.blocks, masks):
            x, aux = block(x, rope, mask)
            if aux:
                auxes.append(aux)
        return self.ln_f(x), merge_aux(auxes)

    def logits(self, idx: torch.Tensor) -> torch.Tensor:
        h, _ = self(idx)
        return softcap_logits(h @ self.head_weight.t(), self.softcap)

    # ------------------------------------------------------------------ accounting
    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def num_active_params(self) -> int:
        inactive = sum(m.inactive_params() for m in self.modules() if hasattr(m, "inactive_params"))
        return self.num_params() - inactive

    def flops_per_token(self) -> float:
        """Training FLOPs per token (fwd + bwd): 6 * active non-embedding matmul params + head, + attention."""
        c = self.cfg
        n = self.num_active_params() - self.wte.weight.numel() - (self.wpe.weight.numel() if self.wpe else 0)
        n += c.vocab_size * c.n_embd  # output head matmul
        attn = 12 * c.n_layer * c.n_embd * c.sequence_length / 2  # causal: half of the score/value matmuls
        return 6 * n + attn


def merge_aux(auxes: list[dict]) -> dict:
    """Per-layer aux dicts -> one dict: 'loss' and scalar '*_loss' summed over layers, other stats stacked."""
    if not auxes:
        return {}
    out = {}
    for key in auxes[0]:
        vals = [a[key] for a in auxes]
        out[key] = torch.stack(vals).sum(0) if key == "loss" or key.endswith("_loss") else torch.stack(vals)
    return out
