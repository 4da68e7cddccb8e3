"""The one reader and writer of OUT/manifest.json, and its one arch rule."""
from __future__ import annotations

import json

import pytest

from harness import manifest
from harness.arch import get_arch
from harness.errors import InputError, InvalidArgument, SourceMissing

AMD64, ARM64 = get_arch("amd64"), get_arch("arm64")


def test_missing_manifest_says_build_first(tmp_path):
    with pytest.raises(SourceMissing, match=r"\[boot-test\] .*manifest.json does not exist: build the kernel first"):
        manifest.read(tmp_path, AMD64, step="boot-test")


def test_write_then_read_round_trips(tmp_path):
    manifest.write(tmp_path, {"arch": "arm64", "kernelrelease": "6.12.117-neonvm", "variant": "smoke"})
    m = manifest.read(tmp_path, ARM64, step="t")
    assert (m.arch, m.kernelrelease, m.variant, m.version) == ("arm64", "6.12.117-neonvm", "smoke", "")
    assert m.out_dir == tmp_path and manifest.exists(tmp_path)
    manifest.invalidate(tmp_path)
    assert not manifest.exists(tmp_path)


@pytest.mark.parametrize("written", ["x86_64", "aarch64", "arm64"])
def test_one_arch_rule_canonical_name_only(tmp_path, written):
    (tmp_path / "manifest.json").write_text(json.dumps({"arch": written, "kernelrelease": "r"}))
    with pytest.raises(InvalidArgument, match=f"is for {written}, not amd64"):
        manifest.read(tmp_path, AMD64, step="t")


def test_any_arch_when_none_asked(tmp_path):
    (tmp_path / "manifest.json").write_text(json.dumps({"arch": "arm64", "kernelrelease": "r"}))
    assert manifest.read(tmp_path, None, step="t").arch == "arm64"


@pytest.mark.parametrize("text, message", [
    ("{half-writ", "cannot read"),
    ("[]", "not a build manifest"),
    ('{"arch": "amd64"}', "lacks kernelrelease"),
    ('{"arch": "amd64", "kernelrelease": ""}', "names no kernelrelease"),
])
def test_bad_manifests_are_input_errors(tmp_path, text, message):
    (tmp_path / "manifest.json").write_text(text)
    with pytest.raises(InputError, match=message):
        manifest.read(tmp_path, AMD64, step="t")


def test_require_names_missing_fields(tmp_path):
    manifest.write(tmp_path, {"arch": "amd64", "kernelrelease": "r"})
    with pytest.raises(InvalidArgument, match="lacks tree, build_dir; rebuild the kernel"):
        manifest.read(tmp_path, AMD64, step="t").require("tree", "build_dir", step="t")


def test_writer_refuses_an_incomplete_record(tmp_path):
    with pytest.raises(ValueError):
        manifest.write(tmp_path, {"arch": "amd64"})
    assert not manifest.exists(tmp_path)
