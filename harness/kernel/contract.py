"""The capability contract: what a NeonVM guest needs from its kernel, and what is left out on purpose.

``configs/contract.toml`` is the one statement of intent that the tooling reads:

* ``[[capability]]``: a group of Kconfig options (with the value each must have), the NeonVM
  component that needs them, the arches it applies to, and the boot checks that prove it in a
  booted guest. Every capability must be requested by the fragments of every variant that claims
  the contract (``contract = true`` in configs/variants.toml), so the audit keeps it, and a
  contract boot check that fails names the capability and its component.
* ``[[omission]]``: options left out on purpose, as glob patterns over symbol names (without
  ``CONFIG_``), with the reason. ``kind = "hardware"`` marks hardware a VM never has; anything
  else is a deliberate policy choice. The production configs must have every omitted option off
  where the pattern names it exactly.
"""
from __future__ import annotations

import fnmatch
import tomllib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from harness.arch import ARCHES
from harness.errors import InvalidArgument
from harness.layout import CONFIGS

CONTRACT = CONFIGS / "contract.toml"
STEP = "contract"
ALL_ARCHES = tuple(ARCHES)  # a capability that names no arch is every arch's
OMISSION_KINDS = ("policy", "hardware")


def _sym(name: str) -> str:
    return name.removeprefix("CONFIG_")


@dataclass(frozen=True)
class Capability:
    name: str
    needed_by: str
    options: dict[str, str]  # symbol (no CONFIG_) -> required value ("y", "n", ...)
    arches: tuple[str, ...] = ALL_ARCHES
    proven_by: tuple[str, ...] = ()

    def applies(self, arch: str) -> bool:
        return arch in self.arches

    def describe(self) -> str:
        opts = ", ".join(f"{k}={v}" for k, v in self.options.items())
        return f"capability '{self.name}' ({opts}), needed by {self.needed_by}"


@dataclass(frozen=True)
class Omission:
    name: str
    reason: str
    patterns: tuple[str, ...]  # fnmatch patterns over symbol names without CONFIG_
    kind: str = "policy"
    arches: tuple[str, ...] = ALL_ARCHES

    def matches(self, option: str) -> bool:
        sym = _sym(option)
        return any(fnmatch.fnmatchcase(sym, p) for p in self.patterns)


@dataclass(frozen=True)
class Contract:
    capabilities: tuple[Capability, ...]
    omissions: tuple[Omission, ...]
    path: Path = CONTRACT

    def for_arch(self, arch: str) -> list[Capability]:
        return [c for c in self.capabilities if c.applies(arch)]

    def capability(self, name: str) -> Capability:
        for c in self.capabilities:
            if c.name == name:
                return c
        raise InvalidArgument(f"{self.path}: no capability named {name!r}", step=STEP)

    def proven_by(self, check: str, arch: str) -> list[Capability]:
        """The capabilities a boot check proves on ``arch``."""
        return [c for c in self.for_arch(arch) if check in c.proven_by]

    def requirement(self, option: str, arch: str) -> Capability | None:
        sym = _sym(option)
        for c in self.for_arch(arch):
            if sym in c.options:
                return c
        return None

    def omission(self, option: str, arch: str) -> Omission | None:
        for o in self.omissions:
            if arch in o.arches and o.matches(option):
                return o
        return None


def _tuple(value: object, where: str, key: str) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidArgument(f"{where}: '{key}' must be a list of strings", step=STEP)
    return tuple(value)


def parse(text: str, path: Path = CONTRACT) -> Contract:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InvalidArgument(f"{path}: {exc}", step=STEP) from None
    caps, oms = [], []
    names: set[str] = set()
    for i, raw in enumerate(data.get("capability", [])):
        where = f"{path}: capability #{i + 1}"
        try:
            name, needed_by, options = raw["name"], raw["needed_by"], raw["options"]
        except KeyError as exc:
            raise InvalidArgument(f"{where}: missing {exc.args[0]!r}", step=STEP) from None
        if name in names:
            raise InvalidArgument(f"{where}: duplicate name {name!r}", step=STEP)
        names.add(name)
        if not isinstance(options, dict) or not options:
            raise InvalidArgument(f"{where} ({name}): 'options' must be a non-empty table", step=STEP)
        arches = _tuple(raw.get("arches", list(ALL_ARCHES)), where, "arches")
        bad = set(arches) - set(ALL_ARCHES)
        if bad:
            raise InvalidArgument(f"{where} ({name}): unknown arch(es) {', '.join(sorted(bad))}", step=STEP)
        caps.append(Capability(name, needed_by, {_sym(k): str(v) for k, v in options.items()}, arches,
                               _tuple(raw.get("proven_by", []), where, "proven_by")))
    for i, raw in enumerate(data.get("omission", [])):
        where = f"{path}: omission #{i + 1}"
        try:
            name, reason, patterns = raw["name"], raw["reason"], raw["options"]
        except KeyError as exc:
            raise InvalidArgument(f"{where}: missing {exc.args[0]!r}", step=STEP) from None
        kind = raw.get("kind", "policy")
        if kind not in OMISSION_KINDS:
            raise InvalidArgument(f"{where} ({name}): kind must be one of {', '.join(OMISSION_KINDS)}", step=STEP)
        oms.append(Omission(name, reason, tuple(_sym(p) for p in _tuple(patterns, where, "options")), kind,
                            _tuple(raw.get("arches", list(ALL_ARCHES)), where, "arches")))
    return Contract(tuple(caps), tuple(oms), path)


@lru_cache(maxsize=4)
def _load_cached(path: Path, mtime: float) -> Contract:
    return parse(path.read_text(), path)


def load(path: Path | None = None) -> Contract:
    path = path or CONTRACT
    if not path.is_file():
        raise InvalidArgument(f"{path} does not exist", step=STEP)
    return _load_cached(path, path.stat().st_mtime)
