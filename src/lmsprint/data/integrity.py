"""Is a prepared data directory what its manifest says? Field validation and token-file verification.

- `validate_fields(d, path)`: every field of a manifest dict read from disk has its type and a consistent value
  (format version, tokenizer and `n_vocab`, `dtype` = the narrowest of uint16/uint32 that holds `n_vocab`, the char
  vocabulary, token counts, hashes); a wrong one is a one-line DataError naming the field.
- `token_file_facts(path, dtype)` at prepare time: the token file's SHA-256, its largest id and the SHA-256 of
  `N_BLOCKS` sampled blocks of `BLOCK_BYTES` at fixed, evenly spaced offsets (first and last block included).
- `verify_token_file(...)` when a run opens the data: the size, then the sampled blocks (hash and largest id), and
  the full SHA-256 when the file is at most `FULL_CHECK_BYTES` (or when asked: `lmsprint prepare --verify`).
  Reading 32 blocks of 64 KiB costs a few milliseconds whatever the file's size; the full hash runs at the disk's
  or SHA-256's speed (about 0.1-1 GB/s), which is why it is reserved for small files and `--verify`.
"""

from __future__ import annotations

import hashlib
import os
import re
from typing import Optional

import numpy as np

from ..errors import DataError

BLOCK_BYTES = 64 * 2**10
N_BLOCKS = 32
FULL_CHECK_BYTES = 32 * 2**20  # token files up to this size are hashed in full each time they are opened
DTYPES = ("uint16", "uint32")
SPLITS = ("train", "val")
_HEX64 = re.compile(r"[0-9a-f]{64}")


def token_dtype(n_vocab: int) -> str:
    return "uint16" if n_vocab <= 65535 else "uint32"


# ------------------------------------------------------------------------------------------------ token files

def block_offsets(size: int) -> list[int]:
    """Byte offsets of the sampled blocks of a file of `size` bytes (evenly spaced, first and last included)."""
    if size <= BLOCK_BYTES:
        return [0] if size else []
    n = min(N_BLOCKS, -(-size // BLOCK_BYTES))
    last = size - BLOCK_BYTES
    return sorted({round(i * last / (n - 1)) // 4 * 4 for i in range(n)})


def _read_block(fh, offset: int) -> bytes:
    fh.seek(offset)
    return fh.read(BLOCK_BYTES)


def sample_blocks(path: str) -> dict:
    size = os.path.getsize(path)
    offsets = block_offsets(size)
    with open(path, "rb") as fh:
        hashes = [hashlib.sha256(_read_block(fh, o)).hexdigest() for o in offsets]
    return {"bytes": BLOCK_BYTES, "offsets": offsets, "sha256": hashes}


class Hasher:
    """SHA-256 and largest id of a token file written chunk by chunk (chunks hold whole tokens)."""

    def __init__(self, dtype: str):
        self.dtype = np.dtype(dtype)
        self.sha = hashlib.sha256()
        self.max_id = -1

    def update(self, chunk: bytes) -> None:
        self.sha.update(chunk)
        if chunk:
            self.max_id = max(self.max_id, int(np.frombuffer(chunk, dtype=self.dtype).max()))


def _read_through(path: str, h) -> None:
    """Feed the whole file to `h.update` in 16 MiB chunks."""
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(16 * 2**20), b""):
            h.update(chunk)


def token_file_facts(path: str, dtype: str) -> tuple[str, int, dict]:
    """(sha256, largest id, sampled blocks) of a token file, read in full."""
    h = Hasher(dtype)
    _read_through(path, h)
    return h.sha.hexdigest(), h.max_id, sample_blocks(path)


def file_sha256(path: str) -> str:
    h = hashlib.sha256()
    _read_through(path, h)
    return h.hexdigest()


def _changed(split: str, path: str, how: str, hint: str) -> DataError:
    return DataError(f"{split} token file {path} {how}: its bytes changed since it was prepared; {hint}")


def verify_token_file(split: str, path: str, dtype: str, n_vocab: int, sha256: str, max_id: Optional[int],
                      blocks: Optional[dict], full: Optional[bool], hint: str) -> None:
    """Sampled blocks (hash and ids) always; the full SHA-256 when `full`, or when None and the file is small."""
    size = os.path.getsize(path)
    if blocks:
        if blocks.get("offsets") != block_offsets(size) or blocks.get("bytes") != BLOCK_BYTES:
            raise _changed(split, path, "has other sampled blocks than its manifest records", hint)
        dt = np.dtype(dtype)
        with open(path, "rb") as fh:
            for off, want in zip(blocks["offsets"], blocks["sha256"]):
                data = _read_block(fh, off)
                if hashlib.sha256(data).hexdigest() != want:
                    raise _changed(split, path, f"differs from its manifest in the block at byte offset {off:,}", hint)
                top = int(np.frombuffer(data[:len(data) // dt.itemsize * dt.itemsize], dtype=dt).max(initial=0))
                if top >= n_vocab or (max_id is not None and top > max_id):
                    raise DataError(f"{split} token file {path} holds token id {top} at byte offset >= {off:,}, "
                                    f"outside the vocabulary of {n_vocab} ids; {hint}")
    if full or (full is None and size <= FULL_CHECK_BYTES):
        if file_sha256(path) != sha256:
            raise _changed(split, path, "does not match the SHA-256 in its manifest", hint)


# ------------------------------------------------------------------------------------------------ fields

def _bad(path: str, field: str, value, why: str, hint: str) -> DataError:
    shown = repr(value) if not isinstance(value, str) or len(value) < 40 else repr(value[:37] + "...")
    return DataError(f"{path}: field '{field}' is {shown}, {why}; the manifest was edited or is damaged: {hint}")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def validate_fields(d: dict, path: str, version: int, hint: str, gpt2_n_vocab: int) -> None:
    """Every field of manifest dict `d` (read from `path`): type and consistency; DataError naming the field."""
    def need(field, ok, why):
        if not ok:
            raise _bad(path, field, d.get(field), why, hint)

    v = d.get("version", 1)
    if v != version:
        if _is_int(v) and v < version:
            raise DataError(f"{os.path.dirname(path)} holds data prepared by an older lmsprint (data format {v}; this "
                            f"one reads format {version}, whose val split and checks differ); {hint}")
        need("version", False, f"not a data format this lmsprint reads ({version})")
    for f in ("source", "tokenizer", "dtype", "train_path", "val_path", "created", "dataset"):
        need(f, isinstance(d.get(f), str) and (f in ("dataset", "created") or d.get(f)), "not a non-empty string")
    for f in ("n_vocab", "train_tokens", "val_tokens", "train_bytes", "val_bytes", "train_docs", "val_docs", "docs",
              "max_docs"):
        need(f, _is_int(d.get(f)) and d.get(f) >= 0, "not a whole number >= 0")
    need("n_vocab", d["n_vocab"] > 0, "not a vocabulary size")
    for f in ("train_tokens", "val_tokens"):
        need(f, d[f] > 0, "an empty split")
    tok = d["tokenizer"]
    if tok == "gpt2":
        need("n_vocab", d["n_vocab"] == gpt2_n_vocab, f"but the gpt2 tokenizer has {gpt2_n_vocab} ids")
        need("eot", d.get("eot") == gpt2_n_vocab - 1, f"but gpt2's <|endoftext|> is {gpt2_n_vocab - 1}")
    if tok == "char":
        vocab = d.get("vocab")
        need("vocab", isinstance(vocab, str) and vocab and len(set(vocab)) == len(vocab),
             "not the char tokenizer's characters (a string of distinct characters)")
        need("n_vocab", d["n_vocab"] == len(vocab), f"but the char vocabulary has {len(vocab)} characters")
        need("eot", d.get("eot") is None, "but the char tokenizer has no separator")
    else:
        need("vocab", d.get("vocab") is None or isinstance(d.get("vocab"), str), "not a string or null")
        need("eot", d.get("eot") is None or (_is_int(d.get("eot")) and 0 <= d["eot"] < d["n_vocab"]),
             "not a token id or null")
    need("dtype", d["dtype"] in DTYPES, f"not one of {', '.join(DTYPES)}")
    need("dtype", d["dtype"] == token_dtype(d["n_vocab"]),
         f"but n_vocab {d['n_vocab']} is stored as {token_dtype(d['n_vocab'])}")
    for f in ("val_fraction", "val_target", "val_achieved"):
        need(f, isinstance(d.get(f), (int, float)) and not isinstance(d.get(f), bool) and 0 <= d[f] < 1,
             "not a fraction in [0, 1)")
    sha = d.get("sha256")
    need("sha256", isinstance(sha, dict) and all(isinstance(sha.get(s), str) and _HEX64.fullmatch(sha[s])
                                                  for s in SPLITS), "not a SHA-256 per split")
    for f, check, why in (("max_id", lambda x: _is_int(x) and 0 <= x < d["n_vocab"],
                           f"not a token id below n_vocab {d['n_vocab']}"),
                          ("blocks", _blocks_ok, "not the sampled-block record prepare writes")):
        rec = d.get(f)
        need(f, isinstance(rec, dict) and all(s in rec and check(rec[s]) for s in SPLITS), why)
    rep = d.get("replaced_bytes", {})
    need("replaced_bytes", isinstance(rep, dict) and all(_is_int(n) and n > 0 for n in rep.values()),
         "not a count of replaced bytes per file")


def _blocks_ok(rec) -> bool:
    return (isinstance(rec, dict) and rec.get("bytes") == BLOCK_BYTES and isinstance(rec.get("offsets"), list)
            and isinstance(rec.get("sha256"), list) and len(rec["offsets"]) == len(rec["sha256"])
            and all(_is_int(o) for o in rec["offsets"])
            and all(isinstance(h, str) and _HEX64.fullmatch(h) for h in rec["sha256"]))
