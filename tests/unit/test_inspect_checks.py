"""The image checks on the one check protocol, against a stand-in for the appliance
(tools_fakes.FakeAppliance: host directories as the images' filesystems): no libguestfs launch.

A failed check makes the checks that need what it should have found skip with the reason; a check
that crashes is an error of that check; neither stops the other checks or the other images."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from tools_fakes import RELEASE, FakeAppliance, FakeDisk, fake_out, fake_tree, junit_statuses, package

from harness.arch import ARCHES
from harness.report import CheckResult
from harness.tools import inspect, spec
from harness.tools.inspect import checks
from harness.tools.inspect.expect import Expectation

AMD64, ARM64 = ARCHES["amd64"], ARCHES["arm64"]
TREE_CHECKS = ["top-level", "tree", "kernelrelease", "perf-static-elf", "config", "kheaders"]


def _built(base: Path, name: str, arch=AMD64, **disk_kw) -> tuple[Path, FakeDisk]:
    """An OUT with a real tools.img (+ manifest, listing) of a fake tree, and the fake disk that
    shows that tree."""
    out = fake_out(base / name, arch)
    tree = fake_tree(base / f"{name}-tree", arch)
    package(tree, out, arch)
    return out, FakeDisk.built(out, tree, **disk_kw)


def _run(out: Path, disk: FakeDisk, arch=AMD64, *, thorough: bool = True) -> dict[str, CheckResult]:
    g = FakeAppliance([disk])
    results = checks.run_image_checks(g, Expectation.load(arch, out), "/dev/sda", g.list_partitions(),
                                      thorough=thorough)
    assert [r.name for r in results] == checks.names(thorough=thorough)
    return {r.name: r for r in results}


def _statuses(results: dict[str, CheckResult]) -> dict[str, str]:
    return {n: r.status for n, r in results.items()}


def test_a_good_image_passes_every_check(tmp_path):
    out, disk = _built(tmp_path, "good", ARM64)
    results = _run(out, disk, ARM64)
    assert set(_statuses(results).values()) == {"pass"}, {n: r.reason for n, r in results.items()}
    assert results["perf-static-elf"].evidence["e_machine"] == ARM64.elf_machine
    assert results["image-file"].evidence["sha256"] == json.loads((out / spec.MANIFEST_NAME).read_text())[
        "image"]["sha256"]
    assert "listing" not in _run(out, disk, ARM64, thorough=False)


def test_a_failed_mount_skips_the_tree_checks_with_the_reason(tmp_path):
    out, disk = _built(tmp_path, "unmountable", mount_error="wrong fs type, bad superblock")
    results = _run(out, disk)
    assert results["mount"].status == "fail" and "bad superblock" in results["mount"].reason
    assert results["mount"].reason.startswith("[mount] ")
    for name in TREE_CHECKS:
        assert results[name].status == "skip", name
        assert results[name].reason.startswith("not run: mount failed: ") and "bad superblock" in results[name].reason
    assert results["filesystem-usage"].status == "pass"  # the checks before the mount are unaffected


def test_no_ext4_superblock_skips_the_superblock_checks(tmp_path):
    out, disk = _built(tmp_path, "vfat", fs_probe={"TYPE": "vfat", "LABEL": spec.FS_LABEL}, superblock=None)
    results = _run(out, disk)
    assert results["filesystem-type"].status == "fail" and "filesystem is vfat" in results["filesystem-type"].reason
    for name in ("filesystem-size", "filesystem-usage"):
        assert results[name].status == "skip"
        assert results[name].reason == "not run: filesystem-type failed: no ext4 superblock on /dev/sda1"


def test_an_unreadable_superblock_fails_the_checks_that_read_it(tmp_path):
    """ext4 by its signature but tune2fs cannot read it: no earlier check reports that, so the
    checks that need the superblock fail (not skip) with the reason."""
    out, disk = _built(tmp_path, "bad-sb", superblock=None)
    results = _run(out, disk)
    assert results["filesystem-type"].status == "pass"
    for name in ("filesystem-size", "filesystem-usage"):
        assert results[name].status == "fail" and "Bad magic number" in results[name].reason


def test_without_the_kernels_manifest_the_checks_needing_the_release_skip(tmp_path):
    out, disk = _built(tmp_path, "no-manifest")
    (out / "manifest.json").unlink()
    results = _run(out, disk)
    assert results["inputs"].status == "fail" and "build the kernel first" in results["inputs"].reason
    for name in ("tree", "kernelrelease", "config", "kheaders"):
        assert results[name].status == "skip"
        assert results[name].reason.startswith("not run: inputs failed: no kernelrelease"), results[name].reason
    assert results["top-level"].status == "pass" and results["perf-static-elf"].status == "pass"


def test_a_manifest_for_another_arch_is_an_input_problem(tmp_path):
    out = fake_out(tmp_path, ARM64)
    exp = Expectation.load(AMD64, out)
    assert exp.kernelrelease is None
    assert any("is for arm64, not amd64" in p for p in exp.problems)


def test_a_crashing_check_is_an_error_and_the_other_images_are_still_inspected(tmp_path, monkeypatch):
    """A KeyError in one check (it used to abort every image after it) is that check's error."""
    bad_out, bad = _built(tmp_path, "bad")
    del bad.superblock["Block size"]  # tune2fs -l output without a field filesystem-size reads
    good_out, good = _built(tmp_path, "good", ARM64)
    appliance = FakeAppliance([bad, good])
    monkeypatch.setattr(inspect, "open_appliance", lambda drives, log: appliance)
    ok = inspect.inspect_images([(AMD64, bad_out), (ARM64, good_out)], stream=False)
    assert not ok and appliance.closed
    data = json.loads((bad_out / "inspect" / "results.json").read_text())
    by = {c["name"]: c for c in data["checks"]}
    assert by["filesystem-size"]["status"] == "error"
    assert by["filesystem-size"]["reason"] == "harness bug: KeyError: 'Block size'"
    assert by["filesystem-usage"]["status"] == "pass"  # the next check still ran
    assert [c["name"] for c in data["checks"]] == checks.names()
    assert {by[n]["status"] for n in TREE_CHECKS} == {"pass"}
    good_data = json.loads((good_out / "inspect" / "results.json").read_text())
    assert good_data["ok"] and good_data["summary"]["pass"] == len(checks.names())
    assert good_data["meta"]["device"] == "/dev/sdb" and good_data["meta"]["images_in_launch"] == 2


def test_inspection_results_are_written_as_json_and_junit_that_agree(tmp_path, monkeypatch):
    out, disk = _built(tmp_path, "unmountable", mount_error="bad superblock")
    missing = fake_out(tmp_path / "no-image", AMD64)
    monkeypatch.setattr(inspect, "open_appliance", lambda drives, log: FakeAppliance([disk]))
    assert not inspect.inspect_images([(AMD64, out), (AMD64, missing)], stream=False)
    for d in (out, missing):
        json_path, junit_path = inspect.results_paths(d)
        data = json.loads(json_path.read_text())
        assert data["suite"] == "tools-image-amd64"
        want = {c["name"]: c["status"] for c in data["checks"]}
        assert junit_statuses(junit_path) == want
    statuses = junit_statuses(inspect.results_paths(out)[1])
    assert statuses["mount"] == "fail" and {statuses[n] for n in TREE_CHECKS} == {"skip"}
    assert junit_statuses(inspect.results_paths(missing)[1]) == {"image-file": "fail"}
    reason = json.loads(inspect.results_paths(missing)[0].read_text())["checks"][0]["reason"]
    assert "tools.img not found: build it with `tools`" in reason


def test_a_crash_outside_the_checks_is_that_images_error(tmp_path, monkeypatch):
    out, disk = _built(tmp_path, "x")
    monkeypatch.setattr(inspect, "open_appliance", lambda drives, log: FakeAppliance([disk]))

    def crash(*a, **kw):
        raise ValueError("boom")

    monkeypatch.setattr(inspect, "run_image_checks", crash)
    assert not inspect.inspect_images([(AMD64, out)], stream=False)
    data = json.loads(inspect.results_paths(out)[0].read_text())
    assert data["checks"] == [{"name": "inspection", "status": "error", "reason": "harness bug: ValueError: boom",
                               "duration": 0.0, "evidence": {}}]


@pytest.mark.parametrize(("change", "check", "words"), [
    (lambda d: d.probe.update(PTTYPE="dos"), "partition-table", "partition table is dos, expected gpt"),
    (lambda d: d.probe.update(PTTYPE="PMBR"), "partition-table", "protective MBR but no valid GPT"),
    (lambda d: setattr(d, "partitions", 2), "partition-count", "2 partitions, expected exactly one"),
    (lambda d: d.fs_probe.update(LABEL="tools"), "filesystem-label", "label is 'tools', expected 'vm-tools'"),
    (lambda d: setattr(d, "size", 4096), "filesystem-size", "(truncated image)"),
    (lambda d: d.superblock.update({"Free blocks": "1"}), "filesystem-usage", "free_blocks 1 (build: "),
    (lambda d: (d.tree / "etc").mkdir(), "top-level", "unexpected etc"),
    (lambda d: (d.tree / spec.kheaders_path(RELEASE)).write_bytes(b"gzip"), "kheaders", "not zstd data"),
    (lambda d: (d.tree / spec.PERF).write_bytes(b"#!/bin/sh\n" * 10), "perf-static-elf", "not an ELF file"),
    (lambda d: (d.tree / spec.build_dir(RELEASE) / ".config").write_bytes(b"X=y\n"), "config", "differs"),
])
def test_each_check_names_what_is_wrong(tmp_path, change, check, words):
    out, disk = _built(tmp_path, "img")
    change(disk)
    results = _run(out, disk)
    assert results[check].status == "fail" and words in results[check].reason, results[check]
    assert results[check].reason.startswith(f"[{check}] ")
