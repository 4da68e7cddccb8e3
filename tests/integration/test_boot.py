"""Real boots of the smoke kernels under QEMU (TCG here), and the boot test's negative cases.

Budget: one boot per arch serves every check (the migration check adds two destination QEMUs and
about a minute per arch: a resize in flight waits for the guest driver's 50 s retry); the negatives
add six short boots (about two minutes in all under TCG on two cores)."""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from harness import manifest
from harness.arch import get_arch
from harness.boot import initramfs
from harness.boot import run as boottest
from harness.boot.checks import run_check
from harness.boot.checks.memory_hotplug import CHECKS as MEMORY_CHECKS
from harness.boot.run import BootRequest
from harness.boot.vm import Vm, detect_accel

pytestmark = pytest.mark.integration

AMD64, ARM64 = get_arch("amd64"), get_arch("arm64")
HANG_INIT = "#!/bin/busybox sh\n/bin/busybox echo 'test init: about to hang'\nexec /bin/busybox sleep 1000000\n"
DEBIAN_KERNELS = sorted(Path("/boot").glob("vmlinuz-*-amd64"))


def release_of(out: Path) -> str:
    return manifest.read(out, None, step="test").kernelrelease


def checks_of(out: Path) -> dict[str, dict]:
    data = json.loads((out / "boot" / "results.json").read_text())
    return {c["name"]: c for c in data["checks"]}


def assert_full_run(arch, out: Path, expected_pass: set[str]) -> dict[str, dict]:
    ok = boottest.boot_test(arch, out, require_tools=True)
    checks = checks_of(out)
    assert ok, {n: (c["status"], c["reason"]) for n, c in checks.items() if c["status"] in ("fail", "error")}
    for name in expected_pass:
        assert checks[name]["status"] == "pass", (name, checks[name]["reason"])
    assert checks["kernelrelease"]["evidence"]["uname_r"] == release_of(out)
    assert checks["boot"]["evidence"]["seconds_to_shell"] > 0
    tcg = checks["boot"]["evidence"]["accelerator"] == "tcg"
    if tcg:
        assert checks["ptp-kvm"]["status"] == "skip" and checks["ptp-kvm"]["reason"] == "needs KVM (ran under TCG)"
    else:
        assert checks["ptp-kvm"]["status"] == "pass"
    tools = checks["tools"]
    assert tools["status"] == "pass", tools["reason"]
    assert tools["evidence"]["perf_version"].startswith("perf version 6.12")
    for name in ("results.xml", "boot.console.log", "boot.qemu.log"):
        assert (out / "boot" / name).stat().st_size > 0
    return checks


CONTRACT_CHECKS = {"contract-probe", "contract-config", "contract-prjquota", "contract-ip-pnp", "contract-rtc",
                   "contract-log-port", "contract-perf", "contract-powerdown"}


def assert_contract(checks: dict[str, dict]) -> None:
    probe = checks["contract-probe"]["evidence"]["probe"]
    assert all(v.startswith("ok") for v in probe.values()), probe
    assert "core." in probe["coredump"]
    assert checks["contract-powerdown"]["evidence"]["shutdown_event"]["reason"] == "guest-shutdown"
    assert checks["contract-powerdown"]["evidence"]["seconds_to_power_off"] < 30
    assert int(checks["contract-rtc"]["evidence"]["guest_date"][:4]) >= 2024
    assert checks["contract-ip-pnp"]["evidence"]["hostname"] == "neonvm-guest"
    assert "tech.neon.log.0" in checks["contract-log-port"]["evidence"]["ports"].values()
    assert list(checks)[-1] == "contract-powerdown"  # it ends the VM, so it runs last


def assert_migration(checks: dict[str, dict], out: Path) -> None:
    """Two live migrations, 512 MiB + 256 MiB plugged; every later check ran in the last destination."""
    mig = checks["migration"]
    assert mig["status"] == "pass", mig["reason"]
    ev = mig["evidence"]
    assert ev["final_vm"] == "boot.dest2"
    for n, (src, dst) in ((1, ("boot", "boot.dest1")), (2, ("boot.dest1", "boot.dest2"))):
        r = ev[f"round{n}"]
        assert (r["from"], r["to"], r["status"]) == (src, dst, "completed")
        assert (r["source_status"], r["dest_status"]) == ("postmigrate", "running")
        assert r["total_ms"] > 0 and r["downtime_ms"] >= 0 and r["setup_ms"] >= 0 and r["transferred_mib"] > 0
        assert abs(r["clock_offset_change_s"]) <= r["clock_allowed_s"] and r["new_dmesg_failures"] == []
        assert r["device_size_mib_after"] == 256 and r["shrunk_device_size"] == 0
        for log in ("console", "qemu"):
            assert (out / "boot" / f"{dst}.{log}.log").stat().st_size > 0
    r1, r2 = ev["round1"], ev["round2"]
    assert r1["memtotal_kib_after"] == r1["memtotal_kib_before"] and r1["device_size_mib_before"] == 256
    assert r2["requested_mib_in_flight"] == 256 and r2["memtotal_kib_after"] == r2["memtotal_kib_before"] + 256 * 1024
    # The log port check wrote through the last destination's chardev, so it ran there.
    assert checks["contract-log-port"]["evidence"]["host_file"].endswith("boot.dest2.logport.log")


def test_boot_test_amd64(smoke_tools):
    out = smoke_tools["amd64"]
    checks = assert_full_run(AMD64, out, {"boot", "kernelrelease", "dmesg", "cpu-sysfs", "virtio-mem",
                                          "acpi-dimm", "migration", "ptp-kvm-builtin", *CONTRACT_CHECKS})
    assert_contract(checks)
    assert_migration(checks, out)
    assert checks["migration"]["evidence"]["round1"]["replayed_on_destination"] == [
        "pc-dimm dimm0 (memory-backend-ram 128 MiB)"]  # acpi-dimm's DIMM, replayed like NeonVM's controller
    names = list(checks)
    assert names.index("migration") < names.index("cpu-qmp")  # vCPU hotplug in the migrated VM
    qmp = checks["cpu-qmp"]
    assert qmp["status"] == "pass", qmp["reason"]  # under TCG too: online-capable FACP/APIC from the initrd
    assert qmp["evidence"]["seconds_plug_to_online"] > 0
    meta = json.loads((out / "boot" / "results.json").read_text())["meta"]
    if qmp["evidence"]["accelerator"] == "tcg":
        assert meta["acpi_override"]["FACP"].endswith("-> 6.3, OEM rev 1 -> 2"), meta["acpi_override"]
        assert "online-capable on 2 entries" in meta["acpi_override"]["APIC"]
        assert meta["acpi_override"]["source"].startswith("captured from QEMU")
        assert qmp["evidence"]["acpi_override"]["APIC"] == meta["acpi_override"]["APIC"]
        assert any("Table Upgrade: override [APIC-" in ln for ln in qmp["evidence"]["acpi_override_in_guest"])
        assert qmp["evidence"]["guest_topology"] == "Allowing 2 present CPUs plus 2 hotplug CPUs"
    else:
        assert "acpi_override" not in meta  # never under KVM


def test_boot_test_arm64(smoke_tools):
    out = smoke_tools["arm64"]
    checks = assert_full_run(ARM64, out, {"boot", "kernelrelease", "dmesg", "cpu-sysfs", "virtio-mem",
                                          "migration", "ptp-kvm-builtin", *CONTRACT_CHECKS})
    assert_contract(checks)
    assert_migration(checks, out)
    assert checks["contract-rtc"]["evidence"]["rtc_name"].split()[0] == "rtc-efi"  # 6.12: "rtc-efi rtc-efi.0"
    assert "cpu-qmp" not in checks and "acpi-dimm" not in checks


def test_cpu_qmp_without_the_acpi_override_skips_under_tcg(smoke_build, tmp_path):
    """QEMU's own tables (--no-acpi-override): the 6.12 guest under TCG allows no hotplug vCPU, and
    the skip quotes its line."""
    if detect_accel(AMD64).name == "kvm":
        pytest.skip("KVM is usable here: no override either way")
    out = smoke_build["amd64"]
    req = BootRequest(AMD64, kernel=out / "vmlinuz", release=release_of(out), results_dir=tmp_path, only=["cpu-qmp"],
                      acpi_override=False)
    results = {r.name: r for r in boottest.run(req)}
    qmp = results["cpu-qmp"]
    assert qmp.status == "skip" and "plus 0 hotplug CPUs" in qmp.reason and "--no-acpi-override" in qmp.reason


# -- negative cases -------------------------------------------------------------------------------
def test_missing_init_panics_and_fails_fast(smoke_build, tmp_path):
    out = smoke_build["amd64"]
    start = time.monotonic()
    results = boottest.run(BootRequest(AMD64, kernel=out / "vmlinuz", release=release_of(out), results_dir=tmp_path,
                                       cmdline_extra=("rdinit=/no-such-init",), only=["boot"]))
    boot = results[0]
    assert boot.status == "fail" and "Kernel panic - not syncing" in boot.reason
    assert any("Kernel panic" in ln for ln in boot.evidence["console_tail"])
    assert time.monotonic() - start < AMD64.boot_timeout_tcg / 2  # at the panic, not at the deadline


def test_hang_times_out_with_last_lines(smoke_build, tmp_path):
    out = smoke_build["amd64"]
    results = boottest.run(BootRequest(AMD64, kernel=out / "vmlinuz", release=release_of(out), results_dir=tmp_path,
                                       init_text=HANG_INIT, boot_timeout=10, only=["boot"]))
    boot = results[0]
    assert boot.status == "fail" and "timed out after 10s" in boot.reason
    assert "test init: about to hang" in boot.evidence["console_tail"][-5:]


@pytest.mark.skipif(not DEBIAN_KERNELS, reason="no Debian generic kernel in /boot (linux-image-amd64)")
def test_kernel_without_virtio_mem_fails_the_check(tmp_path):
    """Debian's generic kernel has virtio-mem only as a module, which the test initramfs never loads."""
    kernel = DEBIAN_KERNELS[-1]
    release = kernel.name.removeprefix("vmlinuz-")
    results = {r.name: r for r in boottest.run(BootRequest(AMD64, kernel=kernel, release=release, results_dir=tmp_path,
                                                           only=["kernelrelease", "virtio-mem"]))}
    assert results["boot"].status == "pass" and results["kernelrelease"].status == "pass"
    assert results["virtio-mem"].status == "fail", results["virtio-mem"].reason
    assert "virtio-mem" in results["virtio-mem"].reason


def test_our_kernel_built_without_madvise_fails_the_contract(negative_build, tmp_path):
    """The negative kernel has no ADVISE_SYSCALLS: the contract check names the capability and the
    NeonVM component that needs it."""
    out = negative_build["amd64"]
    assert "CONFIG_ADVISE_SYSCALLS=y" not in (out / "config").read_text()
    req = BootRequest(AMD64, kernel=out / "vmlinuz", release=release_of(out), results_dir=tmp_path,
                      only=["contract-probe", "contract-config"])
    results = {r.name: r for r in boottest.run(req)}
    probe = results["contract-probe"]
    assert probe.status == "fail", probe.reason
    assert "madvise" in probe.reason and "ENOSYS" in probe.reason
    assert "capability 'madvise' (ADVISE_SYSCALLS=y)" in probe.reason and "allocators" in probe.reason
    assert probe.evidence["probe"]["io_uring"].startswith("ok")  # only what is missing fails
    assert results["contract-config"].status == "fail"
    assert any("CONFIG_ADVISE_SYSCALLS=n" in w for w in results["contract-config"].evidence["wrong"])


@pytest.mark.parametrize("how", ["kill", "qmp-quit"])
def test_qemu_dying_mid_test_is_an_infrastructure_error(smoke_build, tmp_path, how):
    out = smoke_build["amd64"]
    acc = detect_accel(AMD64)
    spec = boottest.vm_spec(arch=AMD64, kernel=out / "vmlinuz", initrd=initramfs.build(AMD64), accel=acc)
    with Vm(spec, log_dir=tmp_path, tag=how) as vm:
        boot, guest = boottest.boot_guest(vm, arch=AMD64, accel=acc, release=release_of(out), timeout=60)
        assert boot.status == "pass", boot.reason
        if how == "kill":
            vm.kill()
        else:
            vm.qmp.execute("quit")
        start = time.monotonic()
        result = run_check(MEMORY_CHECKS[0], guest)
    assert result.status == "error", result.reason
    assert "QEMU went away" in result.reason
    assert time.monotonic() - start < 15


def test_migration_to_a_mismatched_destination_fails_with_qemus_error(smoke_build, tmp_path, monkeypatch):
    """A destination whose virtio-mem backend differs refuses the stream: a failure carrying QEMU's
    error-desc and the destination's own error lines; the guest stays in the source, whose later
    checks still pass, and no QEMU is left behind."""
    from harness.boot import vm as vmmod

    real = vmmod.qemu_argv

    def argv(spec, **kw):
        a = real(spec, **kw)
        return [x.replace("size=1024M", "size=512M") for x in a] if kw.get("incoming") else a

    monkeypatch.setattr(vmmod, "qemu_argv", argv)
    out = smoke_build["amd64"]
    req = BootRequest(AMD64, kernel=out / "vmlinuz", release=release_of(out), results_dir=tmp_path,
                      only=["migration", "contract-rtc"])
    results = {r.name: r for r in boottest.run(req)}
    mig = results["migration"]
    assert mig.status == "fail", mig.reason
    assert "migration to boot.dest1 failed: " in mig.reason and mig.evidence["round1"]["error_desc"]
    assert any("Size mismatch" in ln and "vmem0" in ln for ln in mig.evidence["console_tail"])
    assert mig.evidence["round1"]["source_status_after"] == "running"
    assert results["contract-rtc"].status == "pass"  # in the source, which resumed
    assert (tmp_path / "boot.dest1.qemu.log").read_text().rstrip().endswith("### QEMU exit status 1")


def test_qemu_that_cannot_start_is_an_infrastructure_error(tmp_path, monkeypatch):
    """No kernel needed: QEMU rejects its command line and exits before connecting."""
    from harness.boot import vm as vmmod

    real = vmmod.qemu_argv
    monkeypatch.setattr(vmmod, "qemu_argv", lambda spec, **kw: real(spec, **kw) + ["-no-such-option"])
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(b"not a kernel")
    start = time.monotonic()
    results = boottest.run(BootRequest(AMD64, kernel=kernel, release="x", results_dir=tmp_path, accel="tcg",
                                       only=["boot"]))
    assert results[0].status == "error" and "QEMU exited 1 before connecting" in results[0].reason
    assert "-no-such-option" in results[0].reason
    assert time.monotonic() - start < 10
