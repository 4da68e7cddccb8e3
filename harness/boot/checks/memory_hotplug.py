"""Memory hotplug the runner's ways: virtio-mem (every arch) and ACPI pc-dimm (amd64).

The kernel command line asks for ``memhp_default_state=online`` with the ``auto-movable`` online
policy, so new memory must come online by itself, in ZONE_MOVABLE while the ratio allows.
QMP drives the host side; the guest's MemTotal and its memory blocks in sysfs are the evidence.
"""
from __future__ import annotations

import logging

from harness.boot.checks import Check, Guest, meminfo_kib
from harness.boot.vm import VIRTIO_MEM_ID
from harness.check import Evidence
from harness.errors import CheckFailed

LOG = logging.getLogger(__name__)

MIB = 1 << 20
VIRTIO_MEM_GROW_MIB = 256
DIMM_MIB = 128
MEMORY_SYS = "/sys/devices/system/memory"
VIRTIO_MEM_DRIVER = "/sys/bus/virtio/drivers/virtio_mem"
VIRTIO_MEM_QOM = f"/machine/peripheral/{VIRTIO_MEM_ID}"
DIMM_ID = "dimm0"


def memtotal(guest: Guest, step: str) -> int:
    return meminfo_kib(guest.sh("cat /proc/meminfo", step=step))


def memory_blocks(guest: Guest, step: str) -> set[str]:
    return set(guest.sh(f"ls {MEMORY_SYS} | grep '^memory[0-9]'", step=step).split())


def wait_memtotal(guest: Guest, kib: int, *, step: str, what: str) -> float:
    cond = f"[ \"$(awk '/^MemTotal:/{{print $2}}' /proc/meminfo)\" = {kib} ]"
    return guest.console.wait_until(cond, timeout=30, step=step, what=what)


def _new_blocks_online(guest: Guest, before: set[str], step: str, ev: Evidence, *, movable: bool) -> None:
    new = sorted(memory_blocks(guest, step) - before, key=lambda b: int(b[6:]))
    if not new:
        raise CheckFailed("MemTotal grew but no new memory block appeared in sysfs", step=step)
    out = guest.sh(" ; ".join(f"echo {b} $(cat {MEMORY_SYS}/{b}/state) $(cat {MEMORY_SYS}/{b}/valid_zones)"
                              for b in new), step=step)
    states = {}
    for line in out.splitlines():
        name, state, *zones = line.split()
        states[name] = (state, " ".join(zones))
    ev["new_blocks"] = {k: f"{s} ({z})" for k, (s, z) in states.items()}
    offline = [b for b, (s, _) in states.items() if s != "online"]
    if offline:
        raise CheckFailed(f"new memory blocks not online: {', '.join(offline)} (memhp_default_state=online)",
                          step=step)
    if movable:
        other = [f"{b}: {z}" for b, (_, z) in states.items() if z != "Movable"]
        if other:
            raise CheckFailed(f"new memory not in ZONE_MOVABLE under online_policy=auto-movable: {other[:4]}",
                              step=step)


def set_requested(guest: Guest, size: int, step: str, ev: Evidence, key: str) -> None:
    guest.qmp.forget_pending()  # an earlier resize may have passed through this size on its way
    guest.qmp.execute("qom-set", {"path": VIRTIO_MEM_QOM, "property": "requested-size", "value": size})
    event = guest.qmp.wait_event("MEMORY_DEVICE_SIZE_CHANGE", timeout=30 * guest.console.scale, step=step,
                                 match=lambda d: d.get("id") == VIRTIO_MEM_ID and d.get("size") == size)
    plugged = guest.qmp.execute("qom-get", {"path": VIRTIO_MEM_QOM, "property": "size"})
    ev[f"{key}_device_size"] = plugged
    if plugged != size:
        raise CheckFailed(f"requested-size {size // MIB} MiB, but the guest's driver left the device at "
                          f"{plugged // MIB} MiB", step=step)
    if event is None:
        raise CheckFailed(f"the device reached {size // MIB} MiB but QEMU sent no MEMORY_DEVICE_SIZE_CHANGE "
                          "event for it", step=step)


def virtio_mem(guest: Guest, ev: Evidence) -> None:
    step = "virtio-mem"
    rc, _ = guest.console.run(f"[ -d {VIRTIO_MEM_DRIVER} ]", step=step, check=False)
    if rc != 0:
        raise CheckFailed(f"the kernel has no virtio-mem driver ({VIRTIO_MEM_DRIVER} missing; it must be built "
                          "in: the test initramfs loads no modules)", step=step)
    total0 = memtotal(guest, step)
    blocks0 = memory_blocks(guest, step)
    ev["memtotal_kib_before"] = total0
    grow = VIRTIO_MEM_GROW_MIB * MIB
    set_requested(guest, grow, step, ev, "grown")
    ev["grow_seconds"] = round(wait_memtotal(guest, total0 + grow // 1024, step=step,
                                              what=f"MemTotal grows by {VIRTIO_MEM_GROW_MIB} MiB"), 2)
    ev["memtotal_kib_grown"] = memtotal(guest, step)
    _new_blocks_online(guest, blocks0, step, ev, movable=True)
    set_requested(guest, 0, step, ev, "shrunk")
    ev["shrink_seconds"] = round(wait_memtotal(guest, total0, step=step, what="MemTotal drops back"), 2)
    ev["memtotal_kib_after"] = memtotal(guest, step)


def acpi_dimm(guest: Guest, ev: Evidence) -> None:
    step = "acpi-dimm"
    total0 = memtotal(guest, step)
    blocks0 = memory_blocks(guest, step)
    ev["memtotal_kib_before"] = total0
    guest.qmp.execute("object-add", {"qom-type": "memory-backend-ram", "id": f"{DIMM_ID}-mem",
                                     "size": DIMM_MIB * MIB})
    guest.qmp.execute("device_add", {"driver": "pc-dimm", "id": DIMM_ID, "memdev": f"{DIMM_ID}-mem"})
    ev["seconds"] = round(wait_memtotal(guest, total0 + DIMM_MIB * 1024, step=step,
                                         what=f"MemTotal grows by the {DIMM_MIB} MiB DIMM"), 2)
    ev["memtotal_kib_after"] = memtotal(guest, step)
    ev["acpi_ost"] = [e.get("data", {}) for e in guest.qmp.drain() if e["event"] == "ACPI_DEVICE_OST"]
    _new_blocks_online(guest, blocks0, step, ev, movable=False)


CHECKS = [
    Check("virtio-mem", virtio_mem,
          doc="qom-set requested-size up and down; MemTotal and the device size follow; blocks online, movable"),
    Check("acpi-dimm", acpi_dimm, lambda a: a.acpi_dimm,
          doc="object_add + device_add pc-dimm; MemTotal grows and the new memory is online"),
]
