"""The boot test's userspace: a small, deterministic initramfs per architecture.

It holds Debian's static busybox, an ``/init`` script that mounts the API filesystems, starts
busybox ``acpid`` (the ACPI power button powers the guest off, as the NeonVM guest's acpid does
after stopping Postgres) and leaves a shell on the console for pexpect, ``phc-read``, a tiny static
C program that reads a PTP hardware clock (busybox has no PHC reader), and ``contract-probe``
(harness/boot/probe/contract-probe.c), which asks the kernel for what a compute's userspace needs.
The archive is ``cpio -H newc`` with sorted names, mtime 0 and owner root, so the same inputs
always give the same bytes; it is cached under
``layout.cache_root()/initramfs/`` by the hash of those inputs.

busybox comes from the host's ``busybox-static`` package when the host runs that architecture, and
otherwise from Debian's archive for the foreign architecture, fetched with a private apt state so
that the host's configured architectures are not changed (``harness/foreign.py``).
"""
from __future__ import annotations

import hashlib
import logging
import os
import shutil
import stat
import tempfile
from pathlib import Path

from harness import foreign, fsutil, layout, proc
from harness.arch import Arch
from harness.errors import InfraError
from harness.tools import elf

LOG = logging.getLogger(__name__)

FORMAT_VERSION = "2"  # bump when the layout of the archive changes
READY_MARKER = "@@NEONVM-TEST-INIT-READY@@"
POWER_MARKER = "@@NEONVM-POWER-BUTTON@@"
PROBE_SOURCE = Path(__file__).resolve().parent / "probe" / "contract-probe.c"
MEMHOG_SOURCE = PROBE_SOURCE.with_name("memhog.c")
CONTRACT_PATTERNS = "/etc/contract-options"  # grep -f patterns: the contract's options in a .config
HOST_BUSYBOX = Path("/bin/busybox")  # from the busybox-static package (configs/host-packages.txt)

INIT_SCRIPT = f"""#!/bin/busybox sh
# /init of the NeonVM kernel boot test: API filesystems, then a shell on the console for pexpect.
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sysfs /sys
/bin/busybox --install -s
export PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root TERM=dumb PS1='# '
mount -t devtmpfs devtmpfs /dev 2>/dev/null || mdev -s
mount -t tmpfs -o mode=1777 tmpfs /tmp
mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
# The ACPI power button (QMP system_powerdown) reaches acpid through evdev: /etc/acpi/PWRF/
acpid -l /tmp/acpid.log 2>/dev/null
# Kernel messages of level warning and worse still reach the console (the harness watches them).
dmesg -n 5 2>/dev/null
stty cols 4096 2>/dev/null
echo "{READY_MARKER} $(uname -r)"
exec setsid cttyhack sh
"""

PHC_READ_C = r"""
/* phc-read DEVICE: print the PTP hardware clock's time and CLOCK_REALTIME, in seconds. */
#include <fcntl.h>
#include <stdio.h>
#include <time.h>
#include <unistd.h>
#define FD_TO_CLOCKID(fd) ((~(clockid_t)(fd) << 3) | 3)
int main(int argc, char **argv) {
    struct timespec phc, rt;
    int fd = open(argc > 1 ? argv[1] : "/dev/ptp0", O_RDONLY);
    if (fd < 0) { perror("open"); return 2; }
    if (clock_gettime(FD_TO_CLOCKID(fd), &phc)) { perror("clock_gettime(phc)"); return 3; }
    clock_gettime(CLOCK_REALTIME, &rt);
    printf("phc %lld.%09ld realtime %lld.%09ld\n", (long long)phc.tv_sec, phc.tv_nsec,
           (long long)rt.tv_sec, rt.tv_nsec);
    return 0;
}
"""

POWER_SCRIPT = f"""#!/bin/sh
# busybox acpid runs this for the power button: NeonVM's guest stops Postgres here, then powers off.
echo "{POWER_MARKER} acpid: power button, powering off" > /dev/console
sync
poweroff -f
"""

DIRS = ("bin", "dev", "etc", "etc/acpi", "etc/acpi/PWRF", "mnt", "proc", "root", "sbin", "sys", "tmp", "usr",
        "usr/bin", "usr/sbin")


def contract_patterns() -> str:
    """One grep pattern per option of configs/contract.toml (every arch): the contract-config check
    reads only these lines of /proc/config.gz, so little has to cross the console."""
    from harness.kernel import contract

    symbols = sorted({o for c in contract.load().capabilities for o in c.options})
    return "".join(f"^CONFIG_{s}=\n" for s in symbols)


def _usable_busybox(path: Path, arch: Arch) -> bool:
    if not path.is_file():
        return False
    try:
        info = elf.parse_file(path)
    except elf.InvalidElf:
        return False
    return info.e_machine == arch.elf_machine and info.static


def host_debian_arch() -> str:
    return proc.capture(["dpkg", "--print-architecture"], step="initramfs").strip()


def busybox(arch: Arch) -> Path:
    """A static busybox binary for ``arch``: the host's, or one fetched from Debian's archive."""
    if host_debian_arch() == arch.debian_arch:
        if not _usable_busybox(HOST_BUSYBOX, arch):
            raise InfraError(f"{HOST_BUSYBOX} is missing or not a static {arch.elf_machine_name} binary; "
                             "install busybox-static (./bootstrap does)", step="initramfs")
        return HOST_BUSYBOX
    return fetch_busybox(arch)


def fetch_busybox(arch: Arch) -> Path:
    """Download Debian's busybox-static for a foreign architecture into the cache (once)."""
    base = layout.cache_root() / "busybox" / arch.debian_arch
    target = base / "busybox"
    if _usable_busybox(target, arch):
        return target
    log = base / "fetch.log"
    step = f"busybox-{arch.name}"
    with fsutil.exclusive_lock(base / ".lock", step=step, what=f"busybox cache for {arch.name}"):
        with tempfile.TemporaryDirectory(dir=base) as tmp:
            root = Path(tmp) / "root"
            (deb,) = foreign.download_and_unpack(arch.debian_arch, ["busybox-static"], root, step=step, log=log)
            binary = root / "bin" / "busybox"
            if not _usable_busybox(binary, arch):
                raise InfraError(f"{deb} holds no static {arch.elf_machine_name} busybox", step=step, log=log)
            fsutil.atomic_copy(binary, target)
            fsutil.atomic_write_text(base / "source.txt", deb + "\n")
    target.chmod(0o755)
    return target


def compile_static(arch: Arch, source_text: str, dest: Path, log: Path) -> None:
    """A static binary for ``arch`` from one C file (cross-compiled where the arch is foreign)."""
    src = dest.with_suffix(".c")
    src.write_text(source_text)
    proc.require_tool(arch.cross_gcc, step="initramfs", hint=f"install gcc-{arch.gnu_triplet} (./bootstrap does)")
    proc.run([arch.cross_gcc, "-static", "-O2", "-Wall", "-s", "-o", dest, src], step=f"{dest.name}-{arch.name}",
             log=log, timeout=120)
    src.unlink()


def _stage(arch: Arch, root: Path, init_text: str, log: Path) -> None:
    for d in DIRS:
        (root / d).mkdir(parents=True, exist_ok=True)
    shutil.copyfile(busybox(arch), root / "bin" / "busybox")
    (root / "init").write_text(init_text)
    compile_static(arch, PHC_READ_C, root / "bin" / "phc-read", log)
    compile_static(arch, PROBE_SOURCE.read_text(), root / "bin" / "contract-probe", log)
    compile_static(arch, MEMHOG_SOURCE.read_text(), root / "bin" / "memhog", log)
    (root / "etc" / "acpi" / "PWRF" / "00000080").write_text(POWER_SCRIPT)
    (root / CONTRACT_PATTERNS.lstrip("/")).write_text(contract_patterns())
    try:
        os.mknod(root / "dev" / "console", 0o600 | stat.S_IFCHR, os.makedev(5, 1))
    except PermissionError:
        LOG.warning("not root: no /dev/console in the initramfs; /init mounts devtmpfs instead")
    for path in [root, *root.rglob("*")]:
        if path.is_dir():
            path.chmod(0o755)
        elif path.is_file():
            path.chmod(0o755 if path.parent.name in ("bin", "sbin", "PWRF") or path.name == "init" else 0o644)
        os.utime(path, (0, 0), follow_symlinks=False)


def build(arch: Arch, *, init_text: str = INIT_SCRIPT) -> Path:
    """Return the cached test initramfs for ``arch``, building it if its inputs changed."""
    cache = layout.cache_root() / "initramfs"
    cache.mkdir(parents=True, exist_ok=True)
    log = cache / f"{arch.name}.log"
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        root = Path(tmp) / "root"
        _stage(arch, root, init_text, log)
        h = hashlib.sha256(FORMAT_VERSION.encode())
        names = sorted(str(p.relative_to(root)) for p in root.rglob("*"))
        for name in names:
            p = root / name
            h.update(f"{name}\0{p.lstat().st_mode:o}\0".encode())
            if p.is_file() and not p.is_symlink():
                h.update(fsutil.sha256_file(p).encode())
        target = cache / f"{arch.name}-{h.hexdigest()[:16]}.cpio"
        if target.exists():
            return target
        with fsutil.atomic_output(target) as archive:
            proc.run(["cpio", "--quiet", "--reproducible", "--force-local", "-o", "-H", "newc", "-R", "0:0",
                      "-F", str(archive)], step=f"initramfs-{arch.name}", log=log, cwd=root,
                     input_text="".join(n + "\n" for n in [".", *names]), timeout=120)
    LOG.info("built %s", target)
    return target


def early_cpio(files: dict[str, bytes], dest: Path, *, log: Path) -> Path:
    """Write ``files`` (archive path -> content) with their parent directories as an uncompressed
    newc cpio at ``dest``, for the kernel's early scan of the initrd (``kernel/firmware/acpi/*.aml``
    replacement ACPI tables, placed before the compressed or uncompressed initramfs).

    The same approach as :func:`build`: sorted names, mtime 0, owner root (``cpio --reproducible
    -H newc -R 0:0``), files 0644 and directories 0755, so the same files give the same bytes.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    names: set[str] = set()
    for name in files:
        parts = Path(name).parts
        if not parts or Path(name).is_absolute() or ".." in parts:
            raise InfraError(f"early cpio: {name!r} is not a relative path inside the archive", step="early-cpio")
        names.update("/".join(parts[:i]) for i in range(1, len(parts) + 1))
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        root = Path(tmp) / "root"
        root.mkdir()
        for name in sorted(names):
            path = root / name
            if name in files:
                path.write_bytes(files[name])
                path.chmod(0o644)
            else:
                path.mkdir(exist_ok=True)
                path.chmod(0o755)
        for path in [root, *root.rglob("*")]:
            os.utime(path, (0, 0), follow_symlinks=False)
        with fsutil.atomic_output(dest) as archive:
            proc.run(["cpio", "--quiet", "--reproducible", "--force-local", "-o", "-H", "newc", "-R", "0:0",
                      "-F", str(archive)], step="early-cpio", log=log, cwd=root,
                     input_text="".join(n + "\n" for n in sorted(names)), timeout=60)
    return dest
