"""The capability contract: its loader, and its agreement with the fragments and committed configs."""
from __future__ import annotations

import pytest

from harness.arch import ARCHES
from harness.errors import InvalidArgument
from harness.kernel import contract, kconfig, source


def exact(om: contract.Omission) -> tuple[str, ...]:
    """The omission's patterns that name one symbol (no wildcard): these must be off in production."""
    return tuple(p for p in om.patterns if not any(c in p for c in "*?["))


SAMPLE = """
[[capability]]
name = "madvise"
needed_by = "allocators"
options = { CONFIG_ADVISE_SYSCALLS = "y" }
proven_by = ["probe:madvise"]

[[capability]]
name = "clock"
arches = ["arm64"]
needed_by = "logs"
options = { RTC_DRV_EFI = "y" }

[[omission]]
name = "netfilter"
reason = "host side"
options = ["NETFILTER", "NF_*"]

[[omission]]
name = "sound"
kind = "hardware"
reason = "headless"
options = ["SND_*"]
arches = ["amd64"]
"""


def test_parse_sample():
    c = contract.parse(SAMPLE)
    assert [x.name for x in c.for_arch("amd64")] == ["madvise"]
    assert [x.name for x in c.for_arch("arm64")] == ["madvise", "clock"]
    assert c.capability("madvise").options == {"ADVISE_SYSCALLS": "y"}
    assert c.requirement("CONFIG_ADVISE_SYSCALLS", "amd64").name == "madvise"
    assert c.requirement("CONFIG_RTC_DRV_EFI", "amd64") is None
    assert c.proven_by("probe:madvise", "arm64")[0].name == "madvise"
    assert c.omission("CONFIG_NF_CONNTRACK", "arm64").name == "netfilter"
    assert c.omission("CONFIG_NETFILTER_XTABLES", "amd64") is None  # "NETFILTER" is exact, not a prefix
    assert c.omission("CONFIG_SND_HDA", "amd64").kind == "hardware"
    assert c.omission("CONFIG_SND_HDA", "arm64") is None
    assert exact(c.omissions[0]) == ("NETFILTER",)
    assert "ADVISE_SYSCALLS=y" in c.capability("madvise").describe()


@pytest.mark.parametrize("text, message", [
    ("[[capability]]\nname='x'\noptions={A='y'}\n", "missing 'needed_by'"),
    ("[[capability]]\nname='x'\nneeded_by='y'\noptions={}\n", "non-empty table"),
    ("[[capability]]\nname='x'\nneeded_by='y'\noptions={A='y'}\narches=['mips']\n", "unknown arch"),
    ("[[capability]]\nname='x'\nneeded_by='y'\noptions={A='y'}\n[[capability]]\nname='x'\nneeded_by='z'\n"
     "options={B='y'}\n", "duplicate name"),
    ("[[omission]]\nname='x'\nreason='r'\noptions='NF_*'\n", "list of strings"),
    ("[[omission]]\nname='x'\nreason='r'\noptions=['A']\nkind='weird'\n", "kind must be"),
    ("[[omission\n", "contract.toml"),
])
def test_parse_rejects_bad_contracts(text, message):
    with pytest.raises(InvalidArgument) as err:
        contract.parse(text)
    assert message in str(err.value)


def test_unknown_capability_is_an_error():
    with pytest.raises(InvalidArgument):
        contract.parse(SAMPLE).capability("nope")


# -- the repository's own contract ------------------------------------------------------------------
CONTRACT = contract.load()
VARIANTS = kconfig.load_variants()
CONTRACT_VARIANTS = [name for name, v in VARIANTS.items() if v.contract]


def test_the_contract_covers_the_table_of_the_issue():
    names = {c.name for c in CONTRACT.capabilities}
    for wanted in ("disk quotas", "inotify", "madvise", "kernel IP autoconfig", "graceful shutdown",
                   "wall clock (arm64)", "core dumps", "io_uring", "perf that works", "server speed", "isolation"):
        assert wanted in names
    assert {"production", "smoke"} <= set(CONTRACT_VARIANTS)


@pytest.mark.parametrize("variant", CONTRACT_VARIANTS)
@pytest.mark.parametrize("arch", sorted(ARCHES))
def test_contract_variants_request_every_capability(variant, arch):
    requests = VARIANTS[variant].requests(ARCHES[arch])
    missing = [f"{cap.name}: CONFIG_{opt}={val}" for cap in CONTRACT.for_arch(arch)
               for opt, val in cap.options.items()
               if kconfig._norm(requests.get(f"CONFIG_{opt}", kconfig.Request("", "n", None, 0)).value) != val]
    assert not missing, missing


@pytest.mark.parametrize("arch", sorted(ARCHES))
def test_committed_production_config_keeps_the_contract_and_the_omissions(arch):
    a = ARCHES[arch]
    resolved = kconfig.parse_config_text(kconfig.committed_config_path(a, source.Pin.load().version).read_text())
    for cap in CONTRACT.for_arch(arch):
        for opt, val in cap.options.items():
            assert resolved.get(f"CONFIG_{opt}", "n") == val, (cap.name, opt)
    for om in CONTRACT.omissions:
        if arch in om.arches:
            for sym in exact(om):
                assert resolved.get(f"CONFIG_{sym}", "n") == "n", (om.name, sym)


def test_negative_variant_drops_what_its_tests_need_dropped():
    req = VARIANTS["negative"].requests(ARCHES["amd64"])
    assert req["CONFIG_ADVISE_SYSCALLS"].value == "n" and req["CONFIG_FAIL_PAGE_ALLOC"].value == "y"
    assert req["CONFIG_VIRTIO_MEM"].value == "y"  # the fault-injection check plugs memory with it
    assert not VARIANTS["negative"].contract and not VARIANTS["negative"].patches
    assert VARIANTS["smoke"].patches and VARIANTS["smoke"].contract
    assert VARIANTS["smoke"].requests(ARCHES["amd64"])["CONFIG_FAIL_PAGE_ALLOC"].value == "y"
    assert "CONFIG_FAIL_PAGE_ALLOC" not in VARIANTS["smoke"].requests(ARCHES["arm64"])


def test_every_proof_names_a_known_check_or_probe_item():
    from harness.boot.checks.contract import PROBE_ITEMS
    from harness.boot.run import CHECK_NAMES

    for cap in CONTRACT.capabilities:
        for proof in cap.proven_by:
            if proof.startswith("probe:"):
                assert proof.removeprefix("probe:") in PROBE_ITEMS, (cap.name, proof)
            else:
                assert proof in CHECK_NAMES, (cap.name, proof)


@pytest.mark.parametrize("arch", sorted(ARCHES))
def test_no_omission_claims_an_option_the_production_config_has(arch):
    """An omission says what is left out: none of its patterns may match an option that is on."""
    a = ARCHES[arch]
    resolved = kconfig.parse_config_text(kconfig.committed_config_path(a, source.Pin.load().version).read_text())
    on = [opt for opt, val in resolved.items() if val not in ("n", "")]
    wrong = [(om.name, opt) for om in CONTRACT.omissions if arch in om.arches for opt in on if om.matches(opt)]
    assert not wrong, wrong
