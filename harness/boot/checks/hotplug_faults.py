"""Memory hot-add under allocation failure (x86_64): the proof of the series in configs/patches/.

Every virtio-mem upscale maps the new memory with ``init_memory_mapping()``, which takes page-table
pages from ``alloc_low_page()``. The check makes exactly those allocations fail with the kernel's
``fail_page_alloc`` fault injection (debugfs), filtered by call stack to the text of
``init_memory_mapping`` so nothing else in the guest is touched, while QMP asks virtio-mem to plug
memory. With the series the hot-add fails cleanly (virtio-mem logs ``adding memory failed: -12``
and the guest carries on); without it the guest dereferences NULL, which the console watcher
reports as the failure. Once injection stops, the same plug must succeed.

Opt-in (``--only hotplug-faults``): it needs a kernel with fault injection (the amd64 ``smoke``
and ``negative`` variants; configs/fragments/debug/faults-amd64.config).
"""
from __future__ import annotations

import logging

from harness.boot.checks import Check, Guest
from harness.boot.checks.memory_hotplug import MIB, VIRTIO_MEM_QOM, memtotal, set_requested, wait_memtotal
from harness.boot.console import scan_failures
from harness.boot.vm import VIRTIO_MEM_ID
from harness.check import Evidence
from harness.errors import CheckFailed

LOG = logging.getLogger(__name__)

FAIL_DIR = "/sys/kernel/debug/fail_page_alloc"
TARGET = "init_memory_mapping"  # the direct-mapping path of memory hot-add (arch/x86/mm/init.c)
PLUG_MIB = 256
INJECT_TIMES = 50
# What virtio-mem prints when add_memory_driver_managed() fails (drivers/virtio/virtio_mem.c).
FAILED_ADD = "adding memory failed: -12"


def symbol_range(lines: str, symbol: str) -> tuple[int, int]:
    """[start, end) of ``symbol`` from address-sorted ``/proc/kallsyms`` text lines: its address and
    the next text symbol's."""
    rows = [ln.split() for ln in lines.splitlines() if len(ln.split()) >= 3]
    for i, row in enumerate(rows):
        if row[2] == symbol and i + 1 < len(rows):
            start, end = int(row[0], 16), int(rows[i + 1][0], 16)
            if start == 0:
                raise CheckFailed("/proc/kallsyms shows zero addresses (kptr_restrict?)", step="hotplug-faults")
            if end <= start:
                raise CheckFailed(f"cannot size {symbol}: next symbol at {end:#x} <= {start:#x}", step="hotplug-faults")
            return start, end
    raise CheckFailed(f"no text symbol {symbol} (with a successor) in /proc/kallsyms", step="hotplug-faults")


def injection_commands(start: int, end: int, *, times: int = INJECT_TIMES) -> list[str]:
    """The fail_page_alloc settings: every order-0+ allocation, sleeping or not, whose call stack
    passes through [start, end) fails, at most ``times`` times. verbose=0: a forced failure must
    not print a stack trace (the console watcher would take it for a kernel failure)."""
    knobs = [("probability", "0"), ("verbose", "0"), ("interval", "1"), ("times", str(times)),
             ("ignore-gfp-wait", "N"), ("ignore-gfp-highmem", "N"), ("min-order", "0"),
             ("stacktrace-depth", "32"), ("require-start", hex(start)), ("require-end", hex(end)),
             ("task-filter", "N"), ("probability", "100")]
    return [f"echo {value} > {FAIL_DIR}/{knob}" for knob, value in knobs]


def faults(guest: Guest, ev: Evidence) -> None:
    step = "hotplug-faults"
    rc, _ = guest.console.run(f"[ -w {FAIL_DIR}/probability ]", step=step, check=False)
    if rc != 0:
        raise CheckFailed(f"{FAIL_DIR} is missing: the kernel has no page-allocation fault injection (the amd64 "
                          "smoke and negative variants have it)", step=step)
    near = guest.sh(f"grep ' [tT] ' /proc/kallsyms | sort | grep -A1 ' {TARGET}$'", step=step, timeout=120)
    start, end = symbol_range(near, TARGET)
    ev["filter"] = f"{TARGET} [{start:#x}, {end:#x})"
    total0 = memtotal(guest, step)
    ev["memtotal_kib_before"] = total0
    for cmd in injection_commands(start, end):
        guest.sh(cmd, step=step)
    # Plug while every page-table allocation of the hot-add path fails. The console watcher raises
    # at once if the kernel oopses instead of failing the hot-add.
    guest.qmp.execute("qom-set", {"path": VIRTIO_MEM_QOM, "property": "requested-size", "value": PLUG_MIB * MIB})
    ev["seconds_to_failed_add"] = round(guest.console.wait_until(
        f"dmesg | grep -q '{FAILED_ADD}'", timeout=60, step=step,
        what="virtio-mem to report the failed hot-add"), 2)
    guest.sh(f"echo 0 > {FAIL_DIR}/probability", step=step)
    ev["failed_add"] = guest.sh(f"dmesg | grep -m3 '{FAILED_ADD}'", step=step).strip().splitlines()
    ev["times_left"] = guest.sh(f"cat {FAIL_DIR}/times", step=step).strip()
    plugged = guest.qmp.execute("qom-get", {"path": VIRTIO_MEM_QOM, "property": "size"})
    ev["device_size_during_injection"] = plugged
    total1 = memtotal(guest, step)
    ev["memtotal_kib_during_injection"] = total1
    if total1 > total0:
        raise CheckFailed(f"MemTotal grew by {(total1 - total0) // 1024} MiB although the hot-add failed", step=step)
    # Injection off: a new request makes virtio-mem retry at once (a config change), and it must plug.
    guest.sh(f"echo 0 > {FAIL_DIR}/times", step=step)
    set_requested(guest, 0, step, ev, "reset")
    set_requested(guest, PLUG_MIB * MIB, step, ev, "replugged")
    ev["seconds_to_plug_after"] = round(wait_memtotal(guest, total0 + PLUG_MIB * 1024, step=step,
                                                       what=f"MemTotal grows by {PLUG_MIB} MiB after injection"), 2)
    set_requested(guest, 0, step, ev, "unplugged")
    wait_memtotal(guest, total0, step=step, what="MemTotal drops back")
    bad = scan_failures(guest.sh("dmesg", step=step, timeout=60))
    if bad:
        ev["dmesg_failures"] = bad[:10]
        raise CheckFailed(f"dmesg after the failed hot-add has {len(bad)} failure line(s), first: {bad[0][:160]!r}",
                          step=step)
    ev["virtio_mem_id"] = VIRTIO_MEM_ID


CHECKS = [
    Check("hotplug-faults", faults, lambda a: a.hotadd_fault_check, opt_in=True,
          doc="virtio-mem hot-add while fail_page_alloc fails its page-table allocations: a clean failure, "
              "then a successful plug"),
]
