"""The compute test: ``python -m harness.compute.run ARCH [--out OUT] [--kernel ours|debian-cloud|both]``.

Builds (or finds in the cache) the Debian root image, makes the runner's disks, boots a kernel the way
the NeonVM runner boots a compute, runs the checks, powers the VM down with QMP ``system_powerdown``,
boots again from the same disks and checks that nothing was lost. The kernel is the one built in OUT
(``ours``) or Debian's cloud kernel installed in the same image (``debian-cloud``: the kernel a user
would pick instead, booted through its own initramfs), with the same disks, shape and checks.
Results: ``OUT/compute/results.{json,xml}`` (``OUT/compute-debian-cloud/`` for Debian's); logs in
the ``logs`` folder beside them.
"""
from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from harness import manifest, report
from harness.arch import ARCHES, Arch
from harness.boot.vm import Accel, Vm, VmSpec, detect_accel
from harness.check import Skip, failed, run_check, skipped
from harness.compute import checks, image, runner
from harness.errors import HarnessError, InvalidArgument
from harness.layout import default_out_dir
from harness.progress import Timer, timed
from harness.report import CheckResult

LOG = logging.getLogger(__name__)
SHAPE = runner.Shape(cpus_min=1, cpus_max=2, mem_slot_mib=512, mem_slots_min=2, mem_slots_max=4, cpu_mode="sysfs")
KERNELS = ("ours", "debian-cloud")
# The checks on the running guest between Postgres ready and the power-down, in order.
RUNNING_CHECKS: list[tuple[str, Callable[[checks.Compute], Callable[[dict[str, Any]], None]]]] = [
    ("swap-active", checks.swap_active),
    ("quota-edquot", checks.quota_holds),
    ("scale-under-load", checks.scale_under_load),
    ("swap-under-pressure", checks.swap_under_pressure),
    ("perf-backend", checks.perf_backend),
    ("chrony-ptp", checks.chrony_ptp),
]
CHECKS = ["image", "postgres-ready", *(name for name, _ in RUNNING_CHECKS), "powerdown", "durable-after-powerdown"]


def results_dir(out_dir: Path, kernel: str) -> Path:
    return out_dir / ("compute" if kernel == "ours" else f"compute-{kernel}")


class ComputeVm(Vm):
    """:class:`Vm`'s lifecycle (console and QMP sockets, teardown) with the compute VM's argv.

    vm.py builds the boot test's argv (the test initramfs, its own drives); the compute VM has the
    runner's disks and a root filesystem, so it overrides :meth:`Vm.argv`. ``spec.initrd`` is None for
    our kernel (it mounts /dev/vda itself) and Debian's initramfs for Debian's kernel."""

    def __init__(self, spec: VmSpec, *, log_dir: Path, tag: str, shape: runner.Shape, disks: runner.Disks,
                 host_port: int) -> None:
        super().__init__(spec, log_dir, tag)
        self.shape, self.disks, self.host_port = shape, disks, host_port

    def argv(self, rundir: Path | str) -> list[str]:
        rundir = Path(rundir)
        return runner.qemu_argv(self.spec.arch, self.shape, kernel=self.spec.kernel, disks=self.disks,
                                accel=self.spec.accel.name, console_sock=rundir / "console.sock",
                                qmp_sock=rundir / "qmp.sock", log_port=self.log_port_log,
                                early_log=self.early_log, host_port=self.host_port, name=self.spec.name,
                                initrd=self.spec.initrd)


def kernel_files(kernel: str, built: manifest.Manifest, img: image.RootImage) -> tuple[Path, Path | None, str]:
    """(vmlinuz, initrd or None, release) of ``kernel``: the ``built`` one, or Debian's from the image."""
    if kernel == "debian-cloud":
        cloud = img.cloud_kernel
        return cloud.vmlinuz, cloud.initrd, cloud.release
    return built.out_dir / "vmlinuz", None, built.kernelrelease


def boot(arch: Arch, acc: Accel, *, kernel: Path, initrd: Path | None, disks: runner.Disks, log_dir: Path,
          tag: str) -> ComputeVm:
    """The compute VM for one boot (entered with ``with``): the runner's shape, disks and argv."""
    spec = VmSpec(arch=arch, kernel=kernel, initrd=initrd, accel=acc, name=f"neonvm-compute-{tag}")
    return ComputeVm(spec, log_dir=log_dir, tag=tag, shape=SHAPE, disks=disks, host_port=runner.free_port())


def compute_test(arch: Arch, out_dir: Path, *, kernel: str = "ours", accel: str = "auto",
                 stream: TextIO | None = None) -> bool:
    """Run the compute test on ``kernel`` (the one in ``out_dir``, or Debian's cloud kernel); write
    the results under :func:`results_dir`."""
    if kernel not in KERNELS:
        raise InvalidArgument(f"--kernel {kernel!r} is not one of {', '.join(KERNELS)}", step="compute-test")
    out = stream or sys.stdout
    res_dir = results_dir(out_dir, kernel)
    logs = res_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    wall = Timer.begin()
    results: list[CheckResult] = []
    durations: dict[str, float] = {}
    meta: dict[str, Any] = {"arch": arch.name, "out": str(out_dir), "kernel": kernel, "shape": dict(vars(SHAPE))}
    names = CHECKS
    try:
        built = manifest.read(out_dir, arch, step="compute-test")
        meta["kernelrelease"] = built.kernelrelease
        acc = detect_accel(arch, accel)
        meta["accelerator"], meta["accelerator_reason"] = acc.name, acc.reason
        img: list[image.RootImage] = []

        def build(ev: dict[str, Any]) -> None:
            checks.require_host("compute-image")
            with timed(durations, "image"):
                img.append(image.ensure(arch, log_dir=logs, stream=out))
            ev.update(path=str(img[0].path), key=img[0].key, cached=img[0].cached,
                      seconds=img[0].build_seconds, cold_build_seconds=img[0].meta.get("cold_build_seconds"))
        results.append(run_check("image", build))
        if not img:
            results += [skipped(n, "no root image (see check image)") for n in names[1:]]
            raise _Done
        vmlinuz, initrd, meta["kernelrelease"] = kernel_files(kernel, built, img[0])
        with timed(durations, "disks"):
            disks = runner.make_disks(res_dir / "disks", arch, img[0].path, tools=out_dir / "tools.img",
                                      log=logs / "disks.log")
        token = ""
        vm = boot(arch, acc, kernel=vmlinuz, initrd=initrd, disks=disks, log_dir=logs,
                   tag="boot1")
        with vm:
            meta["kernel_cmdline"] = runner.kernel_cmdline(arch, SHAPE)
            c = checks.Compute(vm=vm, host_port=vm.host_port, log=logs / "host.log", arch=arch, accel=acc.name,
                               cpu_mode=SHAPE.cpu_mode, virtio_mem_mib=SHAPE.virtio_mem_mib,
                               tools_attached=disks.tools is not None)
            ready = run_check("postgres-ready", checks.postgres_ready(c))
            results.append(ready)
            if ready.status != "pass":
                results += [skipped(n, "Postgres never became ready") for n in names[2:]]
                raise _Done
            for name, func in RUNNING_CHECKS:
                with timed(durations, name):
                    results.append(run_check(name, func(c)))
            down = run_check("powerdown", checks.powerdown(c))
            results.append(down)
            token = c.token if down.status == "pass" else ""
        if not token:
            results.append(skipped("durable-after-powerdown", "the power-down did not pass"))
            raise _Done
        vm2 = boot(arch, acc, kernel=vmlinuz, initrd=initrd, disks=disks, log_dir=logs,
                    tag="boot2")
        with vm2:
            c2 = checks.Compute(vm=vm2, host_port=vm2.host_port, log=logs / "host.log", arch=arch, accel=acc.name)
            results.append(run_check("durable-after-powerdown", checks.durable(c2, token)))
    except _Done:
        pass
    except Exception as exc:  # a missing manifest, QEMU that would not start, a harness bug, ...
        results.append(failed("compute-test", exc))
    meta["durations"] = durations
    meta["wall_seconds"] = round(wall.elapsed, 2)
    report.write(results, suite=f"compute-test-{arch.name}-{kernel}", json_path=res_dir / "results.json",
                 junit_path=res_dir / "results.xml", meta=meta)
    print(f"compute test ({arch.name}, kernel {kernel} {meta.get('kernelrelease', '?')}, "
          f"{meta.get('accelerator', '?')}) in {meta['wall_seconds']:.1f}s", file=out)
    report.print_table(results, stream=out)
    print(f"results: {res_dir / 'results.json'}; logs: {logs}", file=out)
    return all(r.ok for r in results)


class _Done(Exception):
    """Nothing more can run; the results so far are written."""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m harness.compute.run", description=__doc__.splitlines()[0])
    ap.add_argument("arch", choices=sorted(ARCHES))
    ap.add_argument("--out", type=Path, help="the build's OUT directory (default out/ARCH)")
    ap.add_argument("--accel", default="auto", choices=("auto", "kvm", "tcg"))
    ap.add_argument("--kernel", default="ours", choices=(*KERNELS, "both"),
                    help="the kernel built in OUT, Debian's cloud kernel, or both one after the other")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    arch = ARCHES[args.arch]
    out_dir = args.out or default_out_dir(arch.name, "production")
    ok = True
    try:
        for kernel in (KERNELS if args.kernel == "both" else (args.kernel,)):
            ok = compute_test(arch, out_dir, kernel=kernel, accel=args.accel) and ok
    except (HarnessError, Skip) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
