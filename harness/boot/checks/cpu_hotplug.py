"""vCPU scaling, both of the runner's ways.

* sysfs mode (every arch): all vCPUs of the test are present at boot, ``maxcpus=`` on the kernel
  command line leaves some offline, and the harness onlines and offlines them through
  ``/sys/devices/system/cpu/cpuN/online``.
* QMP mode (where the arch table says the runner uses it, amd64): ``device_add`` of the next vCPU
  from ``query-hotpluggable-cpus``, the guest sees it and it is onlined (the runner's udev rule
  does that), then ``device_del`` and the guest loses it (``DEVICE_DELETED``).

In both, ``/sys/devices/system/cpu/online`` and the scheduler (``nproc``, a task pinned to the
CPU with taskset) must agree.

Under TCG an x86 guest >= 6.9 allows hotplug vCPUs only with online-capable ACPI tables; the boot
test then boots with FACP and APIC replaced through the initrd (harness/boot/acpitables.py), passes
what it did in ``guest.options["acpi_override"]``, and the QMP check records it and the guest's
own ``Table Upgrade`` lines.
"""
from __future__ import annotations

import logging
import re

from harness.boot.checks import Check, Guest, Skip, cpu_list
from harness.check import Evidence
from harness.errors import CheckFailed, InfraError
from harness.progress import Timer

LOG = logging.getLogger(__name__)

SYS = "/sys/devices/system/cpu"
# 6.9+: "CPU topo: Allowing 2 present CPUs plus 0 hotplug CPUs"; older: "smpboot: Allowing 4 CPUs, 2 hotplug CPUs"
TOPOLOGY_RE = re.compile(r"Allowing (\d+) (?:present )?CPUs(?: plus|,) (\d+) hotplug CPUs")
HOTPLUG_DEVICE_ID = "hotcpu0"
# "ACPI: Table Upgrade: override [FACP-BOCHS -BXPC    ]" and "ACPI: APIC 0x... (v05 BOCHS  BXPC ...)"
ACPI_OVERRIDE_RE = re.compile(r"^.*(?:Table Upgrade: override \[(?:FACP|APIC)-|ACPI: (?:FACP|APIC) 0x).*$",
                              re.MULTILINE)


def _cpus(guest: Guest, what: str, step: str) -> set[int]:
    return cpu_list(guest.console.read(f"{SYS}/{what}", step=step))


def _fmt(cpus: set[int]) -> str:
    return ",".join(str(c) for c in sorted(cpus)) or "-"


def _scheduler_agrees(guest: Guest, step: str, ev: Evidence, key: str) -> set[int]:
    online = _cpus(guest, "online", step)
    nproc = int(guest.sh("nproc", step=step).strip())
    ev[f"{key}_online"] = _fmt(online)
    ev[f"{key}_nproc"] = nproc
    if nproc != len(online):
        raise CheckFailed(f"nproc says {nproc} CPUs, {SYS}/online says {_fmt(online)}", step=step)
    return online


def _pinned_run(guest: Guest, cpu: int, step: str) -> tuple[int, str]:
    """Run a task pinned to ``cpu``; it prints the CPU it ran on (field 39 of /proc/self/stat)."""
    rc, out = guest.console.run(f"taskset {1 << cpu:x} awk '{{print $39}}' /proc/self/stat", step=step,
                                check=False)
    return rc, out.strip()


def _expect_runs_on(guest: Guest, cpu: int, step: str, ev: Evidence) -> None:
    rc, out = _pinned_run(guest, cpu, step)
    ev[f"pinned_task_cpu{cpu}"] = out
    if rc != 0 or out.splitlines()[-1:] != [str(cpu)]:
        raise CheckFailed(f"a task pinned to CPU {cpu} did not run there (exit {rc}: {out[:100]!r})", step=step)


def _expect_not_schedulable(guest: Guest, cpu: int, step: str, ev: Evidence) -> None:
    rc, out = _pinned_run(guest, cpu, step)
    ev[f"pinned_task_offline_cpu{cpu}"] = f"exit {rc}: {out[:100]}"
    if rc == 0:
        raise CheckFailed(f"a task could still be pinned to offline CPU {cpu}: {out[:100]!r}", step=step)


def sysfs(guest: Guest, ev: Evidence) -> None:
    step = "cpu-sysfs"
    present = _cpus(guest, "present", step)
    before = _scheduler_agrees(guest, step, ev, "boot")
    ev["present"] = _fmt(present)
    targets = sorted(present - before)
    if not targets:
        raise CheckFailed(f"no present-but-offline vCPU to online (present {_fmt(present)}, online "
                          f"{_fmt(before)}): the kernel ignored maxcpus=", step=step)
    for cpu in targets:
        guest.sh(f"echo 1 > {SYS}/cpu{cpu}/online", step=step, timeout=20)
    up = _scheduler_agrees(guest, step, ev, "up")
    if up != before | set(targets):
        raise CheckFailed(f"after onlining {_fmt(set(targets))}, online is {_fmt(up)}", step=step)
    for cpu in targets:
        _expect_runs_on(guest, cpu, step, ev)
    for cpu in reversed(targets):
        guest.sh(f"echo 0 > {SYS}/cpu{cpu}/online", step=step, timeout=20)
    down = _scheduler_agrees(guest, step, ev, "down")
    if down != before:
        raise CheckFailed(f"after offlining {_fmt(set(targets))}, online is {_fmt(down)}", step=step)
    _expect_not_schedulable(guest, targets[-1], step, ev)


def _acpi_override(guest: Guest, ev: Evidence, step: str) -> str | None:
    """Record the ACPI override the boot used (if any); the reason it was not used, else None."""
    acpi = guest.options.get("acpi_override")
    if not acpi:
        return None
    if "error" in acpi:  # an error only where it matters (the guest allows no hotplug vCPU)
        ev["acpi_override"] = {"error": acpi["error"]}
        return f"the online-capable ACPI tables for TCG could not be prepared: {acpi['error']}"
    if "off" in acpi:
        ev["acpi_override"] = acpi["off"]
        return f"the online-capable ACPI override is {acpi['off']}"
    ev["acpi_override"] = {k: acpi[k] for k in ("FACP", "APIC", "source", "cache") if k in acpi}
    ev["acpi_override_in_guest"] = [ln.strip() for ln in ACPI_OVERRIDE_RE.findall(guest.boot_dmesg)]
    if not any("Table Upgrade: override" in ln for ln in ev["acpi_override_in_guest"]):
        return ("the kernel did not take the online-capable ACPI tables from the initrd (no 'Table Upgrade: "
                "override' in dmesg: built without ACPI_TABLE_UPGRADE?)")
    return ""


def qmp(guest: Guest, ev: Evidence) -> None:
    step = "cpu-qmp"
    why_not = _acpi_override(guest, ev, step)
    m = TOPOLOGY_RE.search(guest.boot_dmesg)
    ev["guest_topology"] = m.group(0) if m else "(no 'Allowing ... hotplug CPUs' line in dmesg)"
    if m and int(m.group(2)) == 0:
        if guest.accel_name == "kvm":
            raise CheckFailed(f"under KVM the guest allows no hotplug vCPU: {m.group(0)!r}", step=step)
        if why_not == "":  # the kernel took the online-capable tables and still allows none
            raise CheckFailed(f"with online-capable FACP and APIC ({ev['acpi_override']}) the guest still allows "
                              f"no hotplug vCPU: {m.group(0)!r}", step=step)
        if isinstance(ev.get("acpi_override"), dict) and "error" in ev["acpi_override"]:
            raise InfraError(f"{why_not}; the guest, with QEMU's own tables, says {m.group(0)!r}", step=step)
        raise Skip(f"needs KVM (ran under {guest.accel_name.upper()}): the guest allows no hotplug vCPU, "
                   f"its dmesg says {m.group(0)!r} (x86 Linux >= 6.9 counts disabled LAPICs as hot-pluggable "
                   "only under a known hypervisor or with an online-capable MADT)"
                   + (f"; {why_not}" if why_not else ""))
    slots = guest.qmp.execute("query-hotpluggable-cpus")
    free = sorted((s for s in slots if "qom-path" not in s), key=lambda s: sorted(s["props"].items()))
    ev["hotpluggable_free"] = len(free)
    if not free:
        raise CheckFailed("QEMU offers no free vCPU slot (is -smp cpus < maxcpus?)", step=step)
    slot = free[0]
    present_text = guest.console.read(f"{SYS}/present", step=step)
    present = cpu_list(present_text)
    before = _scheduler_agrees(guest, step, ev, "before")
    args = {"driver": slot["type"], "id": HOTPLUG_DEVICE_ID, **slot["props"]}
    ev["device_add"] = args
    plugged = Timer.begin()
    guest.qmp.execute("device_add", args)
    guest.console.wait_until(f'[ "$(cat {SYS}/present)" != "{present_text}" ]', timeout=20, step=step,
                             what="the guest sees the new vCPU")
    ev["seconds_plug_to_present"] = round(plugged.elapsed, 3)
    new = _cpus(guest, "present", step) - present
    ev["new_cpu"] = _fmt(new)
    if len(new) != 1:
        raise CheckFailed(f"expected one new present vCPU, got {_fmt(new)}", step=step)
    cpu = new.pop()
    # The runner's udev rule onlines a hot-added vCPU; do the same unless the kernel already has.
    if cpu not in _cpus(guest, "online", step):
        guest.sh(f"echo 1 > {SYS}/cpu{cpu}/online", step=step, timeout=20)
    up = _scheduler_agrees(guest, step, ev, "added")
    if up != before | {cpu}:
        raise CheckFailed(f"after hot-adding CPU {cpu}, online is {_fmt(up)}", step=step)
    # device_add -> present -> onlined and seen online by the scheduler (host clock, console round trips included)
    ev["seconds_plug_to_online"] = round(plugged.elapsed, 3)
    _expect_runs_on(guest, cpu, step, ev)
    guest.qmp.execute("device_del", {"id": HOTPLUG_DEVICE_ID})
    # QEMU 10 reports the vCPU's removal as DEVICE_DELETED of its child (.../hotcpu0/lapic); the
    # vCPU itself may be finalised later. Either counts; the freed slot below confirms it.
    qom = f"/machine/peripheral/{HOTPLUG_DEVICE_ID}"
    deleted = guest.qmp.wait_event(
        "DEVICE_DELETED", timeout=30 * guest.console.scale, step=step,
        match=lambda d: d.get("device") == HOTPLUG_DEVICE_ID or str(d.get("path", "")).startswith(qom))
    if deleted is None:
        raise CheckFailed(f"no DEVICE_DELETED for {HOTPLUG_DEVICE_ID}: the guest did not eject CPU {cpu}", step=step)
    ev["device_deleted"] = deleted.get("data", {})
    again = guest.qmp.execute("query-hotpluggable-cpus")
    if any(s["props"] == slot["props"] and "qom-path" in s for s in again):
        raise CheckFailed(f"after DEVICE_DELETED the vCPU slot {slot['props']} is still occupied", step=step)
    guest.console.wait_until(f'[ ! -e {SYS}/cpu{cpu}/online ] || [ "$(cat {SYS}/cpu{cpu}/online)" = 0 ]',
                             timeout=20, step=step, what=f"the guest loses CPU {cpu}")
    after = _scheduler_agrees(guest, step, ev, "removed")
    if cpu in after or cpu in _cpus(guest, "present", step):
        raise CheckFailed(f"CPU {cpu} is still there after device_del (online {_fmt(after)})", step=step)


CHECKS = [
    Check("cpu-sysfs", sysfs, lambda a: a.cpu_hotplug_sysfs,
          doc="online/offline present vCPUs through sysfs; online list, nproc and taskset agree"),
    Check("cpu-qmp", qmp, lambda a: a.cpu_hotplug_qmp,
          doc="QMP device_add/device_del of a vCPU; the guest follows"),
]
