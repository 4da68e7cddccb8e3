"""A fake tools tree and OUT directory (the shape of the real thing, a few KB in size), minimal ELF
files, and a stand-in for a launched libguestfs appliance that shows host directories as the
images' filesystems (so the image checks run without an appliance)."""
from __future__ import annotations

import json
import os
import stat
import struct
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.arch import Arch
from harness.tools import image as toolsimage
from harness.tools import spec
from harness.tools.elf import DT_NEEDED, DT_NULL, PT_DYNAMIC, PT_INTERP

RELEASE = "6.12.117-neonvm"
CONFIG = b"# fake kernel config\nCONFIG_IKHEADERS=m\nCONFIG_MODULE_COMPRESS_ZSTD=y\n"
SOURCE_DATE = 1700000000
ET_EXEC = 2
PT_LOAD = 1


def build_minimal_elf(*, machine: int, interpreter: str | None = None, needed: int = 0,
                      elf_class: int = 2, little_endian: bool = True) -> bytes:
    """Return a small, well-formed ELF executable image (no code).

    ``interpreter`` adds a PT_INTERP segment; ``needed`` adds a PT_DYNAMIC segment with that many
    DT_NEEDED entries.
    """
    end = "<" if little_endian else ">"
    is64 = elf_class == 2
    ehsize = 64 if is64 else 52
    phentsize = 56 if is64 else 32
    segments: list[tuple[int, bytes]] = []
    if interpreter is not None:
        segments.append((PT_INTERP, interpreter.encode() + b"\0"))
    if needed:
        ent_fmt = end + ("qQ" if is64 else "iI")
        dyn = b"".join(struct.pack(ent_fmt, DT_NEEDED, 1) for _ in range(needed)) + struct.pack(ent_fmt, DT_NULL, 0)
        segments.append((PT_DYNAMIC, dyn))
    segments.append((PT_LOAD, b"\0" * 16))  # with a few bytes
    phoff = ehsize
    data_off = phoff + phentsize * len(segments)
    phdrs = b""
    payload = b""
    for p_type, body in segments:
        off = data_off + len(payload)
        if is64:
            phdrs += struct.pack(end + "IIQQQQQQ", p_type, 4, off, 0x400000 + off, 0x400000 + off,
                                 len(body), len(body), 8)
        else:
            phdrs += struct.pack(end + "IIIIIIII", p_type, off, 0x400000 + off, 0x400000 + off,
                                 len(body), len(body), 4, 4)
        payload += body
    ident = b"\x7fELF" + bytes([elf_class, 1 if little_endian else 2, 1, 0]) + b"\0" * 8
    hdr_fmt = end + ("HHIQQQIHHHHHH" if is64 else "HHIIIIIHHHHHH")
    header = ident + struct.pack(hdr_fmt, ET_EXEC, machine, 1, 0x400000, phoff, 0, 0, ehsize, phentsize,
                                 len(segments), 0, 0, 0)
    return header + phdrs + payload


def fake_perf(arch: Arch, **kw: Any) -> bytes:
    return build_minimal_elf(machine=arch.elf_machine, **kw) + b"\0" * 3000


def fake_tree(root: Path, arch: Arch, *, release: str = RELEASE, config: bytes = CONFIG,
              perf: bytes | None = None) -> Path:
    files = {
        spec.PERF: perf if perf is not None else fake_perf(arch),
        "include/linux/perf_event.h": b"/* uapi */\n" * 40,
        "include/asm/unistd.h": b"#define __NR_read 0\n",
        f"{spec.modules_dir(release)}/modules.dep": b"kernel/kernel/kheaders.ko.zst:\n",
        spec.kheaders_path(release): b"\x28\xb5\x2f\xfd" + b"x" * 2000,
    }
    b = spec.build_dir(release)
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
    for rel in (spec.PERF, f"{b}/scripts/mod/modpost", f"{b}/scripts/basic/fixdep"):
        (root / rel).chmod(0o755)
    (root / b / spec.BUILD_UAPI_LINK).parent.mkdir()
    os.symlink(spec.BUILD_UAPI_TARGET, root / b / spec.BUILD_UAPI_LINK)
    return root


def fake_out(out: Path, arch: Arch, *, release: str = RELEASE, config: bytes = CONFIG) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    (out / "manifest.json").write_text(json.dumps({"arch": arch.name, "variant": "fake", "version": "6.12.117",
                                                   "kernelrelease": release}))
    (out / "config").write_bytes(config)
    return out


def package(tree: Path, out: Path, arch: Arch, *, release: str = RELEASE, **kw: Any) -> toolsimage.ImageInfo:
    return toolsimage.package(tree, out, arch=arch, kernelrelease=release, source_date=SOURCE_DATE,
                              log=out / "logs" / "tools-image.log", work=out / ".work", **kw)


# -- a stand-in for a launched libguestfs appliance ----------------------------------------------------
@dataclass
class FakeDisk:
    """One attached image as the appliance would see it: blkid's answers, the superblock, and a host
    directory as the filesystem's content."""

    tree: Path
    probe: dict[str, str] = field(default_factory=lambda: {"PTTYPE": "gpt"})
    fs_probe: dict[str, str] = field(default_factory=lambda: {"TYPE": "ext4", "LABEL": spec.FS_LABEL})
    partitions: int = 1
    superblock: dict[str, str] | None = None  # None: tune2fs -l fails
    size: int = 1 << 30  # bytes of the filesystem's device
    mount_error: str = ""  # mount_ro fails with this

    @classmethod
    def built(cls, out: Path, tree: Path, **kw: Any) -> FakeDisk:
        """The disk of an image ``package`` made from ``tree`` in ``out``: its superblock figures
        are the ones the build recorded."""
        fs = spec.read_manifest(out)["filesystem"]
        sb = {"Block count": str(fs["blocks"]), "Free blocks": str(fs["free_blocks"]),
              "Inode count": str(fs["inodes"]), "Free inodes": str(fs["free_inodes"]),
              "Block size": str(fs["block_size"])}
        return cls(tree=tree, **{"superblock": sb, "size": fs["blocks"] * fs["block_size"], **kw})


class FakeAppliance:
    """The guestfs calls the inspection makes, answered from FakeDisks (``/dev/sda``, ``/dev/sdb``...)."""

    def __init__(self, disks: list[FakeDisk]):
        self.disks = {f"/dev/sd{chr(ord('a') + i)}": d for i, d in enumerate(disks)}
        self.mounted: FakeDisk | None = None
        self.closed = False
        self.calls: list[str] = []

    # the devices
    def list_devices(self) -> list[str]:
        return list(self.disks)

    def list_partitions(self) -> list[str]:
        return [f"{dev}{n}" for dev, d in self.disks.items() for n in range(1, d.partitions + 1)]

    def _disk(self, device: str) -> tuple[FakeDisk, bool]:
        """(the disk, whether ``device`` is one of its partitions)."""
        base = device.rstrip("0123456789")
        if base not in self.disks:
            raise RuntimeError(f"{device}: no such device")
        return self.disks[base], base != device

    def blkid(self, device: str) -> dict[str, str]:
        disk, is_part = self._disk(device)
        probe = disk.fs_probe if is_part or not disk.partitions else disk.probe
        if not probe:
            raise RuntimeError(f"blkid: {device}: nothing found")
        return dict(probe)

    def tune2fs_l(self, device: str) -> dict[str, str]:
        disk, _ = self._disk(device)
        if disk.superblock is None:
            raise RuntimeError(f"tune2fs_l: {device}: Bad magic number in super-block")
        return dict(disk.superblock)

    def blockdev_getsize64(self, device: str) -> int:
        return self._disk(device)[0].size

    # the filesystem
    def umount_all(self) -> None:
        self.calls.append("umount_all")
        self.mounted = None

    def mount_ro(self, device: str, mountpoint: str) -> None:
        disk, _ = self._disk(device)
        if disk.mount_error:
            raise RuntimeError(f"mount_ro: {disk.mount_error}")
        self.calls.append(f"mount_ro {device}")
        self.mounted = disk

    def _path(self, path: str) -> Path:
        if self.mounted is None:
            raise RuntimeError(f"{path}: nothing is mounted")
        return self.mounted.tree / path.lstrip("/")

    def ls(self, path: str) -> list[str]:
        return sorted(os.listdir(self._path(path)))

    def is_dir(self, path: str) -> bool:
        return self._path(path).is_dir() and not self._path(path).is_symlink()

    def lstatnslist(self, path: str, names: list[str]) -> list[dict[str, int]]:
        d = self._path(path)
        if not d.is_dir():
            raise RuntimeError(f"lstatnslist: {path}: No such file or directory")
        out = []
        for name in names:
            try:
                st = os.lstat(d / name)
            except FileNotFoundError:
                out.append({"st_ino": -1, "st_mode": 0, "st_size": 0})
            else:
                out.append({"st_ino": st.st_ino, "st_mode": st.st_mode, "st_size": st.st_size})
        return out

    def read_file(self, path: str) -> bytes:
        return self._path(path).read_bytes()

    def pread(self, path: str, count: int, offset: int) -> bytes:
        with open(self._path(path), "rb") as fh:
            fh.seek(offset)
            return fh.read(count)

    def filesystem_walk(self, device: str) -> list[dict[str, Any]]:
        root = self._disk(device)[0].tree
        out: list[dict[str, Any]] = [{"tsk_name": ".", "tsk_type": "d", "tsk_size": 1024, "tsk_flags": 1}]
        for dirpath, dirnames, filenames in os.walk(root):
            for name in dirnames + filenames:
                p = Path(dirpath) / name
                st = p.lstat()
                out.append({"tsk_name": p.relative_to(root).as_posix(), "tsk_type": spec.kind_code(st.st_mode),
                            "tsk_size": 1024 if stat.S_ISDIR(st.st_mode) else st.st_size, "tsk_flags": 1})
        return out

    # the handle
    def shutdown(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True


def junit_statuses(path: Path) -> dict[str, str]:
    """A JUnit XML test suite read back: {testcase name: pass/fail/error/skip}."""
    out = {}
    for tc in ET.parse(path).getroot().iter("testcase"):
        kinds = [child.tag for child in tc if child.tag in ("failure", "error", "skipped")]
        out[tc.attrib["name"]] = {"failure": "fail", "error": "error", "skipped": "skip"}[kinds[0]] if kinds else "pass"
    return out
