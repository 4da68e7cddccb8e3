"""set-config and menuconfig's write-back on the fake kernel tree: where a change lands, what is
refused (with nothing written), the dry run, and what counts as a user's change in a configurator."""
from __future__ import annotations

from pathlib import Path

import pytest
from build_fakes import copy_tree
from fixture_paths import FIXTURES

from harness.arch import get_arch
from harness.errors import ConfigAuditFailed, InvalidArgument
from harness.kernel import explain, kconfig, setconfig
from harness.kernel.setconfig import Change

AMD64, ARM64 = get_arch("amd64"), get_arch("arm64")


@pytest.fixture
def setup(world, tmp_path, cross_gcc):
    """The fake tree, and committed production configs for both arches resolved from the fragments."""
    tree = copy_tree(tmp_path / "tree")
    variant = kconfig.get_variant("production")
    for arch in (AMD64, ARM64):
        resolved = kconfig.resolve(tree, arch, variant, log=tmp_path / "resolve.log")
        kconfig.install(resolved, kconfig.committed_config_path(arch, "6.12.117"))
    return tree


def _snapshot(world) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in sorted(world.configs.rglob("*")) if p.is_file()}


def _run(tree, arches, *changes, dry_run=False, tmp):
    return setconfig.set_config(tree, arches, setconfig.parse_changes(changes), version="6.12.117",
                                log=tmp / "set-config.log", dry_run=dry_run)


def test_parse_changes():
    assert setconfig.parse_changes(["CONFIG_A=y", "B=n", "CONFIG_S=\"x y\"", "CONFIG_A=m"]) == [
        Change("CONFIG_A", "m"), Change("CONFIG_B", "n"), Change("CONFIG_S", '"x y"')]
    assert Change("CONFIG_B", "n").line == "# CONFIG_B is not set"
    for bad in (["CONFIG_A"], ["CONFIG_A="], ["-x"], []):
        with pytest.raises(InvalidArgument):
            setconfig.parse_changes(bad)


def test_both_arches_edit_the_requesting_line_in_place(world, setup, tmp_path, capsys):
    virtio = world.configs / "fragments" / "virtio.config"
    before = virtio.read_text().splitlines()
    assert _run(setup, [AMD64, ARM64], "CONFIG_VIRTIO_BALLOON=y", tmp=tmp_path) == 0
    after = virtio.read_text().splitlines()
    assert len(after) == len(before) and after[before.index("CONFIG_VIRTIO_BALLOON=m")] == "CONFIG_VIRTIO_BALLOON=y"
    for arch in (AMD64, ARM64):
        committed = kconfig.parse_config_text(kconfig.committed_config_path(arch, "6.12.117").read_text())
        assert committed["CONFIG_VIRTIO_BALLOON"] == "y"
    out = capsys.readouterr().out
    assert "configs/fragments/virtio.config: line 6: CONFIG_VIRTIO_BALLOON=y" in out
    assert "VIRTIO_BALLOON m -> y" in out and "written;" in out


def test_one_arch_overrides_a_shared_line_in_its_arch_fragment(world, setup, tmp_path):
    shared = (world.configs / "fragments" / "virtio.config").read_text()
    assert _run(setup, [ARM64], "CONFIG_VIRTIO_BALLOON=y", tmp=tmp_path) == 0
    assert (world.configs / "fragments" / "virtio.config").read_text() == shared
    arm = (world.configs / "fragments" / "arch" / "arm64.config").read_text().splitlines()
    assert arm[-1] == "CONFIG_VIRTIO_BALLOON=y"
    assert arm[-2] == setconfig.STUB.format(option="CONFIG_VIRTIO_BALLOON", value="y")
    amd = kconfig.parse_config_text(kconfig.committed_config_path(AMD64, "6.12.117").read_text())
    arm_cfg = kconfig.parse_config_text(kconfig.committed_config_path(ARM64, "6.12.117").read_text())
    assert amd["CONFIG_VIRTIO_BALLOON"] == "m" and arm_cfg["CONFIG_VIRTIO_BALLOON"] == "y"


def test_a_new_option_goes_to_the_fragment_of_its_kconfig_file(world, setup, tmp_path):
    assert _run(setup, [AMD64, ARM64], "CONFIG_VIRTIO_MENU=y", tmp=tmp_path) == 0
    assert (world.configs / "fragments" / "virtio.config").read_text().splitlines()[-1] == "CONFIG_VIRTIO_MENU=y"


def test_dry_run_shows_and_writes_nothing(world, setup, tmp_path, capsys):
    before = _snapshot(world)
    assert _run(setup, [AMD64], "CONFIG_VIRTIO_BALLOON=y", dry_run=True, tmp=tmp_path) == 0
    assert _snapshot(world) == before
    out = capsys.readouterr().out
    assert "VIRTIO_BALLOON m -> y" in out and out.rstrip().endswith("dry run: nothing written")


def test_what_kconfig_cannot_honour_is_refused_with_its_cause(world, tmp_path, cross_gcc):
    tree = copy_tree(tmp_path / "tree", unsatisfiable=("CONFIG_VIRTIO_MENU",))
    variant = kconfig.get_variant("production")
    for arch in (AMD64, ARM64):
        kconfig.install(kconfig.resolve(tree, arch, variant, log=tmp_path / "r.log"),
                        kconfig.committed_config_path(arch, "6.12.117"))
    before = _snapshot(world)
    with pytest.raises(ConfigAuditFailed) as exc:
        _run(tree, [AMD64], "CONFIG_VIRTIO_MENU=y", tmp=tmp_path)
    assert _snapshot(world) == before
    msg = str(exc.value)
    assert msg.startswith("[set-config] refused, nothing written: amd64: CONFIG_VIRTIO_MENU: requested y, "
                          "resolved n (absent) (asked for at configs/fragments/arch/amd64.config:")
    assert "/tmp" not in msg.split("(log:")[0]  # the real fragment is named, not the staged copy


def test_breaking_the_capability_contract_is_refused(world, setup, tmp_path, capsys):
    before = _snapshot(world)
    with pytest.raises(ConfigAuditFailed, match=r"CONFIG_VIRTIO_MEM is not set breaks capability 'memory scaling'"):
        _run(setup, [AMD64, ARM64], "CONFIG_VIRTIO_MEM=n", tmp=tmp_path)
    assert _snapshot(world) == before


def test_an_unknown_option_is_a_typo(world, setup, tmp_path):
    with pytest.raises(InvalidArgument, match="CONFIG_NO_SUCH_THING is not defined"):
        _run(setup, [AMD64], "CONFIG_NO_SUCH_THING=y", tmp=tmp_path)


def test_user_changes_are_the_visible_options_that_changed(tmp_path):
    kconf = explain.load(FIXTURES / "drift", "amd64")
    before, after = tmp_path / "before", tmp_path / "after"
    before.write_text("CONFIG_TUN=y\nCONFIG_INTERNAL_LIB=y\nCONFIG_HZ=250\nCONFIG_X86_ONLY_FEATURE=y\n")
    # the user turned TUN off and HZ down; INTERNAL_LIB (no prompt) followed TUN
    after.write_text("# CONFIG_TUN is not set\nCONFIG_HZ=100\nCONFIG_X86_ONLY_FEATURE=y\n")
    assert setconfig.user_changes(kconf, before, after) == [Change("CONFIG_TUN", "n"), Change("CONFIG_HZ", "100")]
    assert setconfig.user_changes(kconf, before, before) == []
