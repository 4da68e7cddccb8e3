"""The atomic file and directory helpers: a half-written artifact never sits at its final name."""
from __future__ import annotations

import os

import pytest

from harness import fsutil


def test_atomic_output_replaces_only_on_success(tmp_path):
    path = tmp_path / "a" / "f"
    fsutil.atomic_write_text(path, "one")
    with pytest.raises(RuntimeError), fsutil.atomic_output(path) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert path.read_text() == "one" and os.listdir(path.parent) == ["f"]


def test_atomic_dir_replaces_a_whole_tree(tmp_path):
    final = tmp_path / "tree"
    with fsutil.atomic_dir(final) as d:
        (d / "old-file").write_text("1")
    with fsutil.atomic_dir(final) as d:
        (d / "new-file").write_text("2")
    assert sorted(os.listdir(final)) == ["new-file"] and os.listdir(tmp_path) == ["tree"]


def test_atomic_dir_failure_keeps_the_previous_tree(tmp_path):
    final = tmp_path / "tree"
    with fsutil.atomic_dir(final) as d:
        (d / "good").write_text("1")
    with pytest.raises(OSError), fsutil.atomic_dir(final) as d:
        (d / "half").write_text("2")
        raise OSError("disk full")
    assert os.listdir(final) == ["good"] and os.listdir(tmp_path) == ["tree"]


def test_atomic_dir_puts_the_previous_tree_back_when_the_swap_fails(tmp_path, monkeypatch):
    final = tmp_path / "tree"
    with fsutil.atomic_dir(final) as d:
        (d / "good").write_text("1")
    real = os.replace
    calls = []

    def replace(src, dst):
        calls.append((src, dst))
        if len(calls) == 2:  # the new tree into place
            raise OSError("EXDEV")
        return real(src, dst)

    monkeypatch.setattr(fsutil.os, "replace", replace)
    with pytest.raises(OSError, match="EXDEV"), fsutil.atomic_dir(final) as d:
        (d / "new").write_text("2")
    assert os.listdir(final) == ["good"] and os.listdir(tmp_path) == ["tree"]


def test_a_locked_writer_removes_what_killed_writers_left(tmp_path):
    final = tmp_path / "tree"
    stale = tmp_path / ".tree.abc123.tmp"
    (stale / "tree").mkdir(parents=True)
    other = tmp_path / ".treehouse.abc.tmp"  # another directory's staging: not ours
    other.mkdir()
    with fsutil.atomic_dir(final) as d:  # unlocked: someone else may be writing, leave it
        (d / "f").write_text("1")
    assert stale.exists()
    with fsutil.atomic_dir(final, locked=True) as d:
        (d / "f").write_text("2")
    assert not stale.exists() and other.exists() and (final / "f").read_text() == "2"
