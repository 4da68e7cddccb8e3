"""Byte reproducibility: archives written the same way every time, a byte-for-byte comparison that
names the first difference, and ``reproduce`` (one arch built twice in fresh build directories,
ccache off, every artifact compared).

Every tar the harness releases (the release tarballs, the OCI image layers) is written by
:func:`write_tar`: names sorted, parent directories present, mtimes the source date, owners 0:0 with
no user or group names, modes from a fixed rule, ustar/PAX headers without extended records for
ordinary entries. Nothing of the host that wrote it goes in.
"""
from __future__ import annotations

import io
import json
import logging
import os
import shutil
import stat
import tarfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.arch import Arch
from harness.errors import SourceMissing
from harness.fsutil import atomic_output, atomic_write_json
from harness.manifest import Manifest
from harness.progress import timed

LOG = logging.getLogger(__name__)
CHUNK = 1 << 20


# -- reproducible tars ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class TarEntry:
    """One archive member: a regular file (from ``path`` or ``data``), a symlink (``link``) or, with
    none of them, a directory. ``mode`` None: 0755 for directories and executable files, 0644 for
    other files (symlinks are always 0777)."""

    name: str
    path: Path | None = None
    data: bytes | None = None
    link: str | None = None
    mode: int | None = None

    def __post_init__(self) -> None:
        if sum(x is not None for x in (self.path, self.data, self.link)) > 1:
            raise ValueError(f"tar entry {self.name}: give one of path, data, link")
        norm = self.name.strip("/")
        if not norm or norm != os.path.normpath(norm) or norm.startswith(".."):
            raise ValueError(f"tar entry name {self.name!r} is not a clean relative path")

    @property
    def is_dir(self) -> bool:
        return self.path is None and self.data is None and self.link is None


def _with_parents(entries: Iterable[TarEntry]) -> list[TarEntry]:
    by_name: dict[str, TarEntry] = {}
    for e in entries:
        name = e.name.strip("/")
        if name in by_name:
            raise ValueError(f"tar entry {name} given twice")
        by_name[name] = e
    for name in list(by_name):
        parent = os.path.dirname(name)
        while parent and parent not in by_name:
            by_name[parent] = TarEntry(parent)
            parent = os.path.dirname(parent)
    return [by_name[n] for n in sorted(by_name)]


def _tarinfo(e: TarEntry, mtime: int) -> TarInfoAndSource:
    info = tarfile.TarInfo(e.name.strip("/"))
    info.mtime, info.uid, info.gid, info.uname, info.gname = mtime, 0, 0, "", ""
    source: Path | None = None
    if e.link is not None:
        info.type, info.linkname, info.mode = tarfile.SYMTYPE, e.link, 0o777
    elif e.is_dir:
        info.type, info.mode = tarfile.DIRTYPE, 0o755 if e.mode is None else e.mode
    elif e.data is not None:
        info.size, info.mode = len(e.data), 0o644 if e.mode is None else e.mode
    else:
        assert e.path is not None
        st = os.stat(e.path)
        if not stat.S_ISREG(st.st_mode):
            raise ValueError(f"tar entry {e.name}: {e.path} is not a regular file")
        info.size, source = st.st_size, e.path
        info.mode = e.mode if e.mode is not None else (0o755 if st.st_mode & 0o111 else 0o644)
    return TarInfoAndSource(info, source)


@dataclass(frozen=True)
class TarInfoAndSource:
    info: tarfile.TarInfo
    source: Path | None


def write_tar(dest: Path, entries: Iterable[TarEntry], *, mtime: int) -> Path:
    """Write an uncompressed tar of ``entries`` at ``dest`` (under a temporary name, renamed when
    complete): sorted, parents added, every mtime ``mtime``, owners 0:0 without names."""
    members = _with_parents(entries)
    with atomic_output(dest) as tmp, tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
        for e in members:
            ts = _tarinfo(e, mtime)
            if ts.source is not None:
                with open(ts.source, "rb") as fh:
                    tar.addfile(ts.info, fh)
                    if fh.tell() != ts.info.size:
                        raise OSError(f"{ts.source} changed size while it was archived")
            elif e.data is not None:
                tar.addfile(ts.info, io.BytesIO(e.data))
            else:
                tar.addfile(ts.info)
    return dest


def source_date(m: Manifest, *, step: str) -> int:
    """The build's source date, the one timestamp of everything released from it (the tools image's
    rule: ``$SOURCE_DATE_EPOCH``, else the manifest's, else the mtime of its tree's Makefile)."""
    from harness.tools import kbuild

    tree = Path(str(m.data.get("tree") or "/nonexistent"))  # never the Makefile of the current directory
    try:
        return kbuild.source_date_epoch(m.data, tree)
    except (OSError, ValueError):
        raise SourceMissing(f"no source date for {m.out_dir}: its tree {tree} is gone and neither the manifest "
                            "nor $SOURCE_DATE_EPOCH gives one; rebuild the kernel", step=step) from None


def stable_json(data: dict[str, Any], drop: Sequence[str]) -> bytes:
    """``data`` as sorted, indented JSON without the (dotted) keys in ``drop``: a record with the
    fields that describe the run (durations, timestamps, host paths) left out."""
    copy: dict[str, Any] = json.loads(json.dumps(data))
    for dotted in drop:
        *parents, last = dotted.split(".")
        node: Any = copy
        for p in parents:
            node = node.get(p) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(last, None)
    return (json.dumps(copy, indent=2, sort_keys=True) + "\n").encode()


# -- byte comparison -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Difference:
    """Where two artifacts first differ: ``offset`` is the first differing byte (None: the file
    exists on one side only)."""

    name: str
    offset: int | None
    detail: str

    def __str__(self) -> str:
        where = f" at byte {self.offset}" if self.offset is not None else ""
        return f"{self.name}{where}: {self.detail}"


def first_difference(a: Path, b: Path) -> int | None:
    """The offset of the first byte where files ``a`` and ``b`` differ (the shorter one's length
    when one is a prefix of the other), None when they are identical."""
    offset = 0
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            ca, cb = fa.read(CHUNK), fb.read(CHUNK)
            if ca != cb:
                n = min(len(ca), len(cb))
                i = next((k for k in range(n) if ca[k] != cb[k]), n)
                return offset + i
            if not ca:
                return None
            offset += len(ca)


def _files(root: Path) -> list[str]:
    if root.is_file():
        return [""]
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() or p.is_symlink())


def compare(a: Path, b: Path, *, label: str) -> list[Difference]:
    """Compare two files, or two directory trees file by file (sorted names): every difference,
    each named ``label/relative path`` with the first differing offset."""
    diffs: list[Difference] = []
    if not a.exists() or not b.exists():
        missing = a if not a.exists() else b
        return [Difference(label, None, f"{missing} does not exist")]
    fa, fb = _files(a), _files(b)
    for rel in sorted(set(fa) | set(fb)):
        name = f"{label}/{rel}" if rel else label
        pa, pb = (a / rel, b / rel) if rel else (a, b)
        if rel not in fb or rel not in fa:
            diffs.append(Difference(name, None, f"only in {a if rel in fa else b}"))
        elif pa.is_symlink() or pb.is_symlink():
            if not (pa.is_symlink() and pb.is_symlink() and os.readlink(pa) == os.readlink(pb)):
                diffs.append(Difference(name, None, "symlinks differ"))
        else:
            off = first_difference(pa, pb)
            if off is not None:
                sa, sb = pa.stat().st_size, pb.stat().st_size
                diffs.append(Difference(name, off, f"differ (sizes {sa} and {sb})"))
    return diffs


# -- nox -s reproduce -- ARCH --------------------------------------------------------------------------
def run(arch: Arch, *, variant: str = "production", jobs: int = os.cpu_count() or 1, keep: bool = False) -> int:
    """Build ``arch`` twice, each in a fresh build directory with ccache off, make its tools image,
    release tar and OCI layout each time, and compare them byte for byte. 0 when identical."""
    from harness import oci, release
    from harness.kernel import build, kconfig
    from harness.layout import cache_root, out_root
    from harness.tools import image as toolsimage

    var = kconfig.get_variant(variant)
    work = out_root() / "reproduce" / f"{variant}-{arch.name}"
    result_path = work / "reproduce.json"
    result_path.unlink(missing_ok=True)
    durations: dict[str, float] = {}
    outs: list[Path] = []
    for run_name in ("a", "b"):
        out = work / run_name
        build_dir = cache_root() / "reproduce" / f"{arch.name}-{variant}-{run_name}"
        for d in (out, build_dir):
            shutil.rmtree(d, ignore_errors=True)
        with timed(durations, f"build-{run_name}"):
            print(f"==> build {run_name}: {arch.name}/{variant} in {build_dir} (ccache off)", flush=True)
            build.build(build.BuildRequest(arch=arch, variant=var, out_dir=out, build_dir=build_dir,
                                           jobs=jobs, use_ccache=False))
        with timed(durations, f"tools-{run_name}"):
            toolsimage.build_tools_image(arch, out, jobs=jobs)
        with timed(durations, f"package-{run_name}"):
            release.package(arch, out, out / "release")
            oci.write_layout([(arch, out)], out / "release" / "oci", log=out / "logs" / "oci.log")
        if not keep:
            shutil.rmtree(build_dir, ignore_errors=True)
        outs.append(out)
    a, b = outs
    tar = next((a / "release").glob("neonvm-kernel-*.tar")).name
    compared = {
        "vmlinuz": ("vmlinuz", "vmlinuz"),
        "tools.img": ("tools.img", "tools.img"),
        "release tar": (f"release/{tar}", f"release/{tar}"),
        "OCI layout": ("release/oci", "release/oci"),
    }
    diffs: dict[str, list[str]] = {}
    for what, (ra, rb) in compared.items():
        found = compare(a / ra, b / rb, label=ra)
        diffs[what] = [str(d) for d in found]
        verdict = "identical" if not found else f"DIFFER, first: {found[0]}"
        print(f"{what:12s} {verdict}")
    ok = not any(diffs.values())
    atomic_write_json(result_path, {"arch": arch.name, "variant": variant, "identical": ok,
                                    "differences": diffs, "durations": durations,
                                    "runs": [str(a), str(b)]})
    print(f"reproduce {arch.name}/{variant}: {'IDENTICAL' if ok else 'DIFFERENT'} ({result_path})")
    return 0 if ok else 1
