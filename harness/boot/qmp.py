"""QMP, the QEMU Machine Protocol, through QEMU's own client library (``qemu.qmp``).

The library does the protocol: the synchronous :class:`qemu.qmp.legacy.QEMUMonitorProtocol` listens
on a Unix socket (QEMU connects to it, so that a QEMU that dies first is noticed by the console
accept), negotiates capabilities, matches replies to commands and queues every event its reader
receives, including those that arrive while a command waits for its reply. On top of it, only
what the harness adds:

* the harness' typed errors: a refused command, a command or handshake without an answer within
  its deadline is :class:`QmpFailed` (infrastructure); a connection that is gone is whatever the VM
  says it is (``on_lost``: QEMU died, or the guest shut itself down);
* :meth:`Qmp.wait_event`: wait for one event with a deadline; the events passed over on the way
  stay pending for later waits, and every event received is kept in :attr:`Qmp.events` as evidence.
"""
from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from qemu.qmp import ExecuteError, QMPError
from qemu.qmp.legacy import QEMUMonitorProtocol

from harness.errors import HarnessError, InfraError

LOG = logging.getLogger(__name__)

Event = dict[str, Any]  # {"event": NAME, "data": {...}, "timestamp": {...}}
COMMAND_TIMEOUT = 10.0


class QmpFailed(InfraError):
    """QMP refused a command or gave no answer: the host side of the test broke."""


def _any(data: dict[str, Any]) -> bool:
    return True


class Qmp:
    """The harness' side of one QEMU's QMP socket: ``Qmp(path, ...)`` listens, :meth:`accept` waits
    for QEMU, :meth:`execute` runs a command, :meth:`wait_event` waits for an event."""

    def __init__(self, path: Path, *, name: str, on_lost: Callable[[], HarnessError]) -> None:
        try:
            self._mon = QEMUMonitorProtocol(str(path), server=True, nickname=name)
        except (QMPError, OSError) as exc:
            raise QmpFailed(f"cannot listen for QMP on {path}: {exc}", step="qmp") from exc
        self._pending: list[Event] = []  # received, not yet consumed by wait_event
        self.events: list[Event] = []  # every event received, for evidence
        self.on_lost = on_lost

    def accept(self, *, timeout: float) -> None:
        """Wait for QEMU to connect and negotiate capabilities."""
        try:
            self._mon.accept(timeout=timeout)
        except TimeoutError:
            raise QmpFailed(f"QMP connection from QEMU: no answer within {timeout:.0f}s", step="qmp") from None
        except (QMPError, OSError, EOFError) as exc:
            raise QmpFailed(f"QMP handshake failed: {exc}", step="qmp") from exc

    def execute(self, cmd: str, args: dict[str, Any] | None = None, *, timeout: float = COMMAND_TIMEOUT) -> Any:
        """Run ``cmd`` and return its ``return`` value; QmpFailed when QEMU refuses it or does not
        answer in time, ``on_lost()`` when the connection is gone."""
        LOG.debug("QMP -> %s %s", cmd, args or "")
        self._mon.settimeout(timeout)
        try:
            result = self._mon.cmd(cmd, **(args or {}))
        except ExecuteError as exc:
            raise QmpFailed(f"QMP {cmd} {args or ''} refused: {exc}", step="qmp") from exc
        except TimeoutError:
            raise QmpFailed(f"QMP {cmd}: no answer within {timeout:.0f}s", step="qmp") from None
        except (QMPError, OSError, EOFError) as exc:
            raise self.on_lost() from exc
        LOG.debug("QMP <- %s", result)
        return result

    def _pull(self, timeout: float) -> Event | None:
        """The next event the library queued, waiting at most ``timeout`` seconds."""
        try:
            event = self._mon.pull_event(wait=max(float(timeout), 0.001))  # a float: True waits forever
        except TimeoutError:
            return None
        if event is not None:
            self.events.append(event)
        return event

    def wait_event(self, name: str, *, timeout: float, step: str,
                   match: Callable[[dict[str, Any]], bool] = _any) -> Event | None:
        """Wait for event ``name`` whose data satisfies ``match``; earlier unconsumed events count.

        Returns None at the deadline: the caller knows whether a missing event is the guest's fault.
        """
        for ev in self._pending:
            if ev["event"] == name and match(ev.get("data", {})):
                self._pending.remove(ev)
                return ev
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            got = self._pull(left)
            if got is None:
                break
            if got["event"] == name and match(got.get("data", {})):
                return got
            self._pending.append(got)
        LOG.info("[%s] no QMP event %s within %.0fs", step, name, timeout)
        return None

    def drain(self, timeout: float = 0.2) -> list[Event]:
        """The events received and not consumed yet, after a bounded wait for those in flight."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0 and (ev := self._pull(left)) is not None:
            self._pending.append(ev)
        return list(self._pending)

    def forget_pending(self, timeout: float = 0.2) -> int:
        """Drop the events received so far (bounded wait for those in flight), so that a following
        wait_event only matches what happens after this point. Returns how many were dropped."""
        n = len(self.drain(timeout))
        self._pending.clear()
        return n

    def close(self) -> None:
        """Disconnect (never raises: QEMU may be gone already)."""
        with contextlib.suppress(Exception):
            self._mon.close()
