"""What lmsprint accepts as text in local files: the undecodable-bytes policy, checked before tokenizing.

`scan_local_files(files) -> {path: replaced_bytes}` reads every .txt / .jsonl / .json / .parquet file once:

- Text is UTF-8. A byte sequence that is not valid UTF-8 is replaced by U+FFFD when the file is read (sources.py
  opens text and JSON files with `errors="replace"`); the replaced bytes are counted per file, the counts go into the
  manifest (`replaced_bytes`), and prepare prints one warning line naming the files.
- A file that is mostly not text is refused: when more than `NOT_TEXT_FRACTION` (1%) of its bytes are undecodable
  or NUL (random bytes, a UTF-16 file, a binary renamed .txt, or Latin-1 text with many accented letters), prepare
  stops with one line naming the file, the byte offset of the first bad byte and how to convert it.
- Every line of a .jsonl file must be one JSON value: a line that does not parse (typically a truncated last line:
  an interrupted download or copy) is refused with the file, line number and byte offset, never skipped, since a
  cut file may be missing more than one record.
- A .parquet file must have a readable footer (a truncated or corrupt file is refused in one line); damage further
  in is reported in one line by prepare when the row is read.

The scan reads each file once at about the speed of UTF-8 decoding (strict C decoding; the counting handler runs
only on the bad bytes), far less than tokenizing the same text costs.
"""

from __future__ import annotations

import codecs
import json
import os
from typing import Iterable

from ..errors import DataError, plural

NOT_TEXT_FRACTION = 0.01  # a file with more undecodable or NUL bytes than this is refused
CHUNK = 4 * 2**20
TEXT_SUFFIXES = (".txt", ".jsonl", ".json")


class _Counter:
    """Counts the bytes an incremental UTF-8 decoder could not decode (through a registered error handler)."""

    def __init__(self):
        self.bad = 0
        self.first = None  # offset of the first bad byte in the file
        self.base = 0  # file offset of the chunk being decoded
        self.pending = 0  # bytes the decoder held back from earlier chunks (an incomplete sequence)

    def handler(self, e: UnicodeDecodeError):
        if self.first is None:
            self.first = self.base - self.pending + e.start
        self.bad += e.end - e.start
        return "\ufffd", e.end


_COUNTER: list = []  # the counter of the scan in progress (one scan at a time per process)


def _count_errors(e):
    return _COUNTER[-1].handler(e)


codecs.register_error("lmsprint-count", _count_errors)


def _refuse(path: str, size: int, bad: int, nul: int, first: int) -> DataError:
    what = []
    if bad:
        what.append(f"{bad:,} undecodable")
    if nul:
        what.append(f"{nul:,} NUL")
    return DataError(f"{path} is not UTF-8 text: {' and '.join(what)} bytes of {size:,} (first at byte offset "
                     f"{first:,}), more than the {NOT_TEXT_FRACTION:.0%} that are replaced with U+FFFD; convert it "
                     "to UTF-8 (e.g. iconv -f latin1 -t utf-8) or remove it from the dataset")


def scan_text(path: str) -> int:
    """Number of undecodable bytes in a UTF-8 text file; DataError when it is mostly not text."""
    size = os.path.getsize(path)
    limit = NOT_TEXT_FRACTION * max(size, 1)
    counter = _Counter()
    dec = codecs.getincrementaldecoder("utf-8")(errors="lmsprint-count")
    nul = 0
    first_nul = None
    _COUNTER.append(counter)
    try:
        with open(path, "rb") as fh:
            while True:
                chunk = fh.read(CHUNK)
                final = not chunk
                n = chunk.count(b"\0")
                if n and first_nul is None:
                    first_nul = counter.base + chunk.index(b"\0")
                nul += n
                held = len(dec.getstate()[0])
                counter.pending = held
                dec.decode(chunk, final=final)
                counter.base += len(chunk)
                if counter.bad + nul > limit:
                    first = min(x for x in (counter.first, first_nul) if x is not None)
                    raise _refuse(path, size, counter.bad, nul, first)
                if final:
                    break
    except OSError as e:
        raise DataError(f"cannot read {path} ({e.strerror or type(e).__name__})")
    finally:
        _COUNTER.pop()
    return counter.bad


def scan_jsonl(path: str) -> None:
    """Every non-empty line parses as JSON; DataError naming the first line that does not."""
    offset = 0
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            if raw.strip():
                try:
                    json.loads(raw.decode("utf-8", errors="replace"))
                except ValueError as e:
                    last = not raw.endswith(b"\n") and not fh.read(1)
                    why = "the file ends inside this record (truncated?)" if last else getattr(e, "msg", str(e))
                    raise DataError(f"{path} line {lineno} (byte offset {offset:,}) is not valid JSON: {why}; fix or "
                                    "remove that line (lmsprint never skips records)")
            offset += len(raw)


def scan_json(path: str) -> None:
    """A .json file holds one JSON value (an array of records) or JSON lines."""
    with open(path, "rb") as fh:
        head = fh.read(4096).lstrip()
    if not head.startswith(b"["):
        scan_jsonl(path)
        return
    with open(path, "rb") as fh:
        data = fh.read().decode("utf-8", errors="replace")
    try:
        json.loads(data)
    except ValueError as e:
        raise DataError(f"{path} is not valid JSON ({e}); fix the file or remove it from the dataset")


def scan_parquet(path: str) -> None:
    """The parquet footer (schema, row groups) is readable."""
    try:
        import pyarrow.parquet as pq  # lazy: optional dependency (comes with the hub extra's datasets)
    except ImportError:
        return  # reading parquet needs datasets (and so pyarrow); sources.py reports that
    try:
        pq.ParquetFile(path).metadata
    except Exception as e:  # pyarrow raises ArrowInvalid/OSError subclasses for damaged files
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DataError(f"{path} is not a readable parquet file ({msg}); replace the file or remove it from the "
                        "dataset")


def scan_local_files(files: Iterable[str]) -> dict[str, int]:
    """Check every local file against the policy above; {path: undecodable bytes replaced} for files with any."""
    replaced = {}
    for f in files:
        ext = os.path.splitext(f)[1].lower()
        if ext in TEXT_SUFFIXES:
            n = scan_text(f)
            if n:
                replaced[f] = n
            if ext == ".jsonl":
                scan_jsonl(f)
            elif ext == ".json":
                scan_json(f)
        elif ext == ".parquet":
            scan_parquet(f)
    return replaced


def replaced_warning(replaced: dict[str, int]) -> str:
    """One line naming the files whose undecodable bytes were replaced (the first three, then a count)."""
    total = sum(replaced.values())
    items = sorted(replaced.items(), key=lambda kv: -kv[1])
    named = ", ".join(f"{os.path.basename(p)} ({n:,})" for p, n in items[:3])
    more = f" and {plural(len(items) - 3, 'more file', 'more files')}" if len(items) > 3 else ""
    return (f"lmsprint: warning: {total:,} bytes that are not valid UTF-8 were replaced with U+FFFD in "
            f"{plural(len(items), 'file')}: {named}{more} (counts per file are in manifest.json, 'replaced_bytes')")
