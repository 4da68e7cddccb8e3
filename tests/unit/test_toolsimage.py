"""Tools image (harness/tools/{kbuild,perf,staging,disk,image}.py): command lines, sizing, the
debugfs/sfdisk scripts, determinism and atomicity, and the ELF reader the inspection relies on. No
appliance, no kernel build."""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import struct
from pathlib import Path

import pytest
from tools_fakes import RELEASE, SOURCE_DATE, build_minimal_elf, fake_out, fake_perf, fake_tree, package

from harness import foreign
from harness.arch import ARCHES
from harness.boot import initramfs
from harness.errors import BuildFailed, InfraError, InvalidArgument, SourceMissing
from harness.tools import disk, elf, image, kbuild, perf, spec, staging

AMD64, ARM64 = ARCHES["amd64"], ARCHES["arm64"]


# -- command lines -------------------------------------------------------------------------------------
SYSROOT = foreign.Unpacked(Path("/c/foreign/arm64/perf-sysroot/root"), ("libtraceevent-dev_1%3a1.7.1-1_arm64.deb",))


def test_perf_argv_is_static_and_cross_for_arm64(tmp_path):
    argv = perf.perf_argv(ARM64, Path("/t"), Path("/o"), 2, SYSROOT)
    assert argv[:5] == ["make", "-C", "/t/tools/perf", "O=/o", "-j2"]
    for want in ("ARCH=arm64", "CROSS_COMPILE=aarch64-linux-gnu-", "LDFLAGS=-static", "NO_LIBELF=1", "NO_JVMTI=1",
                 "EXTRA_CFLAGS=-I/c/foreign/arm64/perf-sysroot/root/usr/include"):
        assert want in argv
    assert argv[-1] == "perf"
    amd = perf.perf_argv(AMD64, Path("/t"), Path("/o"), 2)
    assert "NO_LIBELF=1" not in amd and not any(a.startswith("CROSS_COMPILE") for a in amd)
    assert not any(a.startswith("EXTRA_CFLAGS") for a in amd)


def test_libtraceevent_is_built_in_on_both_arches():
    """Tracepoint events (perf stat -e sched:sched_switch) need libtraceevent: never switched off."""
    for arch in (AMD64, ARM64):
        assert not any("TRACEEVENT" in f for f in perf.perf_flags(arch, SYSROOT))
        assert "libtraceevent" not in {**perf.PERF_DISABLED, **dict(arch.perf_disabled)}
    assert "libtraceevent-dev" in ARM64.perf_sysroot_packages  # cross: from Debian's arm64 archive
    assert AMD64.perf_sysroot_packages == ()  # native: the host's (configs/host-packages.txt)
    host_packages = (Path(__file__).resolve().parents[2] / "configs" / "host-packages.txt").read_text()
    assert "libtraceevent-dev" in host_packages.split()


def test_perf_env_points_pkg_config_at_the_targets_own_files():
    assert perf.perf_env(AMD64) == {"PKG_CONFIG_LIBDIR": "/usr/lib/x86_64-linux-gnu/pkgconfig",
                                          "PKG_CONFIG_PATH": "", "PKG_CONFIG_SYSROOT_DIR": ""}
    assert perf.perf_env(ARM64, SYSROOT) == {
        "PKG_CONFIG_LIBDIR": "/c/foreign/arm64/perf-sysroot/root/usr/lib/aarch64-linux-gnu/pkgconfig",
        "PKG_CONFIG_PATH": "", "PKG_CONFIG_SYSROOT_DIR": "/c/foreign/arm64/perf-sysroot/root"}


def test_perf_sysroot_is_none_for_a_native_arch(monkeypatch):
    monkeypatch.setattr(foreign, "unpacked", lambda *a, **kw: pytest.fail("no fetch for amd64"))
    assert perf.perf_sysroot(AMD64) is None


def test_perf_objdir_is_under_cache_and_per_tree(tmp_path, monkeypatch):
    monkeypatch.setenv("NEONVM_KERNEL_CACHE", str(tmp_path))
    a = perf.perf_objdir(AMD64, Path("/trees/a"))
    assert a.parent == tmp_path / "perf" and a.name.startswith("amd64-")
    assert a == perf.perf_objdir(AMD64, Path("/trees/a"))
    assert a != perf.perf_objdir(AMD64, Path("/trees/b"))
    assert a != perf.perf_objdir(ARM64, Path("/trees/a"))


def test_perf_objdir_changes_with_flags_and_sysroot(tmp_path, monkeypatch):
    """A change of make variables, pkg-config environment or sysroot packages builds afresh."""
    monkeypatch.setenv("NEONVM_KERNEL_CACHE", str(tmp_path))
    base = perf.perf_objdir(ARM64, Path("/trees/a"), SYSROOT)
    assert base != perf.perf_objdir(ARM64, Path("/trees/a"))  # no sysroot
    newer = foreign.Unpacked(SYSROOT.root, ("libtraceevent-dev_1%3a1.8.0-1_arm64.deb",))
    assert base != perf.perf_objdir(ARM64, Path("/trees/a"), newer)
    assert base != perf.perf_objdir(dataclasses.replace(ARM64, perf_make_flags=()), Path("/trees/a"), SYSROOT)
    monkeypatch.setattr(perf, "PERF_FLAGS", (*perf.PERF_FLAGS, "NO_LIBTRACEEVENT=1"))
    assert base != perf.perf_objdir(ARM64, Path("/trees/a"), SYSROOT)


def test_build_perf_runs_with_the_sysroot_and_records_it(tmp_path, monkeypatch):
    monkeypatch.setenv("NEONVM_KERNEL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(perf, "perf_sysroot", lambda arch: SYSROOT)
    kb = kbuild.KernelBuild.from_out(ARM64, _kb(tmp_path))
    seen = {}

    def run(argv, *, env, **kw):
        seen.update(argv=argv, env=env)
        objdir = Path(argv[3][len("O="):])
        (objdir / "FEATURE-DUMP").write_text("feature-libtraceevent=1\nfeature-libelf=0\n")
        (objdir / "perf").write_bytes(fake_perf(ARM64))

    monkeypatch.setattr(perf.proc, "run", run)
    binary, info = perf.build_perf(kb, jobs=2, log=tmp_path / "perf.log")
    assert binary == perf.perf_objdir(ARM64, kb.tree, SYSROOT) / "perf"
    assert seen["argv"] == perf.perf_argv(ARM64, kb.tree, binary.parent, 2, SYSROOT)
    assert seen["env"] == perf.perf_env(ARM64, SYSROOT)
    assert "libtraceevent" in info["features_on"] and "libelf" in info["features_off"]
    assert info["sysroot_debs"] == list(SYSROOT.debs)
    assert info["make_flags"] == perf.perf_flags(ARM64, SYSROOT)
    assert set(info["disabled_by_harness"]) == {"libpython", "libperl", "jvmti", "libelf"}


# -- foreign packages (harness/foreign.py): the private apt state, the cache, static archives ---------
def _ar(members: dict[str, bytes]) -> bytes:
    """A GNU ar archive: a symbol-table stub, a long-name table, then the members."""
    longnames = b"".join(n.encode() + b"/\n" for n in members if len(n) > 15)
    out = [b"!<arch>\n"]

    def member(name: str, data: bytes) -> bytes:
        hdr = f"{name:<16}{0:<12}{0:<6}{0:<6}{644:<8}{len(data):<10}`\n".encode()
        assert len(hdr) == 60
        return hdr + data + (b"\n" if len(data) & 1 else b"")

    out.append(member("/", b"\0\0\0\0"))
    if longnames:
        out.append(member("//", longnames))
    for name, data in members.items():
        if len(name) > 15:
            name = f"/{longnames.index(name.encode())}"
        else:
            name += "/"
        out.append(member(name, data))
    return b"".join(out)


def test_ar_members_and_static_archive_check(tmp_path):
    lib = tmp_path / "libx.a"
    obj = build_minimal_elf(machine=ARM64.elf_machine) + b"\0"  # odd size: padded
    lib.write_bytes(_ar({"a.o": obj, "a-very-long-member-name.o": obj}))
    names = [n for n, _, _ in foreign.ar_members(lib)]
    assert names == ["/", "//", "a.o", "a-very-long-member-name.o"]  # long names resolved
    assert foreign.check_static_archive(lib, ARM64) == 2
    lib.write_bytes(_ar({"a.o": obj, "a-very-long-member-name.o": build_minimal_elf(machine=62)}))
    with pytest.raises(InfraError, match="member a-very-long-member-name.o is ELF machine 62"):
        foreign.check_static_archive(lib, ARM64)
    lib.write_bytes(_ar({"a.o": obj})[:-20])
    with pytest.raises(InfraError, match="runs past the end"):
        foreign.check_static_archive(lib, ARM64)
    lib.write_bytes(_ar({"readme": b"text"}))
    with pytest.raises(InfraError, match="no ELF objects"):
        foreign.check_static_archive(lib, ARM64)
    lib.write_bytes(b"!<thin>\n")
    with pytest.raises(InfraError, match="not an ar archive"):
        foreign.check_static_archive(lib, ARM64)


def test_static_archive_check_on_the_hosts_libtraceevent():
    lib = Path(f"/usr/lib/{AMD64.gnu_triplet}/libtraceevent.a")
    if not lib.is_file():
        pytest.skip("libtraceevent-dev is not installed (./bootstrap installs it)")
    assert foreign.check_static_archive(lib, AMD64) > 0
    with pytest.raises(InfraError, match="not 64-bit AArch64"):
        foreign.check_static_archive(lib, ARM64)


def test_download_and_unpack_uses_a_private_apt_state(tmp_path, monkeypatch):
    monkeypatch.setenv("NEONVM_KERNEL_CACHE", str(tmp_path))
    calls = []

    def run(argv, *, cwd=None, **kw):
        argv = [str(a) for a in argv]
        calls.append(argv)
        if "download" in argv:
            for pkg in argv[argv.index("download") + 1:]:
                (Path(cwd) / f"{pkg}_1.0_arm64.deb").write_bytes(b"deb")

    monkeypatch.setattr(foreign.proc, "run", run)
    debs = foreign.download_and_unpack("arm64", ["libtraceevent-dev", "zlib1g-dev"], tmp_path / "root",
                                       step="t", log=tmp_path / "log")
    assert debs == ["libtraceevent-dev_1.0_arm64.deb", "zlib1g-dev_1.0_arm64.deb"]
    apt = tmp_path / "foreign" / "arm64" / "apt"
    opts = ["-oAPT::Architecture=arm64", "-oAPT::Architectures=arm64", f"-oDir::State::Lists={apt}/lists",
            f"-oDir::Cache={apt}/cache"]
    assert calls[0] == ["apt-get", *opts, "update"]
    assert calls[1] == ["apt-get", *opts, "download", "libtraceevent-dev", "zlib1g-dev"]
    assert [c[0] for c in calls[2:]] == ["dpkg", "dpkg"] and all(c[-1] == str(tmp_path / "root") for c in calls[2:])


def _fake_download(counter):
    def download(debian_arch, packages, root, *, step, log):
        counter.append(list(packages))
        lib = Path(root) / "usr" / "lib" / "aarch64-linux-gnu"
        (lib / "pkgconfig").mkdir(parents=True)
        (lib / "pkgconfig" / "libtraceevent.pc").write_text("Name: libtraceevent\n")
        (lib / "libtraceevent.a").write_bytes(_ar({"a.o": build_minimal_elf(machine=ARM64.elf_machine)}))
        return [f"{p}_1.0_{debian_arch}.deb" for p in packages]
    return download


def test_perf_sysroot_is_fetched_once_checked_and_refetched_when_needed(tmp_path, monkeypatch):
    monkeypatch.setenv("NEONVM_KERNEL_CACHE", str(tmp_path))
    fetched = []
    monkeypatch.setattr(foreign, "download_and_unpack", _fake_download(fetched))
    s = perf.perf_sysroot(ARM64)
    assert s.root == tmp_path / "foreign" / "arm64" / perf.PERF_SYSROOT / "root"
    assert s.debs == ("libtraceevent-dev_1.0_arm64.deb",)
    assert perf.perf_sysroot(ARM64) == s and len(fetched) == 1  # cached
    # a cached archive that is no longer for the arch is fetched again
    (s.root / "usr" / "lib" / "aarch64-linux-gnu" / "libtraceevent.a").write_bytes(
        _ar({"a.o": build_minimal_elf(machine=62)}))
    assert perf.perf_sysroot(ARM64) == s and len(fetched) == 2
    # a changed package list is fetched again
    more = dataclasses.replace(ARM64, perf_sysroot_packages=("libtraceevent-dev", "zlib1g-dev"))
    assert perf.perf_sysroot(more).debs == ("libtraceevent-dev_1.0_arm64.deb", "zlib1g-dev_1.0_arm64.deb")
    assert fetched[-1] == ["libtraceevent-dev", "zlib1g-dev"]


def test_perf_sysroot_with_the_wrong_arch_is_refused_and_not_kept(tmp_path, monkeypatch):
    monkeypatch.setenv("NEONVM_KERNEL_CACHE", str(tmp_path))

    def download(debian_arch, packages, root, *, step, log):
        lib = Path(root) / "usr" / "lib" / "aarch64-linux-gnu"
        lib.mkdir(parents=True)
        (lib / "libtraceevent.a").write_bytes(_ar({"a.o": build_minimal_elf(machine=62)}))
        return ["libtraceevent-dev_1.0_amd64.deb"]

    monkeypatch.setattr(foreign, "download_and_unpack", download)
    with pytest.raises(InfraError, match="not 64-bit AArch64"):
        perf.perf_sysroot(ARM64)
    base = tmp_path / "foreign" / "arm64" / perf.PERF_SYSROOT
    assert not (base / "root").exists() and not (base / "packages.json").exists()


def test_fetch_busybox_goes_through_the_foreign_fetch(tmp_path, monkeypatch):
    monkeypatch.setenv("NEONVM_KERNEL_CACHE", str(tmp_path))
    asked = []

    def download(debian_arch, packages, root, *, step, log):
        asked.append((debian_arch, list(packages), step))
        (Path(root) / "bin").mkdir(parents=True)
        (Path(root) / "bin" / "busybox").write_bytes(build_minimal_elf(machine=ARM64.elf_machine))
        return ["busybox-static_1.35.0-4+b3_arm64.deb"]

    monkeypatch.setattr(foreign, "download_and_unpack", download)
    target = initramfs.fetch_busybox(ARM64)
    assert target == tmp_path / "busybox" / "arm64" / "busybox" and os.access(target, os.X_OK)
    assert asked == [("arm64", ["busybox-static"], "busybox-arm64")]
    assert (target.parent / "source.txt").read_text() == "busybox-static_1.35.0-4+b3_arm64.deb\n"
    assert initramfs.fetch_busybox(ARM64) == target and len(asked) == 1  # cached


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
    kb = kbuild.KernelBuild.from_out(ARM64, _kb(tmp_path))
    assert kb.source_date_epoch == 1600000000
    assert kbuild.kbuild_argv(kb, "-s", "kernelrelease") == [
        "make", "-C", str(tmp_path / "build"), "ARCH=arm64", "CROSS_COMPILE=aarch64-linux-gnu-",
        "EXTRAVERSION=-neonvm", "-s", "kernelrelease"]
    argv = kbuild.extmod_argv(kb, Path("/stage/lib/modules/x/build"))
    assert argv[-2] == "run-command"
    assert argv[-1] == ("KBUILD_RUN_COMMAND=$(srctree)/scripts/package/install-extmod-build "
                        "/stage/lib/modules/x/build")


def test_source_date_epoch_env_wins(tmp_path, monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1234")
    assert kbuild.KernelBuild.from_out(ARM64, _kb(tmp_path)).source_date_epoch == 1234


def test_manifest_validation(tmp_path):
    with pytest.raises(SourceMissing, match="build the kernel first"):
        kbuild.KernelBuild.from_out(AMD64, tmp_path)
    out = _kb(tmp_path)
    with pytest.raises(InvalidArgument, match="is for arm64, not amd64"):
        kbuild.KernelBuild.from_out(AMD64, out)
    data = json.loads((out / "manifest.json").read_text())
    del data["make_vars"]
    (out / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(InvalidArgument, match="lacks make_vars"):
        kbuild.KernelBuild.from_out(ARM64, out)


def test_mkfs_argv_pins_everything():
    argv = disk.mkfs_argv(Path("/f"), blocks=1000, inodes=50, label="vm-tools", fs_uuid="U", hash_seed="H")
    assert argv[0] == "mkfs.ext4" and argv[-2:] == ["/f", "1000"]
    assert ["-L", "vm-tools"] == argv[argv.index("-L"):argv.index("-L") + 2]
    assert "hash_seed=H,root_owner=0:0" in argv[argv.index("-E") + 1]
    assert ["-U", "U"] == argv[argv.index("-U"):argv.index("-U") + 2]


def test_sfdisk_script_gpt_is_fixed():
    text = disk.sfdisk_script(label_id="aa-bb", partitions=[
        {"start": 2048, "size": 100, "uuid": "cc-dd", "name": "vm-tools"}])
    assert text == ("label: gpt\nlabel-id: AA-BB\nunit: sectors\nsector-size: 512\n\n"
                    "start=2048, size=100, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, uuid=CC-DD, "
                    "name=\"vm-tools\"\n")


def test_image_layout_aligns_and_leaves_room_for_backup_gpt():
    start, size, total = disk.image_layout(10 * 1024 * 1024)
    assert start == 2048 and size == 20480
    assert total % (1 << 20) == 0
    assert total - (start + size) * 512 >= 34 * 512
    # a filesystem that ends exactly on a MiB boundary still gets a MiB for the backup GPT
    assert disk.image_layout(1 << 20)[2] == 3 << 20


def test_feature_dump_parsing(tmp_path):
    (tmp_path / "FEATURE-DUMP").write_text("feature-libelf=1\nfeature-dwarf=0\nother=1\n")
    assert perf.read_feature_dump(tmp_path) == {"libelf": True, "dwarf": False}
    assert perf.read_feature_dump(tmp_path / "none") == {}


# -- tree, sizing, scripts -----------------------------------------------------------------------------
def test_scan_tree_orders_parents_first_and_normalises_modes(tmp_path):
    root = fake_tree(tmp_path / "t", AMD64)
    entries = staging.scan_tree(root)
    paths = [e.path for e in entries]
    assert paths.index("lib") < paths.index("lib/modules") < paths.index(f"lib/modules/{RELEASE}")
    by = {e.path: e for e in entries}
    assert by["bin/perf"].mode == 0o755 and by["include/asm/unistd.h"].mode == 0o644
    assert by[f"lib/modules/{RELEASE}/build/usr/include"].kind == "symlink"
    assert staging.scan_tree(root) == entries


def test_scan_tree_rejects_unstorable_names(tmp_path):
    (tmp_path / "a b").write_text("x")
    with pytest.raises(InvalidArgument, match="whitespace"):
        staging.scan_tree(tmp_path)


def test_debugfs_script_works_in_each_parent(tmp_path):
    root = tmp_path / "r"
    (root / "bin").mkdir(parents=True)
    (root / "bin" / "perf").write_bytes(b"x")
    (root / "bin" / "perf").chmod(0o755)
    (root / "include").mkdir()
    os.symlink("../bin/perf", root / "include" / "p")
    script = disk.debugfs_script(staging.scan_tree(root), root)
    assert script.splitlines() == [
        "cd /", "mkdir bin", "cd /bin", f"write {root}/bin/perf perf", "sif perf mode 0100755",
        "cd /", "mkdir include", "cd /include", "symlink p ../bin/perf"]


def test_estimate_counts_blocks_and_inodes():
    E = staging.Entry
    entries = [E("bin", "dir"), E("bin/perf", "file", 10 * 1024 + 1), E("l", "symlink", 80, target="x" * 80)]
    geo = disk.estimate(entries, block_size=1024)
    # 11 data blocks + 1 long symlink + 2 directories (root, bin)
    assert geo.data_blocks == 14
    assert geo.inodes == 3 + 16
    assert geo.headroom_blocks == disk.HEADROOM_MIN_BLOCKS


def test_debugfs_error_filter():
    out = "debugfs 1.47.0 (5-Feb-2023)\ndebugfs: write a b\nAllocated inode: 12\nwrite: Could not allocate block\n"
    assert disk._debugfs_errors(out) == ["write: Could not allocate block"]


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
    # size: content + headroom + metadata, within the issue's bound
    assert info1.size <= 1.15 * info1.apparent_size + m["filesystem"]["metadata_bytes"]
    assert m["filesystem"]["free_blocks"] * m["filesystem"]["block_size"] <= max(
        0.05 * info1.apparent_size, 2 << 20)
    listing = (out1 / spec.FILES_NAME).read_text().splitlines()
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

    monkeypatch.setattr(disk, "copy_into", broken)
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
    static = _parse(build_minimal_elf(machine=183, elf_class=elf_class, little_endian=little))
    assert static.e_machine == 183 and static.static and static.elf_class == elf_class
    dyn = _parse(build_minimal_elf(machine=62, interpreter="/lib/ld.so", needed=3, elf_class=elf_class,
                                   little_endian=little))
    assert dyn.interpreter == "/lib/ld.so" and dyn.needed_count == 3 and not dyn.static


def test_elf_static_pie_with_dynamic_but_no_needed_is_static():
    info = _parse(build_minimal_elf(machine=62, needed=0))
    assert info.static
    data = build_minimal_elf(machine=62, needed=1)
    # rewrite the single DT_NEEDED into DT_DEBUG (21): a PT_DYNAMIC without dependencies
    pos = data.index(struct.pack("<qQ", 1, 1))
    data = data[:pos] + struct.pack("<qQ", 21, 0) + data[pos + 16:]
    info = _parse(data)
    assert info.needed_count == 0 and info.static


def test_elf_rejects_garbage_and_truncation():
    with pytest.raises(elf.InvalidElf, match="not an ELF"):
        _parse(b"#!/bin/sh\n" + b"\0" * 100)
    data = build_minimal_elf(machine=62)
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


def test_build_tools_image_records_step_durations_and_cleans_up(tmp_path, monkeypatch):
    """The orchestration (harness/tools/image.py) with the kernel-side steps faked."""
    out = _kb(tmp_path, AMD64)
    monkeypatch.setattr(image, "kernelrelease_of", lambda kb: RELEASE)
    monkeypatch.setattr(image, "build_perf", lambda kb, *, jobs, log: (tmp_path / "perf", {"features_on": []}))
    monkeypatch.setattr(image, "stage_tree", lambda kb, stage, perf, *, logs: fake_tree(stage, AMD64))
    img = image.build_tools_image(AMD64, out, jobs=1)
    assert img == out.resolve() / spec.IMAGE_NAME and img.is_file()
    m = json.loads((out / spec.MANIFEST_NAME).read_text())
    assert set(m["durations"]) == {"perf", "stage", "image"}
    assert m["perf"]["size"] == (fake_tree(tmp_path / "again", AMD64) / spec.PERF).stat().st_size
    assert not (out / ".tools-stage").exists()
    assert [p.name for p in out.iterdir() if p.name.endswith(".tmp")] == []


def test_build_tools_image_refuses_a_release_that_drifted(tmp_path, monkeypatch):
    out = _kb(tmp_path, AMD64)
    monkeypatch.setattr(image, "kernelrelease_of", lambda kb: "6.12.117-other")
    with pytest.raises(BuildFailed, match="make kernelrelease says '6.12.117-other'"):
        image.build_tools_image(AMD64, out, jobs=1)
    assert not (out / spec.IMAGE_NAME).exists()
