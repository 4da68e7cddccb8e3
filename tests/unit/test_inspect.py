"""Inspection: checksum comparison and ELF facts without an appliance, then every bad image
(built from the fake tree) caught in ONE libguestfs launch."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from tools_fakes import RELEASE, fake_out, fake_perf, fake_tree, junit_statuses, package

from harness import proc
from harness.arch import ARCHES
from harness.errors import InfraError
from harness.tools import disk, image, inspect, spec, staging

AMD64, ARM64 = ARCHES["amd64"], ARCHES["arm64"]


def test_listing_round_trip_and_walk_format():
    text = "d\t-\t-\tbin\nr\t3136\tab\tbin/perf\nl\t22\t-\tinc\n"
    assert spec.parse_listing(text) == {"bin": ("d", "-"), "bin/perf": ("r", "3136"), "inc": ("l", "22")}
    walk = [{"tsk_name": ".", "tsk_type": "d", "tsk_size": 1024, "tsk_flags": 1},
            {"tsk_name": "bin", "tsk_type": "d", "tsk_size": 1024, "tsk_flags": 1},
            {"tsk_name": "bin/perf", "tsk_type": "r", "tsk_size": 3136, "tsk_flags": 1},
            {"tsk_name": "bin/old", "tsk_type": "r", "tsk_size": 5, "tsk_flags": 2},  # unallocated
            {"tsk_name": "inc", "tsk_type": "l", "tsk_size": 22, "tsk_flags": 1},
            {"tsk_name": "$OrphanFiles", "tsk_type": "d", "tsk_size": 0, "tsk_flags": 1}]
    assert inspect.walk_listing(walk) == spec.parse_listing(text)


def test_compare_listings_names_each_difference():
    want = {"bin": ("d", "-"), "bin/perf": ("r", "3136"), "include/x.h": ("r", "5"), "inc": ("l", "3")}
    got = {"bin": ("d", "-"), "bin/perf": ("r", "100"), "inc": ("r", "3"), "extra": ("r", "1"),
           "lost+found": ("d", "-")}
    assert inspect.compare_listings(want, got) == [
        "bin/perf is 100 bytes, expected 3136 (truncated?)", "missing include/x.h",
        "inc is a file, expected a symlink", "unexpected extra"]


def test_tree_listing_matches_what_the_walk_would_say(tmp_path):
    tree = fake_tree(tmp_path / "t", AMD64)
    listing = spec.parse_listing(staging.tree_listing(tree))
    assert listing["bin/perf"] == ("r", str((tree / "bin" / "perf").stat().st_size))
    assert listing[f"lib/modules/{RELEASE}/build/usr/include"] == ("l", str(len("../../../../../include")))
    assert listing["lib"] == ("d", "-")


def test_expectation_reports_unreadable_inputs(tmp_path):
    exp = inspect.Expectation.load(AMD64, tmp_path)
    assert exp.kernelrelease is None
    assert any("manifest.json" in p for p in exp.problems)
    assert any("config" in p for p in exp.problems)


def test_expectation_requires_arch_headers(tmp_path):
    fake_out(tmp_path, ARM64)
    paths = dict(inspect.Expectation.load(ARM64, tmp_path).required_paths())
    assert f"/lib/modules/{RELEASE}/build/arch/arm64/include" in paths
    assert f"/lib/modules/{RELEASE}/kernel/kernel/kheaders.ko.zst" in paths


def test_launch_failure_is_infra_error_with_log(tmp_path, monkeypatch):
    pytest.importorskip("guestfs")
    monkeypatch.setenv("LIBGUESTFS_BACKEND", "direct")
    monkeypatch.setenv("LIBGUESTFS_HV", "/bin/false")  # a "QEMU" that exits at once
    img = tmp_path / "x.img"
    img.write_bytes(b"\0" * 1024 * 1024)
    log = tmp_path / "guestfs.log"
    with pytest.raises(InfraError) as err:
        inspect.open_appliance([img], log=log)
    assert err.value.step == "inspect-launch" and err.value.log == log
    text = log.read_text()
    assert "verbose=False" in text and "verbose=True" in text, "retried once with the console captured"


# -- bad images, all in one launch -------------------------------------------------------------------
def _two_partitions(out: Path, tree: Path) -> None:
    info = package(tree, out, AMD64)
    img = out / "tools.img"
    fs = out / ".work" / "fs.ext4"
    disk.make_filesystem(tree, fs, label="vm-tools", fs_uuid=image.stable_uuid("fs", "2"),
                               hash_seed=image.stable_uuid("h", "2"), source_date=1, log=out / "log")
    start, size, _ = disk.image_layout(fs.stat().st_size)
    second = start + size + 2048 - (start + size) % 2048
    total = (second + 4096) * 512
    img.unlink()
    with open(img, "wb") as fh:
        fh.truncate(total)
    script = disk.sfdisk_script(label_id=image.stable_uuid("d", "2"), partitions=[
        {"start": start, "size": size, "uuid": image.stable_uuid("p1", "2"), "name": "vm-tools"},
        {"start": second, "size": 2048, "uuid": image.stable_uuid("p2", "2"), "name": "extra"}])
    proc.run(disk.sfdisk_argv(img), step="test", log=out / "log", input_text=script)
    disk.copy_into(fs, img, start * 512)
    _refresh_image_manifest(out, img, info)


def _refresh_image_manifest(out: Path, img: Path, info) -> None:
    from harness.fsutil import sha256_file

    m = json.loads((out / "tools-manifest.json").read_text())
    m["image"].update(size=img.stat().st_size, sha256=sha256_file(img))
    (out / "tools-manifest.json").write_text(json.dumps(m))


def info_fs_bytes(out: Path) -> int:
    m = json.loads((out / "tools-manifest.json").read_text())
    return m["filesystem"]["blocks"] * m["filesystem"]["block_size"]


def _build_cases(base: Path) -> dict[str, tuple]:
    """name -> (arch, OUT, {check: words its reason must contain}) ; the good ones expect nothing."""
    cases: dict[str, tuple] = {}

    def new(name, arch=AMD64, **tree_kw):
        out = fake_out(base / name, arch)
        tree = fake_tree(base / f"{name}-tree", arch, **tree_kw)
        return out, tree

    out, tree = new("good-amd64")
    package(tree, out, AMD64)
    cases["good-amd64"] = (AMD64, out, {})
    out, tree = new("good-arm64", ARM64)
    package(tree, out, ARM64)
    cases["good-arm64"] = (ARM64, out, {})

    out, tree = new("wrong-label")
    package(tree, out, AMD64, label="tools")
    cases["wrong-label"] = (AMD64, out, {"filesystem-label": "expected 'vm-tools'"})

    out, tree = new("two-partitions")
    _two_partitions(out, tree)
    cases["two-partitions"] = (AMD64, out, {"partition-count": "2 partitions"})

    out, tree = new("no-table")
    package(tree, out, AMD64, table=None)
    cases["no-table"] = (AMD64, out, {"partition-table": "no partition table"})

    out, tree = new("dynamic-perf", perf=fake_perf(AMD64, interpreter="/lib64/ld-linux-x86-64.so.2", needed=2))
    package(tree, out, AMD64)
    cases["dynamic-perf"] = (AMD64, out, {"perf-static-elf": "dynamically linked"})

    out, tree = new("wrong-arch-perf", perf=fake_perf(ARM64))
    package(tree, out, AMD64)
    cases["wrong-arch-perf"] = (AMD64, out, {"perf-static-elf": "wrong arch"})

    out, tree = new("no-headers")
    shutil.rmtree(tree / "lib" / "modules" / RELEASE / "build")
    package(tree, out, AMD64)
    cases["no-headers"] = (AMD64, out, {"tree": "headers tree incomplete", "config": "missing"})

    out = fake_out(base / "release-mismatch", AMD64)
    tree = fake_tree(base / "release-mismatch-tree", AMD64, release="6.12.117-other")
    package(tree, out, AMD64, release="6.12.117-other")
    cases["release-mismatch"] = (AMD64, out, {"kernelrelease": "release mismatch"})

    out, tree = new("truncated-perf")
    package(tree, out, AMD64)
    # the tree changes after its checksums were recorded: a truncated perf in the image
    good_listing = (out / spec.FILES_NAME).read_text()
    with open(tree / "bin" / "perf", "r+b") as fh:
        fh.truncate(100)
    package(tree, out, AMD64)
    (out / spec.FILES_NAME).write_text(good_listing)
    cases["truncated-perf"] = (AMD64, out, {"perf-static-elf": "truncated", "tree": "/bin/perf is 100 bytes",
                                            "listing": "bin/perf is 100 bytes, expected"})

    out, tree = new("truncated-image")
    package(tree, out, AMD64)
    img = out / "tools.img"
    start, size, _ = disk.image_layout(info_fs_bytes(out))
    os.truncate(img, (start + size) * 512 - 65536)  # primary GPT intact, the filesystem's tail cut off
    cases["truncated-image"] = (AMD64, out, {"image-file": "truncated", "*": "truncated"})

    out, tree = new("wrong-config", config=b"CONFIG_OTHER=y\n")
    package(tree, out, AMD64)
    cases["wrong-config"] = (AMD64, out, {"config": "differs from the kernel's config"})

    (tree / "etc").mkdir()
    (tree / "etc" / "junk").write_text("x")
    out = fake_out(base / "extra-top-level", AMD64)
    package(tree, out, AMD64)
    cases["extra-top-level"] = (AMD64, out, {"top-level": "unexpected etc"})
    return cases


@pytest.mark.integration
def test_bad_images_fail_inspection_in_one_launch(tmp_path, capsys):
    pytest.importorskip("guestfs")
    cases = _build_cases(tmp_path)
    ok = inspect.inspect_images([(arch, out) for arch, out, _ in cases.values()], thorough=True)
    assert not ok
    log = cases["good-amd64"][1] / "inspect" / "guestfs.log"
    assert log.read_text().count("launched in") == 1, "one appliance launch for every image"
    problems = []
    for name, (_arch, out, expect) in cases.items():
        data = json.loads((out / "inspect" / "results.json").read_text())
        assert junit_statuses(out / "inspect" / "results.xml") == {c["name"]: c["status"] for c in data["checks"]}
        assert data["meta"]["images_in_launch"] == len(cases)
        by_name = {c["name"]: c for c in data["checks"]}
        failed = {n for n, c in by_name.items() if c["status"] != "pass"}
        for check, words in expect.items():
            if check == "*":  # some check other than image-file must name the problem too
                if not any(words in c["reason"] for n, c in by_name.items() if n != "image-file"):
                    problems.append(f"{name}: no in-image check mentions {words!r}")
                continue
            c = by_name[check]
            if c["status"] != "fail" or words not in c["reason"]:
                problems.append(f"{name}: {check} is {c['status']}: {c['reason']!r} (wanted {words!r})")
        if not expect and failed:
            problems.append(f"{name}: good image failed {sorted(failed)}: "
                            + "; ".join(by_name[n]["reason"] for n in sorted(failed)))
        if expect and data["ok"]:
            problems.append(f"{name}: passed inspection")
    assert not problems, "\n".join(problems)


def test_expectation_reports_corrupt_image_manifests(tmp_path):
    fake_out(tmp_path, AMD64)
    (tmp_path / "tools-manifest.json").write_text('{"image": ')
    (tmp_path / "tools-files.tsv").write_text("r\t12\n")
    exp = inspect.Expectation.load(AMD64, tmp_path)
    assert exp.image_manifest is None and exp.listing is None
    assert any("tools-manifest.json" in p for p in exp.problems)
    assert any("tools-files.tsv" in p for p in exp.problems)
