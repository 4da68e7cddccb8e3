"""Benchmark of the compute guest: ``python -m harness.benchmarks.compute [ARCH] [--out OUT] [--rounds N]``.

The same Debian compute guest (Postgres, the runner's disks and shape) booted on the project's kernel
and on Debian's cloud kernel installed in that guest image (the kernel a user would pick instead),
alternated ``--rounds`` times in one run, every compute check on both. Figures per kernel (medians):
seconds from QEMU start to Postgres answering the host, pgbench tps while virtio-mem and CPUs scale,
seconds the virtio-mem resizes took under that load, seconds to get the memory hog's pages (swap) and
seconds from ``system_powerdown`` to power-off; each shown as the ratio ours / Debian's.

Targets: every check passes on both kernels; ours reaches Postgres no slower than Debian's
(ratio <= 1.0) and keeps at least 0.8 of Debian's pgbench throughput while scaling. Figures go to
stdout and to out/bench/compute-ARCH.json; exit 1 when a check fails or a target is missed.
"""
from __future__ import annotations

import argparse
import io
import json
import logging
import statistics
import sys
from pathlib import Path
from typing import Any

from harness import fsutil, layout, manifest
from harness.arch import ARCHES, get_arch
from harness.compute import run as compute
from harness.errors import HarnessError

LOG = logging.getLogger(__name__)
STEP = "bench-compute"
READY_RATIO_TARGET = 1.0  # ours / Debian's, seconds to Postgres ready
TPS_RATIO_TARGET = 0.8  # ours / Debian's, pgbench tps while scaling (higher is better)


def figures_of(results: dict[str, Any]) -> dict[str, float | None]:
    """The benchmark's figures from one compute test's results.json."""
    ev = {c["name"]: c.get("evidence", {}) for c in results["checks"]}

    def get(check: str, *keys: str) -> Any:
        value: Any = ev.get(check, {})
        for k in keys:
            value = value.get(k) if isinstance(value, dict) else None
        return value
    resize = get("scale-under-load", "resize_seconds")
    return {"ready_s": get("postgres-ready", "seconds_to_ready"),
            "tps_scaling": get("scale-under-load", "pgbench", "tps_mean"),
            "resize_s": round(sum(resize), 2) if resize else None,
            "swap_fill_s": get("swap-under-pressure", "hog_ready_seconds"),
            "poweroff_s": get("powerdown", "seconds_to_poweroff"),
            "wall_s": results.get("meta", {}).get("wall_seconds")}


def _median(values: list[float | None]) -> float | None:
    got = [v for v in values if v is not None]
    return round(statistics.median(got), 2) if got else None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m harness.benchmarks.compute", description=__doc__.split("\n\n")[0])
    p.add_argument("arch", nargs="?", default="amd64", choices=sorted(ARCHES))
    p.add_argument("--out", type=Path, help="OUT dir of the kernel (default out/ARCH, else out/smoke-ARCH)")
    p.add_argument("--rounds", type=int, default=1)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    arch = get_arch(args.arch)
    out = args.out
    if out is None:
        out = next((d for v in ("production", "smoke") if manifest.exists(d := layout.default_out_dir(arch.name, v))),
                   None)
    if out is None or not manifest.exists(out):
        print(f"bench: no {arch.name} build with a manifest.json (build one first)", file=sys.stderr)
        return 2
    per_kernel: dict[str, list[dict[str, float | None]]] = {k: [] for k in compute.KERNELS}
    failed: dict[str, list[str]] = {k: [] for k in compute.KERNELS}
    releases: dict[str, str] = {}
    for i in range(args.rounds):  # alternate, so that background load hits both alike
        for kernel in compute.KERNELS:
            try:
                compute.compute_test(arch, out, kernel=kernel, stream=io.StringIO())
            except HarnessError as exc:
                print(f"bench: the compute test on {kernel} could not run: {exc}", file=sys.stderr)
                return 2
            res_path = compute.results_dir(out, kernel) / "results.json"
            results = json.loads(res_path.read_text())
            releases[kernel] = results["meta"].get("kernelrelease", "?")
            per_kernel[kernel].append(figures_of(results))
            failed[kernel] += [f"{c['name']} ({c['status']}: {c.get('reason', '')[:100]})" for c in results["checks"]
                               if c["status"] in ("fail", "error")]
            print(f"round {i + 1}/{args.rounds}, {kernel}: {per_kernel[kernel][-1]} (results {res_path})")
    medians = {k: {f: _median([r[f] for r in rows]) for f in rows[0]} for k, rows in per_kernel.items()}
    ours, theirs = medians["ours"], medians["debian-cloud"]
    ratios = {f: (round(o / t, 3) if o is not None and t else None) for f, o, t in
              ((f, ours[f], theirs[f]) for f in ours)}
    ok = not failed["ours"] and not failed["debian-cloud"]
    ready_ok = ratios["ready_s"] is not None and ratios["ready_s"] <= READY_RATIO_TARGET
    tps_ok = ratios["tps_scaling"] is not None and ratios["tps_scaling"] >= TPS_RATIO_TARGET
    ok = ok and ready_ok and tps_ok
    names = {"ready_s": "Postgres ready (s)", "tps_scaling": "pgbench tps while scaling",
             "resize_s": "virtio-mem resizes under load (s)", "swap_fill_s": "memory hog into swap (s)",
             "poweroff_s": "system_powerdown to off (s)", "wall_s": "whole compute test (s)"}
    print(f"compute guest, {arch.name}, {out.name}: ours {releases.get('ours')} vs Debian "
          f"{releases.get('debian-cloud')}, medians of {args.rounds} round(s), same run, same image")
    for f, label in names.items():
        print(f"  {label:36} ours {ours[f]!s:>8}  Debian {theirs[f]!s:>8}  ratio {ratios[f]!s:>6}")
    print(f"  target: ready ratio <= {READY_RATIO_TARGET} {'OK' if ready_ok else 'MISSED'}; tps ratio >= "
          f"{TPS_RATIO_TARGET} {'OK' if tps_ok else 'MISSED'}")
    for kernel, bad in failed.items():
        if bad:
            print(f"  FAILED on {kernel}: {'; '.join(bad)}")
    figures = {"arch": arch.name, "out": str(out), "rounds": args.rounds, "releases": releases,
               "medians": medians, "ratios": ratios, "runs": per_kernel, "failed": failed,
               "targets": {"ready_ratio_max": READY_RATIO_TARGET, "tps_ratio_min": TPS_RATIO_TARGET}, "ok": ok}
    dest = layout.out_root() / "bench" / f"compute-{arch.name}.json"
    fsutil.atomic_write_json(dest, figures)
    print(f"figures: {dest}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
