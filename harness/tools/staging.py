"""The staged tree: a directory laid out like an installed root (:mod:`harness.tools.spec`), made
from the kernel's build directory and perf, and read back in the one order the image is made in."""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from harness import proc
from harness.errors import BuildFailed, CommandFailed, CommandTimeout, InvalidArgument
from harness.fsutil import sha256_file
from harness.tools import spec
from harness.tools.kbuild import KBUILD_TIMEOUT, STEP_TIMEOUT, KernelBuild, extmod_argv, kbuild_argv


# -- reading a tree ------------------------------------------------------------------------------------
@dataclass
class Entry:
    path: str  # relative, POSIX, no leading slash
    kind: str  # dir | file | symlink
    size: int = 0
    mode: int = 0o755
    target: str = ""


_BAD_CHARS = set(" \t\n\r\"'\\#")


def scan_tree(root: Path) -> list[Entry]:
    """Every entry under ``root``, parents before children, siblings in byte order."""
    out: list[Entry] = []
    root = Path(root)
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        base = Path(dirpath)
        for name in sorted(dirnames + filenames):
            p = base / name
            rel = p.relative_to(root).as_posix()
            if any(c in _BAD_CHARS or not c.isprintable() for c in rel):
                raise InvalidArgument(f"cannot store {rel!r} in the image: whitespace, quote or "
                                      "control character in the name", step="tools-image")
            st = p.lstat()
            kind = spec.file_kind(st.st_mode)
            if kind is None:
                raise InvalidArgument(f"{rel}: only files, directories and symlinks go in the image",
                                      step="tools-image")
            if kind == "symlink":
                target = os.readlink(p)
                if any(c in _BAD_CHARS for c in target):
                    raise InvalidArgument(f"symlink {rel} -> {target!r} has an unstorable target",
                                          step="tools-image")
                out.append(Entry(rel, kind, len(target.encode()), 0o777, target))
            elif kind == "dir":
                out.append(Entry(rel, kind, 0, 0o755))
            else:
                mode = 0o755 if st.st_mode & 0o111 else 0o644
                out.append(Entry(rel, kind, st.st_size, mode))
    out.sort(key=lambda e: PurePosixPath(e.path).parts)
    return out


def apparent_size(entries: list[Entry]) -> int:
    return sum(e.size for e in entries if e.kind in ("file", "symlink"))


def tree_listing(tree: Path) -> str:
    """One line per entry, in path order (:func:`harness.tools.spec.listing_line`): what inspection
    compares the image's own listing with."""
    lines = [spec.listing_line(e.kind, e.size, sha256_file(Path(tree) / e.path) if e.kind == "file" else None,
                               e.path)
             for e in scan_tree(tree)]
    return "\n".join(lines) + "\n"


# -- making the real tree ---------------------------------------------------------------------------------
def stage_tree(kb: KernelBuild, stage: Path, perf_binary: Path, *, logs: Path) -> None:
    """Lay out bin/perf, include/ and lib/modules/<kernelrelease>/ under ``stage``."""
    stage = Path(stage).resolve()
    release = kb.kernelrelease
    perf = stage / spec.PERF
    perf.parent.mkdir(parents=True)
    proc.run([f"{kb.arch.cross_compile}strip", "-o", str(perf), str(perf_binary)],
             step="tools-strip", log=logs / "tools-perf.log", timeout=STEP_TIMEOUT)
    try:
        proc.run(kbuild_argv(kb, "headers_install", f"INSTALL_HDR_PATH={stage}"), step="tools-headers",
                 log=logs / "tools-headers.log", timeout=KBUILD_TIMEOUT)
        proc.run(kbuild_argv(kb, "modules_install", f"INSTALL_MOD_PATH={stage}", "INSTALL_MOD_STRIP=1",
                             "DEPMOD=/sbin/depmod"), step="tools-modules", log=logs / "tools-modules.log",
                 timeout=KBUILD_TIMEOUT)
    except CommandTimeout:  # a hang is the host's (infra), not the input's
        raise
    except CommandFailed as exc:
        raise BuildFailed(f"{exc.message}", step=exc.step, log=exc.log) from exc
    moddir = stage / spec.modules_dir(release)
    if not moddir.is_dir():
        found = sorted(p.name for p in moddir.parent.glob("*"))
        raise BuildFailed(f"modules_install made lib/modules/{found} but the manifest's kernelrelease is "
                          f"{release}", step="tools-modules", log=logs / "tools-modules.log")
    kheaders = stage / spec.kheaders_path(release)
    if not kheaders.is_file():
        raise BuildFailed(f"{kheaders.relative_to(stage)} was not installed: the kernel needs "
                          "CONFIG_IKHEADERS=m and CONFIG_MODULE_COMPRESS_ZSTD=y", step="tools-modules",
                          log=logs / "tools-modules.log")
    build = stage / spec.build_dir(release)
    if build.is_symlink() or build.is_file():
        build.unlink()  # modules_install points it at the host's build directory
    try:
        proc.run(extmod_argv(kb, build), step="tools-extmod", log=logs / "tools-extmod.log",
                 timeout=KBUILD_TIMEOUT)
    except CommandTimeout:  # a hang is the host's (infra), not the input's
        raise
    except CommandFailed as exc:
        raise BuildFailed(exc.message, step="tools-extmod", log=exc.log) from exc
    shutil.copyfile(kb.build_dir / ".config", build / ".config")
    uapi = build / spec.BUILD_UAPI_LINK
    uapi.parent.mkdir(exist_ok=True)
    # the installed UAPI headers, shared with the image's top-level include/
    os.symlink(spec.BUILD_UAPI_TARGET, uapi)
