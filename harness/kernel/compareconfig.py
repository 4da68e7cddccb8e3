"""``compare-config``: the production config against any reference config, every difference explained.

Every option whose value differs is grouped by its Kconfig menu and marked:

* ``requested``: our value comes from a fragment line (and, where the contract names the option, the
  capability that needs it);
* ``omitted``: a ``kind = "policy"`` omission of configs/contract.toml matches it;
* ``hardware``: a ``kind = "hardware"`` omission matches, or the symbol is internal (no prompt in its
  Kconfig definition: derived, never chosen), or it does not exist in our tree / our arch at all;
* ``unexplained``: everything else.

The Kconfig facts come from the tree's own Kconfig, parsed and evaluated by kconfiglib for the arch
asked (:func:`load_tree`, with the kernel's environment of :func:`harness.kernel.explain.kconfig_env`)
with our config loaded: each symbol's menu (the menu tree ``make menuconfig`` shows: ``menu`` blocks
and ``menuconfig`` symbols with the entries they enclose), its definitions, whether it has a prompt,
its ``choice``, and its dependencies. A symbol this arch does not define is looked up in the other
arches' Kconfig (parsed on first use).

An option that is off in ours inherits the explanation of a *parent* that is off in ours too, found by
evaluating its dependencies on our values. Each definition's direct dependencies are its own
``depends on`` and those of the ``if`` blocks, ``menu``s and ``choice``s enclosing it (around the
``source`` that reached it too); when they hold but every prompt is hidden, the prompt's ``if``. Of the
parts that are false, the symbol that makes them false is a parent: any false conjunct of an ``&&``;
every disjunct of an ``||``, which then all need an explanation (the reason names each); ``A=y``,
``A=m`` and ``A!=n`` with A off (never ``!A``: an option on in ours explains nothing). A parent
explains when an omission matches it, when a fragment line switches it off, when this arch does not
define it, or (recursively) through its own parents; an internal parent that is off only because
nothing selects it explains nothing by itself (whatever would select it needs the explanation). A
symbol defined more than once is explained only when every definition is. The shortest chain is
reported (``via``, with how each parent encloses the one before): ``CONFIG_NET_ACT_CT`` ->
``NF_CONNTRACK`` (depends on) -> ``NETFILTER`` (menu depends on), a policy omission. A fragment line at
the root makes the option ``requested`` (``request`` names that line). Our config is loaded into
kconfiglib as it is; options whose value Kconfig resolves otherwise (a stale config, another
toolchain) are logged as a warning.

y against m is counted apart ("built-in vs module"): both mean enabled. The exit status is 1 when an
option the reference enables and ours does not is unexplained (unless ``allow_unexplained``). Values that
differ (numbers, strings) never fail, nor do the members of a Kconfig ``choice`` when both configs pick
a member of it, different ones (``HZ_250`` against ``HZ_1000``: one setting, two values).
"""
from __future__ import annotations

import contextlib
import gzip
import logging
import os
import tempfile
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import kconfiglib
from kconfiglib import Choice, MenuNode, Symbol

from harness.arch import ARCHES, Arch, get_arch
from harness.errors import InvalidArgument, UnsupportedArch
from harness.fsutil import atomic_write_json
from harness.kernel import contract as contract_mod
from harness.kernel import explain, kconfig, source

if TYPE_CHECKING:
    from kconfiglib import Expr  # Symbol | Choice | (op, Expr[, Expr]): only in typings/kconfiglib.pyi

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

# -- how a parent encloses the option it explains (``via``) ---------------------------------------
DEPENDS_ON, IF_BLOCK, MENU_DEPENDS, CHOICE_DEPENDS, PROMPT_IF = (
    "depends on", "if", "menu depends on", "choice depends on", "prompt if")
Parent = tuple[str, str]  # (CONFIG_ option, how it encloses the one before it)
_BOOL_TRI = frozenset({kconfiglib.BOOL, kconfiglib.TRISTATE})
_MAX_SELECTORS = 3


# ================================================================================================
# The Kconfig tree (kconfiglib)
# ================================================================================================
class _Kconf(explain.Kconf):
    """explain's Kconf that also keeps what kconfiglib folds into ``MenuNode.dep`` and then drops:
    each menu node's own ``depends on`` and the block (``if``, ``menu``, ``choice``, the top) that
    encloses it in the Kconfig text."""

    def __init__(self, filename: str, arch: str) -> None:
        self.blocks: dict[MenuNode, tuple[Expr, MenuNode]] = {}
        super().__init__(filename, arch)

    def _propagate_deps(self, node: MenuNode, visible_if: Expr) -> None:
        # called once per block, parents first: each child's dep is still its own `depends on`
        cur = node.list
        while cur is not None:
            self.blocks.setdefault(cur, (cur.dep, node))
            cur = cur.next
        super()._propagate_deps(node, visible_if)


def load_tree(tree: Path, arch: Arch | str) -> KconfigTree:
    """Parse ``tree``/Kconfig for ``arch`` as :func:`harness.kernel.explain.load` does (the kernel's
    environment, $(shell,...) probes from a scratch directory), keeping the block structure."""
    a = get_arch(arch) if isinstance(arch, str) else arch
    tree = Path(tree)
    if not (tree / "Kconfig").is_file():
        raise InvalidArgument(f"{tree} is not a kernel tree (no top-level Kconfig)", step=STEP)
    try:
        kconf = explain.load(tree, a, cls=_Kconf)
    except kconfiglib.KconfigError as exc:
        raise InvalidArgument(f"cannot parse the Kconfig of {tree} for {a.name}: {exc}", step=STEP) from None
    LOG.info("[%s] %s: %d Kconfig symbols for %s", STEP, tree, len(kconf.unique_defined_syms), a.name)
    return KconfigTree(tree, a, kconf)


class KconfigTree:
    """One kernel tree's Kconfig for one arch, and the facts compare-config takes from it."""

    def __init__(self, path: Path, arch: Arch, kconf: _Kconf) -> None:
        self.path, self.arch, self.kconf = path, arch, kconf
        self._root = path.resolve()
        self._others: list[KconfigTree] | None = None

    @property
    def srcarch(self) -> str:
        return self.arch.srcarch

    @property
    def size(self) -> int:
        """How many symbols this arch's Kconfig defines."""
        return len(self.kconf.unique_defined_syms)

    def symbol(self, option: str) -> Symbol | None:
        """The symbol of ``option`` (with or without CONFIG_) when this arch defines it."""
        sym = self.kconf.syms.get(option.removeprefix("CONFIG_"))
        return sym if sym is not None and sym.nodes else None

    def main_node(self, sym: Symbol) -> MenuNode:
        """The definition that places the symbol in the menus: the first with a prompt."""
        return next((n for n in sym.nodes if n.prompt), sym.nodes[0])

    def prompted(self, sym: Symbol) -> bool:
        """Some definition has a prompt: a user (or a fragment) chooses it."""
        return any(n.prompt for n in sym.nodes)

    def menu(self, sym: Symbol) -> tuple[str, ...]:
        """The titles of the menus enclosing the symbol, outermost first: ``menu`` blocks and
        ``menuconfig`` symbols (choices and the top menu are not menus here)."""
        titles: list[str] = []
        node = self.main_node(sym).parent
        while node is not None and node is not self.kconf.top_node:
            if node.prompt and (node.item == kconfiglib.MENU or (isinstance(node.item, Symbol) and node.is_menuconfig)):
                titles.append(node.prompt[0])
            node = node.parent
        return tuple(reversed(titles))

    def location(self, node: MenuNode) -> str:
        name = node.filename
        with contextlib.suppress(ValueError):
            name = Path(name).relative_to(self._root).as_posix() if os.path.isabs(name) else name
        return f"{name}:{node.linenr}"

    def locations(self, sym: Symbol) -> tuple[str, ...]:
        """The "path:line" of every definition."""
        return tuple(self.location(n) for n in sym.nodes)

    def elsewhere(self, option: str) -> tuple[str, ...]:
        """Where the other arches define a symbol this one does not (their Kconfig parsed on first use)."""
        if self._others is None:
            self._others = []
            for other in ARCHES.values():
                if other.srcarch != self.srcarch:
                    try:
                        self._others.append(load_tree(self.path, other))
                    except InvalidArgument as exc:
                        LOG.warning("[%s] not looking in %s's Kconfig: %s", STEP, other.name, exc.message)
        out: list[str] = []
        for tree in self._others:
            sym = tree.symbol(option)
            if sym is not None:
                out += [loc for loc in tree.locations(sym) if loc not in out]
        return tuple(out)

    def parts(self, node: MenuNode) -> list[tuple[str, Expr]]:
        """The direct dependencies of one definition (they AND to ``node.dep``), innermost first:
        (DEPENDS_ON, its own), then (IF_BLOCK | MENU_DEPENDS | CHOICE_DEPENDS, the enclosing block's
        own), up to the top; parts that are always true left out."""
        blocks = self.kconf.blocks
        own, enclosing = blocks.get(node, (node.dep, None))
        out: list[tuple[str, Expr]] = [(DEPENDS_ON, own)]
        while enclosing is not None and enclosing in blocks:
            how = (CHOICE_DEPENDS if isinstance(enclosing.item, Choice) else
                   MENU_DEPENDS if enclosing.item == kconfiglib.MENU else IF_BLOCK)
            own, outer = blocks[enclosing]
            out.append((how, own))
            enclosing = outer
        return [(how, e) for how, e in out if e is not self.kconf.y]

    def load_values(self, values: Mapping[str, str]) -> list[str]:
        """Load a config ({option: value} as parsed) into the Kconfig, as ``load_config`` does
        (replacing any other); the options of it whose value Kconfig resolves otherwise (a stale
        config: its explanations may not hold)."""
        with tempfile.TemporaryDirectory(prefix="compare-config-") as tmp:
            path = Path(tmp) / "values.config"
            path.write_text("".join(f"# {o} is not set\n" if v.strip() == "n" else f"{o}={v}\n"
                                    for o, v in values.items()))
            self.kconf.load_config(str(path), replace=True)
        return [o for o, v in values.items()
                if (sym := self.symbol(o)) is not None and normalise(sym.str_value) != normalise(v)]

    def selectors(self, sym: Symbol) -> list[str]:
        """The symbols that ``select`` this one."""
        if sym.rev_dep is self.kconf.n:
            return []
        names: list[str] = []
        for term in kconfiglib.split_expr(sym.rev_dep, kconfiglib.OR):
            first = kconfiglib.split_expr(term, kconfiglib.AND)[0]
            if isinstance(first, Symbol) and first.name not in names:
                names.append(first.name)
        return names


# ================================================================================================
# Comparison
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

    def to_json(self) -> dict[str, Any]:
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

    def to_json(self, **meta: object) -> dict[str, Any]:
        return {**meta, "arch": self.arch, "counts": self.counts(), "failing": [d.option for d in self.failing()],
                "unexplained_prefixes": [{"prefix": p, "count": n, "menus": dict(m)}
                                         for p, n, m in self.unexplained_prefixes(limit=10**6)],
                "differences": [d.to_json() for d in self.differences]}


def _symbol_facts(option: str, tree: KconfigTree) -> tuple[tuple[str, ...], tuple[str, ...], str | None]:
    """(menu, kconfig locations, reason when the symbol is internal or not in this arch)."""
    sym = tree.symbol(option)
    if sym is not None:
        where = tree.locations(sym)
        if tree.prompted(sym):
            return tree.menu(sym), where, None
        reason = f"internal symbol (no prompt: derived, never chosen) at {where[0]}"
        selectors = tree.selectors(sym)
        if selectors:
            more = f" (+{len(selectors) - _MAX_SELECTORS} more)" if len(selectors) > _MAX_SELECTORS else ""
            reason += f"; selected by {', '.join(selectors[:_MAX_SELECTORS])}{more}"
        return tree.menu(sym), where, reason
    elsewhere = tree.elsewhere(option)
    if elsewhere:
        text = ", ".join(elsewhere[:3]) + (f" (+{len(elsewhere) - 3} more)" if len(elsewhere) > 3 else "")
        return (OTHER_ARCH,), elsewhere, f"not in {tree.srcarch}'s Kconfig: defined only in {text}"
    return (NOT_IN_TREE,), (), f"not defined in this kernel tree (the Kconfig of {' or '.join(ARCHES)})"


# the kind of root an explanation ends in, strongest first
_ROOT_OMISSION, _ROOT_FRAGMENT, _ROOT_ABSENT = 0, 1, 2


@dataclass(frozen=True)
class Inherited:
    """Why a parent is off in ours: ``chain`` from the child's first parent to the root, which an
    omission matches (``omission``), a fragment line switches off (``request``), or which this arch
    does not have (``reason`` only). ``also``: when the child needs several parents off (the
    disjuncts of an ``||``), the explanations of the others."""

    chain: tuple[Parent, ...]
    cls: str  # OMITTED | HARDWARE | REQUESTED
    reason: str  # the root's
    omission: contract_mod.Omission | None = None
    request: str | None = None  # the fragment line of the root
    root: int = _ROOT_OMISSION
    also: tuple[Inherited, ...] = ()

    def names(self) -> str:
        return " -> ".join(o.removeprefix("CONFIG_") for o, _ in self.chain)

    def describe(self) -> str:
        """``via A -> B: <the root's reason>``, then ``; and via C: ...`` for each other branch needed
        (``; and via C, the same`` when its root gives the same reason)."""
        text = f"via {self.names()}: {self.reason}"
        for other in self.also:
            text += f"; and via {other.names()}, the same" if other.reason == self.reason and not other.also \
                else f"; and {other.describe()}"
        return text


def _rank(why: Inherited) -> tuple[int, int, int]:
    """The shortest chain first; at equal length an omission before a fragment line before 'not in
    this arch'; then the fewest other branches."""
    return len(why.chain), why.root, len(why.also)


def _prefixed(link: Parent, why: Inherited) -> Inherited:
    return replace(why, chain=(link, *why.chain), also=tuple(_prefixed(link, o) for o in why.also))


class Inheritance:
    """Explanations that options off in ours inherit from their parents, evaluated on the values
    loaded in ``tree`` (ours; memoised per symbol)."""

    def __init__(self, tree: KconfigTree, contract: contract_mod.Contract, arch: str,
                 requests: Mapping[str, kconfig.Request] | None = None) -> None:
        self.tree, self.contract, self.arch, self.requests = tree, contract, arch, requests or {}
        self._memo: dict[str, Inherited | None] = {}

    def _root(self, sym: Symbol) -> Inherited | None:
        """``sym`` (off in ours) explained by itself: an omission, a fragment line, absent from this arch."""
        option = f"CONFIG_{sym.name}"
        om = self.contract.omission(option, self.arch)
        if om is not None:
            return Inherited((), HARDWARE if om.kind == "hardware" else OMITTED,
                             f"{om.kind} omission '{om.name}': {om.reason}", om)
        req = self.requests.get(option)
        if req is not None and normalise(req.value) == "n":
            return Inherited((), REQUESTED, f"{req.where}: {option}={req.value}", request=req.where,
                             root=_ROOT_FRAGMENT)
        if not sym.nodes:
            return Inherited((), HARDWARE, _symbol_facts(option, self.tree)[2] or "", root=_ROOT_ABSENT)
        return None

    def parent_of(self, option: str) -> Inherited | None:
        """The best chain explaining why ``option`` is off through its parents (None when none is
        explained, or nothing in its dependencies keeps it off)."""
        name = option.removeprefix("CONFIG_")
        if name in self._memo:
            return self._memo[name]
        self._memo[name] = None  # Kconfig forbids dependency loops; this guards against a bad tree
        sym = self.tree.symbol(name)
        found = self._explain(sym) if sym is not None else None
        self._memo[name] = found
        return found

    def _explain(self, sym: Symbol) -> Inherited | None:
        per_node: list[tuple[MenuNode, Inherited | None]]
        if kconfiglib.expr_value(sym.direct_dep) == 0:  # every definition's dependencies are unmet
            per_node = [(n, self._false(self.tree.parts(n))) for n in sym.nodes]
        elif sym.visibility == 0 and self.tree.prompted(sym):  # met, but every prompt is hidden
            per_node = [(n, self._false([(PROMPT_IF, n.prompt[1])])) for n in sym.nodes if n.prompt]
        else:
            return None
        if any(why is None for _, why in per_node):
            return None
        main = self.tree.main_node(sym)
        return next((why for n, why in per_node if n is main), per_node[0][1])

    def _false(self, parts: list[tuple[str, Expr]]) -> Inherited | None:
        """The best explanation of one false part (each is enough to keep the definition off)."""
        found = [why for how, expr in parts if kconfiglib.expr_value(expr) == 0
                 for why in (self._why_false(expr, how),) if why is not None]
        return min(found, key=_rank, default=None)

    def _why_false(self, expr: Expr, how: str) -> Inherited | None:
        if isinstance(expr, Symbol):
            return self._through(expr, how)
        if isinstance(expr, Choice):
            return None
        op = expr[0]
        if op == kconfiglib.AND:
            return self._false([(how, conj) for conj in kconfiglib.split_expr(expr, kconfiglib.AND)])
        if op == kconfiglib.OR:  # every disjunct is false: each needs an explanation
            whys = [self._why_false(d, how) for d in kconfiglib.split_expr(expr, kconfiglib.OR)]
            known = [w for w in whys if w is not None]
            if len(known) < len(whys):
                return None
            best = min(known, key=_rank)
            return replace(best, also=best.also + tuple(w for w in known if w is not best))
        if len(expr) == 3 and op in (kconfiglib.EQUAL, kconfiglib.UNEQUAL):
            left, right = expr[1], expr[2]
            for sym, const in ((left, right), (right, left)):
                if isinstance(sym, Symbol) and not sym.is_constant and isinstance(const, Symbol) \
                        and const.is_constant and const.name in (("y", "m") if op == kconfiglib.EQUAL else ("n",)):
                    return self._through(sym, how)  # A=y, A=m, A!=n: false because A is off
        return None  # !A, other comparisons: nothing an omission explains

    def _through(self, sym: Symbol, how: str) -> Inherited | None:
        """``sym`` as a parent: explained when it is off and its root (or its parents) explain it."""
        if sym.is_constant or (sym.nodes and (sym.orig_type not in _BOOL_TRI or sym.tri_value)):
            return None
        why = self._root(sym) or self.parent_of(sym.name)
        return _prefixed((f"CONFIG_{sym.name}", how), why) if why is not None else None


def classify(option: str, ours: str, reference: str, requests: Mapping[str, kconfig.Request],
             contract: contract_mod.Contract, tree: KconfigTree, arch: str,
             inheritance: Inheritance | None = None, picks: tuple[str, str] | None = None) -> Difference:
    """``picks``: (ours, the reference's) member of the choice ``option`` belongs to, when both pick one."""
    way = CHOICE if picks else direction(ours, reference)
    menu, where, symbol_reason = _symbol_facts(option, tree)
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
        base["request"] = inherited.request
        return Difference(cls=inherited.cls, reason=inherited.describe(), omission=om.name if om else None,
                          omission_kind=om.kind if om else None, via=inherited.chain, **base)
    if symbol_reason is not None:
        return Difference(cls=HARDWARE, reason=symbol_reason, **base)
    if picks:
        return Difference(cls=UNEXPLAINED, reason=f"another member of a choice: ours picks {picks[0]}, the reference "
                                                  f"{picks[1]} (a value; no fragment line, no omission)", **base)
    return Difference(cls=UNEXPLAINED, reason="no fragment line, no omission in the contract", **base)


def compare(ours: Mapping[str, str], reference: Mapping[str, str], requests: Mapping[str, kconfig.Request],
            contract: contract_mod.Contract, tree: KconfigTree, arch: str | None = None) -> Comparison:
    """Every option whose normalised value differs between ``ours`` and ``reference``, classified.
    Loads ``ours`` into ``tree`` (the dependencies are evaluated on it)."""
    arch = arch or tree.arch.name
    stale = tree.load_values(ours)
    if stale:
        LOG.warning("[%s] %d option(s) of our config are not what its Kconfig resolves (%s%s): is the config "
                    "stale? ('nox -s update-configs' brings it in line)", STEP, len(stale), ", ".join(stale[:5]),
                    ", ..." if len(stale) > 5 else "")
    diffs = []
    inheritance = Inheritance(tree, contract, arch, requests)

    def pick(config: Mapping[str, str], choice: Choice) -> str | None:
        return next((f"CONFIG_{m.name}" for m in choice.syms if normalise(config.get(f"CONFIG_{m.name}")) == "y"),
                    None)

    for option in sorted(set(ours) | set(reference)):
        o, r = normalise(ours.get(option)), normalise(reference.get(option))
        if o != r:
            sym = tree.symbol(option)
            picks = None
            if sym is not None and sym.choice is not None and {o, r} == {"y", "n"}:
                p_ours, p_ref = pick(ours, sym.choice), pick(reference, sym.choice)
                if p_ours and p_ref and p_ours != p_ref:
                    picks = (p_ours, p_ref)
            diffs.append(classify(option, o, r, requests, contract, tree, arch, inheritance, picks))
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
    kconfig_tree = load_tree(tree_path, arch_)
    result = compare(ours, ref, requests, contract, kconfig_tree, arch_.name)
    header = (f"compare-config {arch_.name}: ours {ours_path} vs reference {ref_path}\n"
              f"(tree {tree_path}, contract {contract.path}; {kconfig_tree.size} Kconfig symbols)")
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

