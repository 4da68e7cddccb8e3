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


def test_both_arches_edit_the_requesting_line_in_place_under_a_stub(world, setup, tmp_path, capsys):
    virtio = world.configs / "fragments" / "virtio.config"
    before = virtio.read_text().splitlines()
    at = before.index("CONFIG_VIRTIO_BALLOON=m")
    assert _run(setup, [AMD64, ARM64], "CONFIG_VIRTIO_BALLOON=y", tmp=tmp_path) == 0
    after = virtio.read_text().splitlines()
    # the edited line keeps its place, with the stub for the new reason right above it
    assert after == [*before[:at], setconfig.STUB.format(option="CONFIG_VIRTIO_BALLOON", value="y"),
                     "CONFIG_VIRTIO_BALLOON=y", *before[at + 1:]]
    for arch in (AMD64, ARM64):
        committed = kconfig.parse_config_text(kconfig.committed_config_path(arch, "6.12.117").read_text())
        assert committed["CONFIG_VIRTIO_BALLOON"] == "y"
    out = capsys.readouterr().out
    assert "configs/fragments/virtio.config: line 7: CONFIG_VIRTIO_BALLOON=y (with a comment stub above it" in out
    assert "VIRTIO_BALLOON m -> y" in out and "written;" in out


def test_an_in_place_edit_replaces_its_own_unfilled_stub(tmp_path):
    stub = setconfig.STUB.format
    text = "# wanted for the balloon\nCONFIG_A=m\nCONFIG_B=y\n# CONFIG_C is not set\n"
    e = setconfig.Edit(tmp_path / "f.config", replace={2: Change("CONFIG_A", "y"), 4: Change("CONFIG_C", "y")},
                       append=[Change("CONFIG_D", "n")])
    new, where = e.render(text)
    assert new.splitlines() == ["# wanted for the balloon", stub(option="CONFIG_A", value="y"), "CONFIG_A=y",
                                "CONFIG_B=y", stub(option="CONFIG_C", value="y"), "CONFIG_C=y",
                                "", stub(option="CONFIG_D", value="n"), "# CONFIG_D is not set"]
    assert [w.split(" (")[0] for w in where] == ["line 3: CONFIG_A=y", "line 6: CONFIG_C=y",
                                                 "appended: # CONFIG_D is not set"]
    # changed again before the stub was filled in: the stub is rewritten, not stacked
    again = setconfig.Edit(e.path, replace={3: Change("CONFIG_A", "n")}).apply(new).splitlines()
    assert again[1:3] == [stub(option="CONFIG_A", value="n"), "# CONFIG_A is not set"] and len(again) == 9


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


def test_all_updates_every_arch_override_and_the_shadowed_shared_line(world):
    for arch in ("amd64", "arm64"):
        frag = world.configs / "fragments" / "arch" / f"{arch}.config"
        frag.write_text(frag.read_text() + "CONFIG_VIRTIO_BALLOON=y\n")
    virtio = world.configs / "fragments" / "virtio.config"
    at = virtio.read_text().splitlines().index("CONFIG_VIRTIO_BALLOON=m") + 1
    edits = setconfig.place([Change("CONFIG_VIRTIO_BALLOON", "n")], [AMD64, ARM64],
                            kconfig.get_variant("production"), {})
    # no second shared line (in base.config) next to the one virtio.config already has
    assert {p.relative_to(world.configs / "fragments").as_posix(): (dict(e.replace), e.append)
            for p, e in edits.items()} == {
        "arch/amd64.config": ({2: Change("CONFIG_VIRTIO_BALLOON", "n")}, []),
        "arch/arm64.config": ({2: Change("CONFIG_VIRTIO_BALLOON", "n")}, []),
        "virtio.config": ({at: Change("CONFIG_VIRTIO_BALLOON", "n")}, [])}


def test_what_the_fragments_already_ask_for_is_not_placed(world, setup, tmp_path, capsys):
    variant = kconfig.get_variant("production")
    for arches in ([AMD64], [ARM64], [AMD64, ARM64]):
        assert setconfig.place([Change("CONFIG_VIRTIO_BALLOON", "m")], arches, variant, {}) == {}
    before = _snapshot(world)
    assert _run(setup, [ARM64], "CONFIG_VIRTIO_BALLOON=m", tmp=tmp_path) == 0
    assert _snapshot(world) == before
    assert "CONFIG_VIRTIO_BALLOON=m: already what the fragments ask for" in capsys.readouterr().out


def test_a_new_option_goes_to_the_fragment_of_its_kconfig_file(world, setup, tmp_path):
    assert _run(setup, [AMD64, ARM64], "CONFIG_VIRTIO_MENU=y", tmp=tmp_path) == 0
    assert (world.configs / "fragments" / "virtio.config").read_text().splitlines()[-1] == "CONFIG_VIRTIO_MENU=y"


def test_a_new_option_goes_beside_options_set_the_same_way(setup, tmp_path):
    on, off = tmp_path / "wanted.config", tmp_path / "omit.config"
    on.write_text("CONFIG_VIRTIO_MEM=y\n")
    off.write_text("# CONFIG_VIRTIO_MENU is not set\n# CONFIG_VIRTIO is not set\n")  # more, but all off
    kconfs = {"amd64": explain.load(setup, AMD64)}
    base = tmp_path / "base.config"
    assert setconfig._by_affinity(Change("CONFIG_VIRTIO_BALLOON", "m"), [on, off], kconfs, base) == on
    assert setconfig._by_affinity(Change("CONFIG_VIRTIO_BALLOON", "n"), [on, off], kconfs, base) == off
    assert setconfig._by_affinity(Change("CONFIG_MEMORY_HOTPLUG", "y"), [on, off], kconfs, base) == base


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
    with pytest.raises(ConfigAuditFailed, match=r"CONFIG_VIRTIO_MEM is not set breaks capability 'memory scaling'") \
            as exc:
        _run(setup, [AMD64, ARM64], "CONFIG_VIRTIO_MEM=n", tmp=tmp_path)
    assert _snapshot(world) == before
    # what to do next is printed before the error, which stays one line: the contract changes first
    assert len(exc.value.message.splitlines()) == 1
    assert capsys.readouterr().out.splitlines()[-1] == (
        "  next: capability 'memory scaling' is in configs/contract.toml; if NeonVM no longer needs it, "
        "change the contract there first (with the reason), then re-run set-config")


def test_a_refusal_names_the_option_that_hides_a_prompt():
    changes = [Change("CONFIG_IO_URING", "n")]
    broken = ["amd64: # CONFIG_IO_URING is not set breaks capability 'io_uring' (IO_URING=y), needed by Postgres"]
    causes = [("CONFIG_IO_URING", "IO_URING=y (default y) <- prompt hidden by EXPERT=n not set by any fragment")]
    assert setconfig.next_steps(changes, broken, causes) == [
        "hint: CONFIG_EXPERT=n hides the prompt of CONFIG_IO_URING: set CONFIG_EXPERT=y too, in the same set-config",
        "next: capability 'io_uring' is in configs/contract.toml; if NeonVM no longer needs it, change the contract "
        "there first (with the reason), then re-run set-config"]
    # no hint to undo what was asked for; an omission is turned on only if NeonVM now needs it
    assert setconfig.next_steps(changes + [Change("CONFIG_EXPERT", "n")], [], causes) == []
    assert setconfig.next_steps([Change("CONFIG_WLAN", "y")], [
        "amd64: CONFIG_WLAN=y turns on what the contract omits (hardware omission 'radios': no radios)"], []) == [
        "next: omission 'radios' is in configs/contract.toml; if NeonVM now needs it, change the contract there "
        "first (with the reason), then re-run set-config"]


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


def _user_changes(tmp_path, before: str, after: str) -> list[Change]:
    kconf = explain.load(FIXTURES / "setconfig", "amd64")
    (tmp_path / "before").write_text(before)
    (tmp_path / "after").write_text(after)
    return setconfig.user_changes(kconf, tmp_path / "before", tmp_path / "after")


MENU_OFF = "# CONFIG_FOO is not set\n# CONFIG_LIB is not set\n# CONFIG_FOLLOWER is not set\nCONFIG_TUN=y\n"


def test_options_that_became_settable_during_the_session_are_the_users_too(tmp_path):
    # the user enabled the FOO menu and, inside it, turned BAR (default n) on and BAZ (default y) off;
    # LIB (selected by FOO) and QUX (left at its default) followed
    after = "CONFIG_FOO=y\nCONFIG_BAR=y\n# CONFIG_BAZ is not set\nCONFIG_QUX=4\nCONFIG_LIB=y\n" \
            "# CONFIG_FOLLOWER is not set\nCONFIG_TUN=y\n"
    assert _user_changes(tmp_path, MENU_OFF, after) == [
        Change("CONFIG_FOO", "y"), Change("CONFIG_BAR", "y"), Change("CONFIG_BAZ", "n")]


def test_options_that_became_settable_and_kept_their_defaults_are_not(tmp_path):
    after = "CONFIG_FOO=y\n# CONFIG_BAR is not set\nCONFIG_BAZ=y\nCONFIG_QUX=4\nCONFIG_LIB=y\n" \
            "# CONFIG_FOLLOWER is not set\nCONFIG_TUN=y\n"
    assert _user_changes(tmp_path, MENU_OFF, after) == [Change("CONFIG_FOO", "y")]
    assert _user_changes(tmp_path, MENU_OFF, MENU_OFF) == []


def test_a_value_set_back_to_its_default_is_the_users(tmp_path):
    # BAZ was off in the committed config; the user turned it back on, to its default: olddefconfig
    # would keep the committed "not set" unless a fragment says y
    on = "CONFIG_FOO=y\n# CONFIG_BAR is not set\n# CONFIG_BAZ is not set\nCONFIG_QUX=4\nCONFIG_LIB=y\n" \
         "CONFIG_FOLLOWER=y\nCONFIG_TUN=y\n"
    assert _user_changes(tmp_path, on, on.replace("# CONFIG_BAZ is not set", "CONFIG_BAZ=y")) == [
        Change("CONFIG_BAZ", "y")]
    # switching the menu off takes its options with it: only FOO is the user's (LIB keeps its value)
    assert _user_changes(tmp_path, on, "# CONFIG_FOO is not set\nCONFIG_LIB=y\nCONFIG_FOLLOWER=y\nCONFIG_TUN=y\n") \
        == [Change("CONFIG_FOO", "n")]
