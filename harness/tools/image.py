"""The tools image: perf, module-build headers and kheaders for exactly one built kernel.

Data flow: OUT/manifest.json (a finished kernel build, :mod:`harness.tools.kbuild`) -> a static perf
built from the same tree (:mod:`harness.tools.perf`) -> a staged tree laid out like an installed root
(``bin/ include/ lib/modules/<kernelrelease>/``, :mod:`harness.tools.staging`) -> an ext4 filesystem
labelled ``vm-tools`` populated in sorted order with fixed UUIDs, hash seed and timestamps, in a GPT
disk image with that one partition (:mod:`harness.tools.disk`) -> OUT/tools.img (renamed into place
when complete) + OUT/tools-manifest.json + OUT/tools-files.tsv. What the image must hold is
:mod:`harness.tools.spec`.

Nothing here needs root: the filesystem is made with ``mkfs.ext4`` on a regular file and filled with
``debugfs -w`` (one script, one process), the partition table is written by ``sfdisk`` on a regular
file, and the filesystem is copied in at the partition's byte offset.
"""
from __future__ import annotations

import contextlib
import logging
import math
import shutil
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from harness.arch import Arch
from harness.errors import BuildFailed
from harness.fsutil import atomic_output, atomic_write_json, atomic_write_text, exclusive_lock, sha256_file
from harness.progress import timed
from harness.tools import disk, spec
from harness.tools.kbuild import KernelBuild, kernelrelease_of
from harness.tools.perf import build_perf
from harness.tools.staging import apparent_size, scan_tree, stage_tree, tree_listing

LOG = logging.getLogger(__name__)

UUID_NAMESPACE = uuid.UUID("6d1c3f0a-7c1e-4f53-9a57-4e656f6e564d")


def stable_uuid(kind: str, *parts: str) -> str:
    """A UUID fixed by the inputs (arch, kernelrelease), so rebuilding gives the same bytes."""
    return str(uuid.uuid5(UUID_NAMESPACE, "/".join((kind, *parts))))


@dataclass
class ImageInfo:
    image: Path
    size: int
    sha256: str
    fs: disk.FsInfo
    apparent_size: int
    counts: dict[str, int]


def make_image(tree: Path, image: Path, *, label: str = spec.FS_LABEL, seed: str, source_date: int, log: Path,
               work: Path, table: str | None = spec.PARTITION_TABLE) -> ImageInfo:
    """Build a deterministic image of ``tree`` at ``image`` (temporary name, then rename)."""
    entries = scan_tree(tree)
    work.mkdir(parents=True, exist_ok=True)
    fs_path = work / "fs.ext4"
    fs = disk.make_filesystem(tree, fs_path, label=label, fs_uuid=stable_uuid("fs", seed),
                              hash_seed=stable_uuid("hash", seed), source_date=source_date, log=log,
                              entries=entries)
    try:
        with atomic_output(image) as tmp:
            disk.assemble_image(fs_path, tmp, label_id=stable_uuid("disk", seed),
                                part_uuid=stable_uuid("part", seed), log=log, table=table)
    finally:
        with contextlib.suppress(FileNotFoundError):
            fs_path.unlink()
    counts = {k: sum(1 for e in entries if e.kind == k) for k in ("file", "dir", "symlink")}
    return ImageInfo(image=image, size=image.stat().st_size, sha256=sha256_file(image), fs=fs,
                     apparent_size=apparent_size(entries), counts=counts)


def build_tools_image(arch: Arch, out_dir: Path, *, jobs: int) -> Path:
    """Build OUT/tools.img (+ tools-manifest.json, tools-files.tsv) for the kernel built in OUT."""
    out_dir = Path(out_dir).resolve()  # make -C changes directory: every path handed to it is absolute
    durations: dict[str, float] = {}
    with contextlib.ExitStack() as locks:
        # The same locks as the kernel build: no build may rewrite OUT or the build dir meanwhile.
        locks.enter_context(exclusive_lock(out_dir / ".lock", step="tools", what=f"output directory {out_dir}"))
        kb = KernelBuild.from_out(arch, out_dir)
        locks.enter_context(exclusive_lock(Path(f"{kb.build_dir}.lock"), step="tools",
                                           what=f"build directory {kb.build_dir}"))
        logs = out_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        with timed(durations, "perf"):
            release = kernelrelease_of(kb)
            if release != kb.kernelrelease:
                raise BuildFailed(f"make kernelrelease says {release!r} but manifest.json says "
                                  f"{kb.kernelrelease!r}", step="tools-kernelrelease")
            perf_binary, perf_info = build_perf(kb, jobs=jobs, log=logs / "tools-perf.log")
        stage = out_dir / ".tools-stage"
        with timed(durations, "stage"):
            if stage.exists():
                shutil.rmtree(stage)
            stage_tree(kb, stage / "root", perf_binary, logs=logs)
        with timed(durations, "image"):
            info = package(stage / "root", out_dir, arch=arch, kernelrelease=kb.kernelrelease,
                           source_date=kb.source_date_epoch, log=logs / "tools-image.log", work=stage,
                           extra={"perf": {**perf_info, "size": (stage / "root" / spec.PERF).stat().st_size}})
        _update_manifest(out_dir, {"durations": durations})
        shutil.rmtree(stage)
    LOG.info("wrote %s (%d bytes, %.2fx the tree)", info.image, info.size, info.size / info.apparent_size)
    return info.image


def package(tree: Path, out_dir: Path, *, arch: Arch, kernelrelease: str, source_date: int, log: Path,
            work: Path, label: str = spec.FS_LABEL, table: str | None = spec.PARTITION_TABLE,
            extra: dict[str, Any] | None = None) -> ImageInfo:
    """Turn a staged tree into OUT/tools.img + OUT/tools-manifest.json + OUT/tools-files.tsv."""
    out_dir = Path(out_dir)
    for stale in (spec.MANIFEST_NAME, spec.FILES_NAME):  # never leave an old manifest beside a new image
        with contextlib.suppress(FileNotFoundError):
            (out_dir / stale).unlink()
    info = make_image(tree, out_dir / spec.IMAGE_NAME, label=label, seed=f"{arch.name}/{kernelrelease}",
                      source_date=source_date, log=log, work=work, table=table)
    atomic_write_text(out_dir / spec.FILES_NAME, tree_listing(tree))
    tree_sizes = {p.name: apparent_size(scan_tree(p)) for p in sorted(Path(tree).iterdir()) if p.is_dir()}
    file_data = info.fs.blocks - info.fs.free_blocks  # used blocks, then split into data and metadata
    data_blocks = sum(math.ceil(e.size / info.fs.block_size) for e in scan_tree(tree) if e.kind == "file")
    metadata = (file_data - data_blocks) * info.fs.block_size + (info.size - info.fs.blocks * info.fs.block_size)
    atomic_write_json(out_dir / spec.MANIFEST_NAME, {
        "arch": arch.name,
        "kernelrelease": kernelrelease,
        "image": {"path": spec.IMAGE_NAME, "size": info.size, "sha256": info.sha256,
                  "partition_table": table, "partition_name": spec.PARTITION_NAME},
        "filesystem": {**{k: v for k, v in asdict(info.fs).items() if k != "path"}, "type": "ext4",
                       "label": label, "metadata_bytes": metadata,
                       "file_data_bytes": data_blocks * info.fs.block_size,
                       "headroom_bytes": info.fs.free_blocks * info.fs.block_size},
        "tree": {"apparent_size": info.apparent_size, "by_top_level": tree_sizes, **info.counts},
        "size_ratio": round(info.size / info.apparent_size, 4),
        "size_ratio_without_metadata": round((info.size - metadata) / info.apparent_size, 4),
        "source_date_epoch": source_date,
        **(extra or {}),
    })
    return info


def _update_manifest(out_dir: Path, fields: dict[str, Any]) -> None:
    data = spec.read_manifest(out_dir)
    data.update(fields)
    atomic_write_json(Path(out_dir) / spec.MANIFEST_NAME, data)
