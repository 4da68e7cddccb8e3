"""Benchmark of the compute guest: ``python -m harness.benchmarks.compute [ARCH] [--out OUT] [--rounds N]``.

The same Debian compute guest (Postgres, the runner's disks and shape) booted on the project's kernel
and on Debian's cloud kernel installed in that guest image (the kernel a user would pick instead),
alternated ``--rounds`` times in one run, each boot from fresh disks. Per boot: seconds from QEMU
start to Postgres answering the host over the forwarded port, then pgbench from the host at a fixed
scale and duration, read-only (``-S``) and TPC-B-like. Medians per kernel, shown as the ratio ours /
Debian's. Also the guest image's build time, cold (when this run built it, else as recorded) and
cached. The compute checks themselves are the compute test's (``nox -s compute-test -- ARCH
--kernel both``), not repeated here.

Targets: Postgres ready in <= 0.6x Debian's time; TPS >= 1.0x Debian's (no regression) for both
workloads. Figures go to stdout and to out/bench/compute-ARCH.json; exit 1 when a target is missed.
"""
from __future__ import annotations

import argparse
import logging
import statistics
import sys
from pathlib import Path
from typing import Any

from harness import fsutil, layout, manifest
from harness.arch import ARCHES, Arch, get_arch
from harness.boot.vm import detect_accel
from harness.compute import checks, image, runner
from harness.compute import run as compute
from harness.errors import CheckFailed, HarnessError
from harness.progress import Timer

LOG = logging.getLogger(__name__)
STEP = "bench-compute"
READY_RATIO_TARGET = 0.6  # ours / Debian's, seconds to Postgres accepting connections (lower is better)
TPS_RATIO_TARGET = 1.0  # ours / Debian's, pgbench tps (higher is better)
PGBENCH_SECONDS = 15
WORKLOADS = {"read-only": ["-S"], "tpc-b": []}


def one_boot(arch: Arch, built: manifest.Manifest, kernel: str, img: image.RootImage, work: Path,
             tag: str) -> dict[str, Any]:
    """Boot ``kernel`` from fresh disks; seconds to Postgres ready and pgbench tps per workload."""
    logs = work / tag / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    vmlinuz, initrd, release = compute.kernel_files(kernel, built, img)
    disks = runner.make_disks(work / tag / "disks", arch, img.path, tools=None, log=logs / "disks.log")
    acc = detect_accel(arch, "tcg")
    vm = compute.boot(arch, acc, kernel=vmlinuz, initrd=initrd, disks=disks, log_dir=logs, tag=tag)
    rec: dict[str, Any] = {"kernel": kernel, "release": release, "logs": str(logs)}
    with vm:
        c = checks.Compute(vm=vm, host_port=vm.host_port, log=logs / "host.log", arch=arch, accel=acc.name)
        ev: dict[str, Any] = {}
        checks.wait_ready(c, ev, step=STEP)
        rec["ready_s"] = ev["seconds_to_ready"]
        c.pgbench(["-i", "-s", str(checks.PGBENCH_SCALE), "-q"], step=STEP, timeout=600)
        for name, extra in WORKLOADS.items():
            out_text = c.pgbench([*extra, "-n", "-c", str(checks.PGBENCH_CLIENTS), "-j", "2", "-T",
                                  str(PGBENCH_SECONDS)], step=STEP, timeout=PGBENCH_SECONDS + 120)
            summary = checks.parse_pgbench(out_text)
            if summary["failed"]:
                raise CheckFailed(f"pgbench {name} on {kernel}: {summary['failed']} failed transactions", step=STEP,
                                   log=c.log)
            rec[f"tps_{name}"] = summary["tps"]
    return rec


def _median(values: list[float]) -> float:
    return round(statistics.median(values), 2)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m harness.benchmarks.compute", description=__doc__.split("\n\n")[0])
    p.add_argument("arch", nargs="?", default="amd64", choices=sorted(ARCHES))
    p.add_argument("--out", type=Path, help="OUT dir of the kernel (default out/ARCH, else out/smoke-ARCH)")
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    arch = get_arch(args.arch)
    out = args.out or next((d for v in ("production", "smoke")
                            if manifest.exists(d := layout.default_out_dir(arch.name, v))), None)
    if out is None or not manifest.exists(out):
        print(f"bench: no {arch.name} build with a manifest.json (build one first)", file=sys.stderr)
        return 2
    work = layout.out_root() / "bench" / f"compute-{arch.name}"
    figures: dict[str, Any] = {"arch": arch.name, "out": str(out), "rounds": args.rounds, "accelerator": "tcg",
                               "pgbench": {"scale": checks.PGBENCH_SCALE, "clients": checks.PGBENCH_CLIENTS,
                                           "seconds": PGBENCH_SECONDS}}
    try:
        checks.require_host(STEP)
        built = manifest.read(out, arch, step=STEP)
        with Timer() as first:
            img = image.ensure(arch, log_dir=work)
        with Timer() as lookup:
            image.ensure(arch, log_dir=work)
        figures["image"] = {"cold_build_s": img.meta.get("cold_build_seconds"), "built_now": not img.cached,
                            "cached_lookup_s": round(first.duration, 2) if img.cached else round(lookup.duration, 3),
                            "size_mib": img.meta.get("size_mib")}
        runs: dict[str, list[dict[str, Any]]] = {k: [] for k in compute.KERNELS}
        for i in range(args.rounds):  # alternated, so that background load hits both alike
            for kernel in compute.KERNELS:
                rec = one_boot(arch, built, kernel, img, work, f"{kernel}-{i}")
                runs[kernel].append(rec)
                print(f"round {i + 1}/{args.rounds} {kernel}: ready {rec['ready_s']:.2f}s, tps read-only "
                      f"{rec['tps_read-only']:.1f}, tpc-b {rec['tps_tpc-b']:.1f}", flush=True)
    except HarnessError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    keys = ("ready_s", "tps_read-only", "tps_tpc-b")
    med = {k: {f: _median([r[f] for r in rows]) for f in keys} for k, rows in runs.items()}
    ratios = {f: round(med["ours"][f] / med["debian-cloud"][f], 3) for f in keys}
    ok_ready = ratios["ready_s"] <= READY_RATIO_TARGET
    ok_tps = all(ratios[f] >= TPS_RATIO_TARGET for f in ("tps_read-only", "tps_tpc-b"))
    figures.update(runs=runs, medians=med, ratios=ratios, ok=ok_ready and ok_tps,
                   releases={k: rows[0]["release"] for k, rows in runs.items()},
                   targets={"ready_ratio_max": READY_RATIO_TARGET, "tps_ratio_min": TPS_RATIO_TARGET})
    im = figures["image"]
    print(f"compute guest, {arch.name} TCG, {out.name}: ours {figures['releases']['ours']} vs Debian "
          f"{figures['releases']['debian-cloud']}, medians of {args.rounds} alternated boots each")
    labels = {"ready_s": "QEMU start -> Postgres accepts (s)", "tps_read-only": "pgbench -S tps",
              "tps_tpc-b": "pgbench TPC-B-like tps"}
    for f, label in labels.items():
        print(f"  {label:36} ours {med['ours'][f]:>8}  Debian {med['debian-cloud'][f]:>8}  ratio {ratios[f]:>6}")
    print(f"  target: ready ratio <= {READY_RATIO_TARGET} {'OK' if ok_ready else 'MISSED'}; tps ratios >= "
          f"{TPS_RATIO_TARGET} {'OK' if ok_tps else 'MISSED'}")
    print(f"  guest image: cold build {im['cold_build_s']} s{' (this run)' if im['built_now'] else ' (recorded)'}, "
          f"cached {im['cached_lookup_s']} s, {im['size_mib']} MiB")
    dest = layout.out_root() / "bench" / f"compute-{arch.name}.json"
    fsutil.atomic_write_json(dest, figures)
    print(f"figures: {dest}")
    return 0 if figures["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
