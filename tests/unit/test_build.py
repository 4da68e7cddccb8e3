"""harness/kernel/build.py: the whole pipeline on the fake kernel tree, its manifest, and its failures."""
from __future__ import annotations

import dataclasses
import io
import json
import os
import textwrap
import time

import pytest
from build_fakes import PATCH_NEW_FILE, VERSION, sha256, tool_bin

from harness.arch import get_arch
from harness.errors import BuildFailed, ConfigAuditFailed, InvalidArgument, Locked, ToolMissing
from harness.fsutil import exclusive_lock
from harness.kernel import build, kconfig

AMD64, ARM64 = get_arch("amd64"), get_arch("arm64")
HOST_TOOLS = ("make", "flex", "bison", "bc", "tar", "patch", "xz", "sh", "gcc", "ld")


# what every make of the harness passes so that host tools do not leak into the config
PROBES = ["RUSTC=/nonexistent/rustc", "BINDGEN=/nonexistent/bindgen", "PAHOLE=/nonexistent/pahole"]


def _manifest(out):
    return json.loads((out / "manifest.json").read_text())


def _add_many_objects_variant(world, n=60):
    """A variant whose config has more than 50 built-in options (the fake tree: one object each)."""
    (world.configs / "fragments" / "many.config").write_text("".join(f"CONFIG_FAKE_OBJ_{i}=y\n" for i in range(n)))
    with open(world.configs / "variants.toml", "a") as fh:
        fh.write(textwrap.dedent("""
            [many]
            base = "tinyconfig"
            fragments = ["base", "virtio", "arch/{arch}", "many"]
            suffix = "-neonvm-many"
            """))


# -- the request -------------------------------------------------------------------------------------
@pytest.mark.parametrize("suffix", ["has space", "-x" * 21, "semi;colon", "slash/", "$(shell id)", "ü"])
def test_bad_suffix_is_rejected(world, suffix):
    with pytest.raises(InvalidArgument) as exc:
        world.request(suffix=suffix)
    assert exc.value.step == "build" and str(exc.value).startswith(f"[build] bad version suffix {suffix!r}")


@pytest.mark.parametrize("suffix", ["", "-neonvm", "+1.2~rc_3", "x" * 40])
def test_good_suffixes(world, suffix):
    assert world.request(suffix=suffix).suffix == suffix


def test_request_defaults(world):
    req = world.request()
    assert req.suffix == "-neonvm-test"  # the variant's
    assert req.build_dir == world.cache / "build" / "amd64-test"
    with pytest.raises(InvalidArgument, match="--jobs must be >= 1, not 0"):
        world.request(jobs=0)


def test_build_argv(world, monkeypatch):
    req = world.request("arm64", jobs=3)
    assert build.build_argv(req, "Image", "modules") == [
        "make", f"O={req.build_dir}", "-j3", "ARCH=arm64", "CROSS_COMPILE=aarch64-linux-gnu-", *PROBES,
        "EXTRAVERSION=-neonvm-test", "Image", "modules"]
    monkeypatch.setattr(build.shutil, "which", lambda name: f"/usr/bin/{name}")
    req = world.request("amd64", use_ccache=True, suffix="-x")
    assert build.build_argv(req, "bzImage") == [
        "make", f"O={req.build_dir}", "-j2", "ARCH=x86_64", *PROBES, "EXTRAVERSION=-x", "CC=ccache gcc",
        "HOSTCC=ccache gcc", "bzImage"]
    monkeypatch.setattr(build.shutil, "which", lambda name: None)
    assert build.compiler_vars(world.request(use_ccache=True)) == []


def test_make_env_is_reproducible(world, tmp_path, monkeypatch):
    monkeypatch.delenv("KBUILD_BUILD_TIMESTAMP", raising=False)
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    env = build.make_env()
    assert env["KBUILD_BUILD_USER"] == "neonvm" and env["KBUILD_BUILD_HOST"] == "neonvm-harness"
    assert env["KBUILD_BUILD_TIMESTAMP"] == "2024-01-01 00:00:00 UTC" and env["CCACHE_BASEDIR"] == str(world.cache)
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "Makefile").write_text("VERSION = 6\n")
    os.utime(tree / "Makefile", (1_700_000_000, 1_700_000_000))
    assert build.make_env(tree)["KBUILD_BUILD_TIMESTAMP"] == "2023-11-14 22:13:20 UTC"  # the source date


def test_progress_counts_kbuild_lines(monkeypatch):
    stream, real = io.StringIO(), build.Progress
    monkeypatch.setattr(build, "Progress", lambda label: real(label, stream=stream, interval=0))
    p = build._MakeProgress("build amd64/test", expected=4)
    for line in ["make[1]: Entering directory '/o'", "  SYNC    include/config/auto.conf",
                 "  CC      kernel/fork.o", "  CC [M]  drivers/virtio/virtio_mem.o", "  LD [M]  fs/x.ko",
                 "Kernel: arch/x86/boot/bzImage is ready  (#1)", "", "kernel/fork.c:1: warning: x",
                 "***", "  AR      built-in.a"]:
        p(line + "\n")
    assert p.bar.count == 5
    assert stream.getvalue().splitlines()[-1].endswith("AR built-in.a (~99% of last build)")
    assert "CC [M] drivers/virtio/virtio_mem.o (~75% of last build)" in stream.getvalue()


def test_toolchain_says_what_is_not_installed(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tool_bin(tmp_path / "bin", ("make",))))
    tc = build.toolchain(ARM64)
    assert tc["make"].startswith("GNU Make")
    assert tc["cc"] == tc["ld"] == tc["ccache"] == "not installed"


# -- a whole fake build ----------------------------------------------------------------------------------
def test_successful_build_writes_a_complete_manifest(world, fake_tarball):
    patch = world.add_patch("0001-new-file.patch", PATCH_NEW_FILE)
    req = world.request(tarball=fake_tarball)
    manifest = build.build(req)
    out = world.out / "amd64"
    assert _manifest(out) == manifest
    assert manifest["arch"] == "amd64" and manifest["variant"] == "test"
    assert manifest["version"] == VERSION
    assert manifest["kernelrelease"] == "6.12.117-neonvm-test" and manifest["suffix"] == "-neonvm-test"
    assert manifest["source"] == {"provider": "local", "origin": str(fake_tarball.path),
                                  "path": str(fake_tarball.path), "sha256": fake_tarball.sha256,
                                  "version": VERSION, "sha256_from": "given"}
    assert manifest["patches"] == [{"name": "0001-new-file.patch", "sha256": sha256(patch)}]
    assert (world.trees / manifest["tree"]).joinpath("kernel/neonvm.c").is_file()
    assert manifest["fragments"] == ["configs/fragments/base.config", "configs/fragments/virtio.config",
                                     "configs/fragments/arch/amd64.config"]
    assert manifest["make_vars"] == ["ARCH=x86_64", *PROBES, "EXTRAVERSION=-neonvm-test"]
    assert set(manifest["toolchain"]) == {"cc", "ld", "make", "ccache"}
    assert manifest["toolchain"]["cc"].startswith("gcc") and manifest["toolchain"]["make"].startswith("GNU Make")
    assert set(manifest["durations"]) == {"source", "unpack+patch", "config", "make", "collect"}
    makefile_mtime = int((world.trees / manifest["tree"] / "Makefile").stat().st_mtime)
    assert manifest["source_date_epoch"] == makefile_mtime  # the date the kernel baked in
    assert manifest["build_timestamp"] == time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(makefile_mtime))
    durations = manifest["durations"]
    assert all(isinstance(d, float) and 0 <= d < 60 for d in durations.values()), durations  # a fake tree
    assert durations["make"] > 0  # the fake make really ran (it writes every object)
    # the artifacts are the build's, and their recorded hashes match the files
    bdir = req.build_dir
    for name, built in (("vmlinuz", bdir / "arch/x86/boot/bzImage"), ("System.map", bdir / "System.map"),
                        ("config", bdir / ".config")):
        assert (out / name).read_bytes() == built.read_bytes()
        assert manifest["artifacts"][name] == {"sha256": sha256(out / name), "size": (out / name).stat().st_size}
    assert manifest["config_sha256"] == sha256(out / "config")
    resolved = kconfig.parse_config_text((out / "config").read_text())
    assert kconfig.audit(req.variant.requests(AMD64), resolved) == []
    image = (out / "vmlinuz").read_bytes()
    # the timestamp is the source date: the fake tarball's Makefile mtime (normalised to the epoch)
    assert image[0x202:0x206] == b"HdrS" and (b"Linux version 6.12.117-neonvm-test (neonvm@neonvm-harness) #1 "
                                          b"1970-01-01 00:00:00 UTC") in image
    assert sorted(p.name for p in out.iterdir()) == [".lock", "System.map", "config", "logs", "manifest.json",
                                                     "vmlinuz"]  # nothing temporary left
    assert {"unpack.log", "config.log", "build.log"} <= {p.name for p in (out / "logs").iterdir()}
    assert "  CC      kernel/fork.o" in (out / "logs/build.log").read_text()


def test_arm64_cross_build(world, fake_tarball, cross_gcc):
    manifest = build.build(world.request("arm64", tarball=fake_tarball, suffix="-custom"))
    out = world.out / "arm64"
    assert manifest["kernelrelease"] == "6.12.117-custom"
    assert manifest["make_vars"] == ["ARCH=arm64", "CROSS_COMPILE=aarch64-linux-gnu-", *PROBES,
                                     "EXTRAVERSION=-custom"]
    assert manifest["toolchain"]["cc"] == "aarch64-linux-gnu-gcc (fakelinux) 12.2.0"
    assert manifest["toolchain"]["ld"] == "aarch64-linux-gnu-ld (fakelinux) 12.2.0"
    assert (out / "vmlinuz").read_bytes()[0x38:0x3c] == b"ARM\x64"
    assert "CONFIG_EFI=y" in (out / "config").read_text() and "CONFIG_ACPI=y" not in (out / "config").read_text()
    assert manifest["fragments"][-1] == "configs/fragments/arch/arm64.config"


def test_progress_counter_counts_the_builds_objects(world, fake_tarball, capsys):
    _add_many_objects_variant(world)
    req = world.request(variant="many", tarball=fake_tarball)
    build.build(req)
    log = (world.out / "amd64/logs/build.log").read_text()
    objects = [line for line in log.splitlines() if build._KBUILD_LINE.match(line)]
    assert len(objects) > 60
    counter = req.build_dir / ".harness-object-count"
    assert counter.read_text() == str(len(objects))
    err = capsys.readouterr().err
    assert f"build amd64/many: {len(objects)} objects in " in err and "of last build" not in err
    build.build(world.request(variant="many", tarball=fake_tarball))  # the next build estimates from it
    assert "% of last build)" in capsys.readouterr().err
    counter.write_text("")  # as an interrupted write leaves it: ignored, not trusted
    build.build(world.request(variant="many", tarball=fake_tarball))
    assert "of last build" not in capsys.readouterr().err
    log = (world.out / "amd64/logs/build.log").read_text()
    assert counter.read_text() == str(sum(1 for line in log.splitlines() if build._KBUILD_LINE.match(line)))


def test_failed_build_leaves_no_manifest(world, fake_tarball):
    build.build(world.request(tarball=fake_tarball))
    out = world.out / "amd64"
    assert (out / "manifest.json").is_file()
    for name in ("tools.img", "tools-manifest.json", "tools-files.tsv"):  # the previous kernel's image
        (out / name).write_text("old")
    with pytest.raises(BuildFailed) as exc:
        build.build(world.request(variant="broken", tarball=fake_tarball, out=out))
    log = out / "logs" / "build.log"
    assert exc.value.step == "make" and exc.value.log == log
    assert str(exc.value).startswith("[make] make failed: ")
    assert "kernel/fork.c:12:9: error: 'fake_break_build' undeclared" in str(exc.value)
    assert str(exc.value).endswith(f"(log: {log})")
    assert not (out / "manifest.json").exists()
    assert not [p.name for p in out.glob("tools*")], "a tools image of another kernel left beside this build"


def test_concurrent_build_on_one_output_directory_is_refused(world, fake_tarball):
    out = world.out / "amd64"
    build.build(world.request(tarball=fake_tarball))
    before = (out / "manifest.json").read_bytes()
    with exclusive_lock(out / ".lock", step="test", what="the other run"):
        with pytest.raises(Locked) as exc:
            build.build(world.request(tarball=fake_tarball))
    assert exc.value.step == "build"
    assert f"output directory {out} is in use by another run (pid {os.getpid()})" in str(exc.value)
    assert (out / "manifest.json").read_bytes() == before  # the other run's result is untouched


def test_concurrent_build_in_one_build_directory_is_refused(world, fake_tarball):
    req = world.request(tarball=fake_tarball)
    with exclusive_lock(req.build_dir.with_name(req.build_dir.name + ".lock"), step="test", what="x"):
        with pytest.raises(Locked, match=f"build directory {req.build_dir} is in use"):
            build.build(req)
    assert not (world.out / "amd64" / "manifest.json").exists()


def test_missing_cross_compiler(world, fake_tarball, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tool_bin(tmp_path / "bin", HOST_TOOLS)))
    with pytest.raises(ToolMissing) as exc:
        build.build(world.request("arm64", tarball=fake_tarball))
    assert str(exc.value) == ("[toolchain] required program 'aarch64-linux-gnu-gcc' not found on PATH; "
                              "install gcc-aarch64-linux-gnu (./bootstrap does)")
    assert not (world.out / "arm64" / "manifest.json").exists() and world.tree_dirs() == []


def test_missing_host_tool(world, fake_tarball, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tool_bin(tmp_path / "bin", tuple(t for t in HOST_TOOLS if t != "flex"))))
    with pytest.raises(ToolMissing, match="'flex' not found on PATH; run ./bootstrap"):
        build.build(world.request(tarball=fake_tarball))


def test_dropped_required_option_fails_the_audit(world):
    tarball = world.pack(unsatisfiable=("CONFIG_VIRTIO_MEM",))
    req = world.request(tarball=tarball)
    with pytest.raises(ConfigAuditFailed) as exc:
        build.build(req)
    log = world.out / "amd64" / "logs" / "config.log"
    assert exc.value.step == "audit" and exc.value.log == log
    msg = str(exc.value)
    assert msg.startswith("[audit] amd64/test: CONFIG_VIRTIO_MEM: requested y, resolved n (absent) "
                          "(asked for at configs/fragments/virtio.config:5); why: VIRTIO_MEM=n <- VIRTIO=n has "
                          "no prompt, no default")
    assert msg.endswith(f"(log: {log})")
    assert not (world.out / "amd64" / "manifest.json").exists()
    assert not (req.build_dir / ".config").exists()  # the dropped config never reached the build directory


def test_committed_variant_needs_its_committed_config(world, fake_tarball):
    with pytest.raises(ConfigAuditFailed) as exc:
        build.build(world.request(variant="production", tarball=fake_tarball))
    assert ("no committed config linux-config-amd64-6.12.117 for 6.12.117; create it with 'nox -s update-configs'"
            in str(exc.value))
    # a committed config that is not what the fragments resolve to
    committed = world.configs / "linux-config-amd64-6.12.117"
    resolved = world.cache / "kconfig" / "amd64-production" / ".config"
    committed.write_text(resolved.read_text().replace("CONFIG_VIRTIO_BALLOON=m", "CONFIG_VIRTIO_BALLOON=y"))
    log = world.out / "amd64" / "logs" / "config.log"
    with pytest.raises(ConfigAuditFailed) as exc:
        build.build(world.request(variant="production", tarball=fake_tarball))
    assert str(exc.value) == ("[config] committed linux-config-amd64-6.12.117 differs from what the fragments "
                              "resolve to (1 option(s)); review and commit with 'nox -s update-configs' "
                              f"(log: {log})")
    assert " VIRTIO_BALLOON y -> m" in log.read_text()
    committed.write_text(resolved.read_text())
    manifest = build.build(world.request(variant="production", tarball=fake_tarball))
    assert manifest["kernelrelease"] == "6.12.117-neonvm"


def test_missing_image_after_make(world, fake_tarball):
    req = world.request(tarball=fake_tarball)
    req.arch = dataclasses.replace(AMD64, image_path="arch/x86/boot/nothing")
    with pytest.raises(BuildFailed) as exc:
        build.build(req)
    assert exc.value.step == "collect"
    assert f"make succeeded but {req.build_dir / 'arch/x86/boot/nothing'} is missing" in str(exc.value)
    assert not (world.out / "amd64" / "manifest.json").exists()


def test_an_image_without_its_header_is_not_collected(world, fake_tarball):
    req = world.request(tarball=fake_tarball)
    req.arch = dataclasses.replace(AMD64, image_magic=(0x202, b"HdrT"))
    with pytest.raises(BuildFailed) as exc:
        build.build(req)
    assert exc.value.step == "collect" and "is not a amd64 boot image (b'HdrT' expected at 0x202" in str(exc.value)
    assert not (world.out / "amd64" / "vmlinuz").exists()
    assert not (world.out / "amd64" / "manifest.json").exists()


def test_a_second_build_reuses_tree_and_config(world, fake_tarball):
    first = build.build(world.request(tarball=fake_tarball))
    second = build.build(world.request(tarball=fake_tarball))
    assert second["tree"] == first["tree"] and len(world.tree_dirs()) == 1
    assert second["artifacts"] == first["artifacts"]  # reproducible
    assert not (world.out / "amd64/logs/unpack.log").exists()  # nothing unpacked the second time
