"""Timing of steps (one helper for every duration the harness records) and the live progress
line of long steps."""
from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Iterator
from types import TracebackType
from typing import TextIO

LOG = logging.getLogger(__name__)


class Timer:
    """``with Timer() as t: ...`` then ``t.duration`` (seconds, monotonic clock)."""

    def __init__(self) -> None:
        self.start = 0.0
        self.duration = 0.0

    @classmethod
    def begin(cls) -> Timer:
        """A timer already running (for a span that is not one block): read ``elapsed``."""
        return cls().__enter__()

    def __enter__(self) -> Timer:
        self.start = time.monotonic()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.duration = time.monotonic() - self.start

    @property
    def elapsed(self) -> float:
        """Seconds since the start, while the block still runs."""
        return time.monotonic() - self.start


@contextlib.contextmanager
def timed(durations: dict[str, float], name: str, *, digits: int = 2) -> Iterator[Timer]:
    """Record the duration of a named step into ``durations`` (also when the step raises)."""
    LOG.info("step %s", name)
    with Timer() as t:
        try:
            yield t
        finally:
            durations[name] = round(t.elapsed, digits)


class Progress:
    """A one-line live progress display for long steps.

    On a terminal the line is redrawn in place; elsewhere (CI logs) a line is printed every
    ``interval`` seconds so that a long step is visibly alive without flooding the log.
    """

    def __init__(self, label: str, *, stream: TextIO | None = None, interval: float = 30.0):
        self.label = label
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.interval = interval if not self.tty else 0.5
        self.clock = Timer.begin()
        self.last = 0.0
        self.count = 0
        self.detail = ""

    def elapsed(self) -> str:
        secs = int(self.clock.elapsed)
        return f"{secs // 60}m{secs % 60:02d}s"

    def tick(self, detail: str = "", n: int = 1) -> None:
        self.count += n
        if detail:
            self.detail = detail
        now = time.monotonic()
        if now - self.last >= self.interval:
            self.last = now
            self._draw()

    def _draw(self) -> None:
        text = f"{self.label}: {self.count} done, {self.elapsed()}"
        if self.detail:
            text += f"  {self.detail[:60]}"
        if self.tty:
            self.stream.write("\r\x1b[K" + text)
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def done(self, summary: str = "") -> None:
        text = f"{self.label}: {summary or f'{self.count} done'} in {self.elapsed()}"
        if self.tty:
            self.stream.write("\r\x1b[K" + text + "\n")
        else:
            self.stream.write(text + "\n")
        self.stream.flush()
