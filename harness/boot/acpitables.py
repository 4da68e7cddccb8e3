"""Online-capable ACPI tables for x86 vCPU hotplug under TCG.

x86 Linux >= 6.9 counts a disabled LAPIC entry of the MADT as a hot-pluggable vCPU only when the
firmware declares Online Capable support (FADT revision >= 6.3) and the entry carries the Online
Capable flag, or under a hypervisor it knows (arch/x86/kernel/acpi/boot.c,
``acpi_is_processor_usable()``). Under TCG there is no known hypervisor and QEMU's q35 FADT and
MADT are revision 3, so the guest allows no hotplug vCPU and QMP ``device_add`` of a vCPU cannot
work. The kernel takes replacement tables from the initrd (``ACPI_TABLE_UPGRADE``): files under
``kernel/firmware/acpi/`` in an uncompressed cpio placed before the initramfs, with the same OEM ID
and OEM table ID as the table they replace and a higher OEM revision.

This module

* captures the FACP and APIC that QEMU really generates for the boot test's VM (:func:`capture`):
  one boot of the very same :class:`~harness.boot.vm.VmSpec` with the plain test initramfs, whose guest
  prints ``/sys/firmware/acpi/tables/{FACP,APIC}`` with busybox ``od``. They are cached under
  ``layout.cache_root()/acpi/<key>/``, keyed by the QEMU version and the command-line shape that
  can influence the tables (machine, accelerator, CPU, ``-smp``, ``-m``, devices; not file paths,
  kernel, initrd or kernel command line);
* rewrites them with pure functions (:func:`upgrade_fadt`: revision 6, minor revision 3;
  :func:`upgrade_madt`: revision 5, Online Capable on every disabled LAPIC (type 0) and x2APIC
  (type 9) entry), each also taking OEM revision + 1 and a fixed checksum, after validating the
  input's signature, length and checksum (:class:`AcpiTableError` names the table);
* builds the early cpio and the combined initrd (early cpio + test initramfs, byte concatenation),
  cached by content hash (:func:`override`).

The rest of the QEMU command line stays the runner's: only ``-initrd`` changes, and only under TCG.
"""
from __future__ import annotations

import hashlib
import json
import logging
import re
import struct
import time
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness import fsutil, layout
from harness.arch import Arch
from harness.boot import initramfs
from harness.boot.vm import Vm, VmSpec, qemu_argv
from harness.errors import HarnessError, InfraError, InvalidArgument
from harness.progress import Timer

if TYPE_CHECKING:
    from harness.boot.console import Console

LOG = logging.getLogger(__name__)

STEP = "acpi-override"
CHECK = "cpu-qmp"  # the check that needs the override
FORMAT_VERSION = "1"  # bump when what is cached (capture or combined initrd) changes meaning
HEADER_LEN = 36  # struct acpi_table_header
OEM_REVISION_OFFSET = 24
CHECKSUM_OFFSET = 9
FADT, MADT = "FACP", "APIC"
TABLES = (FADT, MADT)
FADT_MINOR_REVISION_OFFSET = 131  # FADT "FADT Minor Version" (ACPI 5.1+), reserved before
FADT_ONLINE_CAPABLE = (6, 3)  # the kernel honours Online Capable from FADT 6.3 on
MADT_REVISION = 5  # ACPI 6.3's MADT revision (defines the Online Capable flag)
MADT_ENTRIES_OFFSET = 44  # header + local APIC address (4) + flags (4)
MADT_ENABLED, MADT_ONLINE_CAPABLE = 1 << 0, 1 << 1
# MADT entry types whose flags say whether a processor is enabled: type -> (name, length, flags offset)
PROCESSOR_ENTRIES = {0: ("LAPIC", 8, 4), 9: ("x2APIC", 16, 8)}
EARLY_DIR = "kernel/firmware/acpi"  # where acpi_table_upgrade() looks in the initrd
SYSFS_TABLES = "/sys/firmware/acpi/tables"
CAPTURE_TAG = "acpi-capture"
READY_RE = re.compile(re.escape(initramfs.READY_MARKER) + r" (\S+)\r?\n")


class AcpiTableError(InfraError):
    """A captured or cached ACPI table is truncated, wrong or cannot be rewritten."""

    def __init__(self, message: str, *, step: str = STEP, log: Path | None = None) -> None:
        super().__init__(message, step=step, log=log)


# -- pure table functions ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Header:
    signature: str
    length: int
    revision: int
    checksum: int
    oem_id: bytes
    oem_table_id: bytes
    oem_revision: int
    creator_id: bytes
    creator_revision: int


def checksum_ok(data: bytes) -> bool:
    return sum(data) % 256 == 0


def parse_header(data: bytes, signature: str, *, name: str | None = None) -> Header:
    """The table's header, after checking that ``data`` is one whole, intact ``signature`` table."""
    name = name or signature
    if len(data) < HEADER_LEN:
        raise AcpiTableError(f"{name}: {len(data)} bytes, shorter than an ACPI table header ({HEADER_LEN})")
    sig, length, revision, csum, oem_id, oem_table_id, oem_rev, creator, creator_rev = struct.unpack_from(
        "<4sIBB6s8sI4sI", data)
    if sig != signature.encode():
        raise AcpiTableError(f"{name}: signature {sig!r}, expected {signature!r}")
    if length != len(data):
        raise AcpiTableError(f"{name}: header says {length} bytes, have {len(data)} "
                             f"({'truncated' if len(data) < length else 'trailing bytes'})")
    if not checksum_ok(data):
        raise AcpiTableError(f"{name}: bad checksum (bytes sum to {sum(data) % 256:#04x}, not 0)")
    return Header(signature, length, revision, csum, oem_id, oem_table_id, oem_rev, creator, creator_rev)


def _finish(table: bytearray, header: Header, name: str) -> bytes:
    """OEM revision + 1 (the kernel replaces a table only by a higher one) and the checksum."""
    if header.oem_revision >= 0xFFFFFFFF:
        raise AcpiTableError(f"{name}: OEM revision {header.oem_revision:#x} cannot be raised")
    struct.pack_into("<I", table, OEM_REVISION_OFFSET, header.oem_revision + 1)
    table[CHECKSUM_OFFSET] = 0
    table[CHECKSUM_OFFSET] = -sum(table) % 256
    return bytes(table)


def fadt_version(data: bytes) -> str:
    """'3', or '6.3' where the table has a minor version (revision >= 5)."""
    rev = data[8]
    if rev >= 5 and len(data) > FADT_MINOR_REVISION_OFFSET:
        return f"{rev}.{data[FADT_MINOR_REVISION_OFFSET] & 0xF}"
    return str(rev)


def upgrade_fadt(data: bytes, *, name: str = FADT) -> bytes:
    """The FADT declaring ACPI 6.3 (revision 6, minor revision 3), so that the kernel honours the
    MADT's Online Capable flags; a newer FADT keeps its version. The length stays QEMU's: the
    fields after it read as zero, as for any shorter FADT."""
    header = parse_header(data, FADT, name=name)
    if header.length <= FADT_MINOR_REVISION_OFFSET:
        raise AcpiTableError(f"{name}: {header.length} bytes, too short for the minor revision "
                             f"(byte {FADT_MINOR_REVISION_OFFSET})")
    table = bytearray(data)
    minor = table[FADT_MINOR_REVISION_OFFSET] & 0xF if header.revision >= 5 else 0
    if (header.revision, minor) < FADT_ONLINE_CAPABLE:
        table[8] = FADT_ONLINE_CAPABLE[0]
        table[FADT_MINOR_REVISION_OFFSET] = FADT_ONLINE_CAPABLE[1]  # errata (high nibble) 0
    return _finish(table, header, name)


@dataclass(frozen=True)
class MadtEntry:
    offset: int
    type: int
    length: int
    flags: int | None  # processor entries only
    id: int | None  # APIC / x2APIC id


def madt_entries(data: bytes, *, name: str = MADT) -> list[MadtEntry]:
    """The MADT's interrupt controller structures, checked to tile the table exactly."""
    parse_header(data, MADT, name=name)
    if len(data) < MADT_ENTRIES_OFFSET:
        raise AcpiTableError(f"{name}: {len(data)} bytes, too short for the MADT's fixed fields")
    out: list[MadtEntry] = []
    off = MADT_ENTRIES_OFFSET
    while off < len(data):
        if off + 2 > len(data):
            raise AcpiTableError(f"{name}: entry at offset {off:#x} is cut off by the table's end")
        etype, elen = data[off], data[off + 1]
        if elen < 2 or off + elen > len(data):
            raise AcpiTableError(f"{name}: entry at offset {off:#x} (type {etype}) has length {elen}, "
                                 f"{len(data) - off} bytes left")
        flags = ident = None
        if etype in PROCESSOR_ENTRIES:
            kind, want, flags_off = PROCESSOR_ENTRIES[etype]
            if elen != want:
                raise AcpiTableError(f"{name}: {kind} entry at offset {off:#x} has length {elen}, expected {want}")
            flags = struct.unpack_from("<I", data, off + flags_off)[0]
            ident = data[off + 3] if etype == 0 else struct.unpack_from("<I", data, off + 4)[0]
        out.append(MadtEntry(off, etype, elen, flags, ident))
        off += elen
    return out


def upgrade_madt(data: bytes, *, name: str = MADT) -> tuple[bytes, list[MadtEntry]]:
    """The MADT at revision 5 with Online Capable on every disabled LAPIC and x2APIC entry (an
    enabled entry must not carry it). Returns the table and the entries that were changed."""
    header = parse_header(data, MADT, name=name)
    table = bytearray(data)
    changed = []
    for e in madt_entries(data, name=name):
        if e.flags is None or e.flags & MADT_ENABLED:
            continue
        flags_off = e.offset + PROCESSOR_ENTRIES[e.type][2]
        struct.pack_into("<I", table, flags_off, e.flags | MADT_ONLINE_CAPABLE)
        changed.append(e)
    table[8] = max(header.revision, MADT_REVISION)
    return _finish(table, header, name), changed


def describe(original: dict[str, bytes], upgraded: dict[str, bytes], changed: list[MadtEntry]) -> dict[str, str]:
    """One line per table for the results: what changed from what."""
    f0, f1 = parse_header(original[FADT], FADT), parse_header(upgraded[FADT], FADT)
    m0, m1 = parse_header(original[MADT], MADT), parse_header(upgraded[MADT], MADT)
    which = ", ".join(f"{PROCESSOR_ENTRIES[e.type][0]} id {e.id}" for e in changed)
    return {
        FADT: f"rev {fadt_version(original[FADT])} -> {fadt_version(upgraded[FADT])}, "
              f"OEM rev {f0.oem_revision} -> {f1.oem_revision}",
        MADT: f"rev {m0.revision} -> {m1.revision}, online-capable on {len(changed)} entries ({which}), "
              f"OEM rev {m0.oem_revision} -> {m1.oem_revision}",
    }


def early_files(tables: dict[str, bytes]) -> dict[str, bytes]:
    """The early cpio's files: kernel/firmware/acpi/<SIG>.aml."""
    return {f"{EARLY_DIR}/{sig}.aml": tables[sig] for sig in sorted(tables)}


# -- when ----------------------------------------------------------------------------------------------
def needed(arch: Arch, accel_name: str, check_names: Iterable[str]) -> bool:
    """Boot with the override only where QMP vCPU hotplug is tested under TCG; never under KVM,
    where the kernel recognises the hypervisor and QEMU's own tables serve."""
    return (arch.cpu_hotplug_qmp and arch.tcg_online_capable_acpi and accel_name == "tcg"
            and CHECK in set(check_names))


# -- capture -------------------------------------------------------------------------------------------
_PATHS = re.compile(r"\b(path|file)=[^,]*")


def argv_shape(spec: VmSpec) -> list[str]:
    """The QEMU command line of ``spec`` without what cannot change the ACPI tables QEMU builds:
    kernel, initrd, kernel command line, VM name and the paths of sockets, logs and disk images."""
    argv = qemu_argv(spec, console_sock="CONSOLE", qmp_sock="QMP", log_port="LOGPORT", early_log="EARLY")
    shape: list[str] = [argv[0]]
    args = iter(argv[1:])
    for arg in args:
        if arg in ("-kernel", "-initrd", "-append", "-name"):
            next(args, None)
            continue
        shape.append(_PATHS.sub(r"\1=*", arg).replace("file:EARLY", "file:*"))
    return shape


def cache_key(qemu_version: str, shape: list[str]) -> str:
    blob = json.dumps({"format": FORMAT_VERSION, "qemu": qemu_version, "argv": shape}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _opt(shape: list[str], flag: str) -> str:
    return shape[shape.index(flag) + 1] if flag in shape else "?"


def source_line(source: dict[str, Any]) -> str:
    shape = source["argv"]
    version = source["qemu"].removeprefix("QEMU emulator version ")
    devices = sum(1 for a in shape if a == "-device")
    return (f"captured from QEMU {version} {_opt(shape, '-machine')} -accel {_opt(shape, '-accel')} "
            f"-cpu {_opt(shape, '-cpu')} -smp {_opt(shape, '-smp')} -m {_opt(shape, '-m')} ({devices} devices) "
            f"by booting {source['kernel']} ({source['captured_at']})")


@dataclass(frozen=True)
class Captured:
    tables: dict[str, bytes]  # QEMU's own, validated
    dir: Path  # the cache entry
    source: dict[str, Any]  # qemu, argv (shape), kernel, captured_at, console_log
    fresh: bool  # captured by this call (not from the cache)


def _load(entry: Path) -> Captured | None:
    try:
        source = json.loads((entry / "source.json").read_text())
        tables = {sig: (entry / f"{sig}.dat").read_bytes() for sig in TABLES}
    except (OSError, ValueError):
        return None
    try:
        for sig, data in tables.items():
            parse_header(data, sig, name=str(entry / f"{sig}.dat"))
    except AcpiTableError as exc:
        LOG.warning("ignoring the cached ACPI tables in %s: %s", entry, exc)
        return None
    return Captured(tables, entry, source, fresh=False)


def _hex_bytes(text: str, name: str) -> bytes:
    try:
        return bytes.fromhex("".join(text.split()))
    except ValueError:
        raise AcpiTableError(f"{name}: the guest's od output is not hex bytes: {text[:120]!r}") from None


def read_guest_tables(console: Console, *, step: str = STEP) -> dict[str, bytes]:
    """Read FACP and APIC from a booted guest's sysfs (busybox od), validated."""
    tables = {}
    for sig in TABLES:
        path = f"{SYSFS_TABLES}/{sig}"
        _, out = console.run(f"od -An -tx1 -v {path}", step=step, timeout=30)
        tables[sig] = _hex_bytes(out, path)
        parse_header(tables[sig], sig, name=f"{path} (as the guest read it)")
    return tables


def capture(spec: VmSpec, *, qemu_version: str, log_dir: Path, boot_timeout: float) -> Captured:
    """QEMU's FACP and APIC for ``spec``'s VM shape: from the cache, or read by a guest booted from
    ``spec`` itself (its plain test initramfs), and then cached."""
    shape = argv_shape(spec)
    entry = layout.cache_root() / "acpi" / cache_key(qemu_version, shape)
    cached = _load(entry)
    if cached is not None:
        return cached
    log_dir = Path(log_dir)
    with Vm(spec, log_dir=log_dir, tag=CAPTURE_TAG) as vm:
        vm.console.wait(READY_RE, timeout=boot_timeout, scaled=False, step=STEP,
                        what="the test init's shell (booted to read QEMU's ACPI tables)")
        tables = read_guest_tables(vm.console)
        console_log = str(vm.console_log)
    source = {"qemu": qemu_version, "argv": shape, "kernel": str(spec.kernel), "console_log": console_log,
              "captured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    for sig, data in tables.items():
        fsutil.atomic_write_bytes(entry / f"{sig}.dat", data)
    fsutil.atomic_write_json(entry / "source.json", source)  # last: its presence marks a whole entry
    LOG.info("captured QEMU's ACPI tables into %s", entry)
    return Captured(tables, entry, source, fresh=True)


# -- the override initrd ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Override:
    initrd: Path  # early cpio + the test initramfs
    early_cpio: Path
    tables: dict[str, bytes]  # the replacements
    changed: list[MadtEntry]
    meta: dict[str, Any] = field(default_factory=dict)  # for results.json and cpu-qmp's evidence


def _sha256_files(*paths: Path) -> str:
    h = hashlib.sha256(FORMAT_VERSION.encode())
    for p in paths:
        h.update(fsutil.sha256_file(p).encode())
    return h.hexdigest()


def combine(early: Path, initramfs_path: Path, cache: Path) -> Path:
    """early cpio + initramfs, byte for byte, cached under ``cache`` by content hash."""
    target = cache / f"{_sha256_files(early, initramfs_path)[:16]}.cpio"
    if not target.exists():
        fsutil.atomic_write_bytes(target, Path(early).read_bytes() + Path(initramfs_path).read_bytes())
    return target


def build_initrd(tables: dict[str, bytes], initramfs_path: Path, *, cache: Path | None = None) -> tuple[Path, Path]:
    """(early cpio, combined initrd) for replacement ``tables``, both cached by content hash."""
    cache = Path(cache) if cache else layout.cache_root() / "acpi"
    files = early_files(tables)
    h = hashlib.sha256(FORMAT_VERSION.encode())
    for name, data in sorted(files.items()):
        h.update(f"{name}\0{hashlib.sha256(data).hexdigest()}\0".encode())
    early = cache / "early" / f"{h.hexdigest()[:16]}.cpio"
    if not early.exists():
        initramfs.early_cpio(files, early, log=cache / "early" / "cpio.log")
    return early, combine(early, initramfs_path, cache / "initrd")


def override(spec: VmSpec, *, qemu_version: str, log_dir: Path, boot_timeout: float) -> Override:
    """The online-capable replacement tables for ``spec``'s VM and the initrd that carries them
    (``spec.initrd`` is the plain test initramfs)."""
    with Timer() as clock:
        captured = capture(spec, qemu_version=qemu_version, log_dir=log_dir, boot_timeout=boot_timeout)
        fadt = upgrade_fadt(captured.tables[FADT], name=f"{captured.dir}/{FADT}.dat")
        madt, changed = upgrade_madt(captured.tables[MADT], name=f"{captured.dir}/{MADT}.dat")
        if not changed:
            raise AcpiTableError(f"QEMU's APIC ({captured.dir}/{MADT}.dat) has no disabled processor entry to "
                                 "make online-capable: no free vCPU slot (-smp cpus < maxcpus?)")
        tables = {FADT: fadt, MADT: madt}
        if spec.initrd is None:
            raise InvalidArgument("the replacement ACPI tables travel in an initrd: the VM has none",
                                  step="acpi-tables")
        early, initrd = build_initrd(tables, spec.initrd)
    meta = {**describe(captured.tables, tables, changed), "source": source_line(captured.source),
            "cache": str(captured.dir), "captured_now": captured.fresh, "early_cpio": str(early),
            "initrd": str(initrd), "seconds": round(clock.duration, 2)}
    if captured.fresh:
        meta["capture_console_log"] = captured.source.get("console_log", "")
    return Override(initrd=initrd, early_cpio=early, tables=tables, changed=changed, meta=meta)


def apply(spec: VmSpec, *, qemu_version: str, log_dir: Path, boot_timeout: float) -> tuple[VmSpec, dict[str, Any]]:
    """``spec`` booting the override initrd, and the meta to record; on failure ``spec`` unchanged
    and ``{"error": ...}`` (cpu-qmp then reports it; the other checks run on QEMU's own tables)."""
    try:
        ov = override(spec, qemu_version=qemu_version, log_dir=log_dir, boot_timeout=boot_timeout)
    except HarnessError as exc:
        LOG.warning("no ACPI override: %s", exc)
        return spec, {"error": str(exc)}
    return replace(spec, initrd=ov.initrd), ov.meta
