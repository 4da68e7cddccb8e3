"""The compute test on arm64: the runner's argv for the ``virt`` machine (UEFI, hvc0 on a virtconsole,
virtio-mem, the drives), the mmdebstrap command for an arm64 root, and the binfmt_misc handler that
runs the image's arm64 binaries on an amd64 host (against a fake binfmt_misc directory: the host's
is never touched)."""
from __future__ import annotations

import struct
from pathlib import Path

import pytest

from harness.arch import get_arch
from harness.compute import binfmt, image, runner
from harness.errors import CommandFailed, InfraError

ARM64 = get_arch("arm64")
AMD64 = get_arch("amd64")
AARCH64 = binfmt.handler(ARM64)
DISKS = runner.Disks(root=Path("/W/root.qcow2"), runtime=Path("/W/runtime.iso"), swap=Path("/W/swap.img"),
                     data=Path("/W/pgdata.img"), tools=Path("/OUT/tools.img"))
SHAPE = runner.Shape(cpus_min=1, cpus_max=2, mem_slot_mib=512, mem_slots_min=2, mem_slots_max=4, cpu_mode="sysfs")


def argv_for(accel: str = "tcg", shape: runner.Shape = SHAPE, disks: runner.Disks = DISKS) -> list[str]:
    return runner.qemu_argv(ARM64, shape, kernel=Path("/OUT/vmlinuz"), disks=disks, accel=accel,
                            console_sock="/RUN/console.sock", qmp_sock="/RUN/qmp.sock", log_port="/L/log",
                            early_log="/L/early", host_port=15432)


def opt(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv) if a == flag]


# -- the VM ---------------------------------------------------------------------------------------------
def test_arm64_argv_is_the_virt_machine_with_uefi():
    argv = argv_for()
    assert argv[0] == "qemu-system-aarch64"
    assert opt(argv, "-machine") == ["virt"]
    assert opt(argv, "-bios") == ["/usr/share/qemu-efi-aarch64/QEMU_EFI.fd"]
    assert opt(argv, "-cpu") == ["max,pauth-impdef=on"] and opt(argv, "-accel") == ["tcg"]
    assert opt(argv_for("kvm"), "-cpu") == ["host"]
    assert opt(argv, "-kernel") == ["/OUT/vmlinuz"]


def test_arm64_console_is_hvc0_on_a_virtconsole():
    argv = argv_for()
    assert "-chardev" in argv and "socket,id=console,path=/RUN/console.sock" in opt(argv, "-chardev")
    devices = opt(argv, "-device")
    assert "virtio-serial-pci,id=virtio-serial0" in devices
    assert "virtconsole,chardev=console" in devices
    assert devices.index("virtio-serial-pci,id=virtio-serial0") < devices.index("virtconsole,chardev=console")
    assert opt(argv, "-serial") == ["file:/L/early"]  # the PL011: earlycon's output, not the console
    cmdline = opt(argv, "-append")[0].split()
    assert "console=hvc0" in cmdline and "acpi=on" in cmdline and "earlycon" in cmdline
    assert not any(c.startswith("console=ttyS") or c.startswith("earlyprintk") for c in cmdline)
    assert "virtserialport,chardev=log,name=tech.neon.log.0" in devices


def test_arm64_inittab_respawns_the_shell_on_hvc0():
    lines = image.init_layer(ARM64.console)["etc/inittab"][0].splitlines()
    assert "hvc0::respawn:-/neonvm/bin/sh" in lines
    assert not any(ln.startswith("ttyS") for ln in lines)


def test_arm64_virtio_mem_and_memory_slots():
    argv = argv_for()
    assert opt(argv, "-m") == ["size=1024M,slots=2,maxmem=2048M"]
    assert opt(argv, "-object") == ["memory-backend-ram,id=vmem0,size=1024M"]
    assert [d for d in opt(argv, "-device") if d.startswith("virtio-mem")] == [
        "virtio-mem-pci,id=vm0,memdev=vmem0,block-size=8M,requested-size=0"]
    assert opt(argv, "-smp") == ["cpus=2,maxcpus=2,sockets=1,cores=2,threads=1"]
    assert " maxcpus=1 " in f" {opt(argv, '-append')[0]} "


def test_arm64_drives_root_first_all_virtio():
    drives = opt(argv_for(), "-drive")
    assert [d.split(",", 1)[0] for d in drives] == ["id=rootdisk", "id=runtime", "id=swapdisk", "id=pgdata",
                                                    "id=tools"]
    assert all("if=virtio" in d for d in drives)
    assert "file=/W/root.qcow2" in drives[0] and "index=0" in drives[0] and "format=qcow2" in drives[0]
    assert "media=cdrom" in drives[1] and "readonly=on" in drives[1]
    assert "readonly=on" in drives[4] and "tools.img" in drives[4]
    assert " root=/dev/vda " in f" {opt(argv_for(), '-append')[0]} "
    no_tools = runner.Disks(root=DISKS.root, runtime=DISKS.runtime, swap=DISKS.swap, data=DISKS.data, tools=None)
    assert len(opt(argv_for(disks=no_tools), "-drive")) == 4


# -- the root image ------------------------------------------------------------------------------------
def test_mmdebstrap_argv_for_arm64():
    argv = image.mmdebstrap_argv(ARM64, layer=Path("/L"), target=Path("/T"))
    assert argv[0] == "mmdebstrap" and "--architectures=arm64" in argv and "--mode=root" in argv
    assert argv[-3:] == ["bookworm", "/T", image.MIRROR]
    include = next(a for a in argv if a.startswith("--include=")).split("=", 1)[1].split(",")
    assert "linux-image-cloud-arm64" in include and "linux-image-cloud-amd64" not in include
    assert {"postgresql-15", "busybox", "initramfs-tools", "udev"} <= set(include)
    # the hooks that run arm64 binaries in the chroot (through binfmt_misc) are the amd64 image's own
    hooks = [a.split("=", 1)[1] for a in argv if a.startswith("--customize-hook=")]
    assert hooks[1:] == list(image.CUSTOMIZE)
    assert any("chroot" in h and "initdb" in h for h in hooks)
    assert image.cache_key(ARM64) != image.cache_key(AMD64)
    assert image.image_path(ARM64).name.startswith("root-arm64-")


def test_debian_cloud_initramfs_loads_virtio_console_on_arm64_only():
    # Debian's arm64 cloud kernel has virtio_console as a module: without it in the initramfs the
    # init's /dev/console is the PL011, not the runner's hvc0
    hooks = [a for a in image.mmdebstrap_argv(ARM64, layer=Path("/L"), target=Path("/T"))
             if a.startswith("--essential-hook=")]
    assert hooks[1] == ("--essential-hook=mkdir -p \"$1/usr/share/initramfs-tools/modules.d\" && "
                        "printf '%s\\n' virtio_console > \"$1/usr/share/initramfs-tools/modules.d/neonvm\"")
    amd64 = image.mmdebstrap_argv(AMD64, layer=Path("/L"), target=Path("/T"))
    assert image.initramfs_modules(AMD64) == () and not any("initramfs-tools/modules.d" in a for a in amd64)


class _Built(Exception):
    pass


@pytest.mark.parametrize(("arch", "foreign"), [(ARM64, True), (AMD64, False)])
def test_image_build_registers_binfmt_only_for_a_foreign_arch(tmp_path, monkeypatch, arch, foreign):
    calls: list[tuple[str, str]] = []
    monkeypatch.setattr(image, "cache_root", lambda: tmp_path)
    monkeypatch.setattr(image.proc, "require_tool", lambda *a, **k: "/usr/bin/mmdebstrap")
    monkeypatch.setattr(image.binfmt, "is_foreign", lambda a, **k: a.name == "arm64")
    monkeypatch.setattr(image.binfmt, "ensure", lambda a, **k: calls.append(("ensure", a.name)) or "existing")
    monkeypatch.setattr(image.binfmt, "verify", lambda a, **k: calls.append(("verify", a.name)))

    def run(argv, **kw):
        calls.append(("run", argv[0]))
        assert kw["timeout"] == image.BUILD_TIMEOUT * (image.FOREIGN_SLOWDOWN if foreign else 1)
        raise _Built
    monkeypatch.setattr(image.proc, "run", run)
    with pytest.raises(_Built):
        image.ensure(arch, log_dir=tmp_path / "logs")
    expected = [("ensure", arch.name), ("verify", arch.name)] if foreign else []
    assert calls == [*expected, ("run", "mmdebstrap")]


# -- binfmt_misc -----------------------------------------------------------------------------------------
DEBIAN_AARCH64 = (":qemu-aarch64:M::\\x7f\\x45\\x4c\\x46\\x02\\x01\\x01\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00"
                  "\\x00\\x02\\x00\\xb7\\x00:\\xff\\xff\\xff\\xff\\xff\\xff\\xff\\x00\\xff\\xff\\xff\\xff\\xff\\xff"
                  "\\xff\\xff\\xfe\\xff\\xff\\xff:{interp}:OPF")  # Debian's /usr/lib/binfmt.d/qemu-aarch64.conf


def test_registration_line_is_debians_with_our_interpreter():
    line = binfmt.registration(AARCH64, Path("/C/qemu-user/qemu-aarch64-static"))
    assert line == DEBIAN_AARCH64.format(interp="/C/qemu-user/qemu-aarch64-static")
    assert line.split(":")[1] == "qemu-aarch64"  # the name mmdebstrap looks for
    assert "F" in line.rsplit(":", 1)[1]
    x86 = binfmt.handler(AMD64)  # for an arm64 host: the same shape with EM_X86_64
    assert (x86.name, x86.interpreter_name) == ("qemu-x86_64", "qemu-x86_64-static")
    assert x86.magic[18:] == b"\x3e\x00" and x86.mask == AARCH64.mask


@pytest.mark.parametrize("bad", ["relative/qemu", "/a:b/qemu", "/a\nb"])
def test_registration_refuses_paths_binfmt_cannot_take(bad):
    with pytest.raises(InfraError, match="cannot register"):
        binfmt.registration(AARCH64, Path(bad))


@pytest.mark.parametrize(("machine", "arch", "foreign"), [
    ("x86_64", ARM64, True), ("x86_64", AMD64, False), ("aarch64", ARM64, False), ("aarch64", AMD64, True)])
def test_is_foreign(machine, arch, foreign):
    assert binfmt.is_foreign(arch, machine=machine) is foreign


KERNEL_ENTRY = ("enabled\ninterpreter /C/qemu-aarch64-static\nflags: POF\noffset 0\n"
                "magic 7f454c460201010000000000000000000200b700\nmask ffffffffffffff00fffffffffffffffffeffffff\n")


def test_entry_parsed_as_the_kernel_prints_it():
    entry = binfmt.Entry.parse(KERNEL_ENTRY)
    assert entry == binfmt.Entry(enabled=True, interpreter="/C/qemu-aarch64-static", flags="POF",
                                 magic=AARCH64.magic.hex(), mask=AARCH64.mask.hex())
    assert binfmt.usable(entry, AARCH64) is None
    assert "disabled" in (binfmt.usable(binfmt.Entry.parse(KERNEL_ENTRY.replace("enabled", "disabled")),
                                        AARCH64) or "")
    assert "no F flag" in (binfmt.usable(binfmt.Entry.parse(KERNEL_ENTRY.replace("POF", "P")), AARCH64)
                           or "")
    assert binfmt.Entry.parse(KERNEL_ENTRY.replace("flags: POF", "flags: ")).flags == ""


@pytest.fixture
def fake_proc(tmp_path, monkeypatch):
    """A mounted binfmt_misc look-alike, root, and a kernel that turns a registration into an entry."""
    d = tmp_path / "binfmt_misc"
    d.mkdir()
    (d / "register").write_text("")
    (d / "status").write_text("enabled\n")
    monkeypatch.setattr(binfmt.os, "geteuid", lambda: 0)
    written: list[str] = []

    def kernel(register: Path, line: str) -> None:
        written.append(line)
        _, name, _, _, magic, mask, interp, flags = line.split(":")
        raw = {k: bytes(int(x, 16) for x in v.split("\\x")[1:]).hex() for k, v in (("m", magic), ("k", mask))}
        (register.parent / name).write_text(f"enabled\ninterpreter {interp}\nflags: {flags}\noffset 0\n"
                                            f"magic {raw['m']}\nmask {raw['k']}\n")
    monkeypatch.setattr(binfmt, "write_register", kernel)
    return d, written


def test_ensure_registers_once_then_leaves_it_alone(fake_proc):
    d, written = fake_proc
    interp = Path("/C/qemu-aarch64-static")
    assert binfmt.ensure(ARM64, proc_dir=d, interpreter=interp) == f"registered {interp}"
    assert written == [DEBIAN_AARCH64.format(interp=interp)]
    assert binfmt.ensure(ARM64, proc_dir=d, interpreter=interp) == "existing"
    assert len(written) == 1


def test_an_existing_working_registration_is_left_alone(fake_proc):
    d, written = fake_proc
    (d / "qemu-aarch64").write_text(KERNEL_ENTRY.replace("/C/", "/usr/libexec/qemu-binfmt/"))
    assert binfmt.ensure(ARM64, proc_dir=d, interpreter=Path("/X/q")) == "existing"
    assert written == []


@pytest.mark.parametrize(("entry", "match"), [
    (KERNEL_ENTRY.replace("flags: POF", "flags: P"), "no F flag"),
    (KERNEL_ENTRY.replace("enabled", "disabled"), "disabled"),
])
def test_an_unusable_registration_is_reported_not_replaced(fake_proc, entry, match):
    d, written = fake_proc
    (d / "qemu-aarch64").write_text(entry)
    with pytest.raises(InfraError, match=match) as err:
        binfmt.ensure(ARM64, proc_dir=d, interpreter=Path("/X/q"))
    assert err.value.step == binfmt.STEP and "echo -1 >" in err.value.message
    assert written == []


def test_binfmt_misc_disabled_globally(fake_proc):
    d, _ = fake_proc
    (d / "status").write_text("disabled\n")
    with pytest.raises(InfraError, match="binfmt_misc is disabled"):
        binfmt.ensure(ARM64, proc_dir=d, interpreter=Path("/X/q"))


def test_register_refused_by_the_kernel(fake_proc, monkeypatch):
    d, _ = fake_proc

    def refuse(register: Path, line: str) -> None:
        raise PermissionError(1, "Operation not permitted")
    monkeypatch.setattr(binfmt, "write_register", refuse)
    with pytest.raises(InfraError, match="cannot register the binfmt_misc handler qemu-aarch64.*not permitted"):
        binfmt.ensure(ARM64, proc_dir=d, interpreter=Path("/X/q"))


def test_registering_needs_root(fake_proc, monkeypatch):
    d, written = fake_proc
    monkeypatch.setattr(binfmt.os, "geteuid", lambda: 1000)
    with pytest.raises(InfraError, match="needs root"):
        binfmt.ensure(ARM64, proc_dir=d, interpreter=Path("/X/q"))
    (d / "register").unlink()  # not mounted either
    with pytest.raises(InfraError, match="not mounted .* mounting it needs root"):
        binfmt.ensure(ARM64, proc_dir=d, interpreter=Path("/X/q"))
    assert written == []


def test_mount_failure_names_the_step(tmp_path, monkeypatch):
    d = tmp_path / "binfmt_misc"
    d.mkdir()
    monkeypatch.setattr(binfmt.os, "geteuid", lambda: 0)
    seen: list[list[str]] = []

    def capture(argv, **kw):
        seen.append([str(a) for a in argv])
        raise CommandFailed("mount exited 32: permission denied", step=kw["step"])
    monkeypatch.setattr(binfmt.proc, "capture", capture)
    with pytest.raises(InfraError, match="cannot mount binfmt_misc") as err:
        binfmt.ensure(ARM64, proc_dir=d, interpreter=Path("/X/q"))
    assert err.value.step == "compute-binfmt"
    assert seen == [["mount", "-t", "binfmt_misc", "binfmt_misc", str(d)]]


# -- the interpreter ---------------------------------------------------------------------------------------
def _static_elf(path: Path, machine: int = 62) -> Path:
    ident = b"\x7fELF\x02\x01\x01" + bytes(9)
    header = struct.pack("<HHIQQQIHHHHHH", 2, machine, 1, 0, 0, 0, 0, 64, 56, 0, 64, 0, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(ident + header)
    path.chmod(0o755)
    return path


def test_interpreter_fetched_once_into_the_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(binfmt.layout, "cache_root", lambda: tmp_path / "cache")
    monkeypatch.setattr(binfmt, "host_arch", lambda machine=None: AMD64)
    monkeypatch.setattr(binfmt.shutil, "which", lambda name: None)
    fetched: list[tuple[str, list[str]]] = []

    def download(debian_arch, packages, root, **kw):
        fetched.append((debian_arch, list(packages)))
        _static_elf(root / "usr/bin/qemu-aarch64-static")
        _static_elf(root / "usr/bin/qemu-arm-static")
        return ["qemu-user-static_1_amd64.deb"]
    monkeypatch.setattr(binfmt.foreign, "download_and_unpack", download)
    got = binfmt.qemu_user_static(AARCH64, log=tmp_path / "log")
    assert got == tmp_path / "cache/qemu-user/qemu-aarch64-static" and got.is_file()
    assert fetched == [("amd64", ["qemu-user-static"])]
    assert sorted(p.name for p in got.parent.iterdir()) == ["qemu-aarch64-static"]  # one file kept
    assert binfmt.qemu_user_static(AARCH64, log=tmp_path / "log") == got
    assert len(fetched) == 1


def test_interpreter_installed_on_the_host_is_preferred(tmp_path, monkeypatch):
    host = _static_elf(tmp_path / "bin/qemu-aarch64-static")
    monkeypatch.setattr(binfmt, "host_arch", lambda machine=None: AMD64)
    monkeypatch.setattr(binfmt.shutil, "which", lambda name: str(host))
    assert binfmt.qemu_user_static(AARCH64) == host
    _static_elf(host, machine=183)  # not one for this host: fetched instead
    monkeypatch.setattr(binfmt.layout, "cache_root", lambda: tmp_path / "cache")
    monkeypatch.setattr(binfmt.foreign, "download_and_unpack",
                        lambda *a, **k: (_ for _ in ()).throw(InfraError("no archive", step="x")))
    with pytest.raises(InfraError, match="cannot fetch qemu-user-static"):
        binfmt.qemu_user_static(AARCH64, log=tmp_path / "log")
