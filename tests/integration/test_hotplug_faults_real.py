"""The memory hot-add series, proven by fault injection on real kernels (the amd64 smoke kernel has it):
with the series the failed hot-add is clean and the plug succeeds afterwards; without it (the
`negative` variant) the same check catches the kernel's NULL dereference."""
from __future__ import annotations

import pytest

from harness import manifest
from harness.arch import get_arch
from harness.boot import run as boottest
from harness.boot.run import BootRequest

pytestmark = pytest.mark.integration
AMD64 = get_arch("amd64")


def _run(out, tmp_path):
    release = manifest.read(out, AMD64, step="test").kernelrelease
    results = boottest.run(BootRequest(AMD64, kernel=out / "vmlinuz", release=release, results_dir=tmp_path,
                                       only=["hotplug-faults"]))
    return {r.name: r for r in results}


def test_patched_kernel_fails_the_hot_add_cleanly_then_plugs(smoke_build, tmp_path):
    out = smoke_build["amd64"]
    built = manifest.read(out, AMD64, step="test").data
    assert [p["name"] for p in built["patches"]], "the smoke kernel applies the series"
    results = _run(out, tmp_path)
    assert results["boot"].status == "pass", results["boot"].reason
    r = results["hotplug-faults"]
    assert r.status == "pass", (r.reason, r.evidence.get("console_tail"))
    assert any("adding memory failed: -12" in line for line in r.evidence["failed_add"])
    assert r.evidence["device_size_during_injection"] == 0
    assert r.evidence["replugged_device_size"] == 256 << 20


def test_unpatched_kernel_oopses_and_the_check_sees_it(negative_build, tmp_path):
    out = negative_build["amd64"]
    assert manifest.read(out, AMD64, step="test").data["patches"] == []
    results = _run(out, tmp_path)
    assert results["boot"].status == "pass", results["boot"].reason
    r = results["hotplug-faults"]
    assert r.status == "fail", r.reason
    assert "NULL pointer dereference" in r.reason or "Oops" in r.reason, r.reason
    assert any("RIP:" in line or "Call Trace" in line or "Oops" in line for line in r.evidence["console_tail"])
