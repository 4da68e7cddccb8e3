"""The committed per-arch production configs: update them, audit them, move them to a new version."""
from __future__ import annotations

import logging
import re
import shutil
import sys
from pathlib import Path

from harness import proc
from harness.arch import Arch, get_arch
from harness.errors import ConfigAuditFailed, InvalidArgument, PatchFailed, SourceMissing
from harness.fsutil import atomic_write_text, sha256_file
from harness.kernel import kconfig, setconfig, source, tree
from harness.kernel.patches import Series
from harness.layout import cache_root

LOG = logging.getLogger(__name__)
PRODUCTION = "production"


def _logdir() -> Path:
    d = cache_root() / "logs"
    d.mkdir(parents=True, exist_ok=True)
    return d


def _tree(pin: source.Pin, log: Path, provider: str | None = None) -> tuple[source.Source, Path]:
    src = source.resolve(pin, log=log, provider=provider)
    return src, tree.prepare(src, Series.load(), log=log)


def update(arches: list[Arch]) -> int:
    """Resolve the production config for each arch and write it to configs/, printing the diff."""
    pin = source.Pin.load()
    log = _logdir() / "update-configs.log"
    log.write_text("")
    src, src_tree = _tree(pin, log)
    variant = kconfig.get_variant(PRODUCTION)
    resolved_by_arch: dict[Arch, Path] = {}
    refused: list[ConfigAuditFailed] = []
    for arch in arches:  # every arch resolved and audited before anything is written
        resolved = resolved_by_arch[arch] = kconfig.resolve(src_tree, arch, variant, log=log)
        try:
            kconfig.check(variant.requests(arch), resolved, src_tree, log=log, label=f"{arch.name}/{PRODUCTION}",
                          arch=arch, stream=sys.stdout)
        except ConfigAuditFailed as exc:
            refused.append(exc)
    if refused:
        more = f"; {len(refused) - 1} more arch(es) above" if len(refused) > 1 else ""
        raise ConfigAuditFailed(f"{refused[0].message}{more}; nothing written", step="audit", log=log)
    for arch, resolved in resolved_by_arch.items():
        dest = kconfig.committed_config_path(arch, src.version)
        if dest.is_file():
            changes = kconfig.diff(src_tree, dest, resolved, log=log)
            print(f"{dest.name}: " + (f"{len(changes.splitlines())} change(s)\n{changes}" if changes
                                      else "unchanged"))
        else:
            print(f"{dest.name}: new ({len(kconfig.parse_config_text(resolved.read_text()))} options)")
        kconfig.install(resolved, dest)
    return 0


def audit_committed(arches: list[Arch]) -> int:
    """Audit each committed config against the fragments, and check it is what they resolve to."""
    pin = source.Pin.load()
    log = _logdir() / "audit.log"
    log.write_text("")
    variant = kconfig.get_variant(PRODUCTION)
    src_tree = None
    failures = 0
    for arch in arches:
        path = kconfig.committed_config_path(arch, pin.version)
        if not path.is_file():
            print(f"FAIL {arch.name}: {path.name} is missing; create it with 'nox -s update-configs'")
            failures += 1
            continue
        requests = variant.requests(arch)
        findings = kconfig.audit(requests, kconfig.parse_config_text(path.read_text()))
        if src_tree is None:
            _, src_tree = _tree(pin, log)
        # the committed file must be exactly what the fragments resolve to on the pinned tree
        resolved = kconfig.resolve(src_tree, arch, variant, log=log)
        if findings:
            fresh = kconfig.findings_of(requests, resolved, src_tree, log=log, label=f"{arch.name}/{PRODUCTION}",
                                        arch=arch)
            if fresh:  # the fragments ask for what Kconfig will not give: the fragments must change
                print(f"FAIL {arch.name}: the fragments resolve to a config without {len(fresh)} requested "
                      "option(s); fix the fragments ('nox -s set-config' shows why a change is refused):")
                for f in fresh:
                    print(f"  {f.describe()}")
            else:  # the fragments are fine; the committed file is behind them
                print(f"FAIL {arch.name}: {path.name} is stale: it lacks {len(findings)} requested option(s) "
                      "the fragments now resolve; bring it in line with 'nox -s update-configs':")
                for f in findings:
                    print(f"  {f.describe()}")
            failures += 1
            continue
        if resolved.read_bytes() != path.read_bytes():
            changes = kconfig.diff(src_tree, path, resolved, log=log)
            print(f"FAIL {arch.name}: {path.name} is stale; the fragments now resolve to:\n{changes}"
                  "  (review, then 'nox -s update-configs')")
            failures += 1
            continue
        print(f"PASS {arch.name}: {path.name}: all {len(requests)} requested options present; "
              "matches the fragments' resolution")
    if failures:
        print(f"error: [audit] {failures} committed config(s) failed (log: {log})", file=sys.stderr)
        return 1
    return 0


def upgrade(version: str, *, debian_version: str | None = None, sha256: str | None = None,
            allow_downgrade: bool = False, dry_run: bool = False, interactive: bool = False) -> int:
    """Move the pin to ``version``, the README's whole procedure in one command. Before anything is
    written: the new source verified, the patch series reported patch by patch on the new tree, the
    configs resolved and audited for every arch, the Kconfig symbols the new version adds listed with
    the value each took, the config diffs, and the other mentions of the old version in the
    repository. Then (unless ``dry_run``) the configs, the pin and those mentions are written."""
    from harness.kernel import upgrade as up

    source.parse_version(version)
    old = source.Pin.load()
    if up.version_tuple(version) <= up.version_tuple(old.version) and not allow_downgrade:
        raise InvalidArgument(f"{version} is not newer than the pinned {old.version} (--allow-downgrade to "
                              "move the pin back)", step="upgrade")
    log = _logdir() / "upgrade.log"
    log.write_text("")
    text = old.path.read_text()
    text = source.set_pin_value(text, None, "version", version)
    pairs = [(old.version, version)]
    provider = ""
    if debian_version:
        pkg = old.debian.get("package", "")
        major_minor = ".".join(version.split(".")[:2])
        if not pkg.endswith(major_minor):
            new_pkg = re.sub(r"[\d.]+$", major_minor, pkg)
            pairs.append((pkg, new_pkg))
            pkg = new_pkg
            text = source.set_pin_value(text, "debian", "package", pkg)
            text = source.set_pin_value(text, "debian", "tarball", f"/usr/src/{pkg}.tar.xz")
        have = source.dpkg_version(pkg)
        if have != debian_version:
            raise SourceMissing(f"{pkg} {debian_version} is not installed (have {have or 'none'}); "
                                f"run 'apt-get install {pkg}={debian_version}' first", step="upgrade")
        tarball = Path(f"/usr/src/{pkg}.tar.xz")
        if not tarball.is_file():
            raise SourceMissing(f"{pkg} {debian_version} is installed but {tarball} is missing", step="upgrade")
        if old.debian.get("package_version"):
            pairs.append((str(old.debian["package_version"]), debian_version))
        text = source.set_pin_value(text, "debian", "package_version", debian_version)
        text = source.set_pin_value(text, "debian", "sha256", sha256_file(tarball))
        provider = "debian"
    elif sha256:
        text = source.set_pin_value(text, "kernelorg", "sha256", sha256)
        provider = "kernelorg"
    else:
        raise InvalidArgument("upgrade needs --debian-version (Debian's linux-source) or --sha256 "
                              "(kernel.org tarball)", step="upgrade")
    # The default provider must be the one that has the new version's source: the other section of
    # the pin still describes the previous version.
    text = source.set_pin_value(text, None, "provider", provider)
    tmp_pin = old.path.with_name(".kernel.toml.upgrade")
    tmp_pin.write_text(text)
    try:
        new = source.Pin.load(tmp_pin)
        new = source.Pin(new.version, new.provider, new.sections, old.path)
        src = source.resolve(new, log=log, provider=provider)
    finally:
        tmp_pin.unlink(missing_ok=True)

    series = Series.load()
    print(f"patch series on {version} ({len(series.patches)} patch(es)):")
    pristine = tree.prepare(src, Series.none(), log=log)
    report = up.patch_report(series, pristine, log)
    for status in report:
        print(f"  {status.describe()}")
    failing = [s for s in report if not s.ok]
    if failing:
        raise PatchFailed(f"the series does not apply to {version}: {failing[0].describe()}; nothing written",
                          step="upgrade", log=log)
    src_tree = tree.prepare(src, series, log=log)

    variant = kconfig.get_variant(PRODUCTION)
    resolved_by_arch: dict[Arch, Path] = {}
    answers: dict[Arch, list[setconfig.Change]] = {}
    refused: list[tuple[str, list[kconfig.Finding]]] = []
    for arch in _all_arches():
        oldcfg = kconfig.committed_config_path(arch, old.version)
        resolved = resolved_by_arch[arch] = kconfig.resolve(src_tree, arch, variant, log=log)
        requests = variant.requests(arch)
        label = f"{arch.name}/{PRODUCTION} on {version}"
        findings = kconfig.findings_of(requests, resolved, src_tree, log=log, label=label, arch=arch)
        if findings:  # reported now, refused once the whole report is out
            refused.append((label, findings))
            print(f"{label}: {len(findings)} requested option(s) dropped or changed:")
            print("\n".join(f"  {f.describe()}" for f in findings))
        if not oldcfg.is_file():
            continue
        values = kconfig.parse_config_text(resolved.read_text())
        scratch = cache_root() / "upgrade" / arch.name
        symbols = up.new_symbols(src_tree, arch, oldcfg, scratch, log)
        print(f"{arch.name}: {len(symbols)} Kconfig symbol(s) new in {version} that {oldcfg.name} never answered, "
              "and the value each took:")
        print("\n".join(up.describe_new(symbols, values, requests)) or "  (none)")
        if interactive and symbols:
            answers[arch] = _answer_new_symbols(src_tree, arch, scratch, symbols, values, log)
        changes = kconfig.diff(src_tree, oldcfg, resolved, log=log)
        print(f"{oldcfg.name} -> linux-config-{arch.config_name}-{version}:\n{changes or '  (no change)'}")

    repo = kconfig.CONFIGS.parent  # the repository whose configs/ holds the pin
    mentions = up.replace_mentions(repo, up.tracked_files(repo), pairs)
    print(f"other mentions of {old.version} in the repository: "
          + (", ".join(f"{m.path.relative_to(repo)} ({m.count})" for m in mentions) or "none"))
    staged = _stage_answers(src_tree, answers, version, log)
    if refused:
        label, findings = refused[0]
        more = f"; {len(refused) - 1} more arch(es) above" if len(refused) > 1 else ""
        raise kconfig.failure(label, findings, log, suffix=f"{more}; nothing written")
    if dry_run:
        print("dry run: nothing written")
        return 0
    for arch, resolved in resolved_by_arch.items():
        kconfig.install(resolved, kconfig.committed_config_path(arch, version))
        oldcfg = kconfig.committed_config_path(arch, old.version)
        if old.version != version and oldcfg.is_file():
            oldcfg.unlink()
    atomic_write_text(old.path, text)
    for m in mentions:
        atomic_write_text(m.path, m.new_text)
    for arch, chosen in staged.items():
        setconfig.set_config(src_tree, [arch], chosen, version=version, log=log)
    print(f"pinned {version}; review 'git diff' and commit")
    return 0


def _stage_answers(src_tree: Path, answers: dict[Arch, list[setconfig.Change]], version: str,
                   log: Path) -> dict[Arch, list[setconfig.Change]]:
    """``--interactive``'s answers, shown and tried (set-config's dry run: placed, resolved, audited)
    before anything of the upgrade is written; a refused answer refuses the upgrade."""
    staged = {arch: chosen for arch, chosen in answers.items() if chosen}
    for arch, chosen in staged.items():
        print(f"{arch.name}: your answers, to go into the fragments: " + " ".join(c.line for c in chosen))
        setconfig.set_config(src_tree, [arch], chosen, version=version, log=log, dry_run=True)
    return staged


def _answer_new_symbols(src_tree: Path, arch: Arch, scratch: Path, symbols: list[str], values: dict[str, str],
                        log: Path) -> list[setconfig.Change]:
    """``make oldconfig`` asks about the new symbols on this terminal; answers that differ from the
    value the resolution gave become fragment lines (through set-config) once the pin moved."""
    rc = proc.interactive(kconfig.make_argv(arch, scratch, "oldconfig"), step="upgrade", cwd=src_tree)
    if rc != 0:
        raise InvalidArgument(f"make oldconfig exited {rc}; nothing written", step="upgrade", log=log)
    answered = kconfig.parse_config_text((scratch / ".config").read_text())
    return [setconfig.Change(sym, answered.get(sym, "n")) for sym in symbols
            if answered.get(sym, "n") != values.get(sym, "n")]


def set_config(arch: str, assignments: list[str], *, dry_run: bool = False) -> int:
    """``set-config ARCH|all CONFIG_X=V ...``: see :mod:`harness.kernel.setconfig`."""
    changes = setconfig.parse_changes(assignments)
    arches = _all_arches() if arch == "all" else [get_arch(arch)]
    pin = source.Pin.load()
    log = _logdir() / "set-config.log"
    log.write_text("")
    _, src_tree = _tree(pin, log)
    return setconfig.set_config(src_tree, arches, changes, version=pin.version, log=log, dry_run=dry_run)


def menuconfig(arch_name: str, *, tool: str = "menuconfig", dry_run: bool = False) -> int:
    """Open the kernel's own configurator on the committed production config of ``arch``; what the
    user changes (and saves) becomes fragment lines through set-config, re-resolved and audited."""
    from harness.kernel import explain

    arch = get_arch(arch_name)
    pin = source.Pin.load()
    log = _logdir() / f"{tool}.log"
    log.write_text("")
    _, src_tree = _tree(pin, log)
    committed = kconfig.committed_config_path(arch, pin.version)
    if not committed.is_file():
        raise SourceMissing(f"{committed} is missing; create it with 'nox -s update-configs'", step=tool)
    scratch = cache_root() / tool / arch.name
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    shutil.copyfile(committed, scratch / ".config")
    rc = proc.interactive(kconfig.make_argv(arch, scratch, tool), step=tool, cwd=src_tree)
    if rc != 0:
        raise InvalidArgument(f"make {tool} exited {rc}; nothing written", step=tool, log=log)
    kconf = explain.load(src_tree, arch)
    changes = setconfig.user_changes(kconf, committed, scratch / ".config")
    if not changes:
        print(f"{tool}: no option changed; nothing written")
        return 0
    print(f"{tool}: you changed " + " ".join(c.line.replace("# ", "").replace(" is not set", "=n") for c in changes))
    return setconfig.set_config(src_tree, [arch], changes, version=pin.version, log=log, dry_run=dry_run,
                                kconfs={arch.name: kconf})


def drift(*, json_path: Path | None = None) -> int:
    """The config-drift report of the committed production configs on the pinned tree."""
    from harness.kernel import drift as drift_mod

    pin = source.Pin.load()
    log = _logdir() / "config-drift.log"
    log.write_text("")
    _, src_tree = _tree(pin, log)
    return drift_mod.run(src_tree, _all_arches(), pin.version, json_path=json_path)


def _all_arches() -> list[Arch]:
    from harness.arch import ARCHES

    return list(ARCHES.values())
