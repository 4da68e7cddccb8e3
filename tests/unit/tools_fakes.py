"""A fake tools tree and OUT directory: the shape of the real thing, a few KB in size."""
from __future__ import annotations

import json
import os
from pathlib import Path

from harness.arch import Arch
from harness.tools import elf
from harness.tools import image as toolsimage

RELEASE = "6.12.117-neonvm"
CONFIG = b"# fake kernel config\nCONFIG_IKHEADERS=m\nCONFIG_MODULE_COMPRESS_ZSTD=y\n"
SOURCE_DATE = 1700000000


def fake_perf(arch: Arch, **kw) -> bytes:
    return elf.build_minimal(machine=arch.elf_machine, **kw) + b"\0" * 3000


def fake_tree(root: Path, arch: Arch, *, release: str = RELEASE, config: bytes = CONFIG,
              perf: bytes | None = None) -> Path:
    files = {
        "bin/perf": perf if perf is not None else fake_perf(arch),
        "include/linux/perf_event.h": b"/* uapi */\n" * 40,
        "include/asm/unistd.h": b"#define __NR_read 0\n",
        f"lib/modules/{release}/modules.dep": b"kernel/kernel/kheaders.ko.zst:\n",
        f"lib/modules/{release}/kernel/kernel/kheaders.ko.zst": b"\x28\xb5\x2f\xfd" + os.urandom(0) + b"x" * 2000,
    }
    b = f"lib/modules/{release}/build"
    files.update({
        f"{b}/.config": config,
        f"{b}/Makefile": b"# kernel Makefile\n",
        f"{b}/Module.symvers": b"0x0\tsym\tvmlinux\tEXPORT_SYMBOL\t\n",
        f"{b}/include/linux/module.h": b"/* module */\n",
        f"{b}/include/generated/autoconf.h": b"#define CONFIG_X 1\n",
        f"{b}/include/config/kernel.release": release.encode() + b"\n",
        f"{b}/arch/{arch.srcarch}/include/asm/page.h": b"/* page */\n",
        f"{b}/scripts/Makefile.build": b"# build\n",
        f"{b}/scripts/mod/modpost": fake_perf(arch),
        f"{b}/scripts/basic/fixdep": fake_perf(arch),
    })
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    for rel in ("bin/perf", f"{b}/scripts/mod/modpost", f"{b}/scripts/basic/fixdep"):
        (root / rel).chmod(0o755)
    (root / b / "usr").mkdir()
    os.symlink("../../../../../include", root / b / "usr" / "include")
    return root


def fake_out(out: Path, arch: Arch, *, release: str = RELEASE, config: bytes = CONFIG) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    (out / "manifest.json").write_text(json.dumps({"arch": arch.name, "variant": "fake", "version": "6.12.117",
                                                   "kernelrelease": release}))
    (out / "config").write_bytes(config)
    return out


def package(tree: Path, out: Path, arch: Arch, *, release: str = RELEASE, **kw) -> toolsimage.ImageInfo:
    return toolsimage.package(tree, out, arch=arch, kernelrelease=release, source_date=SOURCE_DATE,
                              log=out / "logs" / "tools-image.log", work=out / ".work", **kw)
