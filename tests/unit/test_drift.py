"""config-drift on a fixture Kconfig tree: only options both arches can set are reported, each marked
with the fragment line that asked for it on each arch, or unexplained (exit 1)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from fixture_paths import FIXTURES

from harness.arch import get_arch
from harness.kernel import drift, explain, kconfig

TREE = FIXTURES / "drift"
AMD64, ARM64 = get_arch("amd64"), get_arch("arm64")


def _loaded(arch_name: str, config: dict[str, str], tmp_path: Path):
    kconf = explain.load(TREE, arch_name)
    path = tmp_path / f"{arch_name}.config"
    path.write_text("".join(f"{k}={v}\n" for k, v in config.items()))
    kconf.load_config(str(path))
    return kconf


def _request(option: str, value: str, where: str) -> kconfig.Request:
    frag, line = where.rsplit(":", 1)
    return kconfig.Request(option, value, Path(frag), int(line))


@pytest.fixture
def configs() -> dict[str, dict[str, str]]:
    return {
        "amd64": {"CONFIG_X86": "y", "CONFIG_USER_NS": "y", "CONFIG_TUN": "y", "CONFIG_RTC_CMOS": "y",
                  "CONFIG_HZ": "250", "CONFIG_X86_ONLY_FEATURE": "y", "CONFIG_INTERNAL_LIB": "y"},
        "arm64": {"CONFIG_ARM64": "y", "CONFIG_USER_NS": "y", "CONFIG_HZ": "100"},
    }


def test_only_options_both_arches_can_set_and_the_requests(configs, tmp_path):
    kconfs = {a: _loaded(a, configs[a], tmp_path) for a in configs}
    requests = {"amd64": {"CONFIG_RTC_CMOS": _request("CONFIG_RTC_CMOS", "y", "/f/arch/amd64.config:3")},
                "arm64": {"CONFIG_HZ": _request("CONFIG_HZ", "100", "/f/arch/arm64.config:9"),
                          # asked for, but not what arm64 resolved: not an explanation
                          "CONFIG_TUN": _request("CONFIG_TUN", "y", "/f/network.config:2")}}
    drifts = drift.compare(configs, kconfs, requests)
    by = {d.option: d for d in drifts}
    # X86_ONLY_FEATURE cannot be set on arm64, INTERNAL_LIB has no prompt, USER_NS does not differ,
    # X86/ARM64 are prompt-less def_bools
    assert sorted(by) == ["CONFIG_HZ", "CONFIG_RTC_CMOS", "CONFIG_TUN"]
    assert by["CONFIG_HZ"].values == {"amd64": "250", "arm64": "100"}
    assert by["CONFIG_HZ"].requested == {"amd64": "", "arm64": "/f/arch/arm64.config:9"} and by["CONFIG_HZ"].explained
    assert by["CONFIG_RTC_CMOS"].requested == {"amd64": "/f/arch/amd64.config:3", "arm64": ""}
    assert by["CONFIG_TUN"].values == {"amd64": "y", "arm64": "n"} and not by["CONFIG_TUN"].explained
    text = drift.report(drifts, ["amd64", "arm64"], "6.12.117")
    assert text.splitlines()[0] == ("config drift between the amd64 and arm64 production configs (6.12.117): "
                                    "3 option(s) both can set differ; 2 requested, 1 unexplained")
    assert any(line.startswith("  UNEXPLAINED CONFIG_TUN") and "amd64=y (not requested)  arm64=n (not requested)"
               in line for line in text.splitlines())
    assert "nox -s set-config" in text.splitlines()[-1]


def test_no_drift_reports_zero(tmp_path):
    same = {"CONFIG_USER_NS": "y", "CONFIG_HZ": "250"}
    kconfs = {a: _loaded(a, same, tmp_path) for a in ("amd64", "arm64")}
    drifts = drift.compare({"amd64": same, "arm64": same}, kconfs, {"amd64": {}, "arm64": {}})
    assert drifts == []
    text = drift.report(drifts, ["amd64", "arm64"], "v")
    assert "0 option(s) both can set differ; 0 requested, 0 unexplained" in text


def test_run_exit_status_and_json(tmp_path, monkeypatch, configs, capsys):
    monkeypatch.setattr(kconfig, "committed_config_path", lambda arch, version: tmp_path / f"{arch.name}.cfg")
    for a, c in configs.items():
        (tmp_path / f"{a}.cfg").write_text("".join(f"{k}={v}\n" for k, v in c.items()))
    variant = type("V", (), {"requests": lambda self, arch: {},
                             "base_targets": lambda self, arch: ["defconfig", "kvm_guest.config", "mod2noconfig"]})
    monkeypatch.setattr(kconfig, "get_variant", lambda name: variant())
    out = tmp_path / "drift.json"
    assert drift.run(TREE, [AMD64, ARM64], "6.12.117", json_path=out) == 1
    data = json.loads(out.read_text())
    assert data["arches"] == ["amd64", "arm64"]
    assert {d["option"]: d["explained"] for d in data["drift"]} == {
        "CONFIG_HZ": False, "CONFIG_RTC_CMOS": False, "CONFIG_TUN": False}
    # where each unrequested value came from: the arch's defconfig, a later base file, or neither
    assert {d["option"]: d["origin"] for d in data["drift"]} == {
        "CONFIG_HZ": {"amd64": "default or select", "arm64": "default or select"},
        "CONFIG_RTC_CMOS": {"amd64": "kvm_guest.config", "arm64": "kvm_guest.config"},
        "CONFIG_TUN": {"amd64": "x86_64_defconfig", "arm64": "defconfig"}}
    printed = capsys.readouterr().out
    assert "3 unexplained" in printed
    assert "amd64=y (x86_64_defconfig)  arm64=n (defconfig)" in printed
    assert ("unexplained values come from: amd64: default or select (1), amd64: kvm_guest.config (1), "
            "amd64: x86_64_defconfig (1), arm64: default or select (1), arm64: defconfig (1), "
            "arm64: kvm_guest.config (1)") in printed


def test_base_files_follow_the_variants_targets(tmp_path):
    assert [p.relative_to(TREE).as_posix() for p in drift.base_files(TREE, AMD64, ["defconfig", "kvm_guest.config",
                                                                                  "mod2noconfig"])] == [
        "arch/x86/configs/x86_64_defconfig", "kernel/configs/kvm_guest.config"]
    assert drift.origins(drift.base_files(TREE, ARM64, ["defconfig", "kvm_guest.config"])) == {
        "CONFIG_TUN": "defconfig", "CONFIG_RTC_CMOS": "kvm_guest.config"}
