"""The fault-injection check's pieces: the kallsyms range, the fail_page_alloc settings, opt-in selection."""
from __future__ import annotations

import pytest

from harness.arch import get_arch
from harness.boot import run as boottest
from harness.boot.checks import hotplug_faults as hf
from harness.errors import CheckFailed

KALLSYMS = """ffffffff81071a30 T init_memory_mapping
ffffffff81071c10 t free_init_pages
"""


def test_symbol_range_is_the_symbol_up_to_the_next_one():
    assert hf.symbol_range(KALLSYMS, "init_memory_mapping") == (0xffffffff81071a30, 0xffffffff81071c10)


@pytest.mark.parametrize("text", ["", "ffffffff81071a30 T init_memory_mapping\n",
                                  "0000000000000000 T init_memory_mapping\n0000000000000000 t next\n",
                                  "ffffffff81071c10 T init_memory_mapping\nffffffff81071a30 t x\n"])
def test_symbol_range_refuses_what_it_cannot_size(text):
    with pytest.raises(CheckFailed):
        hf.symbol_range(text, "init_memory_mapping")


def test_injection_is_armed_last_and_filtered_by_stack():
    cmds = hf.injection_commands(0x1000, 0x1200, times=7)
    assert cmds[0] == f"echo 0 > {hf.FAIL_DIR}/probability"
    assert cmds[-1] == f"echo 100 > {hf.FAIL_DIR}/probability"
    joined = "\n".join(cmds)
    for expected in ("echo 0x1000 > ", "require-start", "echo 0x1200 > ", "require-end", "echo 7 > ",
                     "echo N > /sys/kernel/debug/fail_page_alloc/ignore-gfp-wait",
                     "echo 0 > " + hf.FAIL_DIR + "/verbose"):
        assert expected in joined


def test_fault_check_runs_only_when_asked_for_and_only_where_the_series_applies():
    amd64, arm64 = get_arch("amd64"), get_arch("arm64")
    assert "hotplug-faults" not in [c.name for c in boottest.select_checks(amd64, None)]
    assert [c.name for c in boottest.select_checks(amd64, ["hotplug-faults"])] == ["hotplug-faults"]
    assert boottest.select_checks(arm64, ["hotplug-faults"]) == []


def test_stress_rounds_and_soak():
    from harness.boot.checks import memory_stress
    from harness.errors import InvalidArgument

    assert memory_stress.rounds() == list(memory_stress.DEFAULT_ROUNDS)
    assert memory_stress.rounds(3) == list(memory_stress.DEFAULT_ROUNDS) * 3
    assert memory_stress.rounds()[-1] == 0  # the device ends empty
    with pytest.raises(InvalidArgument):
        memory_stress.rounds(0)



def test_guest_side_grep_pattern_cannot_trip_the_console_watcher():
    import re

    from harness.boot.checks.memory_stress import DMESG_BAD, guest_pattern
    from harness.boot.console import FAILURE_RE

    pattern = guest_pattern(DMESG_BAD)
    assert not FAILURE_RE.search(pattern)  # the echoed command line is not a "kernel failure"
    for line in ("BUG: kernel NULL pointer dereference", "Out of memory: Killed process 7 (memhog)",
                 "kworker/0:1: page allocation failure: order:0", "WARNING: CPU: 1 PID: 7 at mm/x.c:1"):
        assert re.search(pattern, line), line


def test_stress_dmesg_classification_catches_a_real_oops_and_oom():
    from fixture_paths import FIXTURES

    from harness.boot.checks.memory_stress import DMESG_BAD

    oops = (FIXTURES / "console" / "amd64-smoke612-hotadd-oops.log").read_text(errors="replace")
    assert any(DMESG_BAD.search(line) for line in oops.splitlines())
    assert DMESG_BAD.search("[  12.3] Out of memory: Killed process 77 (memhog)")
    assert DMESG_BAD.search("[  12.3] kworker/u8:1: page allocation failure: order:0, mode:0xcc0")
    assert not DMESG_BAD.search("[  12.3] virtio_mem virtio2: plugged size: 0x10000000")


def test_the_real_hot_add_oops_is_a_console_failure():
    """The unpatched kernel's oops (captured from a real run) is what the console watcher reports."""
    from fixture_paths import FIXTURES

    from harness.boot.console import scan_failures

    text = (FIXTURES / "console" / "amd64-smoke612-hotadd-oops.log").read_text(errors="replace")
    bad = scan_failures(text)
    assert bad and bad[0].startswith("BUG: kernel NULL pointer dereference")
    assert "RIP: 0010:phys_pmd_init" in text and "init_memory_mapping" in text
