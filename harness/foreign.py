"""Debian packages for a foreign architecture, unpacked into the cache without touching the host.

apt-get runs with a private state (its own package lists and archive cache under
``cache_root()/foreign/<debian arch>/apt/``) and ``APT::Architecture`` set to the target, so the
host's dpkg architectures and package lists stay as they are; the archive is the host's own
(``/etc/apt/sources.list*``). Packages are fetched with ``apt-get download`` (no dependency
resolution, no maintainer scripts) and unpacked with ``dpkg -x``.

Users: the boot test's busybox for a foreign guest (``initramfs.fetch_busybox``) and the static
libraries a cross-built perf links (``toolsimage.perf_sysroot``: ``Arch.perf_sysroot_packages``).
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness import fsutil, layout, proc
from harness.arch import Arch
from harness.errors import InfraError, Locked
from harness.tools import elf

LOG = logging.getLogger(__name__)

APT_TIMEOUT = 300  # seconds for one apt-get update/download (far above what it takes)
LOCK_WAIT = 600  # seconds to wait for another run using the same apt state


def foreign_dir(debian_arch: str) -> Path:
    return layout.cache_root() / "foreign" / debian_arch


def apt_options(debian_arch: str, apt: Path) -> list[str]:
    """apt-get options for a private state (lists and archive cache under ``apt``) for ``debian_arch``."""
    return [f"-oAPT::Architecture={debian_arch}", f"-oAPT::Architectures={debian_arch}",
            f"-oDir::State::Lists={apt / 'lists'}", f"-oDir::Cache={apt / 'cache'}"]


@contextlib.contextmanager
def _waiting_lock(path: Path, *, step: str, what: str, wait: float = LOCK_WAIT) -> Iterator[None]:
    """An exclusive lock that waits (a fetch takes seconds) instead of refusing at once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise Locked(f"{what} is still in use by another run after {wait:.0f}s", step=step,
                                 log=path) from None
                time.sleep(1)
        yield


def download_and_unpack(debian_arch: str, packages: Sequence[str], root: Path, *, step: str,
                        log: Path) -> list[str]:
    """Download ``packages`` for ``debian_arch`` and ``dpkg -x`` each into ``root``; return the
    ``.deb`` file names (``name_version_arch.deb``), in the order asked."""
    apt = foreign_dir(debian_arch) / "apt"
    (apt / "lists" / "partial").mkdir(parents=True, exist_ok=True)
    (apt / "cache" / "archives" / "partial").mkdir(parents=True, exist_ok=True)
    opts = apt_options(debian_arch, apt)
    names: list[str] = []
    with _waiting_lock(apt.with_name("apt.lock"), step=step, what=f"apt state for {debian_arch}"):
        proc.run(["apt-get", *opts, "update"], step=step, log=log, timeout=APT_TIMEOUT)
        with tempfile.TemporaryDirectory(dir=apt) as tmp:
            proc.run(["apt-get", *opts, "download", *packages], step=step, log=log, cwd=tmp,
                     timeout=APT_TIMEOUT)
            for pkg in packages:
                debs = sorted(Path(tmp).glob(f"{pkg}_*.deb"))
                if not debs:
                    raise InfraError(f"apt-get download left no {pkg} .deb", step=step, log=log)
                proc.run(["dpkg", "-x", debs[0], root], step=step, log=log, timeout=120)
                names.append(debs[0].name)
    return names


# -- unpacked package sets, cached ------------------------------------------------------------------
@dataclass(frozen=True)
class Unpacked:
    root: Path  # the packages' files, as dpkg -x lays them out (usr/include, usr/lib/<triplet>, ...)
    debs: tuple[str, ...]  # the .deb file names they came from (name_version_arch.deb)


def unpacked(arch: Arch, name: str, packages: Sequence[str], *, verify: Callable[[Path], None],
             step: str) -> Unpacked:
    """``packages`` for ``arch`` unpacked under ``cache_root()/foreign/<debian arch>/<name>/root``,
    fetched once (again when the package list changes) and checked with ``verify(root)`` (which raises
    InfraError) on every call; a cached copy that fails the check is fetched again."""
    base = foreign_dir(arch.debian_arch) / name
    root, stamp = base / "root", base / "packages.json"
    cached = _read_stamp(stamp)
    if cached is not None and cached["packages"] == list(packages) and root.is_dir():
        try:
            verify(root)
            return Unpacked(root, tuple(cached["debs"]))
        except InfraError as exc:
            LOG.warning("cached %s fails its check (%s); fetching again", root, exc.message)
    log = base / "fetch.log"
    with _waiting_lock(base / ".lock", step=step, what=f"{name} cache for {arch.name}"):
        with fsutil.atomic_dir(root, locked=True) as new_root:
            debs = download_and_unpack(arch.debian_arch, packages, new_root, step=step, log=log)
            verify(new_root)
            stamp.unlink(missing_ok=True)  # never a stamp beside a root it does not describe
        fsutil.atomic_write_json(stamp, {"packages": list(packages), "debs": debs})
    LOG.info("unpacked %s for %s into %s", ", ".join(debs), arch.name, root)
    return Unpacked(root, tuple(debs))


def _read_stamp(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("packages"), list) or not isinstance(
            data.get("debs"), list):
        return None
    return data


# -- static libraries: an ar archive's members must be objects for the arch ----------------------------
AR_MAGIC = b"!<arch>\n"
AR_HEADER = 60


def ar_members(path: Path) -> Iterator[tuple[str, int, int]]:
    """(name, data offset, size) of every member of a (non-thin) ar archive, the symbol and long-name
    tables included. Raises InvalidElf for anything that is not a complete ar archive."""
    size = path.stat().st_size
    with open(path, "rb") as fh:
        if fh.read(len(AR_MAGIC)) != AR_MAGIC:
            raise elf.InvalidElf(f"{path.name} is not an ar archive (thin archives are not accepted)")
        pos = len(AR_MAGIC)
        longnames = b""
        while pos < size:
            fh.seek(pos)
            hdr = fh.read(AR_HEADER)
            if len(hdr) != AR_HEADER or hdr[58:60] != b"`\n":
                raise elf.InvalidElf(f"{path.name}: bad or truncated ar member header at offset {pos}")
            try:
                length = int(hdr[48:58].decode("ascii").strip())
            except ValueError:
                raise elf.InvalidElf(f"{path.name}: bad ar member size at offset {pos}") from None
            data = pos + AR_HEADER
            if data + length > size:
                raise elf.InvalidElf(f"{path.name}: ar member at offset {pos} runs past the end of the file")
            name = hdr[:16].decode("ascii", "replace").rstrip()
            if name == "//":  # GNU long-name table: members named "/<offset>" point into it
                longnames = fh.read(length)
            elif name[:1] == "/" and name[1:].isdigit() and longnames:
                start = int(name[1:])
                name = longnames[start:longnames.find(b"\n", start)].decode("ascii", "replace")
            yield name.rstrip("/") or name, data, length
            pos = data + length + (length & 1)


def check_static_archive(path: Path, arch: Arch) -> int:
    """Every ELF object in the ar archive ``path`` is 64-bit for ``arch.elf_machine``; return how
    many objects there are (at least one). Raises InfraError naming the first offending member."""
    objects = 0
    try:
        with open(path, "rb") as fh:
            for name, offset, length in ar_members(path):
                def pread(off: int, n: int, _base: int = offset) -> bytes:
                    fh.seek(_base + off)
                    return fh.read(n)
                if length < 4 or pread(0, 4) != b"\x7fELF":
                    continue  # symbol table, long-name table
                info = elf.parse(pread, length)
                if info.e_machine != arch.elf_machine or info.elf_class != 2:
                    raise InfraError(f"{path}: member {name} is ELF machine {info.e_machine} class "
                                     f"{info.elf_class}, not 64-bit {arch.elf_machine_name} "
                                     f"({arch.elf_machine})", step=f"foreign-{arch.name}")
                objects += 1
    except elf.InvalidElf as exc:
        raise InfraError(f"{path}: {exc}", step=f"foreign-{arch.name}") from exc
    if not objects:
        raise InfraError(f"{path} holds no ELF objects", step=f"foreign-{arch.name}")
    return objects
