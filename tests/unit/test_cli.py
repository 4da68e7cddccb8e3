"""``python -m harness build``: every bad input exits non-zero with one line naming the step (and log)."""
from __future__ import annotations

import json

import pytest
from build_fakes import PATCH_ADD, PATCH_BAD, VERSION, tool_bin

from harness.cli import main
from harness.fsutil import exclusive_lock, sha256_file
from harness.kernel import kconfig, source
from harness.layout import CONFIGS

BAD_SHA = "0" * 64


def run(capsys, *argv):
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def build_args(*extra, arch="amd64", variant="test"):
    return ["build", "--arch", arch, "--variant", variant, "--no-ccache", *extra]


def local(tarball, sha=None, version=VERSION):
    return ["--source", str(tarball.path), "--sha256", sha or tarball.sha256, "--kernel-version", version]


def error_line(err):
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, err
    return lines[0]


def test_build_with_a_local_tarball(world, fake_tarball, capsys):
    rc, out, err = run(capsys, *build_args(*local(fake_tarball)))
    dest = world.out / "test-amd64"  # out/<variant>-<arch> for a non-production variant
    assert rc == 0, err
    assert out == f"built 6.12.117-neonvm-test -> {dest}\n"
    manifest = json.loads((dest / "manifest.json").read_text())
    assert manifest["source"]["sha256"] == fake_tarball.sha256
    assert manifest["artifacts"]["vmlinuz"]["sha256"] == sha256_file(dest / "vmlinuz")


def test_build_the_repositorys_smoke_variant(world, fake_tarball, capsys, monkeypatch):
    """The real variants and fragments go through the fake tree (every option is satisfiable there)."""
    monkeypatch.setattr(kconfig, "CONFIGS", CONFIGS)
    monkeypatch.setattr(kconfig, "FRAGMENTS", CONFIGS / "fragments")
    rc, out, err = run(capsys, *build_args(*local(fake_tarball), variant="smoke"))
    assert rc == 0, err
    dest = world.out / "smoke-amd64"
    assert out == f"built 6.12.117-neonvm-smoke -> {dest}\n"
    config = kconfig.parse_config_text((dest / "config").read_text())
    assert config["CONFIG_VIRTIO_MEM"] == "y" and config["CONFIG_IKHEADERS"] == "m"
    assert json.loads((dest / "manifest.json").read_text())["fragments"][0] == "configs/fragments/base.config"


def test_build_from_kernelorg(world, mirror, fake_tarball, capsys):
    mirror.publish(fake_tarball)
    world.write_pin(kernelorg_sha256=fake_tarball.sha256)
    rc, out, err = run(capsys, *build_args("--source", "kernelorg", "--out", str(world.tmp / "o")))
    assert rc == 0, err
    manifest = json.loads((world.tmp / "o" / "manifest.json").read_text())
    assert manifest["source"]["provider"] == "kernelorg" and manifest["source"]["origin"].startswith("http://127.0.0.1:")
    assert manifest["source"]["signature"].startswith("not run:")


# -- bad inputs ------------------------------------------------------------------------------------
BAD_INPUTS = {
    "unknown arch": (lambda w, t: build_args(*local(t), arch="sparc"),
                     "error: [arch] unknown architecture 'sparc' (known: amd64, arm64)"),
    "unknown variant": (lambda w, t: build_args(*local(t), variant="huge"),
                        "error: [config] unknown variant 'huge' (known: test, broken, production)"),
    "bad suffix": (lambda w, t: build_args(*local(t), "--suffix=-neon vm"),
                   "error: [build] bad version suffix '-neon vm'"),
    "bad jobs": (lambda w, t: build_args(*local(t), "-j", "0"), "error: [build] --jobs must be >= 1, not 0"),
    "malformed version": (lambda w, t: build_args(*local(t, version="6.12.x")),
                          "error: [source] malformed kernel version '6.12.x' (expected e.g. 6.12.117)"),
    "unknown version": (lambda w, t: build_args("--source", "kernelorg", "--kernel-version", "6.12.200"),
                        "error: [source] no sha256 recorded for kernel.org linux-6.12.200; pass --sha256"),
    "unknown provider spelled like a path": (
        lambda w, t: build_args("--source", "ftp", "--sha256", BAD_SHA),
        "error: [source] source tarball "),
    "missing source": (lambda w, t: build_args("--source", str(w.tmp / "linux-6.12.117.tar.xz"), "--sha256", BAD_SHA),
                       "error: [source] source tarball {tmp}/linux-6.12.117.tar.xz does not exist"),
    "checksum mismatch": (lambda w, t: build_args(*local(t, sha=BAD_SHA)),
                          "error: [source] local tarball {tarball} has sha256 {sha}, expected " + BAD_SHA),
    "malformed sha256": (lambda w, t: build_args(*local(t, sha="abc")),
                         "error: [source] --sha256 'abc' is not a sha256 hex digest"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_exits_2_with_one_line_naming_the_step(world, fake_tarball, capsys, case):
    args, expected = BAD_INPUTS[case]
    rc, out, err = run(capsys, *args(world, fake_tarball))
    assert rc == 2
    expected = expected.format(tmp=world.tmp, tarball=fake_tarball.path, sha=fake_tarball.sha256)
    assert error_line(err).startswith(expected)
    assert not list(world.out.rglob("manifest.json"))


def _fails(capsys, argv, prefix, log=None):
    rc, out, err = run(capsys, *argv)
    assert rc == 2, err
    line = error_line(err)
    assert line.startswith(prefix), line
    if log:
        assert line.endswith(f"(log: {log})"), line
    return line


def test_kernelorg_checksum_mismatch(world, mirror, fake_tarball, capsys):
    mirror.publish(fake_tarball, data=b"tampered")
    world.write_pin(kernelorg_sha256=fake_tarball.sha256)
    _fails(capsys, build_args("--source", "kernelorg"), "error: [source] download of http://127.0.0.1:")
    assert list(world.downloads.iterdir()) == []
    assert not list(world.out.rglob("manifest.json"))


def test_debian_version_mismatch(world, monkeypatch, capsys):
    monkeypatch.setattr(source, "dpkg_version", lambda pkg: "6.12.119-1")
    world.write_pin(provider="debian")
    line = _fails(capsys, build_args(), "error: [source] linux-source-6.12 6.12.119-1 is installed but "
                                        "6.12.117-1~deb12u1 is pinned")
    assert "'apt-get install linux-source-6.12=6.12.117-1~deb12u1'" in line
    assert "'nox -s upgrade -- 6.12.119 --debian-version 6.12.119-1'" in line


def test_truncated_tarball(world, fake_tarball, capsys):
    data = fake_tarball.path.read_bytes()
    bad = world.tmp / "linux-6.12.117.tar.xz"
    bad.write_bytes(data[: len(data) // 3])
    out = world.out / "test-amd64"
    _fails(capsys, build_args("--source", str(bad), "--sha256", sha256_file(bad)),
           f"error: [unpack] {bad} does not unpack", log=out / "logs" / "unpack.log")
    assert world.tree_dirs() == []


def test_tarball_of_another_version(world, capsys):
    tarball = world.pack(VERSION, makefile_version="6.12.118")
    _fails(capsys, build_args(*local(tarball)),
           f"error: [unpack] {tarball.path} contains linux 6.12.118, not the requested 6.12.117")
    assert world.tree_dirs() == []


def test_failing_patch(world, fake_tarball, capsys):
    world.add_patch("0001-add.patch", PATCH_ADD)
    world.add_patch("0002-bad.patch", PATCH_BAD)
    out = world.out / "test-amd64"
    _fails(capsys, build_args(*local(fake_tarball)),
           "error: [patch] 0002-bad.patch does not apply: hunk #1 of kernel/fork.c rejected at line 16",
           log=out / "logs" / "unpack.log")
    assert world.tree_dirs() == []


def test_missing_cross_compiler(world, fake_tarball, capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tool_bin(tmp_path / "bin", ("make", "flex", "bison", "bc", "tar", "patch"))))
    _fails(capsys, build_args(*local(fake_tarball), arch="arm64"),
           "error: [toolchain] required program 'aarch64-linux-gnu-gcc' not found on PATH")


def test_dropped_required_option(world, capsys):
    tarball = world.pack(unsatisfiable=("VIRTIO_MEM",))
    out = world.out / "test-amd64"
    line = _fails(capsys, build_args(*local(tarball)),
                  "error: [audit] amd64/test: CONFIG_VIRTIO_MEM: requested y, resolved n (absent) "
                  "(asked for at configs/fragments/virtio.config:5); why: VIRTIO_MEM=n <- VIRTIO=n",
                  log=out / "logs" / "config.log")
    assert "has no prompt, no default" in line
    assert not (out / "manifest.json").exists()


def test_failed_make(world, fake_tarball, capsys):
    out = world.out / "broken-amd64"
    _fails(capsys, build_args(*local(fake_tarball), variant="broken"), "error: [make] make failed: ",
           log=out / "logs" / "build.log")
    assert not (out / "manifest.json").exists()


def test_locked_output_directory(world, fake_tarball, capsys):
    out = world.tmp / "shared-out"
    with exclusive_lock(out / ".lock", step="test", what="another build"):
        _fails(capsys, build_args(*local(fake_tarball), "--out", str(out)),
               f"error: [build] output directory {out} is in use by another run")
    assert not (out / "manifest.json").exists() and not (out / "logs").exists()


def test_arm64_build(world, fake_tarball, capsys, cross_gcc):
    rc, out, err = run(capsys, *build_args(*local(fake_tarball), "--suffix=-neonvm-x", arch="aarch64"))
    assert rc == 0, err
    assert out == f"built 6.12.117-neonvm-x -> {world.out / 'test-arm64'}\n"


def test_inspect_out_with_two_arches_is_refused(capsys, tmp_path):
    _fails(capsys, ["inspect-tools", "amd64", "arm64", "--out", str(tmp_path)],
           "error: [inspect-tools] --out names one output directory")


def test_inspect_of_a_missing_image_says_so(capsys, tmp_path):
    rc, out, err = run(capsys, "inspect-tools", "amd64", "--out", str(tmp_path))
    assert rc == 1
    assert "FAIL  image-file" in out and "tools.img not found" in out
    assert json.loads((tmp_path / "inspect" / "results.json").read_text())["ok"] is False
