"""The release gate: build, verify and package every arch; machine-readable results; exit != 0 on
any failure. A release directory is written only when everything passed."""
from __future__ import annotations

import functools
import logging
import os
import shutil
import tarfile
from collections.abc import Callable
from pathlib import Path

from harness import manifest, report
from harness.arch import Arch
from harness.check import Evidence, run_check, skipped
from harness.errors import CheckFailed
from harness.fsutil import atomic_output, atomic_write_text, sha256_file
from harness.kernel import build, kconfig
from harness.layout import default_out_dir, out_root
from harness.report import CheckResult

LOG = logging.getLogger(__name__)
PACKAGED = ("vmlinuz", "System.map", "config", "manifest.json", "tools.img", "tools-manifest.json")


def _step(results: list[CheckResult], name: str, fn: Callable[[Evidence], None]) -> bool:
    """Run one gate step through the check protocol: pass, fail (kernel, image or input wrong),
    error (harness or host broke)."""
    print(f"==> {name}", flush=True)
    result = run_check(name, fn, precision=1)
    results.append(result)
    print(f"<== {name}: {result.status.upper()}{': ' + result.reason if result.reason else ''}", flush=True)
    return result.status == "pass"


def package(arch: Arch, out: Path, dest: Path) -> Path:
    """out/<arch> -> dest/neonvm-kernel-<release>-<arch>.tar (written under a temporary name)."""
    built = manifest.read(out, arch, step="package")
    name = f"neonvm-kernel-{built.kernelrelease}-{arch.name}"
    final = dest / f"{name}.tar"
    with atomic_output(final) as tmp, tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
        for f in PACKAGED:
            tar.add(out / f, arcname=f"{name}/{f}")
        for sub in ("inspect", "boot"):
            for result in sorted((out / sub).glob("results.*")):
                tar.add(result, arcname=f"{name}/{sub}/{result.name}")
    return final


def run(arches: list[Arch], *, variant: str = "production", jobs: int = os.cpu_count() or 1) -> int:
    from harness.boot import run as boottest
    from harness.tools import image as toolsimage
    from harness.tools import inspect

    var = kconfig.get_variant(variant)
    rel = out_root() / "release"
    # A failed (or interrupted) gate must not leave an older release, or its verdict, looking current.
    for stale in [*rel.glob("neonvm-kernel-*.tar"), rel / "SHA256SUMS", rel / "release.json", rel / "release.xml"]:
        stale.unlink(missing_ok=True)
    results: list[CheckResult] = []
    outs = {a.name: default_out_dir(a.name, variant) for a in arches}
    built: list[Arch] = []
    for arch in arches:
        out = outs[arch.name]

        def do_build(ev: Evidence, arch: Arch = arch, out: Path = out) -> None:
            m = build.build(build.BuildRequest(arch=arch, variant=var, out_dir=out, jobs=jobs))
            ev.update(kernelrelease=m["kernelrelease"], config_sha256=m["config_sha256"])

        def do_tools(ev: Evidence, arch: Arch = arch, out: Path = out) -> None:
            img = toolsimage.build_tools_image(arch, out, jobs=jobs)
            ev.update({"tools.img": str(img), "sha256": sha256_file(img)})

        if _step(results, f"build-{arch.name}", do_build) and _step(results, f"tools-{arch.name}", do_tools):
            built.append(arch)
        elif not any(r.name == f"tools-{arch.name}" for r in results):
            results.append(skipped(f"tools-{arch.name}", "the kernel build failed"))

    def do_inspect(ev: Evidence) -> None:
        ev["results"] = [str(outs[a.name] / "inspect" / "results.json") for a in built]
        if not inspect.inspect_images([(a, outs[a.name]) for a in built]):
            raise CheckFailed("an image check failed: see " + ", ".join(ev["results"]), step="inspect-tools")

    def do_boot(ev: Evidence, arch: Arch) -> None:
        ev["results"] = str(outs[arch.name] / "boot" / "results.json")
        if not boottest.boot_test(arch, outs[arch.name], require_tools=True):
            raise CheckFailed(f"a boot check failed: see {ev['results']}", step="boot-test")

    if built:
        _step(results, "inspect-tools", do_inspect)
    else:
        results.append(skipped("inspect-tools", "no tools image was built"))
    for arch in arches:
        if arch in built:
            _step(results, f"boot-test-{arch.name}", functools.partial(do_boot, arch=arch))
        else:
            results.append(skipped(f"boot-test-{arch.name}", "no kernel or tools image"))
    ok = all(r.status == "pass" for r in results)
    rel.mkdir(parents=True, exist_ok=True)
    meta = {"variant": variant, "arches": ",".join(a.name for a in arches)}
    if ok:
        staging = out_root() / ".release-staging"
        shutil.rmtree(staging, ignore_errors=True)
        tars = [package(a, outs[a.name], staging) for a in arches]
        atomic_write_text(staging / "SHA256SUMS", "".join(f"{sha256_file(t)}  {t.name}\n" for t in tars))
        for f in staging.iterdir():
            os.replace(f, rel / f.name)
        staging.rmdir()
        meta["packages"] = ",".join(t.name for t in tars)
    report.write(results, suite="release", json_path=rel / "release.json", junit_path=rel / "release.xml",
                 meta=meta)
    report.print_table(results)
    print(f"release {'PASSED' if ok else 'FAILED'}: results in {rel / 'release.json'}")
    return 0 if ok else 1
