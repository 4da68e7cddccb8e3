"""The release gate with fakes of each step: results, exit code, packaging, nothing stale left."""
from __future__ import annotations

import json
import tarfile

import pytest

from harness import release
from harness.arch import ARCHES
from harness.boot import run as boottest
from harness.errors import BuildFailed, QemuDied
from harness.kernel import build
from harness.tools import image as toolsimage
from harness.tools import inspect


@pytest.fixture
def outroot(tmp_path, monkeypatch):
    monkeypatch.setenv("NEONVM_KERNEL_OUT", str(tmp_path / "out"))
    monkeypatch.setenv("NEONVM_KERNEL_CACHE", str(tmp_path / "cache"))
    return tmp_path / "out"


@pytest.fixture
def fakes(monkeypatch, outroot):
    """Fake build/tools/inspect/boot steps; `state` says which fail and how."""
    state = {"build_fail": set(), "inspect_ok": True, "boot": {}}

    def fake_build(req):
        if req.arch.name in state["build_fail"]:
            raise BuildFailed("make failed: error: boom", step="make", log=req.out_dir / "logs/build.log")
        req.out_dir.mkdir(parents=True, exist_ok=True)
        for f in ("vmlinuz", "System.map", "config"):
            (req.out_dir / f).write_text(f"{f} {req.arch.name}\n")
        manifest = {"kernelrelease": "6.12.117-neonvm", "config_sha256": "0" * 64, "arch": req.arch.name}
        (req.out_dir / "manifest.json").write_text(json.dumps(manifest))
        return manifest

    def fake_tools(arch, out, jobs):
        (out / "tools.img").write_bytes(b"img")
        (out / "tools-manifest.json").write_text("{}")
        return out / "tools.img"

    def fake_inspect(items):
        for _, out in items:
            (out / "inspect").mkdir(exist_ok=True)
            (out / "inspect" / "results.json").write_text("{}")
        return state["inspect_ok"]

    def fake_boot(arch, out, require_tools):
        assert require_tools, "the release gate requires tools.img"
        outcome = state["boot"].get(arch.name, True)
        if isinstance(outcome, Exception):
            raise outcome
        (out / "boot").mkdir(exist_ok=True)
        (out / "boot" / "results.json").write_text("{}")
        return outcome

    monkeypatch.setattr(build, "build", fake_build)
    monkeypatch.setattr(toolsimage, "build_tools_image", fake_tools)
    monkeypatch.setattr(inspect, "inspect_images", fake_inspect)
    monkeypatch.setattr(boottest, "boot_test", fake_boot)
    return state


def _results(outroot):
    return json.loads((outroot / "release" / "release.json").read_text())


def test_all_pass_packages_both_arches(fakes, outroot):
    assert release.run(list(ARCHES.values())) == 0
    res = _results(outroot)
    assert res["ok"] and res["summary"]["pass"] == 7
    rel = outroot / "release"
    tars = sorted(rel.glob("neonvm-kernel-*.tar"))
    assert [t.name for t in tars] == ["neonvm-kernel-6.12.117-neonvm-amd64.tar",
                                     "neonvm-kernel-6.12.117-neonvm-arm64.tar"]
    with tarfile.open(tars[0]) as tar:
        names = tar.getnames()
    assert "neonvm-kernel-6.12.117-neonvm-amd64/tools.img" in names
    assert "neonvm-kernel-6.12.117-neonvm-amd64/boot/results.json" in names
    assert (rel / "SHA256SUMS").read_text().count("neonvm-kernel-") == 2
    assert (rel / "release.xml").is_file()


def test_build_failure_fails_gate_and_removes_older_packages(fakes, outroot):
    assert release.run(list(ARCHES.values())) == 0
    fakes["build_fail"].add("arm64")
    assert release.run(list(ARCHES.values())) == 1
    res = _results(outroot)
    by = {c["name"]: c for c in res["checks"]}
    assert by["build-arm64"]["status"] == "fail" and "[make]" in by["build-arm64"]["reason"]
    assert by["boot-test-arm64"]["status"] == "skip"
    assert by["boot-test-amd64"]["status"] == "pass"
    assert not list((outroot / "release").glob("*.tar")), "a failed gate left an older release behind"
    assert not (outroot / "release" / "SHA256SUMS").exists()


def test_infrastructure_error_is_an_error_not_a_failure(fakes, outroot):
    fakes["boot"]["amd64"] = QemuDied("QEMU exited unexpectedly", step="boot", log="/tmp/qemu.log")
    assert release.run(list(ARCHES.values())) == 1
    by = {c["name"]: c for c in _results(outroot)["checks"]}
    assert by["boot-test-amd64"]["status"] == "error"
    assert by["boot-test-amd64"]["evidence"]["kind"] == "infra"


def test_failed_check_fails_gate(fakes, outroot):
    fakes["boot"]["arm64"] = False
    fakes["inspect_ok"] = False
    assert release.run(list(ARCHES.values())) == 1
    by = {c["name"]: c for c in _results(outroot)["checks"]}
    assert by["boot-test-arm64"]["status"] == "fail"
    assert by["inspect-tools"]["status"] == "fail"


def test_interrupted_gate_leaves_no_older_verdict(fakes, outroot, monkeypatch):
    assert release.run(list(ARCHES.values())) == 0
    assert _results(outroot)["ok"]

    def interrupted(req):
        raise KeyboardInterrupt
    monkeypatch.setattr(build, "build", interrupted)
    with pytest.raises(KeyboardInterrupt):
        release.run(list(ARCHES.values()))
    rel = outroot / "release"
    assert not (rel / "release.json").exists() and not (rel / "release.xml").exists()
    assert not list(rel.glob("*.tar"))
