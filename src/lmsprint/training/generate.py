"""Autoregressive sampling from a Transformer: temperature, top-k, a private seeded generator.

`generate_tokens(model, idx, max_new_tokens, temperature, top_k, generator)` extends a (B, T) batch of token ids,
cropping the context to the model's sequence_length. `samples(model, tokenizer, prompt, ...)` does the
encode -> generate -> decode round trip and says of each sample whether it ended at the end-of-text token
(`Sample`); `sample_text(...)` returns the texts alone. Sampling draws only from its own `torch.Generator`, so generating a
sample during training never changes the training RNG stream (resumed runs stay bit-identical).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from ..hw import unwrap
from ..model.loss import softcap_logits


@torch.no_grad()
def generate_tokens(model: torch.nn.Module, idx: torch.Tensor, max_new_tokens: int, temperature: float = 0.8,
                    top_k: Optional[int] = 200, generator: Optional[torch.Generator] = None,
                    eot: Optional[int] = None, ctx=None, vocab_limit: Optional[int] = None) -> torch.Tensor:
    m = unwrap(model)
    was_training = m.training
    m.eval()
    seq_len = m.cfg.sequence_length
    try:
        for _ in range(max_new_tokens):
            cond = idx[:, -seq_len:]
            if ctx is not None:
                with ctx:
                    hidden, _ = m(cond)
            else:
                hidden, _ = m(cond)
            logits = softcap_logits((hidden[:, -1, :] @ m.head_weight.t()).float(), m.softcap)
            if vocab_limit is not None:
                logits = logits[:, :vocab_limit]  # never sample the embedding's padding rows
            if temperature <= 0:
                nxt = logits.argmax(-1, keepdim=True)
            else:
                logits = logits / temperature
                if top_k is not None and 0 < top_k < logits.shape[-1]:
                    kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
                    logits = logits.masked_fill(logits < kth, float("-inf"))
                probs = torch.softmax(logits, dim=-1)
                nxt = torch.multinomial(probs, 1, generator=generator)
            idx = torch.cat([idx, nxt], dim=1)
            if eot is not None and idx.shape[0] == 1 and int(nxt) == eot:
                break
    finally:
        m.train(was_training)
    return idx


@dataclass
class Sample:
    """One generated continuation: its text (prompt included), the tokens generated (an end-of-text token
    included), and whether it ended at the end-of-text token before `max_new_tokens`."""

    text: str
    new_tokens: int
    stopped_at_eot: bool


def sample_text(model: torch.nn.Module, tokenizer, prompt: str, max_new_tokens: int = 100,
                temperature: float = 0.8, top_k: Optional[int] = 200, seed: int = 0, device: str = "cpu",
                num_samples: int = 1, ctx=None) -> list[str]:
    """Generate `num_samples` continuations of `prompt`; returns the decoded texts (prompt included)."""
    return [s.text for s in samples(model, tokenizer, prompt, max_new_tokens, temperature, top_k, seed, device,
                                    num_samples, ctx)]


def samples(model: torch.nn.Module, tokenizer, prompt: str, max_new_tokens: int = 100,
            temperature: float = 0.8, top_k: Optional[int] = 200, seed: int = 0, device: str = "cpu",
            num_samples: int = 1, ctx=None) -> list[Sample]:
    """`num_samples` continuations of `prompt` (see `Sample`)."""
    ids = tokenizer.encode(prompt) if prompt else []
    if not ids:
        ids = [tokenizer.eot if tokenizer.eot is not None else 0]
    vocab = min(unwrap(model).cfg.vocab_size, tokenizer.n_vocab)
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    out = []
    for _ in range(num_samples):
        idx = torch.tensor([ids], dtype=torch.long, device=device)
        res = generate_tokens(model, idx, max_new_tokens, temperature, top_k, gen, eot=tokenizer.eot, ctx=ctx,
                              vocab_limit=vocab)
        new = res[0, len(ids):].tolist()
        stopped = bool(new) and tokenizer.eot is not None and new[-1] == tokenizer.eot and len(new) < max_new_tokens
        toks = [t for t in res[0].tolist() if t < vocab and t != tokenizer.eot]
        out.append(Sample(tokenizer.decode(toks), len(new), stopped))
    return out
