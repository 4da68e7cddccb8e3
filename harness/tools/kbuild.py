"""The kernel build a tools image belongs to (OUT/manifest.json, read through :mod:`harness.manifest`),
``make`` in its build directory with exactly the variables the kernel was built with, and the
deadlines of the tools image's external steps."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness import manifest, proc
from harness.arch import Arch
from harness.errors import SourceMissing

STEP = "tools-manifest"

# Deadlines (seconds) of the external steps: far above what they take here (docs/tools-image.md),
# so only a hung command reaches them.
PERF_TIMEOUT = 2 * 3600
KBUILD_TIMEOUT = 1800
STEP_TIMEOUT = 600


@dataclass(frozen=True)
class KernelBuild:
    """What OUT/manifest.json says about a finished kernel build (validated on load)."""

    arch: Arch
    out_dir: Path
    kernelrelease: str
    version: str
    variant: str
    tree: Path
    build_dir: Path
    make_vars: tuple[str, ...]
    source_date_epoch: int

    @classmethod
    def from_out(cls, arch: Arch, out_dir: Path) -> KernelBuild:
        out_dir = Path(out_dir)
        m = manifest.read(out_dir, arch, step=STEP)
        m.require("tree", "build_dir", "make_vars", step=STEP)
        tree, build_dir = Path(m.data["tree"]), Path(m.data["build_dir"])
        for what, p in (("tree", tree), ("build_dir", build_dir)):
            if not p.is_dir():
                raise SourceMissing(f"manifest {what} {p} does not exist", step=STEP)
        return cls(arch=arch, out_dir=out_dir, kernelrelease=m.kernelrelease, version=m.version,
                   variant=m.variant, tree=tree, build_dir=build_dir,
                   make_vars=tuple(str(v) for v in m.data["make_vars"]),
                   source_date_epoch=source_date_epoch(m.data, tree))


def source_date_epoch(data: dict[str, Any], tree: Path) -> int:
    """The timestamp every inode of the image gets: $SOURCE_DATE_EPOCH, else the manifest's
    ``source_date_epoch``, else the mtime of the tree's top-level Makefile (from the tarball)."""
    env = os.environ.get("SOURCE_DATE_EPOCH")
    if env:
        return int(env)
    if data.get("source_date_epoch"):
        return int(data["source_date_epoch"])
    return int((tree / "Makefile").stat().st_mtime)


def kbuild_argv(kb: KernelBuild, *targets: str) -> list[str]:
    """make in the kernel's build directory, with exactly the variables the kernel was built with."""
    return ["make", "-C", str(kb.build_dir), *kb.make_vars, *targets]


def extmod_argv(kb: KernelBuild, dest: Path) -> list[str]:
    """The kernel's own packaging script for the out-of-tree module build tree (as builddeb uses)."""
    return kbuild_argv(kb, "run-command",
                       f"KBUILD_RUN_COMMAND=$(srctree)/scripts/package/install-extmod-build {dest}")


def kernelrelease_of(kb: KernelBuild) -> str:
    return proc.capture(kbuild_argv(kb, "-s", "kernelrelease"), step="tools-kernelrelease").strip()
