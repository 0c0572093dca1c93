"""Tokenize a dataset once into train.bin / val.bin + manifest.json, cached and resumable.

`prepare(data_cfg) -> Manifest` is idempotent: the cache directory is `data_dir/<dataset key>[-<tokenizer>]`
(plus `-n<max_docs>` / `-v<val_fraction>` when those are set), and a finished one is only checked, not rebuilt.
Local files are first checked against the text policy (textfiles.py: undecodable bytes replaced and counted, files
that are mostly not text and broken JSON lines refused). Documents are cut into pieces at paragraph boundaries and
each piece goes to val when a hash of its text falls below the val fraction (split.py; the fraction is raised
toward a floor of val tokens when the corpus is small), so the split holds close to that share of the tokens
whatever the file layout. The pieces are tokenized by an `encode.Encoder` (worker processes) and written as shards
with a progress record under `.partial/`; an interrupted prepare continues from the last finished shard. The token
files are then concatenated, hashed (in full, plus sampled blocks and the largest id: integrity.py), and the
manifest (manifest.py) is written last, atomically: a directory with a manifest is complete. For GPT-2 every
segment (a document, or a run of its pieces on one side of the split) is followed by <|endoftext|>. A source that
fails while it is read (a damaged parquet file, say) ends in one DataError naming the document. The `prepare`
command lives in cli/prepare.py.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import sys
import time
from typing import Iterator, Optional

from tqdm import tqdm

from ..errors import DataError, UserError, plural
from ..files import atomic_open, atomic_path
from .encode import Encoder
from .integrity import Hasher, sample_blocks
from .manifest import (FORMAT_VERSION, MANIFEST, Manifest, check_tokenizer, load_manifest, write_json_atomic,
                       write_manifest)
from .sources import Source, local_files, resolve_source, shakespeare_chars, shakespeare_documents, tokenizer_name
from .split import estimate_tokens, floor_warning, split_document, val_target
from .textfiles import replaced_warning, scan_local_files
from .tokenfiles import adopt_token_folder
from .tokenizer import char_vocab, tokenizer_key, tokenizer_state

try:
    import fcntl  # advisory file locks; Unix only
except ImportError:
    fcntl = None

PARTIAL = ".partial"
SHARD_CHARS = 64 * 2**20  # characters of text per resumable shard


def cache_dir(data_cfg, source: Source) -> str:
    name = source.key
    if source.kind != "embedded" and source.default_tokenizer != "gpt2":
        name += f"-{tokenizer_key(source.default_tokenizer)}"
    if data_cfg.max_docs:
        name += f"-n{data_cfg.max_docs}"
    if data_cfg.val_fraction is not None and data_cfg.val_fraction != source.default_val_fraction:
        name += f"-v{data_cfg.val_fraction:g}"
    return os.path.join(data_cfg.data_dir, name)


def _docs(source: Source, skip: int, max_docs: int) -> Iterator[str]:
    """The source's documents from `skip` on (at most up to `max_docs`); a failure while reading them (a damaged file,
    a decoder error) is one DataError naming the source and the document."""
    i = skip
    try:
        it = source.documents(skip)
        for doc in (itertools.islice(it, max(0, max_docs - skip)) if max_docs else it):
            yield doc
            i += 1
    except UserError:
        raise
    except Exception as e:  # any reader failure (pyarrow, json, decoding) is the data's, reported in one line
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise DataError(f"reading {source.description} failed at document {i + 1:,} ({type(e).__name__}"
                        f"{': ' + first[:200] if first else ''}); repair or remove the damaged file")


def _source_bytes(data_cfg, source: Source, files: Optional[list]) -> Optional[int]:
    """The size of the source's text when it is known before reading it (embedded text, local files), else None."""
    if source.kind == "embedded":
        return sum(len(d.encode("utf-8")) for d in shakespeare_documents()[:data_cfg.max_docs or None])
    if files is not None:
        return sum(os.path.getsize(f) for f in files)  # with `max_docs` an upper bound: the floor may fall short
    return None


def _tqdm(progress: bool, **kw):
    return tqdm(disable=not progress, file=sys.stderr, dynamic_ncols=True, **kw)


def prepare(data_cfg, progress: bool = True, *, shard_docs: Optional[int] = None,
            stop_after_shards: Optional[int] = None) -> Manifest:
    """Tokenize `data_cfg.dataset` into the cache (or find it there) and return its manifest.

    `shard_docs` caps the documents per shard and `stop_after_shards` stops (raising KeyboardInterrupt) after that
    many new shards, as an interrupted run would: both exist to exercise resuming."""
    if os.path.isfile(os.path.join(data_cfg.dataset, MANIFEST)):  # a prepared directory given directly
        m = load_manifest(data_cfg.dataset)
        check_tokenizer(m, tokenizer_name(data_cfg.tokenizer))
        return m
    source = resolve_source(data_cfg)
    out = cache_dir(data_cfg, source)
    os.makedirs(out, exist_ok=True)
    with _lock(out):  # processes preparing the same directory (e.g. every rank of a run) wait for the first one
        if os.path.isfile(os.path.join(out, MANIFEST)):
            m = load_manifest(out)
            check_tokenizer(m, source.default_tokenizer)
            return m
        if source.kind == "tokens":  # a nanoGPT folder: its files are used in place, only a manifest is written
            return adopt_token_folder(data_cfg, source, out, progress)
        return _build(data_cfg, source, out, progress, shard_docs, stop_after_shards)


@contextlib.contextmanager
def _lock(out: str):
    if fcntl is None:  # no advisory locks on this platform: run prepare once before starting several processes
        yield
        return
    with open(os.path.join(out, ".lock"), "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _build(data_cfg, source: Source, out: str, progress: bool, shard_docs, stop_after_shards) -> Manifest:
    tokenizer = source.default_tokenizer
    val_fraction = data_cfg.val_fraction or source.default_val_fraction
    files = local_files(os.path.abspath(data_cfg.dataset)) if source.kind == "local" else None
    replaced = scan_local_files(files) if files else {}
    if replaced:
        print(replaced_warning(replaced), file=sys.stderr)
    fixed = getattr(source, "fixed_split", None)  # a source with its own val split keeps it
    target = val_fraction if fixed else val_target(val_fraction, estimate_tokens(_source_bytes(data_cfg, source,
                                                                                               files), tokenizer))
    partial = os.path.join(out, PARTIAL)
    record_path = os.path.join(partial, "progress.json")
    fingerprint = {"version": FORMAT_VERSION, "source": source.key, "tokenizer": tokenizer,
                   "val_fraction": val_fraction, "val_target": target, "max_docs": data_cfg.max_docs}
    state = None
    if os.path.isfile(record_path):
        try:
            with open(record_path) as fh:
                state = json.load(fh)
        except ValueError:
            state = None
        if state is not None and state.get("fingerprint") != fingerprint:
            state = None
    if state is None:
        shutil.rmtree(partial, ignore_errors=True)
        os.makedirs(partial, exist_ok=True)
        state = {"fingerprint": fingerprint, "vocab": None, "docs_done": 0, "shards": []}
    elif progress:
        print(f"resuming prepare of {source.key}: {plural(state['docs_done'], 'document')} already done",
              file=sys.stderr)

    if state["vocab"] is None:  # a Hugging Face tokenizer's JSON (None for gpt2 and char)
        state["vocab"] = tokenizer_state(tokenizer)
    if tokenizer == "char" and state["vocab"] is None:
        if source.kind == "embedded":
            state["vocab"] = shakespeare_chars()
        else:
            bar = _tqdm(progress, desc="reading (char vocabulary)", unit=" docs")
            state["vocab"] = char_vocab(d for d in _docs(source, 0, data_cfg.max_docs) if bar.update(1) or True)
            bar.close()
        write_json_atomic(record_path, state)
    enc = Encoder(tokenizer, state["vocab"], data_cfg.num_proc)
    try:
        _write_shards(source, data_cfg, enc, state, partial, record_path, target, progress, shard_docs,
                      stop_after_shards)
    finally:
        enc.close()
    state["replaced_bytes"], state["val_target"] = {os.path.relpath(f, data_cfg.dataset) if os.path.isdir(
        data_cfg.dataset) else os.path.basename(f): n for f, n in replaced.items()}, target
    return _finish(data_cfg, source, out, enc, state, val_fraction, progress)


def _write_shards(source, data_cfg, enc, state, partial, record_path, val_fraction, progress, shard_docs,
                  stop_after_shards) -> None:
    docs = _docs(source, state["docs_done"], data_cfg.max_docs)
    bar = _tqdm(progress, desc=f"tokenizing {source.key}", unit=" docs", initial=state["docs_done"],
                total=(data_cfg.max_docs or (len(shakespeare_documents()) if source.kind == "embedded" else None)))
    new_shards = 0
    i = state["docs_done"]
    done = False
    while not done:
        split_docs = {"train": [], "val": []}
        split_bytes = {"train": 0, "val": 0}
        n_chars = n = 0
        for doc in docs:
            if doc:
                fixed = getattr(source, "fixed_split", None)
                for s, text in ([("val" if fixed(i) else "train", doc)] if fixed else
                                split_document(doc, val_fraction)):
                    split_docs[s].append(text)
                    split_bytes[s] += len(text.encode("utf-8"))
                n_chars += len(doc)
            i += 1
            n += 1
            if n_chars >= SHARD_CHARS or (shard_docs and n >= shard_docs):
                break
        else:
            done = True
        if n == 0:
            break
        k = len(state["shards"])
        shard = {"index": k, "docs": n}
        for s in ("train", "val"):
            ids = enc(split_docs[s], sum(map(len, split_docs[s])))
            path = os.path.join(partial, f"shard_{k:06d}.{s}.bin")
            with atomic_path(path) as tmp:
                ids.tofile(tmp)
            shard[f"{s}_tokens"] = int(len(ids))
            shard[f"{s}_bytes"] = split_bytes[s]
            shard[f"{s}_docs"] = len(split_docs[s])
        state["shards"].append(shard)
        state["docs_done"] = i
        write_json_atomic(record_path, state)
        bar.update(n)
        new_shards += 1
        if stop_after_shards is not None and new_shards >= stop_after_shards and not done:
            bar.close()
            raise KeyboardInterrupt(f"prepare stopped after {new_shards} shards")
    bar.close()


def _finish(data_cfg, source, out, enc, state, val_fraction, progress) -> Manifest:
    partial = os.path.join(out, PARTIAL)
    shards = state["shards"]
    totals = {f"{s}_{q}": sum(sh[f"{s}_{q}"] for sh in shards) for s in ("train", "val")
              for q in ("tokens", "bytes", "docs")}
    if totals["val_docs"] == 0 or totals["train_docs"] == 0:
        raise DataError(f"{source.key} has {state['docs_done']} non-empty documents, too few for a train and a val "
                        "split; use more documents (`max_docs`) or a larger `val_fraction`")
    digests, max_id, blocks = {}, {}, {}
    bar = _tqdm(progress, desc="writing token files", unit="B", unit_scale=True,
                total=(totals["train_tokens"] + totals["val_tokens"]) * enc.dtype.itemsize)
    for s in ("train", "val"):
        final = os.path.join(out, f"{s}.bin")
        h = Hasher(str(enc.dtype))
        with atomic_open(final, "wb") as dst:
            for sh in shards:
                with open(os.path.join(partial, f"shard_{sh['index']:06d}.{s}.bin"), "rb") as src:
                    while True:
                        chunk = src.read(16 * 2**20)
                        if not chunk:
                            break
                        h.update(chunk)
                        dst.write(chunk)
                        bar.update(len(chunk))
        digests[s], max_id[s], blocks[s] = h.sha.hexdigest(), h.max_id, sample_blocks(final)
    bar.close()
    total = totals["train_tokens"] + totals["val_tokens"]
    m = Manifest(dir=os.path.abspath(out), source=source.description, tokenizer=enc.name, dtype=str(enc.dtype),
                 n_vocab=enc.tok.n_vocab, train_path=os.path.join(os.path.abspath(out), "train.bin"),
                 val_path=os.path.join(os.path.abspath(out), "val.bin"), train_tokens=totals["train_tokens"],
                 val_tokens=totals["val_tokens"], train_bytes=totals["train_bytes"], val_bytes=totals["val_bytes"],
                 sha256=digests, created=time.strftime("%Y-%m-%dT%H:%M:%S%z"), dataset=data_cfg.dataset,
                 vocab=enc.vocab, eot=enc.tok.eot, train_docs=totals["train_docs"], val_docs=totals["val_docs"],
                 val_fraction=val_fraction, max_docs=data_cfg.max_docs, docs=state["docs_done"],
                 val_target=state.get("val_target", val_fraction), val_achieved=totals["val_tokens"] / total,
                 max_id=max_id, blocks=blocks, replaced_bytes=state.get("replaced_bytes", {}))
    write_manifest(m)
    shutil.rmtree(partial, ignore_errors=True)
    if progress:
        print(f"val split: {m.val_tokens:,} of {total:,} tokens = {m.val_achieved:.2%} (asked {val_fraction:g}, aimed "
              f"at {m.val_target:.3g})", file=sys.stderr)
    warning = None if getattr(source, "fixed_split", None) else floor_warning(m.val_tokens, total)
    if warning:
        print(warning, file=sys.stderr)
    return m
