"""perf for the tools image: built statically from the kernel's own tree, in its own O= directory
under the cache (incremental), cross-built for arm64 against a private sysroot of Debian packages."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from harness import foreign, proc
from harness.arch import Arch
from harness.errors import BuildFailed, CommandFailed, CommandTimeout, InfraError
from harness.fsutil import exclusive_lock
from harness.layout import cache_root
from harness.progress import Progress
from harness.tools.kbuild import PERF_TIMEOUT, KernelBuild

# perf: what the harness switches off on every arch, and why (README: docs/tools-image.md).
# libtraceevent (tracepoint events) is on: the host's libtraceevent-dev (amd64), or Debian's
# arm64 package unpacked into a private sysroot (Arch.perf_sysroot_packages, harness/foreign.py).
PERF_DISABLED = {
    "libpython": "NO_LIBPYTHON=1: an embedded Python interpreter cannot be linked statically",
    "libperl": "NO_LIBPERL=1: an embedded Perl interpreter cannot be linked statically",
    "jvmti": "NO_JVMTI=1: the JVMTI agent is a shared library, which a -static link cannot make",
}
PERF_FLAGS = ("LDFLAGS=-static", "NO_LIBPYTHON=1", "NO_LIBPERL=1", "NO_JVMTI=1", "WERROR=0")
PERF_SYSROOT = "perf-sysroot"  # cache_root()/foreign/<debian arch>/perf-sysroot/root


# -- command lines (built here, tested in tests/unit/test_toolsimage.py) --------------------------
def perf_flags(arch: Arch, sysroot: foreign.Unpacked | None = None) -> list[str]:
    """perf's make variables beyond ARCH/CROSS_COMPILE/O=/-j."""
    flags = [*PERF_FLAGS, *arch.perf_make_flags]
    if sysroot is not None:
        # perf includes <traceevent/event-parse.h>, pkg-config only names <sysroot>/usr/include/traceevent:
        # the sysroot's include directory goes ahead of the host's /usr/include (which the cross gcc searches)
        flags.append(f"EXTRA_CFLAGS=-I{sysroot.root}/usr/include")
    return flags


def perf_env(arch: Arch, sysroot: foreign.Unpacked | None = None) -> dict[str, str]:
    """pkg-config sees only the target's own .pc files (the host's libraries never leak into a cross
    build): the host's multiarch directory for the arch, or the private sysroot's, with every path it
    prints moved into the sysroot (PKG_CONFIG_SYSROOT_DIR)."""
    prefix = str(sysroot.root) if sysroot is not None else ""
    return {"PKG_CONFIG_LIBDIR": f"{prefix}/usr/lib/{arch.gnu_triplet}/pkgconfig", "PKG_CONFIG_PATH": "",
            "PKG_CONFIG_SYSROOT_DIR": prefix}


def perf_objdir(arch: Arch, tree: Path, sysroot: foreign.Unpacked | None = None) -> Path:
    """perf's O= directory: one per (arch, tree, make variables, pkg-config environment, sysroot
    packages), so a change of flags or libraries builds afresh instead of reusing objects and the
    FEATURE-DUMP of the old ones."""
    recipe = {"tree": str(Path(tree).resolve()), "flags": perf_flags(arch, sysroot),
              "env": perf_env(arch, sysroot), "debs": list(sysroot.debs) if sysroot is not None else []}
    key = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]
    return cache_root() / "perf" / f"{arch.name}-{key}"


def perf_argv(arch: Arch, tree: Path, objdir: Path, jobs: int,
              sysroot: foreign.Unpacked | None = None) -> list[str]:
    return ["make", "-C", str(Path(tree) / "tools" / "perf"), f"O={objdir}", f"-j{jobs}",
            *arch.make_vars(), *perf_flags(arch, sysroot), "perf"]


# -- the private sysroot of a cross build ------------------------------------------------------------------
def check_perf_sysroot(arch: Arch, root: Path) -> None:
    """The unpacked packages hold static libraries for the arch, and pkg-config files for them."""
    libdir = Path(root) / "usr" / "lib" / arch.gnu_triplet
    archives = sorted(libdir.glob("*.a"))
    if not archives:
        raise InfraError(f"no static library (*.a) in {libdir}", step=f"tools-sysroot-{arch.name}")
    for a in archives:
        foreign.check_static_archive(a, arch)
    if not sorted((libdir / "pkgconfig").glob("*.pc")):
        raise InfraError(f"no pkg-config file in {libdir / 'pkgconfig'}", step=f"tools-sysroot-{arch.name}")


def perf_sysroot(arch: Arch) -> foreign.Unpacked | None:
    """The private sysroot perf links from (None: the host's libraries are the arch's own)."""
    if not arch.perf_sysroot_packages:
        return None
    return foreign.unpacked(arch, PERF_SYSROOT, arch.perf_sysroot_packages,
                            verify=lambda root: check_perf_sysroot(arch, root), step=f"tools-sysroot-{arch.name}")


# -- the build ------------------------------------------------------------------------------------------
def read_feature_dump(objdir: Path) -> dict[str, bool]:
    """perf's FEATURE-DUMP (``feature-libelf=1`` lines) as {feature: on}."""
    path = Path(objdir) / "FEATURE-DUMP"
    out: dict[str, bool] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            if line.startswith("feature-") and "=" in line:
                k, v = line[len("feature-"):].split("=", 1)
                out[k] = v.strip() == "1"
    return out


def build_perf(kb: KernelBuild, *, jobs: int, log: Path) -> tuple[Path, dict[str, Any]]:
    """Build perf for ``kb``; return the binary and what the tools manifest records about it."""
    sysroot = perf_sysroot(kb.arch)
    objdir = perf_objdir(kb.arch, kb.tree, sysroot)
    objdir.mkdir(parents=True, exist_ok=True)
    progress = Progress(f"perf ({kb.arch.name})")
    with exclusive_lock(objdir.with_name(objdir.name + ".lock"), step="tools-perf", what=f"perf objdir {objdir}"):
        try:
            proc.run(perf_argv(kb.arch, kb.tree, objdir, jobs, sysroot), step="tools-perf", log=log,
                     env=perf_env(kb.arch, sysroot), on_line=lambda ln: progress.tick(ln.strip()),
                     timeout=PERF_TIMEOUT)
        except CommandTimeout:  # a hang is the host's (infra), not the input's
            raise
        except CommandFailed as exc:
            raise BuildFailed(f"perf build failed: {exc.message}", step="tools-perf", log=log) from exc
    progress.done()
    binary = objdir / "perf"
    features = read_feature_dump(objdir)
    info = {
        "objdir": str(objdir),
        "make_flags": perf_flags(kb.arch, sysroot),
        "pkg_config_env": perf_env(kb.arch, sysroot),
        "sysroot_debs": list(sysroot.debs) if sysroot is not None else [],
        "features_on": sorted(k for k, v in features.items() if v),
        "features_off": sorted(k for k, v in features.items() if not v),
        "disabled_by_harness": {**PERF_DISABLED, **dict(kb.arch.perf_disabled)},
    }
    return binary, info
