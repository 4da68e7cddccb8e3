"""The disk: an ext4 filesystem sized to its content, filled by ``debugfs`` in sorted order, put
in a GPT partition by ``sfdisk`` - all on regular files, without root.

Metadata (inode tables, bitmaps, group descriptors) is whatever mke2fs lays out for a size, so the
filesystem is made, measured and remade at content + headroom + measured metadata.
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from harness import proc
from harness.errors import InfraError
from harness.fsutil import atomic_write_text
from harness.tools import spec
from harness.tools.kbuild import STEP_TIMEOUT
from harness.tools.staging import Entry, scan_tree

LOG = logging.getLogger(__name__)

SECTOR = 512
ALIGN = 1 << 20  # partition start and image end are 1 MiB aligned; GPT needs 34 sectors at each end
BLOCK_SIZE = 1024  # ~9,000 small headers: 1 KiB blocks waste ~0.5 KiB each instead of ~2 KiB
INODE_SIZE = 256
HEADROOM_FRACTION = 0.03
HEADROOM_MIN_BLOCKS = (256 << 10) // BLOCK_SIZE

# mke2fs settings pinned here instead of taken from the host's /etc/mke2fs.conf, so the image does
# not change with the host's defaults. No journal (the image is only ever mounted read-only), no
# resize inode (it is never grown), no reserved blocks.
MKE2FS_CONF = f"""[defaults]
\tbase_features = sparse_super,large_file,filetype,dir_index,ext_attr
\tblocksize = {BLOCK_SIZE}
\tinode_size = {INODE_SIZE}
\tinode_ratio = 16384
[fs_types]
\tdefault = {{
\t}}
\text4 = {{
\t\tfeatures = extent,huge_file,flex_bg,metadata_csum,64bit,dir_nlink,extra_isize
\t}}
"""

# debugfs prints these on success; anything else it prints after a command is an error.
_DEBUGFS_OK_PREFIXES = ("debugfs ", "debugfs:", "Allocated inode:")


# -- command lines (built here, tested in tests/unit/test_toolsimage.py) ----------------------------------
def mkfs_argv(fs_path: Path, *, blocks: int, inodes: int, label: str, fs_uuid: str, hash_seed: str) -> list[str]:
    return ["mkfs.ext4", "-q", "-F", "-t", "ext4", "-T", "default", "-b", str(BLOCK_SIZE), "-I", str(INODE_SIZE),
            "-N", str(inodes), "-m", "0", "-L", label, "-U", fs_uuid,
            "-E", f"hash_seed={hash_seed},root_owner=0:0,lazy_itable_init=0,nodiscard",
            str(fs_path), str(blocks)]


def sfdisk_script(*, label_id: str, partitions: list[dict[str, Any]], table: str = "gpt") -> str:
    """An sfdisk script; each partition is a dict with start, size (sectors), uuid and name."""
    lines = [f"label: {table}"]
    if table == "gpt":
        lines.append(f"label-id: {label_id.upper()}")
    lines += ["unit: sectors", f"sector-size: {SECTOR}", ""]
    for p in partitions:
        if table == "gpt":
            lines.append(f"start={p['start']}, size={p['size']}, type={spec.LINUX_FS_TYPE_GUID}, "
                         f"uuid={p['uuid'].upper()}, name=\"{p['name']}\"")
        else:
            lines.append(f"start={p['start']}, size={p['size']}, type=83")
    return "\n".join(lines) + "\n"


def sfdisk_argv(image: Path) -> list[str]:
    return ["sfdisk", "--no-reread", "--no-tell-kernel", "--wipe", "never", "-q", str(image)]


# -- sizing and filling the filesystem ----------------------------------------------------------------
@dataclass
class FsGeometry:
    data_blocks: int  # blocks the content needs (files, directories, long symlinks)
    inodes: int
    headroom_blocks: int

    @property
    def wanted_free(self) -> int:
        return self.data_blocks + self.headroom_blocks


def estimate(entries: list[Entry], *, block_size: int = BLOCK_SIZE) -> FsGeometry:
    """Blocks needed by the content of an ext4 filesystem (metadata comes on top, measured from
    the empty filesystem mke2fs makes)."""
    blocks = 0
    dir_bytes: dict[str, int] = {"": 24}
    for e in entries:
        parent = str(PurePosixPath(e.path).parent)
        parent = "" if parent == "." else parent
        name = PurePosixPath(e.path).name
        dir_bytes[parent] = dir_bytes.get(parent, 24) + 8 + (len(name.encode()) + 3) // 4 * 4
        if e.kind == "dir":
            dir_bytes.setdefault(e.path, 24)
        elif e.kind == "file":
            nblk = math.ceil(e.size / block_size)
            # contiguous files: 4 extents fit in the inode; beyond that one index block per 340 extents
            extents = math.ceil(nblk / 32768) if nblk else 0
            blocks += nblk + (math.ceil(extents / 340) if extents > 4 else 0)
        elif e.kind == "symlink" and e.size >= 60:
            blocks += 1
    usable = block_size - 12  # metadata_csum puts a 12-byte tail in each directory block
    for size in dir_bytes.values():
        n = math.ceil(size / usable)
        blocks += n + (1 if n > 1 else 0)  # + an index/slack block for multi-block directories
    inodes = len(entries) + 16  # 11 reserved inodes, lost+found, slack
    headroom = max(HEADROOM_MIN_BLOCKS, math.ceil(blocks * HEADROOM_FRACTION))
    return FsGeometry(data_blocks=blocks, inodes=inodes, headroom_blocks=headroom)


def debugfs_script(entries: list[Entry], root: Path) -> str:
    """Commands that create ``entries`` (sorted) in an empty filesystem, reading files from ``root``."""
    lines: list[str] = []
    cwd = None
    for e in entries:
        p = PurePosixPath("/" + e.path)
        parent = str(p.parent)
        if parent != cwd:  # debugfs resolves new names against its cwd: always work in the parent
            lines.append(f"cd {parent}")
            cwd = parent
        if e.kind == "dir":
            lines.append(f"mkdir {p.name}")
        elif e.kind == "symlink":
            lines.append(f"symlink {p.name} {e.target}")
        else:
            lines.append(f"write {Path(root) / e.path} {p.name}")
            if e.mode != 0o644:
                lines.append(f"sif {p.name} mode 0{0o100000 | e.mode:o}")
    return "\n".join(lines) + "\n"


def _debugfs_errors(output: str) -> list[str]:
    return [ln for ln in output.splitlines() if ln.strip() and not ln.startswith(_DEBUGFS_OK_PREFIXES)]


def _dumpe2fs_header(fs_path: Path) -> dict[str, str]:
    text = proc.capture(["dumpe2fs", "-h", str(fs_path)], step="tools-image")
    out = {}
    for line in text.splitlines():
        if ":" in line:
            k, v = line.split(":", 1)
            out[k.strip()] = v.strip()
    return out


@dataclass
class FsInfo:
    path: Path
    blocks: int
    free_blocks: int
    inodes: int
    free_inodes: int
    block_size: int
    uuid: str
    attempts: int


def make_filesystem(tree: Path, fs_path: Path, *, label: str, fs_uuid: str, hash_seed: str,
                    source_date: int, log: Path, entries: list[Entry] | None = None) -> FsInfo:
    """Make an ext4 filesystem file holding ``tree``, sized to its content plus headroom."""
    entries = scan_tree(tree) if entries is None else entries
    geo = estimate(entries)
    conf = fs_path.with_name(fs_path.name + ".mke2fs.conf")
    atomic_write_text(conf, MKE2FS_CONF)
    env = {"MKE2FS_CONFIG": str(conf), "E2FSPROGS_FAKE_TIME": str(source_date), "TZ": "UTC"}
    script = fs_path.with_name(fs_path.name + ".debugfs")
    atomic_write_text(script, debugfs_script(entries, tree))
    # Metadata (inode tables, bitmaps, group descriptors, lost+found) is whatever mke2fs lays out
    # for a given size: make the filesystem, measure its free space, grow by the shortfall.
    blocks, inodes = geo.wanted_free + 2048, geo.inodes
    for attempt in range(1, 5):
        for _ in range(6):
            with contextlib.suppress(FileNotFoundError):
                fs_path.unlink()
            proc.run(mkfs_argv(fs_path, blocks=blocks, inodes=inodes, label=label, fs_uuid=fs_uuid,
                               hash_seed=hash_seed), step="tools-mkfs", log=log, env=env, timeout=STEP_TIMEOUT)
            hdr = _dumpe2fs_header(fs_path)
            free, free_inodes = int(hdr["Free blocks"]), int(hdr["Free inodes"])
            # mke2fs rounds the inode count to whole inode-table blocks per group, sometimes down
            if free_inodes < len(entries):
                inodes += len(entries) - free_inodes + int(hdr["Inodes per group"])
            elif geo.wanted_free <= free <= geo.wanted_free + max(16, geo.wanted_free // 200):
                break
            blocks = geo.wanted_free + (blocks - free)  # metadata as measured, plus what we want free
        res = proc.run(["debugfs", "-w", "-f", str(script), str(fs_path)], step="tools-populate",
                       log=log, env=env, tail_lines=10_000_000, timeout=STEP_TIMEOUT)
        errors = _debugfs_errors("\n".join(res.tail))
        if not errors:
            break
        if not any("allocate" in e or "space" in e.lower() for e in errors):  # not ENOSPC
            raise InfraError(f"debugfs failed filling the filesystem: {errors[0][:200]}",
                             step="tools-populate", log=log)
        LOG.info("filesystem of %d blocks was too small (%s, attempt %d); growing by 10%%", blocks, errors[0],
                 attempt)
        blocks += max(blocks // 10, 1024)
    else:
        raise InfraError("could not size the filesystem after 4 attempts", step="tools-populate", log=log)
    proc.run(["e2fsck", "-fn", str(fs_path)], step="tools-fsck", log=log, env=env, timeout=STEP_TIMEOUT)
    hdr = _dumpe2fs_header(fs_path)
    for p in (conf, script):
        p.unlink()
    return FsInfo(path=fs_path, blocks=int(hdr["Block count"]), free_blocks=int(hdr["Free blocks"]),
                  inodes=int(hdr["Inode count"]), free_inodes=int(hdr["Free inodes"]),
                  block_size=int(hdr["Block size"]), uuid=hdr["Filesystem UUID"], attempts=attempt)


# -- the disk image ----------------------------------------------------------------------------------------
def image_layout(fs_bytes: int) -> tuple[int, int, int]:
    """(partition start sector, partition size in sectors, image size in bytes) for a filesystem."""
    start = ALIGN // SECTOR
    size = math.ceil(fs_bytes / SECTOR)
    end = start * SECTOR + size * SECTOR + 34 * SECTOR  # room for the backup GPT
    total = math.ceil(end / ALIGN) * ALIGN
    return start, size, total


def assemble_image(fs_path: Path, image: Path, *, label_id: str, part_uuid: str, log: Path,
                   table: str | None = spec.PARTITION_TABLE, name: str = spec.PARTITION_NAME) -> None:
    """Write a disk image at ``image`` holding ``fs_path`` in one partition (no table: bare fs)."""
    fs_bytes = fs_path.stat().st_size
    start, size, total = image_layout(fs_bytes)
    offset = start * SECTOR if table else 0
    with open(image, "wb") as fh:
        fh.truncate(total if table else fs_bytes)
    if table:
        script = sfdisk_script(label_id=label_id, table=table,
                               partitions=[{"start": start, "size": size, "uuid": part_uuid, "name": name}])
        proc.run(sfdisk_argv(image), step="tools-partition", log=log, input_text=script,
                 timeout=STEP_TIMEOUT)
    copy_into(fs_path, image, offset)


def copy_into(src: Path, dst: Path, offset: int, bufsize: int = 4 << 20) -> None:
    """Copy ``src`` into ``dst`` at ``offset``, leaving holes where ``src`` is zero."""
    zero = bytes(bufsize)
    with open(src, "rb") as fin, open(dst, "r+b") as fout:
        pos = offset
        while chunk := fin.read(bufsize):
            if chunk != zero[:len(chunk)]:
                fout.seek(pos)
                fout.write(chunk)
            pos += len(chunk)
        fout.flush()
        os.fsync(fout.fileno())
