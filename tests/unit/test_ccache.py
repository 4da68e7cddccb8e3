"""The shared compile cache's one variable: parsed, probed once, handed to ccache, and when the remote
does not answer, the build goes on with exactly one warning line. Also what make_env pins."""
from __future__ import annotations

import os
import shutil
import socket
import threading
from collections.abc import Iterator

import ccache_counters
import pytest

from harness import ccache
from harness.errors import InvalidArgument
from harness.kernel import build


@pytest.fixture(autouse=True)
def _fresh_probe_cache() -> Iterator[None]:
    ccache._checked.cache_clear()
    yield
    ccache._checked.cache_clear()


class FakeServer:
    """A TCP listener on loopback answering every connection with ``reply``."""

    def __init__(self, reply: bytes):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.05)
        self.port = self.sock.getsockname()[1]
        self.reply = reply
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(1)
                conn.recv(64)
                conn.sendall(self.reply)

    def close(self) -> None:
        # The thread leaves accept() within its timeout; only then is the listening socket closed, so
        # the port is really released (closing it under a blocked accept() keeps it listening, and a
        # later test's server bound to port 0 could be handed the same port).
        self.stop.set()
        self.thread.join(timeout=5)
        self.sock.close()


@pytest.fixture
def redis_like() -> Iterator[FakeServer]:
    s = FakeServer(b"+PONG\r\n")
    yield s
    s.close()


def _closed_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as s:
        return int(s.getsockname()[1])


def test_parse_urls():
    r = ccache.parse("redis://:pw@cache.internal/2")
    assert (r.scheme, r.host, r.port) == ("redis", "cache.internal", 6379)
    assert r.display == "redis://cache.internal:6379" and "pw" not in r.display
    assert ccache.parse("http://10.0.0.5:8080/ccache").port == 8080
    for bad in ("https://x", "ftp://x", "redis://", "cache:6379", "redis://h:99999"):
        with pytest.raises(InvalidArgument, match="NEONVM_CCACHE_REMOTE"):
            ccache.parse(bad)


def test_probe(redis_like):
    assert ccache.probe(ccache.parse(f"redis://127.0.0.1:{redis_like.port}")) is None
    assert ccache.probe(ccache.parse(f"http://127.0.0.1:{redis_like.port}")) is None
    assert "refused" in (ccache.probe(ccache.parse(f"redis://127.0.0.1:{_closed_port()}")) or "").lower()
    other = FakeServer(b"HTTP/1.1 400 Bad Request\r\n\r\n")
    try:
        assert "Redis" in (ccache.probe(ccache.parse(f"redis://127.0.0.1:{other.port}")) or "")
    finally:
        other.close()
    auth = FakeServer(b"-NOAUTH Authentication required.\r\n")
    try:  # a password-protected Redis answers too: ccache passes the URL's password
        assert ccache.probe(ccache.parse(f"redis://127.0.0.1:{auth.port}")) is None
    finally:
        auth.close()


def test_remote_env_unset_is_empty(monkeypatch):
    monkeypatch.delenv(ccache.ENV, raising=False)
    assert ccache.remote_env() == {}
    monkeypatch.setenv(ccache.ENV, "  ")
    assert ccache.remote_env() == {}


def test_reachable_remote_is_handed_to_ccache(monkeypatch, redis_like, capsys):
    url = f"redis://127.0.0.1:{redis_like.port}"
    monkeypatch.setenv(ccache.ENV, url)
    assert ccache.remote_env() == {"CCACHE_REMOTE_STORAGE": url}
    assert capsys.readouterr().err == ""


def test_unreachable_remote_is_one_warning_line_and_the_build_goes_on(monkeypatch, capsys):
    monkeypatch.setenv(ccache.ENV, f"redis://:secret@127.0.0.1:{_closed_port()}")
    for _ in range(3):  # make_env is called for every make: still one line
        assert ccache.remote_env() == {}
        assert "CCACHE_REMOTE_STORAGE" not in build.make_env()
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith("warning: [ccache] remote cache redis://127.0.0.1:")
    assert "local cache only" in err and "secret" not in err


def test_make_env_pins_what_the_kernel_bakes_in(monkeypatch, tmp_path, redis_like):
    monkeypatch.delenv("KBUILD_BUILD_TIMESTAMP", raising=False)
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    monkeypatch.setenv(ccache.ENV, f"redis://127.0.0.1:{redis_like.port}")
    (tmp_path / "Makefile").write_text("")
    os.utime(tmp_path / "Makefile", (1731500000, 1731500000))
    env = build.make_env(tmp_path)
    assert env["KBUILD_BUILD_TIMESTAMP"] == "2024-11-13 12:13:20 UTC"  # the tree's source date
    assert env["KBUILD_BUILD_VERSION"] == "1"
    assert env["HOSTCFLAGS"].endswith("-ffile-prefix-map=$(abs_objtree)/=")  # objtool's -g: no build dir
    assert env["CCACHE_REMOTE_STORAGE"] == f"redis://127.0.0.1:{redis_like.port}"
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "0")
    assert build.make_env(tmp_path)["KBUILD_BUILD_TIMESTAMP"] == "1970-01-01 00:00:00 UTC"
    monkeypatch.setenv("KBUILD_BUILD_TIMESTAMP", "given")
    assert build.make_env(tmp_path)["KBUILD_BUILD_TIMESTAMP"] == "given"


def test_hit_rate():
    assert ccache_counters.remote_hit_rate({"remote_storage_hit": 3, "remote_storage_miss": 1}) == 0.75
    assert ccache_counters.remote_hit_rate({}) == 0.0


@pytest.mark.skipif(not shutil.which("ccache"), reason="ccache is not installed")
def test_stats_reads_ccaches_counters(tmp_path):
    counters = ccache_counters.stats({"CCACHE_DIR": str(tmp_path / "cc")})
    assert counters["remote_storage_hit"] == 0 and "local_storage_miss" in counters
