"""The compute VM as the NeonVM runner starts it: the shape (min/max CPUs, memory slots, CPU scaling
mode), the disks it attaches and QEMU's command line, built here in one place.

Runner facts (docs in /work/shared/NEONVM.md): ``-smp cpus=MIN,maxcpus=MAX,sockets=1,cores=MAX,threads=1``
in QMP mode, all MAX present and ``maxcpus=MIN`` on the kernel command line in sysfs mode;
``-m size=SLOT*MIN,slots=MAX-MIN,maxmem=SLOT*MAX`` and, when MAX > MIN, a virtio-mem device of
``SLOT*(MAX-MIN)`` with ``requested-size=0``; every disk ``if=virtio``; the runtime disk a read-only
iso9660 cdrom with ``mounts.sh``; the console on ttyS1 (amd64); the log port ``tech.neon.log.0``.
"""
from __future__ import annotations

import shutil
import socket
from dataclasses import dataclass
from pathlib import Path

from harness import proc
from harness.arch import Arch
from harness.boot import initramfs
from harness.boot.vm import VIRTIO_MEM_BACKEND, VIRTIO_MEM_ID
from harness.compute import image
from harness.errors import InvalidArgument
from harness.tools import spec

CPU_MODES = ("qmp", "sysfs")
VIRTIO_MEM_BLOCK = "8M"
MEMHP = ("memhp_default_state=online", "memory_hotplug.online_policy=auto-movable",
         "memory_hotplug.auto_movable_ratio=301")
GUEST_IP = image.GUEST_CIDR.split("/")[0]
IP_CMDLINE = f"ip={GUEST_IP}:::255.255.255.0:neonvm-compute:eth0:off"
PG_PORT = 5432


@dataclass(frozen=True)
class Shape:
    """The VM's size as the runner is given it: CPUs and memory in slots."""

    cpus_min: int = 1
    cpus_max: int = 2
    mem_slot_mib: int = 1024
    mem_slots_min: int = 1
    mem_slots_max: int = 2
    cpu_mode: str = "sysfs"

    def __post_init__(self) -> None:
        if not 1 <= self.cpus_min <= self.cpus_max:
            raise InvalidArgument(f"need 1 <= min CPUs {self.cpus_min} <= max CPUs {self.cpus_max}", step="compute")
        if not 1 <= self.mem_slots_min <= self.mem_slots_max:
            raise InvalidArgument(f"need 1 <= min slots {self.mem_slots_min} <= max slots {self.mem_slots_max}",
                                  step="compute")
        if self.cpu_mode not in CPU_MODES:
            raise InvalidArgument(f"CPU scaling mode {self.cpu_mode!r} is not one of {', '.join(CPU_MODES)}",
                                  step="compute")

    @property
    def smp(self) -> str:
        present = self.cpus_min if self.cpu_mode == "qmp" else self.cpus_max
        return f"cpus={present},maxcpus={self.cpus_max},sockets=1,cores={self.cpus_max},threads=1"

    @property
    def memory(self) -> str:
        return (f"size={self.mem_slot_mib * self.mem_slots_min}M,slots={self.mem_slots_max - self.mem_slots_min},"
                f"maxmem={self.mem_slot_mib * self.mem_slots_max}M")

    @property
    def virtio_mem_mib(self) -> int:
        """The virtio-mem backend's size (0: no device, MAX == MIN)."""
        return self.mem_slot_mib * (self.mem_slots_max - self.mem_slots_min)


@dataclass(frozen=True)
class Disks:
    root: Path  # ext4 (a qcow2 overlay over the cached image)
    runtime: Path  # iso9660, mounts.sh
    swap: Path  # raw, mkswap -L swapdisk
    data: Path  # ext4, label pgdata, prjquota
    tools: Path | None  # OUT/tools.img (label vm-tools)


def kernel_cmdline(arch: Arch, shape: Shape, *, extra: tuple[str, ...] = ()) -> str:
    parts = ["panic=-1", "init=/neonvm/bin/init", "loglevel=6", "root=/dev/vda", "rw", *MEMHP, IP_CMDLINE]
    if shape.cpu_mode == "sysfs":
        parts.append(f"maxcpus={shape.cpus_min}")
    parts += [*arch.kernel_cmdline_extra, f"console={arch.console}", *extra]
    return " ".join(parts)


def qemu_argv(arch: Arch, shape: Shape, *, kernel: Path, disks: Disks, accel: str, console_sock: Path | str,
              qmp_sock: Path | str, log_port: Path | str, early_log: Path | str, host_port: int,
              name: str = "neonvm-compute", cmdline_extra: tuple[str, ...] = (),
              initrd: Path | None = None) -> list[str]:
    """QEMU's argv for the compute VM, the runner's shape with the harness's sockets."""
    cpu = arch.qemu_cpu_kvm if accel == "kvm" else arch.qemu_cpu_runner_tcg
    argv = [arch.qemu_binary, "-name", name, "-machine", arch.qemu_machine, "-accel", accel, "-cpu", cpu,
            "-nodefaults", "-no-reboot", "-no-user-config", "-display", "none", "-audiodev", "none,id=snd0",
            "-msg", "timestamp=on",
            "-smp", shape.smp, "-m", shape.memory]
    if shape.virtio_mem_mib:
        argv += ["-object", f"memory-backend-ram,id={VIRTIO_MEM_BACKEND},size={shape.virtio_mem_mib}M",
                 "-device", f"virtio-mem-pci,id={VIRTIO_MEM_ID},memdev={VIRTIO_MEM_BACKEND},"
                            f"block-size={VIRTIO_MEM_BLOCK},requested-size=0"]
    argv += ["-chardev", f"socket,id=qmp,path={qmp_sock}", "-mon", "chardev=qmp,mode=control",
             "-chardev", f"socket,id=console,path={console_sock}",
             "-device", "virtio-serial-pci,id=virtio-serial0",
             "-chardev", f"file,id=log,path={log_port}",
             "-device", f"virtserialport,chardev=log,name={image.LOG_PORT}"]
    if arch.console_device == "serial":  # ttyS1: the second UART
        argv += ["-serial", "null", "-serial", "chardev:console"]
    else:
        argv += ["-serial", f"file:{early_log}", "-device", "virtconsole,chardev=console"]
    if arch.firmware:
        argv += ["-bios", arch.firmware]
    argv += [
        "-drive", f"id=rootdisk,file={disks.root},if=virtio,media=disk,index=0,format=qcow2,cache=none",
        "-drive", f"id=runtime,file={disks.runtime},if=virtio,media=cdrom,readonly=on,format=raw,cache=none",
        "-drive", f"id=swapdisk,file={disks.swap},if=virtio,media=disk,format=raw,discard=unmap,cache=none",
        "-drive", f"id={image.DATA_LABEL},file={disks.data},if=virtio,media=disk,format=raw,cache=none",
    ]
    if disks.tools:
        argv += ["-drive", f"id=tools,file={disks.tools},if=virtio,media=disk,format=raw,readonly=on"]
    argv += ["-netdev", f"user,id=net0,hostfwd=tcp:127.0.0.1:{host_port}-:{PG_PORT}",
             "-device", "virtio-net-pci,netdev=net0,mac=52:54:00:4e:56:4e",
             "-kernel", str(kernel)]
    if initrd is not None:  # a kernel that needs its own initramfs (Debian's: modular virtio and ext4)
        argv += ["-initrd", str(initrd)]
    argv += ["-append", kernel_cmdline(arch, shape, extra=cmdline_extra)]
    return argv


def mount_script(*, tools: bool) -> str:
    """The runtime disk's mounts.sh: the data disk, swap and tools.img, each found by its label."""
    lines = [
        "#!/neonvm/bin/sh",
        "# generated by harness/compute/runner.py: the runner's mount script (disks by label)",
        f"mkdir -p {image.PG_MOUNT}",
        f"mount -t ext4 \"$(blkid -L {image.DATA_LABEL})\" {image.PG_MOUNT}",
        f"/neonvm/bin/swapon -d \"$(blkid -L {image.SWAP_LABEL})\"",
    ]
    if tools:
        lines += [f"mkdir -p {image.TOOLS_MOUNT}",
                  f"mount -o ro \"$(blkid -L {spec.FS_LABEL})\" {image.TOOLS_MOUNT}"]
    return "\n".join(lines) + "\n"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


SWAP_MIB = 256
DATA_MIB = 512
QUOTA_MIB = 256


def make_runtime_iso(path: Path, arch: Arch, *, tools: bool, quota_kib: int, log: Path) -> None:
    """The runtime cdrom: the runner's mount script, the data directory's quota, and the harness's
    memory-pressure probe (a static binary for the guest's arch)."""
    stage = path.with_name(f".{path.name}.d")
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    (stage / "mounts.sh").write_text(mount_script(tools=tools))
    (stage / "quota-kib").write_text(f"{quota_kib}\n")
    initramfs.compile_static(arch, initramfs.MEMHOG_SOURCE.read_text(), stage / image.MEMHOG, log)
    tool = "genisoimage"
    proc.require_tool(tool, step="compute-disks", hint="apt-get install -y genisoimage")
    proc.run([tool, "-quiet", "-R", "-J", "-V", image.RUNTIME_LABEL, "-o", path, stage], step="compute-disks",
             log=log, timeout=60)


def make_disks(work: Path, arch: Arch, root_image: Path, *, tools: Path | None, log: Path) -> Disks:
    """Fresh disks for one compute run (the root disk a qcow2 overlay over the cached image)."""
    work.mkdir(parents=True, exist_ok=True)
    step = "compute-disks"
    disks = Disks(root=work / "root.qcow2", runtime=work / "runtime.iso", swap=work / "swap.img",
                  data=work / "pgdata.img", tools=tools if tools and tools.is_file() else None)
    for p in (disks.root, disks.runtime, disks.swap, disks.data):
        p.unlink(missing_ok=True)
    proc.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", root_image, disks.root],
             step=step, log=log, timeout=60)
    make_runtime_iso(disks.runtime, arch, tools=disks.tools is not None, quota_kib=QUOTA_MIB * 1024, log=log)
    for p, mib in ((disks.swap, SWAP_MIB), (disks.data, DATA_MIB)):
        with open(p, "wb") as fh:
            fh.truncate(mib << 20)
    proc.run(["mkswap", "-L", image.SWAP_LABEL, disks.swap], step=step, log=log, timeout=60)
    proc.run(["mkfs.ext4", "-q", "-F", "-L", image.DATA_LABEL, disks.data], step=step, log=log, timeout=60)
    proc.run(["tune2fs", "-O", "project", "-Q", "prjquota", disks.data], step=step, log=log, timeout=60)
    proc.run(["tune2fs", "-E", "mount_opts=prjquota", disks.data], step=step, log=log, timeout=60)
    return disks
