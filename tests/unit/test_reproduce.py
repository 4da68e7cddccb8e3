"""Reproducible tars (sorted, fixed mtimes, owners 0:0), stable records, and the byte comparison that
names the first difference."""
from __future__ import annotations

import json
import os
import tarfile
from pathlib import Path

import pytest

from harness import reproduce
from harness.errors import SourceMissing
from harness.manifest import Manifest
from harness.reproduce import TarEntry, compare, first_difference, stable_json, write_tar

EPOCH = 1731500000


def _files(tmp: Path, mtime: int) -> tuple[Path, Path]:
    tmp.mkdir(parents=True, exist_ok=True)
    a, b = tmp / "kernel", tmp / "tool"
    a.write_bytes(b"K" * 1000)
    b.write_bytes(b"#!/bin/sh\n")
    b.chmod(0o750)
    for f in (a, b):
        os.utime(f, (mtime, mtime))
    return a, b


def _entries(a: Path, b: Path) -> list[TarEntry]:
    return [TarEntry("top/sub/tool", path=b), TarEntry("top/kernel", path=a), TarEntry("top/cp", link="busybox"),
            TarEntry("top/data.json", data=b'{"x": 1}\n')]


def test_tar_is_sorted_with_parents_fixed_mtime_and_numeric_owners(tmp_path):
    a, b = _files(tmp_path / "in", 1)
    out = write_tar(tmp_path / "x.tar", _entries(a, b), mtime=EPOCH)
    with tarfile.open(out) as tar:
        members = tar.getmembers()
    assert [m.name for m in members] == ["top", "top/cp", "top/data.json", "top/kernel", "top/sub", "top/sub/tool"]
    assert {(m.mtime, m.uid, m.gid, m.uname, m.gname) for m in members} == {(EPOCH, 0, 0, "", "")}
    modes = {m.name: (m.type, m.mode) for m in members}
    assert modes["top"] == (tarfile.DIRTYPE, 0o755) and modes["top/sub"] == (tarfile.DIRTYPE, 0o755)
    assert modes["top/kernel"] == (tarfile.REGTYPE, 0o644) and modes["top/sub/tool"] == (tarfile.REGTYPE, 0o755)
    assert modes["top/cp"] == (tarfile.SYMTYPE, 0o777)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "a temporary file was left behind"


def test_tar_bytes_do_not_depend_on_order_host_mtimes_or_owners(tmp_path):
    a, b = _files(tmp_path / "one", 1)
    first = write_tar(tmp_path / "1.tar", _entries(a, b), mtime=EPOCH).read_bytes()
    a2, b2 = _files(tmp_path / "two", 1999999999)
    if os.geteuid() == 0:
        os.chown(a2, 1234, 5678)
    second = write_tar(tmp_path / "2.tar", list(reversed(_entries(a2, b2))), mtime=EPOCH).read_bytes()
    assert first == second
    assert write_tar(tmp_path / "3.tar", _entries(a, b), mtime=EPOCH + 1).read_bytes() != first


@pytest.mark.parametrize("bad", ["/", "a/../b", "../x", "a//b", ""])
def test_tar_entry_names_must_be_clean(bad):
    with pytest.raises(ValueError):
        TarEntry(bad)


def test_tar_rejects_duplicates_and_ambiguous_entries(tmp_path):
    with pytest.raises(ValueError, match="twice"):
        write_tar(tmp_path / "x.tar", [TarEntry("a", data=b""), TarEntry("a/", data=b"")], mtime=0)
    with pytest.raises(ValueError, match="one of"):
        TarEntry("a", data=b"", link="b")
    assert not (tmp_path / "x.tar").exists()


def test_a_failed_tar_leaves_no_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        write_tar(tmp_path / "x.tar", [TarEntry("a", path=tmp_path / "missing")], mtime=0)
    assert list(tmp_path.iterdir()) == []


def test_stable_json_drops_the_runs_fields_only():
    data = {"kernelrelease": "6.12.117", "built_at": "now", "durations": {"make": 1.0},
            "perf": {"objdir": "/cache/perf", "size": 3}}
    out = json.loads(stable_json(data, ("built_at", "durations", "perf.objdir", "absent.key", "x")))
    assert out == {"kernelrelease": "6.12.117", "perf": {"size": 3}}
    assert data["built_at"] == "now", "the input is not modified"
    assert stable_json(data, ()) == stable_json(dict(reversed(list(data.items()))), ())


# -- byte comparison -----------------------------------------------------------------------------------
def test_first_difference(tmp_path, monkeypatch):
    monkeypatch.setattr(reproduce, "CHUNK", 7)  # differences beyond the first chunk are found too
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_bytes(b"0123456789abcdef")
    b.write_bytes(b"0123456789abcdef")
    assert first_difference(a, b) is None
    b.write_bytes(b"0123456789abXdef")
    assert first_difference(a, b) == 12
    b.write_bytes(b"0123456789")
    assert first_difference(a, b) == 10  # a prefix: differs where the shorter one ends
    b.write_bytes(b"X123")
    assert first_difference(a, b) == 0


def test_compare_trees_names_each_difference(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for root in (a, b):
        (root / "blobs").mkdir(parents=True)
        (root / "index.json").write_text("{}")
    (a / "blobs" / "x").write_bytes(b"same-but-not")
    (b / "blobs" / "x").write_bytes(b"same-but-NOT")
    (a / "only-a").write_text("")
    diffs = compare(a, b, label="oci")
    assert [str(d) for d in diffs] == [
        "oci/blobs/x at byte 9: differ (sizes 12 and 12)",
        f"oci/only-a: only in {a}",
    ]
    assert compare(a / "index.json", b / "index.json", label="index.json") == []
    assert str(compare(a / "none", b / "none", label="x")[0]).startswith("x: ")


def test_source_date(tmp_path, monkeypatch):
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "Makefile").write_text("")
    os.utime(tree / "Makefile", (EPOCH, EPOCH))
    m = Manifest(tmp_path / "manifest.json", {"tree": str(tree)})
    assert reproduce.source_date(m, step="t") == EPOCH
    assert reproduce.source_date(Manifest(m.path, {"source_date_epoch": 5}), step="t") == 5
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "7")
    assert reproduce.source_date(m, step="t") == 7
    monkeypatch.delenv("SOURCE_DATE_EPOCH")
    monkeypatch.chdir(tree)  # a manifest without a tree never takes the current directory's Makefile
    with pytest.raises(SourceMissing, match="no source date"):
        reproduce.source_date(Manifest(m.path, {}), step="t")


# -- nox -s reproduce -- ARCH, with fake build steps ---------------------------------------------------
@pytest.fixture
def fake_pipeline(tmp_path, monkeypatch):
    """Fake build/tools/OCI steps; ``state["vary"]`` makes the second build's kernel differ at byte 5."""
    from harness import oci
    from harness.kernel import build
    from harness.tools import image as toolsimage

    monkeypatch.setenv("NEONVM_KERNEL_OUT", str(tmp_path / "out"))
    monkeypatch.setenv("NEONVM_KERNEL_CACHE", str(tmp_path / "cache"))
    state = {"vary": False, "requests": []}

    def fake_build(req):
        assert not req.build_dir.exists(), "the build directory must be fresh"
        req.build_dir.mkdir(parents=True)
        state["requests"].append(req)
        req.out_dir.mkdir(parents=True, exist_ok=True)
        n = len(state["requests"])
        kernel = b"HdrS-kernel-bytes" if not (state["vary"] and n == 2) else b"HdrS-KERNEL-bytes"
        (req.out_dir / "vmlinuz").write_bytes(kernel)
        for f in ("System.map", "config"):
            (req.out_dir / f).write_text(f)
        m = {"arch": req.arch.name, "kernelrelease": "6.12.117-neonvm-smoke", "source_date_epoch": EPOCH,
             "built_at": f"run {n}", "build_dir": str(req.build_dir)}
        (req.out_dir / "manifest.json").write_text(json.dumps(m))
        return m

    def fake_tools(arch, out, jobs):
        (out / "tools.img").write_bytes(b"img")
        (out / "tools-manifest.json").write_text(json.dumps({"durations": {"x": len(state["requests"])}}))
        return out / "tools.img"

    def fake_layout(items, dest, log):
        dest.mkdir(parents=True)
        (dest / "index.json").write_bytes((items[0][1] / "vmlinuz").read_bytes())
        return None

    monkeypatch.setattr(build, "build", fake_build)
    monkeypatch.setattr(toolsimage, "build_tools_image", fake_tools)
    monkeypatch.setattr(oci, "write_layout", fake_layout)
    return state


def test_reproduce_identical(fake_pipeline, tmp_path, capsys):
    from harness.arch import get_arch

    (tmp_path / "cache" / "reproduce" / "amd64-smoke-a").mkdir(parents=True)  # left over: made fresh
    assert reproduce.run(get_arch("amd64"), variant="smoke", jobs=2) == 0
    reqs = fake_pipeline["requests"]
    assert [r.use_ccache for r in reqs] == [False, False] and reqs[0].build_dir != reqs[1].build_dir
    assert not reqs[0].build_dir.exists(), "build directories are removed afterwards"
    result = json.loads((tmp_path / "out" / "reproduce" / "smoke-amd64" / "reproduce.json").read_text())
    assert result["identical"] and set(result["differences"]) == {"vmlinuz", "tools.img", "release tar", "OCI layout"}
    assert "reproduce amd64/smoke: IDENTICAL" in capsys.readouterr().out


def test_reproduce_names_the_first_differing_file_and_offset(fake_pipeline, tmp_path, capsys):
    from harness.arch import get_arch

    fake_pipeline["vary"] = True
    assert reproduce.run(get_arch("amd64"), variant="smoke", jobs=2) == 1
    out = capsys.readouterr().out
    assert "vmlinuz      DIFFER, first: vmlinuz at byte 5: differ (sizes 17 and 17)" in out
    assert "OCI layout   DIFFER, first: release/oci/index.json at byte 5" in out
    assert "tools.img    identical" in out
    result = json.loads((tmp_path / "out" / "reproduce" / "smoke-amd64" / "reproduce.json").read_text())
    assert not result["identical"] and result["differences"]["release tar"], "the tar holds the kernel"
