"""Root causes on the real kernel tree: a maintainer switches off CONFIG_COMPACTION in the hotplug
fragment, and the production resolution's audit names the chain down to that fragment line."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from harness.arch import get_arch
from harness.errors import ConfigAuditFailed
from harness.kernel import kconfig, source, tree
from harness.kernel.patches import Series
from harness.layout import CONFIGS

pytestmark = pytest.mark.integration


@pytest.fixture
def private_configs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of configs/ inside a fake repository root (fragment lines are named relative to it)."""
    root = tmp_path / "repo"
    configs = root / "configs"
    shutil.copytree(CONFIGS, configs)
    monkeypatch.setattr(kconfig, "CONFIGS", configs)
    monkeypatch.setattr(kconfig, "FRAGMENTS", configs / "fragments")
    return configs


@pytest.fixture
def patched_tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The pinned, patched tree (unpacked once into the shared cache), with a private scratch cache
    for the resolution so that a half-edited fragment never lands in the shared one."""
    log = tmp_path / "tree.log"
    t = tree.prepare(source.resolve(source.Pin.load(), log=log), Series.load(), log=log)
    private = tmp_path / "cache"
    private.mkdir()
    (private / "trees").symlink_to(t.parent)
    monkeypatch.setenv("NEONVM_KERNEL_CACHE", str(private))
    return t


def test_compaction_off_is_traced_to_its_fragment_line(patched_tree, private_configs, tmp_path):
    tree = patched_tree
    hotplug = private_configs / "fragments" / "hotplug.config"
    lines = hotplug.read_text().splitlines()
    no = lines.index("CONFIG_COMPACTION=y") + 1
    lines[no - 1] = "# CONFIG_COMPACTION is not set"
    hotplug.write_text("\n".join(lines) + "\n")

    arch = get_arch("amd64")
    variant = kconfig.get_variant("production")
    log = tmp_path / "config.log"
    resolved = kconfig.resolve(tree, arch, variant, log=log)  # the kernel's own make olddefconfig
    with pytest.raises(ConfigAuditFailed) as exc:
        kconfig.check(variant.requests(arch), resolved, tree, log=log, label="amd64/production", arch=arch)
    text = log.read_text()
    where = f"configs/fragments/hotplug.config:{no}"
    assert (f"CONFIG_VIRTIO_MEM: requested y, resolved n (absent) (asked for at configs/fragments/hotplug.config:"
            f"{no + 2}); why: VIRTIO_MEM=n <- CONTIG_ALLOC=n <- (MEMORY_ISOLATION=y && COMPACTION=n) || CMA=n "
            f"<- COMPACTION=n set by {where}") in text, text
    assert "CONFIG_CONTIG_ALLOC: requested y" in text
    assert f"set by {where}" in str(exc.value)
