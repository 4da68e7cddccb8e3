"""Config fragments, resolution with the kernel's own tools, the audit, and config diffs.

Resolution: ``make <base>`` (e.g. tinyconfig), ``scripts/kconfig/merge_config.sh -m`` with the
variant's fragments, then ``make olddefconfig``. Kconfig silently drops what it cannot satisfy, so
every resolution is followed by the audit: each option a fragment asks for must have the requested
value in the resolved config.
"""
from __future__ import annotations

import hashlib
import logging
import re
import tomllib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TextIO

from harness import proc
from harness.arch import Arch
from harness.errors import ConfigAuditFailed, InvalidArgument
from harness.fsutil import atomic_copy, exclusive_lock
from harness.layout import CONFIGS as CONFIGS  # re-exported: tests point it at a private copy
from harness.layout import cache_root

LOG = logging.getLogger(__name__)
STEP = "config"
FRAGMENTS = CONFIGS / "fragments"

_SET = re.compile(r"^(CONFIG_[A-Za-z0-9_]+)=(.*)$")
_UNSET = re.compile(r"^# (CONFIG_[A-Za-z0-9_]+) is not set$")


@dataclass(frozen=True)
class Request:
    option: str
    value: str  # "y", "m", "n" or a literal (numbers, quoted strings)
    fragment: Path
    line: int

    @property
    def where(self) -> str:
        try:
            rel = self.fragment.relative_to(CONFIGS.parent)
        except ValueError:
            rel = self.fragment
        return f"{rel}:{self.line}"


def parse_config_text(text: str) -> dict[str, str]:
    """A .config (or fragment) as {option: value}, with "n" for '# CONFIG_X is not set'."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        m = _SET.match(line)
        if m:
            out[m[1]] = m[2]
            continue
        m = _UNSET.match(line)
        if m:
            out[m[1]] = "n"
    return out


def parse_fragment(path: Path) -> list[Request]:
    reqs = []
    for no, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not line:
            continue
        m = _SET.match(line)
        if m and m[2]:  # "CONFIG_X=" (no value) is malformed, not a request for ""
            reqs.append(Request(m[1], m[2], path, no))
            continue
        m = _UNSET.match(line)
        if m:
            reqs.append(Request(m[1], "n", path, no))
            continue
        if line.startswith("#"):
            continue
        raise InvalidArgument(f"{path}:{no}: not a config line: {raw!r}", step=STEP)
    return reqs


@dataclass(frozen=True)
class Variant:
    name: str
    base: str  # make targets run in order in an empty build dir, e.g. "defconfig kvm_guest.config"
    fragments: tuple[str, ...]
    suffix: str
    committed: bool
    base_arch: tuple[tuple[str, str], ...] = ()  # per-arch override of base: ((arch, targets), ...)
    contract: bool = False  # carries the whole capability contract (configs/contract.toml)
    patches: bool = True  # apply the patch series in configs/patches/
    fragments_dir: Path | None = None  # None: configs/fragments (set-config resolves a staged copy)

    def base_targets(self, arch: Arch) -> list[str]:
        return dict(self.base_arch).get(arch.name, self.base).split()

    def fragment_paths(self, arch: Arch) -> list[Path]:
        paths = []
        for frag in self.fragments:
            p = (self.fragments_dir or FRAGMENTS) / (frag.format(arch=arch.name) + ".config")
            if not p.is_file():
                raise InvalidArgument(f"variant {self.name}: fragment {p} does not exist", step=STEP)
            paths.append(p)
        return paths

    def requests(self, arch: Arch) -> dict[str, Request]:
        """option -> the request that wins (a later fragment overrides an earlier one)."""
        out: dict[str, Request] = {}
        for p in self.fragment_paths(arch):
            for r in parse_fragment(p):
                out[r.option] = r
        return out


_VARIANT_KEYS = {"base", "base_arch", "fragments", "add_fragments", "suffix", "committed", "contract", "patches",
                 "extends"}


def load_variants(path: Path | None = None) -> dict[str, Variant]:
    """configs/variants.toml. ``extends = "other"`` starts from another variant's base and
    fragments (``add_fragments`` appends to them); a variant's own keys win."""
    path = path or CONFIGS / "variants.toml"
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise InvalidArgument(f"{path}: {exc}", step=STEP) from None

    def flat(name: str, seen: tuple[str, ...] = ()) -> dict[str, Any]:
        if name not in data:
            raise InvalidArgument(f"{path}: variant {seen[-1] if seen else name!r} extends unknown {name!r}",
                                  step=STEP)
        if name in seen:
            raise InvalidArgument(f"{path}: variants extend each other in a loop: {' -> '.join(seen + (name,))}",
                                  step=STEP)
        raw = dict(data[name])
        unknown = set(raw) - _VARIANT_KEYS
        if unknown:
            raise InvalidArgument(f"{path}: variant {name}: unknown key(s) {', '.join(sorted(unknown))}", step=STEP)
        if "extends" not in raw:
            return raw
        parent = {k: v for k, v in flat(raw.pop("extends"), seen + (name,)).items()
                  if k in ("base", "base_arch", "fragments", "patches")}
        parent["fragments"] = list(parent.get("fragments", [])) + list(raw.pop("add_fragments", []))
        return {**parent, **raw}

    out = {}
    for name in data:
        v = flat(name)
        if "base" not in v or "fragments" not in v:
            raise InvalidArgument(f"{path}: variant {name} needs 'base' and 'fragments'", step=STEP)
        out[name] = Variant(name, v["base"], tuple(v["fragments"]) + tuple(v.get("add_fragments", [])),
                            v.get("suffix", "-neonvm"), bool(v.get("committed", False)),
                            tuple(sorted(v.get("base_arch", {}).items())), bool(v.get("contract", False)),
                            bool(v.get("patches", True)))
    return out


def get_variant(name: str) -> Variant:
    variants = load_variants()
    if name not in variants:
        raise InvalidArgument(f"unknown variant {name!r} (known: {', '.join(variants)})", step=STEP)
    return variants[name]


def committed_config_path(arch: Arch, version: str) -> Path:
    return CONFIGS / f"linux-config-{arch.config_name}-{version}"


# -- audit ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Finding:
    request: Request
    resolved: str
    cause: str = ""  # the root-cause chain (harness.kernel.explain), when the tree was evaluated

    def describe(self) -> str:
        text = (f"{self.request.option}: requested {self.request.value}, resolved {self.resolved} "
                f"(asked for at {self.request.where})")
        if self.cause:
            text += f"; why: {self.cause}"
        return text


def audit(requests: dict[str, Request], resolved: dict[str, str]) -> list[Finding]:
    """Every request against the resolved config. Returns the dropped or changed options."""
    findings = []
    for opt, req in requests.items():
        got = resolved.get(opt, "n")
        if _norm(got) != _norm(req.value):
            findings.append(Finding(req, got if opt in resolved else "n (absent)"))
    return findings


def _norm(value: str) -> str:
    return value.strip().strip('"') if value.startswith('"') else value.strip()


def explain_findings(findings: list[Finding], requests: dict[str, Request], config_path: Path, tree: Path,
                     arch: Arch, log: Path | None = None) -> list[Finding]:
    """The findings with their root causes: kconfiglib evaluates the tree's Kconfig for ``arch``
    with ``config_path`` loaded and walks each unmet dependency down to the fragment line (or
    select, choice, missing definition) responsible. When the tree cannot be evaluated the
    findings are returned as they are, and the reason is logged."""
    from harness.kernel import explain  # kconfiglib: only on the failure path

    if not findings:
        return findings
    try:
        kconf = explain.load(tree, arch)
        kconf.load_config(str(config_path))
        # every request, so that a chain can end at the fragment line that set its root cause
        causes = {e.option: e.chain for e in explain.explain(kconf, explain.from_requests(requests.values()),
                                                              arch=arch.name)}
    except Exception as exc:  # the audit's verdict stands without the explanation
        LOG.warning("[audit] no root causes: kconfiglib could not evaluate %s for %s: %s", tree, arch.name, exc)
        if log is not None:
            with open(log, "a") as fh:
                fh.write(f"audit: no root causes: kconfiglib could not evaluate {tree} for {arch.name}: {exc}\n")
        return findings
    return [replace(f, cause=causes.get(f.request.option, "")) for f in findings]


def check(requests: dict[str, Request], config_path: Path, tree: Path, *, log: Path,
          label: str, arch: Arch, stream: TextIO | None = None) -> None:
    """Audit ``config_path``; raise ConfigAuditFailed with the first dropped option and its root
    cause. Every finding goes to the log, and to ``stream`` when given (the config commands show
    them all; the build's one-line error names the log)."""
    findings = findings_of(requests, config_path, tree, log=log, label=label, arch=arch)
    if not findings:
        return
    if stream is not None:
        print(f"{label}: {len(findings)} requested option(s) dropped or changed:", file=stream)
        for f in findings:
            print(f"  {f.describe()}", file=stream)
    raise failure(label, findings, log)


def findings_of(requests: dict[str, Request], config_path: Path, tree: Path, *, log: Path,
                label: str, arch: Arch) -> list[Finding]:
    """The requests ``config_path`` does not honour, each with its root cause (also written to the log)."""
    findings = audit(requests, parse_config_text(config_path.read_text()))
    if not findings:
        LOG.info("[audit] %s: all %d requested options present", label, len(requests))
        return []
    findings = explain_findings(findings, requests, config_path, tree, arch, log)
    with open(log, "a") as fh:
        fh.write(f"\n### audit of {config_path} ({label}): {len(findings)} option(s) dropped or changed\n")
        for f in findings:
            fh.write(f.describe() + "\n")
    return findings


def failure(label: str, findings: list[Finding], log: Path, *, suffix: str = "") -> ConfigAuditFailed:
    """The one-line error for ``findings``: the first one with its cause, and how many more."""
    more = f" (+{len(findings) - 1} more)" if len(findings) > 1 else ""
    return ConfigAuditFailed(f"{label}: {findings[0].describe()}{more}{suffix}", step="audit", log=log)


# -- resolution ----------------------------------------------------------------------------------
def resolution_key(tree: Path, arch: Arch, variant: Variant) -> str:
    h = hashlib.sha256()
    h.update(f"{tree.name}\0{arch.name}\0{' '.join(variant.base_targets(arch))}\n".encode())
    h.update(" ".join(host_probe_vars()).encode())  # what Kconfig's $(shell,...) probes may find
    # Kconfig records the compiler's version and features: a new compiler means a new resolution.
    h.update(proc.capture([arch.cross_gcc, "--version"], step=STEP).encode())
    for p in variant.fragment_paths(arch):
        h.update(p.name.encode() + b"\0" + p.read_bytes())
    return h.hexdigest()[:20]


#: Host tools whose mere presence Kconfig records in the config (rustup's rustc: RUSTC_VERSION and
#: friends; dwarves' pahole: PAHOLE_VERSION). The kernel is built without Rust and without BTF, so every
#: make (resolution and build) points them at nothing: a committed config then resolves the same on a
#: fresh Debian 12 host as on one with a Rust toolchain on PATH.
HOST_PROBES_OFF: dict[str, str] = {
    "RUSTC": "/nonexistent/rustc",
    "BINDGEN": "/nonexistent/bindgen",
    "PAHOLE": "/nonexistent/pahole",
}


def host_probe_vars() -> list[str]:
    return [f"{k}={v}" for k, v in HOST_PROBES_OFF.items()]


def make_argv(arch: Arch, objdir: Path, *targets: str, extra: list[str] | None = None) -> list[str]:
    return ["make", f"O={objdir}", *arch.make_vars(), *host_probe_vars(), *(extra or []), *targets]


def resolve(tree: Path, arch: Arch, variant: Variant, *, log: Path) -> Path:
    """Resolve the variant's config for ``arch`` in a scratch build directory; return the .config.
    The result is cached by the inputs' hash, so an unchanged variant resolves instantly."""
    scratch = cache_root() / "kconfig" / f"{arch.name}-{variant.name}"
    key = resolution_key(tree, arch, variant)
    stamp = scratch / ".harness-resolved"
    config = scratch / ".config"
    with exclusive_lock(cache_root() / "kconfig" / f".{arch.name}-{variant.name}.lock", step=STEP,
                        what=f"config scratch dir for {arch.name}/{variant.name}"):
        if stamp.is_file() and stamp.read_text() == key and config.is_file():
            LOG.info("[%s] %s/%s: resolved config is current", STEP, arch.name, variant.name)
            return config
        stamp.unlink(missing_ok=True)
        scratch.mkdir(parents=True, exist_ok=True)
        frags = variant.fragment_paths(arch)
        for stale in (config, scratch / ".config.old"):  # a base target merges into an existing .config
            stale.unlink(missing_ok=True)
        proc.run(make_argv(arch, scratch, *variant.base_targets(arch)), step=STEP, log=log, cwd=tree, timeout=600)
        proc.run([tree / "scripts/kconfig/merge_config.sh", "-m", "-O", scratch, config, *frags],
                 step=STEP, log=log, cwd=tree, timeout=120,
                 env={"ARCH": arch.make_arch, "CROSS_COMPILE": arch.cross_compile})
        proc.run(make_argv(arch, scratch, "olddefconfig"), step=STEP, log=log, cwd=tree, timeout=300)
        stamp.write_text(key)
    return config


def diff(tree: Path, old: Path, new: Path, *, log: Path) -> str:
    """scripts/diffconfig output between two configs ('' when identical)."""
    return proc.capture([tree / "scripts/diffconfig", old, new], step=STEP, log=log)


def install(config: Path, dest: Path) -> bool:
    """Copy a resolved config to ``dest`` if its content differs; True when it changed."""
    if dest.is_file() and dest.read_bytes() == config.read_bytes():
        return False
    atomic_copy(config, dest)
    return True
