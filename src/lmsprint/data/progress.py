"""Progress of `prepare`: a tqdm bar on a terminal, plain lines anywhere else (a log file, SLURM, nohup, a pipe).

`progress_bar(show, desc, unit, total=None, initial=0, unit_scale=False)` returns an object with tqdm's `update(n)`
and `close()`: nothing when `show` is false; a tqdm bar redrawn in place when stderr is a terminal; otherwise a
`LineProgress`, which never writes a carriage return: one line at most every `LINE_EVERY_S` seconds and one when it
closes (as `train` prints plain lines instead of its bar when its output is not a terminal).
"""

from __future__ import annotations

import sys
import time
from typing import Optional

from tqdm import tqdm

LINE_EVERY_S = 30.0


def _si(n: float) -> str:
    for div, suf in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= div:
            return f"{n / div:.1f} {suf}"
    return f"{n:.0f} "


class LineProgress:
    """tqdm's `update`/`close` as plain lines on `stream`: at most one every `every` seconds, and one at the end."""

    def __init__(self, desc: str, unit: str, total: Optional[float] = None, initial: float = 0,
                 unit_scale: bool = False, stream=None, every: float = LINE_EVERY_S):
        self.desc, self.unit, self.total, self.n = desc, unit.strip(), total, initial
        self.unit_scale, self.stream, self.every = unit_scale, stream or sys.stderr, every
        self.t0 = self.last = time.monotonic()
        self.closed = False

    def _amount(self, n: float) -> str:
        return f"{_si(n)}{self.unit}" if self.unit_scale else f"{n:,.0f} {self.unit}"

    def line(self) -> str:
        text = f"{self.desc}: {self._amount(self.n)}"
        if self.total:
            text += f" of {self._amount(self.total)} ({min(self.n / self.total, 1.0):.0%})"
        return text + f", {time.monotonic() - self.t0:.0f}s"

    def update(self, n: float = 1) -> None:
        self.n += n
        now = time.monotonic()
        if now - self.last >= self.every:
            self.last = now
            print(self.line(), file=self.stream, flush=True)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            print(self.line(), file=self.stream, flush=True)


def _isatty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def progress_bar(show: bool, desc: str, unit: str, total: Optional[float] = None, initial: float = 0,
                 unit_scale: bool = False):
    """A bar on a terminal, plain lines elsewhere, nothing when not `show` (see the module doc)."""
    if show and not _isatty(sys.stderr):
        return LineProgress(desc, unit, total, initial, unit_scale)
    return tqdm(disable=not show, file=sys.stderr, dynamic_ncols=True, desc=desc, unit=unit, total=total,
                initial=initial, unit_scale=unit_scale)
