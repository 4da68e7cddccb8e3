"""What moving the pin to a new kernel version changes, reported before anything is written.

* :func:`patch_report`: the patch series patch by patch on the new tree (applies, applies with an
  offset or fuzz, already applied, fails with the first failing hunk), applied in order to a scratch
  copy of just the files the series touches;
* :func:`new_symbols`: the Kconfig symbols the new version adds that the old config never answered
  (``make listnewconfig`` with the old config), and the value each took in the new resolution;
* :func:`replace_mentions`: every other mention of the old version in the repository's text files
  (README, docs, CI files, fixtures that describe the pin), replaced as a whole version string so
  that unrelated numbers stay as they are.
"""
from __future__ import annotations

import re
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from harness import proc
from harness.arch import Arch
from harness.errors import CommandFailed
from harness.kernel import kconfig
from harness.kernel.patches import Series

STEP = "upgrade"


# -- the patch series on the new tree ---------------------------------------------------------------
@dataclass(frozen=True)
class PatchStatus:
    name: str
    status: str  # "applies", "applies with offset", "applies with fuzz", "already applied", "fails"
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.status != "fails"

    def describe(self) -> str:
        return f"{self.name}: {self.status}" + (f" ({self.detail})" if self.detail else "")


_PLUS = re.compile(r"^\+\+\+ (?:b/)?(\S+)", re.M)
_HUNK = re.compile(r"^Hunk #(\d+) (succeeded|FAILED) at (\d+)(?: \(offset (-?\d+) lines?\))?(?: with fuzz (\d+))?",
                   re.M)
_FILE = re.compile(r"^(?:patching|checking) file (\S+)", re.M)


def touched_files(patch: Path) -> list[str]:
    return sorted({m for m in _PLUS.findall(patch.read_text(errors="replace")) if m != "/dev/null"})


def classify(output: str, returncode: int) -> tuple[str, str]:
    """patch(1)'s verdict on one patch: (status, detail)."""
    if "Reversed (or previously applied) patch detected" in output:
        return "already applied", "the new version already carries it: drop it from the series"
    current = ""
    offsets, fuzz = [], []
    for line in output.splitlines():
        f = _FILE.match(line)
        if f:
            current = f[1]
            continue
        h = _HUNK.match(line)
        if not h:
            continue
        if h[2] == "FAILED":
            return "fails", f"hunk #{h[1]} of {current} at line {h[3]}"
        if h[4]:
            offsets.append(f"hunk #{h[1]} of {current} at {int(h[4]):+d} lines")
        if h[5]:
            fuzz.append(f"hunk #{h[1]} of {current} with fuzz {h[5]}")
    if returncode != 0:
        first = next((ln for ln in output.splitlines() if ln.strip()), "patch failed")
        return "fails", first.strip()
    if fuzz:
        return "applies with fuzz", "; ".join(fuzz + offsets)
    if offsets:
        return "applies with offset", "; ".join(offsets)
    return "applies", ""


def patch_report(series: Series, pristine: Path, log: Path) -> list[PatchStatus]:
    """Apply the series in order to a scratch copy of the files it touches in ``pristine``."""
    out: list[PatchStatus] = []
    with tempfile.TemporaryDirectory(prefix="upgrade-patches-") as tmp:
        scratch = Path(tmp)
        for rel in sorted({f for p in series.patches for f in touched_files(p.path)}):
            src = pristine / rel
            if src.is_file():
                (scratch / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, scratch / rel)
        failed = False
        for p in series.patches:
            if failed:  # later patches may build on the failed one: say so rather than guess
                out.append(PatchStatus(p.name, "fails", "not tried: an earlier patch of the series fails"))
                continue
            argv: list[str | Path] = ["patch", "-p1", "--forward", "--batch", "--no-backup-if-mismatch", "-r", "-",
                                      "-i", p.path]
            res = proc.run(argv, step=STEP, log=log, cwd=scratch, timeout=120, check=False, tail_lines=500)
            status = PatchStatus(p.name, *classify("\n".join(res.tail), res.returncode))
            failed = not status.ok
            out.append(status)
    return out


# -- new Kconfig symbols ------------------------------------------------------------------------------
_NEW = re.compile(r"^(CONFIG_[A-Za-z0-9_]+)=(.*)$")


def new_symbols(tree: Path, arch: Arch, old_config: Path, scratch: Path, log: Path) -> list[str]:
    """``make listnewconfig`` on ``tree`` with ``old_config``: the visible symbols it never answered."""
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    shutil.copyfile(old_config, scratch / ".config")
    try:
        text = proc.capture(kconfig.make_argv(arch, scratch, "-s", "listnewconfig"), step=STEP, cwd=tree,
                            timeout=300, log=log)
    except CommandFailed as exc:
        raise CommandFailed(f"make listnewconfig failed for {arch.name}: {exc.message}", step=STEP, log=log) from exc
    return [m[1] for m in (_NEW.match(line.strip()) for line in text.splitlines()) if m]


def describe_new(symbols: Sequence[str], resolved: dict[str, str], requests: dict[str, kconfig.Request]) -> list[str]:
    lines = []
    for sym in symbols:
        value = resolved.get(sym, "n")
        req = requests.get(sym)
        how = f"requested at {req.where}" if req is not None else "its default"
        lines.append(f"  {sym}={value} ({how})")
    return lines


# -- other mentions of the version in the repository -------------------------------------------------
# Captured evidence (what a given kernel printed), the fake kernel tree with the unit tests that
# mirror its version, the series written against a version, and the harness's own code (which reads
# the pin; a version there is an example) are records, not mentions of the pin.
KEEP = ("harness/", "fixtures/console/", "fixtures/acpi/", "fixtures/fakelinux/", "fixtures/compare/", "tests/unit/",
        "configs/patches/", "configs/kernel.toml", "configs/linux-config-")


@dataclass(frozen=True)
class Replacement:
    path: Path
    count: int
    new_text: str


def _pattern(old: str) -> re.Pattern[str]:
    # the whole version: not 16.12.117, 6.12.1170, 6.12.117.1, nor a Debian revision 6.12.117-1~deb12u1
    return re.compile(rf"(?<![0-9.]){re.escape(old)}(?![0-9]|\.[0-9]|-[0-9])")


def replace_text(text: str, pairs: Sequence[tuple[str, str]]) -> tuple[str, int]:
    total = 0
    for old, new in pairs:
        text, n = _pattern(old).subn(new, text)
        total += n
    return text, total


def replace_mentions(repo: Path, files: Iterable[str], pairs: Sequence[tuple[str, str]]) -> list[Replacement]:
    """The text files among ``files`` (repository-relative) that mention an old string of ``pairs``,
    with their new text. Longer strings go first (the Debian version before the kernel version)."""
    ordered = sorted(pairs, key=lambda p: -len(p[0]))
    out = []
    for rel in files:
        if rel.startswith(KEEP):
            continue
        path = repo / rel
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError):
            continue
        new, n = replace_text(text, ordered)
        if n:
            out.append(Replacement(path, n, new))
    return out


def tracked_files(repo: Path) -> list[str]:
    try:
        out = proc.capture(["git", "ls-files"], step=STEP, cwd=repo)
    except CommandFailed:  # not a git checkout: every regular file but the usual noise
        return sorted(str(p.relative_to(repo)) for p in repo.rglob("*")
                      if p.is_file() and not any(part.startswith(".") or part in ("out", "__pycache__")
                                                 for part in p.relative_to(repo).parts))
    return [line for line in out.splitlines() if line]


def version_tuple(version: str) -> tuple[int, int, int]:
    from harness.kernel import source

    return source.parse_version(version)
