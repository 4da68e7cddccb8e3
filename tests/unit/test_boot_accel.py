"""Accelerator detection with a fake /proc/cpuinfo, /sys/module and /dev/kvm."""
from __future__ import annotations

import pytest

from harness.arch import get_arch
from harness.boot.vm import detect_accel, kvm_unusable_reason
from harness.errors import InfraError, InvalidArgument

AMD64 = get_arch("amd64")
ARM64 = get_arch("arm64")
PVM_FLAGS = "fpu vme de pse tsc msr pae hypervisor avx2"  # what this project's CI hosts show


@pytest.fixture
def host(tmp_path):
    """A fake host: returns kwargs for the probes; flags and modules set per test."""
    def make(flags: str, modules=(), kvm: bool = True, cpuinfo_key="flags"):
        (tmp_path / "cpuinfo").write_text(f"processor\t: 0\n{cpuinfo_key}\t\t: {flags}\n\nprocessor\t: 1\n")
        (tmp_path / "module").mkdir(exist_ok=True)
        for m in modules:
            (tmp_path / "module" / m).mkdir()
        if kvm:
            (tmp_path / "kvm").write_text("")
        return dict(cpuinfo=tmp_path / "cpuinfo", sys_module=tmp_path / "module", dev_kvm=tmp_path / "kvm")
    return make


def test_real_kvm_intel(host):
    probe = host(PVM_FLAGS + " vmx", modules=("kvm", "kvm_intel"))
    assert kvm_unusable_reason(AMD64, machine="x86_64", **probe) is None
    assert detect_accel(AMD64, machine="x86_64", **probe).name == "kvm"


def test_real_kvm_amd(host):
    probe = host("svm lm", modules=("kvm_amd",))
    assert detect_accel(AMD64, machine="x86_64", **probe).name == "kvm"


def test_openable_dev_kvm_without_vmx_is_tcg(host):
    """The PVM case: /dev/kvm opens, but no vmx/svm and no kvm_intel/kvm_amd."""
    probe = host(PVM_FLAGS, modules=("kvm_pvm",))
    acc = detect_accel(AMD64, machine="x86_64", **probe)
    assert acc.name == "tcg" and "vmx/svm" in acc.reason


def test_vmx_without_vendor_module_is_tcg(host):
    probe = host("vmx", modules=("kvm",))
    acc = detect_accel(AMD64, machine="x86_64", **probe)
    assert acc.name == "tcg" and "kvm_intel" in acc.reason


def test_no_dev_kvm_is_tcg(host):
    probe = host("vmx", modules=("kvm_intel",), kvm=False)
    assert detect_accel(AMD64, machine="x86_64", **probe).name == "tcg"


def test_foreign_guest_is_tcg(host):
    probe = host("vmx", modules=("kvm_intel",))
    acc = detect_accel(ARM64, machine="x86_64", **probe)
    assert acc.name == "tcg" and "aarch64" in acc.reason


def test_arm64_host_needs_only_dev_kvm(host):
    probe = host("fp asimd evtstrm", cpuinfo_key="Features")
    assert detect_accel(ARM64, machine="aarch64", **probe).name == "kvm"


def test_insisting_on_kvm_fails_clearly(host):
    probe = host(PVM_FLAGS, modules=("kvm_pvm",))
    with pytest.raises(InfraError, match="KVM requested but not usable"):
        detect_accel(AMD64, "kvm", machine="x86_64", **probe)


def test_tcg_on_request_and_bad_name(host):
    assert detect_accel(AMD64, "tcg").name == "tcg"
    with pytest.raises(InvalidArgument):
        detect_accel(AMD64, "hvf")
