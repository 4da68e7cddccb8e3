"""Real artifacts for the integration tests: the smoke kernels, built once per session through the
same CLI and code path as the production build (out/smoke-<arch>, incremental across runs)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from harness.layout import REPO, default_out_dir

ARCHES = ("amd64", "arm64")


def _build(arch: str, variant: str = "smoke", *extra: str) -> Path:
    out = default_out_dir(arch, variant)
    cmd = [sys.executable, "-m", "harness", "build", "--arch", arch, "--variant", variant, *extra]
    print(f"\n$ {' '.join(cmd)}", file=sys.stderr)
    rc = subprocess.run(cmd, cwd=REPO).returncode
    assert rc == 0, f"smoke build for {arch} failed (logs in {out / 'logs'})"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["arch"] == arch and manifest["variant"] == variant
    return out


class _LazyBuilds(dict):
    """arch -> OUT dir; each arch is built the first time a test asks for it."""

    def __init__(self, variant: str):
        super().__init__()
        self.variant = variant
        self.failed: dict[str, str] = {}

    def __missing__(self, arch: str) -> Path:
        if arch not in ARCHES:
            raise KeyError(arch)
        if arch in self.failed:  # built once per session: later tests fail at once, not rebuild
            pytest.fail(self.failed[arch], pytrace=False)
        try:
            self[arch] = _build(arch, self.variant)
        except AssertionError as exc:
            self.failed[arch] = str(exc)
            raise
        return self[arch]


@pytest.fixture(scope="session")
def smoke_build() -> dict[str, Path]:
    """{arch: OUT dir} of the smoke kernel, built on first use."""
    return _LazyBuilds("smoke")


@pytest.fixture(scope="session")
def negative_build() -> dict[str, Path]:
    """{arch: OUT dir} of the negative kernel: smoke without the patch series and without madvise."""
    return _LazyBuilds("negative")


@pytest.fixture(scope="session")
def smoke_tools(smoke_build) -> dict[str, Path]:
    """{arch: OUT dir} of the smoke kernel with its tools.img built (incremental perf objdirs)."""
    from harness.arch import get_arch
    from harness.tools import image as toolsimage

    for arch in ARCHES:
        toolsimage.build_tools_image(get_arch(arch), smoke_build[arch], jobs=2)
    return {arch: smoke_build[arch] for arch in ARCHES}

