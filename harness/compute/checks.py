"""The compute checks: functions ``(ctx, evidence)`` run through :func:`harness.check.run_check`.

Each raises Skip, a KernelError (CheckFailed, GuestTimeout) or an InfraError. ``ctx`` is the
running compute VM plus what the harness knows about it (:class:`Compute`).
"""
from __future__ import annotations

import os
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness import proc
from harness.boot.vm import Vm
from harness.check import Skip
from harness.compute import image
from harness.errors import CheckFailed, CommandFailed, CommandTimeout, HarnessError, InfraError

Evidence = dict[str, Any]
READY_RE = re.compile(f"({re.escape(image.READY_MARKER)}|{re.escape(image.FAILED_MARKER)}[^\r\n]*)")
PG_READY_TIMEOUT = 300.0  # seconds from QEMU start to the init's "postgres ready" (unscaled; TCG)
PSQL_TIMEOUT = 30.0  # seconds of host-side retries once the guest says Postgres is up
POWEROFF_TIMEOUT = 30.0  # the runner's expectation: powered off within 30 s of system_powerdown
CLEAN_SHUTDOWN = "database system is shut down"
QUOTA_WRITE_MIB = 320  # more than the project quota (runner.QUOTA_MIB), less than the data disk


@dataclass
class Compute:
    """One running compute VM and what the checks share."""

    vm: Vm
    host_port: int
    log: Path  # host-side commands (psql)
    token: str = field(default_factory=lambda: secrets.token_hex(8))
    powered_off: bool = False

    def psql(self, sql: str, *, step: str, timeout: float = 60) -> str:
        env = {"PGCONNECT_TIMEOUT": "10"}
        argv = ["psql", "-h", "127.0.0.1", "-p", str(self.host_port), "-U", "postgres", "-d", "postgres",
                "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql]
        return proc.capture(argv, step=step, env=env, timeout=timeout, log=self.log).strip()


def wait_ready(c: Compute, ev: Evidence, *, step: str) -> None:
    """The guest init says Postgres started; then ``psql`` from the host over the forwarded port."""
    proc.require_tool("psql", step=step, hint="apt-get install -y postgresql-client")
    vm = c.vm
    m = vm.console.wait(READY_RE, timeout=PG_READY_TIMEOUT, scaled=False, step=step,
                        what="the guest init's 'postgres ready'")
    ev["guest_ready_seconds"] = round(time.monotonic() - vm.started, 2)
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
    ev["seconds_to_ready"] = round(time.monotonic() - vm.started, 2)
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
        start = time.monotonic()
        vm.qmp.execute("system_powerdown")
        try:
            got = vm.qmp.wait_event("SHUTDOWN", timeout=POWEROFF_TIMEOUT, step=step)
        except HarnessError:
            got = None  # the connection went with QEMU; the exit below decides
        assert vm.proc is not None
        try:
            vm.proc.wait(timeout=max(1.0, POWEROFF_TIMEOUT - (time.monotonic() - start)))
        except Exception:
            pass
        seconds = round(time.monotonic() - start, 2)
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
    for tool in ("mmdebstrap", "genisoimage", "qemu-img", "psql"):
        try:
            proc.require_tool(tool, step=step)
        except HarnessError as exc:
            raise InfraError(str(exc), step=step) from None
