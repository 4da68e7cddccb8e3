"""The tools image's contract, defined once: what the builder lays out, the inspector checks and the
guest check mounts (docs/tools-image.md).

* the disk: a GPT with one partition named ``vm-tools`` holding an ext4 filesystem labelled
  ``vm-tools`` (the VM runner mounts it by that label);
* the tree: an installed root, ``bin/perf``, ``include/`` (UAPI headers) and
  ``lib/modules/<kernelrelease>/`` (modules.*, kheaders, and ``build/`` for out-of-tree modules);
* the files beside it in OUT: ``tools.img``, ``tools-manifest.json`` and ``tools-files.tsv``, the
  listing of the tree (one entry a line, :func:`listing_line`, read back by :func:`parse_listing`).
"""
from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Any

# -- the disk ------------------------------------------------------------------------------------------
FS_LABEL = "vm-tools"
PARTITION_TABLE = "gpt"  # libguestfs part_get_parttype() name
PARTITION_NAME = "vm-tools"  # GPT partition name (PARTLABEL)
LINUX_FS_TYPE_GUID = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"

# -- the files in OUT --------------------------------------------------------------------------------
IMAGE_NAME = "tools.img"
MANIFEST_NAME = "tools-manifest.json"
FILES_NAME = "tools-files.tsv"  # kind, size, sha256 (files), path: the tree the image holds

def read_manifest(out_dir: Path) -> dict[str, Any]:
    """OUT/tools-manifest.json. Raises OSError when it cannot be read, ValueError when it is not a JSON
    object."""
    path = Path(out_dir) / MANIFEST_NAME
    data = json.loads(path.read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{path} is not a JSON object")
    return data


# -- the tree (paths relative to the filesystem's root, POSIX, no leading slash) ----------------------
TOP_LEVEL = ("bin", "include", "lib")  # plus lost+found, which mke2fs creates
FS_TOP_LEVEL_EXTRA = ("lost+found",)
PERF = "bin/perf"
UAPI_INCLUDE = "include"
KHEADERS = "kernel/kernel/kheaders.ko.zst"  # under modules_dir()
BUILD_UAPI_LINK = "usr/include"  # under build_dir(): a symlink to the image's top-level include/
BUILD_UAPI_TARGET = "../../../../../include"


def modules_dir(release: str) -> str:
    return f"lib/modules/{release}"


def build_dir(release: str) -> str:
    """The out-of-tree module build tree (``make -C .../build M=$PWD modules``)."""
    return f"{modules_dir(release)}/build"


def kheaders_path(release: str) -> str:
    return f"{modules_dir(release)}/{KHEADERS}"


def required_paths(srcarch: str, release: str) -> list[tuple[str, str]]:
    """(path, kind) that a complete tree holds for a kernel; kind is file, dir or symlink."""
    b = build_dir(release)
    return [
        (PERF, "file"),
        (f"{UAPI_INCLUDE}/linux/perf_event.h", "file"),
        (f"{UAPI_INCLUDE}/asm/unistd.h", "file"),
        (f"{modules_dir(release)}/modules.dep", "file"),
        (kheaders_path(release), "file"),
        (f"{b}/.config", "file"),
        (f"{b}/Makefile", "file"),
        (f"{b}/Module.symvers", "file"),
        (f"{b}/include/linux/module.h", "file"),
        (f"{b}/include/generated/autoconf.h", "file"),
        (f"{b}/include/config/kernel.release", "file"),
        (f"{b}/arch/{srcarch}/include", "dir"),
        (f"{b}/scripts/Makefile.build", "file"),
        (f"{b}/scripts/mod/modpost", "file"),
        (f"{b}/scripts/basic/fixdep", "file"),
        (f"{b}/{BUILD_UAPI_LINK}", "symlink"),
    ]


# -- the kinds of entry ----------------------------------------------------------------------------
# (kind in the tree, code in the listing - as libguestfs filesystem_walk's tsk_type names it - and
# the word a reason uses)
FILE_KINDS = (("file", "r", "file"), ("dir", "d", "directory"), ("symlink", "l", "symlink"))
KIND_CODES = {kind: code for kind, code, _ in FILE_KINDS}
KIND_NAMES = {code: word for _, code, word in FILE_KINDS}


def file_kind(mode: int) -> str | None:
    """The kind (file, dir or symlink) of an ``st_mode``; None for what the image never holds."""
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "dir"
    if stat.S_ISLNK(mode):
        return "symlink"
    return None


def kind_code(mode: int) -> str:
    """The listing code of an ``st_mode`` (``?`` for what the image never holds)."""
    kind = file_kind(mode)
    return KIND_CODES[kind] if kind is not None else "?"


# -- the listing (tools-files.tsv) ----------------------------------------------------------------------
Listing = dict[str, tuple[str, str]]  # path -> (kind code, size or "-")


def listing_line(kind: str, size: int, digest: str | None, path: str) -> str:
    """``code<TAB>size<TAB>sha256<TAB>path``; size and sha256 are ``-`` where they do not apply
    (a directory's size, a directory's or symlink's sha256)."""
    return f"{KIND_CODES[kind]}\t{size if kind != 'dir' else '-'}\t{digest or '-'}\t{path}"


def parse_listing(text: str) -> Listing:
    """tools-files.tsv -> {path: (kind code, size)}."""
    out = {}
    for line in text.splitlines():
        if line.strip():
            kind, size, _digest, path = line.split("\t", 3)
            out[path] = (kind, size)
    return out
