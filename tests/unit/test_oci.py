"""The OCI image: config and annotations from the manifest, the index over the arches, registry
references and credentials; and, where umoci (and skopeo) are installed, a real layout of small fake
artifacts, written twice byte-identically and read back."""
from __future__ import annotations

import json
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from harness import oci
from harness.arch import get_arch
from harness.errors import CommandFailed, InvalidArgument, SourceMissing
from harness.fsutil import sha256_file

AMD64, ARM64 = get_arch("amd64"), get_arch("arm64")
EPOCH = 1731500000


def layout_sha256s(layout: Path) -> dict[str, str]:
    """sha256 of every file of a layout (by relative path), to compare two layouts."""
    return {str(p.relative_to(layout)): sha256_file(p) for p in sorted(layout.rglob("*")) if p.is_file()}


def _spec(arch=AMD64, **kw) -> oci.ImageSpec:
    base = dict(arch=arch, kernelrelease="6.12.117-neonvm", version="6.12.117", variant="production",
                source_sha256="5" * 64, config_sha256="c" * 64, source_date=EPOCH,
                busybox_deb=f"busybox-static_1:1.35.0-4_{arch.name}.deb", revision="abc123",
                source="https://example.org/neonvm-kernel")
    base.update(kw)
    return oci.ImageSpec(**base)


def test_annotations_use_oci_keys_and_project_labels():
    a = _spec().annotations()
    assert a["org.opencontainers.image.version"] == "6.12.117-neonvm"
    assert a["org.opencontainers.image.revision"] == "abc123"
    assert a["org.opencontainers.image.source"] == "https://example.org/neonvm-kernel"
    assert a["org.opencontainers.image.created"] == "2024-11-13T12:13:20Z"
    assert a["tech.neon.vm-kernel.kernel-release"] == "6.12.117-neonvm"
    assert a["tech.neon.vm-kernel.source-sha256"] == "5" * 64
    assert a["tech.neon.vm-kernel.config-sha256"] == "c" * 64
    assert list(a) == sorted(a)
    bare = _spec(revision="", source="").annotations()
    assert "org.opencontainers.image.revision" not in bare and "org.opencontainers.image.source" not in bare


def test_config_argv_sets_platform_created_env_cmd_labels_and_annotations(tmp_path):
    spec = _spec(ARM64)
    argv = spec.config_argv(tmp_path / "L", "build-arm64")
    assert argv[:6] == ["umoci", "config", "--image", f"{tmp_path / 'L'}:build-arm64", "--tag", "6.12.117-neonvm-arm64"]
    pairs = list(zip(argv[6:], argv[7:], strict=False))
    assert ("--architecture", "arm64") in pairs and ("--os", "linux") in pairs
    assert ("--created", "2024-11-13T12:13:20Z") in pairs and ("--config.env", "PATH=/bin") in pairs
    assert [v for k, v in pairs if k == "--config.cmd"] == ["cp", "/vmlinuz", "/vm/images/vmlinuz"]
    labels = [v for k, v in pairs if k == "--config.label"]
    assert labels == [v for k, v in pairs if k == "--manifest.annotation"]
    assert f"tech.neon.vm-kernel.busybox={spec.busybox_deb}" in labels


def test_index_lists_each_arch_with_its_platform_and_shares_common_annotations():
    specs = [_spec(AMD64), _spec(ARM64)]
    images = {a: oci.Descriptor(oci.MEDIA_MANIFEST, f"sha256:{c * 64}", 100 + i, f"6.12.117-neonvm-{a}")
              for i, (a, c) in enumerate((("amd64", "a"), ("arm64", "b")))}
    doc = oci.index_document(specs, images)
    assert doc["mediaType"] == oci.MEDIA_INDEX and doc["schemaVersion"] == 2
    assert doc["manifests"] == [
        {"mediaType": oci.MEDIA_MANIFEST, "digest": "sha256:" + "a" * 64, "size": 100,
         "platform": {"architecture": "amd64", "os": "linux"}},
        {"mediaType": oci.MEDIA_MANIFEST, "digest": "sha256:" + "b" * 64, "size": 101,
         "platform": {"architecture": "arm64", "os": "linux"}},
    ]
    ann = doc["annotations"]
    assert ann["org.opencontainers.image.version"] == "6.12.117-neonvm"
    assert "tech.neon.vm-kernel.busybox" not in ann, "differs per arch: not an index annotation"


@pytest.mark.parametrize(("ref", "expected"), [
    ("127.0.0.1:5000/neonvm/vm-kernel", ("127.0.0.1:5000", "127.0.0.1:5000/neonvm/vm-kernel:6.12.117-neonvm")),
    ("ghcr.io/neon/vm-kernel:v1", ("ghcr.io", "ghcr.io/neon/vm-kernel:v1")),
    ("docker://localhost/vm-kernel", ("localhost", "localhost/vm-kernel:6.12.117-neonvm")),
    ("registry:5000/a/b:c", ("registry:5000", "registry:5000/a/b:c")),
])
def test_split_reference(ref, expected):
    assert oci.split_reference(ref, "6.12.117-neonvm") == expected


@pytest.mark.parametrize("ref", ["vm-kernel", "neon/vm-kernel:1", "ghcr.io/", "ghcr.io/x@sha256:" + "0" * 64])
def test_split_reference_refuses_what_is_not_registry_repo_tag(ref):
    with pytest.raises(InvalidArgument, match="REGISTRY/REPOSITORY"):
        oci.split_reference(ref, "t")


def test_tls_is_relaxed_only_for_loopback():
    assert oci._is_loopback("127.0.0.1:5000") and oci._is_loopback("localhost") and oci._is_loopback("[::1]:5000")
    assert not oci._is_loopback("ghcr.io") and not oci._is_loopback("10.0.0.1:5000")


def test_credentials_go_to_a_private_auth_file(monkeypatch):
    monkeypatch.delenv(oci.REGISTRY_USER_ENV, raising=False)
    monkeypatch.delenv(oci.REGISTRY_PASSWORD_ENV, raising=False)
    with oci._authfile("r.example") as opts:
        assert opts == []
    monkeypatch.setenv(oci.REGISTRY_USER_ENV, "neon")
    with pytest.raises(InvalidArgument, match="both"), oci._authfile("r.example"):
        pass
    monkeypatch.setenv(oci.REGISTRY_PASSWORD_ENV, "s3cret")
    with oci._authfile("r.example") as opts:
        path = Path(opts[1])
        assert opts[0] == "--authfile" and stat.S_IMODE(path.stat().st_mode) == 0o600
        assert "s3cret" not in " ".join(opts)
        auth = json.loads(path.read_text())["auths"]["r.example"]["auth"]
        assert auth == "bmVvbjpzM2NyZXQ="  # base64 of neon:s3cret
    assert not path.exists()


def test_skopeos_fatal_line_is_the_error(tmp_path):
    log = tmp_path / "publish.log"
    log.write_text('time="x" level=warning msg="Failed, retrying in 1s ... Error: a"\n'
                   'time="y" level=fatal msg="copying image: unauthorized: \\"neon\\" may not push"\n### exit 1\n')
    assert oci._skopeo_fatal(log) == 'copying image: unauthorized: "neon" may not push'
    assert oci._skopeo_fatal(tmp_path / "none") == ""


def test_source_url_never_carries_credentials(monkeypatch):
    monkeypatch.delenv("GITHUB_SERVER_URL", raising=False)
    monkeypatch.setattr(oci.proc, "capture", lambda argv, step: "https://user:tok@git.example/neon/k.git\n")
    assert oci.source_url() == "https://git.example/neon/k.git"
    monkeypatch.setenv("GITHUB_SERVER_URL", "https://github.com")
    monkeypatch.setenv("GITHUB_REPOSITORY", "neon/k")
    assert oci.source_url() == "https://github.com/neon/k"


# -- a real layout of fake artifacts (umoci; skopeo for the read-back) ----------------------------------
needs_umoci = pytest.mark.skipif(not shutil.which("umoci"), reason="umoci is not installed (./bootstrap installs it)")


def _fake_out(root: Path, arch, release: str = "6.12.117-neonvm") -> Path:
    out = root / arch.name
    out.mkdir(parents=True)
    (out / "vmlinuz").write_bytes(f"kernel {arch.name}".encode() * 100)
    (out / "tools.img").write_bytes(b"\0" * 4096 + arch.name.encode())
    (out / "manifest.json").write_text(json.dumps({
        "arch": arch.name, "kernelrelease": release, "version": "6.12.117", "variant": "smoke",
        "config_sha256": "c" * 64, "source": {"sha256": "5" * 64}, "source_date_epoch": EPOCH}))
    return out


@pytest.fixture
def fake_world(tmp_path, monkeypatch):
    busybox = tmp_path / "busybox"
    busybox.write_bytes(b"\x7fELF fake busybox")
    busybox.chmod(0o755)
    monkeypatch.setattr(oci, "busybox", lambda arch: (busybox, f"busybox-static_1:1.35.0_{arch.name}.deb"))
    monkeypatch.setattr(oci, "git_revision", lambda: "abc123")
    monkeypatch.setattr(oci, "source_url", lambda: "")
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    return [(AMD64, _fake_out(tmp_path / "out", AMD64)), (ARM64, _fake_out(tmp_path / "out", ARM64))]


@needs_umoci
def test_layout_is_written_reproducibly_and_read_back(fake_world, tmp_path):
    a = oci.write_layout(fake_world, tmp_path / "a" / "oci", log=tmp_path / "oci.log")
    b = oci.write_layout(fake_world, tmp_path / "b" / "oci", log=tmp_path / "oci.log")
    assert layout_sha256s(a.path) == layout_sha256s(b.path)
    tags = {d.tag: d.media_type for d in oci.read_index(a.path)}
    assert tags == {"6.12.117-neonvm-amd64": oci.MEDIA_MANIFEST, "6.12.117-neonvm-arm64": oci.MEDIA_MANIFEST,
                    "6.12.117-neonvm": oci.MEDIA_INDEX}
    index = json.loads(oci.blob_path(a.path, a.index.digest).read_bytes())
    assert [m["platform"]["architecture"] for m in index["manifests"]] == ["amd64", "arm64"]
    manifest = json.loads(oci.blob_path(a.path, a.images["arm64"].digest).read_bytes())
    config = json.loads(oci.blob_path(a.path, manifest["config"]["digest"]).read_bytes())
    assert config["architecture"] == "arm64" and config["os"] == "linux" and config["created"] == "2024-11-13T12:13:20Z"
    assert config["config"]["Labels"]["tech.neon.vm-kernel.config-sha256"] == "c" * 64
    assert manifest["annotations"]["org.opencontainers.image.revision"] == "abc123"
    assert len(manifest["layers"]) == 1
    assert not [p for p in (tmp_path / "a").iterdir() if p.name != "oci"], "scratch left beside the layout"
    if shutil.which("skopeo"):
        oci.inspect(a, log=tmp_path / "oci.log")
        cp = subprocess.run(["skopeo", "inspect", "--override-arch", "arm64", f"oci:{a.path}:{a.tag}"],
                            capture_output=True, text=True, check=True)
        assert json.loads(cp.stdout)["Digest"] == a.index.digest


@needs_umoci
def test_a_failed_layout_leaves_the_older_one_in_place(fake_world, tmp_path):
    dest = tmp_path / "rel" / "oci"
    first = oci.write_layout(fake_world, dest, log=tmp_path / "oci.log")
    before = layout_sha256s(dest)
    (fake_world[1][1] / "tools.img").unlink()
    with pytest.raises(SourceMissing, match="tools.img"):
        oci.write_layout(fake_world, dest, log=tmp_path / "oci.log")
    assert layout_sha256s(dest) == before and first.path == dest
    assert sorted(p.name for p in dest.parent.iterdir()) == ["oci"]


@needs_umoci
def test_umoci_failure_is_one_line_naming_the_step_and_log(fake_world, tmp_path, monkeypatch):
    real = oci.ImageSpec.config_argv
    monkeypatch.setattr(oci.ImageSpec, "config_argv",
                        lambda self, layout, tag: [*real(self, layout, tag), "--created", "not a date"])
    with pytest.raises(CommandFailed) as err:
        oci.write_layout(fake_world, tmp_path / "x" / "oci", log=tmp_path / "oci.log")
    assert str(err.value).startswith("[oci] umoci exited") and "\n" not in str(err.value)
    assert f"(log: {tmp_path / 'oci.log'})" in str(err.value)
    assert not (tmp_path / "x" / "oci").exists()


def test_arches_of_different_releases_make_no_index(tmp_path, monkeypatch):
    monkeypatch.setattr(oci, "busybox", lambda arch: (tmp_path, "bb.deb"))
    monkeypatch.setattr(oci, "git_revision", lambda: "")
    monkeypatch.setattr(oci, "source_url", lambda: "")
    monkeypatch.setattr(oci.proc, "require_tool", lambda *a, **k: "/usr/bin/umoci")
    items = [(AMD64, _fake_out(tmp_path, AMD64)), (ARM64, _fake_out(tmp_path, ARM64, release="6.12.118-neonvm"))]
    with pytest.raises(InvalidArgument, match="different kernel releases"):
        oci.write_layout(items, tmp_path / "oci", log=tmp_path / "oci.log")
    assert not (tmp_path / "oci").exists()
