"""Encoding documents into token ids, in worker processes when there is enough text, and measuring how fast.

- `Encoder(tokenizer, vocab, num_proc)(docs, n_chars) -> ids`: one flat id array for a list of documents (each
  followed by the separator when the tokenizer has one); small inputs are encoded in-process, larger ones in a pool
  of `num_proc` workers started on first use and kept until `close()`, each building its tokenizer once.
  Ctrl-C is the parent's alone: the workers ignore SIGINT (a Ctrl-C reaches the whole process group, and a worker
  dying in the middle of a job left the parent waiting forever for its result), and after an interruption or an
  error the parent ends them with `terminate()`, never waiting for the jobs still queued.
- `measure_tokenize_speed(...)`: 1-process vs `num_proc`-process steady-state rates (`lmsprint prepare
  --bench_tokenizer`).
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
from typing import Optional, Sequence

import numpy as np

from .manifest import token_dtype
from .sources import shakespeare_documents
from .tokenizer import get_tokenizer

try:
    import resource  # CPU time of the workers; Unix only
except ImportError:
    resource = None

JOB_CHARS = 2**18  # characters of text per worker job (small jobs keep the workers evenly busy)
MIN_PARALLEL_CHARS = 4 * 2**20  # below this a shard is tokenized in-process (workers cost more than they save)


# ------------------------------------------------------------------------------------------------ worker side
# each worker builds its tokenizer once (initializer), then turns a batch of documents into one flat id array

_WORKER_TOK = None


def worker_init(name: str, vocab: Optional[str]) -> None:
    global _WORKER_TOK
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and terminates the pool
    _WORKER_TOK = get_tokenizer(name, vocab)


def encode_docs(tok, docs: Sequence[str], dtype) -> np.ndarray:
    """Documents -> one flat id array (each document followed by tok.eot when there is one)."""
    parts = []
    for ids in tok.encode_batch(docs):
        if tok.eot is not None:
            ids.append(tok.eot)
        parts.append(np.asarray(ids, dtype=dtype))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)


def worker_encode(args) -> np.ndarray:
    docs, dtype = args
    return encode_docs(_WORKER_TOK, docs, dtype)


# ------------------------------------------------------------------------------------------------ encoder


def _pool_context():
    # fork is cheap and safe while the process has a single thread; otherwise start clean interpreters
    methods = multiprocessing.get_all_start_methods()
    if "fork" in methods and threading.active_count() == 1:
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context("spawn")


class Encoder:
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
            # the workers start with SIGINT blocked (the mask is inherited by a fork and kept across the exec of a
            # new interpreter) until worker_init ignores it, so that a Ctrl-C during their start-up is not a
            # traceback per worker; in this process it stays pending while blocked and is raised right after, so a
            # Ctrl-C during the pool's start is not lost either
            block = hasattr(signal, "pthread_sigmask") and threading.current_thread() is threading.main_thread()
            old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT}) if block else None
            try:
                self.pool = _pool_context().Pool(self.num_proc, initializer=worker_init,
                                                 initargs=(self.name, self.vocab))
            finally:
                if block:
                    signal.pthread_sigmask(signal.SIG_SETMASK, old)
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
        """Stop the workers after their jobs (all are done once a call returned)."""
        if self.pool is not None:
            self.pool.close()
            self.pool.join()
            self.pool = None

    def terminate(self):
        """Stop the workers now (after Ctrl-C or an error: jobs still queued are dropped, not waited for)."""
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()
            self.pool = None


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
            enc = Encoder(tokenizer, None, procs)
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
    if resource is None:
        return time.process_time()  # this process only
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime
