"""A minimal ELF reader: just enough to tell whether a binary is static and for which machine.

It reads through a ``pread(offset, size) -> bytes`` callable so the same code serves a host file
and a file inside a libguestfs appliance (``g.pread``). Nothing here trusts the file: every offset is
checked against the file size, so a truncated binary is reported as such instead of crashing.
"""
from __future__ import annotations

import os
import struct
from collections.abc import Callable
from dataclasses import dataclass

PT_DYNAMIC = 2
PT_INTERP = 3
DT_NULL = 0
DT_NEEDED = 1

Reader = Callable[[int, int], bytes]


class InvalidElf(ValueError):
    """The bytes are not a (complete) ELF file."""


@dataclass
class ElfInfo:
    elf_class: int  # 1: 32-bit, 2: 64-bit
    little_endian: bool
    e_type: int
    e_machine: int
    interpreter: str | None = None
    needed_count: int = 0

    @property
    def static(self) -> bool:
        """No program interpreter and no shared-library dependency (static or static-pie)."""
        return self.interpreter is None and self.needed_count == 0


def _read(pread: Reader, size: int, offset: int, count: int, what: str) -> bytes:
    if offset < 0 or count < 0 or offset + count > size:
        raise InvalidElf(f"truncated: {what} at offset {offset}+{count} lies beyond the file's {size} bytes")
    data = pread(offset, count)
    if len(data) != count:
        raise InvalidElf(f"truncated: short read of {what} ({len(data)} of {count} bytes)")
    return data


def parse(pread: Reader, size: int) -> ElfInfo:
    """Parse the ELF header, program headers and dynamic section of a file of ``size`` bytes."""
    ident = _read(pread, size, 0, 16, "ELF identification")
    if ident[:4] != b"\x7fELF":
        raise InvalidElf(f"not an ELF file (magic {ident[:4]!r})")
    elf_class, data_enc = ident[4], ident[5]
    if elf_class not in (1, 2) or data_enc not in (1, 2):
        raise InvalidElf(f"bad ELF class/encoding {elf_class}/{data_enc}")
    end = "<" if data_enc == 1 else ">"
    is64 = elf_class == 2
    hdr_fmt = end + ("HHIQQQIHHHHHH" if is64 else "HHIIIIIHHHHHH")
    hdr = _read(pread, size, 16, struct.calcsize(hdr_fmt), "ELF header")
    (e_type, e_machine, _ver, _entry, e_phoff, _shoff, _flags, _ehsize, e_phentsize, e_phnum,
     *_rest) = struct.unpack(hdr_fmt, hdr)
    info = ElfInfo(elf_class=elf_class, little_endian=data_enc == 1, e_type=e_type, e_machine=e_machine)
    ph_fmt = end + ("IIQQQQQQ" if is64 else "IIIIIIII")
    if e_phnum and e_phentsize < struct.calcsize(ph_fmt):
        raise InvalidElf(f"bad program header size {e_phentsize}")
    table = _read(pread, size, e_phoff, e_phnum * e_phentsize, "program header table") if e_phnum else b""
    dynamic: tuple[int, int] | None = None
    for i in range(e_phnum):
        raw = table[i * e_phentsize:i * e_phentsize + struct.calcsize(ph_fmt)]
        fields = struct.unpack(ph_fmt, raw)
        if is64:
            p_type, _flags, p_offset, _va, _pa, p_filesz, _memsz, _align = fields
        else:
            p_type, p_offset, _va, _pa, p_filesz, _memsz, _flags, _align = fields
        if p_type == PT_INTERP:
            raw_interp = _read(pread, size, p_offset, p_filesz, "PT_INTERP")
            info.interpreter = raw_interp.split(b"\0", 1)[0].decode(errors="replace")
        elif p_type == PT_DYNAMIC:
            dynamic = (p_offset, p_filesz)
    if dynamic:
        off, length = dynamic
        ent_fmt = end + ("qQ" if is64 else "iI")
        ent = struct.calcsize(ent_fmt)
        data = _read(pread, size, off, length - length % ent, "PT_DYNAMIC")
        for pos in range(0, len(data), ent):
            tag, _val = struct.unpack_from(ent_fmt, data, pos)
            if tag == DT_NULL:
                break
            if tag == DT_NEEDED:
                info.needed_count += 1
    return info


def parse_file(path: str | os.PathLike[str]) -> ElfInfo:
    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size

        def pread(offset: int, count: int) -> bytes:
            return os.pread(fh.fileno(), count, offset)

        return parse(pread, size)
