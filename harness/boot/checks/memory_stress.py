"""Memory scaling under load: what NeonVM does to a busy compute all day.

While the guest keeps most of its memory in use (``memhog``: anonymous memory rewritten in a loop,
plus a block device read in a loop for page cache), writes ``/proc/sys/vm/compact_memory`` in a
loop (the kcompactd / offlining interaction) and takes a vCPU offline and online again and again
(sysfs), the harness grows and shrinks virtio-mem in rounds of different sizes. Pass: every grow
reaches its target, every shrink reaches it or is refused cleanly (the device keeps more than asked
and the guest is fine), MemTotal follows the device, the workload is never killed, and dmesg stays
free of BUG/WARNING/Oops/Call Trace, page allocation failures and OOM kills. Per round: target,
reached size, seconds, memory blocks removed.
"""
from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, field

from harness.boot.checks import Check, Guest, cpu_list
from harness.boot.checks.memory_hotplug import MIB, VIRTIO_MEM_QOM, memory_blocks, memtotal, wait_memtotal
from harness.boot.console import GuestTimeout, scan_failures
from harness.boot.vm import VIRTIO_MEM_ID
from harness.check import Evidence
from harness.errors import CheckFailed, InvalidArgument
from harness.progress import Timer

LOG = logging.getLogger(__name__)

# virtio-mem sizes (MiB) the default run visits, in order; --soak N repeats the cycle N times.
DEFAULT_ROUNDS = (384, 128, 512, 0)
HOG_FRACTION = 0.4  # of the boot MemTotal kept in anonymous use by memhog
ROUND_TIMEOUT = 60.0  # seconds per resize under KVM (scaled under TCG)
STALL_SECONDS = 10.0  # a resize that makes no progress this long has stopped (scaled under TCG)
DMESG_BAD = re.compile(r"page allocation failure|Out of memory|oom-kill|Killed process|BUG: |WARNING: |Oops|"
                       r"Call Trace:")
SYS_CPU = "/sys/devices/system/cpu"


def guest_pattern(regex: re.Pattern[str]) -> str:
    """``regex`` for grep -E in the guest, written so that the echoed command line cannot itself
    match the console's failure watcher: each alternative's first letter goes in brackets."""
    return "|".join(f"[{alt[0]}]{alt[1:]}" if alt[:1].isalpha() else alt for alt in regex.pattern.split("|"))


def rounds(soak: int = 1) -> list[int]:
    if soak < 1:
        raise InvalidArgument(f"--soak must be >= 1, not {soak}", step="memory-stress")
    return list(DEFAULT_ROUNDS) * soak


def _device_size(guest: Guest) -> int:
    return int(guest.qmp.execute("qom-get", {"path": VIRTIO_MEM_QOM, "property": "size"}))


def resize(guest: Guest, target_mib: int, step: str) -> Evidence:
    """Ask for ``target_mib`` and follow the device until it reaches it, or stops moving for
    STALL_SECONDS (a shrink the guest refuses: it keeps memory it cannot offline). One round's record."""
    before_blocks = memory_blocks(guest, step)
    target = target_mib * MIB
    guest.qmp.forget_pending()
    with Timer() as clock:
        guest.qmp.execute("qom-set", {"path": VIRTIO_MEM_QOM, "property": "requested-size", "value": target})
        deadline = clock.start + ROUND_TIMEOUT * guest.console.scale
        stall = STALL_SECONDS * guest.console.scale
        size, reached = _device_size(guest), False
        while not (reached := size == target) and (left := deadline - time.monotonic()) > 0:
            ev = guest.qmp.wait_event("MEMORY_DEVICE_SIZE_CHANGE", timeout=min(stall, left), step=step,
                                      match=lambda d: d.get("id") == VIRTIO_MEM_ID)
            now = _device_size(guest)
            if ev is None and now == size:
                break  # no progress for a whole stall period
            size = now
    seconds = round(clock.duration, 2)
    after_blocks = memory_blocks(guest, step)
    return {"target_mib": target_mib, "reached_mib": size // MIB, "seconds": seconds, "reached": reached,
            "blocks_added": len(after_blocks - before_blocks), "blocks_removed": len(before_blocks - after_blocks)}


def _start(guest: Guest, command: str, step: str) -> str:
    """Start a background job in the guest; return its pid."""
    return guest.sh(f"{command} >/dev/null 2>&1 & echo $!", step=step).strip().splitlines()[-1]


@dataclass
class Load:
    """The background load of the stress rounds, running in the guest."""

    pids: dict[str, str] = field(default_factory=dict)
    cpu: int | None = None  # the vCPU taken offline and online in a loop
    hog_mib: int = 0


def start_load(guest: Guest, step: str, *, hog_mib: int) -> Load:
    """memhog (anonymous memory rewritten in a loop), a block device read in a loop (page cache),
    compaction requests, and a spare vCPU going offline and online."""
    load = Load(hog_mib=hog_mib)
    present = cpu_list(guest.console.read(f"{SYS_CPU}/present", step=step))
    online = cpu_list(guest.console.read(f"{SYS_CPU}/online", step=step))
    spare = sorted(present - online)
    out = guest.sh(f"memhog {hog_mib} > /tmp/memhog.out 2>&1 & echo $!", step=step).strip()
    load.pids["memhog"] = out.splitlines()[-1]
    guest.console.wait_until("grep -q 'memhog ready' /tmp/memhog.out", timeout=60, step=step,
                             what=f"memhog to touch its {hog_mib} MiB")
    dev = guest.sh("findfs LABEL=pgdata", step=step).strip()
    load.pids["pagecache"] = _start(guest, f"sh -c 'while :; do dd if={dev} of=/dev/null bs=1M; done'", step)
    load.pids["compact"] = _start(guest, "sh -c 'while :; do echo 1 > /proc/sys/vm/compact_memory; "
                                         "usleep 200000; done'", step)
    if spare:
        load.cpu = spare[0]
        load.pids["cpu"] = _start(guest, f"sh -c 'while :; do echo 1 > {SYS_CPU}/cpu{load.cpu}/online; "
                                         f"usleep 100000; echo 0 > {SYS_CPU}/cpu{load.cpu}/online; usleep 100000; "
                                         "done'", step)
    return load


def workload_alive(guest: Guest, load: Load, step: str) -> bool:
    return guest.console.run(f"kill -0 {load.pids['memhog']}", step=step, check=False)[0] == 0


def stop_load(guest: Guest, load: Load, step: str) -> None:
    if load.pids:
        guest.console.run(f"kill -9 {' '.join(load.pids.values())} 2>/dev/null; true", step=step,
                          check=False, timeout=30)
    if load.cpu is not None:
        guest.console.run(f"echo 0 > {SYS_CPU}/cpu{load.cpu}/online", step=step, check=False, timeout=30)


def stress(guest: Guest, ev: Evidence) -> None:
    step = "memory-stress"
    plan = rounds(int(guest.options.get("soak", 1)))
    total0 = memtotal(guest, step)
    hog_mib = int(total0 / 1024 * HOG_FRACTION)
    ev.update(memtotal_kib_boot=total0, hog_mib=hog_mib, plan_mib=plan)
    guest.sh("dmesg -c > /dev/null", step=step)  # from here on, dmesg is this check's
    load = Load()
    records: list[Evidence] = []
    try:
        load = start_load(guest, step, hog_mib=hog_mib)
        ev["pids"], ev["cpu_toggled"] = dict(load.pids), load.cpu
        previous = 0
        for target in plan:
            rec = resize(guest, target, step)
            records.append(rec)
            ev["rounds"] = records
            LOG.info("[%s] round %s", step, rec)
            grew = target >= previous
            if grew and rec["reached_mib"] != target:
                raise CheckFailed(f"grow to {target} MiB under load reached only {rec['reached_mib']} MiB in "
                                  f"{rec['seconds']}s", step=step)
            if not grew and rec["reached_mib"] < target:
                raise CheckFailed(f"shrink to {target} MiB left {rec['reached_mib']} MiB: below the request",
                                  step=step)
            rec["refused"] = rec["reached_mib"] != target
            previous = rec["reached_mib"]
            expected = total0 + rec["reached_mib"] * 1024
            try:
                rec["memtotal_seconds"] = round(wait_memtotal(guest, expected, step=step,
                                                              what="MemTotal follows the device"), 2)
            except GuestTimeout:
                raise CheckFailed(f"after the round to {target} MiB MemTotal is {memtotal(guest, step)} kB, "
                                  f"not {expected} kB (boot {total0} + device {rec['reached_mib']} MiB)",
                                  step=step) from None
            if not workload_alive(guest, load, step):
                raise CheckFailed(f"the workload (memhog, pid {load.pids['memhog']}) was killed during the round "
                                  f"to {target} MiB", step=step)
        ev["seconds_per_round"] = [r["seconds"] for r in records]
        ev["blocks_removed"] = sum(r["blocks_removed"] for r in records)
        ev["refused"] = sum(1 for r in records if r["refused"])
    finally:
        stop_load(guest, load, step)
    # Only the matching lines cross the console: the CPU loop alone logs thousands of lines.
    dmesg = guest.sh(f"dmesg | grep -E '{guest_pattern(DMESG_BAD)}'; true", step=step, timeout=60)
    bad = [ln for ln in dmesg.splitlines() if DMESG_BAD.search(ln)] or scan_failures(dmesg)
    if bad:
        ev["dmesg_failures"] = bad[:10]
        raise CheckFailed(f"dmesg during the stress rounds: {bad[0][:160]!r} (+{len(bad) - 1} more)", step=step)
    if _device_size(guest) != 0:
        resize(guest, 0, step)


CHECKS = [
    Check("memory-stress", stress,
          doc="virtio-mem grow/shrink rounds while memhog, page cache, compaction and CPU offline/online run"),
]
