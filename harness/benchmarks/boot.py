"""Benchmark of the boot test: ``python -m harness.benchmarks.boot [--rounds N] [--amd64 OUT] [--arm64 OUT]``.

Under TCG, in one run:
* boot to shell of the project's amd64 kernel vs Debian's generic kernel (the baseline) booting the
  same initramfs, alternated ``--rounds`` times, medians compared (target: ratio <= 0.5);
* the whole boot test (every check) per arch, wall time against its budget (amd64 60 s, arm64 180 s),
  also shown as a multiple of the baseline's boot to shell, to tell a slow machine from a slow test.

OUT defaults to the production build (out/<arch>), falling back to the smoke build with a note.
Figures go to stdout and to out/bench/boot.json; exit 1 when a target is missed.
"""
from __future__ import annotations

import argparse
import io
import json
import logging
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from harness import fsutil, layout, manifest
from harness.arch import ARCHES, Arch, get_arch
from harness.boot import run as boottest
from harness.errors import HarnessError

LOG = logging.getLogger(__name__)

SHELL_RATIO_TARGET = 0.5
STEP = "bench-boot"


def _out_dir(arch: str, given: str | None) -> tuple[Path | None, str]:
    if given:
        return Path(given), "given"
    for variant in ("production", "smoke"):
        out = layout.default_out_dir(arch, variant)
        if manifest.exists(out):
            return out, variant
    return None, "no build"


def _debian_kernel() -> Path | None:
    kernels = sorted(Path("/boot").glob("vmlinuz-*-amd64"))
    return kernels[-1] if kernels else None


def _boot_seconds(arch: Arch, kernel: Path, release: str, workdir: Path, tag: str) -> float:
    results = boottest.run(boottest.BootRequest(arch, kernel=kernel, release=release, results_dir=workdir / tag,
                                                accel="tcg", only=["kernelrelease"]), stream=io.StringIO())
    boot = results[0]
    if boot.status != "pass" or results[1].status != "pass":
        raise SystemExit(f"bench: {kernel} did not boot cleanly: {boot.reason or results[1].reason} "
                         f"(logs in {workdir / tag})")
    return float(boot.evidence["seconds_to_shell"])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m harness.benchmarks.boot", description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--amd64", help="OUT dir of the amd64 kernel (default: out/amd64, else out/smoke-amd64)")
    p.add_argument("--arm64", help="OUT dir of the arm64 kernel (default: out/arm64, else out/smoke-arm64)")
    p.add_argument("--baseline", help="baseline kernel (default: newest /boot/vmlinuz-*-amd64)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    amd64 = get_arch("amd64")
    figures: dict[str, Any] = {"accelerator": "tcg", "rounds": args.rounds}
    ok = True
    lines = []
    with tempfile.TemporaryDirectory(prefix="bench-boot-") as tmp:
        work = Path(tmp)
        out, variant = _out_dir("amd64", args.amd64)
        baseline = Path(args.baseline) if args.baseline else _debian_kernel()
        if out is None or baseline is None:
            print("bench: need an amd64 build and Debian's linux-image-amd64 in /boot", file=sys.stderr)
            return 2
        try:
            release = manifest.read(out, amd64, step=STEP).kernelrelease
        except HarnessError as exc:
            print(f"bench: {exc}", file=sys.stderr)
            return 2
        base_release = baseline.name.removeprefix("vmlinuz-")
        ours: list[float] = []
        theirs: list[float] = []
        for i in range(args.rounds):  # alternate, so that background load hits both alike
            ours.append(_boot_seconds(amd64, out / "vmlinuz", release, work, f"ours-{i}"))
            theirs.append(_boot_seconds(amd64, baseline, base_release, work, f"baseline-{i}"))
        m_ours, m_base = statistics.median(ours), statistics.median(theirs)
        ratio = m_ours / m_base
        ok &= ratio <= SHELL_RATIO_TARGET
        figures["boot_to_shell"] = {"kernel": f"{release} ({variant})", "baseline": base_release,
                                    "ours_s": ours, "baseline_s": theirs, "ratio": round(ratio, 3),
                                    "target": SHELL_RATIO_TARGET}
        lines.append(f"boot to shell, amd64 TCG: {release} ({variant}) median {m_ours:.2f}s vs Debian {base_release} "
                     f"{m_base:.2f}s = {ratio:.2f}x (target <= {SHELL_RATIO_TARGET}) "
                     f"{'OK' if ratio <= SHELL_RATIO_TARGET else 'MISSED'}")
        for name in ARCHES:
            arch = get_arch(name)
            arch_out, arch_variant = _out_dir(name, getattr(args, name, None))
            if arch_out is None:
                lines.append(f"boot test, {name} TCG: not measured (no build in out/)")
                continue
            try:
                release = manifest.read(arch_out, arch, step=STEP).kernelrelease
                results = boottest.run(boottest.BootRequest(arch, kernel=arch_out / "vmlinuz", release=release,
                                                            results_dir=work / f"full-{name}", accel="tcg",
                                                            tools_img=arch_out / "tools.img"),
                                       stream=io.StringIO())
            except HarnessError as exc:
                lines.append(f"boot test, {name}: could not run: {exc}")
                ok = False
                continue
            wall = json.loads((work / f"full-{name}" / "results.json").read_text())["meta"]["wall_seconds"]
            budget = arch.boot_test_budget_tcg
            bad = [r.name for r in results if r.status in ("fail", "error")]
            ok &= wall <= budget and not bad
            figures[f"boot_test_{name}"] = {"variant": arch_variant, "wall_s": wall, "budget_s": budget,
                                            "ratio_to_budget": round(wall / budget, 3),
                                            "x_baseline_boot": round(wall / m_base, 2), "failed": bad,
                                            "statuses": {r.name: r.status for r in results}}
            lines.append(f"boot test, {name} TCG, all checks ({arch_variant}): {wall:.1f}s = {wall / budget:.2f} "
                         f"of the {budget:.0f}s budget, {wall / m_base:.1f}x Debian's boot to shell"
                         + (f"; FAILED checks: {', '.join(bad)}" if bad else "")
                         + ("" if wall <= budget else " MISSED"))
    for line in lines:
        print(line)
    fsutil.atomic_write_json(layout.out_root() / "bench" / "boot.json", figures)
    print(f"figures: {layout.out_root() / 'bench' / 'boot.json'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
