"""A real config carried across two real kernel trees through `upgrade`: Debian's linux-source-6.1
as the old pin, its defconfigs as the committed configs, moved to the pinned linux-source-6.12. The
patch report, the new-symbol list per arch and the replaced mentions are checked against the trees."""
from __future__ import annotations

import shutil
import textwrap
from pathlib import Path

import pytest

from harness.arch import ARCHES
from harness.cli import main
from harness.fsutil import sha256_file
from harness.kernel import kconfig, source, tree
from harness.kernel.patches import Series
from harness.layout import CONFIGS

pytestmark = pytest.mark.integration
OLD_PKG = "linux-source-6.1"
OLD_TARBALL = Path(f"/usr/src/{OLD_PKG}.tar.xz")


@pytest.fixture
def old_repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, str]:
    """A repository copy pinned to Debian's 6.1, with defconfig-based committed configs for it."""
    old_deb = source.dpkg_version(OLD_PKG)
    if old_deb is None or not OLD_TARBALL.is_file():
        pytest.skip(f"{OLD_PKG} is not installed (./bootstrap installs it)")
    root = tmp_path / "repo"
    configs = root / "configs"
    shutil.copytree(CONFIGS, configs, ignore=shutil.ignore_patterns("linux-config-*"))
    old_version = old_deb.split("-")[0]
    new = source.Pin.load()
    (configs / "kernel.toml").write_text(textwrap.dedent(f"""\
        # The pinned kernel (a copy for the upgrade test).
        version = "{old_version}"
        provider = "debian"

        [debian]
        package = "{OLD_PKG}"
        package_version = "{old_deb}"
        tarball = "{OLD_TARBALL}"
        sha256 = "{sha256_file(OLD_TARBALL)}"

        [kernelorg]
        base_url = "https://cdn.kernel.org/pub/linux/kernel"
        sha256 = ""
        keyring = "configs/keys/kernel.org.gpg"
        """))
    (root / "README.md").write_text(f"Pinned to {old_version} ({OLD_PKG} {old_deb}); not 1{old_version}.\n")
    for mod in (kconfig, source):
        monkeypatch.setattr(mod, "CONFIGS", configs)
    monkeypatch.setattr(kconfig, "FRAGMENTS", configs / "fragments")
    log = tmp_path / "old.log"
    pin = source.Pin.load()
    old_tree = tree.prepare(source.resolve(pin, log=log), Series.none(), log=log)
    for arch in ARCHES.values():  # the "old committed config": that version's defconfig
        scratch = tmp_path / f"old-{arch.name}"
        from harness import proc

        proc.run(kconfig.make_argv(arch, scratch, "defconfig"), step="old-config", log=log, cwd=old_tree,
                 timeout=300)
        shutil.copyfile(scratch / ".config", kconfig.committed_config_path(arch, old_version))
    assert new.version != old_version
    return root, old_version


def test_upgrade_from_debian_6_1_to_the_pin(old_repo, capsys):
    root, old_version = old_repo
    new = source.Pin.load(CONFIGS / "kernel.toml")
    rc = main(["upgrade", new.version, "--debian-version", new.debian["package_version"]])
    out, err = capsys.readouterr()
    assert rc == 0, err
    for p in Series.load().patches:
        assert f"  {p.name}: applies" in out
    for arch in ARCHES.values():
        head = (f"{arch.name}: ")
        line = next(ln for ln in out.splitlines() if ln.startswith(head) and "Kconfig symbol(s) new in" in ln)
        count = int(line.split()[1])
        assert count > 100, line  # six releases of new options
    # symbols that 6.12 has and 6.1 did not, each with the value it took
    amd64 = out.split("amd64: ", 1)[1].split("arm64: ", 1)[0]
    assert "  CONFIG_X86_FRED=n (its default)\n" in amd64  # added in 6.9
    assert "  CONFIG_MODULE_COMPRESS=y (requested at configs/fragments/tools.config:" in amd64
    assert "CONFIG_IO_URING=y" not in out.split("Kconfig symbol(s) new in")[1]  # 6.1 already had it
    # the version, the package name and the Debian version; not the unrelated number
    assert f"other mentions of {old_version} in the repository: README.md (3)" in out
    configs = root / "configs"
    assert sorted(p.name for p in configs.glob("linux-config-*")) == [
        f"linux-config-aarch64-{new.version}", f"linux-config-amd64-{new.version}"]
    for arch in ARCHES.values():
        assert (configs / f"linux-config-{arch.config_name}-{new.version}").read_bytes() == \
            (CONFIGS / f"linux-config-{arch.config_name}-{new.version}").read_bytes()
    assert (root / "README.md").read_text() == (
        f"Pinned to {new.version} (linux-source-6.12 {new.debian['package_version']}); not 1{old_version}.\n")
    assert source.Pin.load(configs / "kernel.toml").version == new.version
