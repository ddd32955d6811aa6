"""A one-line progress report on stderr: tiles done, tiles per second, time left.

Written here rather than taken from tqdm because tqdm is not one of the package's declared
dependencies (it only arrives through huggingface_hub), and a progress line is a few lines of code.
On a terminal the line is redrawn in place; in a log file (or under torchrun, where several
processes share the terminal) a full line is printed at most every ``log_every`` seconds.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


def format_duration(seconds: float) -> str:
    """``75`` -> ``"1m15s"``, ``3725`` -> ``"1h02m"``."""
    if seconds != seconds or seconds == float("inf"):
        return "?"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{(seconds % 3600) // 60:02d}m"


class Progress:
    """Tiles done out of ``total``, with tiles/s and ETA.

    Args:
        total: tiles to process.
        label: what is being processed (scene name, rank).
        stream: where to write (stderr).
        enabled: ``False`` prints nothing (``--quiet``).
        log_every: seconds between lines when ``stream`` is not a terminal.
    """

    def __init__(self, total: int, label: str = "", stream: TextIO | None = None, enabled: bool = True,
                 log_every: float = 10.0):
        self.total = max(int(total), 0)
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.done = 0
        self.start = time.perf_counter()
        self.log_every = log_every
        self._last_draw = 0.0
        self._tty = bool(getattr(self.stream, "isatty", lambda: False)())

    def rate(self) -> float:
        elapsed = time.perf_counter() - self.start
        return self.done / elapsed if elapsed > 0 else 0.0

    def line(self) -> str:
        rate = self.rate()
        eta = (self.total - self.done) / rate if rate > 0 else float("inf")
        percent = 100.0 * self.done / self.total if self.total else 100.0
        prefix = f"{self.label}: " if self.label else ""
        return (f"{prefix}{self.done}/{self.total} tiles ({percent:3.0f}%)  {rate:.2f} tiles/s  "
                f"ETA {format_duration(eta)}")

    def update(self, n: int) -> None:
        self.done += n
        if not self.enabled:
            return
        now = time.perf_counter()
        finished = self.done >= self.total
        if self._tty:
            if finished or now - self._last_draw >= 0.2:
                self.stream.write("\r" + self.line() + "\x1b[K")
                self.stream.flush()
                self._last_draw = now
        elif finished or now - self._last_draw >= self.log_every:
            self.stream.write(self.line() + "\n")
            self.stream.flush()
            self._last_draw = now

    def close(self) -> None:
        if self.enabled and self._tty:
            self.stream.write("\n")
            self.stream.flush()
