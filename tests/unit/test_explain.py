"""harness.kernel.explain against the miniature Kconfig tree in fixtures/kconfig-explain/: each test
resolves a fragment the way `make olddefconfig` would, with kconfiglib, then explains the requests it
did not honour."""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest
from fixture_paths import FIXTURES

from harness.errors import UnsupportedArch
from harness.kernel import explain

FIXTURE = FIXTURES / "kconfig-explain"
FRAG = "configs/fragments/test.config"


@pytest.fixture(scope="module")
def kconf() -> explain.Kconf:
    return explain.load(FIXTURE, "amd64")


def resolve(kconf: explain.Kconf, tmp: Path, *lines: str, base: tuple[str, ...] = (),
            overrides: dict[str, str] | None = None) -> dict[str, tuple[str, str]]:
    """Resolve base + fragment lines with kconfiglib (olddefconfig), leave the result loaded and
    return the fragment's requests as {option: (value, where)}."""
    requested: dict[str, tuple[str, str]] = {}
    for no, line in enumerate(lines, 1):
        m = re.fullmatch(r"(CONFIG_\w+)=(.+)|# (CONFIG_\w+) is not set", line)
        assert m, line
        requested[m[1] or m[3]] = (m[2] or "n", f"{FRAG}:{no}")
    src = tmp / "in.config"
    src.write_text("\n".join(base + lines) + "\n")
    explain.olddefconfig(kconf, src, tmp / ".config", overrides)
    return requested


def chains(kconf: explain.Kconf, requested: dict[str, tuple[str, str]], max_depth: int = 10) -> dict[str, str]:
    return {e.option: e.chain for e in explain.explain(kconf, requested, max_depth=max_depth)}


# the acceptance scenario in miniature: a resolved config, then COMPACTION=n from a fragment

GOOD = ("CONFIG_MEMORY_HOTPLUG=y", "CONFIG_COMPACTION=y", "CONFIG_VIRTIO_MEM=y")


def test_satisfied_requests_have_no_explanation(kconf: explain.Kconf, tmp_path: Path) -> None:
    assert explain.explain(kconf, resolve(kconf, tmp_path, *GOOD)) == []


def test_depends_on_chain_to_fragment_line(kconf: explain.Kconf, tmp_path: Path) -> None:
    resolve(kconf, tmp_path, *GOOD)
    resolved = (tmp_path / ".config").read_text()
    (tmp_path / "resolved.config").write_text(resolved)
    explain.olddefconfig(kconf, tmp_path / "resolved.config", tmp_path / "new.config", {"CONFIG_COMPACTION": "n"})
    requested = {
        "CONFIG_MEMORY_HOTPLUG": ("y", "configs/fragments/hotplug.config:8"),
        "CONFIG_COMPACTION": ("n", "configs/fragments/hotplug.config:12"),
        "CONFIG_VIRTIO_MEM": ("y", "configs/fragments/hotplug.config:20"),
    }
    [exp] = explain.explain(kconf, requested)
    assert (exp.option, exp.requested, exp.resolved, exp.where) == \
        ("CONFIG_VIRTIO_MEM", "y", "n", "configs/fragments/hotplug.config:20")
    assert exp.chain == ("VIRTIO_MEM=n <- CONTIG_ALLOC=n <- (MEMORY_ISOLATION=y && COMPACTION=n) || CMA=n"
                         " <- COMPACTION=n set by configs/fragments/hotplug.config:12")
    assert str(exp).startswith("CONFIG_VIRTIO_MEM: requested y at configs/fragments/hotplug.config:20, resolved n: ")
    # the structured steps keep every branch, also the one the chain leaves out
    steps = {s.symbol: s for s in exp.root.walk()}
    assert steps["VIRTIO_MEM"].reason == "depends"
    assert steps["CONTIG_ALLOC"].reason == "default"
    assert steps["CONTIG_ALLOC"].location == "mm/Kconfig:18"
    assert steps["COMPACTION"].reason == "requested"
    assert (steps["CMA"].reason, steps["CMA"].note) == ("settable", "not set by any fragment")


def test_def_bool_expression(kconf: explain.Kconf, tmp_path: Path) -> None:
    requested = resolve(kconf, tmp_path, "CONFIG_CONTIG_ALLOC=y")
    assert chains(kconf, requested) == {
        "CONFIG_CONTIG_ALLOC": "CONTIG_ALLOC=n <- (MEMORY_ISOLATION=n && COMPACTION=y) || CMA=n"
                               " <- MEMORY_ISOLATION=n has no prompt, only selected by MEMORY_HOTPLUG"}


def test_def_bool_expression_follows_every_false_disjunct(kconf: explain.Kconf, tmp_path: Path) -> None:
    requested = resolve(kconf, tmp_path, "CONFIG_MEMORY_HOTPLUG=y", "# CONFIG_COMPACTION is not set",
                        "# CONFIG_CMA is not set", "CONFIG_CONTIG_ALLOC=y")
    assert chains(kconf, requested)["CONFIG_CONTIG_ALLOC"] == (
        "CONTIG_ALLOC=n <- (MEMORY_ISOLATION=y && COMPACTION=n) || CMA=n"
        f" <- [COMPACTION=n set by {FRAG}:2; CMA=n set by {FRAG}:3]")


def test_if_inherited_through_source(kconf: explain.Kconf, tmp_path: Path) -> None:
    requested = resolve(kconf, tmp_path, "# CONFIG_NET is not set", "CONFIG_NET_FEATURE=y", "CONFIG_BUS=y",
                        "CONFIG_NET_DRIVER=y")
    assert chains(kconf, requested) == {
        "CONFIG_NET_FEATURE": f"NET_FEATURE=n <- NET=n set by {FRAG}:1",
        "CONFIG_NET_DRIVER": f"NET_DRIVER=n <- NET=n set by {FRAG}:1",
    }


def test_own_depends_checked_before_the_if(kconf: explain.Kconf, tmp_path: Path) -> None:
    requested = resolve(kconf, tmp_path, "# CONFIG_NET is not set", "CONFIG_NET_DRIVER=y")
    assert chains(kconf, requested) == {"CONFIG_NET_DRIVER": "NET_DRIVER=n <- BUS=n not set by any fragment"}


def test_menu_depends_on(kconf: explain.Kconf, tmp_path: Path) -> None:
    requested = resolve(kconf, tmp_path, "CONFIG_DEBUG_THING=y")
    assert chains(kconf, requested) == {"CONFIG_DEBUG_THING": "DEBUG_THING=n <- EXPERT=n not set by any fragment"}
    requested = resolve(kconf, tmp_path, "# CONFIG_EXPERT is not set", "CONFIG_DEBUG_THING=y")
    assert chains(kconf, requested) == {"CONFIG_DEBUG_THING": f"DEBUG_THING=n <- EXPERT=n set by {FRAG}:1"}


def test_select_forces_y(kconf: explain.Kconf, tmp_path: Path) -> None:
    requested = resolve(kconf, tmp_path, "CONFIG_HOTPLUG=y", "# CONFIG_ISOLATE_PAGES is not set")
    [exp] = explain.explain(kconf, requested)
    assert (exp.requested, exp.resolved) == ("n", "y")
    assert exp.chain == f"ISOLATE_PAGES=y <- selected by HOTPLUG=y set by {FRAG}:1"
    assert exp.root.reason == "select"


def test_select_names_every_selector(kconf: explain.Kconf, tmp_path: Path) -> None:
    requested = resolve(kconf, tmp_path, "CONFIG_HOTPLUG=y", "# CONFIG_ISOLATE_PAGES is not set",
                        base=("CONFIG_BALLOON=y",))
    assert chains(kconf, requested) == {"CONFIG_ISOLATE_PAGES": (
        f"ISOLATE_PAGES=y <- selected by [HOTPLUG=y set by {FRAG}:1; BALLOON=y not set by any fragment]")}


def test_choice_other_member_selected(kconf: explain.Kconf, tmp_path: Path) -> None:
    requested = resolve(kconf, tmp_path, "CONFIG_PREEMPT_VOLUNTARY=y", "CONFIG_PREEMPT_NONE=y")
    assert chains(kconf, requested) == {"CONFIG_PREEMPT_VOLUNTARY": (
        f'PREEMPT_VOLUNTARY=n <- choice "Preemption Model" selected PREEMPT_NONE=y set by {FRAG}:2')}


def test_choice_member_with_unmet_dependency(kconf: explain.Kconf, tmp_path: Path) -> None:
    requested = resolve(kconf, tmp_path, "CONFIG_PREEMPT_FULL=y")
    assert chains(kconf, requested) == {
        "CONFIG_PREEMPT_FULL": "PREEMPT_FULL=n <- HAS_FULL_PREEMPT=n has no prompt, no default"}


def test_choice_default_cannot_be_unset(kconf: explain.Kconf, tmp_path: Path) -> None:
    requested = resolve(kconf, tmp_path, "# CONFIG_PREEMPT_NONE is not set")
    assert chains(kconf, requested) == {
        "CONFIG_PREEMPT_NONE": 'PREEMPT_NONE=y (the default of choice "Preemption Model")'}


def test_undefined_symbol(kconf: explain.Kconf, tmp_path: Path) -> None:
    requested = resolve(kconf, tmp_path, "CONFIG_ARM64_ONLY_THING=y", "# CONFIG_OTHER_ARCH_THING is not set",
                        "CONFIG_ARM64_OR_RISCV_DRIVER=y", "CONFIG_FAST_IO=y")
    assert chains(kconf, requested) == {
        "CONFIG_ARM64_ONLY_THING": "ARM64_ONLY_THING not defined for amd64",
        "CONFIG_ARM64_OR_RISCV_DRIVER": ("ARM64_OR_RISCV_DRIVER=n <- ARM64=n || RISCV=n"
                                         " <- [ARM64 not defined for amd64; RISCV not defined for amd64]"),
        "CONFIG_FAST_IO": "FAST_IO=n <- ARCH_HAS_FAST_IO=n has no prompt, no default",
    }


def test_negated_dependency(kconf: explain.Kconf, tmp_path: Path) -> None:
    requested = resolve(kconf, tmp_path, "CONFIG_SLOW_DEBUG=y", "CONFIG_FAST_PATH=y")
    assert chains(kconf, requested) == {
        "CONFIG_FAST_PATH": f"FAST_PATH=n <- !(SLOW_DEBUG=y) <- SLOW_DEBUG=y set by {FRAG}:1"}


def test_negated_tristate_dependency(kconf: explain.Kconf, tmp_path: Path) -> None:
    # !m is m: requested y, limited to m because BUS is m (not because BUS is y)
    requested = resolve(kconf, tmp_path, "CONFIG_MODULES=y", "CONFIG_BUS=m", "CONFIG_BUS_ALTERNATIVE=y")
    assert chains(kconf, requested) == {
        "CONFIG_BUS_ALTERNATIVE": f"BUS_ALTERNATIVE=m <- !(BUS=m) <- BUS=m set by {FRAG}:2"}


def test_hidden_prompt(kconf: explain.Kconf, tmp_path: Path) -> None:
    requested = resolve(kconf, tmp_path, "CONFIG_TUNABLE=y")
    assert chains(kconf, requested) == {
        "CONFIG_TUNABLE": "TUNABLE=n (no default) <- prompt hidden by EXPERT=n not set by any fragment"}


def test_tristate_limited_to_m(kconf: explain.Kconf, tmp_path: Path) -> None:
    requested = resolve(kconf, tmp_path, "CONFIG_MODULES=y", "CONFIG_BUS=m", "CONFIG_BUS_DRIVER=y")
    assert chains(kconf, requested) == {"CONFIG_BUS_DRIVER": f"BUS_DRIVER=m <- BUS=m set by {FRAG}:2"}


def test_int_out_of_range(kconf: explain.Kconf, tmp_path: Path) -> None:
    requested = resolve(kconf, tmp_path, "CONFIG_NR_CPUS=128")
    [exp] = explain.explain(kconf, requested)
    assert (exp.resolved, exp.chain) == ("8", "NR_CPUS=8 (requested 128 is outside the range [2, 64])")


def test_depth_limit(kconf: explain.Kconf, tmp_path: Path) -> None:
    requested = resolve(kconf, tmp_path, "CONFIG_MEMORY_HOTPLUG=y", "# CONFIG_COMPACTION is not set",
                        "CONFIG_VIRTIO_MEM=y")
    assert chains(kconf, requested, max_depth=0) == {"CONFIG_VIRTIO_MEM": "VIRTIO_MEM=n <- CONTIG_ALLOC=n (...)"}


def test_origins_name_the_base_config(kconf: explain.Kconf, tmp_path: Path) -> None:
    requested = resolve(kconf, tmp_path, "CONFIG_DEBUG_THING=y", base=("# CONFIG_EXPERT is not set",))
    exps = explain.explain(kconf, requested, origins={"CONFIG_EXPERT": ("n", "defconfig")})
    assert [e.chain for e in exps] == ["DEBUG_THING=n <- EXPERT=n set by defconfig"]


def test_from_requests() -> None:
    @dataclass(frozen=True)
    class Request:
        option: str
        value: str
        where: str

    reqs = [Request("CONFIG_A", "y", "f:1"), Request("CONFIG_B", "n", "f:2"), Request("CONFIG_A", "m", "g:1")]
    assert explain.from_requests(reqs) == {"CONFIG_A": ("m", "g:1"), "CONFIG_B": ("n", "f:2")}


def test_arm64_environment(tmp_path: Path) -> None:
    kconf = explain.load(FIXTURE, "arm64")
    assert kconf.syms["X86_64"].str_value == "n"  # "$(SRCARCH)" = "x86" expanded with SRCARCH=arm64
    requested = resolve(kconf, tmp_path, "CONFIG_MEMORY_HOTPLUG=y", "CONFIG_VIRTIO_MEM=y")
    assert chains(kconf, requested) == {"CONFIG_VIRTIO_MEM": (
        "VIRTIO_MEM=n <- X86_64=n || ARM64=n <- ARM64 not defined for arm64")}


def test_kconfig_env() -> None:
    env = explain.kconfig_env(FIXTURE, "arm64")
    assert (env["ARCH"], env["SRCARCH"], env["CC"], env["LD"]) == \
        ("arm64", "arm64", "aarch64-linux-gnu-gcc", "aarch64-linux-gnu-ld")
    assert env["srctree"] == str(FIXTURE)
    with pytest.raises(UnsupportedArch, match="riscv"):
        explain.load(FIXTURE, "riscv")


@pytest.mark.parametrize("lines, option, chain", [
    (("CONFIG_SLOW_DEBUG=y", "CONFIG_NEEDS_NO_SLOW_DEBUG=y"), "CONFIG_NEEDS_NO_SLOW_DEBUG",
     f"NEEDS_NO_SLOW_DEBUG=n <- SLOW_DEBUG(=y) = n <- SLOW_DEBUG=y set by {FRAG}:1"),
    (("CONFIG_MODULES=y", "CONFIG_BUS=m", "CONFIG_NEEDS_BUS_BUILT_IN=y"), "CONFIG_NEEDS_BUS_BUILT_IN",
     f"NEEDS_BUS_BUILT_IN=n <- BUS(=m) = y <- BUS=m set by {FRAG}:2"),
    (("# CONFIG_BUS is not set", "CONFIG_NEEDS_BUS_ON=y"), "CONFIG_NEEDS_BUS_ON",
     f"NEEDS_BUS_ON=n <- BUS(=n) != n <- BUS=n set by {FRAG}:1"),
    # a string comparison ends the chain at the values it compares
    (("CONFIG_NEEDS_A_STRING=y",), "CONFIG_NEEDS_A_STRING", 'NEEDS_A_STRING=n <- ARCH_NAME(="x86") = "riscv"'),
])
def test_comparisons_are_followed(kconf: explain.Kconf, tmp_path: Path, lines: tuple[str, ...], option: str,
                                  chain: str) -> None:
    assert chains(kconf, resolve(kconf, tmp_path, *lines)) == {option: chain}
