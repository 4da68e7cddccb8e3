"""The test initramfs is deterministic and holds what the boot test needs."""
from __future__ import annotations

import subprocess

import pytest

from harness.arch import get_arch
from harness.boot import initramfs

AMD64 = get_arch("amd64")


@pytest.fixture
def fake_inputs(monkeypatch, tmp_path):
    bb = tmp_path / "busybox"
    bb.write_bytes(b"\x7fELF fake busybox")
    monkeypatch.setattr(initramfs, "busybox", lambda arch: bb)
    monkeypatch.setattr(initramfs, "compile_static", lambda arch, text, dest, log: dest.write_bytes(dest.name.encode()))
    return tmp_path


def build_in(cache, monkeypatch):
    monkeypatch.setenv("NEONVM_KERNEL_CACHE", str(cache))
    return initramfs.build(AMD64)


def test_same_inputs_same_bytes(fake_inputs, monkeypatch):
    a = build_in(fake_inputs / "c1", monkeypatch)
    b = build_in(fake_inputs / "c2", monkeypatch)
    assert a.read_bytes() == b.read_bytes() and a.name == b.name


def test_contents_sorted_root_owned_epoch(fake_inputs, monkeypatch):
    path = build_in(fake_inputs / "c", monkeypatch)
    listing = subprocess.run(["cpio", "-itv", "--quiet"], stdin=open(path, "rb"), capture_output=True,
                             text=True, check=True).stdout.splitlines()
    names = [ln.split()[-1] for ln in listing]
    assert names == sorted(names)
    assert {"init", "bin/busybox", "bin/phc-read", "bin/contract-probe", "etc/acpi/PWRF/00000080"} <= set(names)
    assert all(" root     root " in ln for ln in listing)
    assert all("1970" in ln for ln in listing)


def test_init_changes_the_archive(fake_inputs, monkeypatch):
    a = build_in(fake_inputs / "c", monkeypatch)
    b = initramfs.build(AMD64, init_text="#!/bin/busybox sh\nexec sh\n")
    assert a != b


def test_host_busybox_must_be_static(monkeypatch, tmp_path):
    dyn = tmp_path / "busybox"
    dyn.write_bytes(open("/bin/sh", "rb").read())  # a dynamic executable
    assert initramfs._usable_busybox(dyn, AMD64) is False
    assert initramfs._usable_busybox(tmp_path / "missing", AMD64) is False
