"""Unpacked and patched kernel trees, cached by (source sha256, series sha256).

A tree is unpacked and patched under a temporary name and renamed into place only when complete,
so a half-patched tree is never found and reused. Trees are used read-only: builds go to O= dirs.
"""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from harness import proc
from harness.errors import CommandFailed, CommandTimeout, CorruptSource, SourceVersionMismatch
from harness.fsutil import atomic_dir, exclusive_lock
from harness.kernel.patches import Series
from harness.kernel.source import Source, tarball_version_from_makefile
from harness.layout import cache_root

LOG = logging.getLogger(__name__)
STEP = "unpack"
MARKER = ".harness-tree.json"


def tree_key(source: Source, series: Series) -> str:
    return f"{source.version}-{source.sha256[:16]}-{series.sha256[:12]}"


def prepare(source: Source, series: Series, *, log: Path) -> Path:
    """Return the path of the unpacked, patched tree for (source, series), creating it if needed."""
    root = cache_root() / "trees"
    root.mkdir(parents=True, exist_ok=True)
    key = tree_key(source, series)
    final = root / key
    if (final / MARKER).is_file():
        LOG.info("[%s] reusing tree %s", STEP, final)
        return final
    with exclusive_lock(root / f".{key}.lock", step=STEP, what=f"tree {key}"):
        if (final / MARKER).is_file():
            return final
        if final.exists():  # left by an older, interrupted layout: not trusted
            shutil.rmtree(final)
        with atomic_dir(final, locked=True) as tmp:
            LOG.info("[%s] unpacking %s", STEP, source.path)
            try:
                proc.run(["tar", "-xf", source.path, "-C", tmp, "--strip-components=1"],
                         step=STEP, log=log, timeout=1800)
            except CommandFailed as exc:
                if isinstance(exc, CommandTimeout):
                    raise
                raise CorruptSource(f"{source.path} does not unpack ({exc.message}): truncated or corrupt",
                                    step=STEP, log=log) from exc
            makefile = tmp / "Makefile"
            if not makefile.is_file():
                raise SourceVersionMismatch(f"{source.path} is not a kernel source tarball (no top-level "
                                            "Makefile)", step=STEP, log=log)
            found = tarball_version_from_makefile(makefile.read_text())
            if found != source.version:
                raise SourceVersionMismatch(
                    f"{source.path} contains linux {found}, not the requested {source.version}",
                    step=STEP, log=log)
            series.apply(tmp, log)
            (tmp / MARKER).write_text(json.dumps({
                "source": source.provenance(), "series": series.manifest(),
                "series_sha256": series.sha256}, indent=2))
    return final
