"""What breaks around the checks (no manifest, an initramfs that cannot be built, a harness bug)
reaches the boot and compute runners' reports through the check protocol's one mapping: results
written, JUnit parsed back, no traceback instead of a report."""
from __future__ import annotations

import io
import json

import pytest
from tools_fakes import junit_statuses

from harness.arch import get_arch
from harness.boot import run as boottest
from harness.boot.run import BootRequest
from harness.check import failed, outcome
from harness.compute import run as compute_run
from harness.errors import BuildFailed, QemuDied, SourceMissing

AMD64 = get_arch("amd64")


def _boot_with_initramfs_raising(tmp_path, monkeypatch, exc):
    def build(arch, **kw):
        raise exc

    monkeypatch.setattr(boottest.initramfs, "build", build)
    stream = io.StringIO()
    results = boottest.run(BootRequest(AMD64, kernel=tmp_path / "vmlinuz", release="6.12.117-neonvm",
                                       results_dir=tmp_path / "boot", accel="tcg"), stream=stream)
    data = json.loads((tmp_path / "boot" / "results.json").read_text())
    return results, data, junit_statuses(tmp_path / "boot" / "results.xml"), stream.getvalue()


@pytest.mark.parametrize("exc, status, reason", [
    (RuntimeError("a bug"), "error", "harness bug: RuntimeError: a bug"),
    (QemuDied("QEMU went away", step="qemu"), "error", "[qemu] QEMU went away"),
    (SourceMissing("busybox not found", step="initramfs"), "fail", "[initramfs] busybox not found"),
])
def test_boot_runner_reports_what_broke_before_the_boot(tmp_path, monkeypatch, exc, status, reason):
    results, data, junit, printed = _boot_with_initramfs_raising(tmp_path, monkeypatch, exc)
    assert [(r.name, r.status, r.reason) for r in results] == [("boot", status, reason)]
    assert [(c["name"], c["status"]) for c in data["checks"]] == [("boot", status)]
    assert junit == {"boot": status}
    assert data["meta"]["wall_seconds"] >= 0
    assert "results:" in printed


def test_compute_runner_without_a_manifest_fails_with_a_report(tmp_path):
    stream = io.StringIO()
    ok = compute_run.compute_test(AMD64, tmp_path / "out", stream=stream)
    res = compute_run.results_dir(tmp_path / "out", "ours")
    data = json.loads((res / "results.json").read_text())
    assert ok is False
    assert [(c["name"], c["status"]) for c in data["checks"]] == [("compute-test", "fail")]
    assert "manifest.json does not exist" in data["checks"][0]["reason"]
    assert data["checks"][0]["evidence"]["kind"] == "input"
    assert junit_statuses(res / "results.xml") == {"compute-test": "fail"}


def test_compute_runner_turns_a_harness_bug_into_an_error(tmp_path, monkeypatch):
    def read(*a, **kw):
        raise KeyError("kernelrelease")

    monkeypatch.setattr(compute_run.manifest, "read", read)
    assert compute_run.compute_test(AMD64, tmp_path / "out", stream=io.StringIO()) is False
    res = compute_run.results_dir(tmp_path / "out", "ours")
    check = json.loads((res / "results.json").read_text())["checks"][0]
    assert (check["status"], check["reason"]) == ("error", "harness bug: KeyError: 'kernelrelease'")
    assert junit_statuses(res / "results.xml") == {"compute-test": "error"}


def test_the_one_mapping():
    ev: dict = {}
    assert outcome("x", BuildFailed("make failed", step="make", log="/tmp/make.log"), ev) == \
        ("fail", "[make] make failed (log: /tmp/make.log)")
    assert ev == {"kind": "kernel", "log": "/tmp/make.log"}
    r = failed("teardown", ValueError("oops"))
    assert (r.name, r.status, r.reason) == ("teardown", "error", "harness bug: ValueError: oops")
