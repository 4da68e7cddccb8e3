"""The real pipeline on real source: Debian's linux-source tarball, the project's series, the
fragments resolved with the kernel's own scripts, a real make of the smoke kernel for both arches."""
from __future__ import annotations

import json

import pytest

from harness.arch import ARCHES, get_arch
from harness.fsutil import sha256_file
from harness.kernel import configs, kconfig
from harness.kernel.source import Pin

pytestmark = pytest.mark.integration


def _image_magic_ok(arch: str, data: bytes) -> bool:
    offset, magic = get_arch(arch).image_magic
    return data[offset:offset + len(magic)] == magic


@pytest.mark.parametrize("arch", list(ARCHES))
def test_smoke_build_produces_image_and_manifest(smoke_build, arch):
    out = smoke_build[arch]
    manifest = json.loads((out / "manifest.json").read_text())
    pinned = Pin.load().version
    assert manifest["version"] == pinned
    assert manifest["kernelrelease"] == f"{pinned}{manifest['suffix']}"
    assert manifest["source"]["provider"] == "debian"
    assert manifest["source"]["sha256"] == sha256_file(manifest["source"]["path"])
    for name, art in manifest["artifacts"].items():
        assert sha256_file(out / name) == art["sha256"], name
    assert manifest["config_sha256"] == sha256_file(out / "config")
    assert set(manifest["durations"]) >= {"source", "unpack+patch", "config", "make"}
    assert _image_magic_ok(arch, (out / "vmlinuz").read_bytes()[:0x1000])
    # the config that was built still has every option the variant asks for
    variant = kconfig.get_variant("smoke")
    resolved = kconfig.parse_config_text((out / "config").read_text())
    assert kconfig.audit(variant.requests(get_arch(arch)), resolved) == []
    assert resolved["CONFIG_VIRTIO_MEM"] == "y" and resolved["CONFIG_PTP_1588_CLOCK_KVM"] == "y"
    assert (out / "logs" / "build.log").stat().st_size > 0


def test_committed_production_configs_pass_audit(capsys):
    """`nox -s audit`: the committed configs have every requested option and are current."""
    assert configs.audit_committed(list(ARCHES.values())) == 0
    out = capsys.readouterr().out
    assert out.count("PASS") == len(ARCHES)
