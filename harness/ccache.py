"""A compile cache shared by a team's runners: ccache's remote storage, named by one variable.

``NEONVM_CCACHE_REMOTE=redis://HOST:PORT`` (or ``http://HOST:PORT/PATH``, the two backends Debian's
ccache 4.8 has; ``redis://[[USER:]PASSWORD@]HOST[:PORT][/DB]``) is handed to ccache as its
``remote_storage`` (``CCACHE_REMOTE_STORAGE``) for every kernel make. The local cache stays in front
of it: a hit is served locally, a local miss is looked up remotely, and a compile result is written
to both, so every runner pointing at one remote shares its objects.

ccache itself never fails a compile because of its remote: a refused connection only counts
``remote_storage_error`` and an unreachable host costs ccache's connect timeout on every compile.
So the harness checks the remote once, before make, with a short timeout: when it does not answer
the build goes on with the local cache only and says so in exactly one warning line.
"""
from __future__ import annotations

import functools
import logging
import os
import socket
import sys
import urllib.parse
from dataclasses import dataclass

from harness.errors import InvalidArgument

LOG = logging.getLogger(__name__)
ENV = "NEONVM_CCACHE_REMOTE"
SCHEMES = {"redis": 6379, "http": 80}
CONNECT_TIMEOUT = 2.0  # seconds: a remote on the runners' network answers in milliseconds


@dataclass(frozen=True)
class Remote:
    url: str
    scheme: str
    host: str
    port: int

    @property
    def display(self) -> str:
        """The URL without its password (never printed)."""
        netloc = f"{self.host}:{self.port}" if ":" not in self.host else f"[{self.host}]:{self.port}"
        return f"{self.scheme}://{netloc}"


def parse(url: str) -> Remote:
    """Validate a remote storage URL (redis:// or http://) and split out what the probe needs."""
    parts = urllib.parse.urlsplit(url.strip())
    if parts.scheme not in SCHEMES:
        raise InvalidArgument(f"{ENV}: {parts.scheme or url!r}: not a remote ccache 4.8 supports "
                              f"(use {' or '.join(s + '://HOST:PORT' for s in SCHEMES)})", step="ccache")
    if not parts.hostname:
        raise InvalidArgument(f"{ENV}: {parts.scheme}:// URL names no host", step="ccache")
    try:
        port = parts.port or SCHEMES[parts.scheme]
    except ValueError:
        raise InvalidArgument(f"{ENV}: bad port in {parts.scheme}://{parts.hostname}", step="ccache") from None
    return Remote(url=url.strip(), scheme=parts.scheme, host=parts.hostname, port=port)


def probe(remote: Remote, *, timeout: float = CONNECT_TIMEOUT) -> str | None:
    """None when the remote answers, else why not (one short phrase). Redis is asked PING: an
    answer of any kind (PONG, or an authentication error ccache will resolve with its URL's
    password) proves a Redis server listens there."""
    try:
        with socket.create_connection((remote.host, remote.port), timeout=timeout) as sock:
            if remote.scheme == "redis":
                sock.sendall(b"PING\r\n")
                reply = sock.recv(64)
                if reply[:1] not in (b"+", b"-"):
                    return f"{remote.host}:{remote.port} does not answer like a Redis server"
    except OSError as exc:
        return exc.strerror or type(exc).__name__
    return None


@functools.cache
def _checked(url: str) -> tuple[tuple[str, str], ...]:
    remote = parse(url)
    why = probe(remote)
    if why is not None:
        print(f"warning: [ccache] remote cache {remote.display} unreachable ({why}); building with the "
              "local cache only", file=sys.stderr, flush=True)
        return ()
    LOG.info("ccache remote storage: %s", remote.display)
    return (("CCACHE_REMOTE_STORAGE", remote.url),)


def remote_env() -> dict[str, str]:
    """The environment that points ccache at ``$NEONVM_CCACHE_REMOTE``: empty when unset or when
    the remote does not answer (checked once per process, one warning line)."""
    url = os.environ.get(ENV, "").strip()
    return dict(_checked(url)) if url else {}
