"""Validation metrics from plain cross-entropy sums: val/loss, val/perplexity, val/acc, val/bpb.

`evaluate(model, batches, token_bytes, device, ctx, world)` runs the model over `batches` (an iterable of
(x, y) CPU tensors, e.g. `lmsprint.data.loader.val_batches`), sums plain CE, correct argmax predictions, token
count and the UTF-8 bytes of the target tokens, all-reduces the sums across processes, and returns
`{val/loss, val/perplexity, val/acc, val/bpb, eval_tokens}`. bpb = ce_sum / ln(2) / target_bytes. The same in two
parts: `eval_sums(...)` (the all-reduced sums, which add up over consecutive pieces of the val split: the final
eval's nested prefixes) and `val_metrics(sums)`.
The model is put in eval mode under no_grad (`inference=True`: torch.inference_mode, for an evaluation after which
the model is not trained again) and its previous mode is restored afterwards.
"""

from __future__ import annotations

import contextlib
import math
from typing import Callable, Iterable, Optional

import numpy as np
import torch

from ..data.loader import to_device
from ..model.loss import lm_loss
from .. import keys
from ..hw import unwrap
from .distributed import World, all_reduce_sum


def evaluate(model: torch.nn.Module, batches: Iterable, token_bytes: Optional[np.ndarray], device: str,
             ctx=None, world: Optional[World] = None, inference: bool = False) -> dict:
    """The val metrics of `model` over `batches` (see the module doc)."""
    return val_metrics(eval_sums(model, batches, token_bytes, device, ctx, world, inference))


def eval_sums(model: torch.nn.Module, batches: Iterable, token_bytes: Optional[np.ndarray], device: str,
              ctx=None, world: Optional[World] = None, inference: bool = False,
              stop: Optional[Callable[[], bool]] = None) -> torch.Tensor:
    """[ce_sum, correct, tokens, target_bytes] over `batches`, summed over processes (float64, on `device`).
    `stop()`, asked before each batch, ends the loop early when it returns true (the caller then discards the sums:
    a stop signal during a long eval)."""
    world = world or World(device=device)
    ctx = ctx if ctx is not None else contextlib.nullcontext()
    head_owner = unwrap(model)
    was_training = model.training
    model.eval()
    tb = torch.as_tensor(np.asarray(token_bytes), dtype=torch.int64, device=device) if token_bytes is not None \
        else None
    sums = torch.zeros(4, dtype=torch.float64, device=device)  # ce_sum, correct, n, bytes
    try:
        # inference mode is faster than no_grad, but tensors a model caches under it (e.g. flex block masks) could
        # not be used in training afterwards: only for evaluations after which the model does not train again
        with torch.inference_mode() if inference else torch.no_grad():
            for x, y in batches:
                if stop is not None and stop():
                    break
                x, y = to_device(x, y, device)
                with ctx:
                    hidden, _ = model(x)
                out = lm_loss(hidden, head_owner.head_weight, y, softcap=head_owner.softcap)
                sums[0] += out.ce_sum.double()
                sums[1] += out.correct.double()
                sums[2] += out.n
                if tb is not None:
                    sums[3] += tb[y].sum().double()
    finally:
        model.train(was_training)
    all_reduce_sum(sums, world)
    return sums


def val_metrics(sums: torch.Tensor) -> dict:
    """{val/loss, val/perplexity, val/acc, val/bpb, eval_tokens} of `eval_sums`' [ce_sum, correct, n, bytes]."""
    ce_sum, correct, n, nbytes = sums.tolist()
    if n == 0:
        return {**{k: float("nan") for k in keys.VAL_KEYS}, keys.EVAL_TOKENS: 0}
    loss = ce_sum / n
    return {
        keys.VAL_LOSS: loss,
        keys.VAL_PPL: math.exp(min(loss, 700.0)),
        keys.VAL_ACC: correct / n,
        keys.VAL_BPB: ce_sum / math.log(2) / nbytes if nbytes > 0 else float("nan"),
        keys.EVAL_TOKENS: int(n),
    }
