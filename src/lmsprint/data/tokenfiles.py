"""nanoGPT token folders used in place: `adopt_token_folder(data_cfg, source, out)` checks a folder's train.bin and
val.bin (flat uint16 GPT-2 ids, as nanoGPT's prepare.py writes them) and writes lmsprint's manifest for them into the
data cache directory `out`.

The user's files are only read: never copied, modified, moved or deleted, and the manifest points at them by
absolute path. One pass over each file gives its sha256, token count, document count (<|endoftext|> separators) and
the UTF-8 bytes its tokens stand for (for bits per byte); an id outside GPT-2's vocabulary is a DataError.
"""

from __future__ import annotations

import hashlib
import os
import time

import numpy as np

from ..errors import DataError
from .manifest import Manifest, write_manifest
from .progress import progress_bar
from .sources import NANOGPT_FILES, Source
from .tokenizer import get_tokenizer

CHUNK_TOKENS = 2**24  # tokens read at a time (32 MB of uint16)


def _scan(path: str, n_vocab: int, token_bytes: np.ndarray, bar) -> dict:
    """sha256, tokens, bytes of text and the count of each id of one uint16 token file."""
    size = os.path.getsize(path)
    if size == 0 or size % 2:
        raise DataError(f"{path} is not a nanoGPT token file ({size} bytes is not a whole number of uint16 tokens); "
                        "point `dataset` at a folder whose train.bin and val.bin nanoGPT's prepare.py wrote")
    counts = np.zeros(2**16, dtype=np.int64)
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while True:
            chunk = fh.read(CHUNK_TOKENS * 2)
            if not chunk:
                break
            h.update(chunk)
            counts += np.bincount(np.frombuffer(chunk, dtype=np.uint16), minlength=2**16)
            bar.update(len(chunk))
    bad = np.flatnonzero(counts[n_vocab:])
    if len(bad):
        raise DataError(f"{path} holds token id {int(bad[0]) + n_vocab}, outside GPT-2's {n_vocab} ids; lmsprint reads "
                        "nanoGPT folders of GPT-2 ids only")
    return {"sha256": h.hexdigest(), "tokens": size // 2, "bytes": int(counts[:n_vocab] @ token_bytes),
            "counts": counts}


def adopt_token_folder(data_cfg, source: Source, out: str, progress: bool = True) -> Manifest:
    """Check a nanoGPT folder's token files and write the manifest that points at them into `out` (the cache)."""
    tok = get_tokenizer("gpt2")
    token_bytes = tok.token_bytes()
    paths = {s: os.path.join(source.token_dir, f) for s, f in zip(("train", "val"), NANOGPT_FILES)}
    bar = progress_bar(progress, unit="B", unit_scale=True, desc="checking nanoGPT token files",
                       total=sum(os.path.getsize(p) for p in paths.values()))
    stats = {s: _scan(p, tok.n_vocab, token_bytes, bar) for s, p in paths.items()}
    bar.close()
    docs = {s: int(st["counts"][tok.eot]) for s, st in stats.items()}
    total = stats["train"]["tokens"] + stats["val"]["tokens"]
    m = Manifest(dir=os.path.abspath(out), source=source.description, tokenizer="gpt2", dtype="uint16",
                 n_vocab=tok.n_vocab, train_path=paths["train"], val_path=paths["val"],
                 train_tokens=stats["train"]["tokens"], val_tokens=stats["val"]["tokens"],
                 train_bytes=stats["train"]["bytes"], val_bytes=stats["val"]["bytes"],
                 sha256={s: st["sha256"] for s, st in stats.items()}, created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                 dataset=data_cfg.dataset, vocab=None, eot=tok.eot, train_docs=docs["train"], val_docs=docs["val"],
                 val_fraction=stats["val"]["tokens"] / total, max_docs=0)
    write_manifest(m)
    return m
