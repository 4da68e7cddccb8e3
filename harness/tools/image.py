"""The tools image: perf, module-build headers and kheaders for exactly one built kernel.

Data flow: OUT/manifest.json (a finished kernel build) -> a static perf built from the same tree
(its own O= directory under the cache, so rebuilds are incremental) -> a staged tree laid out like
an installed root (``bin/ include/ lib/modules/<kernelrelease>/``) -> an ext4 filesystem labelled
``vm-tools`` populated in sorted order with fixed UUIDs, hash seed and timestamps -> a GPT disk image
with that one partition -> OUT/tools.img (renamed into place when complete) + OUT/tools-manifest.json
+ OUT/tools-files.tsv.

Nothing here needs root: the filesystem is made with ``mkfs.ext4`` on a regular file and filled with
``debugfs -w`` (one script, one process), the partition table is written by ``sfdisk`` on a regular
file, and the filesystem is copied in at the partition's byte offset.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import shutil
import stat
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath

from harness import foreign, proc
from harness.arch import Arch
from harness.errors import BuildFailed, InfraError, InvalidArgument, SourceMissing
from harness.fsutil import atomic_write_json, atomic_write_text, exclusive_lock, sha256_file
from harness.layout import cache_root

LOG = logging.getLogger(__name__)

# -- the image's contract with the VM runner (also what inspect.py checks) ------------------------
FS_LABEL = "vm-tools"
PARTITION_TABLE = "gpt"  # libguestfs part_get_parttype() name
PARTITION_NAME = "vm-tools"  # GPT partition name (PARTLABEL)
LINUX_FS_TYPE_GUID = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
TOP_LEVEL = ("bin", "include", "lib")  # plus lost+found, which mke2fs creates
FS_TOP_LEVEL_EXTRA = ("lost+found",)
IMAGE_NAME = "tools.img"
MANIFEST_NAME = "tools-manifest.json"
FILES_NAME = "tools-files.tsv"  # kind, size, sha256 (files), path: the tree the image holds

SECTOR = 512
ALIGN = 1 << 20  # partition start and image end are 1 MiB aligned; GPT needs 34 sectors at each end
BLOCK_SIZE = 1024  # ~9,000 small headers: 1 KiB blocks waste ~0.5 KiB each instead of ~2 KiB
INODE_SIZE = 256
HEADROOM_FRACTION = 0.03
HEADROOM_MIN_BLOCKS = (256 << 10) // BLOCK_SIZE
UUID_NAMESPACE = uuid.UUID("6d1c3f0a-7c1e-4f53-9a57-4e656f6e564d")

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

# perf: what the harness switches off on every arch, and why (README: docs/tools-image.md).
# libtraceevent (tracepoint events) is on: the host's libtraceevent-dev (amd64), or Debian's
# arm64 package unpacked into a private sysroot (Arch.perf_sysroot_packages, harness/foreign.py).
PERF_DISABLED = {
    "libpython": "NO_LIBPYTHON=1: an embedded Python interpreter cannot be linked statically",
    "libperl": "NO_LIBPERL=1: an embedded Perl interpreter cannot be linked statically",
    "jvmti": "NO_JVMTI=1: the JVMTI agent is a shared library, which a -static link cannot make",
}
PERF_FLAGS = ("LDFLAGS=-static", "NO_LIBPYTHON=1", "NO_LIBPERL=1", "NO_JVMTI=1", "WERROR=0")
PERF_SYSROOT = "perf-sysroot"  # cache_root()/foreign/<debian arch>/perf-sysroot/root

# Deadlines (seconds) of the external steps: far above what they take here (docs/tools-image.md),
# so only a hung command reaches them.
PERF_TIMEOUT = 2 * 3600
KBUILD_TIMEOUT = 1800
STEP_TIMEOUT = 600

# debugfs prints these on success; anything else it prints after a command is an error.
_DEBUGFS_OK_PREFIXES = ("debugfs ", "debugfs:", "Allocated inode:")


# -- the kernel build this image belongs to --------------------------------------------------------
@dataclass(frozen=True)
class KernelBuild:
    """What OUT/manifest.json says about a finished kernel build (validated on load)."""

    arch: Arch
    out_dir: Path
    kernelrelease: str
    version: str
    variant: str
    tree: Path
    build_dir: Path
    make_vars: tuple[str, ...]
    source_date_epoch: int

    @classmethod
    def from_out(cls, arch: Arch, out_dir: Path) -> KernelBuild:
        out_dir = Path(out_dir)
        path = out_dir / "manifest.json"
        if not path.is_file():
            raise SourceMissing(f"{path} not found: build the kernel first", step="tools-manifest")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise InvalidArgument(f"{path} is not valid JSON: {exc}", step="tools-manifest") from exc
        missing = [k for k in ("arch", "kernelrelease", "tree", "build_dir", "make_vars") if k not in data]
        if missing:
            raise InvalidArgument(f"{path} lacks {', '.join(missing)}", step="tools-manifest")
        if data["arch"] != arch.name:
            raise InvalidArgument(f"{path} is for {data['arch']}, not {arch.name}", step="tools-manifest")
        tree, build_dir = Path(data["tree"]), Path(data["build_dir"])
        for what, p in (("tree", tree), ("build_dir", build_dir)):
            if not p.is_dir():
                raise SourceMissing(f"manifest {what} {p} does not exist", step="tools-manifest")
        return cls(arch=arch, out_dir=out_dir, kernelrelease=str(data["kernelrelease"]),
                   version=str(data.get("version", "")), variant=str(data.get("variant", "")),
                   tree=tree, build_dir=build_dir, make_vars=tuple(data["make_vars"]),
                   source_date_epoch=source_date_epoch(data, tree))


def source_date_epoch(manifest: dict, tree: Path) -> int:
    """The timestamp every inode of the image gets: $SOURCE_DATE_EPOCH, else the manifest's
    ``source_date_epoch``, else the mtime of the tree's top-level Makefile (from the tarball)."""
    env = os.environ.get("SOURCE_DATE_EPOCH")
    if env:
        return int(env)
    if manifest.get("source_date_epoch"):
        return int(manifest["source_date_epoch"])
    return int((tree / "Makefile").stat().st_mtime)


def stable_uuid(kind: str, *parts: str) -> str:
    """A UUID fixed by the inputs (arch, kernelrelease), so rebuilding gives the same bytes."""
    return str(uuid.uuid5(UUID_NAMESPACE, "/".join((kind, *parts))))


# -- command lines (built here, tested in tests/unit/test_toolsimage.py) --------------------------
def perf_flags(arch: Arch, sysroot: foreign.Unpacked | None = None) -> list[str]:
    """perf's make variables beyond ARCH/CROSS_COMPILE/O=/-j."""
    flags = [*PERF_FLAGS, *arch.perf_make_flags]
    if sysroot is not None:
        # perf includes <traceevent/event-parse.h>, pkg-config only names <sysroot>/usr/include/traceevent:
        # the sysroot's include directory goes ahead of the host's /usr/include (which the cross gcc searches)
        flags.append(f"EXTRA_CFLAGS=-I{sysroot.root}/usr/include")
    return flags


def perf_env(arch: Arch, sysroot: foreign.Unpacked | None = None) -> dict[str, str]:
    """pkg-config sees only the target's own .pc files (the host's libraries never leak into a cross
    build): the host's multiarch directory for the arch, or the private sysroot's, with every path it
    prints moved into the sysroot (PKG_CONFIG_SYSROOT_DIR)."""
    prefix = str(sysroot.root) if sysroot is not None else ""
    return {"PKG_CONFIG_LIBDIR": f"{prefix}/usr/lib/{arch.gnu_triplet}/pkgconfig", "PKG_CONFIG_PATH": "",
            "PKG_CONFIG_SYSROOT_DIR": prefix}


def perf_objdir(arch: Arch, tree: Path, sysroot: foreign.Unpacked | None = None) -> Path:
    """perf's O= directory: one per (arch, tree, make variables, pkg-config environment, sysroot
    packages), so a change of flags or libraries builds afresh instead of reusing objects and the
    FEATURE-DUMP of the old ones."""
    recipe = {"tree": str(Path(tree).resolve()), "flags": perf_flags(arch, sysroot),
              "env": perf_env(arch, sysroot), "debs": list(sysroot.debs) if sysroot is not None else []}
    key = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]
    return cache_root() / "perf" / f"{arch.name}-{key}"


def perf_argv(arch: Arch, tree: Path, objdir: Path, jobs: int,
              sysroot: foreign.Unpacked | None = None) -> list[str]:
    return ["make", "-C", str(Path(tree) / "tools" / "perf"), f"O={objdir}", f"-j{jobs}",
            *arch.make_vars(), *perf_flags(arch, sysroot), "perf"]


def check_perf_sysroot(arch: Arch, root: Path) -> None:
    """The unpacked packages hold static libraries for the arch, and pkg-config files for them."""
    libdir = Path(root) / "usr" / "lib" / arch.gnu_triplet
    archives = sorted(libdir.glob("*.a"))
    if not archives:
        raise InfraError(f"no static library (*.a) in {libdir}", step=f"tools-sysroot-{arch.name}")
    for a in archives:
        foreign.check_static_archive(a, arch)
    if not sorted((libdir / "pkgconfig").glob("*.pc")):
        raise InfraError(f"no pkg-config file in {libdir / 'pkgconfig'}", step=f"tools-sysroot-{arch.name}")


def perf_sysroot(arch: Arch) -> foreign.Unpacked | None:
    """The private sysroot perf links from (None: the host's libraries are the arch's own)."""
    if not arch.perf_sysroot_packages:
        return None
    return foreign.unpacked(arch, PERF_SYSROOT, arch.perf_sysroot_packages,
                            verify=lambda root: check_perf_sysroot(arch, root), step=f"tools-sysroot-{arch.name}")


def kbuild_argv(kb: KernelBuild, *targets: str) -> list[str]:
    """make in the kernel's build directory, with exactly the variables the kernel was built with."""
    return ["make", "-C", str(kb.build_dir), *kb.make_vars, *targets]


def extmod_argv(kb: KernelBuild, dest: Path) -> list[str]:
    """The kernel's own packaging script for the out-of-tree module build tree (as builddeb uses)."""
    return kbuild_argv(kb, "run-command",
                       f"KBUILD_RUN_COMMAND=$(srctree)/scripts/package/install-extmod-build {dest}")


def mkfs_argv(fs_path: Path, *, blocks: int, inodes: int, label: str, fs_uuid: str, hash_seed: str) -> list[str]:
    return ["mkfs.ext4", "-q", "-F", "-t", "ext4", "-T", "default", "-b", str(BLOCK_SIZE), "-I", str(INODE_SIZE),
            "-N", str(inodes), "-m", "0", "-L", label, "-U", fs_uuid,
            "-E", f"hash_seed={hash_seed},root_owner=0:0,lazy_itable_init=0,nodiscard",
            str(fs_path), str(blocks)]


def sfdisk_script(*, label_id: str, partitions: list[dict], table: str = "gpt") -> str:
    """An sfdisk script; each partition is a dict with start, size (sectors), uuid and name."""
    lines = [f"label: {table}"]
    if table == "gpt":
        lines.append(f"label-id: {label_id.upper()}")
    lines += ["unit: sectors", f"sector-size: {SECTOR}", ""]
    for p in partitions:
        if table == "gpt":
            lines.append(f"start={p['start']}, size={p['size']}, type={LINUX_FS_TYPE_GUID}, "
                         f"uuid={p['uuid'].upper()}, name=\"{p['name']}\"")
        else:
            lines.append(f"start={p['start']}, size={p['size']}, type=83")
    return "\n".join(lines) + "\n"


def sfdisk_argv(image: Path) -> list[str]:
    return ["sfdisk", "--no-reread", "--no-tell-kernel", "--wipe", "never", "-q", str(image)]


# -- the staged tree --------------------------------------------------------------------------------
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
            if stat.S_ISLNK(st.st_mode):
                target = os.readlink(p)
                if any(c in _BAD_CHARS for c in target):
                    raise InvalidArgument(f"symlink {rel} -> {target!r} has an unstorable target",
                                          step="tools-image")
                out.append(Entry(rel, "symlink", len(target.encode()), 0o777, target))
            elif stat.S_ISDIR(st.st_mode):
                out.append(Entry(rel, "dir", 0, 0o755))
            elif stat.S_ISREG(st.st_mode):
                mode = 0o755 if st.st_mode & 0o111 else 0o644
                out.append(Entry(rel, "file", st.st_size, mode))
            else:
                raise InvalidArgument(f"{rel}: only files, directories and symlinks go in the image",
                                      step="tools-image")
    out.sort(key=lambda e: PurePosixPath(e.path).parts)
    return out


def apparent_size(entries: list[Entry]) -> int:
    return sum(e.size for e in entries if e.kind in ("file", "symlink"))


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
        LOG.info("filesystem of %d blocks was too small (%s); growing by 10%%", blocks, errors[0])
        blocks += max(blocks // 10, 1024)
    else:
        raise InfraError("could not size the filesystem after 4 attempts", step="tools-populate", log=log)
    proc.run(["e2fsck", "-fn", str(fs_path)], step="tools-fsck", log=log, env=env, timeout=STEP_TIMEOUT)
    hdr = _dumpe2fs_header(fs_path)
    for p in (conf, script):
        p.unlink()
    return FsInfo(path=fs_path, blocks=int(hdr["Block count"]), free_blocks=int(hdr["Free blocks"]),
                  inodes=int(hdr["Inode count"]), free_inodes=int(hdr["Free inodes"]), block_size=int(hdr["Block size"]),
                  uuid=hdr["Filesystem UUID"], attempts=attempt)


def image_layout(fs_bytes: int) -> tuple[int, int, int]:
    """(partition start sector, partition size in sectors, image size in bytes) for a filesystem."""
    start = ALIGN // SECTOR
    size = math.ceil(fs_bytes / SECTOR)
    end = start * SECTOR + size * SECTOR + 34 * SECTOR  # room for the backup GPT
    total = math.ceil(end / ALIGN) * ALIGN
    return start, size, total


def assemble_image(fs_path: Path, image: Path, *, label_id: str, part_uuid: str, log: Path,
                   table: str | None = PARTITION_TABLE, name: str = PARTITION_NAME) -> None:
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


@dataclass
class ImageInfo:
    image: Path
    size: int
    sha256: str
    fs: FsInfo
    apparent_size: int
    counts: dict[str, int]


def make_image(tree: Path, image: Path, *, label: str = FS_LABEL, seed: str, source_date: int, log: Path,
               work: Path, table: str | None = PARTITION_TABLE) -> ImageInfo:
    """Build a deterministic image of ``tree`` at ``image`` (temporary name, then rename)."""
    entries = scan_tree(tree)
    work.mkdir(parents=True, exist_ok=True)
    fs_path = work / "fs.ext4"
    fs = make_filesystem(tree, fs_path, label=label, fs_uuid=stable_uuid("fs", seed),
                         hash_seed=stable_uuid("hash", seed), source_date=source_date, log=log, entries=entries)
    tmp = image.with_name(f".{image.name}.{os.getpid()}.tmp")
    try:
        assemble_image(fs_path, tmp, label_id=stable_uuid("disk", seed), part_uuid=stable_uuid("part", seed),
                       log=log, table=table)
        os.replace(tmp, image)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    finally:
        with contextlib.suppress(FileNotFoundError):
            fs_path.unlink()
    counts = {k: sum(1 for e in entries if e.kind == k) for k in ("file", "dir", "symlink")}
    return ImageInfo(image=image, size=image.stat().st_size, sha256=sha256_file(image), fs=fs,
                     apparent_size=apparent_size(entries), counts=counts)


KIND_CODES = {"file": "r", "dir": "d", "symlink": "l"}  # as libguestfs filesystem_walk names them


def tree_listing(tree: Path) -> str:
    """One line per entry, in path order: ``kind<TAB>size<TAB>sha256<TAB>path`` (sha256 and size are
    ``-`` where they do not apply). What inspection compares the image's own listing with."""
    lines = []
    for e in scan_tree(tree):
        digest = sha256_file(Path(tree) / e.path) if e.kind == "file" else "-"
        size = str(e.size) if e.kind != "dir" else "-"
        lines.append(f"{KIND_CODES[e.kind]}\t{size}\t{digest}\t{e.path}")
    return "\n".join(lines) + "\n"


# -- building the real tree ---------------------------------------------------------------------------
def read_feature_dump(objdir: Path) -> dict[str, bool]:
    """perf's FEATURE-DUMP (``feature-libelf=1`` lines) as {feature: on}."""
    path = Path(objdir) / "FEATURE-DUMP"
    out: dict[str, bool] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            if line.startswith("feature-") and "=" in line:
                k, v = line[len("feature-"):].split("=", 1)
                out[k] = v.strip() == "1"
    return out


def build_perf(kb: KernelBuild, *, jobs: int, log: Path) -> tuple[Path, dict]:
    sysroot = perf_sysroot(kb.arch)
    objdir = perf_objdir(kb.arch, kb.tree, sysroot)
    objdir.mkdir(parents=True, exist_ok=True)
    progress = proc.Progress(f"perf ({kb.arch.name})")
    with exclusive_lock(objdir.with_name(objdir.name + ".lock"), step="tools-perf", what=f"perf objdir {objdir}"):
        try:
            proc.run(perf_argv(kb.arch, kb.tree, objdir, jobs, sysroot), step="tools-perf", log=log,
                     env=perf_env(kb.arch, sysroot), on_line=lambda ln: progress.tick(ln.strip()),
                     timeout=PERF_TIMEOUT)
        except proc.CommandTimeout:  # a hang is the host's (infra), not the input's
            raise
        except proc.CommandFailed as exc:
            raise BuildFailed(f"perf build failed: {exc.message}", step="tools-perf", log=log) from exc
    progress.done()
    binary = objdir / "perf"
    features = read_feature_dump(objdir)
    info = {
        "objdir": str(objdir),
        "make_flags": perf_flags(kb.arch, sysroot),
        "pkg_config_env": perf_env(kb.arch, sysroot),
        "sysroot_debs": list(sysroot.debs) if sysroot is not None else [],
        "features_on": sorted(k for k, v in features.items() if v),
        "features_off": sorted(k for k, v in features.items() if not v),
        "disabled_by_harness": {**PERF_DISABLED, **dict(kb.arch.perf_disabled)},
    }
    return binary, info


def kernelrelease_of(kb: KernelBuild) -> str:
    return proc.capture(kbuild_argv(kb, "-s", "kernelrelease"), step="tools-kernelrelease").strip()


def stage_tree(kb: KernelBuild, stage: Path, perf_binary: Path, *, logs: Path) -> None:
    """Lay out bin/perf, include/ and lib/modules/<kernelrelease>/ under ``stage``."""
    stage = Path(stage).resolve()
    release = kb.kernelrelease
    (stage / "bin").mkdir(parents=True)
    proc.run([f"{kb.arch.cross_compile}strip", "-o", str(stage / "bin" / "perf"), str(perf_binary)],
             step="tools-strip", log=logs / "tools-perf.log", timeout=STEP_TIMEOUT)
    try:
        proc.run(kbuild_argv(kb, "headers_install", f"INSTALL_HDR_PATH={stage}"), step="tools-headers",
                 log=logs / "tools-headers.log", timeout=KBUILD_TIMEOUT)
        proc.run(kbuild_argv(kb, "modules_install", f"INSTALL_MOD_PATH={stage}", "INSTALL_MOD_STRIP=1",
                             "DEPMOD=/sbin/depmod"), step="tools-modules", log=logs / "tools-modules.log",
                 timeout=KBUILD_TIMEOUT)
    except proc.CommandTimeout:  # a hang is the host's (infra), not the input's
        raise
    except proc.CommandFailed as exc:
        raise BuildFailed(f"{exc.message}", step=exc.step, log=exc.log) from exc
    moddir = stage / "lib" / "modules" / release
    if not moddir.is_dir():
        found = sorted(p.name for p in (stage / "lib" / "modules").glob("*"))
        raise BuildFailed(f"modules_install made lib/modules/{found} but the manifest's kernelrelease is "
                          f"{release}", step="tools-modules", log=logs / "tools-modules.log")
    kheaders = moddir / "kernel" / "kernel" / "kheaders.ko.zst"
    if not kheaders.is_file():
        raise BuildFailed(f"{kheaders.relative_to(stage)} was not installed: the kernel needs "
                          "CONFIG_IKHEADERS=m and CONFIG_MODULE_COMPRESS_ZSTD=y", step="tools-modules",
                          log=logs / "tools-modules.log")
    build = moddir / "build"
    if build.is_symlink() or build.is_file():
        build.unlink()  # modules_install points it at the host's build directory
    try:
        proc.run(extmod_argv(kb, build), step="tools-extmod", log=logs / "tools-extmod.log",
                 timeout=KBUILD_TIMEOUT)
    except proc.CommandTimeout:  # a hang is the host's (infra), not the input's
        raise
    except proc.CommandFailed as exc:
        raise BuildFailed(exc.message, step="tools-extmod", log=exc.log) from exc
    shutil.copyfile(kb.build_dir / ".config", build / ".config")
    (build / "usr").mkdir(exist_ok=True)
    # the installed UAPI headers, shared with the image's top-level include/
    os.symlink("../../../../../include", build / "usr" / "include")


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
        t0 = time.monotonic()
        release = kernelrelease_of(kb)
        if release != kb.kernelrelease:
            raise BuildFailed(f"make kernelrelease says {release!r} but manifest.json says "
                              f"{kb.kernelrelease!r}", step="tools-kernelrelease")
        perf_binary, perf_info = build_perf(kb, jobs=jobs, log=logs / "tools-perf.log")
        durations["perf"] = time.monotonic() - t0
        t1 = time.monotonic()
        stage = out_dir / ".tools-stage"
        if stage.exists():
            shutil.rmtree(stage)
        stage_tree(kb, stage / "root", perf_binary, logs=logs)
        durations["stage"] = time.monotonic() - t1
        t2 = time.monotonic()
        info = package(stage / "root", out_dir, arch=arch, kernelrelease=kb.kernelrelease,
                       source_date=kb.source_date_epoch, log=logs / "tools-image.log", work=stage,
                       extra={"perf": {**perf_info, "size": (stage / "root" / "bin" / "perf").stat().st_size}})
        durations["image"] = time.monotonic() - t2
        _update_manifest(out_dir, {"durations": {k: round(v, 2) for k, v in durations.items()}})
        shutil.rmtree(stage)
    LOG.info("wrote %s (%d bytes, %.2fx the tree)", info.image, info.size, info.size / info.apparent_size)
    return info.image


def package(tree: Path, out_dir: Path, *, arch: Arch, kernelrelease: str, source_date: int, log: Path,
            work: Path, label: str = FS_LABEL, table: str | None = PARTITION_TABLE,
            extra: dict | None = None) -> ImageInfo:
    """Turn a staged tree into OUT/tools.img + OUT/tools-manifest.json + OUT/tools-files.tsv."""
    out_dir = Path(out_dir)
    for stale in (MANIFEST_NAME, FILES_NAME):  # never leave an old manifest beside a new image
        with contextlib.suppress(FileNotFoundError):
            (out_dir / stale).unlink()
    info = make_image(tree, out_dir / IMAGE_NAME, label=label, seed=f"{arch.name}/{kernelrelease}",
                      source_date=source_date, log=log, work=work, table=table)
    atomic_write_text(out_dir / FILES_NAME, tree_listing(tree))
    tree_sizes = {p.name: apparent_size(scan_tree(p)) for p in sorted(Path(tree).iterdir()) if p.is_dir()}
    file_data = info.fs.blocks - info.fs.free_blocks  # used blocks, then split into data and metadata
    data_blocks = sum(math.ceil(e.size / info.fs.block_size) for e in scan_tree(tree) if e.kind == "file")
    metadata = (file_data - data_blocks) * info.fs.block_size + (info.size - info.fs.blocks * info.fs.block_size)
    atomic_write_json(out_dir / MANIFEST_NAME, {
        "arch": arch.name,
        "kernelrelease": kernelrelease,
        "image": {"path": IMAGE_NAME, "size": info.size, "sha256": info.sha256,
                  "partition_table": table, "partition_name": PARTITION_NAME},
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


def _update_manifest(out_dir: Path, fields: dict) -> None:
    path = Path(out_dir) / MANIFEST_NAME
    data = json.loads(path.read_text())
    data.update(fields)
    atomic_write_json(path, data)
