"""The QEMU command line of the boot test, against golden files (fixtures/argv/<arch>.txt).

Regenerate after an intended change with UPDATE_GOLDEN=1 and review the diff."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from fixture_paths import FIXTURES

from harness.arch import ARCHES, get_arch
from harness.boot import run as boottest
from harness.boot import vm
from harness.boot.run import BootRequest
from harness.errors import InvalidArgument

TCG = vm.Accel("tcg", "test")


def golden_argv(arch_name: str) -> list[str]:
    spec = boottest.vm_spec(arch=get_arch(arch_name), kernel=Path("/OUT/vmlinuz"), initrd=Path("/CACHE/initramfs.cpio"),
                            accel=TCG, tools_img=Path("/OUT/tools.img"))
    return vm.qemu_argv(spec, console_sock="/RUN/console.sock", qmp_sock="/RUN/qmp.sock",
                        log_port="/OUT/boot/boot.logport.log", early_log="/OUT/boot/boot.early.log")


@pytest.mark.parametrize("arch_name", sorted(ARCHES))
def test_argv_matches_golden(arch_name):
    argv = golden_argv(arch_name)
    path = FIXTURES / "argv" / f"{arch_name}.txt"
    text = "\n".join(argv) + "\n"
    if os.environ.get("UPDATE_GOLDEN"):
        path.write_text(text)
    assert text == path.read_text()


def test_runner_shape_amd64():
    argv = golden_argv("amd64")
    joined = " ".join(argv)
    assert argv[0] == "qemu-system-x86_64"
    assert "-machine q35" in joined and "-serial chardev:console" in joined
    assert "cpus=2,maxcpus=4,sockets=1,cores=4,threads=1" in joined
    assert "virtio-mem-pci,id=vm0,memdev=vmem0,block-size=8M,requested-size=0" in joined
    assert "-no-reboot" in argv and "-nodefaults" in argv
    assert "file=/OUT/tools.img,if=none,format=raw,readonly=on" in joined
    cmdline = argv[argv.index("-append") + 1]
    assert "-serial null -serial chardev:console" in joined  # the runner's console is the second UART
    assert "virtserialport,chardev=log,name=tech.neon.log.0" in joined
    for word in ("console=ttyS1", "maxcpus=1", "ip=10.0.2.15:::255.255.255.0:neonvm-guest:eth0:off",
                 "memhp_default_state=online", "memory_hotplug.online_policy=auto-movable",
                 "memory_hotplug.auto_movable_ratio=301"):
        assert word in cmdline.split()


def test_runner_shape_arm64():
    argv = golden_argv("arm64")
    assert argv[argv.index("-machine") + 1] == "virt"
    assert argv[argv.index("-bios") + 1].endswith("QEMU_EFI.fd")
    cmdline = argv[argv.index("-append") + 1].split()
    assert "acpi=on" in cmdline and "console=hvc0" in cmdline
    assert "virtconsole,chardev=console" in argv and "file:/OUT/boot/boot.early.log" in argv
    # arm64 scales vCPUs through sysfs only: all present at boot, maxcpus=1 keeps them offline
    assert "cpus=4,maxcpus=4,sockets=1,cores=4,threads=1" in " ".join(argv)


def test_kvm_uses_host_cpu():
    spec = boottest.vm_spec(arch=get_arch("amd64"), kernel=Path("k"), initrd=Path("i"), accel=vm.Accel("kvm", "t"))
    argv = vm.qemu_argv(spec, console_sock="c", qmp_sock="q", log_port="l", early_log="e")
    assert argv[argv.index("-accel") + 1] == "kvm" and argv[argv.index("-cpu") + 1] == "host"


def test_no_tools_drive_without_image():
    spec = boottest.vm_spec(arch=get_arch("amd64"), kernel=Path("k"), initrd=Path("i"), accel=TCG)
    argv = vm.qemu_argv(spec, console_sock="c", qmp_sock="q", log_port="l", early_log="e")
    assert not any("virtio-blk" in a for a in argv)


def test_spec_validated_when_built():
    with pytest.raises(InvalidArgument):
        vm.VmSpec(arch=get_arch("amd64"), kernel=Path("k"), initrd=Path("i"), accel=TCG, cpus_min=3, cpus_present=2)
    with pytest.raises(InvalidArgument):
        vm.VmSpec(arch=get_arch("amd64"), kernel=Path("k"), initrd=Path("i"), accel=vm.Accel("auto", ""))


def test_dry_run_prints_without_running(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(vm.Vm, "launch", lambda self: pytest.fail("dry run launched QEMU"))
    results = boottest.run(BootRequest(get_arch("arm64"), kernel=tmp_path / "Image", release="x", results_dir=tmp_path,
                                       accel="tcg", dry_run=True))
    out = capsys.readouterr().out
    assert results == [] and "qemu-system-aarch64" in out and "# accelerator: tcg" in out
    assert not (tmp_path / "results.json").exists()
