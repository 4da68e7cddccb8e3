"""Kernel build: verified source -> patched tree -> resolved and audited config -> image + manifest.

Each (arch, variant) has its own out-of-tree build directory (``O=``) under the cache, so builds are
incremental and never clobber each other. Outputs land in the arch's output directory: artifacts
are written under temporary names and renamed, and ``manifest.json`` (removed when a build starts,
written last) is what marks the directory as a complete build.
"""
from __future__ import annotations

import logging
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness import manifest, proc
from harness.arch import Arch
from harness.errors import (
    BuildFailed,
    CommandFailed,
    CommandTimeout,
    ConfigAuditFailed,
    InvalidArgument,
    ToolMissing,
)
from harness.fsutil import atomic_copy, exclusive_lock, sha256_file
from harness.kernel import kconfig, source, tree
from harness.kernel.patches import Series
from harness.layout import cache_root
from harness.progress import Progress, timed
from harness.tools.spec import FILES_NAME, IMAGE_NAME, MANIFEST_NAME

LOG = logging.getLogger(__name__)
SUFFIX_RE = re.compile(r"^[-+.~_A-Za-z0-9]{0,40}$")
# kbuild's quiet output: "  CC      kernel/fork.o"
_KBUILD_LINE = re.compile(r"^\s{2}([A-Z][A-Z0-9_]*(?:\s\[M\])?)\s+(\S+)")
# Reproducible builds and ccache hits across build directories.
BUILD_ENV = {"KBUILD_BUILD_USER": "neonvm", "KBUILD_BUILD_HOST": "neonvm-harness"}


@dataclass
class BuildRequest:
    arch: Arch
    variant: kconfig.Variant
    out_dir: Path
    version: str | None = None
    provider: str | None = None
    source_path: Path | None = None
    sha256: str | None = None
    suffix: str | None = None
    jobs: int = field(default_factory=lambda: os.cpu_count() or 1)
    series_dir: Path | None = None
    build_dir: Path = None  # type: ignore[assignment]  # None: the cache's, set in __post_init__
    use_ccache: bool = True
    pin: source.Pin | None = None  # default: configs/kernel.toml

    def __post_init__(self) -> None:
        if self.suffix is None:
            self.suffix = self.variant.suffix
        if not SUFFIX_RE.match(self.suffix):
            raise InvalidArgument(f"bad version suffix {self.suffix!r} (letters, digits, - + . ~ _; "
                                  "at most 40)", step="build")
        if self.jobs < 1:
            raise InvalidArgument(f"--jobs must be >= 1, not {self.jobs}", step="build")
        if self.build_dir is None:
            self.build_dir = cache_root() / "build" / f"{self.arch.name}-{self.variant.name}"


def toolchain(arch: Arch) -> dict[str, str]:
    out = {}
    for key, argv in (("cc", [arch.cross_gcc, "--version"]), ("ld", [f"{arch.cross_compile}ld", "--version"]),
                      ("make", ["make", "--version"]), ("ccache", ["ccache", "--version"])):
        try:
            out[key] = proc.capture(argv, step="toolchain").splitlines()[0].strip()
        except (CommandFailed, ToolMissing):
            out[key] = "not installed"
    return out


def make_vars(req: BuildRequest) -> list[str]:
    """make variables shared by every make in this build dir (so kernelrelease never changes)."""
    return [*req.arch.make_vars(), *kconfig.host_probe_vars(), f"EXTRAVERSION={req.suffix}"]


def compiler_vars(req: BuildRequest) -> list[str]:
    if req.use_ccache and shutil.which("ccache"):
        return [f"CC=ccache {req.arch.cross_gcc}", "HOSTCC=ccache gcc"]
    return []


def make_env(tree: Path | None = None) -> dict[str, str]:
    """The environment of every make: what the kernel bakes in pinned (user, host, build number, and
    the timestamp from the source date of ``tree``, the one the tools image and the release use:
    ``$SOURCE_DATE_EPOCH``, else the mtime of the tree's Makefile), and ccache's remote storage when
    ``NEONVM_CCACHE_REMOTE`` names one that answers (harness/ccache.py)."""
    from harness import ccache
    from harness.tools import kbuild

    env = dict(BUILD_ENV)
    env["KBUILD_BUILD_VERSION"] = "1"  # not the build dir's .version counter: rebuilds stay byte-identical
    stamp = os.environ.get("KBUILD_BUILD_TIMESTAMP")
    if not stamp and tree is not None:
        epoch = kbuild.source_date_epoch({}, tree)
        stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(epoch))
    env["KBUILD_BUILD_TIMESTAMP"] = stamp or "2024-01-01 00:00:00 UTC"
    # Host programs built with -g (objtool, which tools.img ships in its module-build tree) must not
    # carry the build directory's path: make expands $(abs_objtree) to it, and the map drops it.
    env["HOSTCFLAGS"] = " ".join(filter(None, (os.environ.get("HOSTCFLAGS", ""),
                                               "-ffile-prefix-map=$(abs_objtree)/=")))
    env["CCACHE_BASEDIR"] = str(cache_root())
    env["CCACHE_NOHASHDIR"] = "1"
    env.update(ccache.remote_env())
    return env


def build_argv(req: BuildRequest, *targets: str) -> list[str]:
    return ["make", f"O={req.build_dir}", f"-j{req.jobs}", *make_vars(req), *compiler_vars(req), *targets]


class _MakeProgress:
    """Counts kbuild's per-object lines; estimates a percentage from the previous build's count."""

    def __init__(self, label: str, expected: int | None):
        self.bar = Progress(label)
        self.expected = expected

    def __call__(self, line: str) -> None:
        m = _KBUILD_LINE.match(line)
        if m:
            pct = f" (~{min(99, 100 * (self.bar.count + 1) // self.expected)}% of last build)" if self.expected else ""
            self.bar.tick(f"{m[1]} {m[2]}{pct}")


def check_toolchain(arch: Arch) -> None:
    proc.require_tool(arch.cross_gcc, step="toolchain",
                      hint=f"install gcc-{arch.gnu_triplet} (./bootstrap does)" if arch.cross_compile else "")
    for tool in ("make", "flex", "bison", "bc", "tar", "patch"):
        proc.require_tool(tool, step="toolchain", hint="run ./bootstrap to install the build dependencies")


def build(req: BuildRequest) -> dict[str, Any]:
    """Run the whole pipeline for one arch and variant; return the manifest."""
    out = req.out_dir
    out.mkdir(parents=True, exist_ok=True)
    logs = out / "logs"
    with exclusive_lock(out / ".lock", step="build", what=f"output directory {out}"), \
            exclusive_lock(Path(f"{req.build_dir}.lock"), step="build", what=f"build directory {req.build_dir}"):
        manifest.invalidate(out)  # the directory is not a valid build until the end
        # The tools image belongs to the kernel that was built here before: never leave it beside a new one.
        for stale in (IMAGE_NAME, MANIFEST_NAME, FILES_NAME):
            (out / stale).unlink(missing_ok=True)
        if logs.exists():
            shutil.rmtree(logs)
        logs.mkdir()
        durations: dict[str, float] = {}

        check_toolchain(req.arch)
        pin = req.pin or source.Pin.load()
        with timed(durations, "source"):
            src = source.resolve(pin, version=req.version, provider=req.provider, path=req.source_path,
                                 sha256=req.sha256, log=logs / "source.log")
        series = Series.load(req.series_dir) if req.variant.patches else Series.none()
        with timed(durations, "unpack+patch"):
            src_tree = tree.prepare(src, series, log=logs / "unpack.log")
        with timed(durations, "config"):
            requests = req.variant.requests(req.arch)
            resolved = kconfig.resolve(src_tree, req.arch, req.variant, log=logs / "config.log")
            label = f"{req.arch.name}/{req.variant.name}"
            kconfig.check(requests, resolved, src_tree, log=logs / "config.log", label=label,
                          arch=req.arch)
            if req.variant.committed:
                check_committed(src_tree, req, src.version, resolved, logs / "config.log")
            req.build_dir.mkdir(parents=True, exist_ok=True)
            kconfig.install(resolved, req.build_dir / ".config")
        build_log = logs / "build.log"
        counter = req.build_dir / ".harness-object-count"
        try:  # only a hint: a missing or half-written count (an interrupted write) is ignored
            expected = int(counter.read_text())
        except (OSError, ValueError):
            expected = None
        progress = _MakeProgress(f"build {req.arch.name}/{req.variant.name}", expected)
        with timed(durations, "make"):
            try:
                proc.run(build_argv(req, req.arch.image_target, "modules"), step="make", log=build_log,
                         cwd=src_tree, env=make_env(src_tree), on_line=progress, timeout=4 * 3600)
            except CommandTimeout:
                raise
            except CommandFailed as exc:
                raise BuildFailed(f"make failed: {proc.first_error(build_log) or exc.message}",
                                  step="make", log=build_log) from exc
            progress.bar.done(f"{progress.bar.count} objects")
            if progress.bar.count > 50:
                counter.write_text(str(progress.bar.count))
        # the final config after the build must still pass the audit (syncconfig may rewrite it)
        kconfig.check(requests, req.build_dir / ".config", src_tree, log=logs / "config.log",
                      label=f"{label} (after build)", arch=req.arch)
        release = proc.capture(["make", "-s", f"O={req.build_dir}", *make_vars(req), "kernelrelease"],
                               step="kernelrelease", cwd=src_tree, log=build_log).strip()
        if not release.startswith(src.version):
            raise BuildFailed(f"make kernelrelease printed {release!r}, not a release of {src.version}",
                              step="kernelrelease", log=build_log)
        with timed(durations, "collect"):
            artifacts = {}
            for name, path in (("vmlinuz", req.build_dir / req.arch.image_path),
                               ("System.map", req.build_dir / "System.map"),
                               ("config", req.build_dir / ".config")):
                if not path.is_file():
                    raise BuildFailed(f"make succeeded but {path} is missing", step="collect", log=build_log)
                if name == "vmlinuz":
                    _check_image_magic(path, req.arch, log=build_log)
                atomic_copy(path, out / name)
                artifacts[name] = {"sha256": sha256_file(out / name), "size": (out / name).stat().st_size}
        from harness.tools import kbuild  # (kbuild reads manifests this module writes)

        record = {
            "arch": req.arch.name,
            "variant": req.variant.name,
            "version": src.version,
            "kernelrelease": release,
            "suffix": req.suffix,
            "source": src.provenance(),
            "patches": series.manifest(),
            "series_sha256": series.sha256,
            "config_sha256": artifacts["config"]["sha256"],
            "fragments": [str(p.relative_to(kconfig.CONFIGS.parent)) for p in req.variant.fragment_paths(req.arch)],
            "toolchain": toolchain(req.arch),
            "make_vars": make_vars(req),
            "tree": str(src_tree),
            "build_dir": str(req.build_dir),
            "durations": durations,
            "artifacts": artifacts,
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            # what the kernel baked in (make_env): the tools image, the tars and the OCI images use it too
            "source_date_epoch": kbuild.source_date_epoch({}, src_tree),
            "build_timestamp": make_env(src_tree)["KBUILD_BUILD_TIMESTAMP"],
        }
        manifest.write(out, record)
        LOG.info("built %s %s in %s", req.arch.name, release, out)
        return record


def check_committed(src_tree: Path, req: BuildRequest, version: str, resolved: Path, log: Path) -> None:
    committed = kconfig.committed_config_path(req.arch, version)
    if not committed.is_file():
        raise ConfigAuditFailed(f"no committed config {committed.name} for {version}; create it with "
                                f"'nox -s update-configs'", step="config", log=log)
    if committed.read_bytes() != resolved.read_bytes():
        changes = kconfig.diff(src_tree, committed, resolved, log=log)
        n = len(changes.splitlines())
        raise ConfigAuditFailed(f"committed {committed.name} differs from what the fragments resolve to "
                                f"({n} option(s)); review and commit with 'nox -s update-configs'",
                                step="config", log=log)


def _check_image_magic(path: Path, arch: Arch, *, log: Path) -> None:
    """The boot image must carry its format's header (what QEMU's -kernel and NeonVM's loader read)."""
    offset, magic = arch.image_magic
    with open(path, "rb") as fh:
        fh.seek(offset)
        found = fh.read(len(magic))
    if found != magic:
        raise BuildFailed(f"{path} is not a {arch.name} boot image ({magic!r} expected at {offset:#x}, "
                          f"found {found!r})", step="collect", log=log)
