"""Boot checks: one module per family, each check a function ``(guest, evidence) -> None``.

A check passes by returning, is skipped by raising :class:`Skip` with the reason, fails by raising
a KernelError (the kernel is wrong) and errors by raising an InfraError (the harness or host broke).
It writes what it saw into ``evidence`` as it goes, so that a failure keeps its evidence too.
"""
from __future__ import annotations

import logging
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from harness.arch import Arch
from harness.errors import InfraError, KernelError
from harness.report import CheckResult, Timer

LOG = logging.getLogger(__name__)


class Skip(Exception):
    """The check cannot run here; the message says why (and, where there is one, the proof)."""


@dataclass
class Guest:
    """A booted VM and what the checks need to know about it."""

    vm: "object"  # harness.boot.vm.Vm (not imported here to keep the checks importable without QEMU)
    arch: Arch
    accel_name: str
    release: str
    tools_img: Path | None = None
    tools_required: bool = False
    boot_dmesg: str = ""
    data_disk: Path | None = None  # the runner-shaped Postgres data disk attached to the VM
    powered_off: bool = False  # set by the check that powers the guest off (it runs last)
    options: dict = field(default_factory=dict)  # check parameters from the command line (e.g. soak)
    # Every QEMU started for this guest, the boot VM first (the migration check adds its
    # destinations); boottest tears them all down whatever happened (teardown()).
    vms: list = field(default_factory=list)
    lost: str = ""  # why the guest is gone (a migration completed to a destination that does not run)

    @property
    def console(self):
        return self.vm.console

    @property
    def qmp(self):
        return self.vm.qmp

    def adopt(self, vm):
        """Own another QEMU (before it is launched, so a half-started one is torn down too)."""
        self.vms.append(vm)
        return vm

    def switch_to(self, vm) -> None:
        """The guest now runs in ``vm`` (a migration destination): console, QMP and logs are its."""
        if vm not in self.vms:
            self.vms.append(vm)
        self.vm = vm

    def teardown(self) -> list[str]:
        """Stop every QEMU this guest owns, newest first; the problems, if any (never raises)."""
        problems = []
        for vm in reversed(self.vms):
            try:
                vm.shutdown()
            except Exception as exc:  # keep tearing the others down
                LOG.warning("teardown of %s failed: %s", getattr(vm, "tag", vm), exc)
                problems.append(f"{getattr(vm, 'tag', vm)}: {exc}")
        return problems

    def sh(self, command: str, *, step: str, timeout: float = 10, check: bool = True) -> str:
        return self.console.run(command, step=step, timeout=timeout, check=check)[1]


@dataclass(frozen=True)
class Check:
    name: str
    func: Callable[[Guest, dict], None]
    applies: Callable[[Arch], bool] = lambda arch: True
    opt_in: bool = False  # runs only when asked for by name (needs a special kernel variant)
    doc: str = ""


def run_check(check: Check, guest: Guest) -> CheckResult:
    """Run one check and turn its outcome into a CheckResult (never raises for a check's failure)."""
    evidence: dict = {"accelerator": guest.accel_name}
    status, reason = "pass", ""
    with Timer() as t:
        try:
            check.func(guest, evidence)
        except Skip as exc:
            status, reason = "skip", str(exc)
        except KernelError as exc:
            status, reason = "fail", str(exc)
            _keep_tail(exc, evidence)
        except InfraError as exc:
            status, reason = "error", str(exc)
            _keep_tail(exc, evidence)
        except Exception as exc:  # a harness bug: report it as an error of this check, keep going
            LOG.error("check %s crashed:\n%s", check.name, traceback.format_exc())
            status, reason = "error", f"harness bug: {type(exc).__name__}: {exc}"
    LOG.info("check %s: %s %s", check.name, status, reason)
    return CheckResult(name=check.name, status=status, reason=reason, duration=round(t.duration, 3),
                       evidence=evidence)


def _keep_tail(exc: Exception, evidence: dict) -> None:
    tail = getattr(exc, "tail", None)
    if tail:
        evidence["console_tail"] = tail


def meminfo_kib(text: str, key: str = "MemTotal") -> int:
    for line in text.splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise ValueError(f"no {key} in /proc/meminfo")


def cpu_list(text: str) -> set[int]:
    """Parse a kernel CPU list such as ``0-2,5``."""
    out: set[int] = set()
    for part in text.strip().split(","):
        if not part:
            continue
        lo, _, hi = part.partition("-")
        out.update(range(int(lo), int(hi or lo) + 1))
    return out
