"""Config drift: where the amd64 and arm64 production configs disagree, and whether anyone asked.

The two production configs start from different defconfigs, so they drift apart on options neither
arch's fragments mention. Reported are the options both arches can set (defined with a prompt and
dependencies met on each, evaluated with kconfiglib on the pinned tree) whose values differ; options
that exist on one arch only, and internal (prompt-less) symbols that follow other choices, are left
out. Each difference is marked with the fragment line that requested the value on each arch, or as
unexplained: an unexplained difference is a decision nobody took, and fails the session.
"""
from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import kconfiglib

from harness.arch import Arch
from harness.fsutil import atomic_write_json
from harness.kernel import explain, kconfig


@dataclass(frozen=True)
class Drift:
    option: str
    values: dict[str, str]  # arch -> resolved value ("n" when absent)
    requested: dict[str, str]  # arch -> fragment line that asked for the value ("" when none)
    menu: str  # the Kconfig menu the option sits in (first definition)
    origin: dict[str, str] = field(default_factory=dict)  # arch -> base config file that set it, or
    #                                                        "default or select" (no base file sets it)

    @property
    def explained(self) -> bool:
        return any(self.requested.values())


def settable(kconf: kconfiglib.Kconfig, option: str) -> bool:
    """Defined for this arch, with a prompt, and its dependencies met: a value someone chooses."""
    sym = kconf.syms.get(option.removeprefix("CONFIG_"))
    if sym is None or not sym.nodes or not any(node.prompt for node in sym.nodes):
        return False
    return int(kconfiglib.expr_value(sym.direct_dep)) > 0


def _menu(kconf: kconfiglib.Kconfig, option: str) -> str:
    sym = kconf.syms.get(option.removeprefix("CONFIG_"))
    if sym is None or not sym.nodes:
        return ""
    titles: list[str] = []
    node = sym.nodes[0].parent
    while node is not None and node is not kconf.top_node:
        if node.prompt and not isinstance(node.item, (kconfiglib.Symbol, kconfiglib.Choice)):  # a menu
            titles.append(str(node.prompt[0]))
        node = node.parent
    return " > ".join(reversed(titles))


def base_files(tree: Path, arch: Arch, targets: Sequence[str]) -> list[Path]:
    """The config files the variant's base make targets merge, in order: the arch's defconfig and
    each ``NAME.config`` (arch/<srcarch>/configs/ first, then kernel/configs/)."""
    out = []
    for target in targets:
        if target == "defconfig":
            out.append(tree / arch.defconfig)
        elif target.endswith(".config"):
            for where in (tree / "arch" / arch.srcarch / "configs", tree / "kernel" / "configs"):
                if (where / target).is_file():
                    out.append(where / target)
                    break
    return [p for p in out if p.is_file()]


DEFAULT_ORIGIN = "default or select"
_SET_RE = re.compile(r"^(?:(CONFIG_\w+)=|# (CONFIG_\w+) is not set)")


def origins(files: Sequence[Path]) -> dict[str, str]:
    """option -> the last of ``files`` that sets it (its name), as make's merge of them does."""
    out: dict[str, str] = {}
    for path in files:
        for line in path.read_text(errors="replace").splitlines():
            m = _SET_RE.match(line)
            if m:
                out[m[1] or m[2]] = path.name
    return out


def compare(configs: Mapping[str, dict[str, str]], kconfs: Mapping[str, kconfiglib.Kconfig],
            requests: Mapping[str, Mapping[str, kconfig.Request]],
            base_origins: Mapping[str, Mapping[str, str]] | None = None) -> list[Drift]:
    """The drift between the arches' resolved configs ({arch: {option: value}}), each kconf loaded
    with its arch's config; ``base_origins`` ({arch: {option: file}}) says which base config file
    set an option nobody requested."""
    arches = sorted(configs)
    out: list[Drift] = []
    for option in sorted(set().union(*(set(c) for c in configs.values()))):
        values = {a: configs[a].get(option, "n") for a in arches}
        if len(set(values.values())) < 2:
            continue
        if not all(settable(kconfs[a], option) for a in arches):
            continue
        asked = {}
        for a in arches:
            req = requests[a].get(option)
            asked[a] = req.where if req is not None and kconfig.audit({option: req}, {option: values[a]}) == [] else ""
        origin = {a: base_origins[a].get(option, DEFAULT_ORIGIN) for a in arches} if base_origins else {}
        out.append(Drift(option, values, asked, _menu(kconfs[arches[0]], option), origin))
    return out


def report(drifts: Sequence[Drift], arches: Sequence[str], version: str) -> str:
    unexplained = [d for d in drifts if not d.explained]
    lines = [f"config drift between the {' and '.join(arches)} production configs ({version}): "
             f"{len(drifts)} option(s) both can set differ; {len(drifts) - len(unexplained)} requested, "
             f"{len(unexplained)} unexplained"]
    width = max((len(d.option) for d in drifts), default=0)
    for d in drifts:
        sides = "  ".join(f"{a}={d.values[a]} ({d.requested[a] or d.origin.get(a) or 'not requested'})"
                          for a in arches)
        lines.append(f"  {'requested  ' if d.explained else 'UNEXPLAINED'} {d.option:<{width}}  {sides}"
                     + (f"  [{d.menu}]" if d.menu else ""))
    if unexplained:
        by_origin = Counter(f"{a}: {d.origin.get(a, '?')}" for d in unexplained for a in arches if not d.requested[a])
        lines.append("unexplained values come from: " + ", ".join(f"{k} ({n})" for k, n in sorted(by_origin.items())))
        lines.append("state the intended value in configs/fragments/arch/<arch>.config (or a shared fragment "
                     "for both), e.g. with 'nox -s set-config -- ARCH CONFIG_X=VALUE'")
    return "\n".join(lines)


def run(tree: Path, arches: Sequence[Arch], version: str, *, json_path: Path | None = None) -> int:
    """Print the drift report of the committed production configs; 1 when any difference is unexplained."""
    variant = kconfig.get_variant("production")
    configs: dict[str, dict[str, str]] = {}
    kconfs: dict[str, kconfiglib.Kconfig] = {}
    requests: dict[str, dict[str, kconfig.Request]] = {}
    base_origins: dict[str, dict[str, str]] = {}
    for arch in arches:
        base_origins[arch.name] = origins(base_files(tree, arch, variant.base_targets(arch)))
        path = kconfig.committed_config_path(arch, version)
        configs[arch.name] = kconfig.parse_config_text(path.read_text())
        kconfs[arch.name] = explain.load(tree, arch)
        kconfs[arch.name].load_config(str(path))
        requests[arch.name] = variant.requests(arch)
    drifts = compare(configs, kconfs, requests, base_origins)
    names = [a.name for a in arches]
    print(report(drifts, names, version))
    if json_path is not None:
        data: dict[str, Any] = {"version": version, "arches": names,
                                "drift": [asdict(d) | {"explained": d.explained} for d in drifts]}
        atomic_write_json(json_path, data)
    return 1 if any(not d.explained for d in drifts) else 0
