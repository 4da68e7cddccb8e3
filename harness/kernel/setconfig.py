"""Adjust the production config where the project keeps its intent: the fragments.

``set-config ARCH|all CONFIG_X=y CONFIG_Y=n ...`` (and ``menuconfig``, which turns what the user
changed into the same kind of request) works in four steps, and writes nothing until all passed:

1. *place* each change: an option a fragment already asks for is edited on that line; a change for
   one arch of an option a shared fragment asks for becomes an override in ``arch/<arch>.config``
   (the last fragment, so it wins); a new option goes to ``arch/<arch>.config`` for one arch, or,
   for both, to the shared fragment that already holds the most options from the same Kconfig file
   set the same way, on or off (``base`` when none does). Every line written gets a comment stub
   above it for the reason (an edited line's old comment argued for the old value); what the
   fragments already ask for is left alone;
2. *resolve* the edited fragments with the kernel's ``make olddefconfig`` for every affected arch;
3. *audit* the result: a change Kconfig cannot honour is refused with its root cause, and nothing
   is written;
4. *show* the symbol-level diff against the committed config (``scripts/diffconfig``), then write
   the fragments and the committed configs (unless ``--dry-run``).
"""
from __future__ import annotations

import re
import shutil
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import kconfiglib

from harness.arch import Arch
from harness.errors import ConfigAuditFailed, InvalidArgument
from harness.fsutil import atomic_write_text
from harness.kernel import kconfig

STEP = "set-config"
STUB = "# {option}={value}: why? (which NeonVM component needs it, or what it costs) -- fill in"
_ASSIGN = re.compile(r"^(CONFIG_[A-Za-z0-9_]+)=(.*)$")


@dataclass(frozen=True)
class Change:
    option: str  # CONFIG_X
    value: str  # y, m, n, a number or a quoted string

    @property
    def line(self) -> str:
        return f"# {self.option} is not set" if self.value == "n" else f"{self.option}={self.value}"


def parse_changes(args: Iterable[str]) -> list[Change]:
    """``CONFIG_X=VALUE`` arguments (``X=VALUE`` is accepted too); later ones win."""
    out: dict[str, Change] = {}
    for arg in args:
        text = arg if arg.startswith("CONFIG_") else f"CONFIG_{arg}"
        m = _ASSIGN.match(text)
        if not m or not m[2]:
            raise InvalidArgument(f"not an option assignment: {arg!r} (expected CONFIG_NAME=VALUE)", step=STEP)
        out[m[1]] = Change(m[1], m[2])
    if not out:
        raise InvalidArgument("no option to set (expected CONFIG_NAME=VALUE ...)", step=STEP)
    return list(out.values())


def _stub(ch: Change) -> str:
    return STUB.format(option=ch.option, value=ch.value)


def _is_stub(line: str, option: str) -> bool:
    """An unfilled stub for ``option`` (left by an earlier set-config): replaced, not stacked."""
    return line.startswith(f"# {option}=") and line.endswith("-- fill in")


@dataclass
class Edit:
    """What one fragment file gets: lines replaced in place and lines appended, each under a comment
    stub for the reason (an in-place edit changes what the comment above it argued for)."""

    path: Path
    replace: dict[int, Change] = field(default_factory=dict)  # 1-based line number -> what it now says
    append: list[Change] = field(default_factory=list)

    def render(self, text: str) -> tuple[str, list[str]]:
        """The new text, and where each change now is (``line N: ...``, numbered in the new text)."""
        lines = text.splitlines()
        inserted: list[int] = []  # old line numbers that got a new stub line above them
        for no in sorted(self.replace, reverse=True):
            ch = self.replace[no]
            lines[no - 1] = ch.line
            if no >= 2 and _is_stub(lines[no - 2], ch.option):
                lines[no - 2] = _stub(ch)
            else:
                lines.insert(no - 1, _stub(ch))
                inserted.append(no)
        where = [f"line {no + sum(1 for i in inserted if i <= no)}: {self.replace[no].line} "
                 "(with a comment stub above it to fill in)" for no in sorted(self.replace)]
        for ch in self.append:
            lines += ["", _stub(ch), ch.line]
            where.append(f"appended: {ch.line} (with a comment stub to fill in)")
        return "\n".join(lines) + "\n", where

    def apply(self, text: str) -> str:
        return self.render(text)[0]


def _kconfig_file(kconfs: Mapping[str, kconfiglib.Kconfig], option: str) -> str | None:
    for kconf in kconfs.values():
        sym = kconf.syms.get(option.removeprefix("CONFIG_"))
        if sym is not None and sym.nodes:
            return str(sym.nodes[0].filename)
    return None


def _by_affinity(ch: Change, shared: Sequence[Path], kconfs: Mapping[str, kconfiglib.Kconfig],
                 fallback: Path) -> Path:
    """The shared fragment holding the most options defined in the same Kconfig file as the change's
    and set the same way (off beside what is switched off on purpose, on beside what is wanted)."""
    home = _kconfig_file(kconfs, ch.option)
    if home is None:
        return fallback
    off = ch.value == "n"
    best, score = fallback, 0
    for frag in shared:
        n = sum(1 for r in kconfig.parse_fragment(frag)
                if (r.value == "n") == off and _kconfig_file(kconfs, r.option) == home)
        if n > score:
            best, score = frag, n
    return best


def place(changes: Sequence[Change], arches: Sequence[Arch], variant: kconfig.Variant,
          kconfs: Mapping[str, kconfiglib.Kconfig]) -> dict[Path, Edit]:
    """Decide which fragment line each change becomes (see the module's docstring). A change the
    fragments already ask for, for every arch, is not placed at all."""
    edits: dict[Path, Edit] = {}

    def edit(path: Path) -> Edit:
        return edits.setdefault(path, Edit(path))

    paths = [variant.fragment_paths(a) for a in arches]
    shared = [p for p in paths[0] if p.parent == kconfig.FRAGMENTS and all(p in other for other in paths[1:])]
    fallback = kconfig.FRAGMENTS / "base.config"
    for ch in changes:
        asked = {a.name: variant.requests(a).get(ch.option) for a in arches}
        if all(r is not None and r.value == ch.value for r in asked.values()):
            continue  # already what the fragments ask for
        if len(arches) == 1:
            arch_frag = kconfig.FRAGMENTS / "arch" / f"{arches[0].name}.config"
            req = asked[arches[0].name]
            if req is not None and req.fragment == arch_frag:
                edit(req.fragment).replace[req.line] = ch
            else:  # new, or an override of a shared line for this arch only
                edit(arch_frag).append.append(ch)
            continue
        # every arch: the arch lines that override it are updated, and one shared line says it
        own = [r for r in asked.values() if r is not None and r.fragment not in shared]
        for r in own:
            if r.value != ch.value:
                edit(r.fragment).replace[r.line] = ch
        in_shared = [r for frag in shared for r in kconfig.parse_fragment(frag) if r.option == ch.option]
        if in_shared:  # the last is what the shared fragments mean, even where every arch overrides it
            r = in_shared[-1]
            if r.value != ch.value:
                edit(r.fragment).replace[r.line] = ch
        elif len(own) < len(arches):
            edit(_by_affinity(ch, shared, kconfs, fallback)).append.append(ch)
    return edits


@dataclass(frozen=True)
class Staged:
    """The edited fragments in a scratch copy of configs/fragments, and a variant that uses them."""

    directory: Path
    variant: kconfig.Variant
    texts: dict[Path, str]  # real fragment path -> its new text

    def rel(self, text: str) -> str:
        """Messages name the real fragments, not the scratch copies."""
        return text.replace(str(self.directory), str(kconfig.FRAGMENTS.relative_to(kconfig.CONFIGS.parent)))


def stage(edits: Mapping[Path, Edit], variant: kconfig.Variant, scratch: Path) -> Staged:
    directory = scratch / "fragments"
    shutil.copytree(kconfig.FRAGMENTS, directory)
    texts = {}
    for path, e in edits.items():
        new = e.apply(path.read_text())
        texts[path] = new
        (directory / path.relative_to(kconfig.FRAGMENTS)).write_text(new)
    return Staged(directory, replace(variant, name=f"{variant.name}.set-config", fragments_dir=directory), texts)


_HIDDEN = re.compile(r"prompt hidden by ([A-Za-z0-9_]+)=n\b")
_TERM = re.compile(r"\b(capability|omission) '([^']+)'")


def next_steps(changes: Sequence[Change], contract_broken: Sequence[str],
               causes: Sequence[tuple[str, str]]) -> list[str]:
    """What a maintainer does about a refusal (at most two lines): a prompt hidden by an option that
    is n (``EXPERT``) needs that option set in the same request; a change the capability contract
    forbids needs the contract changed first. ``causes``: (option, its root-cause chain) of the
    audit's findings."""
    out = []
    asked = {ch.option for ch in changes}
    hidden: dict[str, list[str]] = {}  # CONFIG_EXPERT -> the options whose prompt it hides
    for option, cause in causes:
        for m in _HIDDEN.finditer(cause):
            if f"CONFIG_{m[1]}" not in asked:
                hidden.setdefault(f"CONFIG_{m[1]}", []).append(option)
    if hidden:
        out.append("hint: " + "; ".join(f"{h}=n hides the prompt of {', '.join(dict.fromkeys(opts))}"
                                        for h, opts in hidden.items())
                   + f": set {', '.join(h + '=y' for h in hidden)} too, in the same set-config")
    terms = list(dict.fromkeys(f"{m[1]} '{m[2]}'" for p in contract_broken for m in _TERM.finditer(p)))
    if terms:
        kinds, them = {t.split()[0] for t in terms}, "it" if len(terms) == 1 else "them"
        cond = (f"NeonVM no longer needs {them}" if kinds == {"capability"}
                else f"NeonVM now needs {them}" if kinds == {"omission"} else "NeonVM's needs changed")
        out.append(f"next: {' and '.join(terms)} {'is' if len(terms) == 1 else 'are'} in configs/contract.toml; "
                   f"if {cond}, change the contract there first (with the reason), then re-run set-config")
    return out


def contract_problems(changes: Sequence[Change], arches: Sequence[Arch]) -> list[str]:
    """What the changes break in the capability contract (configs/contract.toml): the record of who
    needs what, which changes first."""
    from harness.kernel import contract

    terms = contract.load()
    problems = []
    for ch in changes:
        for arch in arches:
            cap = terms.requirement(ch.option, arch.name)
            want = cap.options.get(ch.option.removeprefix("CONFIG_")) if cap is not None else None
            if cap is not None and want is not None and want != ch.value:
                problems.append(f"{arch.name}: {ch.line} breaks {cap.describe()}")
            om = terms.omission(ch.option, arch.name)
            if om is not None and ch.value != "n":
                problems.append(f"{arch.name}: {ch.line} turns on what the contract omits ({om.kind} omission "
                                f"'{om.name}': {om.reason})")
    return problems


@dataclass(frozen=True)
class Outcome:
    arch: Arch
    resolved: Path
    committed: Path
    diff: str


def set_config(tree: Path, arches: Sequence[Arch], changes: Sequence[Change], *, version: str, log: Path,
               dry_run: bool = False, kconfs: Mapping[str, kconfiglib.Kconfig] | None = None) -> int:
    """Place, resolve, audit, show, and (unless ``dry_run``) write. Raises ConfigAuditFailed (with the
    root cause) when Kconfig cannot honour a change or the change breaks the capability contract;
    the fragment lines and the diff are shown first, and nothing is written."""
    from harness.kernel import explain

    variant = kconfig.get_variant("production")
    loaded = dict(kconfs or {a.name: explain.load(tree, a) for a in arches})
    for ch in changes:  # an option no arch defines is a typo, not a request
        if not any(_kconfig_file({a: k}, ch.option) for a, k in loaded.items()):
            raise InvalidArgument(f"{ch.option} is not defined in the {version} Kconfig of "
                                  f"{', '.join(a.name for a in arches)}", step=STEP)
    problems = contract_problems(changes, arches)
    broken, causes = list(problems), list[tuple[str, str]]()
    edits = place(changes, arches, variant, loaded)
    with tempfile.TemporaryDirectory(prefix="set-config-") as tmp:
        staged = stage(edits, variant, Path(tmp))
        outcomes = []
        for arch in arches:
            resolved = kconfig.resolve(tree, arch, staged.variant, log=log)
            requests = staged.variant.requests(arch)
            findings = kconfig.audit(requests, kconfig.parse_config_text(resolved.read_text()))
            if findings:
                findings = kconfig.explain_findings(findings, requests, resolved, tree, arch, log)
                causes += [(f.request.option, f.cause) for f in findings]
                problems += [f"{arch.name}: {staged.rel(f.describe())}" for f in findings]
            committed = kconfig.committed_config_path(arch, version)
            outcomes.append(Outcome(arch, resolved, committed,
                                    kconfig.diff(tree, committed, resolved, log=log) if committed.is_file() else ""))
        for path, e in edits.items():
            rel = path.relative_to(kconfig.CONFIGS.parent)
            print(f"{rel}: " + "; ".join(e.render(path.read_text())[1]))
        placed = {c for e in edits.values() for c in (*e.replace.values(), *e.append)}
        for ch in changes:
            if ch not in placed:
                print(f"{ch.line}: already what the fragments ask for; no fragment line changed")
        for o in outcomes:
            print(f"{o.committed.name}: " + (f"{len(o.diff.splitlines())} change(s)\n{o.diff}" if o.diff
                                             else "unchanged"))
        if problems:
            with open(log, "a") as fh:
                fh.write("set-config refused:\n" + "".join(f"  {p}\n" for p in problems))
            for problem in problems:
                print(f"  refused: {problem}")
            more = f" (+{len(problems) - 1} more above)" if len(problems) > 1 else ""
            for line in next_steps(changes, broken, causes):  # before the one-line error
                print(f"  {line}")
            raise ConfigAuditFailed(f"refused, nothing written: {problems[0]}{more}", step=STEP, log=log)
        if dry_run:
            print("dry run: nothing written")
            return 0
        for path, text in staged.texts.items():
            atomic_write_text(path, text)
        for o in outcomes:
            kconfig.install(o.resolved, o.committed)
    print("written; fill in the comment stubs, review 'git diff configs/' and commit")
    return 0


# -- menuconfig: what the user changed -------------------------------------------------------------
def _settable(sym: kconfiglib.Symbol) -> bool:
    """The configurator offers it: a prompt the user can see (dependencies, ``prompt if`` and the
    menus' ``visible if`` met)."""
    return bool(sym.nodes) and sym.visibility > 0


def _evaluate(kconf: kconfiglib.Kconfig, before: Path, recorded: Mapping[str, str]) -> dict[str, tuple[str, bool]]:
    """name -> (value, has a user value) with ``before`` loaded and ``recorded`` set over it: what
    olddefconfig makes of the committed config plus those changes."""
    kconf.load_config(str(before))
    for name, value in recorded.items():
        kconf.syms[name].set_value(value)
    return {s.name: (s.str_value, s.user_value is not None) for s in kconf.unique_defined_syms}


def _follows(kconf: kconfiglib.Kconfig, after: Path, names: Iterable[str]) -> set[str]:
    """Of ``names``, the options whose value in ``after`` is what Kconfig gives them without a user
    value (a default or a select): consequences of other changes, unless nothing else explains them."""
    kconf.load_config(str(after))
    out = set()
    for name in names:
        sym = kconf.syms[name]
        if sym.choice is not None:  # the selected member carries the choice; the others follow it
            if sym.str_value == "n":
                out.add(name)
            continue
        value, user = sym.str_value, sym.user_value
        if user is None:
            out.add(name)
            continue
        sym.unset_value()
        if sym.str_value == value:
            out.add(name)
        sym.set_value(user)
    return out


def user_changes(kconf: kconfiglib.Kconfig, before: Path, after: Path) -> list[Change]:
    """The options a user changed in an interactive configurator, ``before`` -> ``after``: settable
    options which, set over ``before``, make Kconfig give every settable option its value in
    ``after``. Found in rounds: evaluate ``before`` plus what is recorded so far and compare with
    ``after``; of the options that still differ, record those whose ``after`` value Kconfig would not
    give them by itself (the user set them), or, when all of them would follow, those held back by a
    value of ``before``. Recording can expose options (a menu the user enabled and configured
    inside), so the rounds repeat until nothing differs. Consequences (options that followed a
    select or a default, or vanished with their dependencies) are left to Kconfig, as olddefconfig
    redoes them. ``kconf`` is left with ``after`` loaded."""
    kconf.load_config(str(after))
    syms = list(kconf.unique_defined_syms)
    target = {s.name: s.str_value for s in syms}
    settable = {s.name for s in syms if _settable(s)}
    recorded: dict[str, str] = {}
    while True:
        evaluated = _evaluate(kconf, before, recorded)
        differ = [s.name for s in syms if s.name in settable and s.name not in recorded
                  and evaluated[s.name][0] != target[s.name]]
        if not differ:
            break
        follow = _follows(kconf, after, differ)
        roots = [n for n in differ if n not in follow]
        roots = roots or [n for n in differ if evaluated[n][1]] or differ
        recorded.update((n, target[n]) for n in roots)
    kconf.load_config(str(after))
    out = []
    for s in syms:
        if s.name not in recorded:
            continue
        value = recorded[s.name]
        if s.orig_type == kconfiglib.STRING:
            value = '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
        elif s.orig_type in (kconfiglib.BOOL, kconfiglib.TRISTATE) and not value:
            value = "n"
        out.append(Change(f"CONFIG_{s.name}", value))
    return out
