"""The boot test's JUnit XML, parsed back: a fake run (no QEMU) with checks that pass, fail, skip
and error, whose results.xml must say what its results.json says."""
from __future__ import annotations

import io
import json
import xml.etree.ElementTree as ET

import pytest

from harness.arch import get_arch
from harness.boot import run as boottest
from harness.boot.checks import Check, Guest, Skip
from harness.boot.run import BootRequest
from harness.errors import CheckFailed, QemuDied
from harness.report import CheckResult

AMD64 = get_arch("amd64")
STATUS_ELEMENT = {"fail": "failure", "error": "error", "skip": "skipped"}


class FakeVm:
    """Stands in for harness.boot.vm.Vm in boottest.run."""

    def __init__(self, spec, log_dir, tag="boot", incoming=False):
        self.spec, self.log_dir, self.tag = spec, log_dir, tag
        self.shut = 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.shutdown()
        return False

    def shutdown(self):
        self.shut += 1


def _passes(guest, ev):
    ev["seen"] = "yes"


def _fails(guest, ev):
    raise CheckFailed('MemTotal 4 kB < 8 kB & "no" <growth>', step="fake-fail")


def _skips(guest, ev):
    raise Skip("needs KVM (ran under TCG)")


def _errors(guest, ev):
    raise QemuDied("QEMU went away mid-test", step="qemu")


def _crashes(guest, ev):
    raise KeyError("harness bug")


CHECKS = [Check("fake-pass", _passes), Check("fake-fail", _fails), Check("fake-skip", _skips),
          Check("fake-error", _errors), Check("fake-crash", _crashes)]


@pytest.fixture
def fake_run(tmp_path, monkeypatch):
    """boottest.run with fake checks, VM and boot; the results it returned."""
    def boot_guest(vm_, **kw):
        return (CheckResult("boot", "pass", duration=1.25, evidence={"seconds_to_shell": 1.2}),
                Guest(vm=vm_, arch=AMD64, accel_name="tcg", release="6.12.117-neonvm", vms=[vm_]))

    monkeypatch.setattr(boottest, "Vm", FakeVm)
    monkeypatch.setattr(boottest, "boot_guest", boot_guest)
    monkeypatch.setattr(boottest, "select_checks", lambda arch, only: CHECKS)
    monkeypatch.setattr(boottest.initramfs, "build", lambda arch, **kw: tmp_path / "initrd")
    monkeypatch.setattr(boottest, "_qemu_version", lambda arch: "QEMU emulator version 10.0.2")
    monkeypatch.setattr(boottest, "make_data_disk", lambda path, log: path)
    stream = io.StringIO()
    results = boottest.run(BootRequest(AMD64, kernel=tmp_path / "vmlinuz", release="6.12.117-neonvm",
                                       results_dir=tmp_path / "boot", accel="tcg", meta={"variant": "smoke"}),
                           stream=stream)
    return results, tmp_path / "boot", stream.getvalue()


def test_junit_says_what_results_json_says(fake_run):
    results, out, _ = fake_run
    data = json.loads((out / "results.json").read_text())
    suite = ET.parse(out / "results.xml").getroot()

    assert [r.status for r in results] == ["pass", "pass", "fail", "skip", "error", "error"]
    assert [c["name"] for c in data["checks"]] == [r.name for r in results]
    assert suite.tag == "testsuite" and suite.get("name") == data["suite"] == "boot-test-amd64"
    assert {k: int(suite.get(k)) for k in ("tests", "failures", "errors", "skipped")} == {
        "tests": len(data["checks"]), "failures": data["summary"]["fail"], "errors": data["summary"]["error"],
        "skipped": data["summary"]["skip"]}

    cases = suite.findall("testcase")
    assert [tc.get("name") for tc in cases] == [c["name"] for c in data["checks"]]
    for tc, check in zip(cases, data["checks"], strict=True):
        outcome = [child for child in tc if child.tag in ("failure", "error", "skipped")]
        if check["status"] == "pass":
            assert outcome == [], check["name"]
        else:
            assert [e.tag for e in outcome] == [STATUS_ELEMENT[check["status"]]], check["name"]
            assert outcome[0].get("message") == check["reason"]  # escaped and read back exactly
        assert tc.get("classname") == data["suite"]
        assert float(tc.get("time")) == pytest.approx(check["duration"], abs=1e-3)
        evidence = tc.find("system-out")
        if check["evidence"]:
            assert evidence is not None
            for key in check["evidence"]:
                assert f"{key}: " in evidence.text
    props = {p.get("name"): p.get("value") for p in suite.find("properties")}
    assert props["kernelrelease"] == data["meta"]["kernelrelease"] == "6.12.117-neonvm"
    assert props["variant"] == "smoke" and props["accelerator"] == "tcg"


def test_the_outcomes_reach_the_reports_as_the_protocol_says(fake_run):
    results, out, printed = fake_run
    by_name = {c["name"]: c for c in json.loads((out / "results.json").read_text())["checks"]}
    assert by_name["fake-pass"]["evidence"] == {"accelerator": "tcg", "seen": "yes"}
    assert by_name["fake-fail"]["reason"] == '[fake-fail] MemTotal 4 kB < 8 kB & "no" <growth>'
    assert by_name["fake-skip"]["reason"] == "needs KVM (ran under TCG)"
    assert by_name["fake-error"]["evidence"]["kind"] == "infra"
    assert by_name["fake-crash"]["reason"].startswith("harness bug: KeyError")
    assert "2 passed, 1 failed, 1 skipped, 2 errors" in printed
