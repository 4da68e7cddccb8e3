"""The noxfile's sessions, loaded as nox loads them and called with a stand-in session: per-arch
sessions come from the arch table, usage errors name the arches, sessions hand their work to the CLI."""
from __future__ import annotations

import functools
import runpy
from typing import Any

import nox.registry
import pytest

from harness.arch import ARCHES
from harness.layout import REPO


class Stop(Exception):
    pass


class FakeSession:
    def __init__(self, name: str, posargs: list[str]) -> None:
        self.name, self.posargs = name, posargs
        self.runs: list[tuple[str, ...]] = []

    def run(self, *args: str, **kw: Any) -> None:
        self.runs.append(args)

    def error(self, message: str) -> None:
        raise Stop(message)


@functools.cache
def sessions() -> dict[str, Any]:
    """The noxfile's sessions as nox registers them (loaded once: nox refuses a second registration)."""
    runpy.run_path(str(REPO / "noxfile.py"))
    return dict(nox.registry.get())


def call(name: str, *posargs: str) -> FakeSession:
    session = FakeSession(name, list(posargs))
    sessions()[name].func(session)
    return session


def test_every_arch_has_its_build_and_tools_sessions():
    names = sessions()
    for arch in ARCHES:
        assert call(f"build-{arch}", "-j2").runs == [("python", "-m", "harness", "build", "--arch", arch, "--tools",
                                                      "-j2")]
        assert call(f"tools-{arch}").runs == [("python", "-m", "harness", "tools", "--arch", arch)]
        assert ARCHES[arch].image_target in (names[f"build-{arch}"].func.__doc__ or "")


@pytest.mark.parametrize("name, posargs", [("compare-config", ["amd64"]), ("set-config", ["riscv", "CONFIG_X=y"]),
                                           ("boot-test", []), ("inspect-tools", [])])
def test_usage_errors_name_the_arches(name, posargs):
    with pytest.raises(Stop, match=r"usage: nox -s " + name + r" -- \{" + "\\|".join(ARCHES)):
        call(name, *posargs)


def test_arch_sessions_pass_their_arguments_through():
    assert call("compare-config", "arm64", "/boot/config").runs == [
        ("python", "-m", "harness", "compare-config", "arm64", "/boot/config")]
    assert call("set-config", "all", "CONFIG_IO_URING=n", "--dry-run").runs == [
        ("python", "-m", "harness", "set-config", "all", "CONFIG_IO_URING=n", "--dry-run")]
