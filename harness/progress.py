"""Timing of steps: one helper for every duration the harness records."""
from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from types import TracebackType

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
            durations[name] = round(time.monotonic() - t.start, digits)
