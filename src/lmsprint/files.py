"""Atomic file writes shared by run directories and prepared datasets.

`atomic_path(path)` (a context manager) yields a temporary path in the same directory (`.<name>.tmp<pid>`, hidden);
when the block ends it fsyncs that file and `os.replace`s it over `path`, so a reader (or a process killed mid-write)
sees either the old file or the new one, never a torn one; a failed write (disk full, read-only folder) leaves the old
file and no temporary file behind. For writers that want a path (safetensors). `atomic_open(path, mode)` is the
same with an open file; `atomic_write_text(path, text)` and `atomic_copy(src, dst)` (a kept `step_N.pt` is never
torn) use it, as do checkpoints and model.safetensors.
`DISK_FULL`, `NOT_WRITABLE`: the errnos of a write that failed because of the disk or the folder, not lmsprint.
`write_failure(e)`: the words for such a failed write, or None for any other error. torch's zip writer (`torch.save`,
`torch.distributed.checkpoint`) reports a full disk as a RuntimeError from its `inline_container` ("file write
failed", or "unexpected pos N vs M" after a short write), not as an OSError; those count as failed writes too.
Links: nothing lmsprint writes goes through a symbolic link. `atomic_path` refuses a `path` that is a link
(`UnsafePathError`, one line) and creates its temporary file itself (`O_EXCL | O_NOFOLLOW`, after removing a stale
one), so neither the final name nor the temporary one can send the write elsewhere; `open_no_follow(path, mode)`
opens for appending, truncating or reading with `O_NOFOLLOW` (a link is the same one-line refusal) and
`refuse_link(path)` is the check alone.
`json_text(obj, **kw)`: strict JSON (`allow_nan=False`) with every non-finite float written as null; every JSON
file lmsprint writes goes through it, so no file ever holds a bare NaN or Infinity.
"""

from __future__ import annotations

import errno
import json
import math
import os
import shutil
from contextlib import contextmanager
from typing import Iterator, Optional

from .errors import UnsafePathError

DISK_FULL = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)
NOT_WRITABLE = (errno.EROFS, errno.EACCES, errno.EPERM)


def _link_error(path: str) -> UnsafePathError:
    try:
        target = os.readlink(path)
    except OSError:
        target = "?"
    return UnsafePathError(f"{path} is a symbolic link (to {target}); lmsprint never writes through a link, so "
                           "nothing behind it was changed: remove the link (or put a regular file there) and run "
                           "again")


def refuse_link(path: str) -> None:
    """UnsafePathError if `path` is a symbolic link (dangling or not)."""
    if os.path.islink(path):
        raise _link_error(path)


_MODES = {"a": os.O_WRONLY | os.O_CREAT | os.O_APPEND, "w": os.O_WRONLY | os.O_CREAT | os.O_TRUNC,
          "r+": os.O_RDWR, "r": os.O_RDONLY}


def open_no_follow(path: str, mode: str = "a", **kw):
    """`open(path, mode)` without following a symbolic link at `path` (O_NOFOLLOW): a link is UnsafePathError.
    Modes: a, w, r+, r, each optionally with b."""
    flags = _MODES[mode.replace("b", "")] | getattr(os, "O_CLOEXEC", 0) | os.O_NOFOLLOW
    try:
        fd = os.open(path, flags, 0o644)
    except OSError as e:
        if e.errno == errno.ELOOP or os.path.islink(path):
            raise _link_error(path) from None
        raise
    return os.fdopen(fd, mode, **kw)


@contextmanager
def atomic_path(path: str) -> Iterator[str]:
    d, name = os.path.split(os.path.abspath(path))
    tmp = os.path.join(d, f".{name}.tmp{os.getpid()}")
    refuse_link(path)
    if os.path.lexists(tmp):  # a stale temporary file of a killed process with this pid, or a planted link
        os.remove(tmp)  # removes a link itself, never what it points to
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644))
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)  # fsync writes out the file's data, whichever descriptor wrote it
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    finally:
        if os.path.lexists(tmp):
            os.remove(tmp)


@contextmanager
def atomic_open(path: str, mode: str = "w", **kw):
    with atomic_path(path) as tmp, open(tmp, mode, **kw) as fh:
        yield fh


def atomic_write_text(path: str, text: str) -> None:
    with atomic_open(path) as fh:
        fh.write(text)


def atomic_copy(src: str, dst: str) -> None:
    with open(src, "rb") as fin, atomic_open(dst, "wb") as fout:
        shutil.copyfileobj(fin, fout, 1 << 20)


def write_failure(e: BaseException) -> Optional[str]:
    """Why a write failed, in words, when the disk is full or the folder not writable; None for other errors."""
    if isinstance(e, OSError):
        return os.strerror(e.errno) if e.errno in DISK_FULL + NOT_WRITABLE else None
    text = str(e)
    if isinstance(e, RuntimeError) and ("inline_container" in text or "write" in text.lower()):
        return "the disk is full or the file could not be written"
    return None


def finite_or_none(obj):
    """`obj` with every non-finite float (nan, inf, -inf) inside dicts, lists and tuples replaced by None."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_or_none(v) for v in obj]
    return obj


def json_text(obj, **kwargs) -> str:
    """`json.dumps(obj, allow_nan=False, **kwargs)` after writing non-finite floats as null."""
    return json.dumps(finite_or_none(obj), allow_nan=False, **kwargs)
