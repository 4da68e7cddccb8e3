"""The compute guest: the runner-shaped argv (CPUs and memory slots -> -smp, -m, virtio-mem), both
CPU scaling modes, the kernel command line, and the generated init layer and mount script."""
from __future__ import annotations

from pathlib import Path

import pytest

from harness.arch import get_arch
from harness.compute import image, runner
from harness.errors import InvalidArgument

AMD64 = get_arch("amd64")
DISKS = runner.Disks(root=Path("/W/root.qcow2"), runtime=Path("/W/runtime.iso"), swap=Path("/W/swap.img"),
                     data=Path("/W/pgdata.img"), tools=Path("/OUT/tools.img"))


def argv_for(shape: runner.Shape) -> list[str]:
    return runner.qemu_argv(AMD64, shape, kernel=Path("/OUT/vmlinuz"), disks=DISKS, accel="tcg",
                            console_sock="/RUN/console.sock", qmp_sock="/RUN/qmp.sock", log_port="/L/log",
                            early_log="/L/early", host_port=15432)


def opt(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv) if a == flag]


QMP_SHAPE = runner.Shape(cpus_min=1, cpus_max=4, mem_slot_mib=1024, mem_slots_min=2, mem_slots_max=8, cpu_mode="qmp")
SYSFS_SHAPE = runner.Shape(cpus_min=2, cpus_max=4, mem_slot_mib=512, mem_slots_min=1, mem_slots_max=3,
                           cpu_mode="sysfs")


def test_qmp_mode_boots_min_cpus_and_no_maxcpus():
    argv = argv_for(QMP_SHAPE)
    assert opt(argv, "-smp") == ["cpus=1,maxcpus=4,sockets=1,cores=4,threads=1"]
    assert "maxcpus=" not in opt(argv, "-append")[0]


def test_sysfs_mode_boots_all_present_and_kernel_maxcpus():
    argv = argv_for(SYSFS_SHAPE)
    assert opt(argv, "-smp") == ["cpus=4,maxcpus=4,sockets=1,cores=4,threads=1"]
    assert " maxcpus=2 " in f" {opt(argv, '-append')[0]} "


@pytest.mark.parametrize(("shape", "memory", "vmem"), [
    (QMP_SHAPE, "size=2048M,slots=6,maxmem=8192M", "size=6144M"),
    (SYSFS_SHAPE, "size=512M,slots=2,maxmem=1536M", "size=1024M"),
])
def test_memory_from_slots(shape, memory, vmem):
    argv = argv_for(shape)
    assert opt(argv, "-m") == [memory]
    assert opt(argv, "-object") == [f"memory-backend-ram,id=vmem0,{vmem}"]
    dev = [d for d in opt(argv, "-device") if d.startswith("virtio-mem-pci")]
    assert dev == ["virtio-mem-pci,id=vm0,memdev=vmem0,block-size=8M,requested-size=0"]


def test_no_virtio_mem_when_min_equals_max():
    argv = argv_for(runner.Shape(mem_slots_min=2, mem_slots_max=2))
    assert opt(argv, "-m") == ["size=2048M,slots=0,maxmem=2048M"]
    assert not any(d.startswith("virtio-mem") for d in opt(argv, "-device"))


def test_disks_console_log_port_and_network():
    argv = argv_for(SYSFS_SHAPE)
    drives = opt(argv, "-drive")
    assert drives[0].startswith("id=rootdisk,file=/W/root.qcow2,if=virtio,media=disk,index=0")
    assert "media=cdrom,readonly=on" in drives[1] and "runtime.iso" in drives[1]
    assert all("if=virtio" in d for d in drives) and any("tools.img" in d and "readonly=on" in d for d in drives)
    assert "virtserialport,chardev=log,name=tech.neon.log.0" in opt(argv, "-device")
    assert opt(argv, "-serial") == ["null", "chardev:console"]  # the console is the second UART
    assert opt(argv, "-netdev") == ["user,id=net0,hostfwd=tcp:127.0.0.1:15432-:5432"]
    cmdline = opt(argv, "-append")[0].split()
    for part in ("panic=-1", "init=/neonvm/bin/init", "loglevel=6", "root=/dev/vda", "rw", "console=ttyS1",
                 "memhp_default_state=online", "memory_hotplug.online_policy=auto-movable",
                 "memory_hotplug.auto_movable_ratio=301"):
        assert part in cmdline


@pytest.mark.parametrize("kwargs", [dict(cpus_min=3, cpus_max=2), dict(cpus_min=0), dict(mem_slots_min=3,
                                    mem_slots_max=2), dict(cpu_mode="acpi")])
def test_bad_shapes_are_refused(kwargs):
    with pytest.raises(InvalidArgument):
        runner.Shape(**kwargs)


def test_mount_script_mounts_by_label():
    text = runner.mount_script(tools=True)
    assert text.startswith("#!/neonvm/bin/sh\n")
    assert '"$(blkid -L pgdata)" /var/db/postgres' in text
    assert '/neonvm/bin/swapon -d "$(blkid -L swapdisk)"' in text
    assert '"$(blkid -L vm-tools)" /neonvm/tools' in text
    assert "vm-tools" not in runner.mount_script(tools=False)


def test_inittab_is_neonvm_shaped():
    lines = image.inittab("ttyS1").splitlines()
    assert "::sysinit:/neonvm/bin/vminit" in lines
    assert any(ln.startswith("::respawn:") and "acpid" in ln for ln in lines)
    assert "ttyS1::respawn:-/neonvm/bin/sh" in lines
    assert "::shutdown:/neonvm/bin/vmhalt" in lines


def test_init_layer_sequence_and_power_button():
    layer = image.init_layer("ttyS1")
    vminit = layer["neonvm/bin/vminit"][0]
    order = ["mount -t proc", "mount -t cgroup2", "systemd-udevd --daemon", "blkid -L vmruntime",
             "/neonvm/runtime/mounts.sh", "/neonvm/bin/pgstart"]
    positions = [vminit.index(s) for s in order]
    assert positions == sorted(positions)
    shutdown = layer["neonvm/bin/vmshutdown"][0]
    assert shutdown.index("-m fast") < shutdown.index("poweroff")
    assert "action=/neonvm/bin/vmshutdown" in layer["etc/acpi/events/neonvm-powerbtn"][0]
    assert all(mode & 0o111 for rel, (_, mode) in layer.items() if rel.startswith("neonvm/bin/"))
    assert image.READY_MARKER.split(": ", 1)[1] in layer["neonvm/bin/pgstart"][0]


def test_cache_key_follows_packages_and_layer(monkeypatch):
    key = image.cache_key(AMD64)
    assert image.cache_key(AMD64) == key
    monkeypatch.setattr(image, "PACKAGES", (*image.PACKAGES, "pgbench"))
    assert image.cache_key(AMD64) != key
    monkeypatch.undo()
    monkeypatch.setattr(image, "VMSHUTDOWN", image.VMSHUTDOWN + "# changed\n")
    assert image.cache_key(AMD64) != key


def test_mmdebstrap_argv_no_docker():
    argv = image.mmdebstrap_argv(AMD64, layer=Path("/L"), target=Path("/T"))
    assert argv[0] == "mmdebstrap" and "--variant=minbase" in argv
    assert argv[-3:] == ["bookworm", "/T", image.MIRROR]
    assert "--customize-hook=sync-in /L /" in argv
    include = next(a for a in argv if a.startswith("--include="))
    for pkg in ("postgresql-15", "udev", "acpid", "chrony", "e2fsprogs", "util-linux", "busybox"):
        assert pkg in include.split("=", 1)[1].split(",")
