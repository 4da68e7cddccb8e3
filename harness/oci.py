"""The kernel as NeonVM consumes it: an OCI image layout with one image per arch and an index.

NeonVM runs a ``vm-kernel`` image as an init container with the arguments
``cp /vmlinuz /vm/images/vmlinuz`` (:data:`INIT_COMMAND`), so each arch's image holds ``/vmlinuz``,
``/tools.img`` and a static ``/bin/cp`` (Debian's busybox-static for that arch, fetched through
:mod:`harness.foreign`; ``cp`` is a symlink to the busybox applet), with ``PATH=/bin``.

Who writes what:

* the one layer is an uncompressed tar from :func:`harness.reproduce.write_tar` (sorted, mtimes the
  source date, owners 0:0), added verbatim with ``umoci raw add-layer`` (umoci compresses it,
  deterministically);
* ``umoci new`` / ``umoci config`` write the image config (architecture, os, env, labels, created
  from the source date) and the manifest (annotations); ``umoci gc`` drops the intermediate blobs;
* umoci cannot write an image *index* over several manifests (its layout's ``index.json`` is only a
  list of tags) and skopeo can copy an index but not assemble one, so the multi-arch index, a JSON
  document of a few hundred bytes listing the per-arch manifests' digests and platforms, is written
  here and tagged with the kernel release. ``skopeo inspect`` / ``skopeo copy --all`` read it.

Tags in the layout: ``<kernelrelease>`` (the index) and ``<kernelrelease>-<arch>`` (each image).
:func:`publish` pushes the index and every image with ``skopeo copy --all --preserve-digests``.
"""
from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import logging
import os
import re
import tempfile
import time
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness import foreign, manifest, proc
from harness.arch import Arch
from harness.errors import CommandFailed, InfraError, InvalidArgument, SourceMissing
from harness.fsutil import atomic_dir, atomic_output
from harness.layout import REPO
from harness.progress import timed
from harness.reproduce import TarEntry, source_date, write_tar
from harness.tools import elf

LOG = logging.getLogger(__name__)
STEP = "oci"
INIT_COMMAND = ("cp", "/vmlinuz", "/vm/images/vmlinuz")  # the NeonVM controller's init container
IMAGE_PATH = "/bin"
LABEL_PREFIX = "tech.neon.vm-kernel."
MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_INDEX = "application/vnd.oci.image.index.v1+json"
REF_NAME = "org.opencontainers.image.ref.name"
UMOCI_TIMEOUT = 300
SKOPEO_TIMEOUT = 3600
REGISTRY_USER_ENV = "NEONVM_REGISTRY_USER"
REGISTRY_PASSWORD_ENV = "NEONVM_REGISTRY_PASSWORD"
LOOPBACK = ("127.0.0.1", "localhost", "::1")


# -- what goes into an image ---------------------------------------------------------------------------
def rfc3339(epoch: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def git_revision() -> str:
    """The commit of the harness checkout that made the image ("" outside a git checkout)."""
    try:
        return proc.capture(["git", "-C", REPO, "rev-parse", "HEAD"], step=STEP).strip()
    except InfraError:
        return ""


def source_url() -> str:
    """Where the harness's source lives: the CI's repository, else the checkout's origin (without
    credentials), else ""."""
    server, repo = os.environ.get("GITHUB_SERVER_URL"), os.environ.get("GITHUB_REPOSITORY")
    if server and repo:
        return f"{server}/{repo}"
    try:
        url = proc.capture(["git", "-C", REPO, "remote", "get-url", "origin"], step=STEP).strip()
    except InfraError:
        return ""
    parts = urllib.parse.urlsplit(url)
    if parts.password or parts.username:  # never publish a token that sits in a remote URL
        url = parts._replace(netloc=parts.hostname or "").geturl()
    return url


@dataclass(frozen=True)
class ImageSpec:
    """Everything one arch's image says about itself, from the build's manifest."""

    arch: Arch
    kernelrelease: str
    version: str
    variant: str
    source_sha256: str
    config_sha256: str
    source_date: int
    busybox_deb: str
    revision: str = ""
    source: str = ""

    @property
    def tag(self) -> str:
        return f"{self.kernelrelease}-{self.arch.name}"

    @property
    def created(self) -> str:
        return rfc3339(self.source_date)

    @property
    def platform(self) -> dict[str, str]:
        # The project's arch names (amd64, arm64) are the OCI/Go GOARCH names.
        return {"architecture": self.arch.name, "os": "linux"}

    def annotations(self) -> dict[str, str]:
        """OCI pre-defined annotation keys where one exists, the project's labels for the rest."""
        out = {
            "org.opencontainers.image.title": "vm-kernel",
            "org.opencontainers.image.description": f"NeonVM guest kernel {self.kernelrelease} ({self.arch.name}): "
                                                    "/vmlinuz, /tools.img and a static cp for the init container",
            "org.opencontainers.image.version": self.kernelrelease,
            "org.opencontainers.image.created": self.created,
            "org.opencontainers.image.licenses": "GPL-2.0-only",
            f"{LABEL_PREFIX}kernel-release": self.kernelrelease,
            f"{LABEL_PREFIX}kernel-version": self.version,
            f"{LABEL_PREFIX}variant": self.variant,
            f"{LABEL_PREFIX}source-sha256": self.source_sha256,
            f"{LABEL_PREFIX}config-sha256": self.config_sha256,
            f"{LABEL_PREFIX}busybox": self.busybox_deb,
        }
        if self.revision:
            out["org.opencontainers.image.revision"] = self.revision
        if self.source:
            out["org.opencontainers.image.source"] = self.source
        return dict(sorted(out.items()))

    def config_argv(self, layout: Path, from_tag: str) -> list[str]:
        """``umoci config``: the final image config (platform, env, cmd, labels, created) and the
        manifest's annotations, saved under :attr:`tag`."""
        argv = ["umoci", "config", "--image", f"{layout}:{from_tag}", "--tag", self.tag, "--no-history",
                "--architecture", self.platform["architecture"], "--os", self.platform["os"],
                "--created", self.created, "--config.env", f"PATH={IMAGE_PATH}"]
        for arg in INIT_COMMAND:
            argv += ["--config.cmd", arg]
        for k, v in self.annotations().items():
            argv += ["--config.label", f"{k}={v}", "--manifest.annotation", f"{k}={v}"]
        return argv


def spec_for(arch: Arch, out: Path, *, busybox_deb: str, revision: str, source: str) -> ImageSpec:
    m = manifest.read(out, arch, step=STEP)
    m.require("config_sha256", "source", step=STEP)
    src = m.data["source"]
    if not isinstance(src, dict) or not src.get("sha256"):
        raise InvalidArgument(f"{m.path} names no source sha256; rebuild the kernel", step=STEP)
    return ImageSpec(arch=arch, kernelrelease=m.kernelrelease, version=m.version, variant=m.variant,
                     source_sha256=str(src["sha256"]), config_sha256=m.config_sha256,
                     source_date=source_date(m, step=STEP),
                     busybox_deb=busybox_deb, revision=revision, source=source)


def _verify_busybox(arch: Arch) -> Callable[[Path], None]:
    def verify(root: Path) -> None:
        binary = root / "bin" / "busybox"
        try:
            info = elf.parse_file(binary)
        except (OSError, elf.InvalidElf) as exc:
            raise InfraError(f"{binary}: {exc}", step=f"{STEP}-busybox-{arch.name}") from None
        if info.e_machine != arch.elf_machine or not info.static:
            raise InfraError(f"{binary} is not a static {arch.elf_machine_name} binary",
                             step=f"{STEP}-busybox-{arch.name}")
    return verify


def busybox(arch: Arch) -> tuple[Path, str]:
    """Debian's static busybox for ``arch`` (fetched once into the cache) and its .deb name."""
    got = foreign.unpacked(arch, "busybox-static", ["busybox-static"], verify=_verify_busybox(arch),
                           step=f"{STEP}-busybox-{arch.name}")
    return got.root / "bin" / "busybox", got.debs[0]


def layer_entries(out: Path, busybox_binary: Path) -> list[TarEntry]:
    """The image's one layer: the kernel, its tools image and a static cp."""
    for f in ("vmlinuz", "tools.img"):
        if not (out / f).is_file():
            raise SourceMissing(f"{out / f} does not exist: build the kernel and its tools image first", step=STEP)
    return [TarEntry("vmlinuz", path=out / "vmlinuz", mode=0o644),
            TarEntry("tools.img", path=out / "tools.img", mode=0o644),
            TarEntry("bin", mode=0o755),
            TarEntry("bin/busybox", path=busybox_binary, mode=0o755),
            TarEntry("bin/cp", link="busybox")]


# -- the layout ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    tag: str

    def json(self, **extra: Any) -> dict[str, Any]:
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size, **extra}


@dataclass
class Layout:
    path: Path
    tag: str  # the index's tag: the kernel release
    index: Descriptor
    images: dict[str, Descriptor]  # arch -> the image's manifest
    specs: dict[str, ImageSpec]
    durations: dict[str, float] = field(default_factory=dict)

    def evidence(self) -> dict[str, Any]:
        return {"layout": str(self.path), "index": f"{self.tag}@{self.index.digest}",
                "images": {a: f"{d.tag}@{d.digest}" for a, d in self.images.items()},
                "durations": self.durations}


def read_index(layout: Path) -> list[Descriptor]:
    """The tagged descriptors of ``layout/index.json``."""
    try:
        data = json.loads((layout / "index.json").read_text())
        return [Descriptor(d["mediaType"], d["digest"], int(d["size"]), d.get("annotations", {}).get(REF_NAME, ""))
                for d in data["manifests"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SourceMissing(f"{layout} is not an OCI image layout ({exc}); run the release gate first",
                            step=STEP) from None


def blob_path(layout: Path, digest: str) -> Path:
    algo, _, hexd = digest.partition(":")
    return layout / "blobs" / algo / hexd


def index_document(specs: Sequence[ImageSpec], images: dict[str, Descriptor]) -> dict[str, Any]:
    """The multi-arch image index over the per-arch manifests (annotations shared by all arches)."""
    first = specs[0]
    shared = {k: v for k, v in first.annotations().items()
              if all(s.annotations().get(k) == v for s in specs)}
    return {"schemaVersion": 2, "mediaType": MEDIA_INDEX,
            "manifests": [images[s.arch.name].json(platform=s.platform) for s in specs],
            "annotations": dict(sorted(shared.items()))}


def _write_blob(layout: Path, data: bytes) -> str:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    with atomic_output(blob_path(layout, digest), mode=0o644) as tmp:
        tmp.write_bytes(data)
    return digest


def add_index(layout: Path, specs: Sequence[ImageSpec]) -> Descriptor:
    """Write the index blob and tag it in ``index.json`` with the kernel release."""
    tagged = {d.tag: d for d in read_index(layout)}
    images = {s.arch.name: tagged[s.tag] for s in specs}
    doc = index_document(specs, images)
    data = json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()
    index = Descriptor(MEDIA_INDEX, _write_blob(layout, data), len(data), specs[0].kernelrelease)
    top = json.loads((layout / "index.json").read_text())
    top["manifests"] = [d for d in top["manifests"] if d.get("annotations", {}).get(REF_NAME) != index.tag]
    top["manifests"].append(index.json(annotations={REF_NAME: index.tag}))
    with atomic_output(layout / "index.json", mode=0o644) as tmp:
        tmp.write_text(json.dumps(top, separators=(",", ":")))
    return index


def write_layout(items: Sequence[tuple[Arch, Path]], dest: Path, *, log: Path) -> Layout:
    """Write the OCI image layout for the built ``(arch, out dir)`` pairs at ``dest``: one image per
    arch and an index over them all, tagged with their (common) kernel release."""
    if not items:
        raise InvalidArgument("no arch to put in an OCI image", step=STEP)
    proc.require_tool("umoci", step=STEP, hint="install umoci (./bootstrap does)")
    durations: dict[str, float] = {}
    revision, source = git_revision(), source_url()
    specs: list[ImageSpec] = []
    binaries: dict[str, Path] = {}
    with timed(durations, "busybox"):
        for arch, out in items:
            binary, deb = busybox(arch)
            binaries[arch.name] = binary
            specs.append(spec_for(arch, out, busybox_deb=urllib.parse.unquote(deb), revision=revision, source=source))
    releases = sorted({s.kernelrelease for s in specs})
    if len(releases) != 1:
        raise InvalidArgument(f"the arches were built as different kernel releases ({', '.join(releases)}); "
                              "one index needs one release", step=STEP)
    with atomic_dir(dest, create=False) as layout, tempfile.TemporaryDirectory(dir=dest.parent) as scratch:
        with timed(durations, "init"):
            proc.run(["umoci", "init", "--layout", layout], step=STEP, log=log, timeout=UMOCI_TIMEOUT)
        for spec, (arch, out) in zip(specs, items, strict=True):
            with timed(durations, f"image-{arch.name}"):
                layer = write_tar(Path(scratch) / f"{arch.name}.tar", layer_entries(out, binaries[arch.name]),
                                  mtime=spec.source_date)
                work = f"build-{arch.name}"
                proc.run(["umoci", "new", "--image", f"{layout}:{work}"], step=STEP, log=log, timeout=UMOCI_TIMEOUT)
                proc.run(["umoci", "raw", "add-layer", "--image", f"{layout}:{work}", "--history.created",
                          spec.created, "--history.created_by", "neonvm-kernel harness: vmlinuz, tools.img, busybox cp",
                          layer], step=STEP, log=log, timeout=UMOCI_TIMEOUT)
                layer.unlink()
                proc.run(spec.config_argv(layout, work), step=STEP, log=log, timeout=UMOCI_TIMEOUT)
                proc.run(["umoci", "rm", "--image", f"{layout}:{work}"], step=STEP, log=log, timeout=UMOCI_TIMEOUT)
        with timed(durations, "index"):
            proc.run(["umoci", "gc", "--layout", layout], step=STEP, log=log, timeout=UMOCI_TIMEOUT)
            index = add_index(layout, specs)
            for blob in (layout / "blobs" / "sha256").iterdir():
                blob.chmod(0o644)  # umoci writes 0600: the layout is for whoever publishes it
            (layout / "index.json").chmod(0o644)
        tagged = {d.tag: d for d in read_index(layout)}
    return Layout(path=dest, tag=index.tag, index=index, images={s.arch.name: tagged[s.tag] for s in specs},
                  specs={s.arch.name: s for s in specs}, durations=durations)


def inspect(layout: Layout, *, log: Path) -> dict[str, dict[str, Any]]:
    """Read the layout back with skopeo: the index lists every image, each image reports the
    platform and labels it was given. Returns ``skopeo inspect`` of each image by arch."""
    proc.require_tool("skopeo", step=STEP, hint="install skopeo (./bootstrap does)")
    raw = proc.capture(["skopeo", "inspect", "--raw", f"oci:{layout.path}:{layout.tag}"], step=STEP, log=log)
    if "sha256:" + hashlib.sha256(raw.encode()).hexdigest() != layout.index.digest:
        raise InfraError(f"skopeo reads a different index for {layout.tag} than was written", step=STEP, log=log)
    seen: dict[str, dict[str, Any]] = {}
    for arch, d in layout.images.items():
        info: dict[str, Any] = json.loads(proc.capture(["skopeo", "inspect", f"oci:{layout.path}:{d.tag}"],
                                                       step=STEP, log=log))
        spec = layout.specs[arch]
        want = {"Architecture": spec.platform["architecture"], "Os": spec.platform["os"], "Digest": d.digest}
        got = {k: info.get(k) for k in want}
        if got != want or info.get("Labels") != spec.annotations():
            raise InfraError(f"skopeo inspect of {d.tag} shows {got}, expected {want} and the image's labels",
                             step=STEP, log=log)
        seen[arch] = info
    return seen


# -- publishing ----------------------------------------------------------------------------------------
def index_tag(layout: Path) -> Descriptor:
    """The layout's (one) multi-arch index."""
    found = [d for d in read_index(layout) if d.media_type == MEDIA_INDEX]
    if len(found) != 1:
        raise SourceMissing(f"{layout} holds {len(found)} image indexes, not one; run the release gate", step=STEP)
    return found[0]


def split_reference(ref: str, default_tag: str) -> tuple[str, str]:
    """``REGISTRY/REPO[:TAG]`` -> (registry host, full reference with a tag)."""
    ref = ref.strip()
    if ref.startswith("docker://"):
        ref = ref[len("docker://"):]
    host, sep, path = ref.partition("/")
    if not sep or not path or "@" in ref or ("." not in host and ":" not in host and host != "localhost"):
        raise InvalidArgument(f"{ref!r} is not REGISTRY/REPOSITORY[:TAG] (a registry host is required; "
                              "digests are not accepted)", step="publish")
    if ":" not in path.rsplit("/", 1)[-1]:
        ref = f"{ref}:{default_tag}"
    return host, ref


def _is_loopback(host: str) -> bool:
    name = host.rsplit(":", 1)[0] if not host.startswith("[") else host[1:host.index("]")]
    return name in LOOPBACK


@contextlib.contextmanager
def _authfile(host: str) -> Iterator[list[str]]:
    """skopeo options for the registry's credentials from the environment, through an auth file
    readable only by us (so they are never on a command line or in a log); [] without them."""
    user, password = os.environ.get(REGISTRY_USER_ENV, ""), os.environ.get(REGISTRY_PASSWORD_ENV, "")
    if bool(user) != bool(password):
        raise InvalidArgument(f"set both {REGISTRY_USER_ENV} and {REGISTRY_PASSWORD_ENV}, or neither",
                              step="publish")
    if not user:
        yield []
        return
    with tempfile.TemporaryDirectory(prefix="neonvm-publish-") as tmp:
        path = Path(tmp) / "auth.json"
        auth = base64.b64encode(f"{user}:{password}".encode()).decode()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump({"auths": {host: {"auth": auth}}}, fh)
        yield ["--authfile", str(path)]


def _skopeo_fatal(log: Path) -> str:
    """skopeo's own last word (its ``level=fatal`` line) in ``log``, not its retry warnings."""
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    for line in reversed(lines):
        m = re.search(r'level=fatal msg="(.*)"\s*$', line)
        if m:
            return m[1].replace('\\"', '"')[:300]
    return ""


def publish(layout: Path, ref: str, *, log: Path) -> str:
    """Push the layout's index and every image it lists to ``ref`` (REGISTRY/REPO[:TAG], the tag
    defaulting to the kernel release); return the pushed index's digest, checked against the
    registry's. TLS is verified except for a registry on loopback."""
    proc.require_tool("skopeo", step="publish", hint="install skopeo (./bootstrap does)")
    index = index_tag(layout)
    host, dest = split_reference(ref, index.tag)
    tls = ["--tls-verify=false"] if _is_loopback(host) else []
    with _authfile(host) as auth:
        dest_auth = ["--dest-authfile", auth[1]] if auth else []
        try:
            proc.run(["skopeo", "copy", "--all", "--preserve-digests", "--retry-times", "2", *dest_auth,
                      *[t.replace("--", "--dest-") for t in tls], f"oci:{layout}:{index.tag}", f"docker://{dest}"],
                     step="publish", log=log, timeout=SKOPEO_TIMEOUT)
        except CommandFailed as exc:
            raise CommandFailed(f"skopeo copy to {dest} failed: {_skopeo_fatal(log) or exc.message}", step="publish",
                                log=log, returncode=exc.returncode, argv=exc.argv) from exc
        raw = proc.capture(["skopeo", "inspect", "--raw", *auth, *tls, f"docker://{dest}"], step="publish",
                           log=log, timeout=300)
    digest = "sha256:" + hashlib.sha256(raw.encode()).hexdigest()
    if digest != index.digest:
        raise InfraError(f"{dest} serves index {digest}, not the pushed {index.digest}", step="publish", log=log)
    return digest

