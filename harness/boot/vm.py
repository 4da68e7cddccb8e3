"""A QEMU VM shaped like the NeonVM runner's: its argv, accelerator, QMP and lifecycle.

* :func:`detect_accel` decides KVM or TCG. An openable ``/dev/kvm`` proves nothing (it may be a
  PVM backend that cannot run a stock kernel), so KVM needs the CPU's virtualisation flag and the
  vendor module as well (both per arch in harness/arch.py).
* :func:`qemu_argv` builds the whole command line from a :class:`VmSpec` and the arch table, in
  one place, so that ``--dry-run`` prints exactly what would run.
* :class:`Vm` is a context manager: the harness listens on the console and QMP sockets before
  QEMU starts, QEMU connects to them, and QEMU is always torn down. Its stdout/stderr go to a log.
  ``Vm(..., incoming=True)`` is a live-migration destination, started like the NeonVM runner's
  target: the very same argv plus ``-incoming`` on a Unix socket in its own run directory
  (:attr:`Vm.migration_uri`), its own console, QMP and logs.
* QMP is :class:`harness.boot.qmp.Qmp` (QEMU's own ``qemu.qmp`` library with the harness' errors
  and event waits): every command and every event wait has a deadline.
"""
from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import platform
import select
import shutil
import signal
import socket
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TextIO

from harness import proc
from harness.arch import Arch
from harness.boot.console import Console, GuestCrashed
from harness.boot.qmp import Qmp
from harness.errors import HarnessError, InfraError, InvalidArgument, QemuDied, ToolMissing
from harness.progress import Timer

LOG = logging.getLogger(__name__)

# The runner's memory hotplug policy, on every kernel command line.
MEMHP_CMDLINE = ("memhp_default_state=online", "memory_hotplug.online_policy=auto-movable",
                 "memory_hotplug.auto_movable_ratio=301")
VIRTIO_MEM_ID = "vm0"  # the VM runner's device id (QOM path /machine/peripheral/vm0)
VIRTIO_MEM_BACKEND = "vmem0"  # and its memory backend's
LOG_PORT_NAME = "tech.neon.log.0"  # the runner's virtio-serial port for the guest's log shipper
DATA_DRIVE_ID = "pgdata"
# The kernel's own IP autoconfiguration, shaped like the runner's ip=<addr>:::<mask>:<host>:<dev>:off
GUEST_IP, GUEST_NETMASK, GUEST_HOSTNAME, GUEST_NETDEV = "10.0.2.15", "255.255.255.0", "neonvm-guest", "eth0"
IP_CMDLINE = f"ip={GUEST_IP}:::{GUEST_NETMASK}:{GUEST_HOSTNAME}:{GUEST_NETDEV}:off"
VIRTIO_MEM_BLOCK = "8M"
TOOLS_DRIVE_ID = "tools"
TCG_SCALE = 3.0  # guest-side timeouts under TCG are this many times the KVM ones
ACCELS = ("auto", "kvm", "tcg")
# SHUTDOWN reasons that mean the guest itself went away (a kernel problem, not the host's).
PR_SET_PDEATHSIG = 1
GUEST_SHUTDOWN_REASONS = ("guest-reset", "guest-shutdown", "guest-panic")


@dataclass(frozen=True)
class Accel:
    name: str  # "kvm" or "tcg"
    reason: str  # why this one was chosen (kept in every report)

    @property
    def scale(self) -> float:
        return 1.0 if self.name == "kvm" else TCG_SCALE


def kvm_unusable_reason(arch: Arch, *, cpuinfo: Path = Path("/proc/cpuinfo"),
                        sys_module: Path = Path("/sys/module"), dev_kvm: Path = Path("/dev/kvm"),
                        machine: str | None = None) -> str | None:
    """Why KVM cannot run a stock ``arch`` kernel on this host, or None when it can."""
    machine = machine or platform.machine()
    if machine != arch.uname_machine:
        return f"host is {machine}, guest is {arch.uname_machine}"
    try:
        fd = os.open(dev_kvm, os.O_RDWR)
        os.close(fd)
    except OSError as exc:
        return f"cannot open {dev_kvm}: {exc.strerror}"
    if arch.kvm_host_cpu_flags:
        flags: set[str] = set()
        try:
            for line in Path(cpuinfo).read_text().splitlines():
                if line.startswith(("flags", "Features")):
                    flags.update(line.split(":", 1)[1].split())
        except OSError as exc:
            return f"cannot read {cpuinfo}: {exc.strerror}"
        if not flags & set(arch.kvm_host_cpu_flags):
            return (f"{dev_kvm} opens but the CPU has no {'/'.join(arch.kvm_host_cpu_flags)} flag "
                    "(not hardware KVM; e.g. a PVM backend that cannot run a stock kernel)")
    if arch.kvm_host_modules and not any((Path(sys_module) / m).is_dir() for m in arch.kvm_host_modules):
        return f"none of the modules {', '.join(arch.kvm_host_modules)} is loaded"
    return None


def detect_accel(arch: Arch, requested: str = "auto", **probe: Any) -> Accel:
    """KVM where a stock kernel really runs on it, otherwise TCG. ``requested="kvm"`` insists."""
    if requested not in ACCELS:
        raise InvalidArgument(f"unknown accelerator {requested!r} (choose from {', '.join(ACCELS)})",
                              step="accel")
    if requested == "tcg":
        return Accel("tcg", "requested")
    why_not = kvm_unusable_reason(arch, **probe)
    if why_not is None:
        return Accel("kvm", "hardware virtualisation available")
    if requested == "kvm":
        raise InfraError(f"KVM requested but not usable: {why_not}", step="accel")
    return Accel("tcg", f"KVM not usable: {why_not}")


@dataclass(frozen=True)
class VmSpec:
    """What to boot and how. Validated when built; nothing runs until :class:`Vm` is entered."""

    arch: Arch
    kernel: Path
    initrd: Path | None  # None: a kernel that mounts its root disk itself (a VM with its own argv)
    accel: Accel
    cpus_min: int = 1  # online at boot (kernel maxcpus=)
    cpus_present: int = 2  # -smp cpus=: present at boot
    cpus_max: int = 4  # -smp maxcpus=
    mem_boot_mib: int = 512
    mem_slots: int = 8
    virtio_mem_mib: int = 1024  # size of the virtio-mem backend (the most it can plug)
    dimm_reserve_mib: int = 512  # room in maxmem for ACPI DIMMs
    tools_img: Path | None = None
    data_disk: Path | None = None  # the Postgres data disk (ext4 with prjquota), when given
    cmdline_extra: tuple[str, ...] = ()
    name: str = "neonvm-boot-test"

    def __post_init__(self) -> None:
        if not 1 <= self.cpus_min <= self.cpus_present <= self.cpus_max:
            raise InvalidArgument(f"need 1 <= cpus_min {self.cpus_min} <= cpus_present {self.cpus_present} "
                                  f"<= cpus_max {self.cpus_max}", step="vm")
        if self.accel.name not in ("kvm", "tcg"):
            raise InvalidArgument(f"accelerator must be resolved, not {self.accel.name!r}", step="vm")

    @property
    def maxmem_mib(self) -> int:
        return self.mem_boot_mib + self.virtio_mem_mib + self.dimm_reserve_mib


def kernel_cmdline(spec: VmSpec) -> str:
    arch = spec.arch
    parts = [f"console={arch.console}", *arch.kernel_cmdline_extra, f"maxcpus={spec.cpus_min}",
             *MEMHP_CMDLINE, IP_CMDLINE, *spec.cmdline_extra]
    return " ".join(parts)


def qemu_argv(spec: VmSpec, *, console_sock: Path | str, qmp_sock: Path | str, log_port: Path | str,
              early_log: Path | str, incoming: str | None = None) -> list[str]:
    """The QEMU command line, shaped like the NeonVM runner's. The one place it is built.

    ``log_port`` receives what the guest writes to the runner's log port (tech.neon.log.0);
    ``early_log`` what the first UART prints where the console is a virtconsole (earlycon).
    ``incoming`` (a migration URI such as ``unix:/run/x/migrate.sock``) makes it a live-migration
    destination, like the runner's target pod: the same machine, devices and drives (QEMU opens the
    images inactive and takes their locks over when the migration completes) plus ``-incoming``.
    """
    arch = spec.arch
    cpu = arch.qemu_cpu_kvm if spec.accel.name == "kvm" else arch.qemu_cpu_tcg
    argv = [
        arch.qemu_binary,
        "-name", spec.name,
        "-machine", arch.qemu_machine,
        "-accel", spec.accel.name,
        "-cpu", cpu,
        "-smp", f"cpus={spec.cpus_present},maxcpus={spec.cpus_max},sockets=1,cores={spec.cpus_max},threads=1",
        "-m", f"size={spec.mem_boot_mib}M,slots={spec.mem_slots},maxmem={spec.maxmem_mib}M",
        "-object", f"memory-backend-ram,id={VIRTIO_MEM_BACKEND},size={spec.virtio_mem_mib}M",
        "-device", f"virtio-mem-pci,id={VIRTIO_MEM_ID},memdev={VIRTIO_MEM_BACKEND},"
                   f"block-size={VIRTIO_MEM_BLOCK},requested-size=0",
        "-no-reboot",
        "-nodefaults",
        "-no-user-config",
        "-display", "none",
        "-chardev", f"socket,id=qmp,path={qmp_sock}",
        "-mon", "chardev=qmp,mode=control",
        "-chardev", f"socket,id=console,path={console_sock}",
        "-device", "virtio-serial-pci,id=virtio-serial0",
        "-chardev", f"file,id=log,path={log_port}",
        "-device", f"virtserialport,chardev=log,name={LOG_PORT_NAME}",
        "-netdev", "user,id=net0,restrict=on",
        "-device", "virtio-net-pci,netdev=net0,mac=52:54:00:4e:56:4d",
    ]
    if arch.console_device == "serial":  # the runner's console is the second UART (ttyS1)
        argv += ["-serial", "null", "-serial", "chardev:console"]
    else:
        argv += ["-serial", f"file:{early_log}", "-device", "virtconsole,chardev=console"]
    if arch.firmware:
        argv += ["-bios", arch.firmware]
    if spec.initrd is None:
        raise InvalidArgument("the boot test's VM boots an initramfs: no initrd given", step="vm")
    argv += ["-kernel", str(spec.kernel), "-initrd", str(spec.initrd), "-append", kernel_cmdline(spec)]
    if spec.tools_img:
        argv += ["-drive", f"id={TOOLS_DRIVE_ID},file={spec.tools_img},if=none,format=raw,readonly=on",
                 "-device", f"virtio-blk-pci,drive={TOOLS_DRIVE_ID},id={TOOLS_DRIVE_ID}-blk"]
    if spec.data_disk:
        argv += ["-drive", f"id={DATA_DRIVE_ID},file={spec.data_disk},if=none,format=raw",
                 "-device", f"virtio-blk-pci,drive={DATA_DRIVE_ID},id={DATA_DRIVE_ID}-blk"]
    if incoming:
        argv += ["-incoming", incoming]
    return argv


def _die_with_harness() -> None:
    """Runs in the QEMU child before exec: if the harness itself is killed (SIGKILL, OOM) and cannot
    tear QEMU down, the kernel kills QEMU (PR_SET_PDEATHSIG), so no VM outlives its test."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


@dataclass(eq=False)  # one QEMU process: equal only to itself
class Vm:
    """One QEMU run. ``with Vm(spec, log_dir=..., tag=...) as vm:`` launches; exit tears down."""

    spec: VmSpec
    log_dir: Path
    tag: str = "boot"
    incoming: bool = False  # a live-migration destination: waits for the guest on migration_uri
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False)
    started: float = field(default=0.0, init=False)

    def __post_init__(self) -> None:
        self._rundir: Path | None = None  # holds the sockets; removed at shutdown
        self._listener: socket.socket | None = None
        self._qemu_logfh: TextIO | None = None
        self._console: Console | None = None
        self._qmp: Qmp | None = None

    @property
    def console(self) -> Console:
        """The guest's console, from launch to shutdown."""
        if self._console is None:
            raise InfraError(f"VM {self.tag} has no console (not launched, or shut down)", step="qemu")
        return self._console

    @property
    def qmp(self) -> Qmp:
        """QEMU's QMP connection, from launch to shutdown."""
        if self._qmp is None:
            raise InfraError(f"VM {self.tag} has no QMP connection (not launched, or shut down)", step="qemu")
        return self._qmp

    def console_tail(self) -> list[str]:
        """The console's last lines; none when the console never connected."""
        return self._console.tail() if self._console is not None else []

    @property
    def console_log(self) -> Path:
        return self.log_dir / f"{self.tag}.console.log"

    @property
    def qemu_log(self) -> Path:
        return self.log_dir / f"{self.tag}.qemu.log"

    @property
    def log_port_log(self) -> Path:
        """What the guest wrote to the runner's log port (tech.neon.log.0)."""
        return self.log_dir / f"{self.tag}.logport.log"

    @property
    def early_log(self) -> Path:
        return self.log_dir / f"{self.tag}.early.log"

    def argv(self, rundir: Path | str) -> list[str]:
        rundir = Path(rundir)
        return qemu_argv(self.spec, console_sock=rundir / "console.sock", qmp_sock=rundir / "qmp.sock",
                         log_port=self.log_port_log, early_log=self.early_log,
                         incoming=self.incoming_uri(rundir) if self.incoming else None)

    @staticmethod
    def incoming_uri(rundir: Path | str) -> str:
        """Where a destination listens for the migration stream (a socket in its own run directory)."""
        return f"unix:{Path(rundir) / 'migrate.sock'}"

    @property
    def migration_uri(self) -> str:
        """The URI to give the source's QMP ``migrate``; only for a launched ``incoming`` Vm."""
        if not self.incoming or self._rundir is None:
            raise InfraError(f"VM {self.tag} is not a launched migration destination", step="migration")
        return self.incoming_uri(self._rundir)

    # -- lifecycle -------------------------------------------------------------------------------
    def __enter__(self) -> Vm:
        try:
            self.launch()
        except BaseException:
            self.shutdown()
            raise
        return self

    def __exit__(self, *exc: object) -> Literal[False]:
        self.shutdown()
        return False

    def launch(self) -> None:
        binary = self.spec.arch.qemu_binary
        if not shutil.which(binary):
            raise ToolMissing(f"{binary} not found; install it (./bootstrap does)", step="qemu")
        for path in (self.spec.kernel, self.spec.initrd, self.spec.tools_img, self.spec.data_disk,
                     self.spec.arch.firmware):
            if path and not Path(path).is_file():
                raise InfraError(f"{path} does not exist", step="qemu")
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.console_log.write_text("")
        self._rundir = Path(tempfile.mkdtemp(prefix="neonvm-vm-"))
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(str(self._rundir / "console.sock"))
        self._listener.listen(1)
        qmp = self._qmp = Qmp(self._rundir / "qmp.sock", name=self.spec.name, on_lost=self.lost_error)
        argv = self.argv(self._rundir)
        logfh = self._qemu_logfh = open(self.qemu_log, "w")
        logfh.write(f"$ {proc.quote(argv)}\n")
        logfh.flush()
        LOG.info("[qemu] $ %s", proc.quote(argv))
        self.clock = Timer.begin()  # since QEMU was started
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=logfh,
                                     stderr=subprocess.STDOUT, start_new_session=True,
                                     preexec_fn=_die_with_harness)
        conn = self._accept_console(self.proc, self._listener, timeout=30)
        console = self._console = Console(conn.detach(), self.console_log, on_eof=self.lost_error,
                                          scale=self.spec.accel.scale)
        console.note(f"QEMU started ({self.spec.accel.name}): {proc.quote(argv)}")
        qmp.accept(timeout=30)

    def _accept_console(self, qemu: subprocess.Popen[bytes], listener: socket.socket, *,
                        timeout: float) -> socket.socket:
        """Accept QEMU's console connection, or notice at once that QEMU exited instead."""
        pidfd = os.pidfd_open(qemu.pid)
        try:
            ready, _, _ = select.select([listener.fileno(), pidfd], [], [], timeout)
        finally:
            os.close(pidfd)
        if listener.fileno() in ready:
            conn, _ = listener.accept()
            return conn
        if qemu.poll() is not None:
            raise QemuDied(f"QEMU exited {qemu.returncode} before connecting: "
                           f"{self._qemu_last_line() or '(no output)'}", step="qemu", log=self.qemu_log)
        raise InfraError(f"QEMU did not connect its console within {timeout:.0f}s", step="qemu", log=self.qemu_log)

    def _qemu_last_line(self) -> str:
        lines = self.qemu_tail(1)
        return lines[-1][:300] if lines else ""

    def qemu_tail(self, n: int = 5) -> list[str]:
        """The last lines QEMU itself printed (its stderr/stdout log, without the argv line)."""
        if self._qemu_logfh is not None and not self._qemu_logfh.closed:
            self._qemu_logfh.flush()
        try:
            text = self.qemu_log.read_text(errors="replace")
        except FileNotFoundError:
            return []
        lines = [ln.strip() for ln in text.splitlines()[1:] if ln.strip() and not ln.startswith("### QEMU exit")]
        return lines[-n:]

    def lost_error(self) -> HarnessError:
        """The error for a console or QMP connection that closed under us.

        A guest that reset, shut down or panicked (QMP SHUTDOWN with a guest-* reason; -no-reboot
        makes QEMU exit) is the kernel's failure; anything else (killed, QMP quit, crash) is
        QEMU's, i.e. infrastructure.
        """
        rc = None
        if self.proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                rc = self.proc.wait(timeout=5)
        reasons: list[str] = []
        if self._qmp is not None:
            with contextlib.suppress(Exception):
                reasons = [e.get("data", {}).get("reason", "") for e in self._qmp.drain(0.5)
                           if e["event"] == "SHUTDOWN"]
            reasons += [e.get("data", {}).get("reason", "") for e in self._qmp.events if e["event"] == "SHUTDOWN"]
        guest = [r for r in reasons if r in GUEST_SHUTDOWN_REASONS]
        tail = self.console_tail()
        if guest:
            return GuestCrashed(f"the guest went away by itself ({guest[0]}; QEMU runs with -no-reboot)",
                                step="qemu", log=self.console_log, tail=tail)
        state = "still running" if rc is None else f"exit status {rc}"
        why = f"; shutdown reason {reasons[0]}" if reasons else ""
        said = self._qemu_last_line()
        return QemuDied(f"QEMU went away mid-test ({state}{why})" + (f": {said}" if said else ""),
                        step="qemu", log=self.qemu_log)

    def kill(self) -> None:
        """Kill QEMU now (the negative test of 'QEMU died mid-test' uses it)."""
        if self.proc and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, 9)

    def shutdown(self) -> None:
        """Stop QEMU and release everything. Safe to call more than once, and after a failed launch."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.kill()
                self.proc.wait()
        if self._qmp is not None:
            self._qmp.close()
            self._qmp = None
        if self._console is not None:
            self._console.close()
            self._console = None
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        fh = self._qemu_logfh
        if fh is not None and not fh.closed:
            if self.proc is not None:
                fh.write(f"### QEMU exit status {self.proc.returncode}\n")
            fh.close()
        if self._rundir is not None:
            shutil.rmtree(self._rundir, ignore_errors=True)
            self._rundir = None
