"""OUT/manifest.json: the record of a finished kernel build, and its one reader and writer.

The build removes it when it starts and writes it last, so a directory without it is not a finished
build. Every consumer (tools image, inspection, boot test, release, benchmarks) reads it here, with
one rule for its arch: the manifest names the canonical arch (``amd64``, ``arm64``) it was built for,
and must name the one asked for.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.arch import Arch
from harness.errors import InvalidArgument, SourceMissing
from harness.fsutil import atomic_write_json

NAME = "manifest.json"
REQUIRED = ("arch", "kernelrelease")


def path(out_dir: Path) -> Path:
    return Path(out_dir) / NAME


def exists(out_dir: Path) -> bool:
    return path(out_dir).is_file()


def invalidate(out_dir: Path) -> None:
    """Mark OUT as not (or no longer) a finished build."""
    path(out_dir).unlink(missing_ok=True)


def write(out_dir: Path, data: dict[str, Any]) -> None:
    missing = [k for k in REQUIRED if not data.get(k)]
    if missing:
        raise ValueError(f"a build manifest needs {', '.join(missing)}")
    atomic_write_json(path(out_dir), data)


@dataclass(frozen=True)
class Manifest:
    """A validated manifest.json; ``data`` holds every field the build wrote."""

    path: Path
    data: dict[str, Any]

    @property
    def out_dir(self) -> Path:
        return self.path.parent

    @property
    def arch(self) -> str:
        return str(self.data["arch"])

    @property
    def kernelrelease(self) -> str:
        return str(self.data["kernelrelease"])

    @property
    def version(self) -> str:
        return str(self.data.get("version", ""))

    @property
    def variant(self) -> str:
        return str(self.data.get("variant", ""))

    @property
    def config_sha256(self) -> str:
        return str(self.data.get("config_sha256", ""))

    def require(self, *keys: str, step: str) -> None:
        """Refuse a manifest that lacks fields a consumer needs (an older or edited file)."""
        missing = [k for k in keys if k not in self.data]
        if missing:
            raise InvalidArgument(f"{self.path} lacks {', '.join(missing)}; rebuild the kernel", step=step)


def read(out_dir: Path, arch: Arch | None, *, step: str) -> Manifest:
    """Read and validate OUT/manifest.json for ``arch`` (None: any arch), or raise an InputError
    that says what to do (``SourceMissing`` when there is no finished build)."""
    p = path(out_dir)
    try:
        data = json.loads(p.read_text())
    except FileNotFoundError:
        raise SourceMissing(f"{p} does not exist: build the kernel first", step=step) from None
    except (OSError, ValueError) as exc:  # unreadable, or not JSON (an interrupted or edited file)
        raise InvalidArgument(f"cannot read {p}: {exc}; rebuild the kernel", step=step) from None
    if not isinstance(data, dict):
        raise InvalidArgument(f"{p} is not a build manifest; rebuild the kernel", step=step)
    m = Manifest(p, data)
    m.require(*REQUIRED, step=step)
    if not data["kernelrelease"]:
        raise InvalidArgument(f"{p} names no kernelrelease; rebuild the kernel", step=step)
    if arch is not None and data["arch"] != arch.name:
        raise InvalidArgument(f"{p} is for {data['arch']}, not {arch.name}", step=step)
    return m
