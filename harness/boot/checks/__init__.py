"""Boot checks: one module per family, each check a function ``(guest, evidence) -> None``.

Outcomes follow the one check protocol of :mod:`harness.check` (return, :class:`Skip`, KernelError,
InfraError). A new check is a function in its family's module and an entry in that module's
``CHECKS``; :mod:`harness.boot.run` lists the families in the order they run.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness import check as protocol
from harness.arch import Arch
from harness.check import Skip as Skip  # re-exported: checks raise it
from harness.report import CheckResult

if TYPE_CHECKING:  # the checks stay importable without QEMU's library
    from harness.boot.console import Console
    from harness.boot.qmp import Qmp
    from harness.boot.vm import Vm

LOG = logging.getLogger(__name__)


@dataclass
class Guest:
    """A booted VM and what the checks need to know about it."""

    vm: Vm  # the QEMU the guest runs in now (tests give stand-ins)
    arch: Arch
    accel_name: str
    release: str
    tools_img: Path | None = None
    tools_required: bool = False
    boot_dmesg: str = ""
    data_disk: Path | None = None  # the runner-shaped Postgres data disk attached to the VM
    powered_off: bool = False  # set by the check that powers the guest off (it runs last)
    options: dict[str, Any] = field(default_factory=dict)  # check parameters from the command line (e.g. soak)
    # Every QEMU started for this guest, the boot VM first (the migration check adds its
    # destinations); harness.boot.run tears them all down whatever happened (teardown()).
    vms: list[Vm] = field(default_factory=list)
    lost: str = ""  # why the guest is gone (a migration completed to a destination that does not run)

    @property
    def console(self) -> Console:
        return self.vm.console

    @property
    def qmp(self) -> Qmp:
        return self.vm.qmp

    def adopt(self, vm: Vm) -> Vm:
        """Own another QEMU (before it is launched, so a half-started one is torn down too)."""
        self.vms.append(vm)
        return vm

    def switch_to(self, vm: Vm) -> None:
        """The guest now runs in ``vm`` (a migration destination): console, QMP and logs are its."""
        if vm not in self.vms:
            self.vms.append(vm)
        self.vm = vm

    def teardown(self) -> list[str]:
        """Stop every QEMU this guest owns, newest first; the problems, if any (never raises)."""
        problems: list[str] = []
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
    func: Callable[[Guest, dict[str, Any]], None]
    applies: Callable[[Arch], bool] = lambda arch: True
    opt_in: bool = False  # runs only when asked for by name (needs a special kernel variant)
    doc: str = ""


def run_check(check: Check, guest: Guest) -> CheckResult:
    """Run one boot check through the one check protocol (:func:`harness.check.run_check`)."""
    return protocol.run_check(check.name, lambda ev: check.func(guest, ev),
                              evidence={"accelerator": guest.accel_name})


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
