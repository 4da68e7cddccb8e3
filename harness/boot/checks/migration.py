"""Live migration, shaped like NeonVM's: the guest keeps running in another QEMU.

NeonVM's controller starts a target runner whose QEMU has the source's very command line plus
``-incoming``, replays on it over QMP what was hot-plugged since boot (``QmpSyncCpuToTarget``),
sets the migration capabilities and bandwidth, and issues ``migrate`` on the source. Here both
QEMUs run on this host: the destination is a :class:`harness.boot.vm.Vm` with ``incoming=True`` (same
argv, same data disk and tools.img files: QEMU hands the image locks over when the migration
completes), its own console and QMP sockets and its own logs (``<tag>.dest<N>.*.log``).

* Round 1: virtio-mem grown by 256 MiB on the source; MemTotal, the device ``size`` and the guest's
  CLOCK_REALTIME minus the host's recorded; ``migrate``; completion waited for with a deadline
  (``query-migrate``, woken by MIGRATION events); the destination must be ``running``. The source
  (paused in ``postmigrate``) is torn down and the Guest switched to the destination, whose console
  must answer, with the same MemTotal and device size, a clock offset that moved by no more than the
  downtime plus a tolerance, no new failure line in dmesg, and a working shrink to 0.
* Round 2: destination 1 -> destination 2 with a resize in flight (``qom-set requested-size`` then
  ``migrate`` at once). QEMU answers the guest's plug requests BUSY while a migration runs, so the
  Linux driver retries on its own timer (``VIRTIO_MEM_RETRY_TIMER_MIN_MS``, 50 s) and the resize
  completes on destination 2 about that long after it was refused; then the same checks hold.

Every later check runs in the last destination. A migration that fails or times out is a failure
carrying QEMU's ``error-desc`` and the destination's last console and QEMU lines; a QEMU that would
not start or a QMP that died is an error (InfraError), as elsewhere.
"""
from __future__ import annotations

import collections
import logging
import re
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from harness.boot.checks import Check, Guest
from harness.boot.checks.memory_hotplug import (
    MIB,
    VIRTIO_MEM_DRIVER,
    VIRTIO_MEM_QOM,
    memtotal,
    set_requested,
    wait_memtotal,
)
from harness.boot.console import scan_failures
from harness.boot.vm import VIRTIO_MEM_ID, Vm
from harness.check import Evidence
from harness.errors import CheckFailed, InfraError
from harness.progress import Timer

if TYPE_CHECKING:
    from harness.boot.qmp import Qmp

LOG = logging.getLogger(__name__)

CHECK_NAME = "migration"
GROW_MIB = 256  # virtio-mem plugged before round 1, and the resize in flight during round 2
MIGRATE_TIMEOUT = 60.0  # seconds for one migration to complete under KVM (scaled under TCG)
SETUP_TIMEOUT = 10.0  # seconds a migration may stay in "setup" (it takes milliseconds; scaled under TCG)
CANCEL_TIMEOUT = 5.0  # seconds for migrate_cancel to take effect (scaled under TCG)
ARRIVAL_TIMEOUT = 10.0  # seconds from the source's "completed" to a running destination (scaled)
POLL_SECONDS = 0.25  # query-migrate at least this often (MIGRATION events wake the wait earlier)
# NeonVM's VirtualMachineMigration defaults: autoConverge true, allowPostCopy false, maxBandwidth 1Gi.
CAPABILITIES = {"auto-converge": True, "postcopy-ram": False,
                "events": True}  # the harness's own: MIGRATION events end its waits early
MAX_BANDWIDTH = 1 << 30  # bytes/s
# Linux drivers/virtio/virtio_mem.c: a request the device answers BUSY (QEMU does while migrating)
# is retried after VIRTIO_MEM_RETRY_TIMER_MIN_MS.
VIRTIO_MEM_RETRY_SECONDS = 50.0
RESIZE_TIMEOUT = 30.0  # on top of the retry timer, for the resize to finish (scaled under TCG)
CLOCK_TOLERANCE_SECONDS = 0.5  # allowed clock offset change on top of the downtime and the sampling windows
CLOCK_SAMPLES = 3  # the guest clock is read this many times; the narrowest host window is kept
TERMINAL = ("completed", "failed", "cancelled")
DMESG_TS = re.compile(r"^\[\s*(\d+\.\d+)\]")


class MigrationFailed(CheckFailed):
    """The migration failed, timed out, or left a destination that does not run."""

    def __init__(self, message: str, *, step: str, tail: list[str] | None = None):
        super().__init__(message, step=step)
        self.tail = tail or []


def dest_tag(base_tag: str, n: int) -> str:
    return f"{base_tag}.dest{n}"


# -- the clock ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ClockSample:
    """The guest's CLOCK_REALTIME read between two host readings of the host's."""

    guest: float
    host_before: float
    host_after: float

    @property
    def offset(self) -> float:
        """Guest minus host, against the middle of the host window."""
        return self.guest - (self.host_before + self.host_after) / 2

    @property
    def uncertainty(self) -> float:
        return (self.host_after - self.host_before) / 2


def parse_adjtimex(text: str) -> float:
    """CLOCK_REALTIME from busybox ``adjtimex`` (it prints ``time.tv_sec`` and ``time.tv_usec``;
    the latter is nanoseconds when the status has STA_NANO, 0x2000)."""
    fields = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.split():
            fields[key.split()[-1]] = value.strip()  # "-o  offset" -> offset, "time.tv_sec" -> itself
    try:
        sec = int(fields["time.tv_sec"])
        frac = int(fields["time.tv_usec"])
        status = int(fields.get("status", "0").split()[0])
    except (KeyError, ValueError, IndexError):
        raise CheckFailed(f"cannot read the guest's clock from adjtimex: {text.strip()[:200]!r}",
                          step=CHECK_NAME) from None
    return sec + frac / (1e9 if status & 0x2000 else 1e6)


def sample_clock(guest: Guest, step: str, samples: int = CLOCK_SAMPLES) -> ClockSample:
    best = None
    for _ in range(samples):
        before = time.time()
        out = guest.sh("adjtimex", step=step)
        after = time.time()
        s = ClockSample(parse_adjtimex(out), before, after)
        if best is None or s.uncertainty < best.uncertainty:
            best = s
    if best is None:
        raise ValueError(f"sample_clock needs samples >= 1, not {samples}")
    return best


def clock_problem(before: ClockSample, after: ClockSample, downtime_ms: float,
                  tolerance: float = CLOCK_TOLERANCE_SECONDS) -> tuple[float, float, str | None]:
    """(change of the guest-minus-host offset, the most it may change, what is wrong or None).

    A paused guest's clock may lag the host by the downtime; anything beyond that, the tolerance and
    the two sampling windows is a jump."""
    delta = after.offset - before.offset
    limit = downtime_ms / 1000 + tolerance + before.uncertainty + after.uncertainty
    if abs(delta) <= limit:
        return delta, limit, None
    way = "backwards" if delta < 0 else "forward"
    return delta, limit, (f"the guest's CLOCK_REALTIME jumped {way} by {abs(delta):.3f}s across the migration "
                          f"(guest minus host {before.offset:+.3f}s -> {after.offset:+.3f}s; allowed "
                          f"{limit:.3f}s = downtime {downtime_ms:.0f} ms + {tolerance}s + sampling windows)")


# -- dmesg ----------------------------------------------------------------------------------------
def _stamp(line: str) -> float | None:
    m = DMESG_TS.match(line.strip())
    return float(m.group(1)) if m else None


def new_failures(before: str, after: str) -> list[str]:
    """Failure lines (harness.boot.console.scan_failures) in ``after`` that ``before`` did not have:
    by printk timestamp when the log has them, otherwise by count."""
    stamps = [t for t in map(_stamp, before.splitlines()) if t is not None]
    if stamps:
        last = max(stamps)
        fresh = [ln for ln in after.splitlines() if (t := _stamp(ln)) is not None and t > last]
        return scan_failures("\n".join(fresh))
    extra = collections.Counter(scan_failures(after)) - collections.Counter(scan_failures(before))
    return list(extra.elements())


# awk program printing the dmesg lines stamped after ``t`` (run in the guest: only new lines cross the console)
AWK_AFTER = '{s = $0; sub(/^\\[ */, "", s); sub(/\\].*/, "", s); if (s + 0 > t) print}'


def dmesg_mark(guest: Guest, step: str) -> str:
    """Where dmesg stands now: its last line when printk stamps times, else the whole log."""
    _, last = guest.console.run("dmesg | tail -n 1", step=step, watch=False)
    if _stamp(last) is not None:
        return last.strip()
    return guest.console.run("dmesg", step=step, timeout=60, watch=False)[1]


def dmesg_since(guest: Guest, mark: str, step: str) -> str:
    """The dmesg lines after ``mark`` (filtered in the guest), or the whole log without timestamps."""
    stamp = _stamp(mark.splitlines()[-1]) if mark.strip() else None
    if stamp is None:
        return guest.console.run("dmesg", step=step, timeout=60, watch=False)[1]
    return guest.console.run(f"dmesg | awk -v t={stamp:.6f} {shlex.quote(AWK_AFTER)}", step=step, timeout=60,
                             watch=False)[1]


# -- QEMU's side ----------------------------------------------------------------------------------
def figures(info: dict[str, Any]) -> dict[str, Any]:
    """The evidence of one migration, from the source's query-migrate."""
    ram = info.get("ram") or {}
    out = {"status": info.get("status"), "total_ms": info.get("total-time"), "downtime_ms": info.get("downtime"),
           "setup_ms": info.get("setup-time"), "transferred_mib": round(ram.get("transferred", 0) / MIB, 1),
           "ram_total_mib": round(ram.get("total", 0) / MIB, 1), "duplicate_pages": ram.get("duplicate"),
           "normal_pages": ram.get("normal"), "dirty_sync_count": ram.get("dirty-sync-count"),
           "mbps": round(ram["mbps"], 1) if isinstance(ram.get("mbps"), (int, float)) else None}
    if info.get("error-desc"):
        out["error_desc"] = info["error-desc"]
    return {k: v for k, v in out.items() if v is not None}


def wait_migration(qmp: Qmp, *, timeout: float, step: str,
                   setup_timeout: float | None = None) -> dict[str, Any]:
    """Poll ``query-migrate`` (woken early by a terminal MIGRATION event) until the migration is
    completed, failed or cancelled, or the deadline passes, or it has been in ``setup`` for longer
    than ``setup_timeout``; the last answer either way."""
    start = time.monotonic()
    deadline = start + timeout
    while True:
        info: dict[str, Any] = qmp.execute("query-migrate")
        now = time.monotonic()
        left = deadline - now
        if info.get("status") in TERMINAL or left <= 0:
            return info
        if setup_timeout is not None and info.get("status") == "setup" and now - start > setup_timeout:
            return info
        qmp.wait_event("MIGRATION", timeout=min(POLL_SECONDS, left), step=step,
                       match=lambda d: d.get("status") in TERMINAL)


def wait_runstate(qmp: Qmp, want: str, *, timeout: float, step: str, wake: str = "RESUME") -> dict[str, Any]:
    """query-status until the run state is ``want`` (woken early by the event ``wake``); the last answer."""
    deadline = time.monotonic() + timeout
    while True:
        status: dict[str, Any] = qmp.execute("query-status")
        left = deadline - time.monotonic()
        if status.get("status") == want or left <= 0:
            return status
        qmp.wait_event(wake, timeout=min(POLL_SECONDS, left), step=step)


def wait_running(qmp: Qmp, *, timeout: float, step: str) -> dict[str, Any]:
    """query-status until the destination runs; the last answer."""
    return wait_runstate(qmp, "running", timeout=timeout, step=step)


def sync_hotplugged(src_qmp: Qmp, dst_qmp: Qmp, *, cpus: bool) -> list[str]:
    """Replay on the destination what was hot-plugged into the source since boot (the NeonVM
    controller's QmpSyncCpuToTarget): DIMMs with their backends, and QMP-added vCPUs."""
    done = []
    for dev in src_qmp.execute("query-memory-devices"):
        kind, data = dev.get("type"), dev.get("data", {})
        if kind == "virtio-mem":
            continue  # on the command line; its state (plugged blocks, requested size) migrates
        if kind != "dimm":
            raise InfraError(f"cannot replay a hot-plugged {kind} memory device on the destination", step=CHECK_NAME)
        memdev = data["memdev"]
        backend_id = memdev.rsplit("/", 1)[-1]
        qom_type = src_qmp.execute("qom-get", {"path": memdev, "property": "type"})
        dst_qmp.execute("object-add", {"qom-type": qom_type, "id": backend_id, "size": data["size"]})
        args = {"driver": "pc-dimm", "memdev": backend_id, "addr": data["addr"], "slot": data["slot"]}
        if data.get("id"):
            args["id"] = data["id"]
        dst_qmp.execute("device_add", args)
        done.append(f"pc-dimm {data.get('id', '?')} ({qom_type} {data['size'] // MIB} MiB)")
    if cpus:
        for cpu in src_qmp.execute("query-hotpluggable-cpus"):
            path = cpu.get("qom-path") or ""
            if path.startswith("/machine/peripheral/"):  # device_add'ed, not from -smp
                dev_id = path.rsplit("/", 1)[-1]
                dst_qmp.execute("device_add", {"driver": cpu["type"], "id": dev_id, **cpu.get("props", {})})
                done.append(f"vCPU {dev_id} ({cpu['type']} {cpu.get('props', {})})")
    return done


# QEMU < 10.0.5 / 10.1.1 leaks an unplugged vCPU's TCG memory listener (fixed by "physmem: Destroy
# all CPU AddressSpaces on unrealize"); migration's dirty-log sync then waits for that vCPU forever.
TCG_UNPLUG_BUG = ("this QEMU hot-unplugged a vCPU earlier: under TCG, QEMU before 10.0.5/10.1.1 can hang migration "
                  "setup on the dead vCPU's memory listener (fixed by 'physmem: Destroy all CPU AddressSpaces on "
                  "unrealize')")


def vcpu_unplugged(events: list[dict[str, Any]]) -> bool:
    """Whether a device_add'ed vCPU was unplugged from this QEMU (its DEVICE_DELETED events)."""
    for e in events:
        if e.get("event") == "DEVICE_DELETED":
            data = e.get("data", {})
            where = f"{data.get('device', '')} {data.get('path', '')}"
            if "/machine/peripheral/" in where and "cpu" in where:
                return True
    return False


def device_size(qmp: Qmp) -> int:
    return int(qmp.execute("qom-get", {"path": VIRTIO_MEM_QOM, "property": "size"}))


# -- one round -------------------------------------------------------------------------------------
def _start_destination(guest: Guest, n: int) -> Vm:
    base = guest.vms[0] if guest.vms else guest.vm
    dest = guest.adopt(Vm(guest.vm.spec, log_dir=guest.vm.log_dir, tag=dest_tag(base.tag, n), incoming=True))
    try:
        dest.launch()
    except BaseException:
        dest.shutdown()
        raise
    return dest


def _tail(dest: Vm) -> list[str]:
    console = dest.console_tail()
    return console + [f"[{dest.tag} QEMU] {line}" for line in dest.qemu_tail(5)]


def _migrate(guest: Guest, dest: Vm, rec: Evidence, step: str, *,
             before_migrate: Callable[[], None] | None = None) -> None:
    """Migrate the guest from its VM into ``dest`` and switch the Guest to it; the source is torn down."""
    src = guest.vm
    scale = guest.console.scale
    src.qmp.execute("migrate-set-capabilities", {"capabilities": [{"capability": c, "state": s}
                                                                  for c, s in CAPABILITIES.items()]})
    src.qmp.execute("migrate-set-parameters", {"max-bandwidth": MAX_BANDWIDTH})
    src.qmp.forget_pending()  # only this migration's events count
    if before_migrate:
        before_migrate()
    with Timer() as migrating:
        src.qmp.execute("migrate", {"uri": dest.migration_uri})
        if before_migrate:  # what the in-flight resize had reached when the migration began
            rec["device_size_mib_when_migration_began"] = device_size(src.qmp) // MIB
        info = wait_migration(src.qmp, timeout=MIGRATE_TIMEOUT * scale, step=step,
                              setup_timeout=SETUP_TIMEOUT * scale)
    rec["host_seconds"] = round(migrating.duration, 2)
    rec.update(figures(info))
    status = info.get("status")
    if status != "completed":
        if status not in TERMINAL:  # still running at the deadline
            src.qmp.execute("migrate_cancel")
            after = wait_migration(src.qmp, timeout=CANCEL_TIMEOUT * scale, step=step)
            rec["after_cancel"] = after.get("status")
            what = (f"did not complete within {rec['host_seconds']:.0f}s (status {status}, "
                    f"{rec.get('transferred_mib', 0)} MiB transferred); cancelled")
            if status == "setup" and guest.accel_name == "tcg" and vcpu_unplugged(src.qmp.events):
                what += f" ({TCG_UNPLUG_BUG})"
        else:
            what = f"{status}: {info.get('error-desc') or 'QEMU gave no error-desc'}"
        tail = _tail(dest)
        rec["dest_qemu_tail"] = dest.qemu_tail(5)
        dest.shutdown()  # the guest stays in the source, which resumes after a failed migration
        rec["source_status_after"] = src.qmp.execute("query-status").get("status")
        if rec["source_status_after"] != "running":
            guest.lost = (f"the guest was lost in a failed migration: {src.tag} is {rec['source_status_after']} "
                          f"(see check {CHECK_NAME})")
        qemu_said = f"; destination QEMU: {' / '.join(rec['dest_qemu_tail'][-3:])}" if rec["dest_qemu_tail"] else ""
        raise MigrationFailed(f"migration to {dest.tag} {what}{qemu_said}", step=step, tail=tail)
    # The guest now lives in the destination, whatever follows: the source (paused in postmigrate)
    # must never run again, and it goes whether or not the destination answers.
    try:
        # "completed" comes a moment before the source's run state leaves finish-migrate
        rec["source_status"] = wait_runstate(src.qmp, "postmigrate", timeout=ARRIVAL_TIMEOUT * scale, step=step,
                                             wake="MIGRATION").get("status")
        state = wait_running(dest.qmp, timeout=ARRIVAL_TIMEOUT * scale, step=step)
        rec["dest_status"] = state.get("status")
        rec["dest_incoming_status"] = dest.qmp.execute("query-migrate").get("status")
    except Exception as exc:
        guest.lost = f"the guest was lost in migration to {dest.tag}: {exc} (see check {CHECK_NAME})"
        raise
    finally:
        src.shutdown()
        guest.switch_to(dest)
    if state.get("status") != "running":
        guest.lost = f"the guest was lost in migration: {dest.tag} is {state.get('status')} (see check {CHECK_NAME})"
        raise MigrationFailed(f"the source completed the migration but {dest.tag} is {state.get('status')}, not "
                              f"running, {ARRIVAL_TIMEOUT * scale:.0f}s later", step=step, tail=_tail(dest))
    if rec["source_status"] != "postmigrate":
        raise MigrationFailed(f"the source is {rec['source_status']} after the migration, not postmigrate", step=step,
                              tail=_tail(dest))


def _arrived(guest: Guest, rec: Evidence, step: str, clock0: ClockSample, dmesg0: str) -> None:
    """What must hold as soon as the guest runs in the destination: a console, its clock, its dmesg."""
    with Timer() as to_console:
        guest.sh(f"echo arrived in {guest.vm.tag}", step=step, timeout=30)
    rec["seconds_to_console"] = round(to_console.duration, 2)
    clock1 = sample_clock(guest, step)
    delta, limit, problem = clock_problem(clock0, clock1, rec.get("downtime_ms", 0))
    rec["clock_offset_before_s"] = round(clock0.offset, 3)
    rec["clock_offset_after_s"] = round(clock1.offset, 3)
    rec["clock_offset_change_s"] = round(delta, 3)
    rec["clock_allowed_s"] = round(limit, 3)
    rec["clock_sampling_windows_s"] = [round(2 * clock0.uncertainty, 3), round(2 * clock1.uncertainty, 3)]
    if problem:
        raise CheckFailed(problem, step=step)
    _dmesg_clean(guest, rec, step, dmesg0)


def _dmesg_clean(guest: Guest, rec: Evidence, step: str, mark: str) -> None:
    bad = new_failures(mark, dmesg_since(guest, mark, step))
    rec["new_dmesg_failures"] = bad
    if bad:
        raise CheckFailed(f"dmesg after the migration to {guest.vm.tag}: {bad[0]!r}"
                          + (f" (+{len(bad) - 1} more)" if len(bad) > 1 else ""), step=step)


def _shrink(guest: Guest, rec: Evidence, step: str, base_kib: int) -> None:
    set_requested(guest, 0, step, rec, "shrunk")
    rec["shrink_seconds"] = round(wait_memtotal(guest, base_kib, step=step,
                                                what=f"MemTotal drops back in {guest.vm.tag}"), 2)


def migration(guest: Guest, ev: Evidence) -> None:
    step = CHECK_NAME
    rc, _ = guest.console.run(f"[ -d {VIRTIO_MEM_DRIVER} ]", step=step, check=False)
    if rc != 0:
        raise CheckFailed(f"the kernel has no virtio-mem driver ({VIRTIO_MEM_DRIVER} missing): nothing plugged "
                          "to carry across a migration", step=step)
    grow = GROW_MIB * MIB
    cpus = guest.arch.cpu_hotplug_qmp

    # Round 1: source -> destination 1, with 256 MiB plugged.
    r1 = ev["round1"] = {"from": guest.vm.tag}
    size0, total0 = device_size(guest.qmp), memtotal(guest, step)
    base_kib = total0 - size0 // 1024  # MemTotal with nothing plugged into virtio-mem
    set_requested(guest, grow, step, r1, "grown")
    wait_memtotal(guest, base_kib + grow // 1024, step=step, what=f"MemTotal grows by {GROW_MIB} MiB")
    r1["memtotal_kib_before"] = memtotal(guest, step)
    r1["device_size_mib_before"] = device_size(guest.qmp) // MIB
    dest = _start_destination(guest, 1)
    r1["to"] = dest.tag
    r1["replayed_on_destination"] = sync_hotplugged(guest.qmp, dest.qmp, cpus=cpus)
    dmesg0 = dmesg_mark(guest, step)
    clock0 = sample_clock(guest, step)
    _migrate(guest, dest, r1, step)
    _arrived(guest, r1, step, clock0, dmesg0)
    r1["memtotal_kib_after"] = memtotal(guest, step)
    r1["device_size_mib_after"] = device_size(guest.qmp) // MIB
    if r1["device_size_mib_after"] != r1["device_size_mib_before"]:
        raise CheckFailed(f"virtio-mem size {r1['device_size_mib_before']} MiB before the migration, "
                          f"{r1['device_size_mib_after']} MiB in {guest.vm.tag}", step=step)
    if r1["memtotal_kib_after"] != r1["memtotal_kib_before"]:
        raise CheckFailed(f"MemTotal {r1['memtotal_kib_before']} kB before the migration, "
                          f"{r1['memtotal_kib_after']} kB in {guest.vm.tag}", step=step)
    _shrink(guest, r1, step, base_kib)

    # Round 2: destination 1 -> destination 2 while a resize is in flight.
    r2 = ev["round2"] = {"from": guest.vm.tag}
    r2["memtotal_kib_before"] = memtotal(guest, step)
    r2["device_size_mib_before"] = device_size(guest.qmp) // MIB
    dest = _start_destination(guest, 2)
    r2["to"] = dest.tag
    r2["replayed_on_destination"] = sync_hotplugged(guest.qmp, dest.qmp, cpus=cpus)
    dmesg0 = dmesg_mark(guest, step)
    clock0 = sample_clock(guest, step)
    r2["requested_mib_in_flight"] = GROW_MIB

    def resize() -> None:
        guest.qmp.execute("qom-set", {"path": VIRTIO_MEM_QOM, "property": "requested-size", "value": grow})

    _migrate(guest, dest, r2, step, before_migrate=resize)
    arrived = Timer.begin()
    _arrived(guest, r2, step, clock0, dmesg0)
    r2["device_size_mib_on_arrival"] = device_size(guest.qmp) // MIB
    timeout = VIRTIO_MEM_RETRY_SECONDS + RESIZE_TIMEOUT * guest.console.scale
    if device_size(guest.qmp) != grow:
        left = max(1.0, timeout - arrived.elapsed)
        event = guest.qmp.wait_event("MEMORY_DEVICE_SIZE_CHANGE", timeout=left, step=step,
                                     match=lambda d: d.get("id") == VIRTIO_MEM_ID and d.get("size") == grow)
        r2["size_change_event"] = event is not None
    r2["device_size_mib_after"] = device_size(guest.qmp) // MIB
    r2["resize_seconds_after_arrival"] = round(arrived.elapsed, 2)
    if r2["device_size_mib_after"] != GROW_MIB:
        raise CheckFailed(f"the resize to {GROW_MIB} MiB in flight during the migration did not complete in "
                          f"{guest.vm.tag}: the device is at {r2['device_size_mib_after']} MiB {timeout:.0f}s after "
                          f"arrival (the driver retries a refused request after {VIRTIO_MEM_RETRY_SECONDS:.0f}s)",
                          step=step)
    wait_memtotal(guest, base_kib + grow // 1024, step=step, what=f"MemTotal follows the resize in {guest.vm.tag}")
    r2["memtotal_kib_after"] = memtotal(guest, step)
    r2["resize_and_memtotal_seconds_after_arrival"] = round(arrived.elapsed, 2)
    _dmesg_clean(guest, r2, step, dmesg0)
    _shrink(guest, r2, step, base_kib)
    ev["final_vm"] = guest.vm.tag
    ev["summary"] = {f"round{n}": {k: r.get(k) for k in ("total_ms", "downtime_ms", "setup_ms", "transferred_mib")}
                     for n, r in ((1, r1), (2, r2))}


CHECKS = [
    Check(CHECK_NAME, migration,
          doc="live migration to a second QEMU started with -incoming (twice, the second with a virtio-mem resize "
              "in flight): the guest keeps running with its memory, devices, clock and a clean dmesg"),
]
