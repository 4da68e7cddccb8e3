"""What one OUT directory's tools image must contain, read from the kernel build (OUT/manifest.json
through :mod:`harness.manifest`, OUT/config) and the image build (OUT/tools-manifest.json,
OUT/tools-files.tsv), never from the image itself.

Reading them never raises: what cannot be read is a problem, reported by the ``inputs`` check, and
the checks that need the missing piece are skipped with the reason.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness import manifest
from harness.arch import Arch
from harness.errors import InputError
from harness.tools import spec

STEP = "inspect-inputs"


@dataclass
class Expectation:
    """What one OUT directory's image must contain, read from the kernel and image builds."""

    arch: Arch
    out_dir: Path
    image: Path
    kernelrelease: str | None
    config: bytes | None
    image_manifest: dict[str, Any] | None
    listing: spec.Listing | None  # path -> (kind r/d/l, size or "-"), from the build
    problems: list[str] = field(default_factory=list)

    @classmethod
    def load(cls, arch: Arch, out_dir: Path) -> Expectation:
        out_dir = Path(out_dir)
        problems = []
        release = None
        try:
            release = manifest.read(out_dir, arch, step=STEP).kernelrelease
        except InputError as exc:
            problems.append(exc.message)
        config = None
        try:
            config = (out_dir / "config").read_bytes()
        except OSError as exc:
            problems.append(f"cannot read the kernel's config: {exc}")
        image_manifest = None
        if (out_dir / spec.MANIFEST_NAME).is_file():
            try:
                image_manifest = spec.read_manifest(out_dir)
            except (OSError, ValueError) as exc:  # the checks that need it fail as "did not finish"
                problems.append(f"cannot read {out_dir / spec.MANIFEST_NAME}: {exc}")
        listing = None
        if (out_dir / spec.FILES_NAME).is_file():
            try:
                listing = spec.parse_listing((out_dir / spec.FILES_NAME).read_text())
            except (OSError, ValueError) as exc:
                problems.append(f"cannot read {out_dir / spec.FILES_NAME}: {exc}")
        return cls(arch=arch, out_dir=out_dir, image=out_dir / spec.IMAGE_NAME, kernelrelease=release,
                   config=config, image_manifest=image_manifest, listing=listing, problems=problems)

    def required_paths(self) -> list[tuple[str, str]]:
        """(absolute path in the image, kind) that must exist; kind is file, dir or symlink. Without
        a kernelrelease (an unreadable manifest), only the paths that do not depend on it."""
        if self.kernelrelease is None:
            return [(f"/{p}", kind) for p, kind in spec.required_paths(self.arch.srcarch, "")
                    if not p.startswith(spec.modules_dir(""))]
        return [(f"/{p}", kind) for p, kind in spec.required_paths(self.arch.srcarch, self.kernelrelease)]
