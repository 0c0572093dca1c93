"""The language-model loss, in one place: output head + cross-entropy, label smoothing, the metrics it yields.

`lm_loss(hidden, head_weight, targets, label_smoothing, chunk, softcap)` returns a `LossOut`:
- `loss`: the training objective (mean over tokens, label-smoothed if asked) -- add MoE aux losses to it;
- `ce_sum`: plain (unsmoothed) cross-entropy summed over tokens, detached -- what val loss/ppl/bpb report;
- `correct`: number of tokens whose argmax prediction equals the target, detached;
- `n`: number of tokens.
Reported metrics are always the plain cross-entropy, so smoothed, MoE and dense runs compare.

Memory: the head + cross-entropy is computed in chunks of `chunk` tokens (0 = `auto_chunk`), so the full
(N, V) float32 logits never exist at once, neither in forward nor in backward. With gradients enabled a
custom autograd Function computes, chunk by chunk, the logits, the loss terms and directly the gradients
w.r.t. the hidden states and the head weight (the same three matmuls as unchunked forward+backward, no
recomputation); backward only scales these saved gradients by the incoming scalar. Without gradients
(evaluation) it is a plain chunked loop. `loss_peak_bytes()` documents the resulting peak.

Label smoothing follows `F.cross_entropy(label_smoothing=eps)`: (1-eps)*CE + eps*mean_j(-log_softmax_j).

Logit soft-capping (`softcap` C > 0, modded-nanogpt / Gemma 2): the logits are C*tanh(z/C) everywhere (training
objective, reported CE and accuracy, generation via `softcap_logits`); the chunked backward multiplies the logit
gradient by dC*tanh(z/C)/dz = 1 - (capped/C)^2.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

CUDA_CHUNK = 8192  # tokens per chunk on CUDA: 8192 x 50304 fp32 logits = 1.6 GB transient
CPU_WHOLE_BYTES = 64 * 2**20  # on CPU, no chunking while the full fp32 logits stay under this size


@dataclass
class LossOut:
    loss: torch.Tensor
    ce_sum: torch.Tensor
    correct: torch.Tensor
    n: int


def auto_chunk(n_tokens: int, vocab: int, device_type: str) -> int:
    """Tokens per chunk for `chunk=0`: 8192 on CUDA; on CPU the whole batch while its logits are small."""
    if device_type != "cpu":
        return min(n_tokens, CUDA_CHUNK)
    if n_tokens * vocab * 4 <= CPU_WHOLE_BYTES:
        return n_tokens
    return max(1, min(n_tokens, CPU_WHOLE_BYTES // (4 * vocab)))


def loss_peak_bytes(n_tokens: int, vocab: int, chunk: int, n_embd: int = 0, itemsize: int = 4) -> int:
    """Expected peak of the loss's own memory (bytes) during a training forward + backward, beyond its inputs.

    Chunked (this module, chunk c < N): at any time one chunk's fp32 logits and one (c, V) fp32 buffer that
    becomes the softmax and then the logit gradient are alive -> 2 * c * V * 4 bytes, plus the gradients kept
    for backward: d hidden (N, d) in the compute dtype and d head (V, d) in fp32.
    Unchunked (chunk >= N, or `F.cross_entropy` on full logits): the (N, V) logits and log-softmax are both
    saved for backward -> 2 * N * V * 4 bytes, and backward builds another (N, V) gradient on top of them.
    """
    c = min(chunk or n_tokens, n_tokens)
    transient = 2 * c * vocab * 4
    saved = n_tokens * n_embd * itemsize + vocab * n_embd * 4
    if c >= n_tokens:
        return 3 * n_tokens * vocab * 4
    return transient + saved


def softcap_logits(logits: torch.Tensor, cap: float) -> torch.Tensor:
    """cap * tanh(logits / cap); the identity for cap <= 0."""
    return cap * torch.tanh(logits / cap) if cap > 0 else logits


def _chunk_stats(logits: torch.Tensor, t: torch.Tensor, eps: float):
    """fp32 logits (c, V), targets (c,) -> (lse, target logit, smoothed-loss sum, ce sum, correct count)."""
    lse = torch.logsumexp(logits, dim=-1)
    zt = logits.gather(1, t.unsqueeze(1)).squeeze(1)
    ce = lse - zt
    ce_sum = ce.sum()
    if eps > 0:
        smooth = lse - logits.mean(dim=-1)
        obj = ((1.0 - eps) * ce + eps * smooth).sum()
    else:
        obj = ce_sum
    correct = (logits.argmax(dim=-1) == t).sum()
    return lse, obj, ce_sum, correct


def _bounds(n: int, chunk: int):
    return [(s, min(s + chunk, n)) for s in range(0, n, chunk)]


class _ChunkedLinearCE(torch.autograd.Function):
    """Chunked head matmul + cross-entropy whose forward also produces the input gradients (no (N, V) saved)."""

    @staticmethod
    def forward(ctx, h, w, t, eps: float, chunk: int, cdtype: torch.dtype, cap: float = 0.0):
        n, vocab = h.shape[0], w.shape[0]
        hc, wc = h.to(cdtype), w.to(cdtype)
        grad_h = torch.empty(h.shape, dtype=cdtype, device=h.device)
        grad_w = torch.zeros(w.shape, dtype=torch.float32, device=w.device)
        obj = torch.zeros((), dtype=torch.float32, device=h.device)
        ce_sum = torch.zeros((), dtype=torch.float32, device=h.device)
        correct = torch.zeros((), dtype=torch.int64, device=h.device)
        for s, e in _bounds(n, chunk):
            hs, ts = hc[s:e], t[s:e]
            logits = softcap_logits((hs @ wc.t()).float(), cap)
            lse, o, c_sum, corr = _chunk_stats(logits, ts, eps)
            dcap = 1.0 - (logits / cap).square() if cap > 0 else None
            obj = obj + o
            ce_sum = ce_sum + c_sum
            correct = correct + corr
            # d(sum of per-token objective)/d logits = softmax - (1-eps)*onehot - eps/V, computed in place;
            # the 1/n of the mean is applied in backward: g/n in float16 would underflow (p/n < 6e-8)
            g = logits.sub_(lse.unsqueeze(1)).exp_()
            if eps > 0:
                g.sub_(eps / vocab)
            g.scatter_add_(1, ts.unsqueeze(1), torch.full((e - s, 1), -(1.0 - eps), dtype=g.dtype, device=g.device))
            if dcap is not None:
                g.mul_(dcap)
            g = g.to(cdtype)
            grad_h[s:e] = g @ wc
            grad_w += (g.t() @ hs).float()
        ctx.save_for_backward(grad_h, grad_w)
        ctx.h_dtype, ctx.w_dtype, ctx.n = h.dtype, w.dtype, n
        ctx.mark_non_differentiable(ce_sum, correct)
        return obj / n, ce_sum, correct

    @staticmethod
    def backward(ctx, grad_loss, _g_ce, _g_correct):
        grad_h, grad_w = ctx.saved_tensors
        scale = grad_loss.float() / ctx.n
        gh = (grad_h.float() * scale).to(ctx.h_dtype) if ctx.needs_input_grad[0] else None
        gw = (grad_w * scale).to(ctx.w_dtype) if ctx.needs_input_grad[1] else None
        return gh, gw, None, None, None, None, None


def _compute_dtype(h: torch.Tensor, w: torch.Tensor) -> torch.dtype:
    """The matmul dtype: autocast's (bf16 on CUDA runs) if autocast is on, else the inputs' promoted dtype."""
    dt = h.device.type
    if torch.is_autocast_enabled(dt):
        return torch.get_autocast_dtype(dt)
    return torch.promote_types(h.dtype, w.dtype)


def lm_loss(hidden: torch.Tensor, head_weight: torch.Tensor, targets: torch.Tensor, label_smoothing: float = 0.0,
            chunk: int = 0, softcap: float = 0.0) -> LossOut:
    h = hidden.reshape(-1, hidden.shape[-1])
    t = targets.reshape(-1)
    n, vocab = t.numel(), head_weight.shape[0]
    chunk = chunk if chunk > 0 else auto_chunk(n, vocab, h.device.type)
    cdtype = _compute_dtype(h, head_weight)
    eps = float(label_smoothing)
    if torch.is_grad_enabled() and (h.requires_grad or head_weight.requires_grad):
        loss, ce_sum, correct = _ChunkedLinearCE.apply(h, head_weight, t, eps, chunk, cdtype, float(softcap))
        return LossOut(loss=loss, ce_sum=ce_sum.detach(), correct=correct.detach(), n=n)
    return _lm_loss_nograd(h, head_weight, t, eps, chunk, cdtype, float(softcap))


def _lm_loss_nograd(h, w, t, eps: float, chunk: int, cdtype: torch.dtype, cap: float = 0.0) -> LossOut:
    n = t.numel()
    hc, wc = h.to(cdtype), w.to(cdtype)
    obj = torch.zeros((), dtype=torch.float32, device=h.device)
    ce_sum = torch.zeros((), dtype=torch.float32, device=h.device)
    correct = torch.zeros((), dtype=torch.int64, device=h.device)
    for s, e in _bounds(n, chunk):
        logits = softcap_logits((hc[s:e] @ wc.t()).float(), cap)
        _, o, c_sum, corr = _chunk_stats(logits, t[s:e], eps)
        obj, ce_sum, correct = obj + o, ce_sum + c_sum, correct + corr
    return LossOut(loss=obj / n, ce_sum=ce_sum, correct=correct, n=n)


def reference_lm_loss(hidden: torch.Tensor, head_weight: torch.Tensor, targets: torch.Tensor,
                      label_smoothing: float = 0.0, softcap: float = 0.0) -> LossOut:
    """The unchunked definition (full logits + `F.cross_entropy`), kept as the reference for tests and benches."""
    h = hidden.reshape(-1, hidden.shape[-1])
    t = targets.reshape(-1)
    logits = softcap_logits((h @ head_weight.t()).float(), softcap)
    ce = F.cross_entropy(logits, t, reduction="sum")
    loss = F.cross_entropy(logits, t, label_smoothing=label_smoothing) if label_smoothing > 0 else ce / t.numel()
    correct = (logits.argmax(-1) == t).sum()
    return LossOut(loss=loss, ce_sum=ce.detach(), correct=correct.detach(), n=t.numel())
