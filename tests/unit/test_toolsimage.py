"""Tools image: command lines, sizing, the debugfs/sfdisk scripts, determinism and atomicity,
and the ELF reader the inspection relies on. No appliance, no kernel build."""
from __future__ import annotations

import json
import os
import shutil
import struct
from pathlib import Path

import pytest

from harness import elf, toolsimage
from harness.arch import ARCHES
from harness.errors import InvalidArgument, SourceMissing

from tools_fakes import RELEASE, SOURCE_DATE, fake_out, fake_perf, fake_tree, package

AMD64, ARM64 = ARCHES["amd64"], ARCHES["arm64"]


# -- command lines -------------------------------------------------------------------------------------
def test_perf_argv_is_static_and_cross_for_arm64(tmp_path):
    argv = toolsimage.perf_argv(ARM64, Path("/t"), Path("/o"), 2)
    assert argv[:5] == ["make", "-C", "/t/tools/perf", "O=/o", "-j2"]
    for want in ("ARCH=arm64", "CROSS_COMPILE=aarch64-linux-gnu-", "LDFLAGS=-static", "NO_LIBTRACEEVENT=1",
                 "NO_LIBELF=1", "NO_JVMTI=1"):
        assert want in argv
    assert argv[-1] == "perf"
    amd = toolsimage.perf_argv(AMD64, Path("/t"), Path("/o"), 2)
    assert "NO_LIBELF=1" not in amd and not any(a.startswith("CROSS_COMPILE") for a in amd)
    assert toolsimage.perf_env(ARM64)["PKG_CONFIG_LIBDIR"] == "/usr/lib/aarch64-linux-gnu/pkgconfig"


def test_perf_objdir_is_under_cache_and_per_tree(tmp_path, monkeypatch):
    monkeypatch.setenv("NEONVM_KERNEL_CACHE", str(tmp_path))
    a = toolsimage.perf_objdir(AMD64, Path("/trees/a"))
    assert a.parent == tmp_path / "perf" and a.name.startswith("amd64-")
    assert a != toolsimage.perf_objdir(AMD64, Path("/trees/b"))
    assert a != toolsimage.perf_objdir(ARM64, Path("/trees/a"))


def _kb(tmp_path, arch=ARM64):
    tree, build = tmp_path / "tree", tmp_path / "build"
    tree.mkdir(exist_ok=True)
    build.mkdir(exist_ok=True)
    (tree / "Makefile").write_text("VERSION = 6\n")
    os.utime(tree / "Makefile", (1600000000, 1600000000))
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    (out / "manifest.json").write_text(json.dumps({
        "arch": arch.name, "variant": "smoke", "version": "6.12.117", "kernelrelease": RELEASE,
        "tree": str(tree), "build_dir": str(build),
        "make_vars": ["ARCH=arm64", "CROSS_COMPILE=aarch64-linux-gnu-", "EXTRAVERSION=-neonvm"]}))
    return out


def test_kbuild_argvs_carry_the_kernels_make_vars(tmp_path, monkeypatch):
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    kb = toolsimage.KernelBuild.from_out(ARM64, _kb(tmp_path))
    assert kb.source_date_epoch == 1600000000
    assert toolsimage.kbuild_argv(kb, "-s", "kernelrelease") == [
        "make", "-C", str(tmp_path / "build"), "ARCH=arm64", "CROSS_COMPILE=aarch64-linux-gnu-",
        "EXTRAVERSION=-neonvm", "-s", "kernelrelease"]
    argv = toolsimage.extmod_argv(kb, Path("/stage/lib/modules/x/build"))
    assert argv[-2] == "run-command"
    assert argv[-1] == ("KBUILD_RUN_COMMAND=$(srctree)/scripts/package/install-extmod-build "
                        "/stage/lib/modules/x/build")


def test_source_date_epoch_env_wins(tmp_path, monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1234")
    assert toolsimage.KernelBuild.from_out(ARM64, _kb(tmp_path)).source_date_epoch == 1234


def test_manifest_validation(tmp_path):
    with pytest.raises(SourceMissing, match="build the kernel first"):
        toolsimage.KernelBuild.from_out(AMD64, tmp_path)
    out = _kb(tmp_path)
    with pytest.raises(InvalidArgument, match="is for arm64, not amd64"):
        toolsimage.KernelBuild.from_out(AMD64, out)
    data = json.loads((out / "manifest.json").read_text())
    del data["make_vars"]
    (out / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(InvalidArgument, match="lacks make_vars"):
        toolsimage.KernelBuild.from_out(ARM64, out)


def test_mkfs_argv_pins_everything():
    argv = toolsimage.mkfs_argv(Path("/f"), blocks=1000, inodes=50, label="vm-tools", fs_uuid="U", hash_seed="H")
    assert argv[0] == "mkfs.ext4" and argv[-2:] == ["/f", "1000"]
    assert ["-L", "vm-tools"] == argv[argv.index("-L"):argv.index("-L") + 2]
    assert "hash_seed=H,root_owner=0:0" in argv[argv.index("-E") + 1]
    assert ["-U", "U"] == argv[argv.index("-U"):argv.index("-U") + 2]


def test_sfdisk_script_gpt_is_fixed():
    text = toolsimage.sfdisk_script(label_id="aa-bb", partitions=[
        {"start": 2048, "size": 100, "uuid": "cc-dd", "name": "vm-tools"}])
    assert text == ("label: gpt\nlabel-id: AA-BB\nunit: sectors\nsector-size: 512\n\n"
                    "start=2048, size=100, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, uuid=CC-DD, "
                    "name=\"vm-tools\"\n")


def test_image_layout_aligns_and_leaves_room_for_backup_gpt():
    start, size, total = toolsimage.image_layout(10 * 1024 * 1024)
    assert start == 2048 and size == 20480
    assert total % (1 << 20) == 0
    assert total - (start + size) * 512 >= 34 * 512
    # a filesystem that ends exactly on a MiB boundary still gets a MiB for the backup GPT
    assert toolsimage.image_layout(1 << 20)[2] == 3 << 20


def test_feature_dump_parsing(tmp_path):
    (tmp_path / "FEATURE-DUMP").write_text("feature-libelf=1\nfeature-dwarf=0\nother=1\n")
    assert toolsimage.read_feature_dump(tmp_path) == {"libelf": True, "dwarf": False}
    assert toolsimage.read_feature_dump(tmp_path / "none") == {}


# -- tree, sizing, scripts -----------------------------------------------------------------------------
def test_scan_tree_orders_parents_first_and_normalises_modes(tmp_path):
    root = fake_tree(tmp_path / "t", AMD64)
    entries = toolsimage.scan_tree(root)
    paths = [e.path for e in entries]
    assert paths.index("lib") < paths.index("lib/modules") < paths.index(f"lib/modules/{RELEASE}")
    by = {e.path: e for e in entries}
    assert by["bin/perf"].mode == 0o755 and by["include/asm/unistd.h"].mode == 0o644
    assert by[f"lib/modules/{RELEASE}/build/usr/include"].kind == "symlink"
    assert toolsimage.scan_tree(root) == entries


def test_scan_tree_rejects_unstorable_names(tmp_path):
    (tmp_path / "a b").write_text("x")
    with pytest.raises(InvalidArgument, match="whitespace"):
        toolsimage.scan_tree(tmp_path)


def test_debugfs_script_works_in_each_parent(tmp_path):
    root = tmp_path / "r"
    (root / "bin").mkdir(parents=True)
    (root / "bin" / "perf").write_bytes(b"x")
    (root / "bin" / "perf").chmod(0o755)
    (root / "include").mkdir()
    os.symlink("../bin/perf", root / "include" / "p")
    script = toolsimage.debugfs_script(toolsimage.scan_tree(root), root)
    assert script.splitlines() == [
        "cd /", "mkdir bin", "cd /bin", f"write {root}/bin/perf perf", "sif perf mode 0100755",
        "cd /", "mkdir include", "cd /include", "symlink p ../bin/perf"]


def test_estimate_counts_blocks_and_inodes():
    E = toolsimage.Entry
    entries = [E("bin", "dir"), E("bin/perf", "file", 10 * 1024 + 1), E("l", "symlink", 80, target="x" * 80)]
    geo = toolsimage.estimate(entries, block_size=1024)
    # 11 data blocks + 1 long symlink + 2 directories (root, bin)
    assert geo.data_blocks == 14
    assert geo.inodes == 3 + 16
    assert geo.headroom_blocks == toolsimage.HEADROOM_MIN_BLOCKS


def test_debugfs_error_filter():
    out = "debugfs 1.47.0 (5-Feb-2023)\ndebugfs: write a b\nAllocated inode: 12\nwrite: Could not allocate block\n"
    assert toolsimage._debugfs_errors(out) == ["write: Could not allocate block"]


# -- images ------------------------------------------------------------------------------------------------
def test_image_is_deterministic_and_sized_to_content(tmp_path):
    tree = fake_tree(tmp_path / "t1", AMD64)
    big = tree / "include" / "linux" / "big.h"
    big.write_bytes(os.urandom(6 << 20))  # something sizeable so the ratio means something
    for i in range(300):
        (tree / "include" / "linux" / f"h{i}.h").write_text(f"#define H{i} {i}\n" * (i % 50 + 1))
    out1 = fake_out(tmp_path / "o1", AMD64)
    info1 = package(tree, out1, AMD64)
    # the same content staged again later (new inode times, new directory order) gives the same bytes
    tree2 = tmp_path / "t2"
    shutil.copytree(tree, tree2, symlinks=True)
    os.utime(tree2 / "bin" / "perf", (1, 1))
    out2 = fake_out(tmp_path / "o2", AMD64)
    info2 = package(tree2, out2, AMD64)
    assert info1.sha256 == info2.sha256
    assert (out1 / "tools.img").read_bytes() == (out2 / "tools.img").read_bytes()
    # no temporary files left behind
    assert sorted(p.name for p in out1.iterdir() if p.name.startswith(".tools.img")) == []
    m = json.loads((out1 / "tools-manifest.json").read_text())
    assert m["image"]["sha256"] == info1.sha256 and m["image"]["partition_table"] == "gpt"
    assert m["source_date_epoch"] == SOURCE_DATE
    # size: content + headroom + metadata, within the bound
    assert info1.size <= 1.15 * info1.apparent_size + m["filesystem"]["metadata_bytes"]
    assert m["filesystem"]["free_blocks"] * m["filesystem"]["block_size"] <= max(
        0.05 * info1.apparent_size, 2 << 20)
    listing = (out1 / toolsimage.FILES_NAME).read_text().splitlines()
    assert any(line.startswith("r\t") and line.endswith("\tbin/perf") for line in listing)


def test_a_different_release_gives_different_uuids(tmp_path):
    tree = fake_tree(tmp_path / "t", AMD64)
    a = package(tree, fake_out(tmp_path / "a", AMD64), AMD64)
    b = package(tree, fake_out(tmp_path / "b", AMD64), AMD64, release="6.12.117-other")
    assert a.sha256 != b.sha256


def test_failed_image_build_leaves_nothing_that_looks_valid(tmp_path, monkeypatch):
    tree = fake_tree(tmp_path / "t", AMD64)
    out = fake_out(tmp_path / "o", AMD64)
    package(tree, out, AMD64)

    def broken(*a, **kw):
        raise OSError("disk full")

    monkeypatch.setattr(toolsimage, "copy_into", broken)
    with pytest.raises(OSError):
        package(tree, out, AMD64)
    leftovers = [p.name for p in out.iterdir() if p.name.endswith(".tmp")]
    assert leftovers == []
    # the old image may stay, but never beside a manifest that vouches for it
    assert not (out / "tools-manifest.json").exists()


# -- ELF ----------------------------------------------------------------------------------------------------
def _parse(data: bytes) -> elf.ElfInfo:
    return elf.parse(lambda off, n: data[off:off + n], len(data))


@pytest.mark.parametrize("elf_class", [1, 2])
@pytest.mark.parametrize("little", [True, False])
def test_elf_static_and_dynamic(elf_class, little):
    static = _parse(elf.build_minimal(machine=183, elf_class=elf_class, little_endian=little))
    assert static.e_machine == 183 and static.static and static.elf_class == elf_class
    dyn = _parse(elf.build_minimal(machine=62, interpreter="/lib/ld.so", needed=3, elf_class=elf_class,
                                   little_endian=little))
    assert dyn.interpreter == "/lib/ld.so" and dyn.needed_count == 3 and not dyn.static


def test_elf_static_pie_with_dynamic_but_no_needed_is_static():
    info = _parse(elf.build_minimal(machine=62, needed=0) )
    assert info.static
    data = elf.build_minimal(machine=62, needed=1)
    # rewrite the single DT_NEEDED into DT_DEBUG (21): a PT_DYNAMIC without dependencies
    pos = data.index(struct.pack("<qQ", 1, 1))
    data = data[:pos] + struct.pack("<qQ", 21, 0) + data[pos + 16:]
    info = _parse(data)
    assert info.has_dynamic and info.static


def test_elf_rejects_garbage_and_truncation():
    with pytest.raises(elf.InvalidElf, match="not an ELF"):
        _parse(b"#!/bin/sh\n" + b"\0" * 100)
    data = elf.build_minimal(machine=62)
    with pytest.raises(elf.InvalidElf, match="truncated"):
        _parse(data[:70])
    with pytest.raises(elf.InvalidElf, match="truncated"):
        _parse(data[:10])


def test_elf_on_real_host_binaries():
    dyn = elf.parse_file("/bin/sh")
    assert dyn.e_machine == AMD64.elf_machine and not dyn.static
    busybox = Path("/bin/busybox")
    if busybox.is_file() and elf.parse_file(busybox).interpreter is None:
        assert elf.parse_file(busybox).static


def test_fake_perf_is_what_the_inspection_expects():
    assert _parse(fake_perf(ARM64)).e_machine == ARM64.elf_machine
