"""The identity of the val sets a run is evaluated on, recorded in summary.json (`keys.VAL_SETS`) so that `compare`
ranks only runs evaluated on the same tokens.

`val_set_identities(cfg, manifest, n_val_tokens)` -> {"fixed": ..., "final": ...}: one identity for the periodic
evals (the first `eval_tokens` of the val split, in windows of `sequence_length`) and one for the final eval (the
prefix of the split it scored: training/final_eval.py; under `none` the last periodic eval's set). Before the final
eval has run, the final identity is the planned prefix's.
An identity is {val_sha256 (SHA-256 of the val token file), tokenizer, sequence_length, tokens (the targets
evaluated: windows x sequence_length, `data.loader.n_val_windows`), covers ("full split", "fixed set" or "val
prefix")}. Two evals
with equal val_sha256, tokenizer, sequence_length and tokens score the same tokens (`IDENTITY_KEYS`); `covers`
only describes the set.
"""

from __future__ import annotations

from typing import Optional

from ..data.loader import n_val_windows

IDENTITY_KEYS = ("val_sha256", "tokenizer", "sequence_length", "tokens")
FULL, FIXED, PREFIX = "full split", "fixed set", "val prefix"


def val_set_identity(manifest, seq_len: int, n_val_tokens: int, max_tokens: Optional[int],
                     fixed_tokens: Optional[int] = None) -> dict:
    """The identity of the val windows `data.loader.val_batches(tokens, seq_len, ..., max_tokens)` evaluates
    (`fixed_tokens`: the run's --eval_tokens, to describe a prefix of that size as the fixed set)."""
    windows = n_val_windows(n_val_tokens, seq_len, max_tokens)
    if windows == n_val_windows(n_val_tokens, seq_len):
        covers = FULL
    elif fixed_tokens is None or windows == n_val_windows(n_val_tokens, seq_len, fixed_tokens):
        covers = FIXED
    else:
        covers = PREFIX
    return {"val_sha256": str((getattr(manifest, "sha256", None) or {}).get("val", "")),
            "tokenizer": str(getattr(manifest, "tokenizer", "")), "sequence_length": int(seq_len),
            "tokens": int(windows * seq_len), "covers": covers}


def val_set_identities(cfg, manifest, n_val_tokens: int, final_windows: Optional[int]) -> dict:
    """{"fixed": identity of the periodic evals, "final": identity of the final eval's first `final_windows` windows
    (None: no final eval, the last periodic eval's set)} of a run with config `cfg`."""
    seq, fixed_tokens = cfg.model.sequence_length, cfg.train.eval_tokens
    fixed = val_set_identity(manifest, seq, n_val_tokens, fixed_tokens)
    final = (val_set_identity(manifest, seq, n_val_tokens, final_windows * seq, fixed_tokens) if final_windows
             else dict(fixed))
    return {"fixed": fixed, "final": final}
