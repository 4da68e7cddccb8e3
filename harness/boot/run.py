"""The boot test: boot a built kernel the way the NeonVM runner does and run the checks.

One boot per architecture serves every check: QEMU starts with ``cpus_present`` vCPUs of
``cpus_max`` and the kernel with ``maxcpus=1``, so the sysfs mode has present-but-offline vCPUs to
online and the QMP mode has free slots to hot-add into. Results go to ``OUT/boot/``:
``results.json``, ``results.xml`` (JUnit), ``boot.console.log`` and ``boot.qemu.log``.

:func:`boot_test` takes a build's OUT directory (its ``manifest.json`` names the release);
:func:`run` takes a :class:`BootRequest`, which names a kernel path and the expected release
directly (Debian's kernel, negative tests, the benchmarks).
"""
from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import KW_ONLY, dataclass, field
from pathlib import Path
from typing import Any, TextIO

from harness import fsutil, manifest, proc, report
from harness.arch import Arch
from harness.boot import acpitables, initramfs
from harness.boot.checks import (
    Check,
    Guest,
    boot,
    contract,
    cpu_hotplug,
    hotplug_faults,
    memory_hotplug,
    memory_stress,
    migration,
    ptp,
    run_check,
    tools_in_guest,
)
from harness.boot.vm import Accel, Vm, VmSpec, detect_accel, kernel_cmdline
from harness.check import failed, skipped
from harness.check import run_check as run_one
from harness.errors import HarnessError, InfraError, InvalidArgument
from harness.progress import Timer
from harness.report import CheckResult

LOG = logging.getLogger(__name__)

# In the order they run: CPUs through sysfs first, memory next (the DIMM stays plugged), live
# migration (every later check runs in the final destination QEMU), then vCPU hotplug over QMP in
# the migrated VM, tools, the capability contract, and last the power button, which ends the VM.
# cpu-qmp runs after the migration on purpose: under TCG, QEMU before 10.0.5 leaves an unplugged
# vCPU's memory listener behind and a later migration of that QEMU can hang in setup
# (harness/boot/checks/migration.py, TCG_UNPLUG_BUG); a destination never had a vCPU unplugged.
_CPU_QMP = [c for c in cpu_hotplug.CHECKS if c.name == "cpu-qmp"]
CHECKS: list[Check] = [
    *boot.CHECKS,
    *(c for c in cpu_hotplug.CHECKS if c not in _CPU_QMP),
    *memory_hotplug.CHECKS,
    *memory_stress.CHECKS,
    *hotplug_faults.CHECKS,
    *migration.CHECKS,
    *_CPU_QMP,
    *ptp.CHECKS,
    *tools_in_guest.CHECKS,
    *contract.CHECKS,
    *contract.LAST,
]
BOOT_CHECK = "boot"
CHECK_NAMES = (BOOT_CHECK, *(c.name for c in CHECKS))
CPUS_MIN, CPUS_MAX = 1, 4
READY_RE = re.compile(re.escape(initramfs.READY_MARKER) + r" (\S+)\r?\n")


def cpus_present(arch: Arch) -> int:
    """vCPUs present at boot. The runner's sysfs mode boots all of them (kernel maxcpus= keeps the
    rest offline); where it also hot-plugs through QMP, one boot serves both modes: MIN+1 present
    (one to online through sysfs) and the rest left as free slots for device_add."""
    return CPUS_MIN + 1 if arch.cpu_hotplug_qmp else CPUS_MAX


def vm_spec(*, arch: Arch, kernel: Path, initrd: Path, accel: Accel, tools_img: Path | None = None,
            data_disk: Path | None = None, cmdline_extra: tuple[str, ...] = ()) -> VmSpec:
    """The VM the boot test runs: the runner's shape with this test's sizes."""
    return VmSpec(arch=arch, kernel=kernel, initrd=initrd, accel=accel, cpus_min=CPUS_MIN, cpus_max=CPUS_MAX,
                  cpus_present=cpus_present(arch), tools_img=tools_img, data_disk=data_disk,
                  cmdline_extra=cmdline_extra)


DATA_DISK_MIB = 64


def make_data_disk(path: Path, *, log: Path) -> Path:
    """A disk made the way the VM runner makes the Postgres data disk: ext4 with a label, project
    quota (``tune2fs -Q prjquota``) and ``prjquota`` in its default mount options. Made fresh for
    every boot (the guest writes to it)."""
    step = "data-disk"
    with fsutil.atomic_output(path) as tmp:
        with open(tmp, "wb") as fh:
            fh.truncate(DATA_DISK_MIB << 20)
        proc.run(["mkfs.ext4", "-q", "-F", "-L", contract.DATA_LABEL, tmp], step=step, log=log, timeout=60)
        proc.run(["tune2fs", "-O", "project", "-Q", "prjquota", tmp], step=step, log=log, timeout=60)
        proc.run(["tune2fs", "-E", "mount_opts=prjquota", tmp], step=step, log=log, timeout=60)
    return path


def select_checks(arch: Arch, only: Iterable[str] | None) -> list[Check]:
    wanted = set(only or ())
    unknown = wanted - set(CHECK_NAMES)
    if unknown:
        raise InvalidArgument(f"unknown check(s) {', '.join(sorted(unknown))} (known: {', '.join(CHECK_NAMES)})",
                              step="boot-test")
    return [c for c in CHECKS if c.applies(arch) and (c.name in wanted or not wanted and not c.opt_in)]


@dataclass(frozen=True)
class BootRequest:
    """One boot test: what to boot, which checks to run and where the results go.

    ``arch`` is positional, the rest by keyword; the defaults are the command line's."""

    arch: Arch
    _: KW_ONLY
    kernel: Path
    release: str  # the kernelrelease the guest must report
    results_dir: Path  # results.json, results.xml and the logs
    accel: str | Accel = "auto"  # "auto", "kvm", "tcg" or an already detected Accel
    tools_img: Path | None = None  # attached when the file exists
    require_tools: bool = False  # a missing tools image fails the tools check instead of skipping it
    only: Sequence[str] | None = None  # check names; None: every check that applies (not the opt-in ones)
    options: Mapping[str, Any] = field(default_factory=dict)  # check parameters (e.g. soak)
    dry_run: bool = False  # print the plan and QEMU's argv, run nothing
    cmdline_extra: tuple[str, ...] = ()
    boot_timeout: float | None = None  # default: the arch's, for the accelerator
    init_text: str | None = None  # another /init for the test initramfs (negative tests)
    tag: str = "boot"  # the prefix of the log files
    meta: Mapping[str, Any] = field(default_factory=dict)  # more for results.json's meta
    write_results: bool = True
    # Where QMP vCPU hotplug is tested under TCG, boot with online-capable FACP and APIC in an early
    # initrd cpio (harness/boot/acpitables.py); never under KVM.
    acpi_override: bool = True


def boot_test(arch: Arch, out_dir: Path, *, dry_run: bool = False, accel: str = "auto",
              require_tools: bool = False, only: list[str] | None = None, soak: int = 1,
              acpi_override: bool = True) -> bool:
    """Boot-test the kernel in OUT; write OUT/boot/results.{json,xml}; True when nothing failed."""
    out_dir = Path(out_dir)
    memory_stress.rounds(soak)  # validates --soak before anything runs
    built = manifest.read(out_dir, arch, step="boot-test").data if not dry_run or manifest.exists(out_dir) else {}
    results = run(BootRequest(arch, kernel=out_dir / "vmlinuz", release=built.get("kernelrelease", "?"),
                              results_dir=out_dir / "boot", tools_img=out_dir / "tools.img", accel=accel,
                              require_tools=require_tools, only=only, dry_run=dry_run, options={"soak": soak},
                              acpi_override=acpi_override,
                              meta={"variant": built.get("variant", ""), "version": built.get("version", "")}))
    return all(r.ok for r in results)


def run(req: BootRequest, *, stream: TextIO | None = None) -> list[CheckResult]:
    """Boot ``req.kernel`` once and run the selected checks; return their results (and write them
    unless ``req.write_results`` is off). ``stream`` gets the summary (default: stdout)."""
    out = stream or sys.stdout
    arch, results_dir, tag = req.arch, Path(req.results_dir), req.tag
    checks = select_checks(arch, req.only)
    acc = req.accel if isinstance(req.accel, Accel) else detect_accel(arch, req.accel)
    timeout = req.boot_timeout or (arch.boot_timeout_kvm if acc.name == "kvm" else arch.boot_timeout_tcg)
    tools_img = Path(req.tools_img) if req.tools_img else None
    data_disk = results_dir / f"{tag}.pgdata.img"

    def spec_for(initrd: Path) -> VmSpec:
        return vm_spec(arch=arch, kernel=Path(req.kernel), initrd=initrd, accel=acc,
                       cmdline_extra=tuple(req.cmdline_extra), data_disk=data_disk,
                       tools_img=tools_img if tools_img and tools_img.is_file() else None)

    acpi_wanted = acpitables.needed(arch, acc.name, [c.name for c in checks])
    if req.dry_run:
        _print_plan(spec_for(Path("$INITRAMFS")), checks, results_dir=results_dir, tag=tag, timeout=timeout,
                    acpi=acpi_wanted and req.acpi_override, stream=out)
        return []
    wall = Timer.begin()
    meta: dict[str, Any] = {"arch": arch.name, "kernel": str(req.kernel), "kernelrelease": req.release,
                            "accelerator": acc.name, "accelerator_reason": acc.reason, **req.meta}
    results: list[CheckResult] = []
    try:
        initrd = initramfs.build(arch, **({"init_text": req.init_text} if req.init_text else {}))
        meta["initramfs"] = str(initrd)
        meta["qemu"] = _qemu_version(arch)
        make_data_disk(data_disk, log=results_dir / f"{tag}.data-disk.log")
        spec = spec_for(initrd)
        if acpi_wanted and req.acpi_override:
            spec, meta["acpi_override"] = acpitables.apply(spec, qemu_version=meta["qemu"],
                                                           log_dir=results_dir, boot_timeout=timeout)
            meta["initrd"] = str(spec.initrd)
        elif acpi_wanted:
            meta["acpi_override"] = {"off": "disabled (--no-acpi-override)"}
        with Vm(spec, log_dir=results_dir, tag=tag) as vm:
            meta["kernel_cmdline"] = kernel_cmdline(spec)
            result, guest = boot_guest(vm, arch=arch, accel=acc, release=req.release, timeout=timeout,
                                       tools_img=tools_img, require_tools=req.require_tools)
            if guest is not None:
                guest.options = dict(req.options)
                if "acpi_override" in meta:
                    guest.options["acpi_override"] = meta["acpi_override"]
            results.append(result)
            try:
                for check in checks:
                    if guest is None:
                        results.append(skipped(check.name, "the boot failed (see check boot)"))
                    elif guest.powered_off:
                        results.append(CheckResult(check.name, "error", "not run: the guest was powered off"))
                    elif guest.lost:
                        results.append(skipped(check.name, guest.lost))
                    else:
                        results.append(run_check(check, guest))
            finally:  # every QEMU the checks started (migration destinations), whatever happened
                for problem in guest.teardown() if guest is not None else []:
                    results.append(CheckResult("teardown", "error", problem))
        data_disk.unlink(missing_ok=True)  # written by the guest; nothing to keep
    except Exception as exc:  # QEMU would not start, initramfs could not be built, a harness bug, ...
        if not results:
            results.append(failed(BOOT_CHECK, exc, {"accelerator": acc.name}))
        else:
            results.append(failed("teardown", exc))
    meta["wall_seconds"] = round(wall.elapsed, 2)
    if req.write_results:
        report.write(results, suite=f"boot-test-{arch.name}", json_path=results_dir / "results.json",
                     junit_path=results_dir / "results.xml", meta=meta)
    print(f"boot test of {req.release} ({arch.name}, {acc.name}: {acc.reason}) in {meta['wall_seconds']:.1f}s",
          file=out)
    report.print_table(results, stream=out)
    for r in results:
        if r.status in ("fail", "error") and r.evidence.get("console_tail"):
            print(f"--- last console lines ({r.name}):", file=out)
            for line in r.evidence["console_tail"][-15:]:
                print(f"    {line}", file=out)
    if req.write_results:
        print(f"results: {results_dir / 'results.json'}; logs: {results_dir}/{tag}.*.log", file=out)
    return results


def _print_plan(spec: VmSpec, checks: list[Check], *, results_dir: Path, tag: str, timeout: float, acpi: bool,
                stream: TextIO) -> None:
    """--dry-run: the accelerator, the checks and QEMU's command line(s), exactly as they would run."""
    print(f"# accelerator: {spec.accel.name} ({spec.accel.reason}); boot timeout {timeout}s", file=stream)
    if acpi:
        print("# initrd: early cpio of online-capable FACP and APIC (QEMU's own, read by a first boot of this "
              "VM, then cached) + $INITRAMFS", file=stream)
    print(f"# checks: {', '.join([BOOT_CHECK, *(c.name for c in checks)])}", file=stream)
    print(proc.quote(Vm(spec, log_dir=results_dir, tag=tag).argv("$RUNDIR")), file=stream)
    if any(c.name == migration.CHECK_NAME for c in checks):
        dest = Vm(spec, log_dir=results_dir, tag=migration.dest_tag(tag, 1), incoming=True)
        print("# migration destination (one per round, each with its own sockets and logs):", file=stream)
        print(proc.quote(dest.argv("$RUNDIR_DEST")), file=stream)


def boot_guest(vm: Vm, *, arch: Arch, accel: Accel, release: str, timeout: float,
               tools_img: Path | None = None, require_tools: bool = False) -> tuple[CheckResult, Guest | None]:
    """Wait for the test init's shell; the ``boot`` result, and a Guest when the shell answers."""
    ev: dict[str, Any] = {"accelerator": accel.name, "console_log": str(vm.console_log),
                          "qemu_log": str(vm.qemu_log), "boot_timeout_s": timeout}
    guests: list[Guest] = []

    def boot(ev: dict[str, Any]) -> None:
        m = vm.console.wait(READY_RE, timeout=timeout, scaled=False, step="boot", what="the test init's shell")
        ev["init_saw_release"] = m.group(1)
        vm.console.run("true", step="boot")
        ev["seconds_to_shell"] = round(vm.clock.elapsed, 2)
        _, dmesg = vm.console.run("dmesg", step="boot", timeout=60, watch=False)
        guests.append(Guest(vm=vm, arch=arch, accel_name=accel.name, release=release, boot_dmesg=dmesg,
                            tools_img=Path(tools_img) if tools_img else None, tools_required=require_tools,
                            data_disk=vm.spec.data_disk, vms=[vm]))

    result = run_one(BOOT_CHECK, boot, evidence=ev)
    if not result.ok and not ev.get("console_tail"):
        ev["console_tail"] = vm.console_tail()
    ev["seconds_since_qemu_start"] = round(vm.clock.elapsed, 2)
    return result, (guests[0] if guests and result.ok else None)


def _qemu_version(arch: Arch) -> str:
    try:
        out = proc.capture([arch.qemu_binary, "--version"], step="qemu", timeout=20)
    except HarnessError as exc:
        raise InfraError(str(exc), step="qemu") from exc
    return out.splitlines()[0].strip() if out else "?"
