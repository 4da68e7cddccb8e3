"""harness/kernel/tree.py: unpacking a verified tarball into the tree cache (patching: test_patches.py)."""
from __future__ import annotations

import json
import tarfile

import pytest
from build_fakes import PATCH_NEW_FILE, VERSION, sha256

from harness.errors import CorruptSource, SourceVersionMismatch
from harness.kernel import source, tree
from harness.kernel.patches import Series


def _source(world, tarball, version=None):
    return source.resolve(world.pin(), version=version or tarball.version, path=tarball.path,
                          sha256=tarball.sha256, log=world.tmp / "source.log")


def test_unpacked_tree_is_cached_by_source_and_series(world, fake_tarball):
    src = _source(world, fake_tarball)
    series = Series.load()
    log = world.tmp / "unpack.log"
    path = tree.prepare(src, series, log=log)
    assert path.parent == world.trees and path.name == tree.tree_key(src, series)
    assert path.name == f"6.12.117-{fake_tarball.sha256[:16]}-{series.sha256[:12]}"
    assert (path / "Makefile").is_file() and (path / "scripts/kconfig/merge_config.sh").stat().st_mode & 0o100
    marker = json.loads((path / tree.MARKER).read_text())
    assert marker["source"]["sha256"] == fake_tarball.sha256 and marker["series"] == []
    assert world.tree_dirs() == [path]
    # a second call reuses it without unpacking again
    before = log.read_text()
    assert tree.prepare(src, series, log=log) == path
    assert log.read_text() == before


def test_series_hash_changes_the_tree_key(world, fake_tarball):
    src = _source(world, fake_tarball)
    plain = tree.prepare(src, Series.load(), log=world.tmp / "unpack.log")
    world.add_patch("0001-new-file.patch", PATCH_NEW_FILE)
    series = Series.load()
    patched = tree.prepare(src, series, log=world.tmp / "unpack.log")
    assert patched != plain and patched.name.endswith(series.sha256[:12])
    assert (patched / "kernel/neonvm.c").is_file() and not (plain / "kernel/neonvm.c").exists()
    assert json.loads((patched / tree.MARKER).read_text())["series_sha256"] == series.sha256


def test_tarball_whose_makefile_version_differs(world):
    tarball = world.pack(VERSION, makefile_version="6.12.118")
    src = _source(world, tarball)
    log = world.tmp / "unpack.log"
    with pytest.raises(SourceVersionMismatch) as exc:
        tree.prepare(src, Series.load(), log=log)
    assert str(exc.value) == (f"[unpack] {tarball.path} contains linux 6.12.118, not the requested 6.12.117 "
                              f"(log: {log})")
    assert world.tree_dirs() == []


def test_truncated_tarball_leaves_no_tree(world, fake_tarball):
    data = fake_tarball.path.read_bytes()
    truncated = world.tmp / "linux-6.12.117.tar.xz"
    truncated.write_bytes(data[: len(data) // 2])
    src = source.resolve(world.pin(), path=truncated, sha256=sha256(truncated), log=world.tmp / "s.log")
    log = world.tmp / "unpack.log"
    with pytest.raises(CorruptSource) as exc:
        tree.prepare(src, Series.load(), log=log)
    assert exc.value.step == "unpack" and exc.value.log == log
    assert str(exc.value).startswith(f"[unpack] {truncated} does not unpack (tar exited ")
    assert "truncated or corrupt" in str(exc.value) and str(exc.value).endswith(f"(log: {log})")
    assert world.tree_dirs() == []


def test_a_tree_without_its_marker_is_not_trusted(world, fake_tarball):
    """A directory at the final name without the marker (an interrupted older run) is replaced."""
    src = _source(world, fake_tarball)
    series = Series.load()
    stale = world.trees / tree.tree_key(src, series)
    (stale / "kernel").mkdir(parents=True)
    (stale / "kernel/half-written.c").write_text("")
    path = tree.prepare(src, series, log=world.tmp / "unpack.log")
    assert path == stale and (path / tree.MARKER).is_file()
    assert not (path / "kernel/half-written.c").exists()


def test_tarball_that_is_not_a_kernel_tree(world):
    stage = world.tmp / "stage" / "linux-6.12.117"
    stage.mkdir(parents=True)
    (stage / "README").write_text("not a kernel\n")
    path = world.tmp / "linux-6.12.117.tar.xz"
    with tarfile.open(path, "w:xz") as tf:
        tf.add(stage, arcname=stage.name)
    src = source.resolve(world.pin(), path=path, sha256=sha256(path), log=world.tmp / "s.log")
    log = world.tmp / "unpack.log"
    with pytest.raises(SourceVersionMismatch) as exc:
        tree.prepare(src, Series.load(), log=log)
    assert str(exc.value) == (f"[unpack] {path} is not a kernel source tarball (no top-level Makefile) "
                              f"(log: {log})")
    assert world.tree_dirs() == []
