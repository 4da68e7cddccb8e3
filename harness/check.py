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

from harness.errors import HarnessError, InfraError, InputError, KernelError
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
        except Skip as exc:
            status, reason = "skip", str(exc)
        except (KernelError, InputError) as exc:
            status, reason = "fail", str(exc)
            _keep_tail(exc, ev)
        except InfraError as exc:
            status, reason = "error", str(exc)
            _keep_tail(exc, ev)
        except Exception as exc:  # a harness bug: report it as an error of this check, keep going
            LOG.error("check %s crashed:\n%s", name, traceback.format_exc())
            status, reason = "error", f"harness bug: {type(exc).__name__}: {exc}"
    LOG.info("check %s: %s %s", name, status, reason)
    return CheckResult(name=name, status=status, reason=reason, duration=round(t.duration, precision),
                       evidence=ev)


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
