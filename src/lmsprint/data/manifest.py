"""The data manifest: what a prepared data directory holds (`manifest.json`), reading and verifying it, and the
checks a run makes against it (tokenizer, vocabulary size).

A directory with a manifest is complete: prepare writes `manifest.json` last, atomically. Token files are flat
arrays of ids, `token_dtype(n_vocab)` (uint16 when the vocabulary fits, else uint32).

Loading a manifest validates every field (integrity.py: types, `n_vocab` against the tokenizer, `dtype` against
`n_vocab`, hashes, sampled blocks) and checks the token files: their sizes against the token counts, the sampled
blocks' hashes and ids, and for files up to `integrity.FULL_CHECK_BYTES` the full SHA-256 (`verify_manifest(m,
full=True)` always hashes in full: `lmsprint prepare --verify`). A manifest of an older format (FORMAT_VERSION) is
refused with a hint to prepare again. `train_docs`/`val_docs` count segments: a document, or a run of its
consecutive pieces on one side of the split (split.py); `docs` counts the source's documents.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from typing import Optional

import numpy as np

from ..errors import ConfigError, DataError, UserError, plural
from ..files import atomic_write_text, json_text
from .integrity import token_dtype, token_file_facts, validate_fields, verify_token_file
from .tokenizer import _GPT2_N_VOCAB as GPT2_N_VOCAB  # the gpt2 vocabulary size a manifest must agree with

MANIFEST = "manifest.json"
FORMAT_VERSION = 2  # 2: val split by hashed pieces (split.py), sampled-block hashes, largest ids
_REPREPARE = "prepare the data again into a new `data_dir` (lmsprint prepare --dataset ... --data_dir ...)"


@dataclass
class Manifest:
    dir: str
    source: str
    tokenizer: str
    dtype: str
    n_vocab: int
    train_path: str
    val_path: str
    train_tokens: int
    val_tokens: int
    train_bytes: int
    val_bytes: int
    sha256: dict
    created: str
    dataset: str = ""
    vocab: Optional[str] = None  # what rebuilds the tokenizer: char's characters in id order, or an HF tokenizer.json
    eot: Optional[int] = None
    train_docs: int = 0
    val_docs: int = 0
    val_fraction: float = 0.0
    max_docs: int = 0
    version: int = FORMAT_VERSION
    docs: int = 0  # documents read from the source
    val_target: float = 0.0  # the val fraction aimed at: val_fraction, raised toward the floor (split.py)
    val_achieved: float = 0.0  # val tokens / all tokens
    max_id: dict = dataclasses.field(default_factory=dict)  # split -> largest token id in it
    blocks: dict = dataclasses.field(default_factory=dict)  # split -> sampled-block hashes (integrity.py)
    replaced_bytes: dict = dataclasses.field(default_factory=dict)  # file -> undecodable bytes replaced (textfiles)

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d.pop("dir")
        for k in ("train_path", "val_path"):  # files outside the directory (a nanoGPT folder) keep their full path
            p = getattr(self, k)
            d[k] = os.path.basename(p) if os.path.dirname(os.path.abspath(p)) == os.path.abspath(self.dir) else p
        return d

    def summary(self) -> str:
        def mb(n):
            return f"{n / 1e6:.2f} MB"

        return "\n".join([
            f"dataset     {self.dataset} ({self.source})",
            f"directory   {self.dir}",
            f"tokenizer   {self.tokenizer} (n_vocab {self.n_vocab}, {self.dtype})",
            f"train       {self.train_tokens:,} tokens, {mb(self.train_bytes)} of text, "
            f"{plural(self.train_docs, 'document')}",
            f"val         {self.val_tokens:,} tokens, {mb(self.val_bytes)} of text, {plural(self.val_docs, 'document')} "
            f"({self.val_achieved:.2%} of the tokens; asked {self.val_fraction:g}, aimed at {self.val_target:.3g})",
            f"sha256      train {self.sha256.get('train', '')[:16]}  val {self.sha256.get('val', '')[:16]}",
        ])


def write_json_atomic(path: str, obj) -> None:
    atomic_write_text(path, json_text(obj, indent=1))


def write_manifest(m: Manifest) -> None:
    """Write manifest.json (atomically, last); hashes, largest ids and sampled blocks a writer left out are read
    from the token files first, so that every manifest can be verified."""
    for split, path in (("train", m.train_path), ("val", m.val_path)):
        if split not in m.max_id or split not in m.blocks or split not in m.sha256:
            m.sha256[split], m.max_id[split], m.blocks[split] = token_file_facts(path, m.dtype)
    total = m.train_tokens + m.val_tokens
    m.val_achieved = m.val_achieved or (m.val_tokens / total if total else 0.0)
    write_json_atomic(os.path.join(m.dir, MANIFEST), m.to_json())


def load_manifest(dir: str, verify: bool = True) -> Manifest:
    """Read `dir/manifest.json`; with verify, check that the token files exist and have the recorded sizes."""
    path = os.path.join(dir, MANIFEST)
    if not os.path.isfile(path):
        raise DataError(f"no prepared data in '{dir}' ({MANIFEST} missing); run lmsprint prepare --dataset ...")
    try:
        with open(path) as fh:
            d = json.load(fh)
        if not isinstance(d, dict):
            raise ValueError("not a JSON object")
        validate_fields(d, path, FORMAT_VERSION, _REPREPARE, GPT2_N_VOCAB)
        d["dir"] = os.path.abspath(dir)
        d["train_path"] = os.path.join(d["dir"], d["train_path"])
        d["val_path"] = os.path.join(d["dir"], d["val_path"])
        known = {f.name for f in dataclasses.fields(Manifest)}
        m = Manifest(**{k: v for k, v in d.items() if k in known})
    except UserError:  # validate_fields names the field (lmsprint's errors are ValueErrors too)
        raise
    except (ValueError, TypeError, KeyError) as e:
        raise DataError(f"{path} is damaged ({type(e).__name__}: {e}); prepare the data again into a new "
                        "`data_dir` (lmsprint prepare --dataset ... --data_dir ...)")
    if verify:
        verify_manifest(m)
    return m


def verify_manifest(m: Manifest, full: Optional[bool] = None) -> None:
    """Token files exist, their sizes match the token counts, and their bytes the recorded hashes: sampled blocks
    always, the full SHA-256 when `full` (None: for files up to integrity.FULL_CHECK_BYTES). DataError otherwise."""
    item = np.dtype(m.dtype).itemsize
    for split, path, n in (("train", m.train_path, m.train_tokens), ("val", m.val_path, m.val_tokens)):
        if not os.path.isfile(path):
            raise DataError(f"{split} token file {path} is missing; prepare the data again into a new `data_dir` "
                            "(lmsprint prepare --dataset ... --data_dir ...)")
        size = os.path.getsize(path)
        if size != n * item:
            raise DataError(f"{split} token file {path} is truncated or wrong ({size} bytes, manifest says {n} "
                            f"{m.dtype} tokens = {n * item} bytes); prepare the data again into a new `data_dir` "
                            "(lmsprint prepare --dataset ... --data_dir ...)")
        verify_token_file(split, path, m.dtype, m.n_vocab, m.sha256.get(split, ""), m.max_id.get(split),
                          m.blocks.get(split), full, _REPREPARE)


def check_tokenizer(m: Manifest, tokenizer: Optional[str]) -> None:
    """The requested tokenizer (None/'' = any) is the one the data was tokenized with."""
    if tokenizer and tokenizer != m.tokenizer:
        raise ConfigError(f"the data in '{m.dir}' was tokenized with {m.tokenizer}, but `tokenizer` {tokenizer} was "
                          f"requested; drop `tokenizer` or use `tokenizer` {m.tokenizer}")


def check_vocab(m: Manifest, vocab_size: int) -> None:
    """The model's embedding must cover every token id of the data."""
    if vocab_size < m.n_vocab:
        hint = " (e.g. 50304 for gpt2)" if m.tokenizer == "gpt2" else ""
        raise ConfigError(f"`vocab_size` {vocab_size} is smaller than the {m.tokenizer} tokenizer's vocabulary of "
                          f"{m.n_vocab} tokens; use `vocab_size` >= {m.n_vocab}{hint}")
    top = max(m.max_id.values(), default=-1)
    if top >= vocab_size:  # implied by n_vocab <= vocab_size for a valid manifest; checked on the ids themselves
        raise ConfigError(f"the data in '{m.dir}' holds token id {top}, outside `vocab_size` {vocab_size}; use "
                          f"`vocab_size` > {top}")
