"""Fakes of the build pipeline's outside world: the fake kernel tree (fixtures/fakelinux) packed as
a tarball, a kernel.org mirror on a loopback HTTP server, a configs/ directory (pin, variants,
fragments, patch series) in a temporary directory, and fake cross compilers.

Every test that uses ``world`` gets its own cache and output directories (NEONVM_KERNEL_CACHE,
NEONVM_KERNEL_OUT) and its own configs/: nothing here reads or writes ~/.cache/neonvm-kernel,
out/ or the repository's configs/.
"""
from __future__ import annotations

import functools
import hashlib
import http.server
import re
import shutil
import stat
import tarfile
import textwrap
import threading
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from fixture_paths import FIXTURES

from harness.arch import get_arch
from harness.kernel import build, kconfig, patches, source

FAKELINUX = FIXTURES / "fakelinux"
VERSION = "6.12.117"  # what fixtures/fakelinux/Makefile says
DEBIAN_PACKAGE = "linux-source-6.12"
DEBIAN_VERSION = "6.12.117-1~deb12u1"

FRAGMENTS = {
    "base": """\
        # test base: on top of tinyconfig
        CONFIG_64BIT=y
        CONFIG_PRINTK=y
        CONFIG_MODULES=y
        # the release is exactly VERSION.PATCHLEVEL.SUBLEVEL plus the suffix
        # CONFIG_LOCALVERSION_AUTO is not set
        """,
    "virtio": """\
        # virtio-mem and what it needs
        CONFIG_VIRTIO=y
        CONFIG_MEMORY_HOTPLUG=y
        CONFIG_MEMORY_HOTREMOVE=y
        CONFIG_VIRTIO_MEM=y
        CONFIG_VIRTIO_BALLOON=m
        """,
    "arch/amd64": "CONFIG_ACPI=y\n",
    "arch/arm64": "CONFIG_EFI=y\n",
    "broken": "# makes the fake tree's build fail like a compiler error\nCONFIG_FAKE_BREAK_BUILD=y\n",
}

VARIANTS = """\
    # variants of the unit tests (the real ones are in the repository's configs/variants.toml)
    [test]
    base = "tinyconfig"
    fragments = ["base", "virtio", "arch/{arch}"]
    suffix = "-neonvm-test"
    committed = false

    [broken]
    base = "tinyconfig"
    fragments = ["base", "virtio", "arch/{arch}", "broken"]
    suffix = "-neonvm-broken"
    committed = false

    [production]
    base = "tinyconfig"
    fragments = ["base", "virtio", "arch/{arch}"]
    suffix = "-neonvm"
    committed = true
    """

PIN = """\
    # The pinned kernel (unit-test copy).
    version = "{version}"
    # Default provider
    provider = "{provider}"

    [debian]
    # Debian's linux-source package
    package = "{package}"
    package_version = "{package_version}"
    tarball = "{debian_tarball}"
    # sha256 of the tarball that package version ships.
    sha256 = "{debian_sha256}"

    [kernelorg]
    # the loopback mirror of the test
    base_url = "{base_url}"
    # sha256 of linux-{{version}}.tar.xz
    sha256 = "{kernelorg_sha256}"
    # no keyring: the signature step is reported as not run
    keyring = "{keyring}"
    """


@dataclass(frozen=True)
class Tarball:
    path: Path
    sha256: str
    version: str


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _normalise(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
    return info


def pack(dest_dir: Path, version: str = VERSION, *, makefile_version: str | None = None,
         unsatisfiable: tuple[str, ...] = (), files: dict[str, str] | None = None,
         name: str | None = None) -> Tarball:
    """fixtures/fakelinux as ``dest_dir/linux-<version>.tar.xz`` (top directory ``linux-<version>/``).

    ``makefile_version`` rewrites the Makefile's VERSION/PATCHLEVEL/SUBLEVEL (default: ``version``);
    ``unsatisfiable`` lists options the fake olddefconfig drops; ``files`` adds or replaces files."""
    dest_dir.mkdir(parents=True, exist_ok=True)
    stage = dest_dir / f".stage-{name or version}"
    top = stage / f"linux-{version}"
    shutil.rmtree(stage, ignore_errors=True)
    shutil.copytree(FAKELINUX, top, symlinks=True, ignore=shutil.ignore_patterns("README"))
    major, minor, sub = (makefile_version or version).split(".")
    mk = top / "Makefile"
    text = mk.read_text()
    for key, val in (("VERSION", major), ("PATCHLEVEL", minor), ("SUBLEVEL", sub)):
        text = re.sub(rf"^{key} = .*$", f"{key} = {val}", text, count=1, flags=re.M)
    mk.write_text(text)
    if unsatisfiable:
        (top / "fake-unsatisfiable").write_text("".join(f"{o}\n" for o in unsatisfiable))
    for rel, content in (files or {}).items():
        (top / rel).parent.mkdir(parents=True, exist_ok=True)
        (top / rel).write_text(content)
    path = dest_dir / (name or f"linux-{version}.tar.xz")
    with tarfile.open(path, "w:xz") as tf:
        tf.add(top, arcname=top.name, filter=_normalise)
    shutil.rmtree(stage)
    return Tarball(path, sha256(path), version)


def copy_tree(dest: Path, *, unsatisfiable: tuple[str, ...] = ()) -> Path:
    """An unpacked copy of the fake tree (for kconfig tests that need no tarball)."""
    shutil.copytree(FAKELINUX, dest, symlinks=True)
    if unsatisfiable:
        (dest / "fake-unsatisfiable").write_text("".join(f"{o}\n" for o in unsatisfiable))
    return dest


def write_exe(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def fake_cross_toolchain(bindir: Path, triplet: str = "aarch64-linux-gnu") -> Path:
    """A ``<triplet>-gcc`` and ``-ld`` that only answer --version (the fake tree compiles nothing)."""
    for tool in ("gcc", "ld"):
        write_exe(bindir / f"{triplet}-{tool}",
                  f"#!/bin/sh\necho '{triplet}-{tool} (fakelinux) 12.2.0'\n")
    return bindir


def tool_bin(bindir: Path, tools: tuple[str, ...]) -> Path:
    """A directory holding symlinks to just these host programs (to build a PATH without others)."""
    bindir.mkdir(parents=True, exist_ok=True)
    for tool in tools:
        real = shutil.which(tool)
        assert real, f"host program {tool} is needed by the unit tests"
        (bindir / tool).symlink_to(real)
    return bindir


class Mirror:
    """A kernel.org-shaped mirror (``v6.x/linux-<version>.tar.xz``) on 127.0.0.1."""

    def __init__(self, root: Path):
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.requests: list[str] = []
        mirror = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def log_message(self, fmt, *args):  # recorded, not printed
                mirror.requests.append(self.path)

        handler = functools.partial(Handler, directory=str(root))
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}/pub/linux/kernel"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02},
                                       daemon=True)
        self.thread.start()

    def publish(self, tarball: Tarball, *, data: bytes | None = None) -> str:
        """Serve ``tarball`` (or other bytes under its name); return its URL."""
        major = tarball.version.split(".")[0]
        dest = self.root / "pub/linux/kernel" / f"v{major}.x" / f"linux-{tarball.version}.tar.xz"
        dest.parent.mkdir(parents=True, exist_ok=True)
        if data is None:
            shutil.copyfile(tarball.path, dest)
        else:
            dest.write_bytes(data)
        return f"{self.base_url}/v{major}.x/{dest.name}"

    def tarball_requests(self) -> list[str]:
        return [r for r in self.requests if r.endswith(".tar.xz")]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


@dataclass
class World:
    """A test's private cache, output and configs/ directories, and the tarballs it packs."""

    tmp: Path
    cache: Path
    out: Path
    configs: Path
    mirror_url: str = "http://127.0.0.1:1/pub/linux/kernel"  # (the ``mirror`` fixture sets a real one)
    tarballs: Path = field(init=False)

    def __post_init__(self) -> None:
        self.tarballs = self.tmp / "tarballs"

    @property
    def downloads(self) -> Path:
        return self.cache / "downloads"

    @property
    def trees(self) -> Path:
        return self.cache / "trees"

    @property
    def series_dir(self) -> Path:
        return self.configs / "patches"

    def pack(self, version: str = VERSION, **kw) -> Tarball:
        return pack(self.tarballs, version, **kw)

    def write_pin(self, *, version: str = VERSION, provider: str = "kernelorg", kernelorg_sha256: str = "",
                  debian_tarball: Path | str = "/nonexistent/linux-source-6.12.tar.xz",
                  debian_sha256: str = "", package_version: str = DEBIAN_VERSION,
                  keyring: str | None = None) -> source.Pin:
        path = self.configs / "kernel.toml"
        path.write_text(textwrap.dedent(PIN).format(
            version=version, provider=provider, package=DEBIAN_PACKAGE, package_version=package_version,
            debian_tarball=debian_tarball, debian_sha256=debian_sha256, base_url=self.mirror_url,
            kernelorg_sha256=kernelorg_sha256, keyring=keyring or str(self.tmp / "no-keyring.gpg")))
        return source.Pin.load(path)

    def pin(self) -> source.Pin:
        return source.Pin.load(self.configs / "kernel.toml")

    def tree_dirs(self) -> list[Path]:
        """Unpacked trees in the cache (finished or not); lock files are not trees."""
        if not self.trees.is_dir():
            return []
        return sorted(p for p in self.trees.iterdir() if p.is_dir())

    def add_patch(self, name: str, text: str, directory: Path | None = None) -> Path:
        d = directory or self.series_dir
        d.mkdir(parents=True, exist_ok=True)
        p = d / name
        p.write_text(textwrap.dedent(text))
        return p

    def request(self, arch: str = "amd64", variant: str = "test", *, tarball: Tarball | None = None,
                out: Path | None = None, **kw) -> build.BuildRequest:
        """A build request for the local provider (``tarball`` and its sha256), no ccache."""
        kw.setdefault("use_ccache", False)
        kw.setdefault("jobs", 2)
        if tarball is not None:
            kw.setdefault("source_path", tarball.path)
            kw.setdefault("sha256", tarball.sha256)
            kw.setdefault("version", tarball.version)
        return build.BuildRequest(arch=get_arch(arch), variant=kconfig.get_variant(variant),
                                  out_dir=out or self.out / arch, pin=self.pin(), **kw)


def make_world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> World:
    # configs/ inside a repository root of its own: upgrade rewrites mentions of the pin there
    cache, out, configs = tmp_path / "cache", tmp_path / "out", tmp_path / "repo" / "configs"
    monkeypatch.setenv("NEONVM_KERNEL_CACHE", str(cache))
    monkeypatch.setenv("NEONVM_KERNEL_OUT", str(out))
    for name, text in FRAGMENTS.items():
        p = configs / "fragments" / f"{name}.config"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(textwrap.dedent(text))
    (configs / "variants.toml").write_text(textwrap.dedent(VARIANTS))
    (configs / "patches").mkdir()
    monkeypatch.setattr(kconfig, "CONFIGS", configs)
    monkeypatch.setattr(kconfig, "FRAGMENTS", configs / "fragments")
    monkeypatch.setattr(source, "CONFIGS", configs)
    monkeypatch.setattr(patches, "DEFAULT_SERIES", configs / "patches")
    world = World(tmp_path, cache, out, configs)
    world.write_pin()
    return world


PATCH_ADD = """\
    --- a/kernel/fork.c
    +++ b/kernel/fork.c
    @@ -10,4 +10,5 @@
     {
     \tnr_threads++;
    +\tnr_threads_added_by_0001++;
     \treturn 0;
     }
    """

PATCH_MODIFY = """\
    --- a/kernel/fork.c
    +++ b/kernel/fork.c
    @@ -10,5 +10,5 @@
     {
     \tnr_threads++;
    -\tnr_threads_added_by_0001++;
    +\tnr_threads_changed_by_0002++;
     \treturn 0;
     }
    """

PATCH_BAD = """\
    --- a/kernel/fork.c
    +++ b/kernel/fork.c
    @@ -16,3 +16,3 @@
     {
    -\tnr_threads -= 2;
    +\tnr_threads -= 3;
     \treturn 0;
    """

PATCH_NEW_FILE = """\
    --- /dev/null
    +++ b/kernel/neonvm.c
    @@ -0,0 +1 @@
    +int neonvm;
    """
