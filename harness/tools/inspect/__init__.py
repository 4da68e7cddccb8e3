"""Inspection of tools images with libguestfs: one appliance launch for every image given.

Every finding is a named check of the one check protocol (:mod:`harness.check`) in
OUT/inspect/results.json and results.xml (:mod:`harness.report`). Expectations come from the kernel
build (OUT/manifest.json, OUT/config) and from the image build (OUT/tools-manifest.json,
OUT/tools-files.tsv), never from the image itself.

An appliance that cannot launch is an InfraError naming the step and the log that holds
libguestfs's trace and verbose output; a wrong image is a set of failed checks (and the checks that
cannot run after them, skipped with the reason); a check that crashes is an error of that check, and
the other checks and images are still inspected.

* :mod:`.appliance` - launching and closing the libguestfs appliance;
* :mod:`.expect` - what an image must hold (:class:`Expectation`);
* :mod:`.checks` - the checks, the context they share and the order they run in;
* :mod:`.listing` - the image's own file listing against the build's;
* ELF headers are read with :mod:`harness.tools.elf` (shared with the boot test and foreign packages).
"""
from __future__ import annotations

import functools
import logging
import os
from pathlib import Path
from typing import Any, Literal, TextIO

from harness import report
from harness.arch import Arch
from harness.check import run_check
from harness.errors import InfraError
from harness.progress import Timer
from harness.report import CheckResult
from harness.tools.inspect.appliance import (
    APPLIANCE_MEMSIZE,
    APPLIANCE_SMP,
    GuestFS,
    _backend_settings,
    close_appliance,
    open_appliance,
)
from harness.tools.inspect.checks import image_missing, run_image_checks
from harness.tools.inspect.expect import Expectation
from harness.tools.inspect.listing import compare_listings, walk_listing

__all__ = [
    "APPLIANCE_MEMSIZE",
    "APPLIANCE_SMP",
    "Expectation",
    "GuestFS",
    "_backend_settings",
    "close_appliance",
    "compare_listings",
    "inspect_images",
    "open_appliance",
    "results_paths",
    "walk_listing",
]

LOG = logging.getLogger(__name__)

Stream = TextIO | Literal[False] | None  # None: stdout; False: print nothing


def results_paths(out_dir: Path) -> tuple[Path, Path]:
    """(JSON, JUnit XML) results of the inspection of OUT's image."""
    d = Path(out_dir) / "inspect"
    return d / "results.json", d / "results.xml"


def inspect_images(items: list[tuple[Arch, Path]], *, stream: Stream = None, thorough: bool | None = None) -> bool:
    """Inspect each (arch, OUT) image in ONE appliance; write OUT/inspect/results.{json,xml}.

    ``thorough`` (default: $NEONVM_INSPECT_THOROUGH=1) adds the ``listing`` check, which compares
    every entry's kind and size with tools-files.tsv (about 1.5 s more per image under TCG)."""
    if thorough is None:
        thorough = os.environ.get("NEONVM_INSPECT_THOROUGH") == "1"
    exps = [Expectation.load(arch, out) for arch, out in items]
    missing = [e for e in exps if not e.image.is_file()]
    for e in missing:
        results = [run_check("image-file", functools.partial(image_missing, e))]
        _write(e, results, {"arch": e.arch.name, "image": str(e.image)}, stream)
    present = [e for e in exps if e.image.is_file()]
    if not present:
        return False
    log = present[0].out_dir / "inspect" / "guestfs.log"
    with Timer() as launch:
        g = open_appliance([e.image for e in present], log=log)
    ok = not missing
    try:
        devices = list(g.list_devices())
        if len(devices) != len(present):
            raise InfraError(f"attached {len(present)} drives but the appliance shows {devices}",
                             step="inspect-devices", log=log)
        partitions = list(g.list_partitions())
        for exp, dev in zip(present, devices, strict=True):
            results = _inspect_one(g, exp, dev, partitions, thorough=thorough)
            meta = {"arch": exp.arch.name, "image": str(exp.image), "device": dev,
                    "appliance_launch_s": round(launch.duration, 2), "appliance_log": str(log),
                    "images_in_launch": len(present), "thorough": thorough}
            _write(exp, results, meta, stream)
            ok = ok and all(r.ok for r in results)
    finally:
        close_appliance(g)
    return ok


def _inspect_one(g: GuestFS, exp: Expectation, device: str, partitions: list[str], *,
                 thorough: bool) -> list[CheckResult]:
    try:
        return run_image_checks(g, exp, device, partitions, thorough=thorough)
    except Exception as exc:  # a harness bug outside any check: this image says so, the others go on
        LOG.exception("inspection of %s crashed", exp.image)
        return [CheckResult("inspection", "error", f"harness bug: {type(exc).__name__}: {exc}")]


def _write(exp: Expectation, results: list[CheckResult], meta: dict[str, Any], stream: Stream) -> None:
    json_path, junit_path = results_paths(exp.out_dir)
    report.write(results, suite=f"tools-image-{exp.arch.name}", json_path=json_path, junit_path=junit_path,
                 meta=meta)
    if stream is not False:
        print(f"== tools image {exp.arch.name}: {exp.image}", file=stream)
        report.print_table(results, stream=stream)
