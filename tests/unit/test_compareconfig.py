"""harness/kernel/compareconfig.py: the Kconfig facts (kconfiglib on a fixture tree), the classification
of every difference and its inherited explanations, the report, and the CLI (exit status, errors, JSON).
Fixtures: fixtures/compare/ (tree/ is the Kconfig tree, configs/ a fake configs/ directory)."""
from __future__ import annotations

import functools
import gzip
import json
import logging
from pathlib import Path

import kconfiglib
import pytest
from fixture_paths import FIXTURES

from harness.arch import get_arch
from harness.cli import main
from harness.errors import InvalidArgument
from harness.kernel import compareconfig as cc
from harness.kernel import contract, kconfig, source

FIX = FIXTURES / "compare"
TREE = FIX / "tree"
CONFIGS = FIX / "configs"
REFERENCE = FIX / "reference.config"
CONTRACT = CONFIGS / "contract.toml"
NOT_DEFINED = "not defined in this kernel tree (the Kconfig of amd64 or arm64)"
NETFILTER_OMISSION = "policy omission 'guest-netfilter': the runner filters on the host"
NIC_OMISSION = "hardware omission 'physical-nics': a NeonVM guest has only virtio-net"

# option -> (class, direction) of every difference between the fixtures' amd64 config and the reference
EXPECTED_AMD64 = {
    "CONFIG_ARM64_SVE": (cc.HARDWARE, cc.REF_ENABLES),  # defined only under arch/arm64/
    "CONFIG_BLK_DEV_LOOP": (cc.UNEXPLAINED, cc.OURS_ENABLES),  # ours enables it, nothing says why
    "CONFIG_BTRFS_FS": (cc.OMITTED, cc.REF_ENABLES),  # policy omission BTRFS_*
    "CONFIG_BTRFS_FS_POSIX_ACL": (cc.OMITTED, cc.REF_ENABLES),
    "CONFIG_CC_VERSION_TEXT": (cc.HARDWARE, cc.VALUE),  # internal (no prompt)
    "CONFIG_CFG80211": (cc.REQUESTED, cc.REF_ENABLES),  # in `if WIRELESS`, which a fragment line switches off
    "CONFIG_E1000E": (cc.REQUESTED, cc.REF_ENABLES),  # '# CONFIG_E1000E is not set' in a fragment
    "CONFIG_EXPERT": (cc.UNEXPLAINED, cc.REF_ENABLES),
    "CONFIG_EXPERT_ONLY": (cc.UNEXPLAINED, cc.REF_ENABLES),  # depends on EXPERT, which nothing explains
    "CONFIG_FAKE_IN_HELP": (cc.HARDWARE, cc.REF_ENABLES),  # only in a help text: not a symbol
    "CONFIG_FS_MBCACHE": (cc.HARDWARE, cc.REF_ENABLES),  # internal
    "CONFIG_FS_NOT_EXT4": (cc.UNEXPLAINED, cc.REF_ENABLES),  # depends on !EXT4_FS: on in ours, no inheritance
    "CONFIG_IXGBE": (cc.HARDWARE, cc.REF_ENABLES),  # hardware omission
    "CONFIG_LOCALVERSION": (cc.REQUESTED, cc.VALUE),  # "" in the reference means unset
    "CONFIG_MBCACHE_STATS": (cc.UNEXPLAINED, cc.REF_ENABLES),  # an internal parent explains nothing
    "CONFIG_NETFILTER": (cc.OMITTED, cc.REF_ENABLES),
    "CONFIG_NET_ACT_CT": (cc.OMITTED, cc.REF_ENABLES),  # via NF_CONNTRACK -> NETFILTER
    "CONFIG_NET_ACT_DEFAULT_CT": (cc.OMITTED, cc.REF_ENABLES),  # a choice that depends on NET_ACT_CT
    "CONFIG_NET_DIAG_EQ": (cc.OMITTED, cc.REF_ENABLES),  # depends on NETFILTER=y
    "CONFIG_NET_DIAG_EXPERT": (cc.UNEXPLAINED, cc.REF_ENABLES),  # NETFILTER || EXPERT: EXPERT unexplained
    "CONFIG_NET_DIAG_OR": (cc.OMITTED, cc.REF_ENABLES),  # NETFILTER || NET_VENDOR_SOLARFLARE: both omitted
    "CONFIG_NET_FILTER_PROMPT": (cc.OMITTED, cc.REF_ENABLES),  # bool "..." if NETFILTER
    "CONFIG_NET_VENDOR_SOLARFLARE": (cc.HARDWARE, cc.REF_ENABLES),
    "CONFIG_NF_CONNTRACK": (cc.OMITTED, cc.REF_ENABLES),  # via NETFILTER (menu depends on, if block)
    "CONFIG_NF_CONNTRACK_ZONES": (cc.OMITTED, cc.REF_ENABLES),
    "CONFIG_NFS_FS": (cc.Y_VS_M, cc.BUILTIN_MODULE),
    "CONFIG_OLD_REMOVED_DRIVER": (cc.HARDWARE, cc.REF_ENABLES),  # not in the tree
    "CONFIG_ORPHAN_DRIVER": (cc.HARDWARE, cc.REF_ENABLES),  # in a Kconfig nobody sources
    "CONFIG_PTP_HELPER": (cc.UNEXPLAINED, cc.REF_ENABLES),  # two definitions, one under EXPERT
    "CONFIG_SFC": (cc.HARDWARE, cc.REF_ENABLES),  # in `if NET_VENDOR_SOLARFLARE`, a hardware omission
    "CONFIG_SFC_MTD": (cc.HARDWARE, cc.REF_ENABLES),
    "CONFIG_SFC_NF_OFFLOAD": (cc.HARDWARE, cc.REF_ENABLES),  # two definitions, both explained
    "CONFIG_TUN": (cc.UNEXPLAINED, cc.REF_ENABLES),
    "CONFIG_VIRTIO_BLK": (cc.REQUESTED, cc.OURS_ENABLES),
    "CONFIG_VIRTIO_NET": (cc.Y_VS_M, cc.BUILTIN_MODULE),
    "CONFIG_WIREGUARD": (cc.OMITTED, cc.REF_ENABLES),
    "CONFIG_WIRELESS": (cc.REQUESTED, cc.REF_ENABLES),
}
COUNTS = {cc.REQUESTED: 5, cc.OMITTED: 11, cc.HARDWARE: 11, cc.UNEXPLAINED: 8, cc.Y_VS_M: 2}
FAILING = ["CONFIG_EXPERT", "CONFIG_EXPERT_ONLY", "CONFIG_FS_NOT_EXT4", "CONFIG_MBCACHE_STATS",
           "CONFIG_NET_DIAG_EXPERT", "CONFIG_PTP_HELPER", "CONFIG_TUN"]
SUMMARY = ("summary: amd64: 37 option(s) differ: 5 requested, 11 omitted on purpose, 11 hardware/internal, "
           "8 unexplained (7 enabled by the reference); 2 built-in vs module")
NO_EXPERT = '\n[[omission]]\nname = "no-expert"\nreason = "defaults only"\noptions = ["EXPERT"]\n'


@functools.cache
def _tree(arch: str) -> cc.KconfigTree:
    """The fixture tree for one arch, parsed once (compare() loads its own values each time)."""
    return cc.load_tree(TREE, arch)


def _explained_reference(tmp_path: Path) -> Path:
    """The reference without the options nothing explains."""
    ref = tmp_path / "ref.config"
    ref.write_text("".join(line for line in REFERENCE.read_text().splitlines(keepends=True)
                           if line.split("=")[0] not in FAILING))
    return ref


@pytest.fixture
def fake_configs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """configs/ is fixtures/compare/configs; the cache is private."""
    monkeypatch.setenv("NEONVM_KERNEL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(kconfig, "CONFIGS", CONFIGS)
    monkeypatch.setattr(kconfig, "FRAGMENTS", CONFIGS / "fragments")
    monkeypatch.setattr(source, "CONFIGS", CONFIGS)
    return CONFIGS


def _ours(arch: str = "amd64") -> dict[str, str]:
    return kconfig.parse_config_text(kconfig.committed_config_path(get_arch(arch), "6.12.117").read_text())


def _contract_with(extra: str = "") -> contract.Contract:
    return contract.parse(CONTRACT.read_text() + extra, CONTRACT)


def _compare(arch: str = "amd64", contr: contract.Contract | None = None, ours_extra: dict[str, str] | None = None,
             ref_extra: dict[str, str] | None = None) -> cc.Comparison:
    a = get_arch(arch)
    ours = _ours(arch) | (ours_extra or {})
    ref = kconfig.parse_config_text(REFERENCE.read_text()) | (ref_extra or {})
    requests = kconfig.get_variant("production").requests(a)
    return cc.compare(ours, ref, requests, contr or _contract_with(), _tree(arch), a.name)


def _by_option(result: cc.Comparison) -> dict[str, cc.Difference]:
    return {d.option: d for d in result.differences}


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def _args(*extra: str, arch: str = "amd64", reference: Path | str = REFERENCE) -> list[str]:
    return ["compare-config", arch, str(reference), "--tree", str(TREE), "--contract", str(CONTRACT), *extra]


def _node(tree: cc.KconfigTree, name: str, index: int = 0) -> kconfiglib.MenuNode:
    sym = tree.symbol(name)
    assert sym is not None, name
    return sym.nodes[index]


def _parts(tree: cc.KconfigTree, name: str, index: int = 0) -> list[tuple[str, str]]:
    return [(how, kconfiglib.expr_str(expr)) for how, expr in tree.parts(_node(tree, name, index))]


# -- the Kconfig tree -----------------------------------------------------------------------------------
def test_menus_follow_the_menu_tree() -> None:
    """`menu` blocks and `menuconfig` symbols enclose what follows them (through `source`, `if` and
    `depends on`); choices and plain symbols with dependants are not menus."""
    x86 = _tree("amd64")
    menus = {name: x86.menu(sym) for name in ("KVM_GUEST", "TUN", "NET_CORE", "NFS_FS", "LOCALVERSION",
                                              "EXPERT_ONLY", "NF_CONNTRACK_ZONES", "CFG80211", "SFC_MTD",
                                              "CC_OPTIMIZE_FOR_SIZE", "NET", "X86_64")
             if (sym := x86.symbol(name)) is not None}
    assert menus == {
        "KVM_GUEST": ("Processor type and features",),
        "TUN": ("Device Drivers", "Network device support"),
        "NET_CORE": ("Device Drivers", "Network device support"),
        "NFS_FS": ("File systems", "Network File Systems"),
        "LOCALVERSION": ("General setup",),
        "EXPERT_ONLY": ("General setup", "Configure standard kernel features (expert users)"),
        "NF_CONNTRACK_ZONES": ("Networking support", "Network packet filtering framework (Netfilter)",
                               "Core Netfilter Configuration"),
        "CFG80211": ("Networking support", "Wireless"),
        "SFC_MTD": ("Device Drivers", "Network device support"),  # SFC and the solarflare bool: not menus
        "CC_OPTIMIZE_FOR_SIZE": ("General setup",),
        "NET": (),
        "X86_64": (),
    }


def test_prompts_definitions_and_help_texts() -> None:
    x86 = _tree("amd64")
    assert x86.size == 50
    expert, x86_64, sfc_nf = x86.symbol("CONFIG_EXPERT"), x86.symbol("X86_64"), x86.symbol("SFC_NF_OFFLOAD")
    assert expert is not None and x86_64 is not None and sfc_nf is not None
    assert x86.prompted(expert) and not x86.prompted(x86_64)
    assert x86.locations(expert) == ("init/Kconfig:23",)
    # defined twice: the prompted definition places it in the menus
    assert x86.locations(sfc_nf) == ("drivers/net/Kconfig:48", "net/Kconfig:17")
    assert x86.main_node(sfc_nf) is sfc_nf.nodes[0] and x86.prompted(sfc_nf)
    # a help text is not Kconfig, even when it looks like it
    assert x86.symbol("FAKE_IN_HELP") is None and x86.elsewhere("FAKE_IN_HELP") == ()
    # the selectors of an internal symbol
    mbcache, iomap = x86.symbol("FS_MBCACHE"), x86.symbol("FS_IOMAP")
    assert mbcache is not None and iomap is not None
    assert (x86.selectors(mbcache), x86.selectors(iomap)) == (["BTRFS_FS"], ["FS_HELPER_INTERNAL"])


def test_each_arch_has_its_own_symbols_and_looks_up_the_others() -> None:
    x86, arm = _tree("amd64"), _tree("arm64")
    assert x86.symbol("ARM64_SVE") is None and x86.elsewhere("CONFIG_ARM64_SVE") == ("arch/arm64/Kconfig:10",)
    assert x86.symbol("ORPHAN_DRIVER") is None and x86.elsewhere("ORPHAN_DRIVER") == ()  # nobody sources it
    sve = arm.symbol("ARM64_SVE")
    assert sve is not None and arm.menu(sve) == ("Kernel Features",)
    assert arm.symbol("KVM_GUEST") is None and arm.elsewhere("KVM_GUEST") == ("arch/x86/Kconfig:12",)
    b64 = arm.symbol("64BIT")
    assert b64 is not None and arm.locations(b64) == ("arch/arm64/Kconfig:5",) and not arm.prompted(b64)
    # referenced on arm64 (X86_ONLY_BLK depends on it), defined only by x86
    assert "X86_64" in arm.kconf.syms and arm.symbol("X86_64") is None


def test_parts_keep_the_own_depends_on_apart_from_the_enclosing_blocks(fake_configs: Path) -> None:
    x86 = _tree("amd64")
    assert _parts(x86, "NF_CONNTRACK") == [(cc.MENU_DEPENDS, "NETFILTER"), (cc.IF_BLOCK, "NETFILTER"),
                                           (cc.IF_BLOCK, "NET")]  # the if block around `source`
    assert _parts(x86, "SFC_MTD") == [(cc.DEPENDS_ON, "SFC && !(SFC = y && MTD = m)"),
                                      (cc.IF_BLOCK, "NET_VENDOR_SOLARFLARE"), (cc.IF_BLOCK, "NETDEVICES")]
    assert _parts(x86, "NET_ACT_DEFAULT_CT") == [(cc.CHOICE_DEPENDS, "NET_ACT_CT"), (cc.IF_BLOCK, "NET")]
    assert _parts(x86, "VIRTIO_NET") == [(cc.DEPENDS_ON, "BLK_DEV"), (cc.IF_BLOCK, "NETDEVICES")]
    assert _parts(x86, "SFC_NF_OFFLOAD", 1) == [(cc.DEPENDS_ON, "SFC"), (cc.IF_BLOCK, "NETFILTER"),
                                                (cc.IF_BLOCK, "NET")]
    assert _parts(x86, "EXPERT") == []
    # together they are kconfiglib's own dependencies of each definition
    x86.load_values(_ours())
    for sym in x86.kconf.unique_defined_syms:
        for node in sym.nodes:
            values = [kconfiglib.expr_value(e) for _, e in x86.parts(node)]
            if sym.choice is None:  # a choice's members depend on the choice itself
                assert min(values, default=2) == kconfiglib.expr_value(node.dep), sym.name


def test_load_values_reports_a_config_kconfig_resolves_otherwise(fake_configs: Path) -> None:
    assert _tree("amd64").load_values(_ours("amd64")) == []  # the fixture configs are resolved configs
    assert _tree("arm64").load_values(_ours("arm64")) == []
    stale = _ours() | {"CONFIG_NF_CONNTRACK": "y", "CONFIG_CC_VERSION_TEXT": '"clang"'}
    assert _tree("amd64").load_values(stale) == ["CONFIG_CC_VERSION_TEXT", "CONFIG_NF_CONNTRACK"]


def test_a_stale_config_is_logged(fake_configs: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger=cc.LOG.name):
        _compare(ours_extra={"CONFIG_NF_CONNTRACK": "m"})
    assert "1 option(s) of our config are not what its Kconfig resolves (CONFIG_NF_CONNTRACK)" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=cc.LOG.name):
        _compare()
    assert caplog.text == ""


def test_load_tree_errors(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="is not a kernel tree"):
        cc.load_tree(tmp_path, "amd64")
    (tmp_path / "Kconfig").write_text('config A\n\tbool "a"\nendif\n')
    with pytest.raises(InvalidArgument, match=f"cannot parse the Kconfig of {tmp_path} for amd64"):
        cc.load_tree(tmp_path, "amd64")


# -- classification ---------------------------------------------------------------------------------
def test_normalise() -> None:
    assert [cc.normalise(v) for v in (None, "n", '""', '"-neonvm"', "y", " m ", "0x10", '"a \\"q\\""')] == [
        "n", "n", "n", "-neonvm", "y", "m", "0x10", 'a "q"']


def test_every_difference_is_classified(fake_configs: Path) -> None:
    result = _compare()
    assert {d.option: (d.cls, d.direction) for d in result.differences} == EXPECTED_AMD64
    assert result.counts() == COUNTS
    assert [d.option for d in result.failing()] == FAILING


def test_requested_names_the_fragment_line_and_the_capability(fake_configs: Path) -> None:
    d = _by_option(_compare())
    assert d["CONFIG_VIRTIO_BLK"].request == "configs/fragments/base.config:4"
    assert d["CONFIG_VIRTIO_BLK"].capability == "root-disk"
    assert d["CONFIG_VIRTIO_BLK"].needed_by == "neonvm-runner (the root and runtime disks are virtio-blk)"
    assert d["CONFIG_VIRTIO_BLK"].reason == ("configs/fragments/base.config:4: CONFIG_VIRTIO_BLK=y; capability "
                                             "'root-disk', needed by neonvm-runner (the root and runtime disks "
                                             "are virtio-blk)")
    # an option a fragment switches off is requested too, ahead of the hardware omission E1000*
    assert (d["CONFIG_E1000E"].request, d["CONFIG_E1000E"].omission) == ("configs/fragments/base.config:8", None)
    assert d["CONFIG_LOCALVERSION"].ours == "-neonvm" and d["CONFIG_LOCALVERSION"].reference == "n"


def test_omissions_and_hardware_reasons(fake_configs: Path) -> None:
    d = _by_option(_compare())
    assert (d["CONFIG_BTRFS_FS_POSIX_ACL"].omission, d["CONFIG_BTRFS_FS_POSIX_ACL"].omission_kind) == (
        "no-btrfs", "policy")
    assert d["CONFIG_WIREGUARD"].reason == ("policy omission 'no-vpn': the VM's network is set up by the "
                                            "runner, no tunnels in the guest")
    assert d["CONFIG_IXGBE"].reason == NIC_OMISSION
    assert d["CONFIG_FS_MBCACHE"].reason == ("internal symbol (no prompt: derived, never chosen) at fs/Kconfig:11; "
                                             "selected by BTRFS_FS")
    assert d["CONFIG_CC_VERSION_TEXT"].reason == "internal symbol (no prompt: derived, never chosen) at init/Kconfig:2"
    assert d["CONFIG_ARM64_SVE"].reason == "not in x86's Kconfig: defined only in arch/arm64/Kconfig:10"
    assert (d["CONFIG_ARM64_SVE"].menu, d["CONFIG_ARM64_SVE"].kconfig) == ((cc.OTHER_ARCH,), ("arch/arm64/Kconfig:10",))
    for opt in ("CONFIG_OLD_REMOVED_DRIVER", "CONFIG_ORPHAN_DRIVER", "CONFIG_FAKE_IN_HELP"):
        assert (d[opt].reason, d[opt].menu, d[opt].kconfig) == (NOT_DEFINED, (cc.NOT_IN_TREE,), ()), opt


def test_an_omission_does_not_explain_an_option_ours_enables(fake_configs: Path) -> None:
    contr = _contract_with('\n[[omission]]\nname = "no-loop"\nreason = "r"\noptions = ["BLK_DEV_LOOP"]\n')
    assert _by_option(_compare(contr=contr))["CONFIG_BLK_DEV_LOOP"].cls == cc.UNEXPLAINED


def test_arm64_uses_its_own_requests_arch_and_capabilities(fake_configs: Path) -> None:
    d = _by_option(_compare("arm64"))
    assert "CONFIG_ARM64_SVE" not in d  # y in both: requested by arch/arm64.config
    assert (d["CONFIG_KVM_GUEST"].cls, d["CONFIG_KVM_GUEST"].capability) == (cc.HARDWARE, None)
    assert d["CONFIG_KVM_GUEST"].reason == "not in arm64's Kconfig: defined only in arch/x86/Kconfig:12"
    assert d["CONFIG_X86_64"].cls == cc.HARDWARE
    assert d["CONFIG_VIRTIO_BLK"].capability == "root-disk"
    assert (d["CONFIG_ARM64"].cls, d["CONFIG_ARM64"].direction, d["CONFIG_ARM64"].group) == (
        cc.HARDWARE, cc.OURS_ENABLES, cc.TOP_LEVEL)


# -- inherited explanations ------------------------------------------------------------------------
def test_an_option_inherits_the_omission_of_its_enclosing_block(fake_configs: Path) -> None:
    d = _by_option(_compare())
    sfc = d["CONFIG_SFC"]
    assert (sfc.cls, sfc.omission, sfc.omission_kind) == (cc.HARDWARE, "physical-nics", "hardware")
    assert sfc.via == (("CONFIG_NET_VENDOR_SOLARFLARE", cc.IF_BLOCK),)
    assert sfc.reason == f"via NET_VENDOR_SOLARFLARE: {NIC_OMISSION}"
    # through the if block around `source "net/netfilter/Kconfig"` and the menu's own depends on
    nf = d["CONFIG_NF_CONNTRACK"]
    assert (nf.cls, nf.omission, nf.via) == (cc.OMITTED, "guest-netfilter", (("CONFIG_NETFILTER", cc.MENU_DEPENDS),))
    assert nf.menu == ("Networking support", "Network packet filtering framework (Netfilter)",
                       "Core Netfilter Configuration")
    # two links: NET_ACT_CT depends on NF_CONNTRACK, which NETFILTER encloses
    act = d["CONFIG_NET_ACT_CT"]
    assert act.via == (("CONFIG_NF_CONNTRACK", cc.DEPENDS_ON), ("CONFIG_NETFILTER", cc.MENU_DEPENDS))
    assert act.reason == f"via NF_CONNTRACK -> NETFILTER: {NETFILTER_OMISSION}"
    line = next(x for x in cc.render(_compare()).splitlines() if "CONFIG_NET_ACT_CT " in x)
    assert "omitted on purpose" in line and "via NF_CONNTRACK -> NETFILTER: policy omission" in line


def test_the_shortest_chain_wins(fake_configs: Path) -> None:
    """SFC_MTD depends on SFC (explained through NET_VENDOR_SOLARFLARE) and sits in that if block itself;
    NF_CONNTRACK_ZONES depends on NF_CONNTRACK and sits in the menu that depends on NETFILTER."""
    d = _by_option(_compare())
    assert d["CONFIG_SFC_MTD"].via == (("CONFIG_NET_VENDOR_SOLARFLARE", cc.IF_BLOCK),)
    assert d["CONFIG_NF_CONNTRACK_ZONES"].via == (("CONFIG_NETFILTER", cc.MENU_DEPENDS),)


def test_the_false_part_of_an_expression_is_evaluated(fake_configs: Path) -> None:
    d = _by_option(_compare())
    # NETFILTER=y is false because NETFILTER is off
    assert (d["CONFIG_NET_DIAG_EQ"].cls, d["CONFIG_NET_DIAG_EQ"].via) == (
        cc.OMITTED, (("CONFIG_NETFILTER", cc.DEPENDS_ON),))
    # NF_CONNTRACK && (NET_CLS_ACT || NETFILTER_ADVANCED): the || holds (NET_CLS_ACT=y), NF_CONNTRACK does not
    assert d["CONFIG_NET_ACT_CT"].via[0] == ("CONFIG_NF_CONNTRACK", cc.DEPENDS_ON)
    # a prompt hidden by its `if`, the dependencies met: nobody could switch it on
    assert (d["CONFIG_NET_FILTER_PROMPT"].cls, d["CONFIG_NET_FILTER_PROMPT"].via) == (
        cc.OMITTED, (("CONFIG_NETFILTER", cc.PROMPT_IF),))
    # a choice inherits through its own depends on
    assert d["CONFIG_NET_ACT_DEFAULT_CT"].via == (("CONFIG_NET_ACT_CT", cc.CHOICE_DEPENDS),
                                                  ("CONFIG_NF_CONNTRACK", cc.DEPENDS_ON),
                                                  ("CONFIG_NETFILTER", cc.MENU_DEPENDS))


def test_a_disjunction_needs_every_disjunct_explained(fake_configs: Path) -> None:
    d = _by_option(_compare())
    both = d["CONFIG_NET_DIAG_OR"]  # NETFILTER || NET_VENDOR_SOLARFLARE
    assert (both.cls, both.omission, both.via) == (
        cc.OMITTED, "guest-netfilter", (("CONFIG_NETFILTER", cc.DEPENDS_ON),))
    assert both.reason == f"via NETFILTER: {NETFILTER_OMISSION}; and via NET_VENDOR_SOLARFLARE: {NIC_OMISSION}"
    # one omission behind both disjuncts: its reason once
    contr = contract.parse('[[omission]]\nname = "both"\nreason = "r"\noptions = ["NETFILTER", "NET_VENDOR_*"]\n',
                           CONTRACT)
    same = _by_option(_compare(contr=contr))["CONFIG_NET_DIAG_OR"]
    assert same.reason == "via NETFILTER: policy omission 'both': r; and via NET_VENDOR_SOLARFLARE, the same"
    one = d["CONFIG_NET_DIAG_EXPERT"]  # NETFILTER || EXPERT
    assert (one.cls, one.via, one.omission) == (cc.UNEXPLAINED, (), None)
    one = _by_option(_compare(contr=_contract_with(NO_EXPERT)))["CONFIG_NET_DIAG_EXPERT"]
    assert (one.cls, one.via) == (cc.OMITTED, (("CONFIG_NETFILTER", cc.DEPENDS_ON),))
    assert one.reason == f"via NETFILTER: {NETFILTER_OMISSION}; and via EXPERT: policy omission 'no-expert': " \
                         "defaults only"


def test_no_inheritance_from_an_internal_parent_or_an_unexplained_parent(fake_configs: Path) -> None:
    d = _by_option(_compare())
    for opt in ("CONFIG_MBCACHE_STATS", "CONFIG_EXPERT_ONLY"):
        assert (d[opt].cls, d[opt].via, d[opt].omission) == (cc.UNEXPLAINED, (), None), opt
    # once its parent is explained, the child is too
    d = _by_option(_compare(contr=_contract_with(NO_EXPERT)))
    assert (d["CONFIG_EXPERT_ONLY"].cls, d["CONFIG_EXPERT_ONLY"].via) == (
        cc.OMITTED, (("CONFIG_EXPERT", cc.DEPENDS_ON),))


def test_a_parent_on_in_ours_explains_nothing(fake_configs: Path) -> None:
    """TUN sits in `if NETDEVICES`, FS_NOT_EXT4 depends on !EXT4_FS; omissions matching NETDEVICES,
    NET and EXT4_FS (all on in ours) must not explain them."""
    d = _by_option(_compare(contr=_contract_with('\n[[omission]]\nname = "wrong"\nkind = "hardware"\nreason = "r"\n'
                                                 'options = ["NETDEVICES", "NET", "EXT4_FS"]\n')))
    assert (d["CONFIG_TUN"].cls, d["CONFIG_TUN"].via) == (cc.UNEXPLAINED, ())
    assert (d["CONFIG_FS_NOT_EXT4"].cls, d["CONFIG_FS_NOT_EXT4"].via) == (cc.UNEXPLAINED, ())
    assert "CONFIG_NETDEVICES" not in d
    # X86_ONLY_BLK=y is false because X86_ONLY_BLK is m: on, so its omission explains nothing
    contr = _contract_with('\n[[omission]]\nname = "blk"\nreason = "r"\noptions = ["X86_ONLY_BLK"]\n')
    tree = _tree("amd64")
    tree.load_values(_ours())
    builtin = tree.symbol("X86_ONLY_BLK_BUILTIN")
    assert builtin is not None and builtin.tri_value == 0
    assert cc.Inheritance(tree, contr, "amd64").parent_of("CONFIG_X86_ONLY_BLK_BUILTIN") is None
    tree.load_values(_ours() | {"CONFIG_X86_ONLY_BLK": "n"})
    off = cc.Inheritance(tree, contr, "amd64").parent_of("CONFIG_X86_ONLY_BLK_BUILTIN")
    assert off is not None and (off.chain, off.cls) == ((("CONFIG_X86_ONLY_BLK", cc.DEPENDS_ON),), cc.OMITTED)


def test_inheritance_explains_only_options_off_in_ours(fake_configs: Path) -> None:
    contr, tree = _contract_with(), _tree("amd64")
    tree.load_values({"CONFIG_NET": "y", "CONFIG_NETFILTER": "n"})
    inheritance = cc.Inheritance(tree, contr, "amd64")
    ours_on = cc.classify("CONFIG_NF_CONNTRACK_ZONES", "y", "n", {}, contr, tree, "amd64", inheritance)
    assert (ours_on.cls, ours_on.direction, ours_on.via) == (cc.UNEXPLAINED, cc.OURS_ENABLES, ())
    value = cc.classify("CONFIG_NF_CONNTRACK_ZONES", "n", "16", {}, contr, tree, "amd64", inheritance)
    assert (value.cls, value.direction, value.via) == (cc.OMITTED, cc.VALUE, (("CONFIG_NETFILTER", cc.MENU_DEPENDS),))
    d = _by_option(_compare(ours_extra={"CONFIG_NETFILTER": "y"}))
    # NETFILTER on in ours: the omission no longer explains what it encloses
    assert "CONFIG_NETFILTER" not in d  # y in both
    assert (d["CONFIG_NF_CONNTRACK"].cls, d["CONFIG_NF_CONNTRACK"].via) == (cc.UNEXPLAINED, ())
    assert (d["CONFIG_NET_FILTER_PROMPT"].cls, d["CONFIG_NET_FILTER_PROMPT"].via) == (cc.UNEXPLAINED, ())


def test_a_parent_this_arch_does_not_have_explains_as_hardware(fake_configs: Path) -> None:
    d = _by_option(_compare("arm64"))
    x = d["CONFIG_X86_ONLY_BLK"]
    assert (x.cls, x.via, x.omission) == (cc.HARDWARE, (("CONFIG_X86_64", cc.DEPENDS_ON),), None)
    assert x.reason == "via X86_64: not in arm64's Kconfig: defined only in arch/x86/Kconfig:6"
    assert "CONFIG_X86_ONLY_BLK" not in _by_option(_compare())  # m in both on amd64


def test_a_parent_a_fragment_line_switches_off_makes_the_option_requested(fake_configs: Path) -> None:
    d = _by_option(_compare())
    cfg = d["CONFIG_CFG80211"]
    assert (cfg.cls, cfg.request, cfg.via, cfg.omission) == (
        cc.REQUESTED, "configs/fragments/base.config:11", (("CONFIG_WIRELESS", cc.IF_BLOCK),), None)
    assert cfg.reason == "via WIRELESS: configs/fragments/base.config:11: CONFIG_WIRELESS=n"
    # an omission matching the parent names the reason behind the fragment line: it wins
    d = _by_option(_compare(contr=_contract_with(
        '\n[[omission]]\nname = "no-radio"\nkind = "hardware"\nreason = "no radio"\noptions = ["WIRELESS"]\n')))
    assert (d["CONFIG_WIRELESS"].cls, d["CONFIG_CFG80211"].cls, d["CONFIG_CFG80211"].omission) == (
        cc.REQUESTED, cc.HARDWARE, "no-radio")


def test_a_symbol_defined_twice_needs_both_definitions_explained(fake_configs: Path) -> None:
    d = _by_option(_compare())
    # in `if NET_VENDOR_SOLARFLARE` (hardware) and in `if NETFILTER` (policy): the prompted definition reports
    offload = d["CONFIG_SFC_NF_OFFLOAD"]
    assert (offload.cls, offload.via) == (cc.HARDWARE, (("CONFIG_NET_VENDOR_SOLARFLARE", cc.IF_BLOCK),))
    assert offload.kconfig == ("drivers/net/Kconfig:48", "net/Kconfig:17")
    # depends on NET_VENDOR_SOLARFLARE here, on EXPERT there: unexplained until EXPERT is
    assert (d["CONFIG_PTP_HELPER"].cls, d["CONFIG_PTP_HELPER"].via) == (cc.UNEXPLAINED, ())
    ptp = _by_option(_compare(contr=_contract_with(NO_EXPERT)))["CONFIG_PTP_HELPER"]
    assert (ptp.cls, ptp.via) == (cc.HARDWARE, (("CONFIG_NET_VENDOR_SOLARFLARE", cc.DEPENDS_ON),))


def test_members_of_one_choice_picked_differently_are_a_value_not_a_failure(fake_configs: Path) -> None:
    tree = _tree("amd64")
    size, perf, expert = (tree.symbol(n) for n in ("CC_OPTIMIZE_FOR_SIZE", "CC_OPTIMIZE_FOR_PERFORMANCE", "EXPERT"))
    assert size is not None and perf is not None and expert is not None
    assert size.choice is not None and size.choice is perf.choice and expert.choice is None
    picked = {"CONFIG_CC_OPTIMIZE_FOR_PERFORMANCE": "n", "CONFIG_CC_OPTIMIZE_FOR_SIZE": "y"}
    result = _compare(ref_extra=picked)
    d = _by_option(result)
    sz, pf = d["CONFIG_CC_OPTIMIZE_FOR_SIZE"], d["CONFIG_CC_OPTIMIZE_FOR_PERFORMANCE"]
    assert (sz.direction, sz.cls, pf.direction, pf.cls) == (cc.CHOICE, cc.UNEXPLAINED, cc.CHOICE, cc.UNEXPLAINED)
    assert sz.reason == ("another member of a choice: ours picks CONFIG_CC_OPTIMIZE_FOR_PERFORMANCE, the "
                         "reference CONFIG_CC_OPTIMIZE_FOR_SIZE (a value; no fragment line, no omission)")
    assert "CONFIG_CC_OPTIMIZE_FOR_SIZE" not in [x.option for x in result.failing()]
    # a choice ours does not pick at all stays a failure
    unpicked = _by_option(_compare(ours_extra={"CONFIG_CC_OPTIMIZE_FOR_PERFORMANCE": "n"}))
    arm = unpicked["CONFIG_CC_OPTIMIZE_FOR_PERFORMANCE"]
    assert (arm.direction, arm.cls) == (cc.REF_ENABLES, cc.UNEXPLAINED)
    # an omission explains the member the reference picks, never the one ours picks
    contr = _contract_with('\n[[omission]]\nname = "no-os"\nreason = "r"\noptions = ["CC_OPTIMIZE_FOR_*"]\n')
    d = _by_option(_compare(contr=contr, ref_extra=picked))
    assert (d["CONFIG_CC_OPTIMIZE_FOR_SIZE"].cls, d["CONFIG_CC_OPTIMIZE_FOR_PERFORMANCE"].cls) == (
        cc.OMITTED, cc.UNEXPLAINED)


# -- the report -----------------------------------------------------------------------------------------
def test_render_groups_by_menu(fake_configs: Path) -> None:
    text = cc.render(_compare())
    assert "== Device Drivers > Network device support (1 requested, 1 omitted on purpose, " \
           "5 hardware/internal, 2 unexplained)" in text.splitlines()
    groups: dict[str, list[str]] = {}
    current = ""
    for line in text.splitlines():
        if line.startswith("== "):
            current = line[3:].rsplit(" (", 1)[0]
        elif line.startswith("  "):
            words = [w for w in line.split() if w.startswith("CONFIG_")]
            if words:
                groups.setdefault(current, []).append(words[0])
    assert groups == {
        "Device Drivers > Block devices": ["CONFIG_BLK_DEV_LOOP", "CONFIG_VIRTIO_BLK"],
        "Device Drivers > Network device support": [  # unexplained first
            "CONFIG_PTP_HELPER", "CONFIG_TUN", "CONFIG_WIREGUARD", "CONFIG_E1000E", "CONFIG_IXGBE",
            "CONFIG_NET_VENDOR_SOLARFLARE", "CONFIG_SFC", "CONFIG_SFC_MTD", "CONFIG_SFC_NF_OFFLOAD"],
        "File systems": ["CONFIG_FS_NOT_EXT4", "CONFIG_MBCACHE_STATS", "CONFIG_BTRFS_FS",
                         "CONFIG_BTRFS_FS_POSIX_ACL", "CONFIG_FS_MBCACHE"],
        "General setup": ["CONFIG_EXPERT", "CONFIG_LOCALVERSION", "CONFIG_CC_VERSION_TEXT"],
        "General setup > Configure standard kernel features (expert users)": ["CONFIG_EXPERT_ONLY"],
        "Networking support": ["CONFIG_NET_DIAG_EXPERT", "CONFIG_NETFILTER", "CONFIG_NET_ACT_CT",
                               "CONFIG_NET_ACT_DEFAULT_CT", "CONFIG_NET_DIAG_EQ", "CONFIG_NET_DIAG_OR",
                               "CONFIG_NET_FILTER_PROMPT", "CONFIG_WIRELESS"],
        "Networking support > Network packet filtering framework (Netfilter) > Core Netfilter Configuration": [
            "CONFIG_NF_CONNTRACK", "CONFIG_NF_CONNTRACK_ZONES"],
        "Networking support > Wireless": ["CONFIG_CFG80211"],
        "(not in this arch's Kconfig)": ["CONFIG_ARM64_SVE"],
        "(not in this tree)": ["CONFIG_FAKE_IN_HELP", "CONFIG_OLD_REMOVED_DRIVER", "CONFIG_ORPHAN_DRIVER"],
        "built-in vs module": ["CONFIG_NFS_FS", "CONFIG_VIRTIO_NET"],
    }
    assert text.splitlines()[-1] == SUMMARY


def test_render_depth_and_prefixes(fake_configs: Path) -> None:
    result = _compare()
    text = cc.render(result, depth=1)
    assert "== Device Drivers (2 requested, 1 omitted on purpose, 5 hardware/internal, 3 unexplained)" in text
    expert_menu = "General setup > Configure standard kernel features (expert users)"
    assert result.unexplained_prefixes() == [("EXPERT_", 2, [("General setup", 1), (expert_menu, 1)]),
                                             ("FS_", 1, [("File systems", 1)]),
                                             ("MBCACHE_", 1, [("File systems", 1)]),
                                             ("NET_", 1, [("Networking support", 1)]),
                                             ("PTP_", 1, [("Device Drivers > Network device support", 1)]),
                                             ("TUN", 1, [("Device Drivers > Network device support", 1)])]


def test_prefixes_take_the_first_word() -> None:
    diffs = tuple(cc.Difference(o, "n", "m", cc.REF_ENABLES, cc.UNEXPLAINED, "", ("Networking",))
                  for o in ("CONFIG_NF_CONNTRACK", "CONFIG_NF_NAT", "CONFIG_NF", "CONFIG_USB"))
    assert cc.Comparison("amd64", diffs).unexplained_prefixes() == [
        ("NF_", 3, [("Networking", 3)]), ("USB", 1, [("Networking", 1)])]


# -- the CLI --------------------------------------------------------------------------------------------
def test_cli_fails_on_unexplained_options_the_reference_enables(fake_configs: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = _cli(capsys, *_args())
    assert rc == 1, err
    assert out.splitlines()[0] == f"compare-config amd64: ours {CONFIGS}/linux-config-amd64-6.12.117 vs " \
                                  f"reference {REFERENCE}"
    assert out.splitlines()[1] == f"(tree {TREE}, contract {CONTRACT}; 50 Kconfig symbols)"
    assert SUMMARY in out
    assert out.splitlines()[-1].startswith("FAIL: 7 option(s) the reference enables are unexplained")


def test_cli_allow_unexplained_exits_0(fake_configs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = _cli(capsys, *_args("--allow-unexplained"))
    assert (rc, err) == (0, "")
    assert out.splitlines()[-1].startswith("allowed: 7 option(s)")


def test_cli_exits_0_when_everything_is_explained(fake_configs: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    ref = _explained_reference(tmp_path)
    rc, out, err = _cli(capsys, *_args(reference=ref))
    assert rc == 0, out + err
    assert "unexplained (0 enabled by the reference)" in out and "FAIL" not in out


def test_cli_ours_only_unexplained_does_not_fail(fake_configs: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    ref = _explained_reference(tmp_path)
    rc, out, _ = _cli(capsys, *_args(reference=ref))
    assert rc == 0 and "unexplained         CONFIG_BLK_DEV_LOOP" in out


def test_cli_writes_json(fake_configs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "out" / "compare.json"
    rc, _, err = _cli(capsys, *_args("--json", str(path)))
    assert rc == 1, err
    data = json.loads(path.read_text())
    assert data["arch"] == "amd64" and data["reference"] == str(REFERENCE) and data["tree"] == str(TREE)
    assert data["counts"] == {"requested": 5, "omitted": 11, "hardware": 11, "unexplained": 8, "y-vs-m": 2}
    assert data["failing"] == FAILING
    by = {d["option"]: d for d in data["differences"]}
    assert {o: (d["class"], d["direction"]) for o, d in by.items()} == EXPECTED_AMD64
    assert by["CONFIG_VIRTIO_BLK"] == {
        "option": "CONFIG_VIRTIO_BLK", "ours": "y", "reference": "n", "direction": "ours-enables",
        "class": "requested", "menu": ["Device Drivers", "Block devices"],
        "kconfig": ["drivers/block/Kconfig:11"], "request": "configs/fragments/base.config:4",
        "capability": "root-disk", "needed_by": "neonvm-runner (the root and runtime disks are virtio-blk)",
        "omission": None, "omission_kind": None, "via": [],
        "reason": by["CONFIG_VIRTIO_BLK"]["reason"]}
    assert data["unexplained_prefixes"][0] == {"prefix": "EXPERT_", "count": 2, "menus": {
        "General setup": 1, "General setup > Configure standard kernel features (expert users)": 1}}
    # an inherited explanation keeps its chain, root last
    act = by["CONFIG_NET_ACT_CT"]
    assert (act["class"], act["omission"], act["omission_kind"]) == ("omitted", "guest-netfilter", "policy")
    assert act["via"] == [{"option": "CONFIG_NF_CONNTRACK", "relation": "depends on"},
                          {"option": "CONFIG_NETFILTER", "relation": "menu depends on"}]
    assert act["reason"] == f"via NF_CONNTRACK -> NETFILTER: {NETFILTER_OMISSION}"
    cfg = by["CONFIG_CFG80211"]
    assert (cfg["class"], cfg["request"], cfg["via"]) == (
        "requested", "configs/fragments/base.config:11", [{"option": "CONFIG_WIRELESS", "relation": "if"}])


def test_cli_reads_a_gzipped_reference(fake_configs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ref = tmp_path / "config.gz"
    ref.write_bytes(gzip.compress(REFERENCE.read_bytes()))
    rc, out, _ = _cli(capsys, *_args("--allow-unexplained", reference=ref))
    assert rc == 0 and "summary: amd64: 37 option(s) differ" in out


def test_cli_arm64(fake_configs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = _cli(capsys, *_args("--allow-unexplained", arch="arm64"))
    assert rc == 0
    assert "hardware/internal   CONFIG_KVM_GUEST" in out and "== (not in this arch's Kconfig)" in out
    assert "summary: arm64: 39 option(s) differ" in out


def _error(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.parametrize("case", ["bad arch", "missing", "directory", "not a config", "empty", "no contract",
                                  "not a tree", "bad kconfig"])
def test_cli_errors_are_one_line_exit_2(fake_configs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                        case: str) -> None:
    junk = tmp_path / "junk.txt"
    junk.write_text("# just a comment\nCONFIGURE=yes\n")
    empty = tmp_path / "empty"
    empty.write_text("")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "Kconfig").write_text('source "missing/Kconfig"\n')
    argv, expected = {
        "bad arch": (_args(arch="sparc"), "error: [compare-config] unknown architecture 'sparc' (known: amd64, arm64)"),
        "missing": (_args(reference=tmp_path / "nope"),
                    f"error: [compare-config] reference config {tmp_path / 'nope'} does not exist"),
        "directory": (_args(reference=tmp_path), f"error: [compare-config] cannot read reference config {tmp_path}: "
                                                 "Is a directory"),
        "not a config": (_args(reference=junk),
                         f"error: [compare-config] reference config {junk} is not a kernel config (no CONFIG_ lines)"),
        "empty": (_args(reference=empty),
                  f"error: [compare-config] reference config {empty} is not a kernel config (no CONFIG_ lines)"),
        "no contract": (["compare-config", "amd64", str(REFERENCE), "--tree", str(TREE), "--contract",
                         str(tmp_path / "c.toml")],
                        f"error: [compare-config] contract {tmp_path / 'c.toml'} does not exist "
                        "(give one with --contract PATH)"),
        "not a tree": (["compare-config", "amd64", str(REFERENCE), "--tree", str(tmp_path), "--contract",
                        str(CONTRACT)], f"error: [compare-config] {tmp_path} is not a kernel tree (no top-level "
                                        "Kconfig)"),
        "bad kconfig": (["compare-config", "amd64", str(REFERENCE), "--tree", str(bad), "--contract",
                         str(CONTRACT)], f"error: [compare-config] cannot parse the Kconfig of {bad} for amd64: "),
    }[case]
    rc, out, err = _cli(capsys, *argv)
    assert rc == 2
    assert _error(err).startswith(expected) if case == "bad kconfig" else _error(err) == expected
    assert out == ""


def test_cli_unreadable_reference(fake_configs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    ref = tmp_path / "ref.config"
    ref.write_text("CONFIG_A=y\n")
    real = Path.read_bytes

    def denied(self: Path) -> bytes:
        if self == ref:
            raise PermissionError(13, "Permission denied", str(self))
        return real(self)

    monkeypatch.setattr(Path, "read_bytes", denied)
    rc, _, err = _cli(capsys, *_args(reference=ref))
    assert (rc, _error(err)) == (2, f"error: [compare-config] cannot read reference config {ref}: Permission denied")


def test_run_without_tree_uses_the_pinned_source(fake_configs: Path, monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """No --tree: the tree comes from configs._tree(pin, log), as update-configs gets it."""
    from harness.kernel import configs

    seen = []

    def fake_tree(pin: source.Pin, log: Path) -> tuple[None, Path]:
        seen.append((pin.version, log.name))
        return None, TREE

    monkeypatch.setattr(configs, "_tree", fake_tree)
    rc = cc.run("x86_64", REFERENCE, allow_unexplained=True, contract_path=CONTRACT)
    assert rc == 0 and seen == [("6.12.117", "compare-config.log")]
    assert f"(tree {TREE}, contract {CONTRACT}; 50 Kconfig symbols)" in capsys.readouterr().out


def test_nothing_is_cached_on_disk(fake_configs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _cli(capsys, *_args("--allow-unexplained"))
    assert not (tmp_path / "cache").exists()


# -- the repository's own contract, as compare-config reads it ---------------------------------------
# An omission never explains a capability option (the capability wins in compare-config anyway). The one
# overlap below predates compare-config's inherited explanations: "nested virtualisation" names KVM_*,
# which also matches the guest-side KVM_GUEST; narrow that pattern and drop it from here.
def test_no_omission_covers_a_capability_option() -> None:
    real = contract.load()
    overlaps = {(om.name, opt) for cap in real.capabilities for opt in cap.options
                for om in real.omissions if set(cap.arches) & set(om.arches) and om.matches(opt)}
    assert not overlaps, overlaps
