"""Tokenize a dataset once into train.bin / val.bin + manifest.json, cached and resumable; the `prepare` command.

`prepare(data_cfg) -> Manifest` is idempotent: the cache directory is `data_dir/<dataset key>[-<tokenizer>]`
(plus `-n<max_docs>` / `-v<val_fraction>` when those are set), and a finished one is only checked, not rebuilt.
Documents are split into train and val by their index (a fixed, evenly spread, disjoint set of documents is val),
tokenized in `num_proc` worker processes, and written as shards with a progress record under `.partial/`; an
interrupted prepare continues from the last finished shard. The token files are then concatenated, hashed, and
`manifest.json` is written last, atomically: a directory with a manifest is complete.

Token files are flat arrays of ids (uint16 when the vocabulary fits, else uint32); for GPT-2 every document is
followed by <|endoftext|>.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import itertools
import json
import math
import multiprocessing
import os
import shutil
import sys
import threading
import time
from dataclasses import dataclass
from typing import Iterator, Optional

import numpy as np

from ..errors import UserError
from ..files import atomic_write_text
from .sources import Source, resolve_source, shakespeare_documents
from .tokenizer import char_vocab, encode_docs, get_tokenizer, worker_encode, worker_init

MANIFEST = "manifest.json"
PARTIAL = ".partial"
FORMAT_VERSION = 1
SHARD_CHARS = 64 * 2**20  # characters of text per resumable shard
JOB_CHARS = 2**18  # characters of text per worker job (small jobs keep the workers evenly busy)
MIN_PARALLEL_CHARS = 4 * 2**20  # below this a shard is tokenized in-process (workers cost more than they save)


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
    vocab: Optional[str] = None  # the char tokenizer's characters, in id order
    eot: Optional[int] = None
    train_docs: int = 0
    val_docs: int = 0
    val_fraction: float = 0.0
    max_docs: int = 0
    version: int = FORMAT_VERSION

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d.pop("dir")
        d["train_path"] = os.path.basename(self.train_path)
        d["val_path"] = os.path.basename(self.val_path)
        return d

    def summary(self) -> str:
        def mb(n):
            return f"{n / 1e6:.2f} MB"

        return "\n".join([
            f"dataset     {self.dataset} ({self.source})",
            f"directory   {self.dir}",
            f"tokenizer   {self.tokenizer} (n_vocab {self.n_vocab}, {self.dtype})",
            f"train       {self.train_tokens:,} tokens, {mb(self.train_bytes)} of text, {self.train_docs:,} documents",
            f"val         {self.val_tokens:,} tokens, {mb(self.val_bytes)} of text, {self.val_docs:,} documents",
            f"sha256      train {self.sha256.get('train', '')[:16]}  val {self.sha256.get('val', '')[:16]}",
        ])


def token_dtype(n_vocab: int) -> str:
    return "uint16" if n_vocab <= 65535 else "uint32"


def is_val_doc(i: int, val_fraction: float) -> bool:
    """Document i is in the val split: the first one and then one every 1/val_fraction, evenly spread."""
    return i == 0 or math.floor(i * val_fraction) > math.floor((i - 1) * val_fraction)


# ------------------------------------------------------------------------------------------------ manifest I/O


def _write_json_atomic(path: str, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=1))


def load_manifest(dir: str, verify: bool = True) -> Manifest:
    """Read `dir/manifest.json`; with verify, check that the token files exist and have the recorded sizes."""
    path = os.path.join(dir, MANIFEST)
    if not os.path.isfile(path):
        raise UserError(f"no prepared data in '{dir}' ({MANIFEST} missing); run lmsprint prepare --dataset ...")
    try:
        with open(path) as fh:
            d = json.load(fh)
        d["dir"] = os.path.abspath(dir)
        d["train_path"] = os.path.join(d["dir"], d["train_path"])
        d["val_path"] = os.path.join(d["dir"], d["val_path"])
        known = {f.name for f in dataclasses.fields(Manifest)}
        m = Manifest(**{k: v for k, v in d.items() if k in known})
    except (ValueError, TypeError, KeyError) as e:
        raise UserError(f"{path} is damaged ({type(e).__name__}: {e}); delete '{dir}' and run lmsprint prepare again")
    if verify:
        verify_manifest(m)
    return m


def verify_manifest(m: Manifest) -> None:
    """Token files exist and their sizes match the manifest's token counts (UserError otherwise)."""
    item = np.dtype(m.dtype).itemsize
    for split, path, n in (("train", m.train_path, m.train_tokens), ("val", m.val_path, m.val_tokens)):
        if not os.path.isfile(path):
            raise UserError(f"{split} token file {path} is missing; delete '{m.dir}' and run lmsprint prepare again")
        size = os.path.getsize(path)
        if size != n * item:
            raise UserError(f"{split} token file {path} is truncated or wrong ({size} bytes, manifest says {n} "
                            f"{m.dtype} tokens = {n * item} bytes); delete '{m.dir}' and run lmsprint prepare again")


def check_tokenizer(m: Manifest, tokenizer: Optional[str]) -> None:
    if tokenizer and tokenizer != m.tokenizer:
        raise UserError(f"the data in '{m.dir}' was tokenized with {m.tokenizer}, but --tokenizer {tokenizer} was "
                        f"requested; drop --tokenizer or use --tokenizer {m.tokenizer}")


def check_vocab(m: Manifest, vocab_size: int) -> None:
    """The model's embedding must cover every token id of the data."""
    if vocab_size < m.n_vocab:
        hint = " (e.g. 50304 for gpt2)" if m.tokenizer == "gpt2" else ""
        raise UserError(f"--vocab_size {vocab_size} is smaller than the {m.tokenizer} tokenizer's vocabulary of "
                        f"{m.n_vocab} tokens; use --vocab_size >= {m.n_vocab}{hint}")


def open_split(m: Manifest, split: str, in_ram: bool = False) -> np.ndarray:
    """The token array of 'train' or 'val' (memory-mapped unless in_ram)."""
    from .loader import open_tokens

    path = {"train": m.train_path, "val": m.val_path}[split]
    arr = open_tokens(path, m.dtype, in_ram)
    expected = m.train_tokens if split == "train" else m.val_tokens
    if len(arr) != expected:
        raise UserError(f"{path} holds {len(arr)} tokens but the manifest says {expected}; delete '{m.dir}' and run "
                        "lmsprint prepare again")
    return arr


# ------------------------------------------------------------------------------------------------ prepare


def cache_dir(data_cfg, source: Source) -> str:
    name = source.key
    if source.kind != "embedded" and source.default_tokenizer != "gpt2":
        name += f"-{source.default_tokenizer}"
    if data_cfg.max_docs:
        name += f"-n{data_cfg.max_docs}"
    if data_cfg.val_fraction is not None and data_cfg.val_fraction != source.default_val_fraction:
        name += f"-v{data_cfg.val_fraction:g}"
    return os.path.join(data_cfg.data_dir, name)


def _docs(source: Source, skip: int, max_docs: int) -> Iterator[str]:
    it = source.documents(skip)
    return itertools.islice(it, max(0, max_docs - skip)) if max_docs else it


def _tqdm(progress: bool, **kw):
    from tqdm import tqdm

    return tqdm(disable=not progress, file=sys.stderr, dynamic_ncols=True, **kw)


def _pool_context():
    # fork is cheap and safe while the process has a single thread; otherwise start clean interpreters
    methods = multiprocessing.get_all_start_methods()
    if "fork" in methods and threading.active_count() == 1:
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context("spawn")


class _Encoder:
    """Turns lists of documents into flat id arrays, in worker processes when there is enough text."""

    def __init__(self, tokenizer: str, vocab: Optional[str], num_proc: int):
        self.name, self.vocab = tokenizer, vocab
        self.tok = get_tokenizer(tokenizer, vocab)
        self.dtype = np.dtype(token_dtype(self.tok.n_vocab))
        self.num_proc = num_proc or os.cpu_count() or 1
        self.pool = None

    def __call__(self, docs: list[str], n_chars: int) -> np.ndarray:
        if self.num_proc <= 1 or n_chars < MIN_PARALLEL_CHARS:
            return encode_docs(self.tok, docs, self.dtype)
        if self.pool is None:
            self.pool = _pool_context().Pool(self.num_proc, initializer=worker_init, initargs=(self.name, self.vocab))
        jobs, cur, size = [], [], 0
        for d in docs:
            cur.append(d)
            size += len(d)
            if size >= JOB_CHARS:
                jobs.append((cur, self.dtype))
                cur, size = [], 0
        if cur:
            jobs.append((cur, self.dtype))
        parts = list(self.pool.imap(worker_encode, jobs))
        return np.concatenate(parts) if parts else np.zeros(0, self.dtype)

    def close(self):
        if self.pool is not None:
            self.pool.close()
            self.pool.join()
            self.pool = None


def prepare(data_cfg, progress: bool = True, *, shard_docs: Optional[int] = None,
            stop_after_shards: Optional[int] = None) -> Manifest:
    """Tokenize `data_cfg.dataset` into the cache (or find it there) and return its manifest.

    `shard_docs` caps the documents per shard and `stop_after_shards` stops (raising KeyboardInterrupt) after that
    many new shards, as an interrupted run would: both exist to exercise resuming."""
    if os.path.isfile(os.path.join(data_cfg.dataset, MANIFEST)):  # a prepared directory given directly
        m = load_manifest(data_cfg.dataset)
        check_tokenizer(m, data_cfg.tokenizer)
        return m
    source = resolve_source(data_cfg)
    out = cache_dir(data_cfg, source)
    os.makedirs(out, exist_ok=True)
    with _lock(out):  # processes preparing the same directory (e.g. every rank of a run) wait for the first one
        if os.path.isfile(os.path.join(out, MANIFEST)):
            m = load_manifest(out)
            check_tokenizer(m, source.default_tokenizer)
            return m
        return _build(data_cfg, source, out, progress, shard_docs, stop_after_shards)


@contextlib.contextmanager
def _lock(out: str):
    try:
        import fcntl
    except ImportError:  # no advisory locks on this platform: run prepare once before starting several processes
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
    partial = os.path.join(out, PARTIAL)
    record_path = os.path.join(partial, "progress.json")
    fingerprint = {"version": FORMAT_VERSION, "source": source.key, "tokenizer": tokenizer,
                   "val_fraction": val_fraction, "max_docs": data_cfg.max_docs}
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
        print(f"resuming prepare of {source.key}: {state['docs_done']:,} documents already done", file=sys.stderr)

    if tokenizer == "char" and state["vocab"] is None:
        if source.kind == "embedded":
            from .sources import shakespeare_chars

            state["vocab"] = shakespeare_chars()
        else:
            bar = _tqdm(progress, desc="reading (char vocabulary)", unit=" docs")
            state["vocab"] = char_vocab(bar.update(1) or d for d in _docs(source, 0, data_cfg.max_docs))
            bar.close()
        _write_json_atomic(record_path, state)
    enc = _Encoder(tokenizer, state["vocab"], data_cfg.num_proc)
    try:
        _write_shards(source, data_cfg, enc, state, partial, record_path, val_fraction, progress, shard_docs,
                      stop_after_shards)
    finally:
        enc.close()
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
                s = "val" if is_val_doc(i, val_fraction) else "train"
                split_docs[s].append(doc)
                split_bytes[s] += len(doc.encode("utf-8"))
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
            ids.tofile(path + ".tmp")
            os.replace(path + ".tmp", path)
            shard[f"{s}_tokens"] = int(len(ids))
            shard[f"{s}_bytes"] = split_bytes[s]
            shard[f"{s}_docs"] = len(split_docs[s])
        state["shards"].append(shard)
        state["docs_done"] = i
        _write_json_atomic(record_path, state)
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
        raise UserError(f"{source.key} has {state['docs_done']} non-empty documents, too few for a train and a val "
                        "split; use more documents (--max_docs) or a larger --val_fraction")
    digests = {}
    bar = _tqdm(progress, desc="writing token files", unit="B", unit_scale=True,
                total=(totals["train_tokens"] + totals["val_tokens"]) * enc.dtype.itemsize)
    for s in ("train", "val"):
        final = os.path.join(out, f"{s}.bin")
        h = hashlib.sha256()
        with open(final + ".tmp", "wb") as dst:
            for sh in shards:
                with open(os.path.join(partial, f"shard_{sh['index']:06d}.{s}.bin"), "rb") as src:
                    while True:
                        chunk = src.read(16 * 2**20)
                        if not chunk:
                            break
                        h.update(chunk)
                        dst.write(chunk)
                        bar.update(len(chunk))
        os.replace(final + ".tmp", final)
        digests[s] = h.hexdigest()
    bar.close()
    m = Manifest(dir=os.path.abspath(out), source=source.description, tokenizer=enc.name, dtype=str(enc.dtype),
                 n_vocab=enc.tok.n_vocab, train_path=os.path.join(os.path.abspath(out), "train.bin"),
                 val_path=os.path.join(os.path.abspath(out), "val.bin"), train_tokens=totals["train_tokens"],
                 val_tokens=totals["val_tokens"], train_bytes=totals["train_bytes"], val_bytes=totals["val_bytes"],
                 sha256=digests, created=time.strftime("%Y-%m-%dT%H:%M:%S%z"), dataset=data_cfg.dataset,
                 vocab=enc.vocab, eot=enc.tok.eot, train_docs=totals["train_docs"], val_docs=totals["val_docs"],
                 val_fraction=val_fraction, max_docs=data_cfg.max_docs)
    _write_json_atomic(os.path.join(out, MANIFEST), m.to_json())
    shutil.rmtree(partial, ignore_errors=True)
    return m


# ------------------------------------------------------------------------------------------------ measurement


def measure_tokenize_speed(megabytes: float = 10.0, num_proc: int = 2, tokenizer: str = "gpt2",
                           repeats: int = 3) -> dict:
    """Tokenize `megabytes` of Shakespeare with 1 process (one thread) and with `num_proc` worker processes; each is
    timed `repeats` times, alternating, and the best wall time of each is kept. The rates are steady-state ones, as
    in a real prepare, where one pool serves every shard: the pool is started before the clock (its start-up,
    `pool_start_s`, is reported separately)."""
    docs, size = [], 0
    base = shakespeare_documents()
    while size < megabytes * 1e6:
        for d in base:
            docs.append(d)
            size += len(d.encode("utf-8"))
            if size >= megabytes * 1e6:
                break
    n_chars = sum(map(len, docs))
    result = {"megabytes": size / 1e6, "num_proc": num_proc, "repeats": repeats}
    tokens = None
    for _ in range(repeats):
        for label, procs in (("single", 1), ("parallel", num_proc)):
            enc = _Encoder(tokenizer, None, procs)
            if procs > 1:  # start the workers (and warm them) off the clock
                t0 = time.perf_counter()
                enc(docs[:8], MIN_PARALLEL_CHARS)
                result["pool_start_s"] = min(result.get("pool_start_s", float("inf")), time.perf_counter() - t0)
            c0 = _cpu_seconds()
            t0 = time.perf_counter()
            ids = enc(docs, max(n_chars, MIN_PARALLEL_CHARS) if procs > 1 else n_chars)
            enc.close()
            dt = time.perf_counter() - t0
            cpu = _cpu_seconds() - c0
            if tokens is not None and not np.array_equal(ids, tokens):
                raise RuntimeError("parallel tokenization differs from single-process tokenization")
            tokens = ids
            if dt < result.get(f"{label}_s", float("inf")):
                result[f"{label}_s"], result[f"{label}_cpu_s"] = dt, cpu
                result[f"{label}_mb_per_s"] = size / 1e6 / dt
    result["tokens"] = int(len(tokens))
    result["speedup"] = result["single_s"] / result["parallel_s"]
    # on a busy machine wall-clock speedup is capped by the free cores; this is what idle cores would give
    result["cpu_bound_speedup"] = num_proc * result["single_cpu_s"] / result["parallel_cpu_s"]
    return result


def _cpu_seconds() -> float:
    import resource

    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


# ------------------------------------------------------------------------------------------------ command


def add_prepare_arguments(p: argparse.ArgumentParser) -> None:
    from ..config import add_flags

    add_flags(p, sections=("data",))
    p.add_argument("--config_format", default=argparse.SUPPRESS, help="preset whose dataset is prepared (base: "
                   "slimpajama, demo: shakespeare)")
    p.add_argument("--config", default=None, help="YAML/TOML config file whose data options are used")
    p.add_argument("--bench_tokenizer", action="store_true", help="measure 1-process vs --num_proc-process "
                   "tokenization speed on 10 MB of text, then exit")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def run_prepare(args) -> int:
    from ..config import FLAGS, build_config

    values = {k: v for k, v in vars(args).items() if k in FLAGS}
    cfg = build_config(values, args.config)
    if args.bench_tokenizer:
        r = measure_tokenize_speed(10.0, cfg.data.num_proc or os.cpu_count() or 1)
        print(f"tokenize {r['megabytes']:.1f} MB ({r['tokens']:,} gpt2 tokens): 1 process {r['single_mb_per_s']:.2f} "
              f"MB/s, {r['num_proc']} processes {r['parallel_mb_per_s']:.2f} MB/s, speedup {r['speedup']:.2f}x "
              f"(best of {r['repeats']}; pool start {r.get('pool_start_s', 0):.2f}s not included; CPU time: "
              f"{r['single_cpu_s']:.2f}s vs {r['parallel_cpu_s']:.2f}s, {r['cpu_bound_speedup']:.2f}x on idle cores)")
        return 0
    m = prepare(cfg.data, progress=not args.quiet)
    print(m.summary())
    return 0
