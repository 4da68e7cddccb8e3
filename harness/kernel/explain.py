"""Why a requested Kconfig option did not get its requested value after ``make olddefconfig``.

Loads the kernel's Kconfig with kconfiglib (``load``), takes a resolved config and the requests of
the fragments ({"CONFIG_X": (value, "configs/fragments/f.config:12")}) and, for each request the
resolved config does not honour, walks the Kconfig expressions down to a root cause (``explain``):

    VIRTIO_MEM=n <- CONTIG_ALLOC=n <- (MEMORY_ISOLATION=y && COMPACTION=n) || CMA=n
        <- COMPACTION=n set by configs/fragments/hotplug.config:12

Rules: of a dependency that is not met, the first unmet conjunct of an ``&&`` and every disjunct of
an ``||`` are shown, with each symbol's resolved value; the walk recurses into the symbols that are
not at the needed value until it reaches one a fragment (or a base config given as ``origins``) set,
one without a prompt, one not defined for the architecture, a choice, or a ``select``. ``if``
blocks and ``menu ... depends on`` are part of kconfiglib's ``direct_dep`` and so of the expression.
The one-line ``chain`` follows the branches that reach the strongest root cause (a fragment line
first); ``Explanation.root`` keeps every branch.
"""
from __future__ import annotations

import contextlib
import functools
import os
import re
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, overload

import kconfiglib
from kconfiglib import Choice, Symbol

from harness import proc
from harness.arch import Arch, get_arch
from harness.errors import HarnessError
from harness.kernel.kconfig import HOST_PROBES_OFF

if TYPE_CHECKING:
    from kconfiglib import Expr  # Symbol | Choice | (op, Expr[, Expr]): only in stubs/kconfiglib.pyi

__all__ = [
    "Explanation",
    "Kconf",
    "Step",
    "explain",
    "from_requests",
    "kconfig_env",
    "load",
    "olddefconfig",
]


# --- loading ------------------------------------------------------------------------------------


class Kconf(kconfiglib.Kconfig):
    """kconfiglib's Kconfig (14.1.0, 2020) plus what 6.x Kconfig needs: the bare ``modules``
    attribute (``option modules`` before 5.14) is read as ``option modules``. Knows its arch."""

    def __init__(self, filename: str, arch: str) -> None:
        self.arch = arch
        super().__init__(filename, warn=True, warn_to_stderr=False)

    def _tokenize(self, s: str) -> list[object]:
        tokens = super()._tokenize(s)
        if len(tokens) == 2 and tokens[0] is kconfiglib._T_MODULES and tokens[1] is None:
            return [kconfiglib._T_OPTION, kconfiglib._T_MODULES, None]
        return tokens


def _first_line(cmd: list[str]) -> str:
    """The first line of a version query, as the top Makefile takes CC_VERSION_TEXT ('' when absent)."""
    try:
        lines = proc.capture(cmd, step="kconfig", env={"LC_ALL": "C"}).splitlines()
    except HarnessError:  # not installed, or failing: Kconfig then sees no compiler version either
        return ""
    return lines[0].replace("#", "") if lines else ""


def _kernelversion(tree: Path) -> str:
    try:
        head = (tree / "Makefile").read_text(errors="replace")[:2000]
    except OSError:
        return ""
    found = re.findall(r"^(VERSION|PATCHLEVEL|SUBLEVEL|EXTRAVERSION)\s*=(.*)$", head, re.M)
    parts: dict[str, str] = {k: v.strip() for k, v in found}
    numbers = ".".join(parts.get(k, "") for k in ("VERSION", "PATCHLEVEL", "SUBLEVEL"))
    return numbers + parts.get("EXTRAVERSION", "")


def kconfig_env(tree: Path, arch: str | Arch) -> dict[str, str]:
    """The variables the top Makefile exports to Kconfig (``make ARCH=... [CROSS_COMPILE=...]
    olddefconfig``): Kconfig reads them with $(VAR) and runs $(CC)/$(LD)/... in $(shell,...) macros."""
    a = get_arch(arch) if isinstance(arch, str) else arch
    cross = a.cross_compile
    return {
        "srctree": str(tree),
        "ARCH": a.make_arch,
        "SRCARCH": a.srcarch,
        "KERNELVERSION": _kernelversion(tree),
        "CROSS_COMPILE": cross,
        "CC": f"{cross}gcc",
        "LD": f"{cross}ld",
        "NM": f"{cross}nm",
        "AR": f"{cross}ar",
        "OBJCOPY": f"{cross}objcopy",
        "CLANG_FLAGS": "",
        "HOSTCC": "gcc",
        "HOSTCXX": "g++",
        "CC_VERSION_TEXT": _first_line([f"{cross}gcc", "--version"]),
        "RUSTC": HOST_PROBES_OFF["RUSTC"],  # as every make of the harness (harness.kernel.kconfig)
        "RUSTC_VERSION_TEXT": "",
        "BINDGEN": HOST_PROBES_OFF["BINDGEN"],
        "PAHOLE": HOST_PROBES_OFF["PAHOLE"],
        "PYTHON3": "python3",
    }


@contextlib.contextmanager
def _environment(env: Mapping[str, str]) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


_K = TypeVar("_K", bound="Kconf")


@overload
def load(tree: Path, arch: str | Arch, *, env: Mapping[str, str] | None = None) -> Kconf: ...
@overload
def load(tree: Path, arch: str | Arch, *, env: Mapping[str, str] | None = None, cls: type[_K]) -> _K: ...
def load(tree: Path, arch: str | Arch, *, env: Mapping[str, str] | None = None,
         cls: type[Kconf] | None = None) -> Kconf:
    """Parse ``tree``/Kconfig for ``arch`` ("amd64" or "arm64") with the kernel's environment, as
    ``cls`` (a :class:`Kconf` subclass; default Kconf).

    The $(shell,...) macros run while parsing (compiler probes), from a scratch directory; the
    environment is set for the parse and restored afterwards. No config is loaded: use
    ``kconf.load_config(path)``."""
    a = get_arch(arch) if isinstance(arch, str) else arch  # UnsupportedArch for an unknown name
    tree = tree.resolve()
    full = {**kconfig_env(tree, a), **(env or {})}
    with _environment(full), tempfile.TemporaryDirectory(prefix="kexplain-") as tmp, contextlib.chdir(tmp):
        return (cls or Kconf)(str(tree / "Kconfig"), a.name)


def olddefconfig(kconf: kconfiglib.Kconfig, src: Path, dst: Path,
                 overrides: Mapping[str, str] | None = None) -> None:
    """``make olddefconfig`` as kconfiglib does it: load ``src``, set ``overrides``
    ({"CONFIG_X": "n"}, like fragment lines merged over it), write the re-evaluated ``dst``, and
    leave ``dst`` loaded in ``kconf``."""
    kconf.load_config(str(src))
    for option, value in (overrides or {}).items():
        sym = kconf.syms.get(option.removeprefix(kconf.config_prefix))
        if sym is None or not sym.nodes:
            continue
        sym.set_value(_unquote(value) if sym.orig_type == kconfiglib.STRING else value)
    kconf.write_config(str(dst))
    kconf.load_config(str(dst))


# --- results ------------------------------------------------------------------------------------

# How strong a root cause each kind of leaf is: the chain follows the strongest branches.
_LEAF_RANK = {
    "requested": 3,  # a fragment (or base config) line set it
    "undefined": 2,  # not defined for this arch
    "no-prompt": 2,  # no prompt and nothing gives it the value
    "constant": 2,
    "range": 2,
    "bool": 2,
    "choice-default": 1,
    "settable": 1,  # has a visible prompt, nobody asked for it
    "relation": 1,
    "cycle": 0,
    "depth": 0,
    "unexplained": 0,
}
_MAX_BRANCHES = 3
_MAX_SELECTORS = 4


@dataclass(frozen=True)
class Step:
    """One symbol in an explanation and why it has its value.

    reason: "requested" (set by ``where`` of a fragment), "depends" (direct_dep, incl. if/menu),
    "prompt" (prompt hidden), "default", "select", "imply", "choice" (another member selected),
    "choice-default", "settable" (user-settable, not requested), "no-prompt", "undefined",
    "constant", "range", "bool", "cycle", "depth", "unexplained".
    expr: the rendered unmet (or, for a value that is too high, met) part of the expression;
    causes: the steps for the symbols in it."""

    symbol: str
    value: str
    reason: str
    expr: str = ""
    note: str = ""
    location: str = ""  # Kconfig file:line of the symbol's first definition
    requested: str = ""  # "y at configs/fragments/x.config:3" when a fragment asked for another value
    causes: tuple[Step, ...] = ()
    glue: str = " <- "  # between expr and the causes ("selected by" + " " + "FOO=y ...")

    @functools.cached_property
    def rank(self) -> int:
        if not self.causes:
            return _LEAF_RANK.get(self.reason, 1)
        return max(c.rank for c in self.causes)

    def shown_causes(self) -> tuple[Step, ...]:
        if self.reason == "select":
            return self.causes[:_MAX_SELECTORS]
        if not self.causes:
            return ()
        best = max(c.rank for c in self.causes)
        return tuple(c for c in self.causes if c.rank == best)[:_MAX_BRANCHES]

    def head(self) -> str:
        text = self.symbol if self.reason == "undefined" else f"{self.symbol}={self.value}"
        return f"{text} {self.note}" if self.note else text

    def render(self) -> str:
        """The one-line chain from this step down."""
        text = self.head()
        if self.expr:
            text += " <- " + self.expr
        causes = [c.render() for c in self.shown_causes()]
        if causes:
            joined = causes[0] if len(causes) == 1 else "[" + "; ".join(causes) + "]"
            text += (self.glue if self.expr else " <- ") + joined
        return text

    def walk(self) -> Iterator[Step]:
        yield self
        for c in self.causes:
            yield from c.walk()


@dataclass(frozen=True)
class Explanation:
    option: str  # CONFIG_X
    requested: str
    resolved: str  # as the resolved config has it ("n" when a bool is absent, "(absent)" otherwise)
    where: str  # the fragment line of the request
    chain: str  # one line: "X=n <- ... <- Y=n set by configs/fragments/f.config:12"
    root: Step = field(repr=False)

    def __str__(self) -> str:
        return f"{self.option}: requested {self.requested} at {self.where}, resolved {self.resolved}: {self.chain}"


class _RequestLike(Protocol):
    @property
    def option(self) -> str: ...
    @property
    def value(self) -> str: ...
    @property
    def where(self) -> str: ...


def from_requests(requests: Iterable[_RequestLike]) -> dict[str, tuple[str, str]]:
    """{option: (value, where)} from harness ``Request``s (later ones win, like merge_config)."""
    return {r.option: (r.value, r.where) for r in requests}


# --- expressions --------------------------------------------------------------------------------

_TRI = {"n": 0, "m": 1, "y": 2}
_RELATIONS = frozenset({kconfiglib.EQUAL, kconfiglib.UNEQUAL, kconfiglib.LESS, kconfiglib.LESS_EQUAL,
                        kconfiglib.GREATER, kconfiglib.GREATER_EQUAL})
_BOOL_TRI = frozenset({kconfiglib.BOOL, kconfiglib.TRISTATE})


def _norm(value: str) -> str:
    return value.strip().strip('"') if value.startswith('"') else value.strip()


def _unquote(value: str) -> str:
    v = value.strip()
    return kconfiglib.unescape(v[1:-1]) if len(v) >= 2 and v[0] == v[-1] == '"' else v


def _tri(value: str) -> int | None:
    return kconfiglib.STR_TO_TRI.get(value.strip())


def _split(expr: Expr, op: int) -> list[Expr]:
    return kconfiglib.split_expr(expr, op)


def _is(expr: Expr, op: int) -> bool:
    return isinstance(expr, tuple) and expr[0] == op


def _choice_label(ch: Choice) -> str:
    for node in ch.nodes:
        if node.prompt:
            return f'choice "{node.prompt[0]}"'
    return f"choice {ch.name}" if ch.name else "choice"


def _sym_text(sym: Symbol, *, relation: bool = False) -> str:
    if sym.is_constant:
        name = sym.name
        if name in ("y", "m", "n") or re.fullmatch(r"-?(0x)?[0-9a-fA-F]+", name):
            return name
        return f'"{name}"'
    if not sym.nodes:  # referenced, never defined (another arch's symbol): n
        return f"{sym.name}(undefined)" if relation else f"{sym.name}=n"
    val = sym.str_value
    if sym.orig_type == kconfiglib.STRING:
        val = f'"{val}"'
    return f"{sym.name}(={val})" if relation else f"{sym.name}={val}"


def _render(expr: Expr, parent: int | None = None) -> str:
    if isinstance(expr, Symbol):
        return _sym_text(expr)
    if isinstance(expr, Choice):
        return f"{_choice_label(expr)}={expr.str_value}"
    op = expr[0]
    if len(expr) == 2:  # NOT
        inner = expr[1]
        return f"!({_render(inner)})"
    left, right = expr[1], expr[2]
    if op in _RELATIONS:
        lt = _sym_text(left, relation=True) if isinstance(left, Symbol) else _render(left)
        rt = _sym_text(right, relation=True) if isinstance(right, Symbol) else _render(right)
        return f"{lt} {kconfiglib.REL_TO_STR[op]} {rt}"
    sep = " && " if op == kconfiglib.AND else " || "
    text = sep.join(_render(e, op) for e in _split(expr, op))
    return f"({text})" if parent is not None and parent != op else text


def _value(expr: Expr) -> int:
    return kconfiglib.expr_value(expr)


def _unmet(expr: Expr, t: int) -> Expr:
    """The part of ``expr`` (value < t) to show: the first unmet conjunct of an &&."""
    if _is(expr, kconfiglib.AND):
        for conj in _split(expr, kconfiglib.AND):
            if _value(conj) < t:
                return conj
    return expr


def _met(expr: Expr, t: int) -> Expr:
    """The part of ``expr`` (value >= t) to show: the first met disjunct of an ||."""
    if _is(expr, kconfiglib.OR):
        for disj in _split(expr, kconfiglib.OR):
            if _value(disj) >= t:
                return disj
    return expr


def _or(exprs: list[Expr]) -> Expr:
    return functools.reduce(lambda a, b: (kconfiglib.OR, a, b), exprs)


def _and(exprs: list[Expr]) -> Expr:
    return functools.reduce(lambda a, b: (kconfiglib.AND, a, b), exprs)


def _location(sc: Symbol | Choice) -> str:
    return f"{sc.nodes[0].filename}:{sc.nodes[0].linenr}" if sc.nodes else ""


def _selector(term: Expr) -> Symbol | None:
    """The selecting symbol of one rev_dep/weak_rev_dep term (``SEL`` or ``SEL && cond``)."""
    if isinstance(term, Symbol):
        return term
    if _is(term, kconfiglib.AND):
        first = _split(term, kconfiglib.AND)[0]
        if isinstance(first, Symbol):
            return first
    return None


# --- the walk -----------------------------------------------------------------------------------


class _Walker:
    def __init__(self, kconf: kconfiglib.Kconfig, requested: Mapping[str, tuple[str, str]],
                 origins: Mapping[str, tuple[str, str]], arch: str, max_depth: int, budget: int) -> None:
        self.kconf = kconf
        prefix = kconf.config_prefix
        # origins first: a fragment request overrides the base config's line
        self.origin = {k.removeprefix(prefix): v for k, v in origins.items()}
        self.origin.update({k.removeprefix(prefix): v for k, v in requested.items()})
        self.arch = arch
        self.max_depth = max_depth
        self.budget = budget

    # helpers

    def _guard(self, name: str, value: str, key: tuple[str, bool, int], depth: int,
               path: frozenset[tuple[str, bool, int]]) -> Step | None:
        if key in path:
            return Step(name, value, "cycle", note="(cycle)")
        self.budget -= 1
        if depth > self.max_depth or self.budget < 0:
            return Step(name, value, "depth", note="(...)")
        return None

    def _requested_note(self, name: str) -> str:
        o = self.origin.get(name)
        return f"{o[0]} at {o[1]}" if o else ""

    def _via(self, label: str, expr: Expr, t: int, low: bool, depth: int,
             path: frozenset[tuple[str, bool, int]]) -> tuple[str, str, tuple[Step, ...]]:
        """(expr text, glue, causes) for the unmet (low) or met part of ``expr``."""
        part = _unmet(expr, t) if low else _met(expr, t)
        if isinstance(part, Symbol) and not part.is_constant:
            return label, " ", (self._sym(part, t, low, depth, path),)
        text = _render(part)
        return (f"{label} {text}" if label else text), " <- ", tuple(self._causes(part, t, low, depth, path))

    def _causes(self, expr: Expr, t: int, low: bool, depth: int,
                path: frozenset[tuple[str, bool, int]]) -> list[Step]:
        if isinstance(expr, Symbol):
            return [] if expr.is_constant else [self._sym(expr, t, low, depth, path)]
        if isinstance(expr, Choice):
            return [self._choice(expr, t, low, depth, path)]
        op = expr[0]
        if len(expr) == 2:  # NOT: !x < t  <=>  x >= 3 - t;  !x >= t  <=>  x < 3 - t
            return self._causes(expr[1], 3 - t, not low, depth, path)
        if op in _RELATIONS:
            return self._relation_causes(expr, low, depth, path)
        out: list[Step] = []
        if low:
            if op == kconfiglib.AND:
                return self._causes(_unmet(expr, t), t, low, depth, path)
            for disj in _split(expr, kconfiglib.OR):
                out += self._causes(disj, t, low, depth, path)
        else:
            if op == kconfiglib.OR:
                return self._causes(_met(expr, t), t, low, depth, path)
            for conj in _split(expr, kconfiglib.AND):
                out += self._causes(conj, t, low, depth, path)
        return out

    def _relation_causes(self, expr: tuple[Any, ...], low: bool, depth: int,
                         path: frozenset[tuple[str, bool, int]]) -> list[Step]:
        """A comparison of a bool/tristate symbol with n, m or y (``A = y``, ``A != n``) is a threshold
        on that symbol: follow it. Other comparisons (strings, numbers, two symbols) end the chain."""
        op, left, right = expr
        if op not in (kconfiglib.EQUAL, kconfiglib.UNEQUAL):
            return []
        sym, const = (right, left) if left.is_constant else (left, right)
        if (sym.is_constant or not const.is_constant or const.name not in _TRI
                or sym.orig_type not in (kconfiglib.BOOL, kconfiglib.TRISTATE)):
            return []
        c, v = _TRI[const.name], sym.tri_value
        # unmet '=' and met '!=' both say "the symbol is not c"; unmet '!=' and met '=' say "it is c"
        if (op == kconfiglib.EQUAL) == low:
            if v == c:
                return []
            return [self.low(sym, c, depth, path) if v < c else self.high(sym, c + 1, depth, path)]
        if c == 0:
            return [self.low(sym, 1, depth, path)]
        if c == 2:
            return [self.high(sym, 2, depth, path)]
        return []  # it is m: too low for y and too high for n at once

    def _sym(self, sym: Symbol, t: int, low: bool, depth: int, path: frozenset[tuple[str, bool, int]]) -> Step:
        return self.low(sym, t, depth, path) if low else self.high(sym, t, depth, path)

    def _default_summary(self, sym: Symbol) -> str:
        for default, cond in sym.defaults:
            if _value(cond):
                return f"default {_render(default)}"
        return "no default"

    def _no_prompt_note(self, sym: Symbol) -> str:
        has_prompt = any(n.prompt for n in sym.nodes)
        what = "prompt hidden" if has_prompt else "has no prompt"
        terms = [] if sym.rev_dep is self.kconf.n else _split(sym.rev_dep, kconfiglib.OR)
        names = [s.name for s in (_selector(term) for term in terms) if s is not None]
        if names:
            more = ", ..." if len(names) > _MAX_SELECTORS else ""
            return f"{what}, only selected by {', '.join(names[:_MAX_SELECTORS])}{more}"
        return f"{what}, {self._default_summary(sym)}"

    def _choice_default(self, ch: Choice) -> Symbol | None:
        for sym, cond in ch.defaults:
            if _value(cond) and sym.visibility:
                return sym
        return next((s for s in ch.syms if s.visibility), None)

    def _chosen(self, ch: Choice, member: Symbol) -> Step:
        """Why ``member`` is the selection of ``ch``."""
        o = self.origin.get(member.name)
        loc = _location(member)
        if o and _norm(o[0]) == "y":
            return Step(member.name, "y", "requested", note=f"set by {o[1]}", location=loc)
        if member is self._choice_default(ch):
            return Step(member.name, "y", "choice-default", note=f"(the default of {_choice_label(ch)})",
                        location=loc, requested=self._requested_note(member.name))
        return Step(member.name, "y", "settable", note="not set by any fragment", location=loc)

    def _choice(self, ch: Choice, t: int, low: bool, depth: int, path: frozenset[tuple[str, bool, int]]) -> Step:
        label = _choice_label(ch)
        val = ch.str_value
        stop = self._guard(label, val, (label, low, t), depth, path)
        if stop:
            return stop
        path = path | {(label, low, t)}
        if low and _value(ch.direct_dep) < t:
            text, glue, causes = self._via("", ch.direct_dep, t, True, depth + 1, path)
            return Step(label, val, "depends", expr=text, glue=glue, causes=causes, location=_location(ch))
        return Step(label, val, "unexplained", location=_location(ch))

    # why sym < t

    def low(self, sym: Symbol, t: int, depth: int, path: frozenset[tuple[str, bool, int]],
            top: bool = False) -> Step:
        name, val = sym.name, sym.str_value
        if sym.is_constant:
            return Step(_sym_text(sym), val, "constant")
        if not sym.nodes:
            return Step(name, "n", "undefined", note=f"not defined for {self.arch}")
        loc = _location(sym)
        o = self.origin.get(name)
        if not top and o is not None:
            ot = _tri(o[0])
            if ot is not None and ot < t:
                return Step(name, val, "requested", note=f"set by {o[1]}", location=loc)
        stop = self._guard(name, val, (name, True, t), depth, path)
        if stop:
            return stop
        path = path | {(name, True, t)}
        req = "" if top else self._requested_note(name)
        d = depth + 1

        ch = sym.choice
        if ch is not None and ch.tri_value == 2 and sym.visibility >= t:
            sel = ch.selection
            if sel is not None and sel is not sym:
                cause = self._chosen(ch, sel)
                return Step(name, val, "choice", expr=f"{_choice_label(ch)} selected", glue=" ",
                            causes=(cause,), location=loc, requested=req)

        if _value(sym.direct_dep) < t:
            text, glue, causes = self._via("", sym.direct_dep, t, True, d, path)
            return Step(name, val, "depends", expr=text, glue=glue, causes=causes, location=loc, requested=req)

        prompts = [n.prompt[1] for n in sym.nodes if n.prompt]
        if prompts and sym.visibility < t:
            text, glue, causes = self._via("prompt hidden by", _or(prompts), t, True, d, path)
            return Step(name, val, "prompt", expr=text, glue=glue, causes=causes, location=loc, requested=req,
                        note=f"({self._default_summary(sym)})")

        if prompts and sym.user_value is not None:
            if o is not None:
                return Step(name, val, "unexplained", location=loc, requested=req,
                            note=f"(visible and settable, yet {val} although requested {o[0]} at {o[1]})")
            return Step(name, val, "settable", note="not set by any fragment", location=loc)

        return self._defaults_low(sym, t, d, path, loc, req)

    def _defaults_low(self, sym: Symbol, t: int, depth: int, path: frozenset[tuple[str, bool, int]],
                      loc: str, req: str) -> Step:
        name, val = sym.name, sym.str_value
        for default, cond in sym.defaults:
            cv = _value(cond)
            if not cv:
                continue
            if _value(default) < t:
                if isinstance(default, Symbol) and default.is_constant:
                    return Step(name, val, "no-prompt", note=self._no_prompt_note(sym), location=loc,
                                requested=req)
                text, glue, causes = self._via("", default, t, True, depth, path)
                return Step(name, val, "default", expr=text, glue=glue, causes=causes, location=loc,
                            requested=req)
            # the default is limited by its condition being m
            text, glue, causes = self._via(f"default {_render(default)} if", cond, t, True, depth, path)
            return Step(name, val, "default", expr=text, glue=glue, causes=causes, location=loc, requested=req)
        candidates = [(default, cond) for default, cond in sym.defaults if _value(default) >= t]
        if candidates:
            label = f"default {_render(candidates[0][0])} if" if len(candidates) == 1 else "defaults if"
            text, glue, causes = self._via(label, _or([c for _, c in candidates]), t, True, depth, path)
            return Step(name, val, "default", expr=text, glue=glue, causes=causes, location=loc, requested=req)
        return Step(name, val, "no-prompt", note=self._no_prompt_note(sym), location=loc, requested=req)

    # why sym >= t

    def high(self, sym: Symbol, t: int, depth: int, path: frozenset[tuple[str, bool, int]],
             top: bool = False) -> Step:
        name, val = sym.name, sym.str_value
        if sym.is_constant or not sym.nodes:
            return Step(_sym_text(sym), val, "constant")
        loc = _location(sym)
        o = self.origin.get(name)
        if not top and o is not None:
            ot = _tri(o[0])
            if ot is not None and ot >= t:
                return Step(name, val, "requested", note=f"set by {o[1]}", location=loc)
        stop = self._guard(name, val, (name, False, t), depth, path)
        if stop:
            return stop
        path = path | {(name, False, t)}
        req = "" if top else self._requested_note(name)
        d = depth + 1

        if _value(sym.rev_dep) >= t:
            selectors = [s for s in (_selector(term) for term in _split(sym.rev_dep, kconfiglib.OR)
                                     if _value(term) >= t) if s is not None]
            causes = tuple(self.high(s, t, d, path) for s in selectors)
            return Step(name, val, "select", expr="selected by", glue=" ", causes=causes, location=loc,
                        requested=req)

        ch = sym.choice
        if ch is not None and ch.selection is sym:
            step = self._chosen(ch, sym)
            return Step(name, val, step.reason, note=step.note, location=loc, requested=req)

        prompts = [n.prompt[1] for n in sym.nodes if n.prompt]
        if prompts and sym.visibility and sym.user_value is not None:
            if top or o is not None:
                return Step(name, val, "unexplained", location=loc, requested=req,
                            note="(visible and settable: the loaded config sets it)")
            return Step(name, val, "settable", note="not set by any fragment", location=loc)

        if _value(sym.weak_rev_dep) >= t and _value(sym.direct_dep):
            implied = [s for s in (_selector(term) for term in _split(sym.weak_rev_dep, kconfiglib.OR)
                                   if _value(term) >= t) if s is not None]
            causes = tuple(self.high(s, t, d, path) for s in implied)
            return Step(name, val, "imply", expr="implied by", glue=" ", causes=causes, location=loc,
                        requested=req)

        if prompts and not sym.visibility:  # a prompt the user could have lowered it with, hidden
            text, glue, causes = self._via("prompt hidden by", _or(prompts), 1, True, d, path)
            return Step(name, val, "prompt", expr=text, glue=glue, causes=causes, location=loc, requested=req,
                        note=f"({self._default_summary(sym)})")

        for default, cond in sym.defaults:
            if not _value(cond):
                continue
            if isinstance(default, Symbol) and default.is_constant:
                own = [c for c in _split(cond, kconfiglib.AND) if c not in _split(sym.direct_dep, kconfiglib.AND)]
                if not own:
                    return Step(name, val, "no-prompt", note=f"has no prompt, default {default.name}",
                                location=loc, requested=req)
                text, glue, causes = self._via(f"default {default.name} if", _and(own), t, False, d, path)
            else:
                text, glue, causes = self._via("", default, t, False, d, path)
            return Step(name, val, "default", expr=text, glue=glue, causes=causes, location=loc, requested=req)
        return Step(name, val, "unexplained", location=loc, requested=req)

    # a requested value of an int/hex/string option

    def other(self, sym: Symbol, wanted: str) -> Step:
        name, loc = sym.name, _location(sym)
        val = _resolved(sym)
        path: frozenset[tuple[str, bool, int]] = frozenset({(name, True, 1)})
        if not sym.visibility:
            if _value(sym.direct_dep) < 1:
                text, glue, causes = self._via("", sym.direct_dep, 1, True, 1, path)
                return Step(name, val, "depends", expr=text, glue=glue, causes=causes, location=loc)
            prompts = [n.prompt[1] for n in sym.nodes if n.prompt]
            if prompts:
                text, glue, causes = self._via("prompt hidden by", _or(prompts), 1, True, 1, path)
                return Step(name, val, "prompt", expr=text, glue=glue, causes=causes, location=loc,
                            note=f"({self._default_summary(sym)})")
            return Step(name, val, "no-prompt", note=f"has no prompt, {self._default_summary(sym)}", location=loc)
        if sym.orig_type in (kconfiglib.INT, kconfiglib.HEX):
            base = 16 if sym.orig_type == kconfiglib.HEX else 10
            for lo, hi, cond in sym.ranges:
                if not _value(cond):
                    continue
                try:
                    w, lo_v, hi_v = int(wanted, base), int(lo.str_value, base), int(hi.str_value, base)
                except ValueError:
                    break
                if not lo_v <= w <= hi_v:
                    return Step(name, val, "range", location=loc,
                                note=f"(requested {wanted} is outside the range [{lo.str_value}, {hi.str_value}])")
                break
        return Step(name, val, "unexplained", note="(visible and settable: the loaded config sets it)",
                    location=loc)


def _resolved(sym: Symbol | None) -> str:
    """The option's value as the written config has it."""
    if sym is None or not sym.nodes:
        return "n"
    line = sym.config_string.strip()
    if not line:
        return "n" if sym.orig_type in _BOOL_TRI else "(absent)"
    if line.startswith("#"):
        return "n"
    return line.split("=", 1)[1]


def explain(kconf: kconfiglib.Kconfig, requested: Mapping[str, tuple[str, str]], *,
            origins: Mapping[str, tuple[str, str]] | None = None, arch: str | None = None,
            max_depth: int = 10, budget: int = 400) -> list[Explanation]:
    """An explanation for every request whose value the loaded (resolved) config does not have.

    requested: {"CONFIG_X": (value, where)} as in the fragments ("y", "m", "n", a number or a
    quoted string; "n" for '# CONFIG_X is not set'). origins: the same for lines of a base config
    that no fragment overrides; they only name the root cause. arch: the name in "not defined for
    ARCH" (default: the arch ``load`` was given). max_depth/budget bound each walk."""
    arch_name = arch or getattr(kconf, "arch", None) or os.environ.get("SRCARCH", "this arch")
    out: list[Explanation] = []
    for option, (value, where) in requested.items():
        name = option.removeprefix(kconf.config_prefix)
        sym = kconf.syms.get(name)
        resolved = _resolved(sym)
        if _norm(resolved) == _norm(value) or (resolved == "(absent)" and _norm(value) == "n"):
            continue
        walker = _Walker(kconf, requested, origins or {}, str(arch_name), max_depth, budget)
        root: Step
        if sym is None or not sym.nodes:
            root = Step(name, "n", "undefined", note=f"not defined for {arch_name}")
        elif sym.orig_type in _BOOL_TRI:
            want = _tri(value)
            if want is None:
                root = Step(name, resolved, "unexplained", note=f"(requested {value!r} is not y/m/n)")
            elif want == 1 and sym.orig_type == kconfiglib.BOOL:
                root = Step(name, resolved, "bool", note="(a bool option cannot be m)", location=_location(sym))
            elif sym.tri_value < want:
                root = walker.low(sym, want, 0, frozenset(), top=True)
            else:
                root = walker.high(sym, want + 1, 0, frozenset(), top=True)
        else:
            root = walker.other(sym, _unquote(value))
        out.append(Explanation(option, value, resolved, where, root.render(), root))
    return out
