"""``compare-config``: the production config against any reference config, every difference explained.

Every option whose value differs is grouped by its Kconfig menu and marked:

* ``requested``: our value comes from a fragment line (and, where the contract names the option, the
  capability that needs it);
* ``omitted``: a ``kind = "policy"`` omission of configs/contract.toml matches it;
* ``hardware``: a ``kind = "hardware"`` omission matches, or the symbol is internal (no prompt in its
  Kconfig definition: derived, never chosen), or it does not exist in our tree / our arch at all;
* ``unexplained``: everything else.

y against m is counted apart ("built-in vs module"): both mean enabled. The exit status is 1 when an
option the reference enables and ours does not is unexplained (unless ``allow_unexplained``).

The menu and prompt of each symbol come from a small Kconfig scanner (:func:`load_index`): every
Kconfig file of the tree is scanned once (cached under ``cache_root()/kconfig-index/``), then the
``source`` statements are followed from the top-level Kconfig for the arch asked.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import logging
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from . import contract as contract_mod
from . import kconfig, source
from .arch import Arch, get_arch
from .errors import InvalidArgument, UnsupportedArch
from .layout import atomic_write_json, atomic_write_text, cache_root

LOG = logging.getLogger(__name__)
STEP = "compare-config"
PRODUCTION = "production"

# -- classes and directions ----------------------------------------------------------------------
REQUESTED, OMITTED, HARDWARE, UNEXPLAINED, Y_VS_M = "requested", "omitted", "hardware", "unexplained", "y-vs-m"
CLASSES = (REQUESTED, OMITTED, HARDWARE, UNEXPLAINED)
LABELS = {REQUESTED: "requested", OMITTED: "omitted on purpose", HARDWARE: "hardware/internal",
          UNEXPLAINED: "unexplained", Y_VS_M: "built-in vs module"}
REF_ENABLES, OURS_ENABLES, VALUE, BUILTIN_MODULE = "reference-enables", "ours-enables", "value", "y-vs-m"
ENABLED = ("y", "m")
NOT_IN_TREE, OTHER_ARCH, TOP_LEVEL = "(not in this tree)", "(not in this arch's Kconfig)", "(top level)"


# ================================================================================================
# Kconfig scanner
# ================================================================================================
SCAN_FORMAT = 1  # the shape of the cached per-file scan
_ENTRY = re.compile(r"^(menuconfig|config)\s+([A-Za-z0-9_]+)\s*(?:#.*)?$")
_QUOTED = r"""(["'])((?:\\.|(?!\1).)*)\1"""
_PROMPT = re.compile(r"^(?:bool|tristate|string|int|hex|prompt)\s+" + _QUOTED)
_MENU = re.compile(r"^menu\s+" + _QUOTED)
_SOURCE = re.compile(r"^source\s+" + _QUOTED)
_IF = re.compile(r"^if\s+(.*?)\s*(?:#.*)?$")
_HELP = re.compile(r"^(?:help|---help---)\s*(?:#.*)?$")
_STATEMENT = re.compile(r"^(?:config|menuconfig|choice|endchoice|menu|endmenu|if|endif|source|comment|mainmenu)\b")
_SYMBOL = re.compile(r"^[A-Za-z0-9_]+$")


@dataclass(frozen=True)
class Entry:
    """One ``config``/``menuconfig`` definition in one file; ``menu`` is the chain of menu titles
    enclosing it inside that file."""

    symbol: str
    line: int
    prompted: bool
    menu: tuple[str, ...]


@dataclass(frozen=True)
class Sourced:
    path: str  # as written (relative to the tree root, may hold $(SRCARCH))
    line: int
    menu: tuple[str, ...]


@dataclass(frozen=True)
class FileScan:
    entries: tuple[Entry, ...]
    sources: tuple[Sourced, ...]


@dataclass
class _Frame:
    kind: str  # menu | if | choice
    title: str | None
    menuconfigs: dict[str, str] = field(default_factory=dict)  # menuconfig symbol -> its prompt, at this level


@dataclass
class _Open:
    """The config entry being read: its prompt arrives on a later line."""

    symbol: str
    line: int
    menuconfig: bool
    menu: tuple[str, ...]
    prompt: str | None = None


def _indent(line: str) -> int:
    width = 0
    for ch in line:
        if ch == "\t":
            width = (width & ~7) + 8
        elif ch == " ":
            width += 1
        else:
            break
    return width


class _Scanner:
    """One Kconfig file, statement by statement (help texts skipped the way Kconfig's lexer does)."""

    def __init__(self) -> None:
        self.frames: list[_Frame] = [_Frame("file", None)]
        self.entries: list[Entry] = []
        self.sources: list[Sourced] = []
        self.open: _Open | None = None

    def chain(self) -> tuple[str, ...]:
        return tuple(f.title for f in self.frames if f.title)

    def close_entry(self) -> None:
        e = self.open
        if e is None:
            return
        self.entries.append(Entry(e.symbol, e.line, e.prompt is not None, e.menu))
        if e.menuconfig and e.prompt is not None:
            self.frames[-1].menuconfigs[e.symbol] = e.prompt
        self.open = None

    def pop(self, kind: str) -> None:
        for i in range(len(self.frames) - 1, 0, -1):
            if self.frames[i].kind == kind:
                del self.frames[i:]
                return

    def statement(self, text: str, no: int) -> None:
        if not _STATEMENT.match(text):
            m = _PROMPT.match(text)
            if m and self.open is not None and self.open.prompt is None:
                self.open.prompt = m[2]
            return
        self.close_entry()
        word = text.split(None, 1)[0]
        if m := _ENTRY.match(text):
            self.open = _Open(m[2], no, m[1] == "menuconfig", self.chain())
        elif m := _MENU.match(text):
            self.frames.append(_Frame("menu", m[2]))
        elif word == "if":
            m = _IF.match(text)
            cond = m[1] if m else ""
            title = self.frames[-1].menuconfigs.get(cond) if _SYMBOL.match(cond) else None
            self.frames.append(_Frame("if", title))
        elif word == "choice":
            self.frames.append(_Frame("choice", None))
        elif word in ("endmenu", "endif", "endchoice"):
            self.pop(word[3:])
        elif m := _SOURCE.match(text):
            self.sources.append(Sourced(m[2], no, self.chain()))

    def result(self) -> FileScan:
        self.close_entry()
        return FileScan(tuple(self.entries), tuple(self.sources))


def scan_text(text: str) -> FileScan:
    """The config definitions and source statements of one Kconfig file."""
    sc = _Scanner()
    lines = text.splitlines()
    help_indent: int | None = None
    in_help = False
    i = 0
    while i < len(lines):
        raw, no = lines[i], i + 1
        i += 1
        if in_help:
            if not raw.strip():
                continue
            ind = _indent(raw)
            if help_indent is None and ind > 0:
                help_indent = ind
                continue
            if help_indent is not None and ind >= help_indent:
                continue
            in_help = False
        while raw.rstrip().endswith("\\") and i < len(lines):
            raw = raw.rstrip()[:-1] + " " + lines[i]
            i += 1
        text_ = raw.strip()
        if not text_ or text_.startswith("#"):
            continue
        if _HELP.match(text_):
            in_help, help_indent = True, None
            continue
        sc.statement(text_, no)
    return sc.result()


@dataclass(frozen=True)
class Symbol:
    name: str  # without CONFIG_
    definitions: tuple[str, ...]  # "path:line" of each definition reached for the arch
    prompted: bool  # some definition has a prompt: a user (or a fragment) chooses it
    menu: tuple[str, ...]


@dataclass(frozen=True)
class KconfigIndex:
    srcarch: str
    symbols: dict[str, Symbol]  # reachable from the top-level Kconfig for srcarch
    elsewhere: dict[str, tuple[str, ...]]  # defined only in files not reached (other arches, unsourced)

    def lookup(self, option: str) -> Symbol | None:
        return self.symbols.get(option.removeprefix("CONFIG_"))

    def defined_elsewhere(self, option: str) -> tuple[str, ...]:
        return self.elsewhere.get(option.removeprefix("CONFIG_"), ())


def _other_arch(path: str, srcarch: str) -> bool:
    parts = path.split("/")
    return len(parts) > 2 and parts[0] == "arch" and parts[1] != srcarch


def build_index(scans: dict[str, FileScan], srcarch: str, top: str = "Kconfig") -> KconfigIndex:
    """Follow ``source`` from ``top`` for ``srcarch`` (other arches' directories skipped) and index
    every definition reached, with its full menu chain."""
    defs: dict[str, list[tuple[str, Entry, tuple[str, ...]]]] = {}
    visited: set[str] = set()

    def visit(path: str, outer: tuple[str, ...]) -> None:
        if path in visited or path not in scans or _other_arch(path, srcarch):
            if path not in scans and path not in visited:
                LOG.debug("[%s] sourced Kconfig %s not in the tree", STEP, path)
            return
        visited.add(path)
        scan = scans[path]
        items: list[tuple[int, Entry | Sourced]] = [(e.line, e) for e in scan.entries]
        items += [(s.line, s) for s in scan.sources]
        for _, item in sorted(items, key=lambda t: t[0]):
            chain = outer + tuple(t.replace("$(SRCARCH)", srcarch) for t in item.menu)
            if isinstance(item, Entry):
                defs.setdefault(item.symbol, []).append((path, item, chain))
            elif "$(" in item.path.replace("$(SRCARCH)", ""):
                LOG.debug("[%s] %s:%d: not following %s", STEP, path, item.line, item.path)
            else:
                visit(item.path.replace("$(SRCARCH)", srcarch), chain)

    visit(top, ())
    symbols = {}
    for name, found in defs.items():
        prompted = [f for f in found if f[1].prompted]
        chosen = (prompted or found)[0]
        symbols[name] = Symbol(name, tuple(f"{p}:{e.line}" for p, e, _ in found), bool(prompted), chosen[2])
    elsewhere: dict[str, list[str]] = {}
    for path in sorted(set(scans) - visited):
        for e in scans[path].entries:
            if e.symbol not in symbols:
                elsewhere.setdefault(e.symbol, []).append(f"{path}:{e.line}")
    return KconfigIndex(srcarch, symbols, {k: tuple(v) for k, v in elsewhere.items()})


# -- the per-tree cache --------------------------------------------------------------------------
def kconfig_files(tree: Path) -> list[tuple[str, int, int]]:
    """(path relative to the tree, mtime_ns, size) of every Kconfig* file, sorted."""
    out = []
    for dirpath, dirnames, filenames in os.walk(tree):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            if name.startswith("Kconfig"):
                p = Path(dirpath) / name
                st = p.stat()
                out.append((p.relative_to(tree).as_posix(), st.st_mtime_ns, st.st_size))
    return sorted(out)


def _index_cache(tree: Path, files: list[tuple[str, int, int]]) -> Path:
    tree_key = hashlib.sha256(str(tree.resolve()).encode()).hexdigest()[:16]
    h = hashlib.sha256(f"format {SCAN_FORMAT}\n".encode())
    h.update(Path(__file__).read_bytes())  # a change to the scanner invalidates what it scanned
    for rel, mtime, size in files:
        h.update(f"{rel}\0{mtime}\0{size}\n".encode())
    return cache_root() / "kconfig-index" / f"{tree_key}-{h.hexdigest()[:16]}.json"


def _scans_to_json(scans: dict[str, FileScan]) -> dict:
    return {path: {"entries": [[e.symbol, e.line, e.prompted, list(e.menu)] for e in s.entries],
                   "sources": [[x.path, x.line, list(x.menu)] for x in s.sources]}
            for path, s in scans.items()}


def _scans_from_json(data: dict) -> dict[str, FileScan]:
    return {path: FileScan(tuple(Entry(sym, line, prompted, tuple(menu)) for sym, line, prompted, menu in s["entries"]),
                           tuple(Sourced(p, line, tuple(menu)) for p, line, menu in s["sources"]))
            for path, s in data.items()}


def scan_tree(tree: Path) -> dict[str, FileScan]:
    """Every Kconfig file of ``tree`` scanned, from the cache when no Kconfig file changed."""
    files = kconfig_files(tree)
    cache = _index_cache(tree, files)
    if cache.is_file():
        try:
            data = json.loads(cache.read_text())
            if data.get("format") == SCAN_FORMAT and data.get("tree") == str(tree.resolve()):
                LOG.info("[%s] Kconfig index from %s", STEP, cache)
                return _scans_from_json(data["files"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            LOG.warning("[%s] ignoring an unreadable Kconfig index %s: %s", STEP, cache, exc)
    LOG.info("[%s] scanning %d Kconfig files of %s", STEP, len(files), tree)
    scans = {rel: scan_text((tree / rel).read_text(errors="replace")) for rel, _, _ in files}
    payload = {"format": SCAN_FORMAT, "tree": str(tree.resolve()), "files": _scans_to_json(scans)}
    atomic_write_text(cache, json.dumps(payload, separators=(",", ":")))
    prefix = cache.name.split("-")[0] + "-"
    for stale in cache.parent.glob(prefix + "*.json"):  # the same tree, older Kconfig files
        if stale != cache:
            stale.unlink(missing_ok=True)
    return scans


def load_index(tree: Path, srcarch: str) -> KconfigIndex:
    if not (tree / "Kconfig").is_file():
        raise InvalidArgument(f"{tree} is not a kernel tree (no top-level Kconfig)", step=STEP)
    return build_index(scan_tree(tree), srcarch)


# ================================================================================================
# Comparison (pure)
# ================================================================================================
def normalise(value: str | None) -> str:
    """'# CONFIG_X is not set', absence and an empty string all mean n; strings lose their quotes."""
    if value is None:
        return "n"
    v = value.strip()
    if len(v) >= 2 and v[0] == v[-1] == '"':
        v = v[1:-1].replace('\\"', '"').replace("\\\\", "\\")
    return v or "n"


def direction(ours: str, reference: str) -> str:
    if ours in ENABLED and reference in ENABLED:
        return BUILTIN_MODULE
    if reference in ENABLED and ours == "n":
        return REF_ENABLES
    if ours in ENABLED and reference == "n":
        return OURS_ENABLES
    return VALUE


@dataclass(frozen=True)
class Difference:
    option: str
    ours: str  # normalised
    reference: str  # normalised
    direction: str
    cls: str
    reason: str
    menu: tuple[str, ...]
    kconfig: tuple[str, ...] = ()  # "path:line" of the definitions (or of those in other arches)
    request: str | None = None  # "configs/fragments/x.config:12"
    capability: str | None = None
    needed_by: str | None = None
    omission: str | None = None
    omission_kind: str | None = None

    @property
    def group(self) -> str:
        return " > ".join(self.menu) if self.menu else TOP_LEVEL

    def to_json(self) -> dict:
        return {"option": self.option, "ours": self.ours, "reference": self.reference,
                "direction": self.direction, "class": self.cls, "reason": self.reason,
                "menu": list(self.menu), "kconfig": list(self.kconfig), "request": self.request,
                "capability": self.capability, "needed_by": self.needed_by, "omission": self.omission,
                "omission_kind": self.omission_kind}


def prefix(option: str) -> str:
    """CONFIG_NF_CONNTRACK -> 'NF' (the first word of the symbol, as omission globs are written)."""
    return option.removeprefix("CONFIG_").split("_", 1)[0]


@dataclass(frozen=True)
class Comparison:
    arch: str
    differences: tuple[Difference, ...]

    def of(self, cls: str) -> list[Difference]:
        return [d for d in self.differences if d.cls == cls]

    def counts(self) -> dict[str, int]:
        c = Counter(d.cls for d in self.differences)
        return {k: c.get(k, 0) for k in (*CLASSES, Y_VS_M)}

    def failing(self) -> list[Difference]:
        """Unexplained options the reference enables and ours does not: these fail the comparison."""
        return [d for d in self.differences if d.cls == UNEXPLAINED and d.direction == REF_ENABLES]

    def exit_status(self, allow_unexplained: bool = False) -> int:
        return 1 if self.failing() and not allow_unexplained else 0

    def unexplained_prefixes(self, limit: int = 40) -> list[tuple[str, int, list[tuple[str, int]]]]:
        """(prefix, count, [(menu group, count), ...]) of the failing options, most common first.
        The prefix is the symbols' first word, with '_' when some symbol goes on (``NF_``)."""
        menus: dict[str, Counter[str]] = {}
        longer: set[str] = set()
        for d in self.failing():
            word = prefix(d.option)
            menus.setdefault(word, Counter())[d.group] += 1
            if d.option.removeprefix("CONFIG_") != word:
                longer.add(word)
        ranked = sorted(menus.items(), key=lambda kv: (-sum(kv[1].values()), kv[0]))[:limit]
        return [(w + ("_" if w in longer else ""), sum(c.values()), c.most_common()) for w, c in ranked]

    def summary(self) -> str:
        c = self.counts()
        total = sum(c.values())
        return (f"summary: {self.arch}: {total} option(s) differ: {c[REQUESTED]} requested, "
                f"{c[OMITTED]} omitted on purpose, {c[HARDWARE]} hardware/internal, "
                f"{c[UNEXPLAINED]} unexplained ({len(self.failing())} enabled by the reference); "
                f"{c[Y_VS_M]} built-in vs module")

    def to_json(self, **meta: object) -> dict:
        return {**meta, "arch": self.arch, "counts": self.counts(), "failing": [d.option for d in self.failing()],
                "unexplained_prefixes": [{"prefix": p, "count": n, "menus": dict(m)}
                                         for p, n, m in self.unexplained_prefixes(limit=10**6)],
                "differences": [d.to_json() for d in self.differences]}


def _symbol_facts(option: str, index: KconfigIndex) -> tuple[tuple[str, ...], tuple[str, ...], str | None]:
    """(menu, kconfig locations, reason when the symbol is internal or not in this arch)."""
    sym = index.lookup(option)
    if sym is not None:
        reason = None if sym.prompted else f"internal symbol (no prompt: derived, never chosen) at {sym.definitions[0]}"
        return sym.menu, sym.definitions, reason
    elsewhere = index.defined_elsewhere(option)
    if elsewhere:
        where = ", ".join(elsewhere[:3]) + (f" (+{len(elsewhere) - 3} more)" if len(elsewhere) > 3 else "")
        return (OTHER_ARCH,), elsewhere, f"not in {index.srcarch}'s Kconfig: defined only in {where}"
    return (NOT_IN_TREE,), (), "not defined in this kernel tree"


def classify(option: str, ours: str, reference: str, requests: dict[str, kconfig.Request],
             contract: contract_mod.Contract, index: KconfigIndex, arch: str) -> Difference:
    way = direction(ours, reference)
    menu, where, symbol_reason = _symbol_facts(option, index)
    base = dict(option=option, ours=ours, reference=reference, direction=way, menu=menu, kconfig=where)
    cap = contract.requirement(option, arch)
    if cap is not None:
        base.update(capability=cap.name, needed_by=cap.needed_by)
    req = requests.get(option)
    if req is not None:
        base["request"] = req.where
    if way == BUILTIN_MODULE:
        return Difference(cls=Y_VS_M, reason=f"reference {reference}, ours {ours}", **base)
    if req is not None:
        why = f"{req.where}: {option}={req.value}"
        if cap is not None:
            why += f"; capability '{cap.name}', needed by {cap.needed_by}"
        return Difference(cls=REQUESTED, reason=why, **base)
    om = contract.omission(option, arch) if way != OURS_ENABLES else None
    if om is not None:
        cls = HARDWARE if om.kind == "hardware" else OMITTED
        return Difference(cls=cls, reason=f"{om.kind} omission '{om.name}': {om.reason}", omission=om.name,
                          omission_kind=om.kind, **base)
    if symbol_reason is not None:
        return Difference(cls=HARDWARE, reason=symbol_reason, **base)
    return Difference(cls=UNEXPLAINED, reason="no fragment line, no omission in the contract", **base)


def compare(ours: dict[str, str], reference: dict[str, str], requests: dict[str, kconfig.Request],
            contract: contract_mod.Contract, index: KconfigIndex, arch: str) -> Comparison:
    """Every option whose normalised value differs between ``ours`` and ``reference``, classified."""
    diffs = []
    for option in sorted(set(ours) | set(reference)):
        o, r = normalise(ours.get(option)), normalise(reference.get(option))
        if o != r:
            diffs.append(classify(option, o, r, requests, contract, index, arch))
    return Comparison(arch, tuple(diffs))


# ================================================================================================
# Rendering
# ================================================================================================
_ORDER = {UNEXPLAINED: 0, OMITTED: 1, REQUESTED: 2, HARDWARE: 3, Y_VS_M: 4}
_ARROW = {REF_ENABLES: "reference enables", OURS_ENABLES: "ours enables", VALUE: "value differs",
          BUILTIN_MODULE: "y vs m"}


def _group_key(d: Difference, depth: int) -> str:
    return " > ".join(d.menu[:depth]) if d.menu else TOP_LEVEL


def _short(value: str, width: int = 16) -> str:
    return value if len(value) <= width else value[:width - 3] + "..."


def _line(d: Difference) -> str:
    vals = f"ref {_short(d.reference)} / ours {_short(d.ours)}"
    return f"  {LABELS[d.cls]:<19} {d.option:<42} {vals:<22} {d.reason}"


def render(result: Comparison, *, header: str = "", depth: int = 3, prefixes: int = 40) -> str:
    """The report: one section per menu (``depth`` levels deep), built-in vs module apart, the
    failing options' prefixes, and the summary line last."""
    out = [header] if header else []
    groups: dict[str, list[Difference]] = {}
    for d in result.differences:
        if d.cls != Y_VS_M:
            groups.setdefault(_group_key(d, depth), []).append(d)
    for name in sorted(groups, key=lambda g: (g.startswith("("), g)):
        items = sorted(groups[name], key=lambda d: (_ORDER[d.cls], d.option))
        counts = Counter(d.cls for d in items)
        what = ", ".join(f"{counts[c]} {LABELS[c]}" for c in CLASSES if counts[c])
        out += ["", f"== {name} ({what})"] + [_line(d) for d in items]
    ym = result.of(Y_VS_M)
    if ym:
        out += ["", f"== built-in vs module ({len(ym)}; both enabled, not unexplained)"]
        out += [f"  {d.option:<42} ref {d.reference} / ours {d.ours}  [{_group_key(d, depth)}]" for d in ym]
    top = result.unexplained_prefixes(prefixes)
    if top:
        out += ["", f"== unexplained options the reference enables, by prefix (top {len(top)})"]
        for p, n, menus in top:
            more = f" (+{len(menus) - 1} more menus)" if len(menus) > 1 else ""
            out.append(f"  {p:<16} {n:>5}  {menus[0][0]}{more}")
    out += ["", result.summary()]
    return "\n".join(out)


# ================================================================================================
# I/O and the CLI entry
# ================================================================================================
def read_config(path: Path, what: str) -> dict[str, str]:
    """A kernel .config (gzip-compressed too, like /proc/config.gz) as {option: value}."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise InvalidArgument(f"{what} {path} does not exist", step=STEP) from None
    except OSError as exc:
        raise InvalidArgument(f"cannot read {what} {path}: {exc.strerror or exc}", step=STEP) from None
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as exc:
            raise InvalidArgument(f"cannot read {what} {path}: bad gzip data ({exc})", step=STEP) from None
    values = kconfig.parse_config_text(data.decode("utf-8", errors="replace"))
    if not values:
        raise InvalidArgument(f"{what} {path} is not a kernel config (no CONFIG_ lines)", step=STEP)
    return values


def _arch(name: str) -> Arch:
    try:
        return get_arch(name)
    except UnsupportedArch as exc:
        raise UnsupportedArch(exc.message, step=STEP) from None


def _contract(path: Path | None) -> contract_mod.Contract:
    path = path or contract_mod.CONTRACT
    if not path.is_file():
        raise InvalidArgument(f"contract {path} does not exist (give one with --contract PATH)", step=STEP)
    return contract_mod.load(path)


def _pinned_tree(pin: source.Pin) -> Path:
    from . import configs

    log = configs._logdir() / "compare-config.log"
    log.write_text("")
    _, tree = configs._tree(pin, log)
    return tree


def run(arch: str, reference: str | Path, *, tree: Path | None = None, allow_unexplained: bool = False,
        json_path: Path | None = None, contract_path: Path | None = None) -> int:
    """Compare the committed production config of ``arch`` with ``reference``; print the report.
    Returns 1 when an option the reference enables is unexplained (0 with ``allow_unexplained``)."""
    arch_ = _arch(arch)
    ref_path = Path(reference)
    ref = read_config(ref_path, "reference config")
    pin = source.Pin.load()
    ours_path = kconfig.committed_config_path(arch_, pin.version)
    if not ours_path.is_file():
        raise InvalidArgument(f"{ours_path} is missing; create it with 'nox -s update-configs'", step=STEP)
    ours = read_config(ours_path, "production config")
    requests = kconfig.get_variant(PRODUCTION).requests(arch_)
    contract = _contract(contract_path)
    tree_path = Path(tree) if tree else _pinned_tree(pin)
    index = load_index(tree_path, arch_.srcarch)
    result = compare(ours, ref, requests, contract, index, arch_.name)
    header = (f"compare-config {arch_.name}: ours {ours_path} vs reference {ref_path}\n"
              f"(tree {tree_path}, contract {contract.path}; {len(index.symbols)} Kconfig symbols)")
    print(render(result, header=header))
    if json_path:
        atomic_write_json(Path(json_path), result.to_json(ours=str(ours_path), reference=str(ref_path),
                                                          tree=str(tree_path), contract=str(contract.path)))
    status = result.exit_status(allow_unexplained)
    if result.failing():
        verdict = "FAIL" if status else "allowed"
        print(f"{verdict}: {len(result.failing())} option(s) the reference enables are unexplained: add "
              "them to the fragments or to the contract's omissions (--allow-unexplained to explore)")
    return status

