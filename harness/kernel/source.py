"""Kernel source: the pin, the providers (Debian package, kernel.org, local tarball) and verification.

A provider yields a :class:`Source`: a tarball on disk whose sha256 matched a recorded value, with
its provenance. Downloads land in the cache under a temporary name and are renamed only once
verified; the version inside the tarball is checked when it is unpacked (see :mod:`harness.kernel.tree`).
"""
from __future__ import annotations

import logging
import os
import re
import tomllib
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomlkit

from harness import proc
from harness.errors import (
    ChecksumMismatch,
    CommandFailed,
    CommandTimeout,
    InfraError,
    InvalidArgument,
    InvalidVersion,
    SourceMissing,
    SourceVersionMismatch,
    ToolMissing,
)
from harness.fsutil import sha256_file
from harness.layout import CONFIGS, REPO, cache_root

LOG = logging.getLogger(__name__)
STEP = "source"
VERSION_RE = re.compile(r"^(\d+)\.(\d+)(?:\.(\d+))?$")
SHA_RE = re.compile(r"^[0-9a-f]{64}$")


def parse_version(version: str) -> tuple[int, int, int]:
    m = VERSION_RE.match(version or "")
    if not m:
        raise InvalidVersion(f"malformed kernel version {version!r} (expected e.g. 6.12.117)", step=STEP)
    return int(m[1]), int(m[2]), int(m[3] or 0)


@dataclass(frozen=True)
class Pin:
    """configs/kernel.toml: the pinned version, the default provider, and one table per provider with
    what is recorded about its source (``[debian]``, ``[kernelorg]``, ...; a new provider's table needs
    no change here)."""

    version: str
    provider: str
    sections: dict[str, dict[str, Any]]
    path: Path

    @classmethod
    def load(cls, path: Path | None = None) -> Pin:
        path = path or CONFIGS / "kernel.toml"
        try:
            data = tomllib.loads(path.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise InvalidArgument(f"cannot read the kernel pin {path}: {exc}", step=STEP) from exc
        pin = cls(version=data.get("version", ""), provider=data.get("provider", "debian"),
                  sections={k: v for k, v in data.items() if isinstance(v, dict)}, path=path)
        parse_version(pin.version)
        return pin

    def section(self, provider: str) -> dict[str, Any]:
        """What the pin records for ``provider`` (empty when it has no table)."""
        return self.sections.get(provider, {})

    @property
    def debian(self) -> dict[str, Any]:
        return self.section("debian")

    @property
    def kernelorg(self) -> dict[str, Any]:
        return self.section("kernelorg")

    def known_sha256(self, version: str) -> dict[str, str]:
        """provider -> recorded sha256 for ``version`` (only the pinned version has records)."""
        if version != self.version:
            return {}
        return {name: str(table["sha256"]) for name, table in self.sections.items() if table.get("sha256")}


def set_pin_value(text: str, section: str | None, key: str, value: str) -> str:
    """Replace an existing ``key`` in a section of the pin (None: the top level), keeping comments,
    order and layout (tomlkit); a key that is not there already is refused, not added."""
    doc = tomlkit.parse(text)
    table: Any = doc if section is None else doc.get(section)
    if table is None or not hasattr(table, "get") or key not in table or isinstance(table[key], dict):
        raise InvalidArgument(f"no {key} in [{section or 'top level'}] of kernel.toml", step="upgrade")
    table[key] = value
    return tomlkit.dumps(doc)


@dataclass
class Source:
    path: Path
    sha256: str
    version: str
    provider: str
    origin: str
    details: dict[str, Any] = field(default_factory=dict)

    def provenance(self) -> dict[str, Any]:
        return {"provider": self.provider, "origin": self.origin, "path": str(self.path),
                "sha256": self.sha256, "version": self.version, **self.details}


def _check_sha(path: Path, expected: str, what: str) -> str:
    actual = sha256_file(path)
    if actual != expected:
        raise ChecksumMismatch(f"{what} {path} has sha256 {actual}, expected {expected}", step=STEP)
    return actual


def _expected_sha(sha: str | None) -> str | None:
    if sha is None:
        return None
    sha = sha.strip().lower()
    if not SHA_RE.match(sha):
        raise InvalidArgument(f"--sha256 {sha!r} is not a sha256 hex digest", step=STEP)
    return sha


def dpkg_version(package: str) -> str | None:
    try:
        out = proc.capture(["dpkg-query", "-W", "-f=${Status}|${Version}", package], step=STEP)
    except (CommandFailed, ToolMissing):
        return None
    status, _, version = out.partition("|")
    return version if status.endswith(" installed") else None


def from_debian(pin: Pin, version: str) -> Source:
    deb = pin.debian
    package, want = deb.get("package", ""), deb.get("package_version", "")
    if version != pin.version:
        raise InvalidVersion(
            f"Debian's {package} is pinned for {pin.version}, not {version}; use --source kernelorg "
            f"or a local tarball, or move the pin with 'nox -s upgrade -- {version}'", step=STEP)
    have = dpkg_version(package)
    if have is None:
        raise SourceMissing(f"{package} is not installed; run 'apt-get install {package}={want}' "
                            f"(./bootstrap does this)", step=STEP)
    if have != want:
        raise SourceVersionMismatch(
            f"{package} {have} is installed but {want} is pinned: install the pinned one with "
            f"'apt-get install {package}={want}', or move to {have} with "
            f"'nox -s upgrade -- {_debian_upstream(have)} --debian-version {have}'", step=STEP)
    tarball = Path(deb.get("tarball", ""))
    if not tarball.is_file():
        raise SourceMissing(f"{package} {have} is installed but {tarball} is missing", step=STEP)
    expected = deb.get("sha256", "")
    if not expected:
        raise ChecksumMismatch(f"no sha256 recorded for {package} {want} in {pin.path}", step=STEP)
    sha = _check_sha(tarball, expected, f"{package} {want} tarball")
    return Source(tarball, sha, version, "debian", f"deb:{package}={want}",
                  {"debian_package": package, "debian_version": want})


def _debian_upstream(debian_version: str) -> str:
    return debian_version.split("-")[0]


def kernelorg_url(pin: Pin, version: str) -> str:
    major = parse_version(version)[0]
    base = pin.kernelorg.get("base_url", "https://cdn.kernel.org/pub/linux/kernel").rstrip("/")
    return f"{base}/v{major}.x/linux-{version}.tar.xz"


def _download(url: str, dest: Path, *, timeout: float = 60) -> None:
    """Download ``url`` to ``dest`` (a temporary name the caller verifies and renames)."""
    LOG.info("[%s] downloading %s", STEP, url)
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp, open(dest, "wb") as fh:
            while chunk := resp.read(1 << 20):
                fh.write(chunk)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        dest.unlink(missing_ok=True)
        raise SourceMissing(f"cannot download {url}: {exc}", step=STEP) from exc


def _verify_signature(pin: Pin, version: str, sha: str, log: Path) -> dict[str, Any]:
    """Check kernel.org's signed sha256sums.asc against a pinned keyring, where possible.
    Returns {"signature": "verified" | "not run: <why>"}; raises on a bad signature or listing."""
    configured = pin.kernelorg.get("keyring", "configs/keys/kernel.org.gpg")
    keyring = REPO / configured
    if not keyring.is_file():  # (the configured path: an absolute one is outside the repository)
        return {"signature": f"not run: no pinned keyring at {configured}"}
    url = kernelorg_url(pin, version).rsplit("/", 1)[0] + "/sha256sums.asc"
    sums = cache_root() / "downloads" / f"sha256sums-{version}.asc"
    try:
        _download(url, sums)
    except SourceMissing as exc:
        return {"signature": f"not run: {exc.message}"}
    try:
        proc.run(["gpgv", "--keyring", keyring, sums], step=STEP, log=log, timeout=120)
    except CommandTimeout:  # a hang is the host's (infra), not the input's
        raise
    except CommandFailed as exc:
        raise ChecksumMismatch(f"bad signature on {url}", step=STEP, log=log) from exc
    listed = {line.split()[1]: line.split()[0] for line in sums.read_text().splitlines()
              if len(line.split()) == 2 and SHA_RE.match(line.split()[0])}
    if listed.get(f"linux-{version}.tar.xz") != sha:
        raise ChecksumMismatch(f"linux-{version}.tar.xz sha256 {sha} is not the one signed in {url}",
                               step=STEP, log=log)
    return {"signature": "verified", "signature_url": url}


def _remove_abandoned_parts(dl: Path, version: str) -> None:
    """Delete partial downloads left by runs that died (their pid is in the name)."""
    for part in dl.glob(f".linux-{version}.tar.xz.*.part"):
        try:
            pid = int(part.name.rsplit(".", 2)[-2])
            os.kill(pid, 0)
        except ProcessLookupError:
            part.unlink(missing_ok=True)
        except (ValueError, PermissionError):
            continue


def from_kernelorg(pin: Pin, version: str, sha256: str | None, log: Path) -> Source:
    expected = _expected_sha(sha256) or pin.known_sha256(version).get("kernelorg")
    if not expected:
        raise ChecksumMismatch(f"no sha256 recorded for kernel.org linux-{version}; pass --sha256 "
                               f"(from kernel.org's signed sha256sums.asc) or record it in {pin.path.name}",
                               step=STEP)
    url = kernelorg_url(pin, version)
    dl = cache_root() / "downloads"
    dl.mkdir(parents=True, exist_ok=True)
    final = dl / f"linux-{version}.tar.xz"
    if final.exists():
        try:
            _check_sha(final, expected, "cached download")
        except ChecksumMismatch:
            LOG.warning("[%s] cached %s does not match; downloading again", STEP, final)
            final.chmod(0o644)
            final.unlink()
    if not final.exists():
        _remove_abandoned_parts(dl, version)
        part = dl / f".linux-{version}.tar.xz.{os.getpid()}.part"
        _download(url, part)
        try:
            _check_sha(part, expected, f"download of {url}")
        except ChecksumMismatch:
            part.unlink(missing_ok=True)
            raise
        part.chmod(0o444)
        os.replace(part, final)
    details = _verify_signature(pin, version, expected, log)
    return Source(final, expected, version, "kernelorg", url, details)


def from_local(pin: Pin, version: str, path: Path, sha256: str | None) -> Source:
    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise SourceMissing(f"source tarball {path} does not exist", step=STEP)
    given = _expected_sha(sha256)
    known = pin.known_sha256(version)
    if given:
        sha = _check_sha(path, given, "local tarball")
        how = "given"
    elif known:
        actual = sha256_file(path)
        if actual not in known.values():
            raise ChecksumMismatch(f"local tarball {path} has sha256 {actual}, which is none of the "
                                   f"recorded ones for {version} ({', '.join(sorted(known))})", step=STEP)
        sha, how = actual, "recorded:" + ",".join(k for k, v in known.items() if v == actual)
    else:
        raise ChecksumMismatch(f"no sha256 known for a local {version} tarball; pass --sha256", step=STEP)
    return Source(path, sha, version, "local", str(path), {"sha256_from": how})


@dataclass(frozen=True)
class SourceRequest:
    """What the command line asked for; each provider takes what it needs from it."""

    version: str
    log: Path
    path: Path | None = None
    sha256: str | None = None


Provider = Callable[[Pin, SourceRequest], Source]
#: The source providers by name. A new provider is one function registered with :func:`provider`.
PROVIDERS: dict[str, Provider] = {}


def provider(name: str) -> Callable[[Provider], Provider]:
    def register(fn: Provider) -> Provider:
        PROVIDERS[name] = fn
        return fn
    return register


@provider("debian")
def _debian(pin: Pin, req: SourceRequest) -> Source:
    if req.sha256:
        raise InvalidArgument("--sha256 applies to kernel.org and local tarballs, not the Debian package", step=STEP)
    return from_debian(pin, req.version)


@provider("kernelorg")
def _kernelorg(pin: Pin, req: SourceRequest) -> Source:
    return from_kernelorg(pin, req.version, req.sha256, req.log)


@provider("local")
def _local(pin: Pin, req: SourceRequest) -> Source:
    if req.path is None:
        raise InvalidArgument("the local provider needs a tarball path", step=STEP)
    return from_local(pin, req.version, req.path, req.sha256)


def resolve(pin: Pin, *, version: str | None = None, provider: str | None = None,
            path: Path | None = None, sha256: str | None = None, log: Path) -> Source:
    """Pick the provider and return a verified Source. ``path`` implies the local provider."""
    version = version or pin.version
    parse_version(version)
    name = "local" if path is not None else (provider or pin.provider)
    if name not in PROVIDERS:
        raise InvalidArgument(f"unknown source provider {name!r} (known: {', '.join(PROVIDERS)}, "
                              "or a tarball path)", step=STEP)
    return PROVIDERS[name](pin, SourceRequest(version=version, log=log, path=path, sha256=sha256))


def tarball_version_from_makefile(text: str) -> str:
    """Read VERSION.PATCHLEVEL.SUBLEVEL from a kernel top-level Makefile."""
    vals = {}
    for key in ("VERSION", "PATCHLEVEL", "SUBLEVEL"):
        m = re.search(rf"^{key}\s*=\s*(\d*)\s*$", text, re.M)
        if not m:
            raise InfraError(f"no {key} in the tree's Makefile", step="unpack")
        vals[key] = m[1] or "0"
    return f"{vals['VERSION']}.{vals['PATCHLEVEL']}.{vals['SUBLEVEL']}"
