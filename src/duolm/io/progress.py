"""Progress for a person or for a log: a tqdm bar in a terminal (or a notebook), a few plain lines
anywhere else.

A bar redrawn in place is right on a screen and wrong in a file: a redirected training log held
one `\\r`-separated update per refresh (320 per run, with blank lines between). `progress_bar(...)`
gives tqdm where someone watches, and otherwise `LineProgress`, which writes one line when another
10% is done or 30 s have passed since its last line, and one at the end.
"""
from __future__ import annotations

import sys
import time

from tqdm.auto import tqdm


def _watched(stream) -> bool:
    if "ipykernel" in sys.modules:  # a notebook draws tqdm.auto's widget
        return True
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def progress_bar(iterable=None, *, total: int | None = None, desc: str = "", unit: str = "it", initial: int = 0,
             disable: bool = False, stream=None):
    """tqdm over `iterable` (or a bar of `total` driven by update) in a terminal, LineProgress elsewhere."""
    stream = sys.stderr if stream is None else stream
    if _watched(stream) or disable:
        return tqdm(iterable, total=total, desc=desc, unit=unit, initial=initial, disable=disable,
                    dynamic_ncols=True, file=stream)
    return LineProgress(iterable, total=total, desc=desc, unit=unit, initial=initial, stream=stream)


def _clock(seconds: float) -> str:
    m, s = divmod(round(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class LineProgress:
    """tqdm's small interface (iteration, update, set_postfix, close, n) as lines in a log: one when
    `every_fraction` more of the total is done or `every_seconds` have passed since the last line,
    and a last one on close."""

    def __init__(self, iterable=None, *, total: int | None = None, desc: str = "", unit: str = "it",
                 initial: int = 0, stream=None, every_seconds: float = 30.0, every_fraction: float = 0.1):
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self.iterable, self.total, self.desc, self.unit = iterable, total, desc, unit
        self.stream = sys.stderr if stream is None else stream
        self.every_seconds, self.every_fraction = every_seconds, every_fraction
        self.n = self._n0 = self._shown_n = initial
        self._t0 = self._shown_t = time.perf_counter()
        self.postfix: dict = {}
        self.closed = False

    def __iter__(self):
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def set_postfix(self, postfix: dict | None = None, refresh: bool = False, **kwargs):
        self.postfix = {**(postfix or {}), **kwargs}

    def update(self, n: int = 1):
        self.n += n
        now = time.perf_counter()
        step = self.every_fraction * self.total if self.total else float("inf")
        if self.n - self._shown_n >= max(1.0, step) or now - self._shown_t >= self.every_seconds:
            self._line(now)

    def line(self, now: float | None = None) -> str:
        now = time.perf_counter() if now is None else now
        elapsed = now - self._t0
        done = f"{self.n}/{self.total}" if self.total else str(self.n)
        text = f"{self.desc}: {done} {self.unit}"
        if self.total:
            text += f" ({100 * self.n / self.total:.0f}%)"
        text += f", {_clock(elapsed)} elapsed"
        rate = (self.n - self._n0) / elapsed if elapsed > 0 else 0.0
        if self.total and rate > 0 and self.n < self.total:
            text += f", {_clock((self.total - self.n) / rate)} left"
        if self.postfix:
            text += ", " + ", ".join(f"{k}={v}" for k, v in self.postfix.items())
        return text

    def _line(self, now: float):
        print(self.line(now), file=self.stream, flush=True)
        self._shown_n, self._shown_t = self.n, now

    def close(self):
        if self.closed:
            return
        self.closed = True
        if self.n != self._shown_n:
            self._line(time.perf_counter())
