"""Console waits against captured real console logs (fixtures/console/) and a fake shell."""
from __future__ import annotations

import re
import socket
import threading
import time

import pytest
from fixture_paths import FIXTURES

from harness.boot import run as boottest
from harness.boot.console import Console, GuestCrashed, GuestTimeout, scan_failures
from harness.errors import CheckFailed, QemuDied

CONSOLE = FIXTURES / "console"


def guest_output(name: str) -> bytes:
    """What the guest sent: the captured log without the harness' own annotations."""
    lines = (CONSOLE / name).read_text().splitlines(keepends=True)
    return "".join(ln for ln in lines if not ln.startswith("### harness:")).encode()


@pytest.fixture
def console(tmp_path):
    """(Console, guest socket): write to the guest socket to play the guest."""
    ours, theirs = socket.socketpair()
    con = Console(ours.detach(), tmp_path / "console.log", on_eof=lambda: QemuDied("gone", step="test"))
    yield con, theirs
    con.close()
    theirs.close()


def test_boot_reaches_shell(console):
    con, guest = console
    guest.sendall(guest_output("amd64-debian61-boot-test.log"))
    m = con.wait(boottest.READY_RE, timeout=5, step="boot")
    assert m.group(1) == "6.1.0-56-amd64"


def test_smoke_612_boot_and_its_topology_line(console):
    from harness.boot.checks.cpu_hotplug import TOPOLOGY_RE

    con, guest = console
    guest.sendall(guest_output("amd64-smoke612-boot-test.log"))
    assert con.wait(boottest.READY_RE, timeout=5, step="boot").group(1) == "6.12.117-neonvm-smoke"
    m = TOPOLOGY_RE.search((CONSOLE / "amd64-smoke612-boot-test.log").read_text())
    assert m and m.group(0) == "Allowing 2 present CPUs plus 0 hotplug CPUs"


@pytest.mark.parametrize("name,release", [("arm64-debian61-boot-test.log", "6.1.0-56-arm64"),
                                          ("arm64-smoke612-boot-test.log", "6.12.117-neonvm-smoke")])
def test_arm64_boot_through_uefi_reaches_shell(console, name, release):
    con, guest = console
    guest.sendall(guest_output(name))  # firmware escape sequences and all
    assert con.wait(boottest.READY_RE, timeout=5, step="boot").group(1) == release


def test_panic_fails_fast_with_last_lines(console):
    con, guest = console
    guest.sendall(guest_output("amd64-debian61-panic-no-init.log"))  # the socket stays open: no EOF
    start = time.monotonic()
    with pytest.raises(GuestCrashed) as exc:
        con.wait(boottest.READY_RE, timeout=60, step="boot", what="the shell")
    assert time.monotonic() - start < 5
    assert "Kernel panic - not syncing" in str(exc.value) or "Call Trace" in str(exc.value)
    assert any("end Kernel panic" in ln for ln in exc.value.tail)
    assert con.crashed or "Call Trace" in str(exc.value)


def test_panic_line_wins_and_later_waits_fail_at_once(console):
    con, guest = console
    guest.sendall(b"Run /init as init process\r\nKernel panic - not syncing: No working init found.\r\n"
                  b"---[ end Kernel panic - not syncing: No working init found. ]---\r\n")
    with pytest.raises(GuestCrashed, match="No working init found"):
        con.wait(boottest.READY_RE, timeout=30, step="boot")
    start = time.monotonic()
    with pytest.raises(GuestCrashed, match="panicked earlier"):
        con.run("true", step="next", timeout=30)
    assert time.monotonic() - start < 1


def test_warning_is_a_failure(console):
    con, guest = console
    guest.sendall(b"[  5.1] ------------[ cut here ]------------\r\n"
                  b"[  5.1] WARNING: CPU: 1 PID: 42 at mm/memory_hotplug.c:1234 offline_pages+0x1/0x2\r\n"
                  b"[  5.2] ---[ end trace 0000000000000000 ]---\r\n")
    with pytest.raises(GuestCrashed, match="WARNING: CPU: 1"):
        con.wait("never", timeout=30, step="x")
    assert con.crashed is None  # a warning is a failure, but the kernel lives on


def test_hang_times_out_with_last_lines(console):
    con, guest = console
    guest.sendall(guest_output("amd64-debian61-hang.log"))
    start = time.monotonic()
    with pytest.raises(GuestTimeout) as exc:
        con.wait(boottest.READY_RE, timeout=1, step="boot", what="the shell")
    assert 0.9 < time.monotonic() - start < 5
    assert "timed out after 1s waiting for the shell" in str(exc.value)
    assert exc.value.tail[-1] == "test init: about to hang"


def test_eof_is_the_vms_verdict(console):
    con, guest = console
    guest.sendall(b"early boot\r\n")
    guest.close()
    with pytest.raises(QemuDied):
        con.wait(boottest.READY_RE, timeout=30, step="boot")


def test_scan_failures_on_clean_and_panicked_logs():
    assert scan_failures((CONSOLE / "amd64-debian61-boot-test.log").read_text()) == []
    bad = scan_failures((CONSOLE / "amd64-debian61-panic-no-init.log").read_text())
    assert any(b.startswith("Kernel panic - not syncing: VFS") for b in bad) and "Call Trace:" in bad


class FakeShell(threading.Thread):
    """Plays busybox ash on the console: echoes the line (as line editing does), runs the command
    from a table, prints the output between the markers."""

    LINE = re.compile(r"""echo '@@B''(\d+)@@'; (.*); echo "@@E""\1:\$\?@@"$""")

    def __init__(self, sock, table):
        super().__init__(daemon=True)
        self.sock, self.table, self.seen = sock, table, []

    def run(self):
        buf = b""
        while True:
            try:
                data = self.sock.recv(4096)
            except OSError:
                return
            if not data:
                return
            buf += data
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                text = line.decode()
                m = self.LINE.match(text)
                reply = f"# {text}\r\n"
                if m:
                    self.seen.append(m.group(2))
                    rc, out = self.table.get(m.group(2), (127, f"sh: {m.group(2)}: not found"))
                    reply += f"@@B{m.group(1)}@@\r\n" + "".join(f"{ln}\r\n" for ln in out.splitlines())
                    reply += f"@@E{m.group(1)}:{rc}@@\r\n"
                self.sock.sendall(reply.encode())


def test_run_returns_output_and_status(console):
    con, guest = console
    shell = FakeShell(guest, {"uname -r": (0, "6.12.117-neonvm"), "cat /x": (1, "cat: can't open '/x'"),
                              "dmesg": (0, "[ 1.0] WARNING: CPU: 0 PID: 1 at x\n[ 1.1] ok")})
    shell.start()
    assert con.run("uname -r", step="t") == (0, "6.12.117-neonvm")
    assert con.run("cat /x", step="t", check=False) == (1, "cat: can't open '/x'")
    with pytest.raises(CheckFailed, match="exited 1"):
        con.run("cat /x", step="t")
    # dmesg is read without watching failure patterns: it is scanned afterwards instead
    rc, out = con.run("dmesg", step="t", watch=False)
    assert rc == 0 and "WARNING" in out
    assert shell.seen == ["uname -r", "cat /x", "cat /x", "dmesg"]
