"""The compute guest: the runner-shaped argv (CPUs and memory slots -> -smp, -m, virtio-mem), both
CPU scaling modes, the kernel command line, and the generated init layer and mount script."""
from __future__ import annotations

from pathlib import Path

import pytest

from harness.arch import get_arch
from harness.compute import image, runner
from harness.errors import InfraError, InvalidArgument

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


def test_the_cloud_kernel_is_installed_in_the_same_image():
    include = next(a for a in image.mmdebstrap_argv(AMD64, layer=Path("/L"), target=Path("/T"))
                   if a.startswith("--include="))
    assert {"linux-image-cloud-amd64", "initramfs-tools"} <= set(include.split("=", 1)[1].split(","))
    assert image.packages(get_arch("arm64"))[-1] == "linux-image-cloud-arm64"


def test_initrd_only_when_the_kernel_needs_one():
    assert "-initrd" not in argv_for(SYSFS_SHAPE)
    argv = runner.qemu_argv(AMD64, SYSFS_SHAPE, kernel=Path("/C/vmlinuz"), disks=DISKS, accel="tcg",
                            console_sock="/R/c", qmp_sock="/R/q", log_port="/L/l", early_log="/L/e", host_port=1,
                            initrd=Path("/C/initrd.img"))
    assert opt(argv, "-initrd") == ["/C/initrd.img"] and opt(argv, "-kernel") == ["/C/vmlinuz"]
    assert argv.index("-initrd") < argv.index("-append")


def test_cloud_kernel_taken_from_the_tree(tmp_path):
    tree = tmp_path / "tree"
    (tree / "boot").mkdir(parents=True)
    (tree / "boot" / "vmlinuz-6.1.0-9-cloud-amd64").write_bytes(b"K")
    (tree / "boot" / "initrd.img-6.1.0-9-cloud-amd64").write_bytes(b"I")
    dest = tmp_path / "root-amd64-k.cloud-kernel"
    assert image._take_cloud_kernel(tree, dest, step="t") == "6.1.0-9-cloud-amd64"
    assert (dest / "vmlinuz").read_bytes() == b"K" and (dest / "initrd.img").read_bytes() == b"I"
    (tree / "boot" / "initrd.img-6.1.0-9-cloud-amd64").unlink()
    with pytest.raises(InfraError, match="initramfs-tools"):
        image._take_cloud_kernel(tree, dest, step="t")
    (tree / "boot" / "vmlinuz-6.1.0-10-cloud-amd64").write_bytes(b"K2")
    with pytest.raises(InfraError, match="expected one kernel"):
        image._take_cloud_kernel(tree, dest, step="t")


def test_cloud_kernel_replaced_whole_or_not_at_all(tmp_path, monkeypatch):
    tree = tmp_path / "tree"
    (tree / "boot").mkdir(parents=True)
    (tree / "boot" / "vmlinuz-6.1.0-9-cloud-amd64").write_bytes(b"K")
    (tree / "boot" / "initrd.img-6.1.0-9-cloud-amd64").write_bytes(b"I")
    dest = tmp_path / "root-amd64-k.cloud-kernel"
    dest.mkdir()
    (dest / "stale").write_text("x")
    image._take_cloud_kernel(tree, dest, step="t")
    assert sorted(p.name for p in dest.iterdir()) == ["initrd.img", "release", "vmlinuz"]

    def failing_copy(src, dst):
        if Path(dst).name == "initrd.img":
            raise OSError("disk full")
        Path(dst).write_bytes(b"new")
    monkeypatch.setattr(image.shutil, "copyfile", failing_copy)
    with pytest.raises(OSError, match="disk full"):
        image._take_cloud_kernel(tree, dest, step="t")
    assert (dest / "vmlinuz").read_bytes() == b"K"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["root-amd64-k.cloud-kernel", "tree"]


def test_an_image_without_its_metadata_is_not_a_cached_image(tmp_path, monkeypatch):
    monkeypatch.setattr(image, "cache_root", lambda: tmp_path)
    path = image.image_path(AMD64)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"half-written")  # an interrupted build: image, no metadata
    monkeypatch.setattr(image.proc, "require_tool", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("built")))
    with pytest.raises(RuntimeError, match="built"):
        image.ensure(AMD64, log_dir=tmp_path)
    path.with_suffix(".json").write_text('{"cloud_kernel_release": "6.1.0-9-cloud-amd64"}')
    got = image.ensure(AMD64, log_dir=tmp_path)
    assert got.cached and got.cloud_kernel.release == "6.1.0-9-cloud-amd64"
    assert got.cloud_kernel.vmlinuz == image.cloud_dir(path) / "vmlinuz"


def test_prune_keeps_only_the_current_key(tmp_path):
    keep = tmp_path / "root-amd64-new.ext4"
    for name in ("root-amd64-new.ext4", "root-amd64-new.json", "root-amd64-old.ext4", "root-amd64-old.json",
                 "root-arm64-old.ext4"):
        (tmp_path / name).write_text("x")
    (tmp_path / "root-amd64-old.cloud-kernel").mkdir()
    image._prune(AMD64, keep=keep)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["root-amd64-new.ext4", "root-amd64-new.json",
                                                          "root-arm64-old.ext4"]


def test_vminit_configures_the_network_only_when_the_kernel_did_not():
    vminit = image.init_layer("ttyS1")["neonvm/bin/vminit"][0]
    assert "ip -4 addr show" in vminit and f"ip addr add {image.GUEST_CIDR}" in vminit
    assert vminit.index("modprobe -q ptp_kvm") < vminit.index("chronyd")


def test_cpu_online_rule_stands_aside_in_sysfs_mode():
    rule = image.init_layer("ttyS1")["etc/udev/rules.d/90-neonvm-cpu-online.rules"][0]
    first, second = rule.splitlines()
    assert 'IMPORT{cmdline}="maxcpus"' in first
    assert 'ENV{maxcpus}==""' in second and second.endswith('ATTR{online}="1"')


def test_mounts_left_by_a_killed_build_are_found_deepest_first(tmp_path):
    work = tmp_path / "compute-image-x"
    mounts = "\n".join([
        "proc /proc proc rw 0 0",
        f"proc {work}/tree/proc proc rw 0 0",
        f"udev {work}/tree/dev devtmpfs rw 0 0",
        f"devpts {work}/tree/dev/pts devpts rw 0 0",
        f"tmpfs {tmp_path}/compute-image-xy tmpfs rw 0 0",  # a sibling with the same prefix: not ours
    ])
    got = image.mounts_under(work, mounts)
    assert got[0] == f"{work}/tree/dev/pts" and set(got) == {f"{work}/tree/proc", f"{work}/tree/dev",
                                                              f"{work}/tree/dev/pts"}


def test_scratch_tree_with_a_mount_left_is_not_deleted(tmp_path, monkeypatch):
    work = tmp_path / "w"
    (work / "tree" / "dev").mkdir(parents=True)
    (work / "tree" / "dev" / "null").write_text("a host device node, seen through a bind mount")
    calls = []
    monkeypatch.setattr(image.proc, "run", lambda argv, **kw: calls.append(argv))
    monkeypatch.setattr(image, "mounts_under", lambda path, text=None: [f"{work}/tree/dev"])
    image._remove_work(work, log=tmp_path / "log")
    assert calls == [["umount", "--lazy", f"{work}/tree/dev"]]
    assert (work / "tree" / "dev" / "null").is_file()  # still mounted: nothing deleted
    monkeypatch.setattr(image, "mounts_under", lambda path, text=None: [])
    image._remove_work(work, log=tmp_path / "log")
    assert not work.exists()
