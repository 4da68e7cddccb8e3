"""Adjust the production config where the project keeps its intent: the fragments.

``set-config ARCH|all CONFIG_X=y CONFIG_Y=n ...`` (and ``menuconfig``, which turns what the user
changed into the same kind of request) works in four steps, and writes nothing until all passed:

1. *place* each change: an option a fragment already asks for is edited on that line; a change for
   one arch of an option a shared fragment asks for becomes an override in ``arch/<arch>.config``
   (the last fragment, so it wins); a new option goes to ``arch/<arch>.config`` for one arch, or,
   for both, to the shared fragment that already holds the most options from the same Kconfig file
   (``base`` when none does), under a comment stub for the reason;
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


@dataclass
class Edit:
    """What one fragment file gets: lines replaced in place and lines appended."""

    path: Path
    replace: dict[int, str] = field(default_factory=dict)  # 1-based line number -> new line
    append: list[Change] = field(default_factory=list)

    def apply(self, text: str) -> str:
        lines = text.splitlines()
        for no, line in self.replace.items():
            lines[no - 1] = line
        for ch in self.append:
            lines += ["", STUB.format(option=ch.option, value=ch.value), ch.line]
        return "\n".join(lines) + "\n"


def _kconfig_file(kconfs: Mapping[str, kconfiglib.Kconfig], option: str) -> str | None:
    for kconf in kconfs.values():
        sym = kconf.syms.get(option.removeprefix("CONFIG_"))
        if sym is not None and sym.nodes:
            return str(sym.nodes[0].filename)
    return None


def _by_affinity(option: str, shared: Sequence[Path], kconfs: Mapping[str, kconfiglib.Kconfig],
                 fallback: Path) -> Path:
    """The shared fragment holding the most options defined in the same Kconfig file as ``option``."""
    home = _kconfig_file(kconfs, option)
    if home is None:
        return fallback
    best, score = fallback, 0
    for frag in shared:
        n = sum(1 for r in kconfig.parse_fragment(frag) if _kconfig_file(kconfs, r.option) == home)
        if n > score:
            best, score = frag, n
    return best


def place(changes: Sequence[Change], arches: Sequence[Arch], variant: kconfig.Variant,
          kconfs: Mapping[str, kconfiglib.Kconfig]) -> dict[Path, Edit]:
    """Decide which fragment line each change becomes (see the module's docstring)."""
    edits: dict[Path, Edit] = {}

    def edit(path: Path) -> Edit:
        return edits.setdefault(path, Edit(path))

    shared = [p for p in variant.fragment_paths(arches[0]) if p.parent == kconfig.FRAGMENTS]
    fallback = kconfig.FRAGMENTS / "base.config"
    for ch in changes:
        asked = {a.name: variant.requests(a).get(ch.option) for a in arches}
        wheres = {(r.fragment, r.line) for r in asked.values() if r is not None}
        if len(arches) == 1:
            arch_frag = kconfig.FRAGMENTS / "arch" / f"{arches[0].name}.config"
            req = asked[arches[0].name]
            if req is not None and req.fragment == arch_frag:
                edit(req.fragment).replace[req.line] = ch.line
            else:
                edit(arch_frag).append.append(ch)
        elif len(wheres) == 1 and all(r is not None for r in asked.values()):
            frag, line = next(iter(wheres))
            edit(frag).replace[line] = ch.line
        else:  # new, or asked for in different places per arch: one shared line, arch lines updated
            for r in asked.values():
                if r is not None and r.fragment.parent != kconfig.FRAGMENTS:
                    edit(r.fragment).replace[r.line] = ch.line
            if not any(r is not None and r.fragment.parent == kconfig.FRAGMENTS for r in asked.values()):
                edit(_by_affinity(ch.option, shared, kconfs, fallback)).append.append(ch)
            else:
                for r in asked.values():
                    if r is not None and r.fragment.parent == kconfig.FRAGMENTS:
                        edit(r.fragment).replace[r.line] = ch.line
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
                problems += [f"{arch.name}: {staged.rel(f.describe())}" for f in findings]
            committed = kconfig.committed_config_path(arch, version)
            outcomes.append(Outcome(arch, resolved, committed,
                                    kconfig.diff(tree, committed, resolved, log=log) if committed.is_file() else ""))
        for path, e in edits.items():
            rel = path.relative_to(kconfig.CONFIGS.parent)
            what = [f"line {no}: {line}" for no, line in sorted(e.replace.items())]
            what += [f"appended: {c.line} (with a comment stub to fill in)" for c in e.append]
            print(f"{rel}: " + "; ".join(what))
        for o in outcomes:
            print(f"{o.committed.name}: " + (f"{len(o.diff.splitlines())} change(s)\n{o.diff}" if o.diff
                                             else "unchanged"))
        if problems:
            with open(log, "a") as fh:
                fh.write("set-config refused:\n" + "".join(f"  {p}\n" for p in problems))
            for problem in problems:
                print(f"  refused: {problem}")
            more = f" (+{len(problems) - 1} more above)" if len(problems) > 1 else ""
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
def _visible(sym: kconfiglib.Symbol) -> bool:
    return bool(sym.nodes) and any(n.prompt for n in sym.nodes) and int(kconfiglib.expr_value(sym.direct_dep)) > 0


def user_changes(kconf: kconfiglib.Kconfig, before: Path, after: Path) -> list[Change]:
    """The options a user changed in an interactive configurator: visible (prompt, dependencies met)
    both before and after, with a different value. Consequences (options that appeared with their
    defaults, or vanished with their dependencies) are left to Kconfig, as olddefconfig will redo them."""
    kconf.load_config(str(before))
    old = {s.name: (s.str_value, _visible(s)) for s in kconf.unique_defined_syms}
    kconf.load_config(str(after))
    out = []
    for s in kconf.unique_defined_syms:
        was, was_visible = old.get(s.name, ("", False))
        if s.str_value != was and was_visible and _visible(s):
            value = s.str_value
            if s.orig_type == kconfiglib.STRING:
                value = '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
            elif s.orig_type in (kconfiglib.BOOL, kconfiglib.TRISTATE) and not value:
                value = "n"
            out.append(Change(f"CONFIG_{s.name}", value))
    return out
