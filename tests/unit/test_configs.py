"""harness/kernel/configs.py: the committed configs (update-configs, audit) and moving the pin (upgrade)."""
from __future__ import annotations

from pathlib import Path

import pytest
from build_fakes import PATCH_BAD, PATCH_NEW_FILE

from harness.cli import main
from harness.errors import InvalidArgument
from harness.kernel import configs, source
from harness.layout import CONFIGS

AMD64_CONFIG = "linux-config-amd64-6.12.117"


def run(capsys, *argv):
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


# -- set_pin_value (tomlkit) -------------------------------------------------------------------------------------
def test_set_pin_value_keeps_everything_else():
    text = (CONFIGS / "kernel.toml").read_text()
    new = source.set_pin_value(text, None, "version", "6.12.200")
    new = source.set_pin_value(new, "kernelorg", "sha256", "a" * 64)
    old_lines, new_lines = text.splitlines(), new.splitlines()
    assert len(old_lines) == len(new_lines)
    changed = [(a, b) for a, b in zip(old_lines, new_lines, strict=True) if a != b]
    assert [b for _, b in changed] == ['version = "6.12.200"', f'sha256 = "{"a" * 64}"']
    assert [a for a, _ in changed][0].startswith("version = ")
    # the [kernelorg] sha256 changed, not the [debian] one
    assert new.index(f'sha256 = "{"a" * 64}"') > new.index("[kernelorg]")
    assert all(line in new_lines for line in old_lines if line.startswith("#"))  # comments kept


def test_set_pin_value_in_a_section_only():
    text = '# top\nversion = "1.2.3"\n\n[debian]\n# the package\npackage_version = "1"\nsha256 = ""\n' \
           '[kernelorg]\nsha256 = ""  \n'
    assert source.set_pin_value(text, "debian", "sha256", "x") == (
        '# top\nversion = "1.2.3"\n\n[debian]\n# the package\npackage_version = "1"\nsha256 = "x"\n'
        '[kernelorg]\nsha256 = ""  \n')
    # "version" does not match "package_version"
    assert source.set_pin_value(text, None, "version", "9.9.9").count('"9.9.9"') == 1
    assert 'package_version = "1"' in source.set_pin_value(text, None, "version", "9.9.9")


@pytest.mark.parametrize("section, key", [("debian", "base_url"), ("nope", "sha256"), (None, "sha256")])
def test_set_pin_value_missing_key(section, key):
    text = 'version = "1.2.3"\n[debian]\nsha256 = ""\n'
    with pytest.raises(InvalidArgument) as exc:
        source.set_pin_value(text, section, key, "x")
    assert exc.value.step == "upgrade" and f"no {key} in [{section or 'top level'}]" in str(exc.value)


# -- update-configs and audit through the CLI ------------------------------------------------------------
@pytest.fixture
def pinned(world, mirror, fake_tarball):
    """The world pinned to the fake 6.12.117 on the loopback kernel.org mirror."""
    mirror.publish(fake_tarball)
    world.write_pin(kernelorg_sha256=fake_tarball.sha256)
    return world


def test_update_configs_then_audit(pinned, capsys):
    committed = pinned.configs / AMD64_CONFIG
    rc, out, err = run(capsys, "update-configs", "amd64")
    assert rc == 0, err
    assert out.startswith(f"{AMD64_CONFIG}: new (") and committed.is_file()
    assert "CONFIG_VIRTIO_MEM=y" in committed.read_text()
    assert run(capsys, "update-configs", "amd64")[1] == f"{AMD64_CONFIG}: unchanged\n"
    rc, out, err = run(capsys, "audit", "amd64")
    assert rc == 0, err
    assert out.startswith(f"PASS amd64: {AMD64_CONFIG}: all ")


def test_audit_of_a_stale_committed_config(pinned, capsys):
    assert run(capsys, "update-configs", "amd64")[0] == 0
    frag = pinned.configs / "fragments" / "virtio.config"
    frag.write_text(frag.read_text().replace("CONFIG_VIRTIO_BALLOON=m\n", ""))  # still satisfied, but stale
    rc, out, err = run(capsys, "audit", "amd64")
    assert rc == 1
    assert out.startswith(f"FAIL amd64: {AMD64_CONFIG} is stale; the fragments now resolve to:\n-VIRTIO_BALLOON m")
    assert err.startswith("error: [audit] 1 committed config(s) failed (log: ")


def test_audit_of_a_committed_config_missing_a_requested_option(pinned, capsys):
    assert run(capsys, "update-configs", "amd64")[0] == 0
    committed = pinned.configs / AMD64_CONFIG
    committed.write_text(committed.read_text().replace("CONFIG_VIRTIO_MEM=y\n", ""))
    rc, out, err = run(capsys, "audit", "amd64")
    assert rc == 1
    assert out.splitlines()[:2] == [  # the fragments still resolve it: the committed file is behind them
        f"FAIL amd64: {AMD64_CONFIG} is stale: it lacks 1 requested option(s) the fragments now resolve; "
        "bring it in line with 'nox -s update-configs':",
        "  CONFIG_VIRTIO_MEM: requested y, resolved n (absent) (asked for at configs/fragments/virtio.config:5)"]


def _pin_tree_dropping(world, mirror, option):
    """The same version, from a tree whose olddefconfig drops ``option`` (as a Kconfig change would)."""
    tarball = world.pack(unsatisfiable=(option,))
    mirror.publish(tarball)
    world.write_pin(kernelorg_sha256=tarball.sha256)


def test_audit_of_fragments_kconfig_cannot_honour(pinned, mirror, capsys):
    assert run(capsys, "update-configs", "amd64")[0] == 0
    committed = pinned.configs / AMD64_CONFIG
    committed.write_text(committed.read_text().replace("CONFIG_VIRTIO_MEM=y\n", ""))
    _pin_tree_dropping(pinned, mirror, "CONFIG_VIRTIO_MEM")
    rc, out, err = run(capsys, "audit", "amd64")
    assert rc == 1
    lines = out.splitlines()
    assert lines[0] == ("FAIL amd64: the fragments resolve to a config without 1 requested option(s); fix the "
                        "fragments ('nox -s set-config' shows why a change is refused):")
    assert lines[1].startswith("  CONFIG_VIRTIO_MEM: requested y, resolved n (absent) (asked for at "
                               "configs/fragments/virtio.config:5); why: ")


def test_update_configs_reports_every_arch_and_writes_none(pinned, mirror, capsys):
    _pin_tree_dropping(pinned, mirror, "CONFIG_VIRTIO_MEM")
    rc, out, err = run(capsys, "update-configs")
    assert rc == 2
    assert "amd64/production: 1 requested option(s) dropped or changed:" in out
    assert "arm64/production: 1 requested option(s) dropped or changed:" in out
    assert err.startswith("error: [audit] amd64/production: CONFIG_VIRTIO_MEM: requested y")
    assert "; 1 more arch(es) above; nothing written (log: " in err
    assert not list(pinned.configs.glob("linux-config-*"))


def test_audit_without_a_committed_config(pinned, capsys):
    rc, out, err = run(capsys, "audit", "amd64")
    assert rc == 1 and out == (f"FAIL amd64: {AMD64_CONFIG} is missing; create it with 'nox -s update-configs'\n")


def test_update_configs_refuses_a_config_that_drops_a_requested_option(world, mirror, capsys):
    tarball = world.pack(unsatisfiable=("CONFIG_MEMORY_HOTREMOVE",))
    mirror.publish(tarball)
    world.write_pin(kernelorg_sha256=tarball.sha256)
    rc, out, err = run(capsys, "update-configs", "amd64")
    assert rc == 2
    assert err.startswith("error: [audit] amd64/production: CONFIG_MEMORY_HOTREMOVE: requested y, resolved n "
                          "(absent) (asked for at configs/fragments/virtio.config:4); why: MEMORY_HOTREMOVE=n <- ")
    assert not (world.configs / AMD64_CONFIG).exists()


# -- upgrade ---------------------------------------------------------------------------------------
def test_upgrade_moves_the_pin_and_the_configs(pinned, mirror, capsys, cross_gcc):
    assert run(capsys, "update-configs")[0] == 0  # both arches
    new = pinned.pack("6.12.118")
    mirror.publish(new)
    pin_before = (pinned.configs / "kernel.toml").read_text()
    rc, out, err = run(capsys, "upgrade", "6.12.118", "--sha256", new.sha256)
    assert rc == 0, err
    assert f"{AMD64_CONFIG} -> linux-config-amd64-6.12.118:\n  (no change)" in out
    assert out.endswith("pinned 6.12.118; review 'git diff' and commit\n")
    assert sorted(p.name for p in pinned.configs.glob("linux-config-*")) == [
        "linux-config-aarch64-6.12.118", "linux-config-amd64-6.12.118"]
    pin_after = (pinned.configs / "kernel.toml").read_text()
    changed = [(a, b) for a, b in zip(pin_before.splitlines(), pin_after.splitlines(), strict=True) if a != b]
    assert [b for _, b in changed] == ['version = "6.12.118"', f'sha256 = "{new.sha256}"']
    assert not (pinned.configs / ".kernel.toml.upgrade").exists()


def test_failed_upgrade_changes_nothing(pinned, mirror, capsys, cross_gcc):
    assert run(capsys, "update-configs", "amd64")[0] == 0
    before = {p.name: p.read_bytes() for p in pinned.configs.iterdir() if p.is_file()}
    new = pinned.pack("6.12.118", unsatisfiable=("VIRTIO_MEM",))
    mirror.publish(new)
    rc, out, err = run(capsys, "upgrade", "6.12.118", "--sha256", new.sha256)
    assert rc == 2 and err.startswith("error: [audit] amd64/production on 6.12.118: CONFIG_VIRTIO_MEM: ")
    assert "; 1 more arch(es) above; nothing written (log: " in err
    # the whole report came out first: both arches' findings, the new symbols, the mentions
    assert "arm64/production on 6.12.118: 1 requested option(s) dropped or changed:" in out
    assert "Kconfig symbol(s) new in 6.12.118" in out and "other mentions of 6.12.117" in out
    assert {p.name: p.read_bytes() for p in pinned.configs.iterdir() if p.is_file()} == before


@pytest.mark.parametrize("argv, message", [
    (["upgrade", "6.12.118"], "error: [upgrade] upgrade needs --debian-version"),
    (["upgrade", "6.12"], "error: [upgrade] 6.12 is not newer than the pinned 6.12.117"),
    (["upgrade", "6.13"], "error: [upgrade] upgrade needs --debian-version"),
    (["upgrade", "six"], "error: [source] malformed kernel version 'six'"),
    (["upgrade", "6.12.118", "--debian-version", "6.12.118-1"],
     "error: [upgrade] linux-source-6.12 6.12.118-1 is not installed (have none); "
     "run 'apt-get install linux-source-6.12=6.12.118-1' first"),
])
def test_upgrade_bad_input(pinned, capsys, monkeypatch, argv, message):
    monkeypatch.setattr(configs.source, "dpkg_version", lambda pkg: None)
    before = (pinned.configs / "kernel.toml").read_text()
    rc, out, err = run(capsys, *argv)
    assert rc == 2 and err.startswith(message), err
    assert (pinned.configs / "kernel.toml").read_text() == before


def test_upgrade_from_kernelorg_makes_kernelorg_the_default_provider(pinned, mirror, capsys, cross_gcc):
    pinned.write_pin(provider="debian", kernelorg_sha256=pinned.pin().kernelorg["sha256"])
    new = pinned.pack("6.12.118")
    mirror.publish(new)
    rc, out, err = run(capsys, "upgrade", "6.12.118", "--sha256", new.sha256)
    assert rc == 0, err
    pin = pinned.pin()
    # the [debian] section still names the 6.12.117 package: it must not stay the default
    assert pin.version == "6.12.118" and pin.provider == "kernelorg"


# -- upgrade: the report before anything is written ----------------------------------------------------
def _readme(pinned) -> Path:
    readme = pinned.configs.parent / "README.md"
    readme.write_text("Pinned: 6.12.117 (kernelrelease 6.12.117-neonvm), Debian 6.12.117-1~deb12u1.\n"
                      "Unrelated: 16.12.117, 6.12.1170, 6.12.117.4, v6.12.11.\n")
    return readme


def test_upgrade_reports_patches_new_symbols_and_mentions(pinned, mirror, capsys, cross_gcc):
    assert run(capsys, "update-configs")[0] == 0
    pinned.add_patch("0001-new-file.patch", PATCH_NEW_FILE)
    readme = _readme(pinned)
    new = pinned.pack("6.12.118", files={"fake-newconfig": "CONFIG_NEW_THING=y\nCONFIG_64BIT=y\nCONFIG_OTHER=n\n"})
    mirror.publish(new)
    rc, out, err = run(capsys, "upgrade", "6.12.118", "--sha256", new.sha256)
    assert rc == 0, err
    assert "patch series on 6.12.118 (1 patch(es)):\n  0001-new-file.patch: applies\n" in out
    # CONFIG_64BIT is answered by the old config; the two others are new and took these values
    assert ("amd64: 2 Kconfig symbol(s) new in 6.12.118 that linux-config-amd64-6.12.117 never answered, and the "
            "value each took:\n  CONFIG_NEW_THING=n (its default)\n  CONFIG_OTHER=n (its default)\n") in out
    assert "other mentions of 6.12.117 in the repository: README.md (2)" in out
    assert readme.read_text() == ("Pinned: 6.12.118 (kernelrelease 6.12.118-neonvm), Debian 6.12.117-1~deb12u1.\n"
                                  "Unrelated: 16.12.117, 6.12.1170, 6.12.117.4, v6.12.11.\n")


def test_upgrade_dry_run_writes_nothing(pinned, mirror, capsys, cross_gcc):
    assert run(capsys, "update-configs")[0] == 0
    readme = _readme(pinned)
    before = {p: p.read_bytes() for p in pinned.configs.parent.rglob("*") if p.is_file()}
    new = pinned.pack("6.12.118")
    mirror.publish(new)
    rc, out, err = run(capsys, "upgrade", "6.12.118", "--sha256", new.sha256, "--dry-run")
    assert rc == 0, err
    assert "README.md (2)" in out and out.rstrip().endswith("dry run: nothing written")
    assert {p: p.read_bytes() for p in pinned.configs.parent.rglob("*") if p.is_file()} == before
    assert readme.read_text().startswith("Pinned: 6.12.117")


def test_upgrade_stops_at_a_patch_that_does_not_apply(pinned, mirror, capsys, cross_gcc):
    assert run(capsys, "update-configs")[0] == 0
    pinned.add_patch("0001-bad.patch", PATCH_BAD)
    before = {p: p.read_bytes() for p in pinned.configs.parent.rglob("*") if p.is_file()}
    new = pinned.pack("6.12.118")
    mirror.publish(new)
    rc, out, err = run(capsys, "upgrade", "6.12.118", "--sha256", new.sha256)
    assert rc == 2
    assert "  0001-bad.patch: fails (hunk #1 of kernel/fork.c at line" in out
    assert err.startswith("error: [upgrade] the series does not apply to 6.12.118: 0001-bad.patch: fails")
    assert "nothing written" in err
    assert {p: p.read_bytes() for p in pinned.configs.parent.rglob("*") if p.is_file()} == before


@pytest.mark.parametrize("version", ["6.12.117", "6.12.100", "6.1.150"])
def test_upgrade_refuses_a_version_not_newer_than_the_pin(pinned, capsys, version):
    before = (pinned.configs / "kernel.toml").read_text()
    rc, out, err = run(capsys, "upgrade", version, "--sha256", "0" * 64)
    assert rc == 2 and f"error: [upgrade] {version} is not newer than the pinned 6.12.117 (--allow-downgrade" in err
    assert (pinned.configs / "kernel.toml").read_text() == before


def test_upgrade_interactive_records_the_answers_in_the_fragments(pinned, mirror, capsys, cross_gcc, monkeypatch):
    assert run(capsys, "update-configs")[0] == 0
    new = pinned.pack("6.12.118", files={"fake-newconfig": "CONFIG_VIRTIO_MENU=n\n"})
    mirror.publish(new)

    def answer(argv, *, step, cwd=None):  # the maintainer answers `make oldconfig`: VIRTIO_MENU=y
        assert argv[-1] == "oldconfig" and step == "upgrade"
        scratch = Path(next(a for a in argv if str(a).startswith("O="))[2:])
        with open(scratch / ".config", "a") as fh:
            fh.write("CONFIG_VIRTIO_MENU=y\n")
        return 0

    monkeypatch.setattr(configs.proc, "interactive", answer)
    pin_before = (pinned.configs / "kernel.toml").read_text()
    rc, out, err = run(capsys, "upgrade", "6.12.118", "--sha256", new.sha256, "--interactive", "--dry-run")
    assert rc == 0, err  # a dry run shows the answers and tries them, writes nothing
    assert "amd64: your answers, to go into the fragments: CONFIG_VIRTIO_MENU=y" in out
    assert (pinned.configs / "kernel.toml").read_text() == pin_before
    assert "CONFIG_VIRTIO_MENU" not in (pinned.configs / "fragments" / "arch" / "amd64.config").read_text()
    rc, out, err = run(capsys, "upgrade", "6.12.118", "--sha256", new.sha256, "--interactive")
    assert rc == 0, err
    for arch in ("amd64", "arm64"):
        frag = (pinned.configs / "fragments" / "arch" / f"{arch}.config").read_text().splitlines()
        assert frag[-1] == "CONFIG_VIRTIO_MENU=y"
        committed = (pinned.configs / f"linux-config-{'aarch64' if arch == 'arm64' else arch}-6.12.118").read_text()
        assert "CONFIG_VIRTIO_MENU=y\n" in committed


def test_upgrade_interactive_with_a_refused_answer_writes_nothing(pinned, mirror, capsys, cross_gcc, monkeypatch):
    assert run(capsys, "update-configs")[0] == 0
    before = {p: p.read_bytes() for p in pinned.configs.rglob("*") if p.is_file()}
    new = pinned.pack("6.12.118", files={"fake-newconfig": "CONFIG_VIRTIO_MENU=n\n"},
                      unsatisfiable=("CONFIG_VIRTIO_MENU",))
    mirror.publish(new)

    def answer(argv, *, step, cwd=None):
        scratch = Path(next(a for a in argv if str(a).startswith("O="))[2:])
        with open(scratch / ".config", "a") as fh:
            fh.write("CONFIG_VIRTIO_MENU=y\n")
        return 0

    monkeypatch.setattr(configs.proc, "interactive", answer)
    rc, out, err = run(capsys, "upgrade", "6.12.118", "--sha256", new.sha256, "--interactive")
    assert rc == 2 and err.startswith("error: [set-config] refused, nothing written: amd64: CONFIG_VIRTIO_MENU"), err
    assert {p: p.read_bytes() for p in pinned.configs.rglob("*") if p.is_file()} == before
