"""The identity of the val sets a run is evaluated on, recorded in summary.json (`keys.VAL_SETS`) so that `compare`
ranks only runs evaluated on the same tokens.

`val_set_identities(cfg, manifest, n_val_tokens)` -> {"fixed": ..., "final": ...}: one identity for the periodic
evals (the first `eval_tokens` of the val split, in windows of `sequence_length`) and one for the final eval (the
whole split under `--final_eval full`, the fixed set under `fixed`, and under `none` the last periodic eval's set).
An identity is {val_sha256 (SHA-256 of the val token file), tokenizer, sequence_length, tokens (the targets
evaluated: windows x sequence_length, `data.loader.n_val_windows`), covers ("full split" or "fixed set")}. Two evals
with equal val_sha256, tokenizer, sequence_length and tokens score the same tokens (`IDENTITY_KEYS`); `covers`
only describes the set.
"""

from __future__ import annotations

from typing import Optional

from ..data.loader import n_val_windows

IDENTITY_KEYS = ("val_sha256", "tokenizer", "sequence_length", "tokens")
FULL, FIXED = "full split", "fixed set"


def val_set_identity(manifest, seq_len: int, n_val_tokens: int, max_tokens: Optional[int]) -> dict:
    """The identity of the val windows `data.loader.val_batches(tokens, seq_len, ..., max_tokens)` evaluates."""
    windows = n_val_windows(n_val_tokens, seq_len, max_tokens)
    covers = FULL if windows == n_val_windows(n_val_tokens, seq_len) else FIXED
    return {"val_sha256": str((getattr(manifest, "sha256", None) or {}).get("val", "")),
            "tokenizer": str(getattr(manifest, "tokenizer", "")), "sequence_length": int(seq_len),
            "tokens": int(windows * seq_len), "covers": covers}


def val_set_identities(cfg, manifest, n_val_tokens: int) -> dict:
    """{"fixed": identity of the periodic evals, "final": identity of the final eval} of a run with config `cfg`."""
    seq = cfg.model.sequence_length
    fixed = val_set_identity(manifest, seq, n_val_tokens, cfg.train.eval_tokens)
    final = val_set_identity(manifest, seq, n_val_tokens, None) if cfg.train.final_eval == "full" else dict(fixed)
    return {"fixed": fixed, "final": final}
