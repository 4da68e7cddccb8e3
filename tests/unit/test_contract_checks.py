"""Contract boot checks with a fake console: probe parsing, blame messages naming capability and
component, the running-config comparison."""
from __future__ import annotations

import re

from harness.arch import get_arch
from harness.boot.checks import Check, Guest, run_check
from harness.boot.checks import contract as cc

AMD64, ARM64 = get_arch("amd64"), get_arch("arm64")

PROBE_OK = """PROBE madvise ok MADV_DONTNEED and MADV_FREE
PROBE inotify ok IN_CREATE event seen
PROBE io_uring ok io_uring_setup(4)
PROBE bpf ok BPF_MAP_CREATE array map
PROBE memfd ok memfd_create + seal
PROBE membarrier ok QUERY lists PRIVATE_EXPEDITED
PROBE rseq ok registered by glibc (32 bytes)
PROBE fhandle ok name_to_handle_at(/tmp)
PROBE quotactl ok quotactl(Q_SYNC)
PROBE coredump ok /tmp/cores/core.77 (376832 bytes)
PROBE accounting ok /proc/self/schedstat
PROBE syncookies ok /proc/sys/net/ipv4/tcp_syncookies
PROBE printk-time ok /sys/module/printk/parameters/time
PROBE-DONE 0"""


class FakeConsole:
    """Answers commands by the first regex that matches; records what was run."""

    scale = 1.0

    def __init__(self, answers: list[tuple[str, tuple[int, str]]]):
        self.answers = answers
        self.ran: list[str] = []

    def run(self, command, *, step, timeout=10, check=True, watch=True):
        self.ran.append(command)
        for pattern, answer in self.answers:
            if re.search(pattern, command):
                return answer
        raise AssertionError(f"unexpected command {command!r}")


class FakeVm:
    def __init__(self, console):
        self.console = console
        self.qmp = None


def guest(answers, arch=AMD64) -> Guest:
    return Guest(vm=FakeVm(FakeConsole(answers)), arch=arch, accel_name="tcg", release="6.12.117")


def test_parse_probe():
    items = cc.parse_probe(PROBE_OK.replace("PROBE madvise ok MADV_DONTNEED and MADV_FREE",
                                            "PROBE madvise fail ENOSYS madvise(MADV_DONTNEED)"))
    assert not items["madvise"].ok and items["madvise"].errno == "ENOSYS"
    assert items["madvise"].detail == "madvise(MADV_DONTNEED)"
    assert items["coredump"].ok and "core.77" in items["coredump"].detail
    assert len(items) == 13
    assert cc.parse_probe("PROBE x fail - no errno here")["x"].errno == "-"


def test_probe_passes_when_every_item_is_ok():
    r = run_check(Check("contract-probe", cc.probe), guest([(r"contract-probe all", (0, PROBE_OK))]))
    assert r.status == "pass", r.reason
    assert r.evidence["probe"]["io_uring"].startswith("ok")


def test_missing_madvise_names_the_capability_and_who_needs_it():
    out = PROBE_OK.replace("PROBE madvise ok MADV_DONTNEED and MADV_FREE",
                           "PROBE madvise fail ENOSYS madvise(MADV_DONTNEED)")
    r = run_check(Check("contract-probe", cc.probe), guest([(r"contract-probe all", (1, out))]))
    assert r.status == "fail"
    assert "madvise(MADV_DONTNEED) failed (ENOSYS)" in r.reason
    assert "capability 'madvise' (ADVISE_SYSCALLS=y)" in r.reason
    assert "allocators return memory with madvise()" in r.reason


def test_several_failures_are_counted():
    out = PROBE_OK.replace("PROBE quotactl ok quotactl(Q_SYNC)", "PROBE quotactl fail ENOSYS quotactl(Q_SYNC)")
    out = out.replace("PROBE io_uring ok io_uring_setup(4)", "PROBE io_uring fail ENOSYS io_uring_setup")
    r = run_check(Check("contract-probe", cc.probe), guest([(r"contract-probe all", (1, out))]))
    assert r.status == "fail" and "(+1 more: quotactl)" in r.reason and "Postgres 18" in r.reason


def test_a_probe_that_reports_nothing_fails():
    r = run_check(Check("contract-probe", cc.probe), guest([(r"contract-probe all", (127, "sh: not found"))]))
    assert r.status == "fail" and "did not report" in r.reason


def test_running_config_must_carry_the_contract():
    contract = cc._contract()
    lines = [f"CONFIG_{o}={v}" if v != "n" else f"# CONFIG_{o} is not set"
             for c in contract.for_arch("arm64") for o, v in c.options.items()]
    set_lines = [ln for ln in lines if not ln.startswith("#")]  # what grep -f returns
    ok = f"{len(set_lines)}\n" + "\n".join(set_lines)
    answers = [(r"\[ -r /proc/config.gz \]", (0, "")), (r"zcat /proc/config.gz", (0, ok))]
    assert run_check(Check("contract-config", cc.running_config), guest(answers, ARM64)).status == "pass"
    kept = [ln for ln in set_lines if ln != "CONFIG_RTC_DRV_EFI=y"]
    bad = f"{len(kept)}\n" + "\n".join(kept)
    answers = [(r"\[ -r /proc/config.gz \]", (0, "")), (r"zcat /proc/config.gz", (0, bad))]
    r = run_check(Check("contract-config", cc.running_config), guest(answers, ARM64))
    assert r.status == "fail" and "CONFIG_RTC_DRV_EFI=n" in r.reason and "wall clock (arm64)" in r.reason


def test_ip_pnp_needs_the_address_and_the_hostname():
    good = [(r"ip -4 addr", (0, "2: eth0: <UP>\n    inet 10.0.2.15/24 scope global eth0")),
            (r"/proc/net/pnp", (0, "#MANUAL")), (r"uname -n", (0, "neonvm-guest"))]
    assert run_check(Check("contract-ip-pnp", cc.ip_pnp), guest(good)).status == "pass"
    bad = [(r"ip -4 addr", (0, "2: eth0: <BROADCAST> mtu 1500")), (r"/proc/net/pnp", (1, "")),
           (r"uname -n", (0, "(none)"))]
    r = run_check(Check("contract-ip-pnp", cc.ip_pnp), guest(bad))
    assert r.status == "fail" and "kernel IP autoconfig" in r.reason and "eth1:off" in r.reason


def test_rtc_in_1970_fails():
    answers = [(r"\[ -e /dev/rtc0 \]", (0, "")), (r"rtc0/name", (0, "rtc-efi")), (r"date -u \+%Y$", (0, "1970")),
               (r"date -u '", (0, "1970-01-01T00:00:09Z"))]
    r = run_check(Check("contract-rtc", cc.rtc), guest(answers, ARM64))
    assert r.status == "fail" and "1970-01-01" in r.reason and "EFI runtime services" in r.reason


def test_every_probe_item_is_a_proof_of_some_capability():
    contract = cc._contract()
    proofs = {p for c in contract.capabilities for p in c.proven_by}
    assert {f"probe:{i}" for i in cc.PROBE_ITEMS} - {"probe:prjquota"} <= proofs


def test_running_config_output_lost_on_the_console_is_an_error_not_a_verdict():
    answers = [(r"\[ -r /proc/config.gz \]", (0, "")), (r"zcat /proc/config.gz", (0, "70\nCONFIG_QUOTA=y"))]
    r = run_check(Check("contract-config", cc.running_config), guest(answers, ARM64))
    assert r.status == "error" and "lost output" in r.reason


def test_initramfs_patterns_cover_every_contract_option():
    from harness.boot.initramfs import contract_patterns

    patterns = contract_patterns().splitlines()
    assert "^CONFIG_ADVISE_SYSCALLS=" in patterns and "^CONFIG_RTC_DRV_EFI=" in patterns
    assert len(patterns) == len({o for c in cc._contract().capabilities for o in c.options})
