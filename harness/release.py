"""The release gate: build, verify and package every arch; machine-readable results; exit != 0 on
any failure. A release directory is written only when everything passed.

What a passed gate leaves in ``out/release/`` (docs/release.md): one reproducible tar per arch (the
build's artifacts, written by :func:`harness.reproduce.write_tar`), ``SHA256SUMS``, the OCI image
layout NeonVM consumes (``oci/``, :mod:`harness.oci`, written and read back by the ``oci`` step),
each arch's verification results (``results/<arch>/``), and the gate's own results
(``release.json``, ``release.xml``)."""
from __future__ import annotations

import functools
import json
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from harness import manifest, oci, report
from harness.arch import Arch
from harness.check import Evidence, run_check, skipped
from harness.errors import CheckFailed, InvalidArgument
from harness.fsutil import atomic_copy, atomic_write_text, sha256_file
from harness.kernel import build, kconfig
from harness.layout import default_out_dir, out_root
from harness.report import CheckResult
from harness.reproduce import TarEntry, source_date, stable_json, write_tar
from harness.tools import spec

LOG = logging.getLogger(__name__)
PACKAGED = ("vmlinuz", "System.map", "config", "tools.img")
# The records, without the fields that describe the run rather than its result (timings, the time of
# day, this host's paths): what stays is the same for two builds of the same inputs.
RECORDS = {"manifest.json": ("built_at", "durations", "build_dir", "tree"),
           "tools-manifest.json": ("durations", "perf.objdir")}
RESULTS = ("inspect", "boot", "compute")  # per-arch verification results, kept beside the tars (not reproducible)


def _step(results: list[CheckResult], name: str, fn: Callable[[Evidence], None]) -> bool:
    """Run one gate step through the check protocol: pass, fail (kernel, image or input wrong),
    error (harness or host broke)."""
    print(f"==> {name}", flush=True)
    result = run_check(name, fn, precision=1)
    results.append(result)
    print(f"<== {name}: {result.status.upper()}{': ' + result.reason if result.reason else ''}", flush=True)
    return result.status == "pass"


def package(arch: Arch, out: Path, dest: Path) -> Path:
    """out/<arch> -> dest/neonvm-kernel-<release>-<arch>.tar: the build's artifacts and records,
    byte-reproducible (sorted, mtimes the source date, owners 0:0; written under a temporary name)."""
    built = manifest.read(out, arch, step="package")
    name = f"neonvm-kernel-{built.kernelrelease}-{arch.name}"
    entries = [TarEntry(f"{name}/{f}", path=out / f, mode=0o644) for f in PACKAGED]
    records = {"manifest.json": built.data, "tools-manifest.json": spec.read_manifest(out)}
    for record, volatile in RECORDS.items():
        entries.append(TarEntry(f"{name}/{record}", data=stable_json(records[record], volatile)))
    return write_tar(dest / f"{name}.tar", entries, mtime=source_date(built, step="package"))


def copy_results(arch: Arch, out: Path, dest: Path) -> None:
    """The arch's inspection and boot results -> dest/results/<arch>/<inspect|boot>/."""
    for sub in RESULTS:
        for result in sorted((out / sub).glob("results.*")):
            atomic_copy(result, dest / "results" / arch.name / sub / result.name)


def require_passed(rel: Path) -> None:
    """Refuse to publish what the gate did not pass: ``rel/release.json`` must exist and every gate
    step in it must have passed (a skip is not a pass)."""
    path = rel / "release.json"
    try:
        data = json.loads(path.read_text())
        checks = [(str(c["name"]), str(c["status"])) for c in data["checks"]]
    except (OSError, ValueError, KeyError, TypeError):
        raise InvalidArgument(f"no release verdict at {path}: run 'nox -s release' first", step="publish") from None
    not_passed = [f"{n} ({s})" for n, s in checks if s != "pass"]
    if not data.get("ok") or not checks or not_passed:
        raise CheckFailed(f"the release gate did not pass ({', '.join(not_passed) or 'no steps'}): not publishing",
                          step="publish", log=path)


def run(arches: list[Arch], *, variant: str = "production", jobs: int = os.cpu_count() or 1) -> int:
    from harness.boot import run as boottest
    from harness.compute import run as compute
    from harness.tools import image as toolsimage
    from harness.tools import inspect

    var = kconfig.get_variant(variant)
    rel = out_root() / "release"
    # A failed (or interrupted) gate must not leave an older release, or its verdict, looking current.
    for stale in [*rel.glob("neonvm-kernel-*.tar"), rel / "SHA256SUMS", rel / "release.json", rel / "release.xml"]:
        stale.unlink(missing_ok=True)
    for stale_dir in (rel / "oci", rel / "results"):
        shutil.rmtree(stale_dir, ignore_errors=True)
    staging = out_root() / ".release-staging"
    shutil.rmtree(staging, ignore_errors=True)
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

    def do_compute(ev: Evidence, arch: Arch) -> None:
        ev["results"] = str(compute.results_dir(outs[arch.name], "ours") / "results.json")
        if not compute.compute_test(arch, outs[arch.name]):
            raise CheckFailed(f"a compute check failed: see {ev['results']}", step="compute-test")

    if built:
        _step(results, "inspect-tools", do_inspect)
    else:
        results.append(skipped("inspect-tools", "no tools image was built"))
    for arch in arches:
        if arch in built:
            _step(results, f"boot-test-{arch.name}", functools.partial(do_boot, arch=arch))
        else:
            results.append(skipped(f"boot-test-{arch.name}", "no kernel or tools image"))
    for arch in arches:  # the Postgres guest, after every boot test: the kernel's mechanisms first
        if arch in built:
            _step(results, f"compute-test-{arch.name}", functools.partial(do_compute, arch=arch))
        else:
            results.append(skipped(f"compute-test-{arch.name}", "no kernel or tools image"))
    meta = {"variant": variant, "arches": ",".join(a.name for a in arches)}

    def do_oci(ev: Evidence) -> None:
        layout = oci.write_layout([(a, outs[a.name]) for a in arches], staging / "oci", log=rel / "logs" / "oci.log")
        ev.update(layout.evidence())
        oci.inspect(layout, log=rel / "logs" / "oci.log")
        ev["read_back"] = "skopeo inspect: the index and every image, platform and labels as written"
        meta["oci_index"] = f"{layout.tag}@{layout.index.digest}"

    if all(r.status == "pass" for r in results):
        _step(results, "oci", do_oci)
    else:
        results.append(skipped("oci", "an earlier gate step did not pass"))
    ok = all(r.status == "pass" for r in results)
    rel.mkdir(parents=True, exist_ok=True)
    if ok:
        tars = [package(a, outs[a.name], staging) for a in arches]
        atomic_write_text(staging / "SHA256SUMS", "".join(f"{sha256_file(t)}  {t.name}\n" for t in tars))
        for a in arches:
            copy_results(a, outs[a.name], staging)
        for f in staging.iterdir():
            os.replace(f, rel / f.name)
        staging.rmdir()
        meta["packages"] = ",".join(t.name for t in tars)
    else:
        shutil.rmtree(staging, ignore_errors=True)
    report.write(results, suite="release", json_path=rel / "release.json", junit_path=rel / "release.xml",
                 meta=meta)
    report.print_table(results)
    print(f"release {'PASSED' if ok else 'FAILED'}: results in {rel / 'release.json'}")
    return 0 if ok else 1
