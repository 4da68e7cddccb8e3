"""ccache's counters, read the way the tests measure the shared cache (tests/ is on sys.path)."""
from __future__ import annotations

from pathlib import Path

from harness import proc


def stats(env: dict[str, str] | None = None, *, log: Path | None = None) -> dict[str, int]:
    """ccache's counters (``ccache --print-stats``) for the cache ``env`` selects (CCACHE_DIR)."""
    out = proc.capture(["ccache", "--print-stats"], step="ccache-stats", env=env, log=log)
    counters: dict[str, int] = {}
    for line in out.splitlines():
        key, _, value = line.partition("\t")
        if value.strip().lstrip("-").isdigit():
            counters[key.strip()] = int(value)
    return counters


def remote_hit_rate(counters: dict[str, int]) -> float:
    """Of the compiles the local cache missed, the share the remote served."""
    hits, misses = counters.get("remote_storage_hit", 0), counters.get("remote_storage_miss", 0)
    return hits / (hits + misses) if hits + misses else 0.0
