"""Inspection of tools images with libguestfs: one appliance launch for every image given.

Every finding is a named check (pass/fail + reason) in OUT/inspect/results.json and results.xml.
Expectations come from the kernel build (OUT/manifest.json, OUT/config) and from the image build
(OUT/tools-manifest.json, OUT/tools-files.tsv), never from the image itself.

An appliance that cannot launch is an InfraError naming the step and the log that holds
libguestfs's trace and verbose output; a wrong image is a set of failed checks.
"""
from __future__ import annotations

import json
import logging
import os
import platform
import stat
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from harness import report
from harness.arch import Arch, get_arch
from harness.errors import InfraError
from harness.fsutil import sha256_file
from harness.report import CheckResult
from harness.tools import elf
from harness.tools.image import (
    FILES_NAME,
    FS_LABEL,
    FS_TOP_LEVEL_EXTRA,
    IMAGE_NAME,
    MANIFEST_NAME,
    PARTITION_TABLE,
    TOP_LEVEL,
)

LOG = logging.getLogger(__name__)

# Appliance settings (see harness/bench_tools.py for the figures behind them).
APPLIANCE_MEMSIZE = 512  # MiB; the checks read a few files; measured ~0.4 s faster than the default 1280
APPLIANCE_SMP = 1
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


# -- what an image must look like ------------------------------------------------------------------
@dataclass
class Expectation:
    """What one OUT directory's image must contain, read from the kernel and image builds."""

    arch: Arch
    out_dir: Path
    image: Path
    kernelrelease: str | None
    config: bytes | None
    image_manifest: dict | None
    listing: dict[str, tuple[str, str]] | None  # path -> (kind r/d/l, size or "-"), from the build
    problems: list[str] = field(default_factory=list)

    @classmethod
    def load(cls, arch: Arch, out_dir: Path) -> Expectation:
        out_dir = Path(out_dir)
        problems = []
        release = None
        manifest = out_dir / "manifest.json"
        try:
            data = json.loads(manifest.read_text())
            release = data.get("kernelrelease")
            if data.get("arch") not in (None, arch.name):
                problems.append(f"{manifest} is for {data.get('arch')}, not {arch.name}")
        except (OSError, json.JSONDecodeError) as exc:
            problems.append(f"cannot read {manifest}: {exc}")
        config = None
        try:
            config = (out_dir / "config").read_bytes()
        except OSError as exc:
            problems.append(f"cannot read the kernel's config: {exc}")
        image_manifest = None
        if (out_dir / MANIFEST_NAME).is_file():
            try:
                image_manifest = json.loads((out_dir / MANIFEST_NAME).read_text())
            except (OSError, ValueError) as exc:  # the checks that need it fail as "did not finish"
                problems.append(f"cannot read {out_dir / MANIFEST_NAME}: {exc}")
            if not isinstance(image_manifest, dict):
                image_manifest = None
        listing = None
        if (out_dir / FILES_NAME).is_file():
            try:
                listing = parse_listing((out_dir / FILES_NAME).read_text())
            except (OSError, ValueError) as exc:
                problems.append(f"cannot read {out_dir / FILES_NAME}: {exc}")
        return cls(arch=arch, out_dir=out_dir, image=out_dir / IMAGE_NAME, kernelrelease=release,
                   config=config, image_manifest=image_manifest, listing=listing, problems=problems)

    def required_paths(self) -> list[tuple[str, str]]:
        """(path, kind) that must exist; kind is file, dir or symlink."""
        rel = self.kernelrelease or "?"
        mod = f"/lib/modules/{rel}"
        b = f"{mod}/build"
        return [
            ("/bin/perf", "file"),
            ("/include/linux/perf_event.h", "file"),
            ("/include/asm/unistd.h", "file"),
            (f"{mod}/modules.dep", "file"),
            (f"{mod}/kernel/kernel/kheaders.ko.zst", "file"),
            (f"{b}/.config", "file"),
            (f"{b}/Makefile", "file"),
            (f"{b}/Module.symvers", "file"),
            (f"{b}/include/linux/module.h", "file"),
            (f"{b}/include/generated/autoconf.h", "file"),
            (f"{b}/include/config/kernel.release", "file"),
            (f"{b}/arch/{self.arch.srcarch}/include", "dir"),
            (f"{b}/scripts/Makefile.build", "file"),
            (f"{b}/scripts/mod/modpost", "file"),
            (f"{b}/scripts/basic/fixdep", "file"),
            (f"{b}/usr/include", "symlink"),
        ]


def parse_listing(text: str) -> dict[str, tuple[str, str]]:
    """tools-files.tsv -> {path: (kind, size)}."""
    out = {}
    for line in text.splitlines():
        if line.strip():
            kind, size, _digest, path = line.split("\t", 3)
            out[path] = (kind, size)
    return out


def walk_listing(walk: list[dict]) -> dict[str, tuple[str, str]]:
    """libguestfs filesystem_walk entries -> {path: (kind, size)} like parse_listing's."""
    out = {}
    for e in walk:
        name = e["tsk_name"]
        if name in (".", "") or not e["tsk_flags"] & 1:  # the root itself, unallocated entries
            continue
        if name == TSK_ORPHANS or name.startswith(TSK_ORPHANS + "/"):  # sleuthkit's virtual directory
            continue
        kind = e["tsk_type"]
        out[name] = (kind, "-" if kind == "d" else str(e["tsk_size"]))
    return out


TSK_ORPHANS = "$OrphanFiles"
KIND_NAMES = {"r": "file", "d": "directory", "l": "symlink"}


def compare_listings(expected: dict[str, tuple[str, str]], actual: dict[str, tuple[str, str]]) -> list[str]:
    """Human-readable differences between the build's tree and the image's, most useful first."""
    problems = []
    for path, (kind, size) in expected.items():
        got = actual.get(path)
        if got is None:
            problems.append(f"missing {path}")
        elif got[0] != kind:
            problems.append(f"{path} is a {KIND_NAMES.get(got[0], got[0])}, expected a {KIND_NAMES.get(kind, kind)}")
        elif got[1] != size:
            problems.append(f"{path} is {got[1]} bytes, expected {size} (truncated?)"
                            if size.isdigit() and got[1].isdigit() and int(got[1]) < int(size)
                            else f"{path} is {got[1]} bytes, expected {size}")
    problems += [f"unexpected {p}" for p in sorted(set(actual) - set(expected))
                 if p != "lost+found" and not p.startswith("lost+found/")]
    return problems


# -- the appliance ------------------------------------------------------------------------------------
def _backend_settings() -> list[str]:
    """force_tcg unless the host's KVM can run a stock kernel (the appliance runs host-arch)."""
    if os.environ.get("LIBGUESTFS_BACKEND_SETTINGS"):
        return os.environ["LIBGUESTFS_BACKEND_SETTINGS"].split(":")
    from harness.boot.vm import kvm_unusable_reason

    try:
        host = get_arch(platform.machine())
    except Exception:  # an unknown host arch: let libguestfs decide
        return []
    return ["force_tcg"] if kvm_unusable_reason(host) else []


def open_appliance(drives: list[Path], *, log: Path, memsize: int | None = APPLIANCE_MEMSIZE,
                   smp: int | None = APPLIANCE_SMP, verbose: bool = False, cachedir: Path | None = None):
    """Launch one libguestfs appliance with every drive attached read-only; return the handle.

    libguestfs's trace always goes to ``log``. The appliance's console (verbose mode) costs ~0.5 s
    of launch under TCG, so it is captured only when needed: a launch that fails is retried once
    in verbose mode, and if that fails too the InfraError points at a log holding both attempts."""
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("")
    attempts = [verbose] if verbose else [False, True]
    for i, verb in enumerate(attempts):
        try:
            return _launch(drives, log=log, memsize=memsize, smp=smp, verbose=verb, cachedir=cachedir)
        except RuntimeError as exc:
            first_line = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
            if i + 1 == len(attempts):
                raise InfraError(f"libguestfs appliance did not launch: {first_line}", step="inspect-launch",
                                 log=log) from exc
            LOG.warning("appliance launch failed (%s); retrying once in verbose mode, log: %s", first_line, log)
    raise AssertionError("unreachable")


def _launch(drives: list[Path], *, log: Path, memsize, smp, verbose: bool, cachedir):
    import guestfs

    fh = open(log, "a", encoding="utf-8", errors="replace")
    g = guestfs.GuestFS(python_return_dict=True)
    g._harness_log = fh  # closed with the handle (close_appliance)

    def on_event(event, _handle, buf, array):
        text = buf.decode(errors="replace") if isinstance(buf, bytes) else str(buf)
        if event == guestfs.EVENT_TRACE:
            fh.write(f"[trace] {text}\n")
        else:
            fh.write(text if text.endswith("\n") else text + "\n")
        fh.flush()

    g.set_event_callback(on_event, guestfs.EVENT_APPLIANCE | guestfs.EVENT_LIBRARY | guestfs.EVENT_WARNING
                         | guestfs.EVENT_TRACE)
    g.set_trace(1)
    g.set_verbose(1 if verbose else 0)
    g.set_backend(os.environ.get("LIBGUESTFS_BACKEND") or "direct")
    settings = _backend_settings()
    if settings:
        g.set_backend_settings(settings)
    if memsize:
        g.set_memsize(memsize)
    if smp:
        g.set_smp(smp)
    if cachedir:
        g.set_cachedir(str(cachedir))
    g.set_recovery_proc(False)
    fh.write(f"# libguestfs {g.version()} backend={g.get_backend()} settings={settings} "
             f"memsize={g.get_memsize()} smp={g.get_smp()} verbose={verbose} drives={[str(d) for d in drives]}\n")
    try:
        for d in drives:
            g.add_drive_opts(str(d), readonly=True, format="raw")
        start = time.monotonic()
        g.launch()
        fh.write(f"# launched in {time.monotonic() - start:.1f}s\n")
        fh.flush()
    except RuntimeError:
        close_appliance(g)
        raise
    return g


def close_appliance(g) -> None:
    try:
        g.shutdown()
    except RuntimeError:
        pass
    g.close()
    fh = getattr(g, "_harness_log", None)
    if fh:
        fh.close()


# -- the checks -------------------------------------------------------------------------------------------
class Checker:
    """Runs the named checks of one image on a launched handle; collects CheckResults."""

    def __init__(self, g, exp: Expectation, device: str, *, tmpdir: Path, all_partitions: list[str],
                 thorough: bool = False):
        self.g, self.exp, self.device, self.tmpdir = g, exp, device, tmpdir
        self.thorough = thorough
        self.all_partitions = all_partitions
        self.results: list[CheckResult] = []
        self.fs_device: str | None = None
        self.disk_info: dict = {}
        self.tune2fs: dict = {}
        self.fs_info: dict = {}
        self.files: dict[str, tuple[str, str]] = {}
        self.mounted = False

    def check(self, name: str, fn: Callable[[], tuple[bool, str, dict] | tuple[bool, str]],
              *, needs_mount: bool = False) -> bool:
        start = time.monotonic()
        if needs_mount and not self.mounted:
            res = CheckResult(name, "fail", "not checked: the filesystem could not be mounted")
        else:
            try:
                out = fn()
                ok, reason = out[0], out[1]
                evidence = out[2] if len(out) > 2 else {}
                res = CheckResult(name, "pass" if ok else "fail", reason, evidence=evidence)
            except RuntimeError as exc:  # a guestfs call failed: the image is not what it must be
                res = CheckResult(name, "fail", f"{str(exc).splitlines()[0][:300]}")
            except elf.InvalidElf as exc:
                res = CheckResult(name, "fail", f"/bin/perf: {exc}")
        res.duration = time.monotonic() - start
        self.results.append(res)
        return res.status == "pass"

    # host-side checks ---------------------------------------------------------------------------------
    def inputs(self):
        if self.exp.problems:
            return False, "; ".join(self.exp.problems)
        return True, f"kernelrelease {self.exp.kernelrelease}, config {len(self.exp.config or b'')} bytes"

    def image_file(self):
        img = self.exp.image
        size = img.stat().st_size
        if size % 512:
            return False, f"{img.name} is {size} bytes, not a whole number of sectors (truncated?)"
        m = self.exp.image_manifest
        if not m:
            return False, f"no {MANIFEST_NAME} beside {img.name}: the image build did not finish"
        want = m.get("image", {})
        if want.get("size") != size:
            return False, f"{img.name} is {size} bytes but the build wrote {want.get('size')} (truncated or replaced)"
        digest = sha256_file(img)
        if want.get("sha256") != digest:
            return False, f"{img.name} sha256 {digest[:16]} differs from the build's {str(want.get('sha256'))[:16]}"
        return True, f"{size} bytes, sha256 matches {MANIFEST_NAME}", {"sha256": digest}

    # block-level checks (blkid, not parted: one quick call per device) ------------------------------
    def _blkid(self, device: str) -> dict:
        try:
            return self.g.blkid(device)
        except RuntimeError:  # blkid finds nothing it knows
            return {}

    def partition_table(self):
        self.disk_info = self._blkid(self.device)
        kind = self.disk_info.get("PTTYPE")
        if not kind:
            found = f" (the disk holds {self.disk_info['TYPE']} directly)" if self.disk_info.get("TYPE") else ""
            return False, f"no partition table{found}; expected {PARTITION_TABLE}"
        if kind == "PMBR":  # what blkid reports when the GPT behind the protective MBR does not verify
            return False, (f"a protective MBR but no valid GPT (headers or backup at the disk's end damaged: "
                           f"image truncated?); expected {PARTITION_TABLE}")
        return kind == PARTITION_TABLE, f"partition table is {kind}" + (
            "" if kind == PARTITION_TABLE else f", expected {PARTITION_TABLE}")

    def partitions(self):
        parts = [p for p in self.all_partitions if p.startswith(self.device) and p[len(self.device):].isdigit()]
        self.fs_device = parts[0] if parts else self.device
        if len(parts) != 1:
            return False, f"{len(parts)} partitions, expected exactly one", {"partitions": parts}
        return True, f"one partition ({parts[0]})"

    def filesystem(self):
        self.fs_info = self.disk_info if self.fs_device == self.device else self._blkid(self.fs_device)
        kind = self.fs_info.get("TYPE", "")
        return kind == "ext4", f"filesystem is {kind or 'none'}" + ("" if kind == "ext4" else ", expected ext4")

    def label(self):
        label = self.fs_info.get("LABEL", "")
        return label == FS_LABEL, f"label is {label!r}" + ("" if label == FS_LABEL else f", expected {FS_LABEL!r}")

    def fs_size(self):
        if self.fs_info.get("TYPE") not in ("ext2", "ext3", "ext4"):
            return False, f"no ext4 superblock on {self.fs_device} to size"
        info = self.tune2fs = self.g.tune2fs_l(self.fs_device)
        fs_bytes = int(info["Block count"]) * int(info["Block size"])
        dev_bytes = self.g.blockdev_getsize64(self.fs_device)
        if fs_bytes > dev_bytes:
            return False, f"filesystem needs {fs_bytes} bytes but its device has {dev_bytes} (truncated image)"
        return True, f"{fs_bytes} bytes in a {dev_bytes}-byte device"

    def usage(self):
        """Blocks and inodes in use against what the build recorded: any file added, removed or
        resized since shows up here, from the superblock alone."""
        fs = (self.exp.image_manifest or {}).get("filesystem")
        if not fs or "free_inodes" not in fs:
            return False, f"no filesystem figures in {MANIFEST_NAME}: the image build did not finish"
        info = self.tune2fs or self.g.tune2fs_l(self.fs_device)
        got = {k: int(info[v]) for k, v in (("blocks", "Block count"), ("free_blocks", "Free blocks"),
                                             ("inodes", "Inode count"), ("free_inodes", "Free inodes"))}
        diff = [f"{k} {got[k]} (build: {fs[k]})" for k in got if got[k] != fs[k]]
        if diff:
            return False, f"the filesystem is not the one built (files added, removed or truncated): {', '.join(diff)}"
        return True, f"{got['blocks'] - got['free_blocks']} blocks and {got['inodes'] - got['free_inodes']} inodes in use, as built"

    def listing(self):
        """(thorough mode) Every entry's kind and size from one metadata walk, against the build's list."""
        walked = walk_listing(self.g.filesystem_walk(self.fs_device))
        if self.exp.listing is None:
            return False, f"no {FILES_NAME} beside the image: the image build did not finish"
        problems = compare_listings(self.exp.listing, walked)
        if problems:
            return False, f"{len(problems)} differences from {FILES_NAME}: {'; '.join(problems[:3])}", {
                "differences": problems[:50]}
        return True, f"all {len(walked)} entries match {FILES_NAME} (kind and size)"

    def mount(self):
        self.g.umount_all()
        self.g.mount_ro(self.fs_device, "/")
        self.mounted = True
        self._gather()
        return True, f"mounted {self.fs_device} read-only"

    def _gather(self) -> None:
        """lstat the top level, lib/modules and every required path: one call per directory."""
        wanted: dict[str, set[str]] = {"/": set(self.g.ls("/"))}
        if "lib" in wanted["/"] and self.g.is_dir("/lib/modules"):
            wanted["/lib/modules"] = set(self.g.ls("/lib/modules"))
        for path, _kind in self.exp.required_paths():
            p = PurePosixPath(path)
            wanted.setdefault(str(p.parent), set()).add(p.name)
        for d, names in wanted.items():
            names = sorted(names)
            try:
                stats = self.g.lstatnslist(d, names)
            except RuntimeError:  # the directory itself is missing
                continue
            for name, st in zip(names, stats):
                if st["st_ino"] < 0:
                    continue
                mode = st["st_mode"]
                kind = "d" if stat.S_ISDIR(mode) else "l" if stat.S_ISLNK(mode) else "r" if stat.S_ISREG(mode) else "?"
                rel = str(PurePosixPath(d, name)).lstrip("/")
                self.files[rel] = (kind, "-" if kind == "d" else str(st["st_size"]))

    # tree checks ------------------------------------------------------------------------------------------
    def top_level(self):
        names = {p for p in self.files if "/" not in p}  # _gather lstat'ed all of "/"
        allowed = set(TOP_LEVEL) | set(FS_TOP_LEVEL_EXTRA)
        unexpected = sorted(names - allowed)
        missing = sorted(set(TOP_LEVEL) - names)
        problems = [f"unexpected {', '.join(unexpected)}"] if unexpected else []
        problems += [f"missing {', '.join(missing)}"] if missing else []
        return not problems, "; ".join(problems) or f"top level is {', '.join(sorted(names))}"

    def tree(self):
        missing, resized = [], []
        for path, kind in self.exp.required_paths():
            got = self.files.get(path.lstrip("/"))
            if not got or got[0] != {"file": "r", "dir": "d", "symlink": "l"}[kind]:
                missing.append(f"{path} ({kind})")
            elif self.exp.listing and kind == "file":
                want = self.exp.listing.get(path.lstrip("/"), (None, None))[1]
                if want is not None and want != got[1]:
                    resized.append(f"{path} is {got[1]} bytes, the build's {FILES_NAME} says {want}"
                                   + (" (truncated)" if want.isdigit() and int(got[1]) < int(want) else ""))
        if missing:
            what = "headers tree" if any("/build/" in m for m in missing) else "tree"
            return False, f"{what} incomplete: missing {', '.join(missing[:5])}" + (
                f" and {len(missing) - 5} more" if len(missing) > 5 else ""), {"missing": missing}
        if resized:
            return False, "; ".join(resized), {"resized": resized}
        return True, f"all {len(self.exp.required_paths())} expected paths present, sizes as built"

    def kernelrelease(self):
        want = self.exp.kernelrelease
        releases = sorted(p.split("/")[2] for p, (kind, _) in self.files.items()
                          if p.startswith("lib/modules/") and p.count("/") == 2 and kind == "d")
        if releases != [want]:
            return False, f"lib/modules holds {releases or 'nothing'}, expected exactly [{want}] (release mismatch)"
        path = f"/lib/modules/{want}/build/include/config/kernel.release"
        if path.lstrip("/") not in self.files:
            return False, f"{path} missing"
        got = self.g.read_file(path).decode(errors="replace").strip()
        if got != want:
            return False, f"build/include/config/kernel.release says {got!r}, the kernel is {want!r} (release mismatch)"
        return True, f"kernelrelease {want}"

    def perf_elf(self):
        path = "/bin/perf"
        if path.lstrip("/") not in self.files:
            return False, f"{path} missing"
        size = int(self.files[path.lstrip("/")][1])
        cache: dict[tuple[int, int], bytes] = {}
        head = self.g.pread(path, min(size, 4096), 0)  # the headers, in one round trip

        def pread(off: int, n: int) -> bytes:
            if off + n <= len(head):
                return head[off:off + n]
            return cache.setdefault((off, n), self.g.pread(path, n, off))

        info = elf.parse(pread, size)
        arch = self.exp.arch
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
        ev = {"e_machine": info.e_machine, "interpreter": info.interpreter, "needed": info.needed_count,
              "size": size}
        if problems:
            return False, "/bin/perf: " + "; ".join(problems), ev
        return True, f"static {arch.elf_machine_name} ELF, {size} bytes", ev

    def config(self):
        path = f"/lib/modules/{self.exp.kernelrelease}/build/.config"
        if path.lstrip("/") not in self.files:
            return False, f"{path} missing"
        got = self.g.read_file(path)
        if got != self.exp.config:
            return False, f"build/.config ({len(got)} bytes) differs from the kernel's config ({len(self.exp.config or b'')} bytes)"
        return True, f"build/.config identical to the kernel's ({len(got)} bytes)"

    def kheaders(self):
        path = f"/lib/modules/{self.exp.kernelrelease}/kernel/kernel/kheaders.ko.zst"
        if path.lstrip("/") not in self.files:
            return False, f"{path} missing"
        head = self.g.pread(path, 4, 0)
        if head != ZSTD_MAGIC:
            return False, f"kheaders.ko.zst is not zstd data (starts {head.hex()})"
        return True, "kheaders.ko.zst holds zstd data"

    def run_all(self) -> list[CheckResult]:
        self.check("inputs", self.inputs)
        self.check("image-file", self.image_file)
        self.check("partition-table", self.partition_table)
        self.check("partition-count", self.partitions)
        if self.fs_device is None:
            self.fs_device = self.device
        self.check("filesystem-type", self.filesystem)
        self.check("filesystem-label", self.label)
        self.check("filesystem-size", self.fs_size)
        self.check("filesystem-usage", self.usage)
        if self.thorough:
            self.check("listing", self.listing)
        self.check("mount", self.mount)
        self.check("top-level", self.top_level, needs_mount=True)
        self.check("tree", self.tree, needs_mount=True)
        self.check("kernelrelease", self.kernelrelease, needs_mount=True)
        self.check("perf-static-elf", self.perf_elf, needs_mount=True)
        self.check("config", self.config, needs_mount=True)
        self.check("kheaders", self.kheaders, needs_mount=True)
        if self.mounted:
            self.g.umount_all()
        return self.results


def inspect_images(items: list[tuple[Arch, Path]], *, stream=None, thorough: bool | None = None) -> bool:
    """Inspect each (arch, OUT) image in ONE appliance; write OUT/inspect/results.{json,xml}.

    ``thorough`` (default: $NEONVM_INSPECT_THOROUGH=1) adds the ``listing`` check, which compares
    every entry's kind and size with tools-files.tsv (about 1.5 s more per image under TCG)."""
    if thorough is None:
        thorough = os.environ.get("NEONVM_INSPECT_THOROUGH") == "1"
    exps = [Expectation.load(arch, out) for arch, out in items]
    missing = [e for e in exps if not e.image.is_file()]
    for e in missing:
        results = [CheckResult("image-file", "fail", f"{e.image} not found: build it with `tools`")]
        _write(e, results, {"arch": e.arch.name, "image": str(e.image)})
        if stream is not False:
            print(f"== tools image {e.arch.name}: {e.image}", file=stream)
            report.print_table(results, stream=stream)
    present = [e for e in exps if e.image.is_file()]
    if not present:
        return False
    log = present[0].out_dir / "inspect" / "guestfs.log"
    t0 = time.monotonic()
    g = open_appliance([e.image for e in present], log=log)
    launch = time.monotonic() - t0
    ok = not missing
    try:
        devices = g.list_devices()
        if len(devices) != len(present):
            raise InfraError(f"attached {len(present)} drives but the appliance shows {devices}",
                             step="inspect-devices", log=log)
        with tempfile.TemporaryDirectory(prefix="inspect-") as tmp:
            partitions = g.list_partitions()
            for exp, dev in zip(present, devices):
                results = Checker(g, exp, dev, tmpdir=Path(tmp), all_partitions=partitions,
                                  thorough=thorough).run_all()
                meta = {"arch": exp.arch.name, "image": str(exp.image), "device": dev,
                        "appliance_launch_s": round(launch, 2), "appliance_log": str(log),
                        "images_in_launch": len(present), "thorough": thorough}
                _write(exp, results, meta)
                if stream is not False:
                    print(f"== tools image {exp.arch.name}: {exp.image}", file=stream)
                    report.print_table(results, stream=stream)
                ok = ok and all(r.ok for r in results)
    finally:
        close_appliance(g)
    return ok


def _write(exp: Expectation, results: list[CheckResult], meta: dict[str, Any]) -> None:
    d = exp.out_dir / "inspect"
    report.write(results, suite=f"tools-image-{exp.arch.name}", json_path=d / "results.json",
                 junit_path=d / "results.xml", meta=meta)
