"""Batches from prepared token files: random training windows per step, fixed val windows, device transfer.

- `open_tokens(path, dtype, in_ram, n_vocab)`: the flat token array (memory-mapped, or read into RAM: a `TokenMemmap`
  or `TokenArray`) that knows its file and vocabulary. Every window cut from it (training and val batches) is checked
  on the host before it goes to the device: an id >= n_vocab (a file damaged or rewritten outside the blocks that were
  sampled when it was opened) is a DataError naming the file, the token offset and the id, at the step that reads it,
  instead of an IndexError inside the model. It is one max over the batch's ids: 1 us for the demo's 16 x 129 and 11
  us for base's 128 x 513 (numpy on one core of a loaded 2-core CPU), next to steps of 0.1 s and more (README, "What
  is guaranteed").
- `BatchSampler(tokens, seq_len, global_batch, seed, rank, world_size).get(step) -> (x, y)`: the global batch of
  optimizer step `step` is a pure function of (seed, step): `global_batch` windows at random offsets drawn from a
  generator seeded with (seed, step). Rank r returns rows [r*n, (r+1)*n) with n = global_batch // world_size, so one
  process with batch 2B sees exactly what two processes with B each see, and resuming needs only the step.
- `DeviceBatches(sampler, device)`: the batches of consecutive optimizer steps on the device. `next()` hands out
  the batch of step `position` and moves on; `prefetch()` starts the next one's host-to-device copy early (called
  while the device runs the current step). Its `state_dict()` {seed, step: the position} is what a checkpoint keeps of
  the data stream, and `load_state_dict` continues from there.
- `val_batches(tokens, seq_len, batch_size, max_tokens, rank, world_size)`: non-overlapping windows from the start
  of the val split, the same at every call; window i belongs to rank i % world_size.
- `to_device(x, y, device)`: pinned, non-blocking copies on CUDA.
"""

from __future__ import annotations

import os
from typing import Iterator, Optional

import numpy as np
import torch

from ..errors import ConfigError, DataError


class TokenArray(np.ndarray):
    """A token file's ids read into RAM that know their file (`path`) and the vocabulary they must stay in
    (`n_vocab`; None: unchecked); slices keep both."""

    path: Optional[str] = None
    n_vocab: Optional[int] = None

    def __array_finalize__(self, obj):
        self.path, self.n_vocab = getattr(obj, "path", None), getattr(obj, "n_vocab", None)


class TokenMemmap(np.memmap):
    """The same for a memory-mapped token file (still a np.memmap)."""

    path: Optional[str] = None
    n_vocab: Optional[int] = None

    def __array_finalize__(self, obj):
        super().__array_finalize__(obj)
        self.path, self.n_vocab = getattr(obj, "path", None), getattr(obj, "n_vocab", None)


def open_tokens(path: str, dtype: str, in_ram: bool = False, n_vocab: Optional[int] = None) -> np.ndarray:
    """Flat token array of a .bin file; DataError when it is missing, empty or not a whole number of tokens. With
    `n_vocab`, every window read from it is checked to hold ids below it (see `_windows`)."""
    if not os.path.isfile(path):
        raise DataError(f"token file {path} is missing; prepare the data again into a new `data_dir` "
                        "(lmsprint prepare --dataset ... --data_dir ...)")
    dt = np.dtype(dtype)
    size = os.path.getsize(path)
    if size == 0 or size % dt.itemsize:
        raise DataError(f"token file {path} is truncated ({size} bytes is not a whole number of {dt.name} tokens); "
                        "prepare the data again into a new `data_dir` (lmsprint prepare --dataset ... --data_dir ...)")
    arr = np.fromfile(path, dtype=dt).view(TokenArray) if in_ram else TokenMemmap(path, dtype=dt, mode="r")
    arr.path, arr.n_vocab = path, n_vocab
    return arr


def _windows(tokens: np.ndarray, starts: np.ndarray, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    idx = starts[:, None] + np.arange(seq_len + 1, dtype=np.int64)[None, :]
    ids = np.asarray(tokens[idx], dtype=np.int64)
    limit = getattr(tokens, "n_vocab", None)
    if limit is not None and ids.size and int(ids.max()) >= limit:
        r, c = np.unravel_index(int(np.argmax(ids >= limit)), ids.shape)
        raise DataError(f"token file {tokens.path} holds id {int(ids[r, c])} at token {int(starts[r]) + int(c):,}, "
                        f"outside the vocabulary of {limit} ids (files over 32 MiB are checked only in sampled blocks "
                        "when they are opened); the file is damaged or was rewritten: prepare the data again into a "
                        "new `data_dir`")
    buf = torch.from_numpy(ids)
    return buf[:, :-1].contiguous(), buf[:, 1:].contiguous()


class BatchSampler:
    """Random training windows; the batch of each optimizer step depends only on (seed, step)."""

    def __init__(self, tokens: np.ndarray, seq_len: int, global_batch: int, seed: int, rank: int = 0,
                 world_size: int = 1):
        if global_batch % world_size:
            raise ConfigError(f"the global batch of {global_batch} sequences does not split over {world_size} "
                            "processes; use a batch size divisible by the number of processes")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        if len(tokens) < seq_len + 1:
            raise DataError(f"the train split has {len(tokens)} tokens, fewer than sequence_length + 1 = "
                            f"{seq_len + 1}; use a smaller `sequence_length` or more data")
        self.tokens, self.seq_len, self.global_batch = tokens, seq_len, global_batch
        self.seed, self.rank, self.world_size = int(seed), rank, world_size
        self.local_batch = global_batch // world_size

    def starts(self, step: int) -> np.ndarray:
        """Window offsets of the whole global batch of `step`."""
        rng = np.random.default_rng([self.seed & 0xFFFFFFFF, self.seed >> 32 & 0xFFFFFFFF, int(step)])
        return rng.integers(0, len(self.tokens) - self.seq_len, size=self.global_batch, dtype=np.int64)

    def get(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        rows = self.starts(step)[self.rank * self.local_batch:(self.rank + 1) * self.local_batch]
        return _windows(self.tokens, rows, self.seq_len)


class DeviceBatches:
    """This process's training batches of consecutive optimizer steps, on `device` (see the module doc)."""

    def __init__(self, sampler: BatchSampler, device):
        self.sampler, self.device = sampler, device
        self.position = 0  # the optimizer step whose batch `next()` hands out
        self._ahead: Optional[tuple[int, tuple[torch.Tensor, torch.Tensor]]] = None  # (step, batch) already copied

    def _load(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        return to_device(*self.sampler.get(step), self.device)

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        ahead = self._ahead
        batch = ahead[1] if ahead is not None and ahead[0] == self.position else self._load(self.position)
        self._ahead = None
        self.position += 1
        return batch

    def prefetch(self) -> None:
        """Start the copy of the batch `next()` hands out next."""
        if self._ahead is None or self._ahead[0] != self.position:
            self._ahead = (self.position, self._load(self.position))

    def state_dict(self) -> dict:
        return {"seed": self.sampler.seed, "step": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.position = int(state["step"])
        self._ahead = None


def n_val_windows(n_tokens: int, seq_len: int, max_tokens: Optional[int] = None) -> int:
    """Number of val windows (over all ranks): non-overlapping, capped at max_tokens // seq_len (at least 1)."""
    n = max(0, (n_tokens - 1) // seq_len)
    if max_tokens is not None:
        n = min(n, max(1, max_tokens // seq_len))
    return n


def val_batches(tokens: np.ndarray, seq_len: int, batch_size: int, max_tokens: Optional[int] = None, rank: int = 0,
                world_size: int = 1, first_window: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Fixed val windows [i*seq_len, i*seq_len + seq_len] (inputs) from the start of the split (or from window
    `first_window`: one piece of a longer eval), in batches; window i goes to rank (i - first_window) % world_size.
    The last batch of a rank may be smaller; ranks differ by at most one window."""
    n = n_val_windows(len(tokens), seq_len, max_tokens)
    if n == 0:
        raise DataError(f"the val split has {len(tokens)} tokens, fewer than sequence_length + 1 = {seq_len + 1}; "
                        "use a smaller `sequence_length` or a larger `val_fraction`")
    mine = np.arange(first_window + rank, n, world_size, dtype=np.int64) * seq_len
    for i in range(0, len(mine), batch_size):
        yield _windows(tokens, mine[i:i + batch_size], seq_len)


def to_device(x: torch.Tensor, y: torch.Tensor, device) -> tuple[torch.Tensor, torch.Tensor]:
    device = torch.device(device)
    if device.type == "cuda":
        return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
    return x.to(device), y.to(device)
