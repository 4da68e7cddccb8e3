"""`python -m harness menuconfig arm64` driven like a maintainer would, through a terminal: it opens
on the committed production config, a searched option is switched off and the configuration saved,
and the change comes back as a fragment line and a config diff (dry run: nothing is written). And
on the real Kconfig: a menu enabled and configured inside in the same session is the user's change,
what it selected is not."""
from __future__ import annotations

import os
import sys
import time

import pytest

from harness.kernel import explain, setconfig, source, tree
from harness.kernel.patches import Series
from harness.kernel.setconfig import Change
from harness.layout import CONFIGS, REPO

pytestmark = pytest.mark.integration
pexpect = pytest.importorskip("pexpect")


def _snapshot() -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in sorted(CONFIGS.rglob("*")) if p.is_file()}


def test_menuconfig_opens_on_the_committed_config_and_saves_into_the_fragments(tmp_path):
    before = _snapshot()
    version = source.Pin.load().version
    committed = (CONFIGS / f"linux-config-aarch64-{version}").read_text()
    assert "CONFIG_TUN=y" in committed  # the option the test switches off
    env = dict(os.environ, TERM="xterm", LANG="C.UTF-8")
    child = pexpect.spawn(sys.executable, ["-m", "harness", "menuconfig", "arm64", "--dry-run"], cwd=REPO, env=env,
                          dimensions=(40, 120), encoding="utf-8", codec_errors="replace", timeout=300)
    child.logfile_read = open(tmp_path / "menuconfig.log", "w")  # closed with the child
    try:
        child.expect(f"Linux/arm64 {version} Kernel Configuration")
        child.send("/")
        child.expect("Search Configuration Parameter")
        child.send("TUN\r")
        child.expect(r"Symbol: TUN \[=y\]")  # the committed value, in the search result
        child.send("1")  # jump to the first result
        time.sleep(1)
        child.send("n")
        for _ in range(10):  # back out of the menus until menuconfig asks to save
            child.send("\x1b\x1b")
            if child.expect(["save your new configuration", pexpect.TIMEOUT], timeout=3) == 0:
                break
        else:
            pytest.fail("menuconfig never asked to save (see menuconfig.log)")
        child.send("\r")
        child.expect(pexpect.EOF, timeout=600)
    finally:
        child.close()
    out = (tmp_path / "menuconfig.log").read_text(errors="replace")
    assert child.exitstatus == 0, out[-3000:]
    assert "menuconfig: you changed CONFIG_TUN=n" in out
    assert "configs/fragments/arch/arm64.config: appended: # CONFIG_TUN is not set" in out
    assert " TUN y -> n" in out
    assert "dry run: nothing written" in out
    assert _snapshot() == before


def test_options_set_inside_a_menu_enabled_in_the_session_are_kept(tmp_path):
    pin = source.Pin.load()
    log = tmp_path / "tree.log"
    src_tree = tree.prepare(source.resolve(pin, log=log), Series.load(), log=log)
    committed = CONFIGS / f"linux-config-aarch64-{pin.version}"
    assert "# CONFIG_INPUT_JOYSTICK is not set" in committed.read_text()
    kconf = explain.load(src_tree, "arm64")
    kconf.load_config(str(committed))
    kconf.syms["INPUT_JOYSTICK"].set_value("y")  # the menu
    kconf.syms["JOYSTICK_ANALOG"].set_value("y")  # inside it, settable only once the menu is on
    kconf.write_config(str(tmp_path / "after"))  # as menuconfig saves it
    assert setconfig.user_changes(kconf, committed, tmp_path / "after") == [
        Change("CONFIG_INPUT_JOYSTICK", "y"), Change("CONFIG_JOYSTICK_ANALOG", "y")]
