"""The release gate: build, verify and package every arch; machine-readable results; exit != 0 on
any failure. A release directory is written only when everything passed."""
from __future__ import annotations

import json
import logging
import os
import shutil
import tarfile
import time
from pathlib import Path

from harness.kernel import build, kconfig
from harness import report
from harness.arch import Arch
from harness.errors import HarnessError, InfraError
from harness.fsutil import atomic_write_text, sha256_file
from harness.layout import default_out_dir, out_root

LOG = logging.getLogger(__name__)
PACKAGED = ("vmlinuz", "System.map", "config", "manifest.json", "tools.img", "tools-manifest.json")


def _step(results: list[report.CheckResult], name: str, fn) -> bool:
    """Run one gate step, recording pass / fail (kernel or image wrong) / error (harness or host)."""
    print(f"==> {name}", flush=True)
    start = time.monotonic()
    try:
        ok, reason, evidence = fn()
        status = "pass" if ok else "fail"
    except HarnessError as exc:
        ok, reason, evidence = False, str(exc), {"kind": exc.kind}
        status = "error" if isinstance(exc, InfraError) else "fail"
    results.append(report.CheckResult(name, status, reason, round(time.monotonic() - start, 1), evidence))
    print(f"<== {name}: {status.upper()}{': ' + reason if reason else ''}", flush=True)
    return ok


def _skip(results, name, why) -> None:
    results.append(report.CheckResult(name, "skip", f"not run: {why}"))


def package(arch: Arch, out: Path, dest: Path) -> Path:
    """out/<arch> -> dest/neonvm-kernel-<release>-<arch>.tar (written under a temporary name)."""
    manifest = json.loads((out / "manifest.json").read_text())
    name = f"neonvm-kernel-{manifest['kernelrelease']}-{arch.name}"
    dest.mkdir(parents=True, exist_ok=True)
    final = dest / f"{name}.tar"
    tmp = dest / f".{name}.tar.tmp"
    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
        for f in PACKAGED:
            tar.add(out / f, arcname=f"{name}/{f}")
        for sub in ("inspect", "boot"):
            for f in sorted((out / sub).glob("results.*")):
                tar.add(f, arcname=f"{name}/{sub}/{f.name}")
    os.replace(tmp, final)
    return final


def run(arches: list[Arch], *, variant: str = "production", jobs: int = os.cpu_count() or 1) -> int:
    from harness.boot import run as boottest
    from harness.tools import inspect, image as toolsimage

    var = kconfig.get_variant(variant)
    rel = out_root() / "release"
    # A failed (or interrupted) gate must not leave an older release, or its verdict, looking current.
    for stale in [*rel.glob("neonvm-kernel-*.tar"), rel / "SHA256SUMS", rel / "release.json", rel / "release.xml"]:
        stale.unlink(missing_ok=True)
    results: list[report.CheckResult] = []
    outs = {a.name: default_out_dir(a.name, variant) for a in arches}
    built: list[Arch] = []
    for arch in arches:
        out = outs[arch.name]

        def do_build(arch=arch, out=out):
            m = build.build(build.BuildRequest(arch=arch, variant=var, out_dir=out, jobs=jobs))
            return True, "", {"kernelrelease": m["kernelrelease"], "config_sha256": m["config_sha256"]}

        def do_tools(arch=arch, out=out):
            img = toolsimage.build_tools_image(arch, out, jobs=jobs)
            return True, "", {"tools.img": str(img), "sha256": sha256_file(img)}

        if _step(results, f"build-{arch.name}", do_build) and _step(results, f"tools-{arch.name}", do_tools):
            built.append(arch)
        elif not any(r.name == f"tools-{arch.name}" for r in results):
            _skip(results, f"tools-{arch.name}", "the kernel build failed")
    if built:
        _step(results, "inspect-tools", lambda: (inspect.inspect_images([(a, outs[a.name]) for a in built]),
                                                  "see " + ", ".join(str(outs[a.name] / "inspect" / "results.json")
                                                                  for a in built), {}))
    else:
        _skip(results, "inspect-tools", "no tools image was built")
    for arch in arches:
        if arch in built:
            _step(results, f"boot-test-{arch.name}",
                  lambda arch=arch: (boottest.boot_test(arch, outs[arch.name], require_tools=True),
                                     f"see {outs[arch.name] / 'boot' / 'results.json'}", {}))
        else:
            _skip(results, f"boot-test-{arch.name}", "no kernel or tools image")
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
