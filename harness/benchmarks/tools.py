"""Benchmark of tools-image inspection against a bare libguestfs launch measured in the same run.

    python -m harness.benchmarks.tools [ARCH[=OUT] ...] [--variant smoke] [--repeat N] [--no-cold] [--no-settings]

Figures, each as seconds and as a ratio to the bare ``guestfish --ro -a IMG run`` baseline:
  * cold first launch (an empty appliance cache, so libguestfs builds its appliance first);
  * bare launch (warm cache) - the baseline;
  * inspect one image (every check, one launch), and every image given in one launch;
  * a bare launch from Python with various appliance settings (memsize, smp, verbose);
  * image size against the tree's apparent size (from OUT/tools-manifest.json).
Results also go to OUT_ROOT/bench-tools.json.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from harness import proc
from harness.arch import ARCHES, Arch, get_arch
from harness.fsutil import atomic_write_json
from harness.layout import default_out_dir, out_root
from harness.progress import Timer
from harness.tools.inspect import (
    APPLIANCE_MEMSIZE,
    APPLIANCE_SMP,
    _backend_settings,
    close_appliance,
    inspect_images,
    open_appliance,
)
from harness.tools.spec import IMAGE_NAME, read_manifest

SETTINGS = [  # (label, memsize MiB or None = libguestfs default, smp, verbose)
    ("default (1280 MiB, 1 vCPU, quiet)", None, 1, False),
    ("512 MiB, 2 vCPUs, quiet", 512, 2, False),
    ("1280 MiB, 1 vCPU, verbose console log", None, 1, True),
    (f"harness ({APPLIANCE_MEMSIZE} MiB, {APPLIANCE_SMP} vCPU, quiet, trace)", APPLIANCE_MEMSIZE, APPLIANCE_SMP, False),
]


def guestfish_argv(image: Path) -> list[str]:
    return ["guestfish", "--ro", "-a", str(image), "run"]


def _env() -> dict[str, str]:
    env = {"LIBGUESTFS_BACKEND": os.environ.get("LIBGUESTFS_BACKEND", "direct")}
    settings = _backend_settings()
    if settings:
        env["LIBGUESTFS_BACKEND_SETTINGS"] = ":".join(settings)
    return env


def bare_guestfish(image: Path, log: Path) -> float:
    with Timer() as t:
        proc.run(guestfish_argv(image), step="bench-guestfish", log=log, env=_env(), timeout=600)
    return t.duration


def python_launch(image: Path, log: Path, *, memsize: int | None, smp: int | None, verbose: bool,
                  cachedir: Path | None = None) -> float:
    with Timer() as t:
        g = open_appliance([image], log=log, memsize=memsize, smp=smp, verbose=verbose, cachedir=cachedir)
        close_appliance(g)
    return t.duration


def timed_inspect(items: list[tuple[Arch, Path]]) -> float:
    with Timer() as t:
        inspect_images(items, stream=False)
    return t.duration


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m harness.benchmarks.tools", description=__doc__.splitlines()[0])
    ap.add_argument("items", nargs="*", default=list(ARCHES), help="ARCH or ARCH=OUTDIR")
    ap.add_argument("--variant", default="production", help="OUT dir variant for bare ARCH items")
    ap.add_argument("--repeat", type=int, default=1, help="measure bare/inspect this many times (median)")
    ap.add_argument("--no-cold", action="store_true", help="skip the cold-cache launch")
    ap.add_argument("--no-settings", action="store_true", help="skip the appliance-settings comparison")
    args = ap.parse_args(argv)
    os.environ.setdefault("LIBGUESTFS_BACKEND", "direct")

    items = []
    for item in args.items:
        name, _, out = item.partition("=")
        arch = get_arch(name)
        out_dir = Path(out) if out else default_out_dir(arch.name, args.variant)
        if not (out_dir / IMAGE_NAME).is_file():
            print(f"bench: {out_dir / IMAGE_NAME} missing (build it with `python -m harness tools --arch "
                  f"{arch.name}`)", file=sys.stderr)
            return 2
        items.append((arch, out_dir))
    image = items[0][1] / IMAGE_NAME
    logs = out_root() / "bench-logs"
    figures: dict[str, float] = {}

    if not args.no_cold:
        with tempfile.TemporaryDirectory(prefix="guestfs-cold-") as cache:
            figures["cold_first_launch"] = python_launch(image, logs / "cold.log", memsize=APPLIANCE_MEMSIZE,
                                                         smp=APPLIANCE_SMP, verbose=False, cachedir=Path(cache))
    bare_guestfish(image, logs / "guestfish.log")  # make sure the shared appliance cache is warm
    bares, ones, alls = [], [], []
    for _ in range(args.repeat):  # interleaved, so load changes hit both sides alike
        bares.append(bare_guestfish(image, logs / "guestfish.log"))
        ones.append(timed_inspect(items[:1]))
        if len(items) > 1:
            alls.append(timed_inspect(items))
    base = statistics.median(bares)
    figures["bare_guestfish"] = base
    figures[f"inspect_{items[0][0].name}"] = statistics.median(ones)
    if alls:
        figures["inspect_" + "+".join(a.name for a, _ in items) + "_one_launch"] = statistics.median(alls)
    if not args.no_settings:
        samples: dict[str, list[float]] = {}
        for _ in range(args.repeat):  # interleaved as well
            for label, mem, smp, verbose in SETTINGS:
                samples.setdefault(label, []).append(
                    python_launch(image, logs / "settings.log", memsize=mem, smp=smp, verbose=verbose))
        for label, values in samples.items():
            figures[f"launch+close: {label}"] = statistics.median(values)

    print(f"{'figure':<58} {'seconds':>8} {'ratio':>7} {'vs bare':>8}")
    for name, secs in figures.items():
        print(f"{name:<58} {secs:8.1f} {secs / base:7.2f} {secs - base:+8.1f}")
    sizes = {}
    for arch, out in items:
        m = read_manifest(out)
        fs = m["filesystem"]
        sizes[arch.name] = {
            "image_bytes": m["image"]["size"], "tree_apparent_bytes": m["tree"]["apparent_size"],
            "metadata_bytes": fs.get("metadata_bytes"), "headroom_bytes": fs.get("headroom_bytes"),
            "ratio": m["size_ratio"], "ratio_without_metadata": m.get("size_ratio_without_metadata"),
            "bound_ok": m["image"]["size"] <= 1.15 * m["tree"]["apparent_size"] + (fs.get("metadata_bytes") or 0),
        }
        s = sizes[arch.name]
        print(f"size {arch.name}: image {s['image_bytes'] / 2**20:.1f} MiB, "
              f"tree {s['tree_apparent_bytes'] / 2**20:.1f} MiB "
              f"(x{s['ratio']:.3f}; x{s['ratio_without_metadata']:.3f} without {s['metadata_bytes'] / 2**20:.1f} MiB "
              f"of ext4+GPT metadata; bound 1.15 {'met' if s['bound_ok'] else 'MISSED'})")
    over = figures[f"inspect_{items[0][0].name}"] - base
    print(f"inspection overhead over a bare launch: {over:+.1f}s (budget +3.0s): {'OK' if over <= 3 else 'OVER'}")
    atomic_write_json(out_root() / "bench-tools.json", {
        "figures_s": {k: round(v, 2) for k, v in figures.items()},
        "ratios": {k: round(v / base, 3) for k, v in figures.items()},
        "samples": {"bare": bares, "inspect_one": ones, "inspect_all": alls},
        "sizes": sizes, "load_avg": os.getloadavg(), "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
    })
    return 0 if over <= 3 else 1


if __name__ == "__main__":
    sys.exit(main())
