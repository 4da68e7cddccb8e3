"""harness/kernel/source.py: the pin, the providers (local, kernel.org, Debian) and their verification."""
from __future__ import annotations

import os
import socket

import pytest
from build_fakes import DEBIAN_PACKAGE, DEBIAN_VERSION, VERSION

from harness.errors import (
    ChecksumMismatch,
    InfraError,
    InvalidArgument,
    InvalidVersion,
    SourceMissing,
    SourceVersionMismatch,
)
from harness.kernel import source
from harness.layout import CONFIGS

BAD_SHA = "0" * 64


# -- versions and the pin ---------------------------------------------------------------------------
@pytest.mark.parametrize("version, parsed", [("6.12.117", (6, 12, 117)), ("6.12", (6, 12, 0)),
                                             ("10.0.1", (10, 0, 1))])
def test_parse_version(version, parsed):
    assert source.parse_version(version) == parsed


@pytest.mark.parametrize("version", ["", "6", "6.12.x", "v6.12.117", "6.12.117-rc1", "6.12.117 ",
                                     "6..117", "6.12.117.1", "latest"])
def test_malformed_version_is_rejected(version):
    with pytest.raises(InvalidVersion) as exc:
        source.parse_version(version)
    assert exc.value.step == "source"
    assert repr(version) in str(exc.value) and str(exc.value).startswith("[source] malformed kernel version")


def test_resolve_rejects_a_malformed_version_before_any_provider(world, tmp_path):
    with pytest.raises(InvalidVersion):
        source.resolve(world.pin(), version="6.12.x", provider="kernelorg", log=tmp_path / "source.log")
    assert not world.downloads.exists()


def test_the_repository_pin_loads():
    pin = source.Pin.load()
    source.parse_version(pin.version)
    assert pin.provider in source.PROVIDERS
    assert pin.path == CONFIGS / "kernel.toml"


def test_pin_with_malformed_version_is_rejected(tmp_path):
    p = tmp_path / "kernel.toml"
    p.write_text('version = "six"\nprovider = "debian"\n')
    with pytest.raises(InvalidVersion):
        source.Pin.load(p)


@pytest.mark.parametrize("text", [None, 'version = "6.12.117\n'])
def test_unreadable_pin_is_an_input_error(tmp_path, text):
    p = tmp_path / "kernel.toml"
    if text is not None:
        p.write_text(text)
    with pytest.raises(InvalidArgument) as exc:
        source.Pin.load(p)
    assert exc.value.step == "source" and str(p) in str(exc.value)


def test_only_the_pinned_version_has_recorded_checksums(world):
    pin = world.write_pin(kernelorg_sha256="a" * 64, debian_sha256="b" * 64)
    assert pin.known_sha256(VERSION) == {"kernelorg": "a" * 64, "debian": "b" * 64}
    assert pin.known_sha256("6.12.118") == {}


def test_unknown_provider(world, tmp_path):
    with pytest.raises(InvalidArgument, match="unknown source provider 'ftp'"):
        source.resolve(world.pin(), provider="ftp", log=tmp_path / "l")


def test_local_provider_needs_a_path(world, tmp_path):
    with pytest.raises(InvalidArgument, match="needs a tarball path"):
        source.resolve(world.pin(), provider="local", log=tmp_path / "l")


# -- local tarballs ---------------------------------------------------------------------------------
def test_local_tarball_with_given_sha256(world, fake_tarball, tmp_path):
    src = source.resolve(world.pin(), path=fake_tarball.path, sha256=fake_tarball.sha256.upper(),
                         log=tmp_path / "l")
    assert (src.provider, src.version, src.sha256) == ("local", VERSION, fake_tarball.sha256)
    prov = src.provenance()
    assert prov["sha256"] == fake_tarball.sha256 and prov["sha256_from"] == "given"
    assert prov["path"] == str(fake_tarball.path) and prov["version"] == VERSION


def test_local_tarball_matching_a_recorded_sha256(world, fake_tarball, tmp_path):
    pin = world.write_pin(kernelorg_sha256=fake_tarball.sha256, debian_sha256=BAD_SHA)
    src = source.resolve(pin, path=fake_tarball.path, log=tmp_path / "l")
    assert src.details == {"sha256_from": "recorded:kernelorg"}


def test_local_checksum_mismatch_names_the_file_and_both_hashes(world, fake_tarball, tmp_path):
    with pytest.raises(ChecksumMismatch) as exc:
        source.resolve(world.pin(), path=fake_tarball.path, sha256=BAD_SHA, log=tmp_path / "l")
    msg = str(exc.value)
    assert msg.startswith("[source] local tarball")
    assert str(fake_tarball.path) in msg and fake_tarball.sha256 in msg and BAD_SHA in msg


def test_local_tarball_matching_no_recorded_sha256(world, fake_tarball, tmp_path):
    pin = world.write_pin(kernelorg_sha256=BAD_SHA)
    with pytest.raises(ChecksumMismatch, match="none of the recorded ones for 6.12.117 \\(kernelorg\\)"):
        source.resolve(pin, path=fake_tarball.path, log=tmp_path / "l")


def test_local_tarball_of_an_unknown_version_needs_a_sha256(world, fake_tarball, tmp_path):
    pin = world.write_pin(kernelorg_sha256=fake_tarball.sha256)
    with pytest.raises(ChecksumMismatch, match="no sha256 known for a local 6.12.200 tarball; pass --sha256"):
        source.resolve(pin, version="6.12.200", path=fake_tarball.path, log=tmp_path / "l")


def test_missing_local_tarball(world, tmp_path):
    missing = tmp_path / "nowhere" / "linux-6.12.117.tar.xz"
    with pytest.raises(SourceMissing) as exc:
        source.resolve(world.pin(), path=missing, sha256=BAD_SHA, log=tmp_path / "l")
    assert exc.value.step == "source" and str(missing) in str(exc.value)


@pytest.mark.parametrize("sha", ["abc", "g" * 64, "0" * 63, "0" * 65])
def test_malformed_sha256_is_rejected(world, fake_tarball, tmp_path, sha):
    with pytest.raises(InvalidArgument, match="is not a sha256 hex digest"):
        source.resolve(world.pin(), path=fake_tarball.path, sha256=sha, log=tmp_path / "l")


# -- kernel.org -------------------------------------------------------------------------------------
def test_kernelorg_url(world):
    pin = world.write_pin()
    assert source.kernelorg_url(pin, "6.12.117") == f"{world.mirror_url}/v6.x/linux-6.12.117.tar.xz"


def test_kernelorg_download_is_verified_cached_and_read_only(world, mirror, fake_tarball, tmp_path):
    url = mirror.publish(fake_tarball)
    pin = world.write_pin(kernelorg_sha256=fake_tarball.sha256)
    src = source.resolve(pin, provider="kernelorg", log=tmp_path / "source.log")
    final = world.downloads / "linux-6.12.117.tar.xz"
    assert src.path == final and src.origin == url and src.sha256 == fake_tarball.sha256
    assert final.read_bytes() == fake_tarball.path.read_bytes()
    assert not os.access(final, os.W_OK) or os.geteuid() == 0
    assert oct(final.stat().st_mode & 0o777) == oct(0o444)
    assert [p.name for p in world.downloads.iterdir()] == [final.name]  # no .part left
    assert src.details["signature"].startswith("not run: no pinned keyring")
    # a second resolution trusts the verified download and does not fetch it again
    source.resolve(pin, provider="kernelorg", log=tmp_path / "source.log")
    assert len(mirror.tarball_requests()) == 1


def test_kernelorg_download_with_a_given_sha256(world, mirror, fake_tarball, tmp_path):
    mirror.publish(fake_tarball)
    src = source.resolve(world.pin(), provider="kernelorg", sha256=fake_tarball.sha256, log=tmp_path / "l")
    assert src.sha256 == fake_tarball.sha256


def test_kernelorg_checksum_mismatch_leaves_nothing_in_the_download_cache(world, mirror, fake_tarball,
                                                                          tmp_path):
    url = mirror.publish(fake_tarball, data=b"not the tarball that was pinned\n")
    pin = world.write_pin(kernelorg_sha256=fake_tarball.sha256)
    with pytest.raises(ChecksumMismatch) as exc:
        source.resolve(pin, provider="kernelorg", log=tmp_path / "l")
    assert exc.value.step == "source" and url in str(exc.value) and fake_tarball.sha256 in str(exc.value)
    assert mirror.tarball_requests() == ["/pub/linux/kernel/v6.x/linux-6.12.117.tar.xz"]
    assert list(world.downloads.iterdir()) == []  # the .part is gone, nothing was renamed into place


def test_kernelorg_missing_file_is_source_missing(world, mirror, tmp_path):
    with pytest.raises(SourceMissing, match="cannot download .*linux-6.12.117.tar.xz.*404"):
        source.resolve(world.pin(), provider="kernelorg", sha256=BAD_SHA, log=tmp_path / "l")
    assert list(world.downloads.iterdir()) == []


def test_kernelorg_unreachable_is_source_missing(world, tmp_path):
    with socket.socket() as sock:  # bound, not listening: connections are refused at once
        sock.bind(("127.0.0.1", 0))
        world.mirror_url = f"http://127.0.0.1:{sock.getsockname()[1]}/pub/linux/kernel"
        pin = world.write_pin()
        with pytest.raises(SourceMissing, match=f"cannot download {world.mirror_url}/v6.x/.*refused"):
            source.resolve(pin, provider="kernelorg", sha256=BAD_SHA, log=tmp_path / "l")
    assert list(world.downloads.iterdir()) == []


def test_kernelorg_unknown_version_without_sha256_downloads_nothing(world, mirror, fake_tarball, tmp_path):
    pin = world.write_pin(kernelorg_sha256=fake_tarball.sha256)
    with pytest.raises(ChecksumMismatch) as exc:
        source.resolve(pin, version="6.12.200", provider="kernelorg", log=tmp_path / "l")
    assert "no sha256 recorded for kernel.org linux-6.12.200; pass --sha256" in str(exc.value)
    assert mirror.requests == []


def test_kernelorg_corrupt_cached_download_is_fetched_again(world, mirror, fake_tarball, tmp_path):
    mirror.publish(fake_tarball)
    pin = world.write_pin(kernelorg_sha256=fake_tarball.sha256)
    world.downloads.mkdir(parents=True)
    cached = world.downloads / "linux-6.12.117.tar.xz"
    cached.write_bytes(b"truncated")
    cached.chmod(0o444)
    src = source.resolve(pin, provider="kernelorg", log=tmp_path / "l")
    assert src.path.read_bytes() == fake_tarball.path.read_bytes()
    assert len(mirror.tarball_requests()) == 1


def test_kernelorg_bad_signature_is_a_checksum_error(world, mirror, fake_tarball, tmp_path):
    """With a pinned keyring, sha256sums.asc is verified with gpgv; garbage does not verify."""
    mirror.publish(fake_tarball)
    sums = mirror.root / "pub/linux/kernel/v6.x/sha256sums.asc"
    sums.write_text(f"{fake_tarball.sha256}  linux-6.12.117.tar.xz\n")
    keyring = tmp_path / "empty-keyring.gpg"
    keyring.write_bytes(b"")
    pin = world.write_pin(kernelorg_sha256=fake_tarball.sha256, keyring=str(keyring))
    log = tmp_path / "source.log"
    with pytest.raises(ChecksumMismatch) as exc:
        source.resolve(pin, provider="kernelorg", log=log)
    assert str(exc.value).startswith("[source] bad signature on ") and exc.value.log == log
    assert "gpgv" in log.read_text()


# -- Debian's linux-source package -------------------------------------------------------------------
def test_debian_version_mismatch_says_how_to_install_or_move_the_pin(world, monkeypatch, tmp_path):
    monkeypatch.setattr(source, "dpkg_version", lambda pkg: "6.12.120-1~deb12u1")
    pin = world.write_pin(provider="debian")
    with pytest.raises(SourceVersionMismatch) as exc:
        source.resolve(pin, log=tmp_path / "l")
    msg = str(exc.value)
    assert msg.startswith("[source] linux-source-6.12 6.12.120-1~deb12u1 is installed but "
                          "6.12.117-1~deb12u1 is pinned")
    assert f"'apt-get install {DEBIAN_PACKAGE}={DEBIAN_VERSION}'" in msg
    assert "'nox -s upgrade -- 6.12.120 --debian-version 6.12.120-1~deb12u1'" in msg


def test_debian_package_not_installed(world, monkeypatch, tmp_path):
    monkeypatch.setattr(source, "dpkg_version", lambda pkg: None)
    with pytest.raises(SourceMissing, match=f"apt-get install {DEBIAN_PACKAGE}={DEBIAN_VERSION}"):
        source.resolve(world.write_pin(provider="debian"), log=tmp_path / "l")


def test_debian_other_version_than_pinned(world, monkeypatch, tmp_path):
    monkeypatch.setattr(source, "dpkg_version", lambda pkg: pytest.fail("dpkg asked"))
    with pytest.raises(InvalidVersion, match="pinned for 6.12.117, not 6.12.118.*nox -s upgrade -- 6.12.118"):
        source.resolve(world.write_pin(provider="debian"), version="6.12.118", log=tmp_path / "l")


def test_debian_tarball_is_verified(world, monkeypatch, fake_tarball, tmp_path):
    monkeypatch.setattr(source, "dpkg_version", lambda pkg: DEBIAN_VERSION)
    pin = world.write_pin(provider="debian", debian_tarball=fake_tarball.path, debian_sha256=fake_tarball.sha256)
    src = source.resolve(pin, log=tmp_path / "l")
    assert (src.provider, src.path, src.sha256) == ("debian", fake_tarball.path, fake_tarball.sha256)
    assert src.origin == f"deb:{DEBIAN_PACKAGE}={DEBIAN_VERSION}"
    pin = world.write_pin(provider="debian", debian_tarball=fake_tarball.path, debian_sha256=BAD_SHA)
    with pytest.raises(ChecksumMismatch, match="linux-source-6.12 6.12.117-1~deb12u1 tarball"):
        source.resolve(pin, log=tmp_path / "l")
    pin = world.write_pin(provider="debian", debian_tarball=fake_tarball.path)
    with pytest.raises(ChecksumMismatch, match="no sha256 recorded for linux-source-6.12"):
        source.resolve(pin, log=tmp_path / "l")


def test_debian_installed_but_tarball_missing(world, monkeypatch, tmp_path):
    monkeypatch.setattr(source, "dpkg_version", lambda pkg: DEBIAN_VERSION)
    with pytest.raises(SourceMissing, match="is installed but /nonexistent/linux-source-6.12.tar.xz is missing"):
        source.resolve(world.write_pin(provider="debian"), log=tmp_path / "l")


def test_debian_refuses_a_sha256(world, tmp_path):
    with pytest.raises(InvalidArgument, match="--sha256 applies to kernel.org and local tarballs"):
        source.resolve(world.write_pin(provider="debian"), sha256=BAD_SHA, log=tmp_path / "l")


# -- the version inside a tree ----------------------------------------------------------------------
def test_tarball_version_from_makefile():
    text = "# SPDX\nVERSION = 6\nPATCHLEVEL = 12\nSUBLEVEL = 117\nEXTRAVERSION =\nNAME = x\n"
    assert source.tarball_version_from_makefile(text) == "6.12.117"
    assert source.tarball_version_from_makefile(text.replace("SUBLEVEL = 117", "SUBLEVEL =")) == "6.12.0"
    with pytest.raises(InfraError, match="no PATCHLEVEL"):
        source.tarball_version_from_makefile("VERSION = 6\nSUBLEVEL = 1\n")


def test_partial_downloads_of_dead_runs_are_removed(tmp_path):
    dead = tmp_path / ".linux-6.12.117.tar.xz.999999999.part"
    alive = tmp_path / f".linux-6.12.117.tar.xz.{os.getpid()}.part"
    other = tmp_path / ".linux-6.12.118.tar.xz.999999999.part"
    for p in (dead, alive, other):
        p.write_bytes(b"partial")
    source._remove_abandoned_parts(tmp_path, "6.12.117")
    assert not dead.exists() and alive.exists() and other.exists()
