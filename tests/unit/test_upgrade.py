"""The pieces of upgrade's report: patch(1)'s verdicts, whole-version replacement, kept files."""
from __future__ import annotations

from pathlib import Path

import pytest

from harness.kernel import upgrade as up


@pytest.mark.parametrize("output, rc, verdict", [
    ("patching file mm/a.c\n", 0, ("applies", "")),
    ("patching file mm/a.c\nHunk #2 succeeded at 130 (offset 7 lines).\n", 0,
     ("applies with offset", "hunk #2 of mm/a.c at +7 lines")),
    ("patching file mm/a.c\nHunk #1 succeeded at 90 with fuzz 2.\n", 0,
     ("applies with fuzz", "hunk #1 of mm/a.c with fuzz 2")),
    ("patching file mm/a.c\nHunk #1 succeeded at 88 (offset -2 lines).\nHunk #3 succeeded at 99 with fuzz 1.\n", 0,
     ("applies with fuzz", "hunk #3 of mm/a.c with fuzz 1; hunk #1 of mm/a.c at -2 lines")),
    ("patching file mm/a.c\nReversed (or previously applied) patch detected!  Skipping patch.\n", 1,
     ("already applied", "the new version already carries it: drop it from the series")),
    ("patching file mm/a.c\nHunk #1 succeeded at 10.\nHunk #2 FAILED at 40.\n1 out of 2 hunks FAILED\n", 1,
     ("fails", "hunk #2 of mm/a.c at line 40")),
    ("can't find file to patch at input line 3\n", 1, ("fails", "can't find file to patch at input line 3")),
])
def test_classify(output, rc, verdict):
    assert up.classify(output, rc) == verdict


def test_whole_versions_only():
    text = ("6.12.117 6.12.117-neonvm linux-6.12.117.tar.xz 16.12.117 6.12.1170 6.12.117.1 "
            "6.12.117-1~deb12u1 (6.12.117)")
    new, n = up.replace_text(text, [("6.12.117", "6.13.2")])
    assert new == ("6.13.2 6.13.2-neonvm linux-6.13.2.tar.xz 16.12.117 6.12.1170 6.12.117.1 "
                   "6.12.117-1~deb12u1 (6.13.2)")
    assert n == 4


def test_longer_strings_first_and_kept_files(tmp_path: Path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text("linux-source-6.12 6.12.117-1~deb12u1 at 6.12.117\n")
    (tmp_path / "fixtures" / "console").mkdir(parents=True)
    (tmp_path / "fixtures" / "console" / "boot.log").write_text("Linux version 6.12.117-neonvm\n")
    (tmp_path / "bin.dat").write_bytes(b"\xff\xfe6.12.117\x00")
    (tmp_path / "harness").mkdir()
    (tmp_path / "harness" / "source.py").write_text('"expected e.g. 6.12.117"\n')  # an example, not the pin
    files = ["docs/a.md", "fixtures/console/boot.log", "bin.dat", "harness/source.py"]
    pairs = [("6.12.117", "6.13.2"), ("linux-source-6.12", "linux-source-6.13"),
             ("6.12.117-1~deb12u1", "6.13.2-1~deb12u1")]
    got = up.replace_mentions(tmp_path, files, pairs)
    assert [(r.path.name, r.count) for r in got] == [("a.md", 3)]
    assert got[0].new_text == "linux-source-6.13 6.13.2-1~deb12u1 at 6.13.2\n"
    assert (tmp_path / "docs" / "a.md").read_text().startswith("linux-source-6.12")  # not written here


def test_touched_files(tmp_path: Path):
    p = tmp_path / "x.patch"
    p.write_text("--- a/mm/a.c\n+++ b/mm/a.c\n@@ -1 +1 @@\n-x\n+y\n--- /dev/null\n+++ b/new.c\n")
    assert up.touched_files(p) == ["mm/a.c", "new.c"]
