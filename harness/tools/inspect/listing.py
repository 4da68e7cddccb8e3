"""The image's own listing (libguestfs ``filesystem_walk``) against the build's (tools-files.tsv),
in the listing format of :mod:`harness.tools.spec`."""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from harness.tools import spec

TSK_ORPHANS = "$OrphanFiles"


def walk_listing(walk: Iterable[Mapping[str, Any]]) -> spec.Listing:
    """libguestfs filesystem_walk entries -> {path: (kind, size)} like spec.parse_listing's."""
    out = {}
    for e in walk:
        name = e["tsk_name"]
        if name in (".", "") or not e["tsk_flags"] & 1:  # the root itself, unallocated entries
            continue
        if name == TSK_ORPHANS or name.startswith(TSK_ORPHANS + "/"):  # sleuthkit's virtual directory
            continue
        kind = e["tsk_type"]
        out[name] = (kind, "-" if kind == spec.KIND_CODES["dir"] else str(e["tsk_size"]))
    return out


def compare_listings(expected: spec.Listing, actual: spec.Listing) -> list[str]:
    """Human-readable differences between the build's tree and the image's, most useful first."""
    names = spec.KIND_NAMES
    problems = []
    for path, (kind, size) in expected.items():
        got = actual.get(path)
        if got is None:
            problems.append(f"missing {path}")
        elif got[0] != kind:
            problems.append(f"{path} is a {names.get(got[0], got[0])}, expected a {names.get(kind, kind)}")
        elif got[1] != size:
            problems.append(f"{path} is {got[1]} bytes, expected {size} (truncated?)"
                            if size.isdigit() and got[1].isdigit() and int(got[1]) < int(size)
                            else f"{path} is {got[1]} bytes, expected {size}")
    extra = spec.FS_TOP_LEVEL_EXTRA
    problems += [f"unexpected {p}" for p in sorted(set(actual) - set(expected))
                 if p not in extra and not p.startswith(tuple(f"{x}/" for x in extra))]
    return problems
