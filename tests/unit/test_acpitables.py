"""Online-capable FACP/APIC for vCPU hotplug under TCG (harness/boot/acpitables.py), on QEMU's real tables
(fixtures/acpi/: read by a guest of the amd64 boot test's VM), and cpu-qmp's use of the override."""
from __future__ import annotations

import dataclasses
import json
import struct
import subprocess
from pathlib import Path

import pytest
from fixture_paths import FIXTURES

from harness.arch import get_arch
from harness.boot import acpitables as at
from harness.boot import run as boottest
from harness.boot import vm
from harness.boot.checks import Check, Guest, cpu_hotplug, run_check
from harness.boot.run import BootRequest

AMD64, ARM64 = get_arch("amd64"), get_arch("arm64")
FACP = (FIXTURES / "acpi" / "q35-cpus2-max4.FACP").read_bytes()
APIC = (FIXTURES / "acpi" / "q35-cpus2-max4.APIC").read_bytes()
TCG = vm.Accel("tcg", "test")


def fix(table: bytes | bytearray) -> bytes:
    """Set the header's length to the data's and fix the checksum (to build test tables)."""
    t = bytearray(table)
    struct.pack_into("<I", t, 4, len(t))
    t[9] = 0
    t[9] = -sum(t) % 256
    return bytes(t)


def diff_offsets(a: bytes, b: bytes) -> set[int]:
    assert len(a) == len(b)
    return {i for i in range(len(a)) if a[i] != b[i]}


# -- the captured tables ------------------------------------------------------------------------------
def test_fixtures_are_qemus_revision_3_tables():
    f, m = at.parse_header(FACP, "FACP"), at.parse_header(APIC, "APIC")
    assert (f.length, f.revision, f.oem_id, f.oem_table_id, f.oem_revision) == (244, 3, b"BOCHS ", b"BXPC    ", 1)
    assert (m.length, m.revision, m.oem_id, m.oem_table_id, m.oem_revision) == (144, 3, b"BOCHS ", b"BXPC    ", 1)
    lapics = [e for e in at.madt_entries(APIC) if e.type == 0]
    assert [(e.id, e.flags) for e in lapics] == [(0, 1), (1, 1), (2, 0), (3, 0)]  # -smp cpus=2,maxcpus=4
    assert {e.type for e in at.madt_entries(APIC)} == {0, 1, 2, 4}  # + IOAPIC, overrides, LAPIC NMI


# -- FADT ---------------------------------------------------------------------------------------------
def test_fadt_becomes_6_3_with_a_higher_oem_revision():
    new = at.upgrade_fadt(FACP)
    h = at.parse_header(new, "FACP")  # validates signature, length and checksum
    assert (h.revision, new[131], at.fadt_version(new)) == (6, 3, "6.3")
    assert (h.oem_id, h.oem_table_id, h.oem_revision, h.length) == (b"BOCHS ", b"BXPC    ", 2, 244)
    assert diff_offsets(FACP, new) <= {8, 9, 24, 131}  # revision, checksum, OEM revision, minor revision
    assert at.checksum_ok(new)


def test_fadt_already_6_3_keeps_its_version():
    t = bytearray(FACP)
    t[8], t[131] = 6, 0x15  # 6.5, errata 1
    t = fix(t)
    new = at.upgrade_fadt(t)
    assert new[8] == 6 and new[131] == 0x15 and at.parse_header(new, "FACP").oem_revision == 2


def test_fadt_too_short_for_the_minor_revision():
    with pytest.raises(at.AcpiTableError, match=r"FACP: 100 bytes, too short for the minor revision"):
        at.upgrade_fadt(fix(FACP[:100]))


# -- MADT ---------------------------------------------------------------------------------------------
def test_madt_revision_5_online_capable_on_the_disabled_lapics():
    new, changed = at.upgrade_madt(APIC)
    h = at.parse_header(new, "APIC")
    assert (h.revision, h.oem_revision, h.length, h.oem_id, h.oem_table_id) == (5, 2, 144, b"BOCHS ", b"BXPC    ")
    assert [(e.id, e.flags) for e in changed] == [(2, 0), (3, 0)]
    entries = at.madt_entries(new)
    assert [(e.id, e.flags) for e in entries if e.type == 0] == [(0, 1), (1, 1), (2, 2), (3, 2)]
    flag_bytes = {e.offset + 4 for e in changed}
    assert diff_offsets(APIC, new) == {8, 9, 24} | flag_bytes  # nothing else moves
    old_other = [APIC[e.offset:e.offset + e.length] for e in at.madt_entries(APIC) if e.type != 0]
    assert [new[e.offset:e.offset + e.length] for e in entries if e.type != 0] == old_other


def test_madt_x2apic_entries():
    x2 = struct.pack("<BBHIII", 9, 16, 0, 300, 0, 300) + struct.pack("<BBHIII", 9, 16, 0, 301, 1, 301)
    table = fix(APIC + x2)
    new, changed = at.upgrade_madt(table)
    assert [(at.PROCESSOR_ENTRIES[e.type][0], e.id) for e in changed] == [("LAPIC", 2), ("LAPIC", 3), ("x2APIC", 300)]
    x2s = [(e.id, e.flags) for e in at.madt_entries(new) if e.type == 9]
    assert x2s == [(300, 2), (301, 1)]  # an enabled entry must not be online-capable
    assert at.checksum_ok(new)


def test_describe_says_what_changed():
    new_madt, changed = at.upgrade_madt(APIC)
    lines = at.describe({"FACP": FACP, "APIC": APIC}, {"FACP": at.upgrade_fadt(FACP), "APIC": new_madt}, changed)
    assert lines["FACP"] == "rev 3 -> 6.3, OEM rev 1 -> 2"
    assert lines["APIC"] == "rev 3 -> 5, online-capable on 2 entries (LAPIC id 2, LAPIC id 3), OEM rev 1 -> 2"


# -- rejection of bad input --------------------------------------------------------------------------
@pytest.mark.parametrize("func,data,sig,pattern", [
    (at.upgrade_madt, APIC[:-4], "APIC", r"APIC: header says 144 bytes, have 140 \(truncated\)"),
    (at.upgrade_madt, APIC + b"\0", "APIC", r"APIC: header says 144 bytes, have 145 \(trailing bytes\)"),
    (at.upgrade_madt, APIC[:20], "APIC", r"APIC: 20 bytes, shorter than an ACPI table header"),
    (at.upgrade_madt, FACP, "APIC", r"APIC: signature b'FACP', expected 'APIC'"),
    (at.upgrade_fadt, APIC, "FACP", r"FACP: signature b'APIC', expected 'FACP'"),
    (at.upgrade_fadt, FACP[:-1] + bytes([FACP[-1] ^ 1]), "FACP", r"FACP: bad checksum"),
    (at.upgrade_madt, b"", "APIC", r"APIC: 0 bytes"),
])
def test_bad_tables_are_errors_naming_the_table(func, data, sig, pattern):
    with pytest.raises(at.AcpiTableError, match=pattern):
        func(data)


def test_error_names_the_file_it_came_from():
    with pytest.raises(at.AcpiTableError, match=r"^\[acpi-override\] /cache/x/APIC.dat: header says"):
        at.upgrade_madt(APIC[:-1], name="/cache/x/APIC.dat")


@pytest.mark.parametrize("entry,pattern", [
    (bytes([0, 7, 9, 9, 0, 0, 0]), r"LAPIC entry at offset 0x90 has length 7, expected 8"),
    (bytes([0, 0]), r"entry at offset 0x90 \(type 0\) has length 0"),
    (bytes([1, 12, 0]), r"entry at offset 0x90 \(type 1\) has length 12, 3 bytes left"),
    (bytes([4]), r"entry at offset 0x90 is cut off"),
])
def test_madt_entries_must_tile_the_table(entry, pattern):
    with pytest.raises(at.AcpiTableError, match=pattern):
        at.upgrade_madt(fix(APIC + entry))


def test_oem_revision_cannot_overflow():
    t = bytearray(APIC)
    struct.pack_into("<I", t, 24, 0xFFFFFFFF)
    with pytest.raises(at.AcpiTableError, match="cannot be raised"):
        at.upgrade_madt(fix(t))


# -- the early cpio and the combined initrd -----------------------------------------------------------
def tables() -> dict[str, bytes]:
    return {"FACP": at.upgrade_fadt(FACP), "APIC": at.upgrade_madt(APIC)[0]}


@pytest.fixture
def fake_initramfs(tmp_path) -> Path:
    p = tmp_path / "initramfs.cpio"
    p.write_bytes(b"07070100000000" + b"x" * 1000)
    return p


def test_early_cpio_contents(tmp_path, fake_initramfs):
    early, _ = at.build_initrd(tables(), fake_initramfs, cache=tmp_path / "c")
    names = subprocess.run(["cpio", "-it", "--quiet"], stdin=open(early, "rb"), capture_output=True, text=True,
                           check=True).stdout.split()
    assert names == ["kernel", "kernel/firmware", "kernel/firmware/acpi", "kernel/firmware/acpi/APIC.aml",
                     "kernel/firmware/acpi/FACP.aml"]
    listing = subprocess.run(["cpio", "-itv", "--quiet"], stdin=open(early, "rb"), capture_output=True, text=True,
                             check=True).stdout.splitlines()
    assert all(" root     root " in ln and "1970" in ln for ln in listing)
    assert early.read_bytes()[:6] == b"070701"  # newc, uncompressed
    out = tmp_path / "x"
    out.mkdir()
    subprocess.run(["cpio", "-id", "--quiet"], stdin=open(early, "rb"), cwd=out, check=True)
    for sig, data in tables().items():
        assert (out / "kernel/firmware/acpi" / f"{sig}.aml").read_bytes() == data


def test_early_cpio_and_initrd_are_deterministic(tmp_path, fake_initramfs):
    e1, i1 = at.build_initrd(tables(), fake_initramfs, cache=tmp_path / "c1")
    e2, i2 = at.build_initrd(tables(), fake_initramfs, cache=tmp_path / "c2")
    assert e1.read_bytes() == e2.read_bytes() and e1.name == e2.name
    assert i1.read_bytes() == i2.read_bytes() and i1.name == i2.name
    assert i1.read_bytes() == e1.read_bytes() + fake_initramfs.read_bytes()  # byte concatenation
    assert len(e1.read_bytes()) % 4 == 0
    other = {"FACP": tables()["FACP"], "APIC": at.upgrade_madt(fix(APIC + bytes([4, 6, 0xff, 0, 0, 1])))[0]}
    e3, i3 = at.build_initrd(other, fake_initramfs, cache=tmp_path / "c1")
    assert e3 != e1 and i3 != i1  # cached by content


# -- capture and its cache -------------------------------------------------------------------------------
def spec(**kw) -> vm.VmSpec:
    base = dict(arch=AMD64, kernel=Path("/OUT/vmlinuz"), initrd=Path("/CACHE/i.cpio"), accel=TCG)
    return boottest.vm_spec(**{**base, **kw})


def test_cache_key_follows_the_vm_shape_not_its_paths():
    a = at.argv_shape(spec(data_disk=Path("/r1/boot.pgdata.img")))
    b = at.argv_shape(spec(kernel=Path("/other/vmlinuz"), initrd=Path("/x.cpio"), data_disk=Path("/r2/d.img"),
                           cmdline_extra=("quiet",)))
    assert a == b and "-kernel" not in a and "-append" not in a
    assert "id=pgdata,file=*,if=none,format=raw" in a and "socket,id=qmp,path=*" in a
    assert at.cache_key("QEMU 10.0.2", a) == at.cache_key("QEMU 10.0.2", b)
    assert at.cache_key("QEMU 10.0.3", a) != at.cache_key("QEMU 10.0.2", a)
    more = dataclasses.replace(spec(data_disk=Path("/r1/boot.pgdata.img")), cpus_present=3)
    assert at.cache_key("QEMU 10.0.2", at.argv_shape(more)) != at.cache_key("QEMU 10.0.2", a)


class FakeConsole:
    def __init__(self, files: dict[str, bytes]):
        self.files = files
        self.commands: list[str] = []

    def run(self, command, *, step, timeout=10):
        self.commands.append(command)
        data = self.files[command.split()[-1]]
        rows = [" " + " ".join(f"{b:02x}" for b in data[i:i + 16]) for i in range(0, len(data), 16)]
        return 0, "\n".join(rows)


def test_guest_tables_read_with_od():
    con = FakeConsole({"/sys/firmware/acpi/tables/FACP": FACP, "/sys/firmware/acpi/tables/APIC": APIC})
    assert at.read_guest_tables(con) == {"FACP": FACP, "APIC": APIC}
    assert con.commands == ["od -An -tx1 -v /sys/firmware/acpi/tables/FACP",
                            "od -An -tx1 -v /sys/firmware/acpi/tables/APIC"]


def test_truncated_read_is_an_error_naming_the_table():
    con = FakeConsole({"/sys/firmware/acpi/tables/FACP": FACP, "/sys/firmware/acpi/tables/APIC": APIC[:100]})
    with pytest.raises(at.AcpiTableError, match=r"/sys/firmware/acpi/tables/APIC \(as the guest read it\): "
                                                r"header says 144 bytes, have 100 \(truncated\)"):
        at.read_guest_tables(con)


def seed_cache(cache: Path, s: vm.VmSpec, version: str, apic: bytes = APIC) -> Path:
    entry = cache / "acpi" / at.cache_key(version, at.argv_shape(s))
    entry.mkdir(parents=True)
    (entry / "FACP.dat").write_bytes(FACP)
    (entry / "APIC.dat").write_bytes(apic)
    (entry / "source.json").write_text(json.dumps({"qemu": "QEMU emulator version 10.0.2", "argv": at.argv_shape(s),
                                                   "kernel": "/k", "captured_at": "2026-11-29T00:00:00Z"}))
    return entry


def test_override_from_the_cache_without_booting(tmp_path, monkeypatch, fake_initramfs):
    monkeypatch.setenv("NEONVM_KERNEL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(at, "Vm", lambda *a, **k: pytest.fail("booted although the tables were cached"))
    s = spec(initrd=fake_initramfs)
    entry = seed_cache(tmp_path / "cache", s, "QEMU emulator version 10.0.2")
    ov = at.override(s, qemu_version="QEMU emulator version 10.0.2", log_dir=tmp_path, boot_timeout=1)
    assert ov.meta["FACP"] == "rev 3 -> 6.3, OEM rev 1 -> 2"
    assert ov.meta["APIC"].startswith("rev 3 -> 5, online-capable on 2 entries")
    assert ov.meta["cache"] == str(entry) and ov.meta["captured_now"] is False
    assert ov.meta["source"].startswith("captured from QEMU 10.0.2 q35 -accel tcg -cpu qemu64 "
                                        "-smp cpus=2,maxcpus=4,sockets=1,cores=4,threads=1 -m size=512M")
    assert ov.initrd.read_bytes().endswith(fake_initramfs.read_bytes())
    new_spec, meta = at.apply(s, qemu_version="QEMU emulator version 10.0.2", log_dir=tmp_path, boot_timeout=1)
    assert new_spec.initrd == ov.initrd and new_spec.kernel == s.kernel and meta["cache"] == str(entry)
    assert vm.qemu_argv(new_spec, console_sock="c", qmp_sock="q", log_port="l", early_log="e") == [
        str(ov.initrd) if a == str(fake_initramfs) else a
        for a in vm.qemu_argv(s, console_sock="c", qmp_sock="q", log_port="l", early_log="e")]  # only -initrd


def test_corrupt_cache_entry_is_captured_again(tmp_path, monkeypatch, fake_initramfs):
    monkeypatch.setenv("NEONVM_KERNEL_CACHE", str(tmp_path / "cache"))
    s = spec(initrd=fake_initramfs)
    seed_cache(tmp_path / "cache", s, "Q", apic=APIC[:-8])
    booted = []

    class NoQemu:
        def __init__(self, *a, **k):
            booted.append(1)

        def __enter__(self):
            raise at.InfraError("no QEMU in unit tests", step="qemu")

        def __exit__(self, *exc):
            return False
    monkeypatch.setattr(at, "Vm", NoQemu)
    new_spec, meta = at.apply(s, qemu_version="Q", log_dir=tmp_path, boot_timeout=1)
    assert booted and new_spec is s and "no QEMU in unit tests" in meta["error"]


def test_no_free_slot_is_an_error(tmp_path, monkeypatch, fake_initramfs):
    monkeypatch.setenv("NEONVM_KERNEL_CACHE", str(tmp_path / "cache"))
    s = spec(initrd=fake_initramfs)
    t = bytearray(APIC)
    for e in at.madt_entries(APIC):
        if e.type == 0:
            t[e.offset + 4] = 1
    seed_cache(tmp_path / "cache", s, "Q", apic=fix(t))
    with pytest.raises(at.AcpiTableError, match="no disabled processor entry"):
        at.override(s, qemu_version="Q", log_dir=tmp_path, boot_timeout=1)


@pytest.mark.parametrize("arch,accel,checks,want", [
    (AMD64, "tcg", ["boot", "cpu-qmp"], True),
    (AMD64, "kvm", ["cpu-qmp"], False),  # never under KVM
    (AMD64, "tcg", ["cpu-sysfs", "virtio-mem"], False),
    (ARM64, "tcg", ["cpu-qmp"], False),
])
def test_needed_only_for_cpu_qmp_under_tcg(arch, accel, checks, want):
    assert at.needed(arch, accel, checks) is want


def test_dry_run_says_which_initrd(tmp_path, capsys):
    req = BootRequest(AMD64, kernel=tmp_path / "k", release="x", results_dir=tmp_path, accel="tcg", dry_run=True)
    boottest.run(req)
    assert "# initrd: early cpio of online-capable FACP and APIC" in capsys.readouterr().out
    boottest.run(dataclasses.replace(req, acpi_override=False))
    assert "# initrd" not in capsys.readouterr().out


def test_cli_flag():
    from harness.cli import parser

    assert parser().parse_args(["boot-test", "amd64"]).acpi_override is True
    assert parser().parse_args(["boot-test", "amd64", "--no-acpi-override"]).acpi_override is False


# -- cpu-qmp and the override ----------------------------------------------------------------------------
OVERRIDE = {"FACP": "rev 3 -> 6.3, OEM rev 1 -> 2", "APIC": "rev 3 -> 5, online-capable on 2 entries",
            "source": "captured from QEMU 10.0.2 q35", "cache": "/c"}
TAKEN = ("[ 0.0] ACPI: Table Upgrade: override [FACP-BOCHS -BXPC    ]\n"
         "[ 0.0] ACPI: Table Upgrade: override [APIC-BOCHS -BXPC    ]\n")
NO_HOTPLUG = "[ 0.0] CPU topo: Allowing 2 present CPUs plus 0 hotplug CPUs\n"


def qmp_check(dmesg: str, acpi: dict | None, accel: str = "tcg"):
    g = Guest(vm=None, arch=AMD64, accel_name=accel, release="6.12", boot_dmesg=dmesg,
              options={"acpi_override": acpi} if acpi is not None else {})
    return run_check(Check("cpu-qmp", cpu_hotplug.qmp), g)


def test_cpu_qmp_override_taken_but_no_hotplug_cpus_fails():
    r = qmp_check(TAKEN + NO_HOTPLUG, OVERRIDE)
    assert r.status == "fail" and "still allows no hotplug vCPU" in r.reason
    assert r.evidence["acpi_override"]["FACP"] == OVERRIDE["FACP"]
    assert len(r.evidence["acpi_override_in_guest"]) == 2


def test_cpu_qmp_override_not_taken_by_the_kernel_skips_saying_so():
    r = qmp_check(NO_HOTPLUG, OVERRIDE)
    assert r.status == "skip" and "needs KVM (ran under TCG)" in r.reason and "ACPI_TABLE_UPGRADE" in r.reason


def test_cpu_qmp_override_off_skips_saying_so():
    r = qmp_check(NO_HOTPLUG, {"off": "disabled (--no-acpi-override)"})
    assert r.status == "skip" and "override is disabled (--no-acpi-override)" in r.reason


def test_cpu_qmp_override_that_could_not_be_prepared_is_an_error():
    r = qmp_check(NO_HOTPLUG, {"error": "[acpi-override] APIC: bad checksum"})
    assert r.status == "error" and "APIC: bad checksum" in r.reason


def test_cpu_qmp_override_error_does_not_matter_where_the_guest_allows_hotplug():
    """e.g. Debian's 6.1 under TCG: it allows hotplug vCPUs with QEMU's own tables; the error is kept."""
    g = Guest(vm=None, arch=AMD64, accel_name="tcg", release="6.1", options={"acpi_override": {"error": "boom"}},
              boot_dmesg="smpboot: Allowing 4 CPUs, 2 hotplug CPUs\n")
    ev: dict = {}
    assert cpu_hotplug._acpi_override(g, ev, "cpu-qmp").endswith("could not be prepared: boom")
    assert ev["acpi_override"] == {"error": "boom"}
