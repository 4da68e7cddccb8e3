"""harness/kernel/kconfig.py: fragments, variants, resolution with the (fake) kernel's tools, the audit."""
from __future__ import annotations

import os
import textwrap

import pytest
from build_fakes import copy_tree, fake_cross_toolchain, tool_bin

from harness import proc
from harness.arch import ARCHES, get_arch
from harness.errors import ConfigAuditFailed, InvalidArgument, ToolMissing
from harness.kernel import kconfig
from harness.layout import CONFIGS

AMD64, ARM64 = get_arch("amd64"), get_arch("arm64")


# what every make of the harness passes so that host tools do not leak into the config
PROBES = ["RUSTC=/nonexistent/rustc", "BINDGEN=/nonexistent/bindgen", "PAHOLE=/nonexistent/pahole"]


def _frag(tmp_path, text, name="frag.config"):
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


# -- fragments ----------------------------------------------------------------------------------------
def test_parse_config_text():
    text = ('#\n# Automatically generated file; DO NOT EDIT.\n#\nCONFIG_A=y\n# CONFIG_B is not set\n'
            'CONFIG_C="a string = with # signs"\nCONFIG_D=0x10\n# a comment CONFIG_E=y\n')
    assert kconfig.parse_config_text(text) == {"CONFIG_A": "y", "CONFIG_B": "n",
                                               "CONFIG_C": '"a string = with # signs"', "CONFIG_D": "0x10"}


def test_parse_fragment_records_file_and_line(tmp_path):
    p = _frag(tmp_path, """\
        # a comment

        CONFIG_A=y
          CONFIG_B=m
        # CONFIG_C is not set
        CONFIG_D=n
        CONFIG_E="str"
        CONFIG_F=512
        """)
    reqs = kconfig.parse_fragment(p)
    assert [(r.option, r.value, r.line) for r in reqs] == [
        ("CONFIG_A", "y", 3), ("CONFIG_B", "m", 4), ("CONFIG_C", "n", 5), ("CONFIG_D", "n", 6),
        ("CONFIG_E", '"str"', 7), ("CONFIG_F", "512", 8)]
    assert all(r.fragment == p for r in reqs)
    assert reqs[0].where == f"{p}:3"  # outside configs/: the full path


@pytest.mark.parametrize("line", ["CONFIG_FOO y", "FOO=y", "CONFIG_FOO = y", "config FOO", "CONFIG_FOO",
                                  "CONFIG_FOO=", "CONFIG-FOO=y", "y"])
def test_parse_fragment_rejects_malformed_lines(tmp_path, line):
    p = _frag(tmp_path, f"# ok\nCONFIG_OK=y\n{line}\n")
    with pytest.raises(InvalidArgument) as exc:
        kconfig.parse_fragment(p)
    assert exc.value.step == "config"
    assert str(exc.value) == f"[config] {p}:3: not a config line: {line!r}"


def test_request_where_is_relative_to_the_repository():
    req = kconfig.Request("CONFIG_X", "y", CONFIGS / "fragments" / "base.config", 7)
    assert req.where == "configs/fragments/base.config:7"


def test_later_fragment_overrides_earlier(world):
    frags = world.configs / "fragments"
    (frags / "first.config").write_text("CONFIG_A=y\nCONFIG_B=y\n")
    (frags / "second.config").write_text("# override\n# CONFIG_A is not set\nCONFIG_C=m\n")
    v = kconfig.Variant("t", "tinyconfig", ("first", "second"), "-t", False)
    reqs = v.requests(AMD64)
    assert {o: (r.value, r.fragment.name, r.line) for o, r in reqs.items()} == {
        "CONFIG_A": ("n", "second.config", 2), "CONFIG_B": ("y", "first.config", 2),
        "CONFIG_C": ("m", "second.config", 3)}
    assert reqs["CONFIG_A"].where == "configs/fragments/second.config:2"


def test_fragment_paths_substitute_the_arch(world):
    v = kconfig.get_variant("test")
    assert [p.relative_to(world.configs).as_posix() for p in v.fragment_paths(ARM64)] == [
        "fragments/base.config", "fragments/virtio.config", "fragments/arch/arm64.config"]


def test_missing_fragment(world):
    v = kconfig.Variant("t", "tinyconfig", ("base", "nope"), "-t", False)
    with pytest.raises(InvalidArgument, match="variant t: fragment .*nope.config does not exist"):
        v.requests(AMD64)


def test_unknown_variant(world):
    with pytest.raises(InvalidArgument, match="unknown variant 'nope' \\(known: test, broken, production\\)"):
        kconfig.get_variant("nope")


def test_the_repository_variants_and_fragments_parse():
    variants = kconfig.load_variants()
    assert "production" in variants and variants["production"].committed
    for v in variants.values():
        for arch in ARCHES.values():
            reqs = v.requests(arch)  # every fragment exists and every line parses
            assert reqs and all(r.option.startswith("CONFIG_") for r in reqs.values())
    assert kconfig.get_variant("negative").requests(AMD64)["CONFIG_ADVISE_SYSCALLS"].value == "n"


# -- the audit -------------------------------------------------------------------------------------
def _reqs(tmp_path, text):
    return {r.option: r for r in kconfig.parse_fragment(_frag(tmp_path, text))}


def test_audit_reports_dropped_and_changed_options(tmp_path):
    reqs = _reqs(tmp_path, """\
        CONFIG_KEPT=y
        CONFIG_DROPPED=y
        CONFIG_CHANGED=y
        # CONFIG_OFF is not set
        CONFIG_OFF_ABSENT=n
        CONFIG_STR="abc"
        CONFIG_NUM=512
        """)
    resolved = {"CONFIG_KEPT": "y", "CONFIG_CHANGED": "m", "CONFIG_OFF": "n", "CONFIG_STR": '"abc"',
                "CONFIG_NUM": "64"}
    findings = kconfig.audit(reqs, resolved)
    assert [(f.request.option, f.request.value, f.resolved) for f in findings] == [
        ("CONFIG_DROPPED", "y", "n (absent)"), ("CONFIG_CHANGED", "y", "m"), ("CONFIG_NUM", "512", "64")]
    assert findings[0].describe() == (f"CONFIG_DROPPED: requested y, resolved n (absent) "
                                      f"(asked for at {tmp_path / 'frag.config'}:2)")


def test_check_lists_option_values_fragment_line_and_depends(world, tmp_path):
    t = copy_tree(tmp_path / "tree")
    reqs = kconfig.get_variant("test").requests(AMD64)
    config = tmp_path / ".config"
    config.write_text("".join(f"{o}={r.value}\n" for o, r in reqs.items()
                              if o not in ("CONFIG_VIRTIO_MEM", "CONFIG_MEMORY_HOTREMOVE")))
    log = tmp_path / "config.log"
    with pytest.raises(ConfigAuditFailed) as exc:
        kconfig.check(reqs, config, t, log=log, label="amd64/test", arch=AMD64)
    assert exc.value.step == "audit" and exc.value.log == log
    assert str(exc.value) == (
        "[audit] amd64/test: CONFIG_MEMORY_HOTREMOVE: requested y, resolved n (absent) "
        "(asked for at configs/fragments/virtio.config:4); why: MEMORY_HOTREMOVE=n <- MEMORY_HOTPLUG=n "
        "<- SPARSEMEM not defined for amd64 (+1 more) "
        f"(log: {log})")
    text = log.read_text()
    assert "2 option(s) dropped or changed" in text
    assert ("CONFIG_VIRTIO_MEM: requested y, resolved n (absent) (asked for at "
            "configs/fragments/virtio.config:5); why: VIRTIO_MEM=n <- ") in text


def test_check_passes_when_everything_is_there(world, tmp_path):
    reqs = kconfig.get_variant("test").requests(AMD64)
    config = tmp_path / ".config"
    config.write_text("".join(f"{o}={r.value}\n" for o, r in reqs.items()))
    kconfig.check(reqs, config, tmp_path, log=tmp_path / "config.log", label="amd64/test", arch=AMD64)
    assert not (tmp_path / "config.log").exists()


# -- resolution with the fake tree -------------------------------------------------------------------
def test_make_argv():
    assert kconfig.make_argv(ARM64, "/o", "tinyconfig") == [
        "make", "O=/o", "ARCH=arm64", "CROSS_COMPILE=aarch64-linux-gnu-", *PROBES, "tinyconfig"]
    assert kconfig.make_argv(AMD64, "/o", "olddefconfig", extra=["V=1"]) == [
        "make", "O=/o", "ARCH=x86_64", *PROBES, "V=1", "olddefconfig"]


def test_resolve_merges_fragments_over_the_base(world, tmp_path):
    t = copy_tree(tmp_path / "tree")
    log = tmp_path / "config.log"
    variant = kconfig.get_variant("test")
    config = kconfig.resolve(t, AMD64, variant, log=log)
    assert config == world.cache / "kconfig" / "amd64-test" / ".config"
    resolved = kconfig.parse_config_text(config.read_text())
    assert kconfig.audit(variant.requests(AMD64), resolved) == []
    assert resolved["CONFIG_X86_64"] == "y"  # from tinyconfig
    assert resolved["CONFIG_MODULES"] == "y" and resolved["CONFIG_LOCALVERSION_AUTO"] == "n"  # overridden
    text = log.read_text()
    assert "tinyconfig" in text and "merge_config.sh -m -O" in text and "olddefconfig" in text
    assert "Value of CONFIG_MODULES is redefined by fragment" in text
    assert not list(t.rglob(".config"))  # nothing written into the source tree


def test_resolve_is_cached_until_a_fragment_changes(world, tmp_path, monkeypatch):
    t = copy_tree(tmp_path / "tree")
    variant = kconfig.get_variant("test")
    config = kconfig.resolve(t, AMD64, variant, log=tmp_path / "config.log")
    before = config.read_text()
    real_run = proc.run
    monkeypatch.setattr(proc, "run", lambda *a, **k: pytest.fail("resolved again"))
    assert kconfig.resolve(t, AMD64, variant, log=tmp_path / "config.log") == config
    monkeypatch.setattr(proc, "run", real_run)
    with open(world.configs / "fragments" / "arch" / "amd64.config", "a") as fh:
        fh.write("CONFIG_NR_CPUS=64\n")
    kconfig.resolve(t, AMD64, variant, log=tmp_path / "config.log")
    assert config.read_text() != before and "CONFIG_NR_CPUS=64\n" in config.read_text()


def test_kconfig_drops_what_it_cannot_satisfy_and_the_audit_says_why(world, tmp_path):
    t = copy_tree(tmp_path / "tree", unsatisfiable=("CONFIG_VIRTIO_MEM",))
    variant = kconfig.get_variant("test")
    log = tmp_path / "config.log"
    config = kconfig.resolve(t, AMD64, variant, log=log)
    assert "VIRTIO_MEM" not in config.read_text()
    with pytest.raises(ConfigAuditFailed) as exc:
        kconfig.check(variant.requests(AMD64), config, t, log=log, label="amd64/test", arch=AMD64)
    assert str(exc.value) == (
        "[audit] amd64/test: CONFIG_VIRTIO_MEM: requested y, resolved n (absent) "
        "(asked for at configs/fragments/virtio.config:5); why: VIRTIO_MEM=n <- VIRTIO=n has no prompt, "
        f"no default (log: {log})")


def test_resolve_for_arm64_uses_the_cross_compiler(world, tmp_path, cross_gcc):
    t = copy_tree(tmp_path / "tree")
    config = kconfig.resolve(t, ARM64, kconfig.get_variant("test"), log=tmp_path / "config.log")
    resolved = kconfig.parse_config_text(config.read_text())
    assert resolved["CONFIG_ARM64"] == "y" and resolved["CONFIG_EFI"] == "y" and "CONFIG_ACPI" not in resolved
    assert "Linux/arm64 6.12.117 Kernel Configuration" in config.read_text()


def test_failed_resolution_is_not_trusted_later(world, tmp_path, monkeypatch):
    """Without the cross compiler the kernel's config targets fail; nothing is stamped as resolved."""
    t = copy_tree(tmp_path / "tree")
    monkeypatch.setenv("PATH", str(tool_bin(tmp_path / "bin", ("make", "sh", "awk", "sed", "cat", "mkdir",
                                                                "cmp", "mv", "rm", "grep", "mktemp",
                                                                "tail", "gcc"))))
    log = tmp_path / "config.log"
    with pytest.raises(ToolMissing) as exc:  # the compiler is part of the resolution's key
        kconfig.resolve(t, ARM64, kconfig.get_variant("test"), log=log)
    assert exc.value.step == "config" and "'aarch64-linux-gnu-gcc' not found" in str(exc.value)
    scratch = world.cache / "kconfig" / "arm64-test"
    assert not (scratch / ".harness-resolved").exists()
    bindir = fake_cross_toolchain(tmp_path / "cross")
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    config = kconfig.resolve(t, ARM64, kconfig.get_variant("test"), log=log)
    assert (scratch / ".harness-resolved").is_file() and "CONFIG_ARM64=y" in config.read_text()


def test_diff_uses_the_trees_diffconfig_and_logs_it(tmp_path):
    t = copy_tree(tmp_path / "tree")
    old, new = tmp_path / "old", tmp_path / "new"
    old.write_text("CONFIG_A=y\nCONFIG_B=y\n# CONFIG_C is not set\nCONFIG_S=\"x\"\n")
    new.write_text("CONFIG_A=y\nCONFIG_C=m\nCONFIG_D=y\nCONFIG_S=\"x y\"\n")
    log = tmp_path / "config.log"
    out = kconfig.diff(t, old, new, log=log)
    assert out == "-B y\n C n -> m\n S \"x\" -> \"x y\"\n+D y\n"
    assert out in log.read_text()
    assert kconfig.diff(t, old, old, log=log) == ""


def test_install_copies_only_a_changed_config(tmp_path):
    src, dest = tmp_path / "resolved", tmp_path / "configs" / "linux-config-amd64-6.12.117"
    src.write_text("CONFIG_A=y\n")
    assert kconfig.install(src, dest) is True and dest.read_text() == "CONFIG_A=y\n"
    mtime = dest.stat().st_mtime_ns
    assert kconfig.install(src, dest) is False and dest.stat().st_mtime_ns == mtime
    src.write_text("CONFIG_A=m\n")
    assert kconfig.install(src, dest) is True and dest.read_text() == "CONFIG_A=m\n"
    assert sorted(p.name for p in dest.parent.iterdir()) == [dest.name]  # no temporary left


def test_variants_extend_each_other(tmp_path):
    path = tmp_path / "variants.toml"
    path.write_text('[a]\nbase = "tinyconfig"\nfragments = ["base"]\nbase_arch = { arm64 = "defconfig virt.config" }\n'
                    '[b]\nextends = "a"\nadd_fragments = ["x"]\nsuffix = "-b"\npatches = false\n'
                    '[c]\nextends = "b"\nadd_fragments = ["y"]\ncontract = true\n')
    v = kconfig.load_variants(path)
    assert v["b"].fragments == ("base", "x") and v["b"].suffix == "-b" and not v["b"].patches
    assert v["c"].fragments == ("base", "x", "y") and v["c"].contract and not v["c"].patches
    assert v["c"].base_targets(get_arch("arm64")) == ["defconfig", "virt.config"]
    assert v["c"].base_targets(AMD64) == ["tinyconfig"]


@pytest.mark.parametrize("text, message", [
    ('[a]\nextends = "nope"\n', "extends unknown 'nope'"),
    ('[a]\nextends = "b"\n[b]\nextends = "a"\n', "in a loop"),
    ('[a]\nbase = "tinyconfig"\nfragments = []\nfragmnets = []\n', "unknown key(s) fragmnets"),
    ('[a]\nfragments = []\n', "needs 'base' and 'fragments'"),
])
def test_bad_variants_are_refused(tmp_path, text, message):
    path = tmp_path / "variants.toml"
    path.write_text(text)
    with pytest.raises(InvalidArgument) as err:
        kconfig.load_variants(path)
    assert message in str(err.value)
