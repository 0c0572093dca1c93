"""Atomic file writes shared by run directories and prepared datasets.

`atomic_write_text(path, text)` writes to a temporary file in the same directory, fsyncs it and `os.replace`s it
over `path`, so a reader (or a process killed mid-write) sees either the old file or the new one, never a torn one.
"""

from __future__ import annotations

import os


def atomic_write_text(path: str, text: str) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
