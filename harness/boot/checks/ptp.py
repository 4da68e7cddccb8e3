"""The KVM PTP clock (ptp_kvm), which the runner's guests use to keep time.

It needs a real KVM hypervisor (a hypercall), so under TCG ``ptp-kvm`` is skipped and
``ptp-kvm-builtin`` proves at least that the driver is built into the booted kernel.
"""
from __future__ import annotations

import logging
import re
import time

from harness.boot.checks import Check, Guest, Skip
from harness.check import Evidence
from harness.errors import CheckFailed

LOG = logging.getLogger(__name__)

CLOCK_NAME = "KVM virtual PTP"
MAX_OFFSET_S = 1.0
CONFIG_LINE = "CONFIG_PTP_1588_CLOCK_KVM"
# The driver's own functions, built in (module symbols would end in " [ptp_kvm]"; the arch helpers
# kvm_arch_ptp_* are built in on arm64 even when the driver is a module, so they prove nothing).
SYMBOL_RE = r" [tT] ptp_kvm_[a-z_]+$"


def ptp_kvm(guest: Guest, ev: Evidence) -> None:
    step = "ptp-kvm"
    if guest.accel_name != "kvm":
        raise Skip(f"needs KVM (ran under {guest.accel_name.upper()})")
    guest.console.wait_until("[ -e /dev/ptp0 ]", timeout=10, step=step, what="/dev/ptp0 appears")
    name = guest.console.read("/sys/class/ptp/ptp0/clock_name", step=step)
    ev["clock_name"] = name
    if name != CLOCK_NAME:
        raise CheckFailed(f"/dev/ptp0 is {name!r}, not {CLOCK_NAME!r}", step=step)
    before = time.time()
    out = guest.sh("phc-read /dev/ptp0", step=step)
    after = time.time()
    m = re.search(r"phc (\d+\.\d+)", out)
    if not m:
        raise CheckFailed(f"phc-read printed {out[:100]!r}", step=step)
    phc = float(m.group(1))
    offset = 0.0 if before <= phc <= after else min(abs(phc - before), abs(phc - after))
    ev.update(phc_read=out.strip(), host_window=f"{before:.3f}..{after:.3f}", offset_s=round(offset, 3))
    if offset > MAX_OFFSET_S:
        raise CheckFailed(f"the PHC is {offset:.3f}s away from the host clock (limit {MAX_OFFSET_S}s)", step=step)


def ptp_kvm_builtin(guest: Guest, ev: Evidence) -> None:
    step = "ptp-kvm-builtin"
    rc, out = guest.console.run(f"zcat /proc/config.gz | grep '^{CONFIG_LINE}[= ]'", step=step, check=False)
    if rc == 0 or "is not set" in out:
        ev["proc_config"] = out.strip()
    rc, syms = guest.console.run(f"grep -E '{SYMBOL_RE}' /proc/kallsyms | head -5", step=step, check=False)
    ev["kallsyms"] = syms.strip().splitlines()
    if ev.get("proc_config", "").endswith("=y") or ev["kallsyms"]:
        return
    raise CheckFailed(f"ptp_kvm is not built into the kernel ({ev.get('proc_config') or 'no /proc/config.gz'}; "
                      "no ptp_kvm symbols in /proc/kallsyms)", step=step)


CHECKS = [
    Check("ptp-kvm", ptp_kvm, doc="/dev/ptp0 is the KVM virtual PTP and reads close to the host clock"),
    Check("ptp-kvm-builtin", ptp_kvm_builtin, doc="ptp_kvm is built into the kernel (config.gz or kallsyms)"),
]
