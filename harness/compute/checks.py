"""The compute checks: functions ``(ctx, evidence)`` run through :func:`harness.check.run_check`.

Each raises Skip, a KernelError (CheckFailed, GuestTimeout) or an InfraError. ``ctx`` is the
running compute VM plus what the harness knows about it (:class:`Compute`).
"""
from __future__ import annotations

import os
import re
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness import proc
from harness.arch import Arch
from harness.boot.checks import Guest, cpu_list
from harness.boot.checks.memory_hotplug import memtotal, wait_memtotal
from harness.boot.checks.memory_stress import DMESG_BAD, SYS_CPU, guest_pattern
from harness.boot.checks.memory_stress import resize as resize_virtio_mem
from harness.boot.console import GuestTimeout, scan_failures
from harness.boot.vm import Vm
from harness.check import Evidence, Skip
from harness.compute import image
from harness.errors import CheckFailed, CommandFailed, CommandTimeout, HarnessError, InfraError
from harness.progress import Timer
from harness.tools import spec

READY_RE = re.compile(f"({re.escape(image.READY_MARKER)}|{re.escape(image.FAILED_MARKER)}[^\r\n]*)")
PG_READY_TIMEOUT = 300.0  # seconds from QEMU start to the init's "postgres ready" (unscaled; TCG)
PSQL_TIMEOUT = 30.0  # seconds of host-side retries once the guest says Postgres is up
POWEROFF_TIMEOUT = 30.0  # the runner's expectation: powered off within 30 s of system_powerdown
CLEAN_SHUTDOWN = "database system is shut down"
QUOTA_WRITE_MIB = 320  # more than the project quota (runner.QUOTA_MIB), less than the data disk
PGBENCH_SCALE = 4  # pgbench -i -s: 400k accounts, about 60 MiB
PGBENCH_CLIENTS = 4
PGBENCH_RUN_SECONDS = 10  # the load is back-to-back runs of this length, each one's summary checked
SWAP_PUSH_MIB = 64  # the memory hog asks for MemAvailable plus this much: at least that goes to swap
PERF_SECONDS = 4
CHRONY_SYNC_TIMEOUT = 120.0


@dataclass
class Compute:
    """One running compute VM and what the checks share."""

    vm: Vm
    host_port: int
    log: Path  # host-side commands (psql, pgbench)
    arch: Arch | None = None
    accel: str = "tcg"
    cpu_mode: str = "sysfs"
    virtio_mem_mib: int = 0  # the device's maximum (the runner's SLOT * (MAX - MIN))
    tools_attached: bool = False  # tools.img is one of the VM's disks (mounted by label at /neonvm/tools)
    token: str = field(default_factory=lambda: secrets.token_hex(8))
    powered_off: bool = False

    @property
    def guest(self) -> Guest:
        """The boot checks' view of this VM, to share their virtio-mem and meminfo helpers."""
        assert self.arch is not None
        return Guest(vm=self.vm, arch=self.arch, accel_name=self.accel, release="")

    def pg_env(self) -> dict[str, str]:
        return {"PGCONNECT_TIMEOUT": "10", "PGHOST": "127.0.0.1", "PGPORT": str(self.host_port),
                "PGUSER": "postgres", "PGDATABASE": "postgres"}

    def pgbench(self, args: list[str], *, step: str, timeout: float) -> str:
        return proc.capture(["pgbench", *args], step=step, env=self.pg_env(), timeout=timeout, log=self.log)

    def psql(self, sql: str, *, step: str, timeout: float = 60) -> str:
        argv = ["psql", "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql]
        return proc.capture(argv, step=step, env=self.pg_env(), timeout=timeout, log=self.log).strip()


def wait_ready(c: Compute, ev: Evidence, *, step: str) -> None:
    """The guest init says Postgres started; then ``psql`` from the host over the forwarded port."""
    proc.require_tool("psql", step=step, hint="apt-get install -y postgresql-client")
    vm = c.vm
    m = vm.console.wait(READY_RE, timeout=PG_READY_TIMEOUT, scaled=False, step=step,
                        what="the guest init's 'postgres ready'")
    ev["guest_ready_seconds"] = round(vm.clock.elapsed, 2)
    if m.group(1).startswith(image.FAILED_MARKER):
        raise CheckFailed(f"the guest could not start Postgres: {m.group(1).strip()}", step=step,
                          log=vm.console_log)
    deadline = time.monotonic() + PSQL_TIMEOUT
    last = ""
    while True:
        try:
            version = c.psql("select version()", step=step, timeout=20)
            break
        except (CommandFailed, CommandTimeout) as exc:
            last = str(exc)
            if time.monotonic() > deadline:
                raise CheckFailed(f"psql over 127.0.0.1:{c.host_port} failed for {PSQL_TIMEOUT:.0f}s after the "
                                  f"guest said Postgres was ready: {last[-200:]}", step=step, log=c.log) from None
            time.sleep(0.5)
    ev["seconds_to_ready"] = round(vm.clock.elapsed, 2)
    ev["server"] = version


def postgres_ready(c: Compute) -> Callable[[Evidence], None]:
    def check(ev: Evidence) -> None:
        wait_ready(c, ev, step="postgres-ready")
    return check


def swap_active(c: Compute) -> Callable[[Evidence], None]:
    def check(ev: Evidence) -> None:
        step = "swap-active"
        swaps = c.vm.console.run("cat /proc/swaps", step=step)[1]
        ev["proc_swaps"] = swaps
        label_dev = c.vm.console.run(f"blkid -L {image.SWAP_LABEL}", step=step, check=False)[1].strip()
        ev["swapdisk"] = label_dev
        if not label_dev or label_dev not in swaps:
            raise CheckFailed(f"the disk labelled {image.SWAP_LABEL} ({label_dev or 'not found'}) is not in "
                              "/proc/swaps", step=step, log=c.vm.console_log)
    return check


def quota_holds(c: Compute) -> Callable[[Evidence], None]:
    def check(ev: Evidence) -> None:
        step = "quota-edquot"
        con = c.vm.console
        ev["project"] = con.run(f"lsattr -p -d {image.PGDATA}", step=step, check=False)[1].strip()
        ev["report"] = con.run(f"repquota -P {image.PG_MOUNT} 2>&1 | tail -n 4", step=step, check=False)[1]
        fill = f"{image.PGDATA}/quota-fill"
        rc, out = con.run(f"runuser -u postgres -- dd if=/dev/zero of={fill} bs=1M count={QUOTA_WRITE_MIB} "
                          "conv=fsync 2>&1 | tail -n 5", step=step, timeout=300, check=False)
        ev["writer"] = out.strip()
        con.run(f"rm -f {fill}", step=step)
        if "quota exceeded" not in out.lower():
            raise CheckFailed(f"writing {QUOTA_WRITE_MIB} MiB into the data directory did not fail with EDQUOT: "
                              f"{out.strip().splitlines()[-1:]}", step=step, log=con.log)
        ev["server_after"] = c.psql("select 1", step=step)
    return check


def powerdown(c: Compute) -> Callable[[Evidence], None]:
    def check(ev: Evidence) -> None:
        step = "powerdown"
        vm = c.vm
        c.psql("create table if not exists durable(token text primary key, at timestamptz default now())",
               step=step)
        c.psql(f"insert into durable(token) values ('{c.token}')", step=step)
        ev["token"] = c.token
        vm.qmp.forget_pending()
        with Timer() as since_button:
            vm.qmp.execute("system_powerdown")
            try:
                got = vm.qmp.wait_event("SHUTDOWN", timeout=POWEROFF_TIMEOUT, step=step)
            except HarnessError:
                got = None  # the connection went with QEMU; the exit below decides
            assert vm.proc is not None
            try:
                vm.proc.wait(timeout=max(1.0, POWEROFF_TIMEOUT - since_button.elapsed))
            except Exception:
                pass
        seconds = round(since_button.duration, 2)
        ev["seconds_to_poweroff"] = seconds
        ev["shutdown_event"] = got.get("data") if got else None
        c.powered_off = vm.proc.poll() is not None
        log = vm.log_port_log.read_text(errors="replace") if vm.log_port_log.is_file() else ""
        ev["postgres_log_tail"] = log.strip().splitlines()[-4:]
        if not c.powered_off:
            raise CheckFailed(f"the guest did not power off within {POWEROFF_TIMEOUT:.0f}s of system_powerdown",
                              step=step, log=vm.console_log)
        if got is not None and got.get("data", {}).get("reason") not in ("guest-shutdown", None):
            raise CheckFailed(f"QEMU stopped for {got['data'].get('reason')}, not a guest power-off", step=step,
                              log=vm.qemu_log)
        if CLEAN_SHUTDOWN not in log:
            raise CheckFailed(f"Postgres did not log {CLEAN_SHUTDOWN!r} before the power-off", step=step,
                              log=vm.log_port_log)
    return check


def durable(c: Compute, token: str) -> Callable[[Evidence], None]:
    def check(ev: Evidence) -> None:
        step = "durable-after-powerdown"
        wait_ready(c, ev, step=step)
        got = c.psql(f"select count(*) from durable where token = '{token}'", step=step)
        ev["rows"] = got
        if got != "1":
            raise CheckFailed(f"the row committed before the power-down is gone (count {got})", step=step,
                              log=c.log)
    return check


def require_host(step: str) -> None:
    if os.geteuid() != 0:
        raise Skip("building the image needs root (mmdebstrap --mode=root, mkfs.ext4 -d)")
    for tool in ("mmdebstrap", "genisoimage", "qemu-img", "psql", "pgbench"):
        try:
            proc.require_tool(tool, step=step)
        except HarnessError as exc:
            raise InfraError(str(exc), step=step) from None
    try:  # Debian's /usr/bin/pgbench is a wrapper; the program itself comes with the server package
        proc.capture(["pgbench", "--version"], step=step, timeout=30)
    except HarnessError as exc:
        raise InfraError(f"pgbench does not run ({exc}): apt-get install -y postgresql-15", step=step) from None


# --- pgbench from the host --------------------------------------------------------------------------

PGBENCH_PROCESSED = re.compile(r"number of transactions actually processed: (\d+)")
PGBENCH_FAILED = re.compile(r"number of failed transactions: (\d+)")
PGBENCH_TPS = re.compile(r"^tps = ([0-9.]+)", re.M)


def parse_pgbench(out: str) -> dict[str, Any]:
    """The summary of one pgbench run: transactions processed, failed, tps."""
    processed = PGBENCH_PROCESSED.search(out)
    failed = PGBENCH_FAILED.search(out)
    tps = PGBENCH_TPS.search(out)
    if not processed or not tps:
        raise ValueError(f"no pgbench summary in: {out.strip()[-200:]!r}")
    return {"processed": int(processed.group(1)), "failed": int(failed.group(1)) if failed else 0,
            "tps": float(tps.group(1))}


class PgbenchLoad:
    """pgbench from the host over the forwarded port, in back-to-back runs until stopped, so that
    every run's own summary (transactions, failures, tps) says whether the load kept going."""

    def __init__(self, c: Compute, *, step: str, seconds: int = PGBENCH_RUN_SECONDS):
        self.c, self.step, self.seconds = c, step, seconds
        self.runs: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="pgbench", daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            args = ["-n", "-c", str(PGBENCH_CLIENTS), "-j", "2", "-T", str(self.seconds)]
            with Timer() as run:
                try:
                    rec = parse_pgbench(self.c.pgbench(args, step=self.step, timeout=self.seconds + 120))
                except (CommandFailed, CommandTimeout, ValueError) as exc:
                    rec = {"error": str(exc)[:300]}
            rec["seconds"] = round(run.duration, 2)
            self.runs.append(rec)

    def __enter__(self) -> PgbenchLoad:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=self.seconds + 180)

    def wait_backends(self, *, timeout: float = 60.0) -> str:
        """Wait (deadline ``timeout`` s) until every pgbench client has a backend; their pids, comma-separated."""
        deadline = time.monotonic() + timeout
        while True:
            pids = self.c.psql("select string_agg(pid::text, ',') from pg_stat_activity "
                               "where application_name = 'pgbench'", step=self.step)
            if len(pids.split(",")) >= PGBENCH_CLIENTS and pids:
                return pids
            if time.monotonic() > deadline or (self.runs and not self._thread.is_alive()):
                raise CheckFailed(f"pgbench's {PGBENCH_CLIENTS} clients were not all connected within "
                                  f"{timeout:.0f}s (backends: {pids or 'none'}; runs: {self.runs[-1:]})",
                                  step=self.step, log=self.c.log)
            time.sleep(0.2)

    def problems(self) -> list[str]:
        if not self.runs:
            return ["no pgbench run finished"]
        bad = []
        for i, r in enumerate(self.runs, 1):
            if "error" in r:
                bad.append(f"run {i}: {r['error']}")
            elif r["failed"] or not r["processed"]:
                bad.append(f"run {i}: {r['processed']} transactions, {r['failed']} failed")
        return bad

    def summary(self) -> dict[str, Any]:
        ok = [r for r in self.runs if "error" not in r]
        return {"runs": len(self.runs), "transactions": sum(r["processed"] for r in ok),
                "failed": sum(r["failed"] for r in ok),
                "tps_min": min((r["tps"] for r in ok), default=0.0),
                "tps_mean": round(sum(r["tps"] for r in ok) / len(ok), 1) if ok else 0.0}


def _dmesg_failures(g: Guest, step: str) -> list[str]:
    # only the matching lines cross the console (CPU onlining alone logs many lines)
    text = g.sh(f"dmesg | grep -E '{guest_pattern(DMESG_BAD)}'; true", step=step, timeout=60)
    return [ln for ln in text.splitlines() if DMESG_BAD.search(ln)] or scan_failures(text)


def scale_plan(max_mib: int) -> list[int]:
    """virtio-mem sizes (MiB) the scaling check visits: grow, shrink to nothing, grow to the maximum,
    shrink part of the way, shrink to nothing (each a multiple of the 8 MiB block)."""
    if max_mib <= 0:
        return []
    half = max(8, max_mib // 2 // 8 * 8)
    quarter = max(8, max_mib // 4 // 8 * 8)
    return [half, 0, max_mib, quarter, 0]


def _set_cpu(g: Guest, cpu: int, online: bool, step: str) -> set[int]:
    g.sh(f"echo {int(online)} > {SYS_CPU}/cpu{cpu}/online", step=step, timeout=30)
    now = cpu_list(g.console.read(f"{SYS_CPU}/online", step=step))
    if (cpu in now) != online:
        raise CheckFailed(f"cpu{cpu} did not go {'online' if online else 'offline'} (online: {sorted(now)})",
                          step=step)
    return now


def scale_under_load(c: Compute) -> Callable[[Evidence], None]:
    """pgbench from the host keeps going while virtio-mem grows and shrinks and a vCPU goes online and
    offline through sysfs (the runner's sysfs CPU mode); MemTotal follows every resize, every shrink
    reaches its target under load, and dmesg stays clean."""
    def check(ev: Evidence) -> None:
        step = "scale-under-load"
        g = c.guest
        plan = scale_plan(c.virtio_mem_mib)
        if not plan:
            raise Skip("the VM shape has no virtio-mem device (min slots == max slots)")
        c.pgbench(["-i", "-s", str(PGBENCH_SCALE), "-q"], step=step, timeout=600)
        total0 = memtotal(g, step)
        present = cpu_list(g.console.read(f"{SYS_CPU}/present", step=step))
        online0 = cpu_list(g.console.read(f"{SYS_CPU}/online", step=step))
        spare = sorted(present - online0)
        ev.update(memtotal_kib_boot=total0, plan_mib=plan, cpus_present=sorted(present),
                  cpus_online_boot=sorted(online0))
        if c.cpu_mode == "sysfs" and not spare:
            raise CheckFailed(f"sysfs CPU mode but every present CPU is online at boot ({sorted(present)}): "
                              "maxcpus= was not honoured", step=step)
        g.sh("dmesg -c > /dev/null", step=step)  # from here on, dmesg is this check's
        rounds: list[dict[str, Any]] = []
        with PgbenchLoad(c, step=step) as load:
            ev["backends"] = load.wait_backends()  # the load is on before the first resize
            for i, target in enumerate(plan):
                rec = resize_virtio_mem(g, target, step)
                rounds.append(rec)
                ev["rounds"] = rounds
                if not rec["reached"]:
                    raise CheckFailed(f"virtio-mem {'grow' if target else 'shrink'} to {target} MiB under pgbench "
                                      f"stopped at {rec['reached_mib']} MiB after {rec['seconds']}s", step=step)
                expected = total0 + target * 1024
                try:
                    rec["memtotal_seconds"] = round(wait_memtotal(g, expected, step=step,
                                                                  what="MemTotal follows the device"), 2)
                except GuestTimeout:
                    raise CheckFailed(f"after the resize to {target} MiB MemTotal is {memtotal(g, step)} kB, not "
                                      f"{expected} kB (boot {total0} + {target} MiB)", step=step) from None
                rec["memtotal_kib"] = expected
                if spare:  # alternate: online after a grow, offline after the next
                    cpu = spare[0]
                    rec["cpus_online"] = sorted(_set_cpu(g, cpu, i % 2 == 0, step))
            if spare:
                _set_cpu(g, spare[0], False, step)
            load.wait_backends()  # the load is still on after the last resize
        ev["pgbench"] = load.summary()
        ev["pgbench_runs"] = load.runs
        bad = load.problems()
        if bad:
            raise CheckFailed(f"pgbench did not keep going through the scaling: {bad[0]} "
                              f"({len(bad)} of {len(load.runs)} runs bad)", step=step, log=c.log)
        ev["resize_seconds"] = [r["seconds"] for r in rounds]
        dmesg = _dmesg_failures(g, step)
        if dmesg:
            ev["dmesg_failures"] = dmesg[:10]
            raise CheckFailed(f"dmesg during the scaling: {dmesg[0][:160]!r} (+{len(dmesg) - 1} more)", step=step)
        ev["server_after"] = c.psql("select count(*) from pgbench_accounts", step=step)
    return check


def _vmstat(g: Guest, step: str) -> dict[str, int]:
    """pswpout and oom_kill from /proc/vmstat; empty without VM_EVENT_COUNTERS (then /proc/meminfo's
    swap figures and dmesg are the evidence)."""
    out = g.sh("grep -E '^(pswpout|oom_kill) ' /proc/vmstat; true", step=step)
    return {k: int(v) for k, v in (ln.split() for ln in out.splitlines() if len(ln.split()) == 2)}


def swap_under_pressure(c: Compute) -> Callable[[Evidence], None]:
    """A memory hog asks for more than the guest has free while pgbench runs: pages go to the swap
    disk, nothing is OOM-killed, and Postgres (same postmaster) and pgbench keep going."""
    def check(ev: Evidence) -> None:
        step = "swap-under-pressure"
        g = c.guest
        hog = f"/neonvm/runtime/{image.MEMHOG}"
        if g.console.run(f"[ -x {hog} ]", step=step, check=False)[0] != 0:
            raise InfraError(f"{hog} is missing from the runtime disk", step=step)
        postmaster = g.sh(f"head -n 1 {image.PGDATA}/postmaster.pid", step=step).strip()
        avail = int(g.sh("awk '/^MemAvailable:/{print $2}' /proc/meminfo", step=step).strip()) // 1024
        swap_free = int(g.sh("awk '/^SwapFree:/{print $2}' /proc/meminfo", step=step).strip()) // 1024
        hog_mib = avail + SWAP_PUSH_MIB
        if SWAP_PUSH_MIB >= swap_free:
            raise InfraError(f"the swap disk has {swap_free} MiB free, not enough to push {SWAP_PUSH_MIB} MiB",
                             step=step)
        before = _vmstat(g, step)
        ev.update(mem_available_mib=avail, swap_free_mib=swap_free, hog_mib=hog_mib, postmaster=postmaster)
        g.sh("dmesg -c > /dev/null", step=step)
        with PgbenchLoad(c, step=step) as load:
            pid = g.sh(f"{hog} {hog_mib} > /tmp/memhog.out 2>&1 & echo $!", step=step).strip().splitlines()[-1]
            try:
                ev["hog_ready_seconds"] = round(g.console.wait_until(
                    "grep -q 'memhog ready' /tmp/memhog.out", timeout=240, step=step,
                    what=f"the hog to touch its {hog_mib} MiB"), 2)
            except GuestTimeout:
                raise CheckFailed(f"the hog did not get its {hog_mib} MiB within the timeout "
                                  f"({g.sh('cat /tmp/memhog.out', step=step, check=False).strip()[-120:]})",
                                  step=step) from None
            ev["swap_used_kib"] = int(g.sh("awk '/^SwapTotal:/{t=$2} /^SwapFree:/{f=$2} END{print t-f}' "
                                           "/proc/meminfo", step=step).strip())
            hog_alive = g.console.run(f"kill -0 {pid}", step=step, check=False)[0] == 0
            g.sh(f"kill {pid} 2>/dev/null; true", step=step)
        after = _vmstat(g, step)
        if "pswpout" in after:
            ev["pswpout"] = after["pswpout"] - before.get("pswpout", 0)
            ev["oom_kills"] = after.get("oom_kill", 0) - before.get("oom_kill", 0)
        else:
            ev["vmstat"] = "no event counters (VM_EVENT_COUNTERS off): swap use from /proc/meminfo, OOM from dmesg"
        ev["pgbench"] = load.summary()
        moved = int(ev["pswpout"] if "pswpout" in ev else ev["swap_used_kib"])
        if moved <= 0:
            raise CheckFailed(f"nothing was swapped out while {hog_mib} MiB were asked of {avail} MiB available",
                              step=step)
        if ev.get("oom_kills") or not hog_alive:
            raise CheckFailed(f"the OOM killer ran ({ev.get('oom_kills', '?')} kills; hog alive: {hog_alive}) although "
                              "swap had room", step=step)
        bad = load.problems()
        if bad:
            raise CheckFailed(f"pgbench failed under memory pressure: {bad[0]}", step=step, log=c.log)
        still = g.sh(f"head -n 1 {image.PGDATA}/postmaster.pid", step=step).strip()
        if still != postmaster:
            raise CheckFailed(f"the postmaster changed ({postmaster} -> {still}): Postgres restarted", step=step)
        dmesg = _dmesg_failures(g, step)
        if dmesg:
            ev["dmesg_failures"] = dmesg[:10]
            raise CheckFailed(f"dmesg under memory pressure: {dmesg[0][:160]!r}", step=step)
    return check


PERF_KERNEL = re.compile(r"\(\[kernel\.kallsyms\]\)")
PERF_USER = re.compile(r"\(/usr/lib/postgresql/\S*/bin/postgres\)")


def perf_frames(script: str) -> dict[str, int]:
    """Count samples and the frames of ``perf script`` output by where they are (kernel, postgres)."""
    samples = sum(1 for ln in script.splitlines() if ln and not ln[0].isspace())
    return {"samples": samples, "kernel_frames": len(PERF_KERNEL.findall(script)),
            "postgres_frames": len(PERF_USER.findall(script))}


def perf_backend(c: Compute) -> Callable[[Evidence], None]:
    """``perf record -g`` from tools.img on the Postgres backends serving pgbench: samples with kernel
    frames and frames in the postgres binary."""
    def check(ev: Evidence) -> None:
        step = "perf-backend"
        g = c.guest
        perf = f"{image.TOOLS_MOUNT}/{spec.PERF}"
        if g.console.run(f"[ -x {perf} ]", step=step, check=False)[0] != 0:
            if not c.tools_attached:
                raise Skip("no tools.img attached (build it with the kernel: --tools)")
            mounted = g.console.run(f"mountpoint -q {image.TOOLS_MOUNT}", step=step, check=False)[0] == 0
            raise CheckFailed(f"tools.img is attached but {perf} is not there"
                              + ("" if mounted else f" ({image.TOOLS_MOUNT} is not mounted: see mounts.sh)"), step=step)
        # one run outlasts the recording: the backends perf attaches to are the ones it finds
        with PgbenchLoad(c, step=step, seconds=PERF_SECONDS + 30) as load:
            pids = load.wait_backends()
            ev["backends"] = pids
            rc, out = g.console.run(f"{perf} record -g -o /tmp/perf.data -p {pids} -- sleep {PERF_SECONDS} "
                                    "2>&1 | tail -n 3", step=step, timeout=120, check=False)
            ev["record"] = out.strip().splitlines()[-2:]
        script = g.sh(f"{perf} script -i /tmp/perf.data -F comm,pid,ip,sym,dso 2>/dev/null | head -n 4000",
                      step=step, timeout=180)
        counts = perf_frames(script)
        ev.update(counts)
        if not counts["samples"]:
            raise CheckFailed(f"perf recorded no samples of the backends ({' '.join(ev['record'])})", step=step)
        missing = [k for k in ("kernel_frames", "postgres_frames") if not counts[k]]
        if missing:
            raise CheckFailed(f"perf samples have no {' and no '.join(m.split('_')[0] for m in missing)} frames "
                              f"({counts})", step=step)
    return check


def chrony_ptp(c: Compute) -> Callable[[Evidence], None]:
    """chronyd synchronised to ``refclock PHC /dev/ptp0`` (the KVM PTP clock): needs KVM."""
    def check(ev: Evidence) -> None:
        step = "chrony-ptp"
        g = c.guest
        has_ptp = g.console.run("[ -e /dev/ptp0 ]", step=step, check=False)[0] == 0
        ev["ptp0"] = has_ptp
        if c.accel != "kvm":
            if has_ptp:
                raise CheckFailed("/dev/ptp0 exists under TCG: that is not the KVM PTP clock", step=step)
            raise Skip(f"needs KVM (ran under {c.accel.upper()}): ptp_kvm asks the hypervisor by a KVM hypercall")
        if not has_ptp:
            raise CheckFailed("no /dev/ptp0 under KVM: the ptp_kvm clock did not register", step=step)
        cond = "chronyc -n sources 2>/dev/null | grep -q '^#\\* PHC0'"
        try:
            ev["sync_seconds"] = round(g.console.wait_until(cond, timeout=CHRONY_SYNC_TIMEOUT, step=step,
                                                            what="chrony to select PHC0"), 2)
        except GuestTimeout:
            raise CheckFailed(f"chrony did not synchronise to PHC0 within {CHRONY_SYNC_TIMEOUT:.0f}s: "
                              f"{g.sh('chronyc -n sources 2>&1 | tail -n 3', step=step, check=False)!r}",
                              step=step) from None
        ev["tracking"] = g.sh("chronyc -n tracking 2>&1 | head -n 4", step=step, check=False).strip()
    return check
