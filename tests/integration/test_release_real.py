"""The release formats for real: the smoke kernels as the OCI image layout NeonVM consumes, read by
skopeo, unpacked by umoci, the controller's init-container command run inside it; published to a
registry started on loopback and pulled back by digest; and ccache's remote storage shared through a
Redis started on loopback."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import ccache_counters
import pytest

from harness import ccache, layout, oci
from harness.arch import ARCHES, get_arch
from harness.compute import binfmt
from harness.errors import InfraError
from harness.kernel import build

pytestmark = pytest.mark.integration


def _need(*tools: str) -> None:
    missing = [t for t in tools if not shutil.which(t)]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed (./bootstrap installs them: configs/host-packages.txt)")


def _free_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as s:
        return int(s.getsockname()[1])


def _wait_port(port: int, proc_: subprocess.Popen[bytes], what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc_.poll() is not None:
            pytest.fail(f"{what} exited {proc_.returncode} at start")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    pytest.fail(f"{what} did not listen on 127.0.0.1:{port} within {timeout}s")


def _stop(p: subprocess.Popen[bytes]) -> None:
    p.terminate()
    try:
        p.wait(timeout=10)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()


# -- the OCI layout of the smoke kernels --------------------------------------------------------------
@pytest.fixture(scope="session")
def smoke_layout(smoke_tools, tmp_path_factory) -> oci.Layout:
    _need("umoci", "skopeo")
    dest = tmp_path_factory.mktemp("release") / "oci"
    started = time.monotonic()
    lay = oci.write_layout([(ARCHES[a], smoke_tools[a]) for a in ("amd64", "arm64")], dest, log=dest.parent / "oci.log")
    print(f"\nOCI layout of both smoke kernels written in {time.monotonic() - started:.1f}s "
          f"({lay.durations})", file=sys.stderr)
    return lay


def test_skopeo_reads_the_index_and_both_images(smoke_layout, smoke_tools):
    seen = oci.inspect(smoke_layout, log=smoke_layout.path.parent / "oci.log")
    for arch in ("amd64", "arm64"):
        info = seen[arch]
        kernel = json.loads((smoke_tools[arch] / "manifest.json").read_text())
        assert info["Architecture"] == arch and info["Os"] == "linux"
        assert info["Labels"]["tech.neon.vm-kernel.kernel-release"] == kernel["kernelrelease"]
        assert info["Labels"]["tech.neon.vm-kernel.config-sha256"] == kernel["config_sha256"]
        assert info["Labels"]["tech.neon.vm-kernel.source-sha256"] == kernel["source"]["sha256"]
        assert info["Env"] == ["PATH=/bin"]
    raw = json.loads(subprocess.run(["skopeo", "inspect", "--raw", f"oci:{smoke_layout.path}:{smoke_layout.tag}"],
                                    capture_output=True, text=True, check=True).stdout)
    assert [m["platform"] for m in raw["manifests"]] == [{"architecture": "amd64", "os": "linux"},
                                                         {"architecture": "arm64", "os": "linux"}]


def _unpacked(lay: oci.Layout, arch: str, dest: Path) -> tuple[Path, dict[str, str]]:
    """umoci unpack (rootless) of one arch's image -> (rootfs, the image config's environment)."""
    bundle = dest / f"bundle-{arch}"
    subprocess.run(["umoci", "unpack", "--rootless", "--image", f"{lay.path}:{lay.images[arch].tag}", bundle],
                   check=True, capture_output=True)
    rootfs = bundle / "rootfs"
    env = dict(e.split("=", 1) for e in json.loads((bundle / "config.json").read_text())["process"]["env"])
    assert sorted(p.name for p in rootfs.iterdir()) == ["bin", "tools.img", "vmlinuz"]
    assert os.readlink(rootfs / "bin" / "cp") == "busybox"
    (rootfs / "vm" / "images").mkdir(parents=True)  # where the controller mounts the VM's images volume
    return rootfs, env


def _chroot_cp(rootfs: Path, env: dict[str, str], interpreter: list[str]) -> subprocess.CompletedProcess[str]:
    if os.geteuid() != 0:
        pytest.skip("chroot needs root (CI runs as root)")
    # exactly the controller's init container: command ["cp", "/vmlinuz", "/vm/images/vmlinuz"], with
    # the image's PATH; the environment of the host is left out
    command = [*interpreter, *oci.INIT_COMMAND[1:]] if interpreter else list(oci.INIT_COMMAND)
    return subprocess.run([shutil.which("chroot") or "/usr/sbin/chroot", rootfs, *command],
                          env=env, capture_output=True, text=True, timeout=120)


def test_init_container_cp_amd64(smoke_layout, smoke_tools, tmp_path):
    rootfs, env = _unpacked(smoke_layout, "amd64", tmp_path)
    cp = _chroot_cp(rootfs, env, [])
    assert cp.returncode == 0, cp.stderr
    assert (rootfs / "vm/images/vmlinuz").read_bytes() == (smoke_tools["amd64"] / "vmlinuz").read_bytes()


def _qemu_aarch64() -> tuple[list[str], str]:
    """How to run an arm64 binary inside a chroot here: ([], why) through binfmt_misc, or the static
    qemu-aarch64 to copy in: installed, or qemu-user-static's binary from Debian's archive fetched once
    into the cache (harness.compute.binfmt, which the arm64 compute image uses too)."""
    if Path("/proc/sys/fs/binfmt_misc/qemu-aarch64").exists():
        return [], "binfmt_misc"
    try:
        path = binfmt.qemu_user_static(binfmt.handler(get_arch("arm64")))
    except InfraError as exc:  # no archive reachable: an unpack-only proof, said so
        pytest.skip(f"no way to run arm64 code here (no binfmt_misc, no qemu-user-static; fetching it failed: "
                    f"{exc}); the arm64 image was unpacked and checked, its cp not run")
    return [str(path)], f"static qemu-aarch64 ({path})"


def test_init_container_cp_arm64(smoke_layout, smoke_tools, tmp_path):
    rootfs, env = _unpacked(smoke_layout, "arm64", tmp_path)
    assert (rootfs / "vmlinuz").read_bytes() == (smoke_tools["arm64"] / "vmlinuz").read_bytes()
    interpreter, how = _qemu_aarch64()
    if interpreter:  # no binfmt_misc: the emulator runs the image's own arm64 busybox cp inside the chroot
        shutil.copy2(interpreter[0], rootfs / ".qemu-aarch64-static")
        # qemu does not search PATH: resolve the command through the image's PATH, as the kernel's
        # binfmt handler would have been handed it, and keep argv[0] (busybox picks the applet by it)
        name = oci.INIT_COMMAND[0]
        found = next(f"{d}/{name}" for d in env["PATH"].split(":") if (rootfs / d.lstrip("/") / name).exists())
        interpreter = ["/.qemu-aarch64-static", "-0", name, found]
    cp = _chroot_cp(rootfs, env, interpreter)
    assert cp.returncode == 0, f"{how}: {cp.stderr}"
    assert (rootfs / "vm/images/vmlinuz").read_bytes() == (smoke_tools["arm64"] / "vmlinuz").read_bytes()


# -- publish through a registry on loopback -----------------------------------------------------------
@pytest.fixture
def registry(tmp_path) -> Iterator[tuple[str, tuple[str, str] | None]]:
    """Debian's docker-registry on 127.0.0.1:<free port> with its own config and storage; with basic
    auth (htpasswd, bcrypt) when this Python can make a bcrypt hash."""
    _need("docker-registry", "skopeo")
    port = _free_port()
    creds: tuple[str, str] | None = None
    auth = ""
    try:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            import crypt
        hashed = crypt.crypt("s3cret-pw", crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=16))
        if hashed and hashed.startswith("$2"):
            (tmp_path / "htpasswd").write_text(f"neon:{hashed}\n")
            auth = f"auth:\n  htpasswd:\n    realm: test\n    path: {tmp_path / 'htpasswd'}\n"
            creds = ("neon", "s3cret-pw")
    except ImportError:
        pass
    config = tmp_path / "registry.yml"
    config.write_text(f"version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: "
                      f"{tmp_path / 'storage'}\nhttp:\n  addr: 127.0.0.1:{port}\n{auth}")
    with open(tmp_path / "registry.log", "wb") as log:
        p = subprocess.Popen(["docker-registry", "serve", str(config)], stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_port(port, p, "docker-registry")
        yield f"127.0.0.1:{port}", creds
    finally:
        _stop(p)


def _publish(lay: oci.Layout, ref: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "harness", "publish", ref, "--layout", str(lay.path), "--unverified"],
                          env={**os.environ, **env}, capture_output=True, text=True, cwd=layout.REPO, timeout=600)


def test_publish_round_trips_through_a_loopback_registry(smoke_layout, registry, tmp_path):
    host, creds = registry
    ref = f"{host}/neonvm/vm-kernel"
    no_creds = {oci.REGISTRY_USER_ENV: "", oci.REGISTRY_PASSWORD_ENV: ""}
    if creds:  # without credentials the registry refuses, in one line naming the step and the log
        denied = _publish(smoke_layout, ref, no_creds)
        assert denied.returncode == 2 and denied.stderr.startswith("error: [publish] skopeo copy to"), denied.stderr
        assert len(denied.stderr.strip().splitlines()) == 1 and "(log: " in denied.stderr
    env = {oci.REGISTRY_USER_ENV: creds[0], oci.REGISTRY_PASSWORD_ENV: creds[1]} if creds else no_creds
    started = time.monotonic()
    pushed = _publish(smoke_layout, ref, env)
    took = time.monotonic() - started
    assert pushed.returncode == 0, pushed.stderr
    assert smoke_layout.index.digest in pushed.stdout
    log = smoke_layout.path.parent / "publish.log"
    if creds:
        for text in (pushed.stdout, pushed.stderr, log.read_text()):
            assert creds[1] not in text, "the password was printed"
    # pull everything back into a new layout and compare by digest
    pulled = tmp_path / "pulled"
    src_auth = ["--src-creds", f"{creds[0]}:{creds[1]}"] if creds else []
    subprocess.run(["skopeo", "copy", "--all", "--preserve-digests", "--src-tls-verify=false", *src_auth,
                    f"docker://{ref}:{smoke_layout.tag}", f"oci:{pulled}:{smoke_layout.tag}"],
                   check=True, capture_output=True, timeout=600)
    back = {d.tag: d for d in oci.read_index(pulled)}
    assert back[smoke_layout.tag].digest == smoke_layout.index.digest
    local = {p.name for p in (smoke_layout.path / "blobs" / "sha256").iterdir()}
    remote = {p.name for p in (pulled / "blobs" / "sha256").iterdir()}
    assert remote == local, "the registry's index, manifests, configs and layers are the published ones"
    for arch, d in smoke_layout.images.items():
        info = json.loads(subprocess.run(
            ["skopeo", "inspect", "--tls-verify=false", *(["--creds", ":".join(creds)] if creds else []),
             f"docker://{ref}@{d.digest}"],
            capture_output=True, text=True, check=True).stdout)
        assert info["Digest"] == d.digest and info["Architecture"] == arch
    print(f"\npublished and pulled back {ref}:{smoke_layout.tag} (push {took:.1f}s, auth: {bool(creds)})",
          file=sys.stderr)


# -- a compile cache shared through Redis ------------------------------------------------------------
N_OBJECTS = 24


def _project(root: Path) -> Path:
    """A small C project (N objects) that make compiles with ``$(CC)``."""
    root.mkdir(parents=True)
    (root / "common.h").write_text("#define SCALE 3\nint helper(int);\n")
    for i in range(N_OBJECTS):
        (root / f"f{i}.c").write_text(f'#include "common.h"\nint f{i}(int x) {{ return helper(x) * SCALE + {i}; }}\n')
    objs = " ".join(f"f{i}.o" for i in range(N_OBJECTS))
    (root / "Makefile").write_text(f"all: {objs}\n%.o: %.c common.h\n\t$(CC) -O2 -c $< -o $@\n")
    return root


def _make(root: Path, ccache_dir: Path, extra_env: dict[str, str] | None = None) -> dict[str, int]:
    ccache._checked.cache_clear()  # a new build process: the remote is probed again
    env = {**os.environ, **build.make_env(), "CCACHE_DIR": str(ccache_dir), **(extra_env or {})}
    env.pop("CCACHE_DISABLE", None)
    subprocess.run(["make", "-j2", "CC=ccache gcc"], cwd=root, env=env, check=True, capture_output=True, timeout=300)
    return ccache_counters.stats({"CCACHE_DIR": str(ccache_dir)})


@pytest.fixture
def redis(tmp_path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    _need("redis-server", "ccache")
    port = _free_port()
    p = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                          "--appendonly", "no", "--dir", str(tmp_path)], stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    try:
        _wait_port(port, p, "redis-server")
        yield f"redis://127.0.0.1:{port}", p
    finally:
        _stop(p)


def test_a_fresh_build_gets_its_objects_from_the_shared_redis_cache(redis, tmp_path, monkeypatch, capfd):
    url, server = redis
    # the two "runners": separate build directories and empty local caches, one remote
    monkeypatch.setenv("NEONVM_KERNEL_CACHE", str(tmp_path))  # CCACHE_BASEDIR: the paths below are relative
    monkeypatch.setenv(ccache.ENV, url)
    first = _make(_project(tmp_path / "build" / "runner-1"), tmp_path / "ccache-1")
    assert first["remote_storage_miss"] == N_OBJECTS and first["remote_storage_write"] >= N_OBJECTS
    second = _make(_project(tmp_path / "build" / "runner-2"), tmp_path / "ccache-2")
    assert second["local_storage_miss"] == N_OBJECTS, "the second runner's local cache was empty"
    rate = ccache_counters.remote_hit_rate(second)
    with capfd.disabled():
        print(f"\nremote (Redis) hit rate of the second build: {rate:.0%} ({second['remote_storage_hit']} of "
              f"{N_OBJECTS} objects)", file=sys.stderr)
    assert second["remote_storage_hit"] == N_OBJECTS and rate == 1.0
    assert capfd.readouterr().err.count("warning: [ccache]") == 0

    # the remote goes down: the build goes on with the local cache only, and says so once
    _stop(server)
    third = _make(_project(tmp_path / "build" / "runner-3"), tmp_path / "ccache-3")
    assert third["cache_miss"] == N_OBJECTS and third["remote_storage_error"] == 0, "ccache never tried the remote"
    err = capfd.readouterr().err
    assert err.count("warning: [ccache] remote cache") == 1 and "local cache only" in err
