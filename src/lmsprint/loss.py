"""The language-model loss, in one place: output head + cross-entropy, label smoothing, the metrics it yields.

`lm_loss(hidden, head_weight, targets, label_smoothing, chunk)` returns a `LossOut`:
- `loss`: the training objective (mean over tokens, label-smoothed if asked) -- add MoE aux losses to it;
- `ce_sum`: plain (unsmoothed) cross-entropy summed over tokens, detached -- what val loss/ppl/bpb report;
- `correct`: number of tokens whose argmax prediction equals the target, detached;
- `n`: number of tokens.
Reported metrics are always the plain cross-entropy, so smoothed, MoE and dense runs compare.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class LossOut:
    loss: torch.Tensor
    ce_sum: torch.Tensor
    correct: torch.Tensor
    n: int


def lm_loss(hidden: torch.Tensor, head_weight: torch.Tensor, targets: torch.Tensor, label_smoothing: float = 0.0,
            chunk: int = 0) -> LossOut:
    h = hidden.reshape(-1, hidden.shape[-1])
    t = targets.reshape(-1)
    logits = (h @ head_weight.t()).float()
    ce = F.cross_entropy(logits, t, reduction="sum")
    if label_smoothing > 0:
        loss = F.cross_entropy(logits, t, label_smoothing=label_smoothing)
    else:
        loss = ce / t.numel()
    correct = (logits.argmax(-1) == t).sum()
    return LossOut(loss=loss, ce_sum=ce.detach(), correct=correct.detach(), n=t.numel())
