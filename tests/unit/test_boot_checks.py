"""Check logic with fake guests: outcome mapping, skips that need evidence, selection per arch."""
from __future__ import annotations

import pytest

from harness.arch import get_arch
from harness.boot import run as boottest
from harness.boot.checks import Check, Guest, Skip, cpu_hotplug, cpu_list, meminfo_kib, ptp, run_check, tools_in_guest
from harness.errors import CheckFailed, InvalidArgument, QemuDied

AMD64, ARM64 = get_arch("amd64"), get_arch("arm64")


def guest(**kw) -> Guest:
    base = dict(vm=None, arch=AMD64, accel_name="tcg", release="6.12.117")
    return Guest(**{**base, **kw})


@pytest.mark.parametrize("exc,status", [(None, "pass"), (Skip("why"), "skip"), (CheckFailed("bad", step="s"), "fail"),
                                        (QemuDied("gone", step="s"), "error"), (KeyError("bug"), "error")])
def test_outcome_mapping(exc, status):
    def func(g, ev):
        ev["seen"] = 1
        if exc:
            raise exc
    r = run_check(Check("x", func), guest())
    assert r.status == status and r.evidence["seen"] == 1 and r.evidence["accelerator"] == "tcg"


def test_crash_tail_kept_as_evidence():
    from harness.boot.console import GuestCrashed

    def func(g, ev):
        raise GuestCrashed("panic", step="s", tail=["a", "Kernel panic - not syncing: x"])
    assert run_check(Check("x", func), guest()).evidence["console_tail"][-1].startswith("Kernel panic")


def test_cpu_qmp_skipped_under_tcg_with_the_guests_own_line():
    dmesg = "[ 0.0] CPU topo: Allowing 2 present CPUs plus 0 hotplug CPUs\n"
    r = run_check(Check("cpu-qmp", cpu_hotplug.qmp), guest(boot_dmesg=dmesg))
    assert r.status == "skip" and "needs KVM (ran under TCG)" in r.reason
    assert "Allowing 2 present CPUs plus 0 hotplug CPUs" in r.reason
    assert r.evidence["guest_topology"] == "Allowing 2 present CPUs plus 0 hotplug CPUs"


def test_cpu_qmp_without_hotplug_cpus_under_kvm_fails():
    dmesg = "CPU topo: Allowing 2 present CPUs plus 0 hotplug CPUs"
    assert run_check(Check("cpu-qmp", cpu_hotplug.qmp), guest(boot_dmesg=dmesg, accel_name="kvm")).status == "fail"


def test_topology_line_of_older_kernels():
    m = cpu_hotplug.TOPOLOGY_RE.search("smpboot: Allowing 4 CPUs, 2 hotplug CPUs")
    assert m and m.group(2) == "2"


def test_ptp_kvm_skips_only_without_kvm():
    r = run_check(Check("ptp-kvm", ptp.ptp_kvm), guest())
    assert r.status == "skip" and r.reason == "needs KVM (ran under TCG)"


def test_tools_missing_is_skip_or_fail(tmp_path):
    missing = tmp_path / "tools.img"
    r = run_check(Check("tools", tools_in_guest.tools), guest(tools_img=missing))
    assert r.status == "skip" and "tools optional" in r.reason
    r = run_check(Check("tools", tools_in_guest.tools), guest(tools_img=missing, tools_required=True))
    assert r.status == "fail"


def test_selection_per_arch():
    amd = [c.name for c in boottest.select_checks(AMD64, None)]
    arm = [c.name for c in boottest.select_checks(ARM64, None)]
    assert {"cpu-qmp", "acpi-dimm"} <= set(amd)
    assert "cpu-qmp" not in arm and "acpi-dimm" not in arm and "cpu-sysfs" in arm and "virtio-mem" in arm
    assert [c.name for c in boottest.select_checks(AMD64, ["virtio-mem"])] == ["virtio-mem"]
    assert boottest.select_checks(AMD64, ["boot"]) == []
    with pytest.raises(InvalidArgument, match="nope"):
        boottest.select_checks(AMD64, ["nope"])


def test_parsers():
    assert cpu_list("0-2,5\n") == {0, 1, 2, 5} and cpu_list("0") == {0} and cpu_list("") == set()
    assert meminfo_kib("MemTotal:        4026124 kB\nMemFree:  1 kB\n") == 4026124


