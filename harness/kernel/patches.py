"""The patch series: every ``*.patch`` in a directory, applied in sorted order with ``patch -p1``."""
from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path

from harness import proc
from harness.errors import CommandFailed, CommandTimeout, InvalidArgument, PatchFailed
from harness.layout import CONFIGS

LOG = logging.getLogger(__name__)
STEP = "patch"
DEFAULT_SERIES = CONFIGS / "patches"


@dataclass(frozen=True)
class Patch:
    path: Path
    sha256: str

    @property
    def name(self) -> str:
        return self.path.name


@dataclass(frozen=True)
class Series:
    directory: Path
    patches: tuple[Patch, ...]

    @classmethod
    def load(cls, directory: Path | None = None) -> Series:
        directory = Path(directory or DEFAULT_SERIES)
        if not directory.is_dir():
            raise InvalidArgument(f"patch series directory {directory} does not exist", step=STEP)
        patches = tuple(Patch(p, hashlib.sha256(p.read_bytes()).hexdigest())
                        for p in sorted(directory.glob("*.patch")))
        return cls(directory, patches)

    @classmethod
    def none(cls) -> Series:
        """No patches: the pristine tree (variants with ``patches = false``)."""
        return cls(DEFAULT_SERIES, ())

    @property
    def sha256(self) -> str:
        """Identifies the series: names and contents, in order."""
        h = hashlib.sha256()
        for p in self.patches:
            h.update(f"{p.name}\0{p.sha256}\n".encode())
        return h.hexdigest()

    def manifest(self) -> list[dict[str, str]]:
        return [{"name": p.name, "sha256": p.sha256} for p in self.patches]

    def apply(self, tree: Path, log: Path) -> None:
        """Apply every patch in order; raise PatchFailed naming the patch and its first rejected hunk.
        The caller owns ``tree`` and throws it away on failure."""
        for i, patch in enumerate(self.patches, 1):
            LOG.info("[%s] %d/%d %s", STEP, i, len(self.patches), patch.name)
            argv = ["patch", "-p1", "--forward", "--batch", "--no-backup-if-mismatch", "-r", "-",
                    "-i", str(patch.path)]
            try:
                proc.run(argv, step=STEP, log=log, cwd=tree, timeout=600)
            except CommandTimeout:  # a hang is the host's (infra), not the input's
                raise
            except CommandFailed as exc:
                raise PatchFailed(f"{patch.name} does not apply: {first_rejection(log)}",
                                  step=STEP, log=log) from exc


_HUNK = re.compile(r"Hunk #(\d+) FAILED at (\d+)")
_FILE = re.compile(r"^(?:patching|checking) file (.+)$")


def first_rejection(log: Path) -> str:
    """The first rejected hunk from ``patch`` output in the log (the last patch run)."""
    text = log.read_text(errors="replace")
    text = text[text.rfind("### step"):]
    current = "?"
    for line in text.splitlines():
        m = _FILE.match(line.strip())
        if m:
            current = m[1].strip("'\"")
            continue
        m = _HUNK.search(line)
        if m:
            return f"hunk #{m[1]} of {current} rejected at line {m[2]}"
        if "can't find file to patch" in line or "No file to patch" in line:
            return "a file it patches does not exist in the tree"
        if "Reversed (or previously applied) patch detected" in line:
            return f"{current}: already applied (reversed patch detected)"
        if "malformed patch" in line or "Only garbage was found" in line:
            return line.strip()
    return "patch failed (see log)"
