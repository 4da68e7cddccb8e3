"""Checks on the booted kernel itself: its release, and a clean kernel log."""
from __future__ import annotations

import logging

from harness.boot.checks import Check, Guest
from harness.boot.console import scan_failures
from harness.check import Evidence
from harness.errors import CheckFailed

LOG = logging.getLogger(__name__)


def kernelrelease(guest: Guest, ev: Evidence) -> None:
    got = guest.sh("uname -r", step="kernelrelease").strip()
    ev.update(expected=guest.release, uname_r=got)
    if got != guest.release:
        raise CheckFailed(f"guest runs {got!r}, the build says {guest.release!r}", step="kernelrelease")


def dmesg_clean(guest: Guest, ev: Evidence) -> None:
    bad = scan_failures(guest.boot_dmesg)
    ev["dmesg_lines"] = len(guest.boot_dmesg.splitlines())
    if bad:
        ev["offending_lines"] = bad[:20]
        raise CheckFailed(f"dmesg after boot has {len(bad)} failure line(s), first: {bad[0][:160]!r}",
                          step="dmesg")


CHECKS = [
    Check("kernelrelease", kernelrelease, doc="`uname -r` equals the built kernelrelease"),
    Check("dmesg", dmesg_clean, doc="no panic/Oops/BUG/WARNING/Call Trace in dmesg after boot"),
]
