"""Benchmark of memory scaling under load: ``python -m harness.benchmarks.memory [--rounds N] [ARCH ...]``.

For each arch, in one boot of the built kernel (production, else smoke): virtio-mem grows by 1 GiB
and shrinks back ``--rounds`` times on the idle guest (the baseline), then the same with the
memory-stress load running (memhog, page cache, compaction, a vCPU offline/online). Prints seconds
per grow and shrink, and the loaded/idle ratio of the medians. Figures also go to
out/bench/memory.json. Under TCG here; the accelerator is in the output.
"""
from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from harness import fsutil, layout, manifest
from harness.arch import ARCHES, get_arch
from harness.boot import initramfs
from harness.boot import run as boottest
from harness.boot.checks import Guest, memory_stress
from harness.boot.checks.memory_hotplug import memtotal
from harness.boot.vm import Vm, detect_accel
from harness.errors import HarnessError

LOG = logging.getLogger(__name__)
GIB_MIB = 1024
STEP = "bench-memory"


def _out_dir(arch: str) -> tuple[Path | None, str]:
    for variant in ("production", "smoke"):
        out = layout.default_out_dir(arch, variant)
        if manifest.exists(out):
            return out, variant
    return None, "no build"


def _cycle(guest: Guest, rounds: int) -> dict[str, list[float]]:
    grow: list[float] = []
    shrink: list[float] = []
    for _ in range(rounds):
        for target, into in ((GIB_MIB, grow), (0, shrink)):
            rec = memory_stress.resize(guest, target, STEP)
            if not rec["reached"]:
                raise HarnessError(f"resize to {target} MiB stopped at {rec['reached_mib']} MiB", step=STEP)
            into.append(rec["seconds"])
    return {"grow_s": grow, "shrink_s": shrink}


def measure(arch_name: str, rounds: int, workdir: Path) -> dict[str, Any]:
    arch = get_arch(arch_name)
    out, variant = _out_dir(arch.name)
    if out is None:
        raise HarnessError(f"no built {arch.name} kernel (out/{arch.name} or out/smoke-{arch.name})", step=STEP)
    release = manifest.read(out, arch, step=STEP).kernelrelease
    acc = detect_accel(arch)
    disk = boottest.make_data_disk(workdir / f"{arch.name}.pgdata.img", log=workdir / f"{arch.name}.disk.log")
    spec = boottest.vm_spec(arch=arch, kernel=out / "vmlinuz", initrd=initramfs.build(arch), accel=acc,
                            data_disk=disk)
    with Vm(spec, log_dir=workdir, tag=f"bench-memory-{arch.name}") as vm:
        boot, guest = boottest.boot_guest(vm, arch=arch, accel=acc, release=release,
                                          timeout=arch.boot_timeout_tcg)
        if guest is None:
            raise HarnessError(f"{arch.name} did not boot: {boot.reason}", step=STEP)
        idle = _cycle(guest, rounds)
        total = memtotal(guest, STEP)
        load = memory_stress.start_load(guest, STEP, hog_mib=int(total / 1024 * memory_stress.HOG_FRACTION))
        try:
            loaded = _cycle(guest, rounds)
            alive = memory_stress.workload_alive(guest, load, STEP)
        finally:
            memory_stress.stop_load(guest, load, STEP)
    med = {k: statistics.median(v) for k, v in {**{f"idle_{k}": v for k, v in idle.items()},
                                                 **{f"loaded_{k}": v for k, v in loaded.items()}}.items()}
    return {"arch": arch.name, "variant": variant, "kernelrelease": release,
            "accelerator": acc.name, "rounds": rounds, "hog_mib": load.hog_mib, "workload_survived": alive,
            "idle": idle, "loaded": loaded, "median": med,
            "ratio_grow": round(med["loaded_grow_s"] / med["idle_grow_s"], 2),
            "ratio_shrink": round(med["loaded_shrink_s"] / med["idle_shrink_s"], 2)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m harness.benchmarks.memory", description=__doc__.split("\n\n")[0])
    p.add_argument("arch", nargs="*", default=sorted(ARCHES))
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    results = []
    try:
        with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
            for arch in args.arch:
                r = measure(arch, args.rounds, Path(tmp))
                results.append(r)
                m = r["median"]
                print(f"{r['arch']} ({r['variant']} {r['kernelrelease']}, {r['accelerator']}, {r['rounds']} rounds, "
                      f"load: memhog {r['hog_mib']} MiB + page cache + compaction + vCPU offline/online)")
                print(f"  1 GiB grow:   idle {m['idle_grow_s']:.2f}s  loaded {m['loaded_grow_s']:.2f}s  "
                      f"ratio {r['ratio_grow']:.2f}")
                print(f"  1 GiB shrink: idle {m['idle_shrink_s']:.2f}s  loaded {m['loaded_shrink_s']:.2f}s  "
                      f"ratio {r['ratio_shrink']:.2f}")
                print(f"  workload survived: {r['workload_survived']}")
    except HarnessError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    dest = layout.out_root() / "bench" / "memory.json"
    fsutil.atomic_write_json(dest, {"results": results})
    print(f"figures: {dest}")
    return 0 if all(r["workload_survived"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
