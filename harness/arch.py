"""The per-architecture table: every architecture-specific fact lives here and nowhere else."""
from __future__ import annotations

from dataclasses import dataclass

from harness.errors import UnsupportedArch


@dataclass(frozen=True)
class Arch:
    name: str  # the project's name: amd64 / arm64
    aliases: tuple[str, ...]
    make_arch: str  # make ARCH=
    srcarch: str  # arch/<srcarch>/ in the tree
    cross_compile: str  # make CROSS_COMPILE= ("" for native)
    config_name: str  # configs/linux-config-<config_name>-<version>
    image_target: str  # make target that builds the boot image
    image_path: str  # path of that image under the build directory
    image_magic: tuple[int, bytes]  # (offset, bytes) that identify the boot image format
    defconfig: str  # the file `make defconfig` reads (the arch's KBUILD_DEFCONFIG), under the tree
    gnu_triplet: str  # for compilers, busybox packages and perf
    debian_arch: str  # Debian architecture name (busybox-static download)
    elf_machine: int  # e_machine in the ELF header (EM_X86_64=62, EM_AARCH64=183)
    elf_machine_name: str
    qemu_binary: str
    qemu_machine: str
    qemu_cpu_tcg: str
    qemu_cpu_kvm: str
    qemu_cpu_runner_tcg: str  # the compute VM under TCG: the runner's -cpu max (arm64: a faster max)
    console: str  # kernel console= device, as the NeonVM runner sets it
    console_device: str  # "serial": the console is the second UART (-serial null -serial ...), the
    #                      runner's layout; "virtconsole": a virtio console (hvc0) on virtio-serial
    firmware: str | None  # -bios for the machine (None: QEMU's default)
    kernel_cmdline_extra: tuple[str, ...]
    cpu_hotplug_qmp: bool  # the runner hot-plugs vCPUs through QMP device_add (amd64) ...
    cpu_hotplug_sysfs: bool  # ... or scales them through sysfs online/offline
    # Under TCG, boot the guest with online-capable FACP/APIC from an early initrd cpio (harness/boot/acpitables.py):
    # x86 Linux >= 6.9 allows no hotplug vCPU under TCG with QEMU's own tables (revision 3, no Online Capable).
    tcg_online_capable_acpi: bool
    acpi_dimm: bool  # ACPI pc-dimm memory hotplug
    hotadd_fault_check: bool  # the memory hot-add series (x86 direct mapping) and its fault-injection proof
    boot_timeout_tcg: int  # seconds from QEMU start to a shell, under TCG
    boot_timeout_kvm: int
    boot_test_budget_tcg: float  # seconds the whole boot test may take under TCG (harness.benchmarks.boot)
    uname_machine: str  # `uname -m` of a host that can run this arch's guests under KVM
    kvm_host_cpu_flags: tuple[str, ...]  # one of these /proc/cpuinfo flags proves hardware virtualisation
    kvm_host_modules: tuple[str, ...]  # one of these must be loaded (/sys/module/NAME): () = built in
    # tools image: extra make flags for the static perf, and (feature, why it is off) pairs
    perf_make_flags: tuple[str, ...] = ()
    perf_disabled: tuple[tuple[str, str], ...] = ()
    # Debian packages (for debian_arch) unpacked into a private sysroot that perf's build finds through
    # pkg-config (harness/foreign.py): static libraries the build host does not install for this
    # arch. () = the host's own (configs/host-packages.txt).
    perf_sysroot_packages: tuple[str, ...] = ()

    @property
    def cross_gcc(self) -> str:
        return f"{self.cross_compile}gcc"

    def make_vars(self) -> list[str]:
        out = [f"ARCH={self.make_arch}"]
        if self.cross_compile:
            out.append(f"CROSS_COMPILE={self.cross_compile}")
        return out


ARCHES: dict[str, Arch] = {
    "amd64": Arch(
        name="amd64",
        aliases=("x86_64", "x86"),
        make_arch="x86_64",
        srcarch="x86",
        cross_compile="",
        config_name="amd64",
        image_target="bzImage",
        image_path="arch/x86/boot/bzImage",
        image_magic=(0x202, b"HdrS"),  # x86 boot protocol header
        defconfig="arch/x86/configs/x86_64_defconfig",
        gnu_triplet="x86_64-linux-gnu",
        debian_arch="amd64",
        elf_machine=62,
        elf_machine_name="x86-64",
        qemu_binary="qemu-system-x86_64",
        qemu_machine="q35",
        qemu_cpu_tcg="qemu64",
        qemu_cpu_kvm="host",
        qemu_cpu_runner_tcg="max",  # RDRAND among others: the guest's crng is seeded at boot, as under KVM
        console="ttyS1",
        console_device="serial",
        firmware=None,
        kernel_cmdline_extra=("earlyprintk=ttyS1",),
        cpu_hotplug_qmp=True,
        cpu_hotplug_sysfs=True,
        tcg_online_capable_acpi=True,
        acpi_dimm=True,
        hotadd_fault_check=True,
        boot_timeout_tcg=60,
        boot_timeout_kvm=20,
        # 60 s until the memory-stress and migration checks joined; migration alone takes ~56 s, 50 of
        # them virtio-mem's retry timer after a resize that was in flight during the migration.
        boot_test_budget_tcg=120.0,
        uname_machine="x86_64",
        kvm_host_cpu_flags=("vmx", "svm"),
        kvm_host_modules=("kvm_intel", "kvm_amd"),
    ),
    "arm64": Arch(
        name="arm64",
        aliases=("aarch64", "arm64v8"),
        make_arch="arm64",
        srcarch="arm64",
        cross_compile="aarch64-linux-gnu-",
        config_name="aarch64",
        image_target="Image",
        image_path="arch/arm64/boot/Image",
        image_magic=(0x38, b"ARM\x64"),  # arm64 Image header
        defconfig="arch/arm64/configs/defconfig",
        gnu_triplet="aarch64-linux-gnu",
        debian_arch="arm64",
        elf_machine=183,
        elf_machine_name="AArch64",
        qemu_binary="qemu-system-aarch64",
        qemu_machine="virt",
        qemu_cpu_tcg="max,pauth-impdef=on",  # QARMA pointer auth is slow to emulate
        qemu_cpu_kvm="host",
        qemu_cpu_runner_tcg="max,pauth-impdef=on",
        console="hvc0",
        console_device="virtconsole",
        firmware="/usr/share/qemu-efi-aarch64/QEMU_EFI.fd",
        # earlycon: the PL011 (described by ACPI's SPCR) until hvc0 is up, into the early log
        kernel_cmdline_extra=("acpi=on", "earlycon"),
        cpu_hotplug_qmp=False,
        cpu_hotplug_sysfs=True,
        tcg_online_capable_acpi=False,  # no QMP vCPU hotplug on arm64
        acpi_dimm=False,
        hotadd_fault_check=False,
        boot_timeout_tcg=150,
        boot_timeout_kvm=30,
        boot_test_budget_tcg=180.0,
        uname_machine="aarch64",
        kvm_host_cpu_flags=(),
        kvm_host_modules=(),
        # Debian installs only libc as a static library for the aarch64 cross toolchain.
        perf_make_flags=("NO_LIBELF=1",),
        perf_disabled=(("libelf", "NO_LIBELF=1: no static libelf for aarch64 on the build host (no symbol "
                                  "resolution from ELF files, no perf probe, no BPF)"),),
        # libtraceevent.a (tracepoint events: perf stat/record -e sched:...), a self-contained archive
        # needing only libc (dlopen for plugins is in libc.a)
        perf_sysroot_packages=("libtraceevent-dev",),
    ),
}


def get_arch(name: str) -> Arch:
    key = name.strip().lower()
    for arch in ARCHES.values():
        if key == arch.name or key in arch.aliases:
            return arch
    known = ", ".join(sorted(ARCHES))
    raise UnsupportedArch(f"unknown architecture {name!r} (known: {known})", step="arch")
