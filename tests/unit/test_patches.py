"""harness/kernel/patches.py: the series (sorted, hashed) and its application to a fresh tree."""
from __future__ import annotations

import hashlib
import shutil

import pytest
from build_fakes import FAKELINUX, PATCH_ADD, PATCH_BAD, PATCH_MODIFY, PATCH_NEW_FILE

from harness.errors import InvalidArgument, PatchFailed
from harness.kernel import patches, source, tree
from harness.kernel.patches import Series

EMPTY_SHA = hashlib.sha256(b"").hexdigest()


def test_series_is_sorted_and_hashed(world):
    # written in reverse order, so the directory's order is not the sorted one
    b = world.add_patch("0002-modify.patch", PATCH_MODIFY)
    a = world.add_patch("0001-add.patch", PATCH_ADD)
    (world.series_dir / "README").write_text("not a patch\n")
    (world.series_dir / "0003-notes.txt").write_text("not a patch\n")
    series = Series.load()
    assert [p.name for p in series.patches] == ["0001-add.patch", "0002-modify.patch"]
    assert series.manifest() == [
        {"name": "0001-add.patch", "sha256": hashlib.sha256(a.read_bytes()).hexdigest()},
        {"name": "0002-modify.patch", "sha256": hashlib.sha256(b.read_bytes()).hexdigest()},
    ]
    # the series hash covers names, contents and order
    h = series.sha256
    b.write_text(b.read_text() + "\n")
    assert Series.load().sha256 != h
    b.rename(world.series_dir / "0000-modify.patch")
    assert Series.load().sha256 not in (h, series.sha256)


def test_empty_series(world):
    series = Series.load()
    assert series.patches == () and series.manifest() == [] and series.sha256 == EMPTY_SHA


def test_missing_series_directory(tmp_path):
    with pytest.raises(InvalidArgument, match="patch series directory .* does not exist") as exc:
        Series.load(tmp_path / "nope")
    assert exc.value.step == "patch"


def test_the_repository_series_loads_in_order_with_its_hashes():
    series = Series.load(patches.DEFAULT_SERIES)
    names = [p.name for p in series.patches]
    on_disk = sorted(p.name for p in patches.DEFAULT_SERIES.glob("*.patch"))
    assert names == on_disk and len(names) >= 2  # the x86 memory hot-add series
    assert names[0].startswith("0001-") and names[1].startswith("0002-")
    for p in series.patches:
        assert p.sha256 == hashlib.sha256(p.path.read_bytes()).hexdigest()
        assert p.path.read_text().startswith("From ")  # git format-patch, with its provenance header
    assert series.manifest() == [{"name": p.name, "sha256": p.sha256} for p in series.patches]


def test_patches_are_applied_in_sorted_order(world, tmp_path):
    """0002 changes a line 0001 adds: it only applies after 0001."""
    world.add_patch("0002-modify.patch", PATCH_MODIFY)
    world.add_patch("0001-add.patch", PATCH_ADD)
    world.add_patch("0003-new-file.patch", PATCH_NEW_FILE)
    t = shutil.copytree(FAKELINUX, tmp_path / "tree")
    log = tmp_path / "unpack.log"
    Series.load().apply(t, log)
    fork = (t / "kernel/fork.c").read_text()
    assert "\tnr_threads_changed_by_0002++;\n" in fork and "added_by_0001" not in fork
    assert (t / "kernel/neonvm.c").read_text() == "int neonvm;\n"
    text = log.read_text()
    assert text.index("0001-add.patch") < text.index("0002-modify.patch") < text.index("0003-new-file.patch")
    assert not list(t.rglob("*.orig")) and not list(t.rglob("*.rej"))


def test_failing_patch_names_the_patch_and_its_first_rejected_hunk(world, tmp_path):
    world.add_patch("0001-add.patch", PATCH_ADD)
    world.add_patch("0002-bad.patch", PATCH_BAD)
    t = shutil.copytree(FAKELINUX, tmp_path / "tree")
    log = tmp_path / "unpack.log"
    with pytest.raises(PatchFailed) as exc:
        Series.load().apply(t, log)
    assert str(exc.value) == ("[patch] 0002-bad.patch does not apply: hunk #1 of kernel/fork.c rejected "
                              f"at line 16 (log: {log})")


def test_first_rejection_reads_only_the_last_patch_run(tmp_path):
    log = tmp_path / "unpack.log"
    log.write_text("### step patch: $ patch -i 0001.patch\npatching file a.c\nHunk #2 FAILED at 9.\n"
                   "### step patch: $ patch -i 0002.patch\npatching file b.c\nHunk #1 succeeded at 3.\n"
                   "Hunk #3 FAILED at 40.\n")
    assert patches.first_rejection(log) == "hunk #3 of b.c rejected at line 40"


@pytest.mark.parametrize("text, reason", [
    ("""\
     --- a/kernel/nonexistent.c
     +++ b/kernel/nonexistent.c
     @@ -1,1 +1,1 @@
     -a
     +b
     """, "a file it patches does not exist in the tree"),
    (PATCH_ADD, "kernel/fork.c: already applied (reversed patch detected)"),
    ("this is not a patch at all\n", "patch: **** Only garbage was found in the patch input."),
])
def test_first_rejection_other_failures(world, tmp_path, text, reason):
    """A file that is not there, a patch already in the tree (its reverse applies), garbage."""
    world.add_patch("0001-add.patch", PATCH_ADD)
    world.add_patch("0002-other.patch", text)
    t = shutil.copytree(FAKELINUX, tmp_path / "tree")
    with pytest.raises(PatchFailed) as exc:
        Series.load().apply(t, tmp_path / "unpack.log")
    assert str(exc.value).startswith(f"[patch] 0002-other.patch does not apply: {reason}")


def test_failing_series_leaves_no_tree_and_a_fixed_series_succeeds(world, fake_tarball):
    src = source.resolve(world.pin(), path=fake_tarball.path, sha256=fake_tarball.sha256,
                         log=world.tmp / "source.log")
    world.add_patch("0001-add.patch", PATCH_ADD)
    bad = world.add_patch("0002-bad.patch", PATCH_BAD)
    log = world.tmp / "unpack.log"
    with pytest.raises(PatchFailed) as exc:
        tree.prepare(src, Series.load(), log=log)
    assert exc.value.step == "patch" and exc.value.log == log
    assert "0002-bad.patch does not apply: hunk #1 of kernel/fork.c rejected at line 16" in str(exc.value)
    assert world.tree_dirs() == []  # neither a half-patched tree nor its temporary directory
    bad.unlink()
    world.add_patch("0002-modify.patch", PATCH_MODIFY)
    series = Series.load()
    path = tree.prepare(src, series, log=log)
    assert world.tree_dirs() == [path] and path.name.endswith(series.sha256[:12])
    assert "nr_threads_changed_by_0002" in (path / "kernel/fork.c").read_text()


def test_a_hung_patch_is_a_timeout_not_a_bad_patch(tmp_path, monkeypatch):
    from harness import proc
    from harness.errors import CommandTimeout, PatchFailed
    from harness.kernel import patches

    (tmp_path / "series").mkdir()
    (tmp_path / "series" / "0001-x.patch").write_text("--- a/x\n+++ b/x\n")

    def hang(*a, **kw):
        raise CommandTimeout("patch timed out after 600s", step="patch", log=tmp_path / "log")
    monkeypatch.setattr(proc, "run", hang)
    with pytest.raises(CommandTimeout) as exc:
        patches.Series.load(tmp_path / "series").apply(tmp_path, tmp_path / "log")
    assert not isinstance(exc.value, PatchFailed)
