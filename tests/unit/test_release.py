"""The release gate with fakes of each step: results, exit code, packaging, nothing stale left."""
from __future__ import annotations

import json
import os
import tarfile

import pytest

from harness import oci, release
from harness.arch import ARCHES
from harness.boot import run as boottest
from harness.compute import run as compute
from harness.errors import BuildFailed, QemuDied, ToolMissing
from harness.kernel import build
from harness.tools import image as toolsimage
from harness.tools import inspect

SOURCE_DATE = 1731500000


@pytest.fixture
def outroot(tmp_path, monkeypatch):
    monkeypatch.setenv("NEONVM_KERNEL_OUT", str(tmp_path / "out"))
    monkeypatch.setenv("NEONVM_KERNEL_CACHE", str(tmp_path / "cache"))
    return tmp_path / "out"


@pytest.fixture
def fakes(monkeypatch, outroot):
    """Fake build/tools/inspect/boot steps; `state` says which fail and how."""
    state = {"build_fail": set(), "inspect_ok": True, "boot": {}, "compute": {}, "oci_error": None}

    def fake_build(req):
        if req.arch.name in state["build_fail"]:
            raise BuildFailed("make failed: error: boom", step="make", log=req.out_dir / "logs/build.log")
        req.out_dir.mkdir(parents=True, exist_ok=True)
        for f in ("vmlinuz", "System.map", "config"):
            (req.out_dir / f).write_text(f"{f} {req.arch.name}\n")
        manifest = {"kernelrelease": "6.12.117-neonvm", "config_sha256": "0" * 64, "arch": req.arch.name,
                    "source_date_epoch": SOURCE_DATE, "built_at": "2026-11-29T16:26:30Z",
                    "durations": {"make": 12.3}, "build_dir": str(req.out_dir / "build")}
        (req.out_dir / "manifest.json").write_text(json.dumps(manifest))
        return manifest

    def fake_tools(arch, out, jobs):
        (out / "tools.img").write_bytes(b"img")
        (out / "tools-manifest.json").write_text('{"durations": {"perf": 5.9}, "perf": {"objdir": "/x", "size": 1}}')
        return out / "tools.img"

    def fake_write_layout(items, dest, log):
        if state["oci_error"]:
            raise state["oci_error"]
        dest.mkdir(parents=True)
        (dest / "index.json").write_text("{}")
        digest = oci.Descriptor(oci.MEDIA_INDEX, "sha256:" + "1" * 64, 1, "6.12.117-neonvm")
        return oci.Layout(path=dest, tag="6.12.117-neonvm", index=digest, images={}, specs={})

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

    def fake_compute(arch, out, kernel="ours"):
        assert kernel == "ours", "the gate runs the compute test on the kernel it releases"
        (out / "compute").mkdir(exist_ok=True)
        (out / "compute" / "results.json").write_text("{}")
        return state["compute"].get(arch.name, True)

    monkeypatch.setattr(compute, "compute_test", fake_compute)
    monkeypatch.setattr(build, "build", fake_build)
    monkeypatch.setattr(toolsimage, "build_tools_image", fake_tools)
    monkeypatch.setattr(inspect, "inspect_images", fake_inspect)
    monkeypatch.setattr(boottest, "boot_test", fake_boot)
    monkeypatch.setattr(oci, "write_layout", fake_write_layout)
    monkeypatch.setattr(oci, "inspect", lambda layout, log: {})
    return state


def _results(outroot):
    return json.loads((outroot / "release" / "release.json").read_text())


def test_all_pass_packages_both_arches(fakes, outroot):
    assert release.run(list(ARCHES.values())) == 0
    res = _results(outroot)
    assert res["ok"] and res["summary"]["pass"] == 10
    assert [c["name"] for c in res["checks"]][5:9] == ["boot-test-amd64", "boot-test-arm64", "compute-test-amd64",
                                                        "compute-test-arm64"]
    assert [c["name"] for c in res["checks"]][-1] == "oci"
    assert res["meta"]["oci_index"] == "6.12.117-neonvm@sha256:" + "1" * 64
    rel = outroot / "release"
    tars = sorted(rel.glob("neonvm-kernel-*.tar"))
    assert [t.name for t in tars] == ["neonvm-kernel-6.12.117-neonvm-amd64.tar",
                                     "neonvm-kernel-6.12.117-neonvm-arm64.tar"]
    with tarfile.open(tars[0]) as tar:
        names = tar.getnames()
    prefix = "neonvm-kernel-6.12.117-neonvm-amd64"
    files = ("System.map", "config", "manifest.json", "tools-manifest.json", "tools.img", "vmlinuz")
    assert names == [prefix] + [f"{prefix}/{f}" for f in files]
    assert (rel / "results" / "amd64" / "boot" / "results.json").is_file()
    assert (rel / "results" / "arm64" / "compute" / "results.json").is_file()
    assert (rel / "results" / "arm64" / "inspect" / "results.json").is_file()
    assert (rel / "oci" / "index.json").is_file()
    assert (rel / "SHA256SUMS").read_text().count("neonvm-kernel-") == 2
    assert (rel / "release.xml").is_file()
    assert not (outroot / ".release-staging").exists()


def test_release_tar_is_reproducible(fakes, outroot, tmp_path):
    """Same inputs -> same bytes: host mtimes, owners and the run's timings do not go in."""
    from harness.arch import get_arch

    arch = get_arch("amd64")
    assert release.run([arch]) == 0
    out = outroot / "amd64"
    first = release.package(arch, out, tmp_path / "a")
    for f in out.iterdir():
        if f.is_file():
            os.utime(f, (1, 1))
    data = json.loads((out / "manifest.json").read_text())
    data.update(built_at="2030-01-01T00:00:00Z", durations={"make": 99.0}, build_dir="/elsewhere")
    (out / "manifest.json").write_text(json.dumps(data))
    second = release.package(arch, out, tmp_path / "b")
    assert first.read_bytes() == second.read_bytes()
    with tarfile.open(first) as tar:
        members = tar.getmembers()
        record = json.loads(tar.extractfile(f"{members[0].name}/manifest.json").read())
        tools = json.loads(tar.extractfile(f"{members[0].name}/tools-manifest.json").read())
    assert {(m.mtime, m.uid, m.gid, m.uname, m.gname) for m in members} == {(SOURCE_DATE, 0, 0, "", "")}
    assert [m.name for m in members] == sorted(m.name for m in members)
    assert "built_at" not in record and "durations" not in record and "build_dir" not in record
    assert record["kernelrelease"] == "6.12.117-neonvm"
    assert tools == {"perf": {"size": 1}}


def test_oci_step_error_fails_gate_and_writes_nothing(fakes, outroot):
    assert release.run(list(ARCHES.values())) == 0
    fakes["oci_error"] = ToolMissing("required program 'umoci' not found on PATH", step="oci")
    assert release.run(list(ARCHES.values())) == 1
    by = {c["name"]: c for c in _results(outroot)["checks"]}
    assert by["oci"]["status"] == "error" and "umoci" in by["oci"]["reason"]
    rel = outroot / "release"
    assert not list(rel.glob("*.tar")) and not (rel / "oci").exists() and not (rel / "results").exists()
    assert not (outroot / ".release-staging").exists()


def test_oci_step_skipped_when_a_check_failed(fakes, outroot):
    fakes["boot"]["arm64"] = False
    assert release.run(list(ARCHES.values())) == 1
    by = {c["name"]: c for c in _results(outroot)["checks"]}
    assert by["oci"]["status"] == "skip" and "earlier gate step" in by["oci"]["reason"]


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


def test_publish_requires_the_gates_passing_verdict(fakes, outroot, capsys):
    from harness import cli
    from harness.errors import CheckFailed, InvalidArgument

    rel = outroot / "release"
    with pytest.raises(InvalidArgument, match="no release verdict"):
        release.require_passed(rel)
    fakes["boot"]["arm64"] = False
    assert release.run(list(ARCHES.values())) == 1
    with pytest.raises(CheckFailed, match=r"boot-test-arm64 \(fail\).*oci \(skip\)"):
        release.require_passed(rel)
    assert cli.main(["publish", "127.0.0.1:5000/neonvm/vm-kernel"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: [publish] the release gate did not pass") and len(err.splitlines()) == 1
    fakes["boot"]["arm64"] = True
    assert release.run(list(ARCHES.values())) == 0
    release.require_passed(rel)


def test_a_failed_compute_check_fails_the_gate(fakes, outroot):
    fakes["compute"]["amd64"] = False
    assert release.run(list(ARCHES.values())) == 1
    res = _results(outroot)
    by_name = {c["name"]: c for c in res["checks"]}
    assert by_name["compute-test-amd64"]["status"] == "fail"
    assert "compute/results.json" in by_name["compute-test-amd64"]["reason"]
    assert by_name["oci"]["status"] == "skip"
    assert not list((outroot / "release").glob("neonvm-kernel-*.tar"))
