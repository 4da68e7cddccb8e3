"""Filesystem primitives every writer uses: an exclusive lock, atomic writes and copies, sha256."""
from __future__ import annotations

import contextlib
import fcntl
import glob
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from harness.errors import Locked


def sha256_file(path: Path, bufsize: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(bufsize):
            h.update(chunk)
    return h.hexdigest()


@contextlib.contextmanager
def exclusive_lock(path: Path, *, step: str, what: str) -> Iterator[None]:
    """Hold an exclusive, non-blocking lock on ``path``; refuse clearly if another run holds it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fh = open(path, "a+")
    try:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "unknown"
            raise Locked(f"{what} is in use by another run (pid {holder}); refusing to share it",
                         step=step, log=path) from None
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        yield
    finally:
        fh.close()


def _umask_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


@contextlib.contextmanager
def atomic_output(path: Path, *, fsync: bool = False, mode: int | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it over ``path`` when the block succeeds.

    The one write-to-temp-then-rename of the harness: on any failure (or interrupt) the temporary
    file is removed and ``path`` is left as it was, so a half-written artifact never looks valid.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        if fsync:
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
        os.chmod(tmp, _umask_mode() if mode is None else mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_dir(final: Path, *, create: bool = True, locked: bool = False) -> Iterator[Path]:
    """Yield a staging directory beside ``final``; when the block succeeds it replaces ``final``.

    The directory form of :func:`atomic_output`: on any failure (or interrupt) the staging directory is
    removed and ``final`` is left as it was, so a half-written tree never sits at ``final``. An existing
    ``final`` is moved aside and removed only once the new one is in place. With ``create=False`` the
    staging path is yielded without being made (for tools that refuse an existing directory).
    ``locked``: the caller holds the lock that serialises writers of ``final``, so staging directories
    left by writers that were killed (SIGKILL, power loss) are removed first.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{final.name}."
    if locked:
        for stale in final.parent.glob(f"{glob.escape(prefix)}*.tmp"):
            shutil.rmtree(stale, ignore_errors=True)
    work = Path(tempfile.mkdtemp(prefix=prefix, suffix=".tmp", dir=final.parent))
    staging = work / final.name
    try:
        if create:
            staging.mkdir()
        yield staging
        old = work / ".old"
        if final.exists() or final.is_symlink():
            os.replace(final, old)
        try:
            os.replace(staging, final)
        except BaseException:
            if old.exists() or old.is_symlink():
                os.replace(old, final)  # the previous one stays where it was
            raise
    finally:
        shutil.rmtree(work, ignore_errors=True)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    with atomic_output(path, fsync=True) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: Path, obj: object) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def atomic_copy(src: Path, dst: Path) -> None:
    """Copy src to dst under a temporary name, then rename."""
    with atomic_output(dst) as tmp:
        shutil.copyfile(src, tmp)
