"""The one check protocol: boot checks, image inspection and the release gate's steps.

A check is a function given an ``evidence`` dict. It passes by returning, is skipped by raising
:class:`Skip` with the reason, fails by raising a :class:`~harness.errors.KernelError` or an
:class:`~harness.errors.InputError` (the kernel, image or input is wrong) and errors by raising an
:class:`~harness.errors.InfraError` (the harness or host broke). Anything else is a harness bug,
reported as an error of that check, never as an abort of the checks after it. The check writes what
it saw into ``evidence`` as it goes, so that a failure keeps its evidence too.
"""
from __future__ import annotations

import logging
import traceback
from collections.abc import Callable
from typing import Any

from harness.errors import HarnessError, InputError, KernelError
from harness.progress import Timer
from harness.report import CheckResult

LOG = logging.getLogger(__name__)

Evidence = dict[str, Any]


class Skip(Exception):
    """The check cannot run here; the message says why (and, where there is one, the proof)."""


def run_check(name: str, func: Callable[[Evidence], None], *, evidence: Evidence | None = None,
              precision: int = 3) -> CheckResult:
    """Run one check and turn its outcome into a CheckResult (never raises for a check's outcome)."""
    ev: Evidence = evidence if evidence is not None else {}
    status, reason = "pass", ""
    with Timer() as t:
        try:
            func(ev)
        except Exception as exc:
            status, reason = outcome(name, exc, ev)
    LOG.info("check %s: %s %s", name, status, reason)
    return CheckResult(name=name, status=status, reason=reason, duration=round(t.duration, precision),
                       evidence=ev)


def outcome(name: str, exc: Exception, evidence: Evidence) -> tuple[str, str]:
    """The status and reason an exception means for check ``name`` (the protocol's one mapping, also
    used by the runners for what breaks around the checks); what the error knows goes to ``evidence``."""
    if isinstance(exc, Skip):
        return "skip", str(exc)
    if isinstance(exc, HarnessError):
        _keep_tail(exc, evidence)
        return ("fail" if isinstance(exc, KernelError | InputError) else "error"), str(exc)
    LOG.error("%s crashed:\n%s", name, traceback.format_exc())  # a harness bug: an error of this check
    return "error", f"harness bug: {type(exc).__name__}: {exc}"


def failed(name: str, exc: Exception, evidence: Evidence | None = None) -> CheckResult:
    """The result for ``name`` when ``exc`` ended it outside :func:`run_check` (a runner's own step)."""
    ev: Evidence = evidence if evidence is not None else {}
    status, reason = outcome(name, exc, ev)
    return CheckResult(name=name, status=status, reason=reason, evidence=ev)


def skipped(name: str, why: str) -> CheckResult:
    """A check that was not run because something before it did not produce what it needs."""
    return CheckResult(name=name, status="skip", reason=f"not run: {why}")


def _keep_tail(exc: HarnessError, evidence: Evidence) -> None:
    """Keep what the error knows: its kind, its log, and the console's last lines."""
    evidence["kind"] = exc.kind
    if exc.log:
        evidence.setdefault("log", str(exc.log))
    tail = getattr(exc, "tail", None)
    if tail:
        evidence["console_tail"] = tail
