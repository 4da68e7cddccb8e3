"""Fixtures of the unit tests: a private world (cache, out, configs), a fake kernel tarball, a
kernel.org mirror on loopback, and a fake cross toolchain. The builders behind them live in
build_fakes.py."""
from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from build_fakes import Mirror, Tarball, World, fake_cross_toolchain, make_world, pack


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> World:
    """Private cache, out and configs/ (pin: kernel.org provider, no recorded sha256)."""
    return make_world(tmp_path, monkeypatch)


@pytest.fixture(scope="session")
def fake_tarball(tmp_path_factory: pytest.TempPathFactory) -> Tarball:
    """fixtures/fakelinux as linux-6.12.117.tar.xz, packed once (tests only read it)."""
    return pack(tmp_path_factory.mktemp("fakelinux"))


@pytest.fixture
def mirror(world: World) -> Iterator[Mirror]:
    """A kernel.org mirror on 127.0.0.1, and the world's pin pointing at it."""
    m = Mirror(world.tmp / "mirror")
    world.mirror_url = m.base_url
    world.write_pin()
    yield m
    m.close()


@pytest.fixture
def cross_gcc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Fake aarch64-linux-gnu-gcc/-ld first on PATH (the host's cross compiler is not needed)."""
    bindir = fake_cross_toolchain(tmp_path / "cross-bin")
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    return bindir
