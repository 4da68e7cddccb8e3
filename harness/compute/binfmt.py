"""Running a foreign architecture's binaries on this host: a binfmt_misc handler for qemu-user.

The compute image for a foreign guest (arm64 on an amd64 host) is made by ``mmdebstrap --mode=root``,
which runs the guest's maintainer scripts, ``update-initramfs`` and the image's customize hooks
(``chroot ... busybox --install``, ``initdb``) inside the new root. The kernel hands those binaries to
``qemu-aarch64-static`` through a binfmt_misc handler; with the ``F`` flag it opens the interpreter
when the handler is registered, so the interpreter need not exist inside the chroot (mmdebstrap looks
for exactly ``/proc/sys/fs/binfmt_misc/qemu-aarch64`` with ``F`` and then copies nothing in).

:func:`ensure` mounts binfmt_misc when it is not mounted and registers the handler when there is none,
under Debian's name ``qemu-aarch64`` with the magic, mask and flags (``OPF``) of Debian's
qemu-user-static (``/usr/lib/binfmt.d/qemu-aarch64.conf``; the same magic/mask as QEMU's
``scripts/qemu-binfmt-conf.sh``), the interpreter being a static qemu-aarch64 from this host or
fetched once into the cache (:func:`qemu_user_static`, through ``harness.foreign``'s private apt
state; the release test's arm64 ``cp`` check keeps the same file). A registration that is already
there and usable (enabled, ``F``) is left alone, whoever made it. Every failure is an InfraError
naming what could not be done (not root, mount, register, a handler that is there but unusable).

Why the harness registers the handler instead of listing ``qemu-user-static`` in
``configs/host-packages.txt``: Debian 12's package does not register anything on the hosts this runs
on. Its postinst calls ``update-binfmts --import`` only when binfmt-support is installed (the package
merely Recommends ``systemd | binfmt-support``; ``./bootstrap`` installs without recommends), and it
returns early inside a container (``systemd-detect-virt --container``, or ``container=`` in PID 1's
environment), which is where CI and these hosts run (``systemd-detect-virt``: docker). Its
``/usr/lib/binfmt.d/*.conf`` are read only by ``systemd-binfmt.service``, which does not run without
systemd. It would also put 60 MB of emulators for 30 architectures on every host for one file.
``arch-test`` (mmdebstrap's own check that a foreign arch runs, also :func:`verify`) is listed there
instead: mmdebstrap only Recommends it. Registration is kernel state, not package state: it lasts
until the host reboots (or someone writes ``-1`` to the entry), so the harness checks it on every
foreign image build.
"""
from __future__ import annotations

import os
import platform
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from harness import foreign, layout, proc
from harness.arch import Arch, get_arch
from harness.errors import InfraError, UnsupportedArch
from harness.tools import elf

STEP = "compute-binfmt"
PROC_DIR = Path("/proc/sys/fs/binfmt_misc")
# Debian qemu-user-static's flags: O (the kernel opens the binary, so unreadable ones run too),
# P (argv[0] preserved: busybox applets through symlinks), F (interpreter opened at registration:
# usable inside a chroot that does not have it).
FLAGS = "OPF"
QEMU_PACKAGE = "qemu-user-static"


@dataclass(frozen=True)
class Handler:
    name: str  # the entry's name under binfmt_misc (mmdebstrap looks for qemu-<qemu arch>)
    qemu_arch: str  # qemu-<qemu_arch>-static
    magic: bytes  # the first bytes of an ELF executable for the arch ...
    mask: bytes  # ... compared under this mask

    @property
    def interpreter_name(self) -> str:
        return f"qemu-{self.qemu_arch}-static"


# The first 20 bytes of an ELF64 little-endian executable (version 1, any OS ABI, e_type ET_EXEC or
# ET_DYN through the mask's \xfe) for e_machine; the same magic and mask as Debian's qemu-user-static.
ELF64_LE_EXEC = b"\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00"
ELF64_LE_MASK = b"\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff"


def host_arch(machine: str | None = None) -> Arch:
    try:
        return get_arch(machine or platform.machine())
    except UnsupportedArch as exc:
        raise InfraError(f"this host's architecture {machine or platform.machine()!r} is not one the harness "
                         "knows", step=STEP) from exc


def is_foreign(arch: Arch, *, machine: str | None = None) -> bool:
    """True when ``arch``'s binaries cannot run natively here (the image build needs emulation)."""
    return arch.debian_arch != host_arch(machine).debian_arch


def handler(arch: Arch) -> Handler:
    """The qemu-user handler for ``arch``'s binaries, from the arch table (its ELF machine and QEMU name)."""
    qemu_arch = arch.qemu_binary.removeprefix("qemu-system-")
    return Handler(name=f"qemu-{qemu_arch}", qemu_arch=qemu_arch,
                   magic=ELF64_LE_EXEC + arch.elf_machine.to_bytes(2, "little"), mask=ELF64_LE_MASK)


def _escape(data: bytes) -> str:
    return "".join(f"\\x{b:02x}" for b in data)


def registration(h: Handler, interpreter: Path) -> str:
    """The line written to binfmt_misc's ``register``: ``:name:M::magic:mask:interpreter:flags``."""
    text = str(interpreter)
    if not interpreter.is_absolute() or any(c in text for c in ":\n\0") or len(text) > 255:
        raise InfraError(f"cannot register {text!r} as a binfmt_misc interpreter (it must be an absolute path "
                         "without ':' or newlines, at most 255 characters)", step=STEP)
    return f":{h.name}:M::{_escape(h.magic)}:{_escape(h.mask)}:{text}:{FLAGS}"


@dataclass(frozen=True)
class Entry:
    """An entry as binfmt_misc shows it (``/proc/sys/fs/binfmt_misc/<name>``)."""

    enabled: bool
    interpreter: str
    flags: str
    magic: str  # hex, as the kernel prints it
    mask: str

    @classmethod
    def parse(cls, text: str) -> Entry:
        fields: dict[str, str] = {}
        enabled = False
        for line in text.splitlines():
            line = line.strip()
            if line in ("enabled", "disabled"):
                enabled = line == "enabled"
            elif " " in line:
                key, value = line.split(" ", 1)
                fields[key.rstrip(":")] = value.strip()
            elif line.endswith(":"):  # "flags: " with no flags
                fields[line.rstrip(":")] = ""
        return cls(enabled=enabled, interpreter=fields.get("interpreter", ""), flags=fields.get("flags", ""),
                   magic=fields.get("magic", ""), mask=fields.get("mask", ""))

    def matches(self, h: Handler) -> bool:
        return self.magic == h.magic.hex() and (not self.mask or self.mask == h.mask.hex())


def _mounted(proc_dir: Path) -> bool:
    return (proc_dir / "register").exists()


def mount(proc_dir: Path = PROC_DIR, *, log: Path | None = None) -> None:
    """Mount binfmt_misc on ``proc_dir`` unless it is mounted already."""
    if _mounted(proc_dir):
        return
    if os.geteuid() != 0:
        raise InfraError(f"binfmt_misc is not mounted on {proc_dir} and mounting it needs root (run as root, or "
                         f"mount -t binfmt_misc binfmt_misc {proc_dir} first)", step=STEP)
    try:
        proc.capture(["mount", "-t", "binfmt_misc", "binfmt_misc", proc_dir], step=STEP, log=log, timeout=30)
    except InfraError as exc:
        raise InfraError(f"cannot mount binfmt_misc on {proc_dir} ({exc.message}); a container needs "
                         "binfmt_misc mounted by its host, or more privileges", step=STEP, log=log) from exc
    if not _mounted(proc_dir):
        raise InfraError(f"mounted binfmt_misc on {proc_dir} but it has no register file", step=STEP, log=log)


def write_register(register: Path, line: str) -> None:
    """One write of the whole line (binfmt_misc parses each write as one registration)."""
    with open(register, "w") as fh:
        fh.write(line)


def usable(entry: Entry, h: Handler) -> str | None:
    """Why an existing entry cannot serve the image build (None: it can)."""
    if not entry.enabled:
        return "it is disabled"
    if "F" not in entry.flags:
        return (f"it has no F flag (flags {entry.flags or 'none'}): its interpreter {entry.interpreter} would be "
                "looked up inside the chroot")
    if not entry.matches(h):
        return f"its magic {entry.magic} is not the {h.qemu_arch} ELF magic {h.magic.hex()}"
    return None


def ensure(arch: Arch, *, proc_dir: Path = PROC_DIR, interpreter: Path | None = None,
           log: Path | None = None) -> str:
    """Make ``arch``'s binaries runnable here through binfmt_misc (idempotent). Returns what it did:
    ``"existing"`` (a usable handler was there, left alone) or ``"registered <interpreter>"``."""
    h = handler(arch)
    mount(proc_dir, log=log)
    status = proc_dir / "status"
    if status.is_file() and status.read_text().strip() == "disabled":
        raise InfraError(f"binfmt_misc is disabled on this host ({status} says disabled; echo 1 > {status} "
                         "enables it)", step=STEP)
    entry_path = proc_dir / h.name
    if entry_path.exists():
        entry = Entry.parse(entry_path.read_text())
        why = usable(entry, h)
        if why is None:
            return "existing"
        raise InfraError(f"a binfmt_misc handler {h.name} is registered but unusable for the image build: {why}. "
                         f"The harness leaves it alone: remove it (echo -1 > {entry_path}) and the harness "
                         "registers its own, or register it again with the F flag", step=STEP)
    if os.geteuid() != 0:
        raise InfraError(f"registering the binfmt_misc handler {h.name} needs root", step=STEP)
    line = registration(h, interpreter if interpreter is not None else qemu_user_static(h, log=log))
    try:
        write_register(proc_dir / "register", line)
    except OSError as exc:
        raise InfraError(f"cannot register the binfmt_misc handler {h.name} ({exc.strerror or exc}); "
                         f"the line was {line}", step=STEP, log=log) from exc
    if not entry_path.exists():
        raise InfraError(f"registered {h.name} but {entry_path} did not appear", step=STEP, log=log)
    why = usable(Entry.parse(entry_path.read_text()), h)
    if why is not None:
        raise InfraError(f"registered {h.name} but the kernel shows it unusable: {why}", step=STEP, log=log)
    return f"registered {line.split(':')[6]}"


def verify(arch: Arch, *, log: Path | None = None) -> None:
    """``arch-test ARCH``: the check mmdebstrap itself makes (it also needs the tool), with our step name."""
    proc.require_tool("arch-test", step=STEP, hint="apt-get install -y arch-test")
    try:
        said = proc.capture(["arch-test", arch.debian_arch], step=STEP, log=log, timeout=60).strip()
    except InfraError as exc:
        said = exc.message
    if said != f"{arch.debian_arch}: ok":
        raise InfraError(f"{arch.debian_arch} binaries do not run here through binfmt_misc (arch-test: {said})",
                         step=STEP, log=log)


# -- the interpreter ------------------------------------------------------------------------------------
def cached_interpreter(h: Handler) -> Path:
    """Where the fetched interpreter is kept (the release test's arm64 ``cp`` check uses the same file)."""
    return layout.cache_root() / "qemu-user" / h.interpreter_name


def _static_for_host(path: Path, host: Arch) -> bool:
    try:
        info = elf.parse_file(path)
    except (OSError, elf.InvalidElf):
        return False
    return info.static and info.e_machine == host.elf_machine and os.access(path, os.X_OK)


def qemu_user_static(h: Handler, *, log: Path | None = None) -> Path:
    """A static ``qemu-<arch>-static`` for this host: installed, cached, or fetched into the cache from the
    host's archive (``harness.foreign``'s private apt state; one file kept of the package)."""
    host = host_arch()
    installed = shutil.which(h.interpreter_name)
    if installed and _static_for_host(Path(installed), host):
        return Path(installed).resolve()
    cached = cached_interpreter(h)
    if _static_for_host(cached, host):
        return cached
    cached.parent.mkdir(parents=True, exist_ok=True)
    fetch_log = log or cached.parent / "fetch.log"
    with tempfile.TemporaryDirectory(dir=cached.parent, prefix=".fetch-") as tmp:
        root = Path(tmp) / "root"
        try:
            foreign.download_and_unpack(host.debian_arch, [QEMU_PACKAGE], root, step=STEP, log=fetch_log)
        except InfraError as exc:
            raise InfraError(f"cannot fetch {QEMU_PACKAGE} for the {h.name} binfmt handler: {exc.message}",
                             step=STEP, log=fetch_log) from exc
        binary = root / "usr" / "bin" / h.interpreter_name
        if not _static_for_host(binary, host):
            raise InfraError(f"{QEMU_PACKAGE} has no static {h.interpreter_name} for {host.name}", step=STEP,
                             log=fetch_log)
        os.replace(binary, cached)
    return cached
