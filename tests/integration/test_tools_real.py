"""The real tools images: static perf from the real tree, the kernel's own module-build tree and
kheaders for the smoke kernels, built twice (byte-identical), then inspected in ONE launch."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from harness.arch import ARCHES
from harness.tools import disk, elf, inspect, spec
from harness.tools import image as toolsimage

pytestmark = pytest.mark.integration


@pytest.fixture(scope="session")
def tools_images(smoke_build) -> dict[str, Path]:
    """{arch: OUT} with tools.img built (perf objdirs under the cache make rebuilds incremental)."""
    out = {}
    for name in ("amd64", "arm64"):
        out_dir = smoke_build[name]
        toolsimage.build_tools_image(ARCHES[name], out_dir, jobs=2)
        out[name] = out_dir
    return out


def _manifest(out: Path) -> dict:
    return json.loads((out / spec.MANIFEST_NAME).read_text())


@pytest.mark.parametrize("arch", ["amd64", "arm64"])
def test_tools_manifest_records_perf_and_sizes(tools_images, arch):
    m = _manifest(tools_images[arch])
    kernel = json.loads((tools_images[arch] / "manifest.json").read_text())
    assert m["kernelrelease"] == kernel["kernelrelease"]
    assert m["image"]["partition_table"] == spec.PARTITION_TABLE and m["filesystem"]["label"] == spec.FS_LABEL
    assert "libtraceevent" in m["perf"]["features_on"]
    assert m["perf"]["features_on"], "FEATURE-DUMP was read"
    fs = m["filesystem"]
    assert m["image"]["size"] <= 1.15 * m["tree"]["apparent_size"] + fs["metadata_bytes"]


def test_image_is_reproducible(tools_images):
    out = tools_images["amd64"]
    first = _manifest(out)["image"]["sha256"]
    toolsimage.build_tools_image(ARCHES["amd64"], out, jobs=2)  # incremental perf, fresh staging
    assert _manifest(out)["image"]["sha256"] == first


def _unpack(out: Path, dest: Path) -> Path:
    """The image's tree, read back without root: the filesystem cut out at the partition offset,
    then ``debugfs rdump``."""
    m = _manifest(out)
    fs_bytes = m["filesystem"]["blocks"] * m["filesystem"]["block_size"]
    fs = dest / "fs.ext4"
    with open(out / spec.IMAGE_NAME, "rb") as src, open(fs, "wb") as dst:
        src.seek(disk.ALIGN)
        dst.write(src.read(fs_bytes))
    root = dest / "root"
    root.mkdir()
    subprocess.run(["debugfs", "-R", f"rdump / {root}", str(fs)], check=True, capture_output=True)
    return root


HELLO = """#include <linux/module.h>
static int __init hello_init(void) { return 0; }
static void __exit hello_exit(void) { }
module_init(hello_init);
module_exit(hello_exit);
MODULE_LICENSE("GPL");
"""


def test_amd64_image_tree_works_on_the_host(tools_images, tmp_path):
    """perf from the image runs; an out-of-tree module builds against the image's headers tree."""
    out = tools_images["amd64"]
    release = _manifest(out)["kernelrelease"]
    root = _unpack(out, tmp_path)
    perf = root / "bin" / "perf"
    info = elf.parse_file(perf)
    assert info.static and info.e_machine == ARCHES["amd64"].elf_machine
    version = subprocess.run([perf, "--version"], capture_output=True, text=True, check=True).stdout
    assert version.startswith("perf version 6.12")
    stat = subprocess.run([perf, "stat", "-e", "task-clock", "true"], capture_output=True, text=True)
    assert stat.returncode == 0 and "task-clock" in stat.stderr
    mod = tmp_path / "hello"
    mod.mkdir()
    (mod / "hello.c").write_text(HELLO)
    (mod / "Makefile").write_text("obj-m := hello.o\n")
    build = root / "lib" / "modules" / release / "build"
    subprocess.run(["make", "-C", build, f"M={mod}", "modules"], check=True, capture_output=True)
    modinfo = subprocess.run(["modinfo", "-F", "vermagic", mod / "hello.ko"], capture_output=True,
                             text=True, check=True).stdout
    assert modinfo.split()[0] == release


def test_arm64_image_tree_is_for_arm64(tools_images, tmp_path):
    """Cross-built: perf and the module-build host programs are aarch64 binaries."""
    out = tools_images["arm64"]
    release = _manifest(out)["kernelrelease"]
    root = _unpack(out, tmp_path)
    perf = elf.parse_file(root / "bin" / "perf")
    assert perf.static and perf.e_machine == ARCHES["arm64"].elf_machine
    modpost = root / "lib" / "modules" / release / "build" / "scripts" / "mod" / "modpost"
    assert elf.parse_file(modpost).e_machine == ARCHES["arm64"].elf_machine
    assert (root / "lib" / "modules" / release / "build" / "arch" / "arm64" / "include").is_dir()


def test_both_images_pass_inspection_in_one_launch(tools_images):
    items = [(ARCHES[a], tools_images[a]) for a in ("amd64", "arm64")]
    ok = inspect.inspect_images(items)
    for arch, out in items:
        data = json.loads((out / "inspect" / "results.json").read_text())
        failed = [f"{c['name']}: {c['reason']}" for c in data["checks"] if c["status"] != "pass"]
        assert not failed, f"{arch.name}: {failed}"
        assert data["meta"]["images_in_launch"] == 2
    assert ok
