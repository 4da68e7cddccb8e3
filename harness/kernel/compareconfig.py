"""``compare-config``: the production config against any reference config, every difference explained.

Every option whose value differs is grouped by its Kconfig menu and marked:

* ``requested``: our value comes from a fragment line (and, where the contract names the option, the
  capability that needs it);
* ``omitted``: a ``kind = "policy"`` omission of configs/contract.toml matches it;
* ``hardware``: a ``kind = "hardware"`` omission matches, or the symbol is internal (no prompt in its
  Kconfig definition: derived, never chosen), or it does not exist in our tree / our arch at all;
* ``unexplained``: everything else.

An option that is off in ours inherits the explanation of a *parent* that is off in ours too: a
symbol of its ``depends on`` (only the plain symbol names of the top-level ``&&`` conjunction: one of
them off is enough to keep the option off; nothing else of the expression is evaluated), or the
symbol of an ``if`` block (``menuconfig X`` + ``if X``) or of a ``menu``/``choice``'s ``depends on``
that encloses it, in its own Kconfig file or around the ``source`` that reached it. A parent
explains when an omission matches it, when it does not exist for this arch, or (recursively) through
its own parents; an internal parent explains nothing by itself (whatever selects it would need the
explanation). A symbol defined more than once inherits only through parents common to every
definition. The chain is reported (``via``): ``CONFIG_SFC_MTD`` -> ``SFC`` (depends on) ->
``NET_VENDOR_SOLARFLARE`` (if), a hardware omission.

y against m is counted apart ("built-in vs module"): both mean enabled. The exit status is 1 when an
option the reference enables and ours does not is unexplained (unless ``allow_unexplained``). Values that
differ (numbers, strings) never fail, nor do the members of a Kconfig ``choice`` when both configs pick
a member of it, different ones (``HZ_250`` against ``HZ_1000``: one setting, two values).

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
from typing import Any

from harness.arch import Arch, get_arch
from harness.errors import InvalidArgument, UnsupportedArch
from harness.fsutil import atomic_write_json, atomic_write_text
from harness.kernel import contract as contract_mod
from harness.kernel import kconfig, source
from harness.layout import cache_root

LOG = logging.getLogger(__name__)
STEP = "compare-config"
PRODUCTION = "production"

# -- classes and directions ----------------------------------------------------------------------
REQUESTED, OMITTED, HARDWARE, UNEXPLAINED, Y_VS_M = "requested", "omitted", "hardware", "unexplained", "y-vs-m"
CLASSES = (REQUESTED, OMITTED, HARDWARE, UNEXPLAINED)
LABELS = {REQUESTED: "requested", OMITTED: "omitted on purpose", HARDWARE: "hardware/internal",
          UNEXPLAINED: "unexplained", Y_VS_M: "built-in vs module"}
REF_ENABLES, OURS_ENABLES, VALUE, BUILTIN_MODULE = "reference-enables", "ours-enables", "value", "y-vs-m"
CHOICE = "choice"  # members of one Kconfig choice: the two configs pick different members (a value)
ENABLED = ("y", "m")
NOT_IN_TREE, OTHER_ARCH, TOP_LEVEL = "(not in this tree)", "(not in this arch's Kconfig)", "(top level)"


# ================================================================================================
# Kconfig scanner
# ================================================================================================
SCAN_FORMAT = 2  # the shape of the cached per-file scan
_ENTRY = re.compile(r"^(menuconfig|config)\s+([A-Za-z0-9_]+)\s*(?:#.*)?$")
_QUOTED = r"""(["'])((?:\\.|(?!\1).)*)\1"""
_PROMPT = re.compile(r"^(?:bool|tristate|string|int|hex|prompt)\s+" + _QUOTED)
_MENU = re.compile(r"^menu\s+" + _QUOTED)
_SOURCE = re.compile(r"^source\s+" + _QUOTED)
_IF = re.compile(r"^if\s+(.*?)\s*(?:#.*)?$")
_HELP = re.compile(r"^(?:help|---help---)\s*(?:#.*)?$")
_STATEMENT = re.compile(r"^(?:config|menuconfig|choice|endchoice|menu|endmenu|if|endif|source|comment|mainmenu)\b")
_SYMBOL = re.compile(r"^[A-Za-z0-9_]+$")
_DEPENDS = re.compile(r"^depends\s+on\s+(.*)$")
_CONSTANTS = frozenset({"y", "m", "n"})
DEPENDS_ON, IF_BLOCK, MENU_DEPENDS = "depends on", "if", "menu depends on"  # how a parent encloses


def _uncomment(expr: str) -> str:
    """``expr`` without a trailing ``# comment`` (a '#' inside quotes is kept)."""
    quote = None
    for i, ch in enumerate(expr):
        if quote:
            if ch == quote:
                quote = None
        elif ch in "\"'":
            quote = ch
        elif ch == "#":
            return expr[:i]
    return expr


def conjuncts(expr: str) -> tuple[str, ...]:
    """The plain symbols ANDed at the top level of a Kconfig expression: each one off makes the whole
    expression false. ``A && (B && C) && !(D) && (E || F)`` -> (A, B, C); ``A || B`` -> ()."""
    text = _uncomment(expr).strip()
    parts, depth, start, i = [], 0, 0, 0
    while i < len(text):
        ch = text[i]
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif depth == 0 and text.startswith("&&", i):
            parts.append(text[start:i])
            start = i + 2
            i += 1
        elif depth == 0 and text.startswith("||", i):
            return ()  # a disjunction at the top: no single symbol is required
        i += 1
    parts.append(text[start:])
    out: list[str] = []
    for part in (p.strip() for p in parts):
        if _SYMBOL.match(part):
            if part not in _CONSTANTS and not part.isdigit():
                out.append(part)
        elif part.startswith("(") and part.endswith(")") and _balanced(part[1:-1]):
            out.extend(conjuncts(part[1:-1]))
    return tuple(dict.fromkeys(out))


def _balanced(text: str) -> bool:
    depth = 0
    for ch in text:
        depth += (ch == "(") - (ch == ")")
        if depth < 0:
            return False
    return depth == 0


Parent = tuple[str, str]  # (symbol, how it encloses: DEPENDS_ON | IF_BLOCK | MENU_DEPENDS)


@dataclass(frozen=True)
class Entry:
    """One ``config``/``menuconfig`` definition in one file; ``menu`` is the chain of menu titles
    enclosing it inside that file; ``parents`` the plain symbols its ``depends on`` requires, then
    those of the ``if`` blocks and menus enclosing it inside that file (innermost first)."""

    symbol: str
    line: int
    prompted: bool
    menu: tuple[str, ...]
    parents: tuple[Parent, ...] = ()
    choice: int = 0  # the line of the `choice` whose member it is (0: none)


@dataclass(frozen=True)
class Sourced:
    path: str  # as written (relative to the tree root, may hold $(SRCARCH))
    line: int
    menu: tuple[str, ...]
    parents: tuple[Parent, ...] = ()  # of the if blocks and menus enclosing the source statement


@dataclass(frozen=True)
class FileScan:
    entries: tuple[Entry, ...]
    sources: tuple[Sourced, ...]


@dataclass
class _Frame:
    kind: str  # menu | if | choice
    title: str | None
    menuconfigs: dict[str, str] = field(default_factory=dict)  # menuconfig symbol -> its prompt, at this level
    parents: list[Parent] = field(default_factory=list)  # the if condition's / the menu's depends on symbols
    line: int = 0  # of a choice


@dataclass
class _Open:
    """The config entry being read: its prompt arrives on a later line."""

    symbol: str
    line: int
    menuconfig: bool
    menu: tuple[str, ...]
    blocks: tuple[Parent, ...]
    choice: int = 0
    prompt: str | None = None
    depends: list[str] = field(default_factory=list)


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
        self.attributed: _Frame | None = None  # a menu/choice whose own depends on may follow

    def chain(self) -> tuple[str, ...]:
        return tuple(f.title for f in self.frames if f.title)

    def choice(self) -> int:
        return next((f.line for f in reversed(self.frames) if f.kind == "choice"), 0)

    def blocks(self) -> tuple[Parent, ...]:
        return tuple(p for f in reversed(self.frames) for p in f.parents)

    def close_entry(self) -> None:
        e = self.open
        if e is None:
            return
        parents = tuple((s, DEPENDS_ON) for s in dict.fromkeys(e.depends))
        parents += tuple(b for b in e.blocks if b[0] not in e.depends)
        self.entries.append(Entry(e.symbol, e.line, e.prompt is not None, e.menu, parents, e.choice))
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
            elif m := _DEPENDS.match(text):
                if self.open is not None:
                    self.open.depends.extend(conjuncts(m[1]))
                elif self.attributed is not None:
                    self.attributed.parents.extend((s, MENU_DEPENDS) for s in conjuncts(m[1]))
            return
        self.close_entry()
        self.attributed = None
        word = text.split(None, 1)[0]
        if m := _ENTRY.match(text):
            self.open = _Open(m[2], no, m[1] == "menuconfig", self.chain(), self.blocks(), self.choice())
        elif m := _MENU.match(text):
            self.frames.append(_Frame("menu", m[2]))
            self.attributed = self.frames[-1]
        elif word == "if":
            m = _IF.match(text)
            cond = m[1] if m else ""
            title = self.frames[-1].menuconfigs.get(cond) if _SYMBOL.match(cond) else None
            self.frames.append(_Frame("if", title, parents=[(s, IF_BLOCK) for s in conjuncts(cond)]))
        elif word == "choice":
            self.frames.append(_Frame("choice", None, line=no))
            self.attributed = self.frames[-1]
        elif word in ("endmenu", "endif", "endchoice"):
            self.pop(word[3:])
        elif m := _SOURCE.match(text):
            self.sources.append(Sourced(m[2], no, self.chain(), self.blocks()))

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
    parents: tuple[Parent, ...] = ()  # required by every definition: depends on, then enclosing blocks
    choice: str | None = None  # "path:line" of the `choice` it is a member of


@dataclass(frozen=True)
class KconfigIndex:
    srcarch: str
    symbols: dict[str, Symbol]  # reachable from the top-level Kconfig for srcarch
    elsewhere: dict[str, tuple[str, ...]]  # defined only in files not reached (other arches, unsourced)

    def lookup(self, option: str) -> Symbol | None:
        return self.symbols.get(option.removeprefix("CONFIG_"))

    def defined_elsewhere(self, option: str) -> tuple[str, ...]:
        return self.elsewhere.get(option.removeprefix("CONFIG_"), ())

    def choices(self) -> dict[str, tuple[str, ...]]:
        """choice ("path:line") -> its member symbols."""
        out: dict[str, list[str]] = {}
        for sym in self.symbols.values():
            if sym.choice:
                out.setdefault(sym.choice, []).append(sym.name)
        return {k: tuple(v) for k, v in out.items()}


def _other_arch(path: str, srcarch: str) -> bool:
    parts = path.split("/")
    return len(parts) > 2 and parts[0] == "arch" and parts[1] != srcarch


def build_index(scans: dict[str, FileScan], srcarch: str, top: str = "Kconfig") -> KconfigIndex:
    """Follow ``source`` from ``top`` for ``srcarch`` (other arches' directories skipped) and index
    every definition reached, with its full menu chain."""
    defs: dict[str, list[tuple[str, Entry, tuple[str, ...], tuple[Parent, ...]]]] = {}
    visited: set[str] = set()

    def visit(path: str, outer: tuple[str, ...], outer_parents: tuple[Parent, ...]) -> None:
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
            parents = item.parents + outer_parents  # innermost first
            if isinstance(item, Entry):
                defs.setdefault(item.symbol, []).append((path, item, chain, parents))
            elif "$(" in item.path.replace("$(SRCARCH)", ""):
                LOG.debug("[%s] %s:%d: not following %s", STEP, path, item.line, item.path)
            else:
                visit(item.path.replace("$(SRCARCH)", srcarch), chain, parents)

    visit(top, (), ())
    symbols = {}
    for name, found in defs.items():
        prompted = [f for f in found if f[1].prompted]
        chosen = (prompted or found)[0]
        in_choice = next((f for f in found if f[1].choice), None)
        symbols[name] = Symbol(name, tuple(f"{p}:{e.line}" for p, e, _, _ in found), bool(prompted), chosen[2],
                               _common_parents(name, [f[3] for f in found]),
                               f"{in_choice[0]}:{in_choice[1].choice}" if in_choice else None)
    elsewhere: dict[str, list[str]] = {}
    for path in sorted(set(scans) - visited):
        for e in scans[path].entries:
            if e.symbol not in symbols:
                elsewhere.setdefault(e.symbol, []).append(f"{path}:{e.line}")
    return KconfigIndex(srcarch, symbols, {k: tuple(v) for k, v in elsewhere.items()})


def _common_parents(name: str, per_definition: list[tuple[Parent, ...]]) -> tuple[Parent, ...]:
    """The parents every definition requires (Kconfig ORs the definitions of one symbol), each once,
    in the first definition's order; never the symbol itself."""
    first: dict[str, str] = {}
    for sym, how in per_definition[0]:
        first.setdefault(sym, how)
    common = set(first)
    for parents in per_definition[1:]:
        common &= {sym for sym, _ in parents}
    return tuple((sym, how) for sym, how in first.items() if sym in common and sym != name)


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
    return {path: {"entries": [[e.symbol, e.line, e.prompted, list(e.menu), [list(p) for p in e.parents], e.choice]
                               for e in s.entries],
                   "sources": [[x.path, x.line, list(x.menu), [list(p) for p in x.parents]] for x in s.sources]}
            for path, s in scans.items()}


def _scans_from_json(data: dict) -> dict[str, FileScan]:
    return {path: FileScan(tuple(Entry(sym, line, prompted, tuple(menu), tuple((a, b) for a, b in parents), choice)
                                 for sym, line, prompted, menu, parents, choice in s["entries"]),
                           tuple(Sourced(p, line, tuple(menu), tuple((a, b) for a, b in parents))
                                 for p, line, menu, parents in s["sources"]))
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
    via: tuple[Parent, ...] = ()  # the inherited explanation: (parent option, how it encloses), root last

    @property
    def group(self) -> str:
        return " > ".join(self.menu) if self.menu else TOP_LEVEL

    def to_json(self) -> dict:
        return {"option": self.option, "ours": self.ours, "reference": self.reference,
                "direction": self.direction, "class": self.cls, "reason": self.reason,
                "menu": list(self.menu), "kconfig": list(self.kconfig), "request": self.request,
                "capability": self.capability, "needed_by": self.needed_by, "omission": self.omission,
                "omission_kind": self.omission_kind,
                "via": [{"option": o, "relation": how} for o, how in self.via]}


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


@dataclass(frozen=True)
class Inherited:
    """Why a parent is off in ours: ``chain`` from the child's first parent to the root, which an
    omission matches (``omission``) or which this arch does not have (``reason`` only)."""

    chain: tuple[Parent, ...]
    cls: str  # OMITTED | HARDWARE
    reason: str  # the root's
    omission: contract_mod.Omission | None = None

    def describe(self) -> str:
        names = " -> ".join(o.removeprefix("CONFIG_") for o, _ in self.chain)
        return f"via {names}: {self.reason}"


def _rank(why: Inherited) -> tuple[int, bool]:
    """The shortest chain first; at equal length an omission's reason before 'not in this arch'."""
    return len(why.chain), why.omission is None


class Inheritance:
    """Explanations that options off in ``ours`` inherit from their parents (memoised per symbol)."""

    def __init__(self, ours: dict[str, str], contract: contract_mod.Contract, index: KconfigIndex, arch: str):
        self.ours, self.contract, self.index, self.arch = ours, contract, index, arch
        self._memo: dict[str, Inherited | None] = {}

    def off(self, sym: str) -> bool:
        return normalise(self.ours.get(f"CONFIG_{sym}")) == "n"

    def _root(self, sym: str) -> Inherited | None:
        """``sym`` (off in ours) explained by itself: an omission, or absent from this arch."""
        om = self.contract.omission(sym, self.arch)
        if om is not None:
            return Inherited((), HARDWARE if om.kind == "hardware" else OMITTED,
                             f"{om.kind} omission '{om.name}': {om.reason}", om)
        if self.index.lookup(sym) is None:
            return Inherited((), HARDWARE, _symbol_facts(sym, self.index)[2] or "")
        return None

    def parent_of(self, sym: str) -> Inherited | None:
        """The shortest chain explaining why ``sym``'s options are off: through the parents of its
        Kconfig definition that are off in ours (None when none is explained)."""
        sym = sym.removeprefix("CONFIG_")
        if sym in self._memo:
            return self._memo[sym]
        self._memo[sym] = None  # Kconfig forbids dependency loops; this guards against a bad tree
        found = self.index.lookup(sym)
        best: Inherited | None = None
        for parent, how in (found.parents if found else ()):
            if not self.off(parent):
                continue
            why = self._root(parent) or self.parent_of(parent)
            if why is None:
                continue
            cand = Inherited(((f"CONFIG_{parent}", how),) + why.chain, why.cls, why.reason, why.omission)
            if best is None or _rank(cand) < _rank(best):
                best = cand
        self._memo[sym] = best
        return best


def classify(option: str, ours: str, reference: str, requests: dict[str, kconfig.Request],
             contract: contract_mod.Contract, index: KconfigIndex, arch: str,
             inheritance: Inheritance | None = None, picks: tuple[str, str] | None = None) -> Difference:
    """``picks``: (ours, the reference's) member of the choice ``option`` belongs to, when both pick one."""
    way = CHOICE if picks else direction(ours, reference)
    menu, where, symbol_reason = _symbol_facts(option, index)
    base: dict[str, Any] = dict(option=option, ours=ours, reference=reference, direction=way, menu=menu,
                                kconfig=where)
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
    om = contract.omission(option, arch) if way != OURS_ENABLES and not (way == CHOICE and ours != "n") else None
    if om is not None:
        cls = HARDWARE if om.kind == "hardware" else OMITTED
        return Difference(cls=cls, reason=f"{om.kind} omission '{om.name}': {om.reason}", omission=om.name,
                          omission_kind=om.kind, **base)
    inherited = inheritance.parent_of(option) if inheritance is not None and ours == "n" else None
    if inherited is not None:
        om = inherited.omission
        return Difference(cls=inherited.cls, reason=inherited.describe(), omission=om.name if om else None,
                          omission_kind=om.kind if om else None, via=inherited.chain, **base)
    if symbol_reason is not None:
        return Difference(cls=HARDWARE, reason=symbol_reason, **base)
    if picks:
        return Difference(cls=UNEXPLAINED, reason=f"another member of a choice: ours picks {picks[0]}, the reference "
                                                  f"{picks[1]} (a value; no fragment line, no omission)", **base)
    return Difference(cls=UNEXPLAINED, reason="no fragment line, no omission in the contract", **base)


def compare(ours: dict[str, str], reference: dict[str, str], requests: dict[str, kconfig.Request],
            contract: contract_mod.Contract, index: KconfigIndex, arch: str) -> Comparison:
    """Every option whose normalised value differs between ``ours`` and ``reference``, classified."""
    diffs = []
    inheritance = Inheritance(ours, contract, index, arch)
    members = index.choices()

    def pick(config: dict[str, str], choice: str) -> str | None:
        return next((f"CONFIG_{m}" for m in members[choice] if normalise(config.get(f"CONFIG_{m}")) == "y"), None)

    for option in sorted(set(ours) | set(reference)):
        o, r = normalise(ours.get(option)), normalise(reference.get(option))
        if o != r:
            sym = index.lookup(option)
            picks = None
            if sym is not None and sym.choice and {o, r} == {"y", "n"}:
                p_ours, p_ref = pick(ours, sym.choice), pick(reference, sym.choice)
                if p_ours and p_ref and p_ours != p_ref:
                    picks = (p_ours, p_ref)
            diffs.append(classify(option, o, r, requests, contract, index, arch, inheritance, picks))
    return Comparison(arch, tuple(diffs))


# ================================================================================================
# Rendering
# ================================================================================================
_ORDER = {UNEXPLAINED: 0, OMITTED: 1, REQUESTED: 2, HARDWARE: 3, Y_VS_M: 4}
_ARROW = {REF_ENABLES: "reference enables", OURS_ENABLES: "ours enables", VALUE: "value differs",
          CHOICE: "another choice",
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
    from harness.kernel import configs

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

