"""The guest's serial console, driven with pexpect.

Every wait has a deadline and watches the kernel's failure patterns at the same time, so a panic
is reported as soon as it appears (with the console's last lines), not when the deadline passes.
Commands run through the test initramfs' shell framed by markers that the echoed command line
cannot contain, so their output and exit status are read back exactly.
"""
from __future__ import annotations

import itertools
import logging
import re
import shlex
from collections.abc import Callable
from pathlib import Path

import pexpect
import pexpect.fdpexpect

from harness.errors import CheckFailed, HarnessError, InfraError, KernelError
from harness.progress import Timer

LOG = logging.getLogger(__name__)

# What the kernel prints when it is broken. Order does not matter: the earliest match in the
# console stream wins.
FAILURE_PATTERNS = (
    r"Kernel panic - not syncing",
    r"\bOops\b",
    r"\bBUG: ",
    r"Call Trace:",
    r"\bWARNING: ",
)
FAILURE_RE = re.compile("(" + "|".join(FAILURE_PATTERNS) + ")[^\r\n]*")
# After a failure pattern the rest of the report is collected up to its end marker (bounded).
REPORT_END_RE = re.compile(r"---\[ end [^\r\n]*")
REPORT_COLLECT_SECONDS = 3.0
TAIL_LINES = 30
MAX_COMMAND = 512  # characters in one command line sent to the guest's shell


class GuestCrashed(KernelError):
    """The console showed a kernel failure pattern (panic, oops, BUG, WARNING, call trace)."""

    def __init__(self, message: str, *, step: str, log: Path | None = None,
                 tail: list[str] | None = None) -> None:
        super().__init__(message, step=step, log=log)
        self.tail = tail or []


class GuestTimeout(KernelError):
    """The guest did not show what was awaited before the deadline."""

    def __init__(self, message: str, *, step: str, log: Path | None = None,
                 tail: list[str] | None = None) -> None:
        super().__init__(message, step=step, log=log)
        self.tail = tail or []


def scan_failures(text: str) -> list[str]:
    """The lines of ``text`` (e.g. a dmesg) that match a failure pattern."""
    return [m.group(0).strip() for m in FAILURE_RE.finditer(text)]


class Console:
    """pexpect on a connected console file descriptor, logging everything it reads to ``log``.

    ``on_eof`` returns the error to raise when the console closes (the VM decides whether QEMU
    died - infrastructure - or the guest reset itself - kernel).
    """

    def __init__(self, fd: int, log: Path, *, on_eof: Callable[[], HarnessError], scale: float = 1.0):
        self.log = Path(log)
        self._logfh = open(self.log, "a", encoding="utf-8", errors="replace")
        self.child = pexpect.fdpexpect.fdspawn(fd, encoding="utf-8", codec_errors="replace", timeout=None)
        self.child.logfile_read = self._logfh
        self.on_eof = on_eof
        self.scale = scale  # timeouts given to run()/wait() are multiplied by this (TCG is slower)
        self.crashed: str | None = None  # the panic line, once the kernel has panicked
        self._seq = itertools.count(1)
        self._clock = Timer.begin()  # the console log's timestamps

    def close(self) -> None:
        try:
            self.child.close()
        except OSError:
            pass
        self._logfh.close()

    def note(self, text: str) -> None:
        """Write a harness annotation into the console log (the guest never sees it)."""
        self._logfh.write(f"\n### harness: +{self._clock.elapsed:.2f}s {text}\n")
        self._logfh.flush()

    def tail(self, n: int = TAIL_LINES) -> list[str]:
        self._logfh.flush()
        try:
            lines = self.log.read_text(encoding="utf-8", errors="replace").splitlines()
        except FileNotFoundError:
            return []
        lines = [ln.rstrip("\r") for ln in lines if ln.strip() and not ln.startswith("### harness:")]
        return lines[-n:]

    # -- waiting ---------------------------------------------------------------------------------
    def wait(self, pattern: str | re.Pattern[str], *, timeout: float, step: str, what: str = "",
             watch: bool = True, scaled: bool = True) -> re.Match[str]:
        """Wait for ``pattern``; raise GuestCrashed, GuestTimeout or ``on_eof()``'s error."""
        if self.crashed:
            raise GuestCrashed(f"kernel panicked earlier: {self.crashed}", step=step, log=self.log,
                               tail=self.tail())
        limit = timeout * (self.scale if scaled else 1.0)
        regex = pattern if isinstance(pattern, re.Pattern) else re.compile(pattern)
        patterns = [regex] + ([FAILURE_RE] if watch else []) + [pexpect.EOF, pexpect.TIMEOUT]
        try:
            idx = self.child.expect(patterns, timeout=limit)
        except OSError as exc:  # e.g. ECONNRESET: QEMU was killed
            raise self.on_eof() from exc
        if idx == 0:
            match: re.Match[str] = self.child.match
            return match
        if watch and idx == 1:
            first = self.child.match.group(0).strip()
            self._collect_report()
            first = self._whole_line(first)
            if first.startswith("Kernel panic"):
                self.crashed = first
            raise GuestCrashed(f"kernel reported {first!r} while waiting for {what or regex.pattern}",
                               step=step, log=self.log, tail=self.tail())
        if patterns[idx] is pexpect.EOF:
            raise self.on_eof()
        raise GuestTimeout(f"timed out after {limit:.0f}s waiting for {what or repr(regex.pattern)}", step=step,
                           log=self.log, tail=self.tail())

    def _whole_line(self, start: str) -> str:
        """The failure line as the console finished printing it (the match may have cut it short)."""
        for line in reversed(self.tail(200)):
            i = line.find(start)
            if i >= 0:
                return line[i:].strip()
        return start

    def _collect_report(self) -> None:
        """Read the rest of a kernel failure report (up to its end marker, bounded) into the log."""
        try:
            self.child.expect([REPORT_END_RE, pexpect.EOF, pexpect.TIMEOUT], timeout=REPORT_COLLECT_SECONDS)
        except OSError:
            pass

    # -- commands ------------------------------------------------------------------------------
    def run(self, command: str, *, timeout: float = 10, step: str, check: bool = True,
            watch: bool = True) -> tuple[int, str]:
        """Run a shell command in the guest; return (exit status, output). ``check`` raises
        CheckFailed on a non-zero status (the guest refused something the kernel should do)."""
        if len(command) > MAX_COMMAND:
            # A virtio console (hvc0) loses input past about a thousand characters in one go.
            raise InfraError(f"harness bug: a {len(command)}-character command line for the guest console "
                             f"(at most {MAX_COMMAND}): {command[:80]}...", step=step)
        n = next(self._seq)
        # The quotes split the markers in the echoed command line, so only the real output matches.
        # One line: nothing else is in flight while it runs, so tty echo cannot split its output.
        line = f"echo '@@B''{n}@@'; {command}; echo \"@@E\"\"{n}:$?@@\"\n"
        self.note(f"$ {command}")
        try:
            self.child.send(line)
        except OSError as exc:
            raise self.on_eof() from exc
        self.wait(re.compile(rf"@@B{n}@@\r?\n"), timeout=timeout, step=step, what=f"start of `{command}`",
                  watch=watch)
        m = self.wait(re.compile(rf"@@E{n}:(\d+)@@"), timeout=timeout, step=step,
                      what=f"end of `{command}`", watch=watch)
        output = self.child.before.replace("\r\n", "\n").replace("\r", "").rstrip("\n")
        rc = int(m.group(1))
        if check and rc != 0:
            last = output.strip().splitlines()[-1:] or [""]
            raise CheckFailed(f"`{command}` exited {rc} in the guest: {last[0][:200]}", step=step, log=self.log)
        return rc, output

    def wait_until(self, condition: str, *, timeout: float, step: str, what: str) -> float:
        """Wait, inside the guest, until the shell ``condition`` holds; return the seconds taken.

        The guest polls its own state (sysfs, /proc) under busybox ``timeout``; the harness waits
        for the answer with a deadline and keeps watching for kernel failures meanwhile.
        """
        limit = max(1, round(timeout * self.scale))
        clock = Timer.begin()
        # busybox's usleep in the test initramfs; a Debian guest's sh has none, and its sleep takes fractions
        loop = f"until {condition}; do usleep 20000 2>/dev/null || sleep 0.02; done"
        rc, _ = self.run(f"timeout {limit} sh -c {shlex.quote(loop)}", timeout=timeout + 10, step=step,
                         check=False)
        if rc != 0:
            raise GuestTimeout(f"{what}: not true within {limit}s (guest-side `{condition}`)", step=step,
                               log=self.log, tail=self.tail())
        return clock.elapsed

    def read(self, path: str, *, step: str) -> str:
        return self.run(f"cat {path}", step=step)[1].strip()
