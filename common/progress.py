"""Progress that suits where it is written: a tqdm bar on a terminal, a few plain lines in a log.

A bar redraws itself with carriage returns, which a log file or CI output keeps as thousands of
partial lines. When stderr is not a terminal, :func:`progress` prints a line every ``every``
percent of the work (and at the end) instead.
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO


class LineProgress:
    """The part of tqdm's interface mirpatch uses, printed as whole lines."""

    def __init__(self, total: int, desc: str, unit: str, file: TextIO, every: float = 10.0):
        self.total, self.desc, self.unit, self.file = total, desc, unit, file
        self.n, self.t0, self.postfix, self.closed = 0, time.perf_counter(), "", False
        self.step = max(1, int(total * every / 100)) if total else 1
        self.next = self.step

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.n >= self.next and self.n < self.total:
            self._line()
            self.next = (self.n // self.step + 1) * self.step

    def set_postfix(self, **kw: Any) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in kw.items())

    def _line(self) -> None:
        rate = self.n / max(time.perf_counter() - self.t0, 1e-9)
        pct = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        tail = f", {self.postfix}" if self.postfix else ""
        print(
            f"{self.desc}: {self.n}/{self.total} {self.unit}s{pct}, {rate:.1f} {self.unit}/s{tail}",
            file=self.file,
            flush=True,
        )

    def close(self) -> None:
        if not self.closed and self.n and self.n >= self.total:
            self._line()
        self.closed = True  # a second close prints nothing


class _Off:
    def update(self, n: int = 1) -> None: ...
    def set_postfix(self, **kw: Any) -> None: ...
    def close(self) -> None: ...


def progress(
    total: int,
    desc: str,
    unit: str = "it",
    enabled: bool = True,
    leave: bool = True,
    file: TextIO | None = None,
):
    """A tqdm bar when ``file`` (stderr) is a terminal, :class:`LineProgress` otherwise.

    ``leave=False`` bars (one per epoch, whose summary line the caller prints anyway) print
    nothing when not on a terminal."""
    file = file or sys.stderr
    if not enabled:
        return _Off()
    if file.isatty():
        from tqdm import tqdm

        return tqdm(total=total, desc=desc, unit=unit, leave=leave, file=file)
    return LineProgress(total, desc, unit, file) if leave else _Off()
