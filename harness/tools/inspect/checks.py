"""The checks of one tools image, on the one check protocol (:mod:`harness.check`).

A check is a function ``(ctx, evidence)``: it passes by returning (what it saw goes into
``evidence``), fails by raising :class:`~harness.errors.CheckFailed` (the image is not what it must
be; the runner names the failure's step after the check), and is skipped by raising
:class:`~harness.check.Skip` when it cannot run because an earlier check failed (the reason says
which). A guestfs call that fails is a failure of the check that made it; anything else a check
raises is reported as an error of that check, never as an abort of the checks or images after it.

What the checks share is a :class:`Context` that only :func:`run_image_checks` makes, before and
between the checks: what blkid says about the disk, the superblock, and the listing of the tree the
``mount`` step gathers. The checks read it and never change it. A fact that could not be found is an
:class:`Unknown` with the reason; a check that needs it gets that reason (:func:`known`).

A new check is a function here and a line in ``DISK_CHECKS`` (block level, before the mount) or
``TREE_CHECKS`` (the mounted tree).
"""
from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import PurePosixPath
from typing import TypeVar

from harness.check import Evidence, Skip, run_check
from harness.errors import CheckFailed, HarnessError
from harness.fsutil import sha256_file
from harness.report import CheckResult
from harness.tools import elf, spec
from harness.tools.disk import SECTOR
from harness.tools.inspect.appliance import GuestFS
from harness.tools.inspect.expect import Expectation
from harness.tools.inspect.listing import compare_listings, walk_listing

LOG = logging.getLogger(__name__)

ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
EXT_TYPES = ("ext2", "ext3", "ext4")  # blkid TYPEs that have a superblock tune2fs reads
MOUNT = "mount"

T = TypeVar("T")


# -- what the checks share --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Unknown:
    """Why a fact is not known. ``skip``: an earlier check already failed on it, so the checks that
    need it are skipped; otherwise no earlier check reports it, so they fail with the reason."""

    reason: str
    skip: bool = True


def known(fact: T | Unknown) -> T:
    """The fact, or the outcome of a check that needs it and cannot have it."""
    if isinstance(fact, Unknown):
        if fact.skip:
            raise Skip(f"not run: {fact.reason}")
        raise CheckFailed(fact.reason)
    return fact


@dataclass(frozen=True)
class Disk:
    """What blkid says about one image's device (one quick call per device; parted is slower)."""

    device: str
    probe: dict[str, str]  # blkid of the whole device
    partitions: tuple[str, ...]  # the device's partitions
    fs_device: str  # where the filesystem is looked for: the first partition, else the device itself
    fs_probe: dict[str, str]  # blkid of fs_device


@dataclass(frozen=True)
class Context:
    """What the checks of one image may read, made by :func:`run_image_checks` only."""

    g: GuestFS
    exp: Expectation
    disk: Disk
    superblock: dict[str, str] | Unknown  # tune2fs -l of the filesystem
    files: spec.Listing | Unknown = Unknown(f"the filesystem is not mounted yet ({MOUNT} runs first)")
    thorough: bool = False

    @property
    def kernelrelease(self) -> str | Unknown:
        if self.exp.kernelrelease is None:
            return Unknown("inputs failed: no kernelrelease (OUT/manifest.json could not be read)")
        return self.exp.kernelrelease

    @property
    def kernel_config(self) -> bytes | Unknown:
        if self.exp.config is None:
            return Unknown("inputs failed: the kernel's config (OUT/config) could not be read")
        return self.exp.config


def _first_line(exc: BaseException, limit: int = 300) -> str:
    text = str(exc)
    return text.splitlines()[0][:limit] if text else type(exc).__name__


def _blkid(g: GuestFS, device: str) -> dict[str, str]:
    try:
        return dict(g.blkid(device))
    except RuntimeError:  # blkid finds nothing it knows
        return {}


def observe_disk(g: GuestFS, device: str, all_partitions: list[str]) -> Disk:
    probe = _blkid(g, device)
    parts = tuple(p for p in all_partitions if p.startswith(device) and p[len(device):].isdigit())
    fs_device = parts[0] if parts else device
    fs_probe = probe if fs_device == device else _blkid(g, fs_device)
    return Disk(device=device, probe=probe, partitions=parts, fs_device=fs_device, fs_probe=fs_probe)


def observe_superblock(g: GuestFS, disk: Disk) -> dict[str, str] | Unknown:
    if disk.fs_probe.get("TYPE") not in EXT_TYPES:
        return Unknown(f"filesystem-type failed: no ext4 superblock on {disk.fs_device}")
    try:
        return dict(g.tune2fs_l(disk.fs_device))
    except RuntimeError as exc:  # an ext4 signature with a superblock tune2fs cannot read: the image's fault
        return Unknown(f"cannot read the superblock of {disk.fs_device}: {_first_line(exc)}", skip=False)


def gather(g: GuestFS, exp: Expectation) -> spec.Listing:
    """lstat the top level, lib/modules and every required path: one call per directory."""
    files: spec.Listing = {}
    wanted: dict[str, set[str]] = {"/": set(g.ls("/"))}
    if "lib" in wanted["/"] and g.is_dir("/lib/modules"):
        wanted["/lib/modules"] = set(g.ls("/lib/modules"))
    for path, _kind in exp.required_paths():
        p = PurePosixPath(path)
        wanted.setdefault(str(p.parent), set()).add(p.name)
    for d, name_set in wanted.items():
        names = sorted(name_set)
        try:
            stats = g.lstatnslist(d, names)
        except RuntimeError:  # the directory itself is missing
            continue
        for name, st in zip(names, stats, strict=True):
            if st["st_ino"] < 0:
                continue
            kind = spec.kind_code(st["st_mode"])
            rel = str(PurePosixPath(d, name)).lstrip("/")
            files[rel] = (kind, "-" if kind == spec.KIND_CODES["dir"] else str(st["st_size"]))
    return files


# -- host-side checks ---------------------------------------------------------------------------------------
def inputs(ctx: Context, ev: Evidence) -> None:
    exp = ctx.exp
    ev.update(kernelrelease=exp.kernelrelease, config_bytes=len(exp.config or b""))
    if exp.problems:
        raise CheckFailed("; ".join(exp.problems))


def image_file(ctx: Context, ev: Evidence) -> None:
    img = ctx.exp.image
    size = img.stat().st_size
    ev["size"] = size
    if size % SECTOR:
        raise CheckFailed(f"{img.name} is {size} bytes, not a whole number of sectors (truncated?)")
    m = ctx.exp.image_manifest
    if not m:
        raise CheckFailed(f"no {spec.MANIFEST_NAME} beside {img.name}: the image build did not finish")
    want = m.get("image")
    want = want if isinstance(want, dict) else {}
    if want.get("size") != size:
        raise CheckFailed(f"{img.name} is {size} bytes but the build wrote {want.get('size')} (truncated or replaced)")
    digest = sha256_file(img)
    ev["sha256"] = digest
    if want.get("sha256") != digest:
        raise CheckFailed(f"{img.name} sha256 {digest[:16]} differs from the build's {str(want.get('sha256'))[:16]}")


def image_missing(exp: Expectation, ev: Evidence) -> None:
    """The ``image-file`` check of an OUT without tools.img (no appliance sees it)."""
    ev["image"] = str(exp.image)
    raise CheckFailed(f"{exp.image} not found: build it with `tools`", step="image-file")


# -- block-level checks (blkid, not parted: one quick call per device) ----------------------------------
def partition_table(ctx: Context, ev: Evidence) -> None:
    probe, want = ctx.disk.probe, spec.PARTITION_TABLE
    kind = probe.get("PTTYPE")
    ev["blkid"] = probe
    if not kind:
        found = f" (the disk holds {probe['TYPE']} directly)" if probe.get("TYPE") else ""
        raise CheckFailed(f"no partition table{found}; expected {want}")
    if kind == "PMBR":  # what blkid reports when the GPT behind the protective MBR does not verify
        raise CheckFailed(f"a protective MBR but no valid GPT (headers or backup at the disk's end damaged: "
                          f"image truncated?); expected {want}")
    if kind != want:
        raise CheckFailed(f"partition table is {kind}, expected {want}")


def partition_count(ctx: Context, ev: Evidence) -> None:
    parts = list(ctx.disk.partitions)
    ev["partitions"] = parts
    if len(parts) != 1:
        raise CheckFailed(f"{len(parts)} partitions, expected exactly one")


def filesystem_type(ctx: Context, ev: Evidence) -> None:
    kind = ctx.disk.fs_probe.get("TYPE", "")
    ev.update(device=ctx.disk.fs_device, type=kind)
    if kind != "ext4":
        raise CheckFailed(f"filesystem is {kind or 'none'}, expected ext4")


def filesystem_label(ctx: Context, ev: Evidence) -> None:
    label = ctx.disk.fs_probe.get("LABEL", "")
    ev["label"] = label
    if label != spec.FS_LABEL:
        raise CheckFailed(f"label is {label!r}, expected {spec.FS_LABEL!r}")


def filesystem_size(ctx: Context, ev: Evidence) -> None:
    sb = known(ctx.superblock)
    fs_bytes = int(sb["Block count"]) * int(sb["Block size"])
    dev_bytes = int(ctx.g.blockdev_getsize64(ctx.disk.fs_device))
    ev.update(filesystem_bytes=fs_bytes, device_bytes=dev_bytes)
    if fs_bytes > dev_bytes:
        raise CheckFailed(f"filesystem needs {fs_bytes} bytes but its device has {dev_bytes} (truncated image)")


USAGE_FIELDS = (("blocks", "Block count"), ("free_blocks", "Free blocks"), ("inodes", "Inode count"),
                ("free_inodes", "Free inodes"))  # tools-manifest.json filesystem key, tune2fs -l field


def filesystem_usage(ctx: Context, ev: Evidence) -> None:
    """Blocks and inodes in use against what the build recorded: any file added, removed or
    resized since shows up here, from the superblock alone."""
    fs = (ctx.exp.image_manifest or {}).get("filesystem")
    if not isinstance(fs, dict) or any(k not in fs for k, _ in USAGE_FIELDS):
        raise CheckFailed(f"no filesystem figures in {spec.MANIFEST_NAME}: the image build did not finish")
    sb = known(ctx.superblock)
    got = {k: int(sb[field]) for k, field in USAGE_FIELDS}
    ev.update(got)
    diff = [f"{k} {got[k]} (build: {fs[k]})" for k in got if got[k] != fs[k]]
    if diff:
        raise CheckFailed(f"the filesystem is not the one built (files added, removed or truncated): {', '.join(diff)}")


def listing(ctx: Context, ev: Evidence) -> None:
    """(thorough mode) Every entry's kind and size from one metadata walk, against the build's list."""
    if ctx.exp.listing is None:
        raise CheckFailed(f"no {spec.FILES_NAME} beside the image: the image build did not finish")
    walked = walk_listing(ctx.g.filesystem_walk(ctx.disk.fs_device))
    ev["entries"] = len(walked)
    problems = compare_listings(ctx.exp.listing, walked)
    if problems:
        ev["differences"] = problems[:50]
        raise CheckFailed(f"{len(problems)} differences from {spec.FILES_NAME}: {'; '.join(problems[:3])}")


def mount(ctx: Context, ev: Evidence) -> spec.Listing:
    """Mount the filesystem read-only and gather the listing the tree checks read."""
    ctx.g.umount_all()
    ctx.g.mount_ro(ctx.disk.fs_device, "/")
    ev["device"] = ctx.disk.fs_device
    files = gather(ctx.g, ctx.exp)
    ev["entries_seen"] = len(files)
    return files


# -- tree checks (the mounted filesystem) ----------------------------------------------------------------
def top_level(ctx: Context, ev: Evidence) -> None:
    names = {p for p in known(ctx.files) if "/" not in p}  # gather lstat'ed all of "/"
    ev["top_level"] = sorted(names)
    unexpected = sorted(names - set(spec.TOP_LEVEL) - set(spec.FS_TOP_LEVEL_EXTRA))
    missing = sorted(set(spec.TOP_LEVEL) - names)
    problems = [f"unexpected {', '.join(unexpected)}"] if unexpected else []
    problems += [f"missing {', '.join(missing)}"] if missing else []
    if problems:
        raise CheckFailed("; ".join(problems))


def tree(ctx: Context, ev: Evidence) -> None:
    files, release = known(ctx.files), known(ctx.kernelrelease)
    required = ctx.exp.required_paths()
    ev.update(kernelrelease=release, paths=len(required))
    missing, resized = [], []
    for path, kind in required:
        got = files.get(path.lstrip("/"))
        if not got or got[0] != spec.KIND_CODES[kind]:
            missing.append(f"{path} ({kind})")
        elif ctx.exp.listing and kind == "file":
            want = ctx.exp.listing.get(path.lstrip("/"), (None, None))[1]
            if want is not None and want != got[1]:
                resized.append(f"{path} is {got[1]} bytes, the build's {spec.FILES_NAME} says {want}"
                               + (" (truncated)" if want.isdigit() and int(got[1]) < int(want) else ""))
    if missing:
        ev["missing"] = missing
        what = "headers tree" if any("/build/" in m for m in missing) else "tree"
        raise CheckFailed(f"{what} incomplete: missing {', '.join(missing[:5])}"
                          + (f" and {len(missing) - 5} more" if len(missing) > 5 else ""))
    if resized:
        ev["resized"] = resized
        raise CheckFailed("; ".join(resized))


def kernelrelease(ctx: Context, ev: Evidence) -> None:
    files, want = known(ctx.files), known(ctx.kernelrelease)
    moddir = PurePosixPath(spec.modules_dir(want)).parent  # lib/modules
    releases = sorted(PurePosixPath(p).name for p, (kind, _) in files.items()
                      if PurePosixPath(p).parent == moddir and kind == spec.KIND_CODES["dir"])
    ev.update(kernelrelease=want, lib_modules=releases)
    if releases != [want]:
        raise CheckFailed(f"lib/modules holds {releases or 'nothing'}, expected exactly [{want}] (release mismatch)")
    path = f"{spec.build_dir(want)}/include/config/kernel.release"
    if path not in files:
        raise CheckFailed(f"/{path} missing")
    got = bytes(ctx.g.read_file(f"/{path}")).decode(errors="replace").strip()
    if got != want:
        raise CheckFailed(f"build/include/config/kernel.release says {got!r}, the kernel is {want!r} "
                          "(release mismatch)")


def perf_static_elf(ctx: Context, ev: Evidence) -> None:
    files, path = known(ctx.files), f"/{spec.PERF}"
    got = files.get(spec.PERF)
    if got is None:
        raise CheckFailed(f"{path} missing")
    if got[0] != spec.KIND_CODES["file"]:
        raise CheckFailed(f"{path} is a {spec.KIND_NAMES.get(got[0], got[0])}, not a file")
    size = int(got[1])
    cache: dict[tuple[int, int], bytes] = {}
    head = bytes(ctx.g.pread(path, min(size, 4096), 0))  # the headers, in one round trip

    def pread(off: int, n: int) -> bytes:
        if off + n <= len(head):
            return head[off:off + n]
        return cache.setdefault((off, n), bytes(ctx.g.pread(path, n, off)))

    try:
        info = elf.parse(pread, size)
    except elf.InvalidElf as exc:
        raise CheckFailed(f"{path}: {exc}") from exc
    arch = ctx.exp.arch
    ev.update(e_machine=info.e_machine, interpreter=info.interpreter, needed=info.needed_count, size=size)
    problems = []
    if info.e_machine != arch.elf_machine:
        problems.append(f"e_machine {info.e_machine}, expected {arch.elf_machine} ({arch.elf_machine_name}): "
                        f"perf for the wrong arch")
    if info.elf_class != 2:
        problems.append("not a 64-bit ELF")
    if info.interpreter is not None:
        problems.append(f"dynamically linked: PT_INTERP {info.interpreter}")
    if info.needed_count:
        problems.append(f"dynamically linked: {info.needed_count} DT_NEEDED entries")
    if problems:
        raise CheckFailed(f"{path}: " + "; ".join(problems))


def config(ctx: Context, ev: Evidence) -> None:
    files, release = known(ctx.files), known(ctx.kernelrelease)
    want = known(ctx.kernel_config)
    path = f"{spec.build_dir(release)}/.config"
    if path not in files:
        raise CheckFailed(f"/{path} missing")
    got = bytes(ctx.g.read_file(f"/{path}"))
    ev["bytes"] = len(got)
    if got != want:
        raise CheckFailed(f"build/.config ({len(got)} bytes) differs from the kernel's config ({len(want)} bytes)")


def kheaders(ctx: Context, ev: Evidence) -> None:
    files, release = known(ctx.files), known(ctx.kernelrelease)
    path = spec.kheaders_path(release)
    if path not in files:
        raise CheckFailed(f"/{path} missing")
    head = bytes(ctx.g.pread(f"/{path}", 4, 0))
    ev["magic"] = head.hex()
    if head != ZSTD_MAGIC:
        raise CheckFailed(f"kheaders.ko.zst is not zstd data (starts {head.hex()})")


# -- the order they run in ------------------------------------------------------------------------------
CheckFunc = Callable[[Context, Evidence], None]


@dataclass(frozen=True)
class ImageCheck:
    name: str
    func: CheckFunc
    thorough: bool = False  # only in thorough mode (NEONVM_INSPECT_THOROUGH=1): it walks all metadata


DISK_CHECKS = (
    ImageCheck("inputs", inputs),
    ImageCheck("image-file", image_file),
    ImageCheck("partition-table", partition_table),
    ImageCheck("partition-count", partition_count),
    ImageCheck("filesystem-type", filesystem_type),
    ImageCheck("filesystem-label", filesystem_label),
    ImageCheck("filesystem-size", filesystem_size),
    ImageCheck("filesystem-usage", filesystem_usage),
    ImageCheck("listing", listing, thorough=True),
)
# then MOUNT (mount), which gathers the listing these read
TREE_CHECKS = (
    ImageCheck("top-level", top_level),
    ImageCheck("tree", tree),
    ImageCheck("kernelrelease", kernelrelease),
    ImageCheck("perf-static-elf", perf_static_elf),
    ImageCheck("config", config),
    ImageCheck("kheaders", kheaders),
)


def names(*, thorough: bool = False) -> list[str]:
    """The checks' names in the order they run."""
    return ([c.name for c in DISK_CHECKS if thorough or not c.thorough] + [MOUNT]
            + [c.name for c in TREE_CHECKS])


def on_protocol(name: str, func: Callable[[Context, Evidence], object], ctx: Context) -> Callable[[Evidence], None]:
    """``func(ctx, evidence)`` as a check of the one protocol: a failed guestfs call (RuntimeError)
    fails the check, and a failure that names no step is named after the check."""

    def run(ev: Evidence) -> None:
        try:
            func(ctx, ev)
        except RuntimeError as exc:  # a guestfs call failed: the image is not what it must be
            raise CheckFailed(_first_line(exc), step=name) from exc
        except HarnessError as exc:
            exc.step = exc.step or name
            raise

    return run


def run_image_checks(g: GuestFS, exp: Expectation, device: str, all_partitions: list[str], *,
                     thorough: bool = False) -> list[CheckResult]:
    """Every check of one image attached as ``device`` to a launched appliance, in order. Never
    raises for what a check finds: each outcome is a CheckResult."""
    disk = observe_disk(g, device, all_partitions)
    ctx = Context(g=g, exp=exp, disk=disk, superblock=observe_superblock(g, disk), thorough=thorough)
    results = [run_check(c.name, on_protocol(c.name, c.func, ctx))
               for c in DISK_CHECKS if thorough or not c.thorough]
    gathered: list[spec.Listing] = []
    mounted = run_check(MOUNT, on_protocol(MOUNT, lambda c, ev: gathered.append(mount(c, ev)), ctx))
    results.append(mounted)
    ctx = replace(ctx, files=gathered[0] if mounted.status == "pass" else Unknown(
        f"{MOUNT} failed: {mounted.reason}"))
    try:
        results += [run_check(c.name, on_protocol(c.name, c.func, ctx)) for c in TREE_CHECKS]
    finally:
        with contextlib.suppress(RuntimeError):  # the next image's mount unmounts again
            g.umount_all()
    return results
