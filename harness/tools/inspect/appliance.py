"""The libguestfs appliance inspection runs in: one launch for every image, read-only drives, the
trace (and, after a failed launch, the appliance's console) in a log.

Settings measured by :mod:`harness.benchmarks.tools` (figures in docs/tools-image.md).
"""
from __future__ import annotations

import logging
import os
import platform
from pathlib import Path
from typing import Any

from harness.arch import get_arch
from harness.errors import InfraError
from harness.progress import Timer

LOG = logging.getLogger(__name__)

GuestFS = Any  # a guestfs.GuestFS handle (the bindings have no type information)

APPLIANCE_MEMSIZE = 512  # MiB; the checks read a few files; measured ~0.4 s faster than the default 1280
APPLIANCE_SMP = 1


def _backend_settings() -> list[str]:
    """force_tcg unless the host's KVM can run a stock kernel (the appliance runs host-arch)."""
    if os.environ.get("LIBGUESTFS_BACKEND_SETTINGS"):
        return os.environ["LIBGUESTFS_BACKEND_SETTINGS"].split(":")
    from harness.boot.vm import kvm_unusable_reason

    try:
        host = get_arch(platform.machine())
    except Exception:  # an unknown host arch: let libguestfs decide
        return []
    return ["force_tcg"] if kvm_unusable_reason(host) else []


def open_appliance(drives: list[Path], *, log: Path, memsize: int | None = APPLIANCE_MEMSIZE,
                   smp: int | None = APPLIANCE_SMP, verbose: bool = False,
                   cachedir: Path | None = None) -> GuestFS:
    """Launch one libguestfs appliance with every drive attached read-only; return the handle.

    libguestfs's trace always goes to ``log``. The appliance's console (verbose mode) costs ~0.5 s
    of launch under TCG, so it is captured only when needed: a launch that fails is retried once
    in verbose mode, and if that fails too the InfraError points at a log holding both attempts."""
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("")
    attempts = [verbose] if verbose else [False, True]
    for i, verb in enumerate(attempts):
        try:
            return _launch(drives, log=log, memsize=memsize, smp=smp, verbose=verb, cachedir=cachedir)
        except RuntimeError as exc:
            first_line = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
            if i + 1 == len(attempts):
                raise InfraError(f"libguestfs appliance did not launch: {first_line}", step="inspect-launch",
                                 log=log) from exc
            LOG.warning("appliance launch failed (%s); retrying once in verbose mode, log: %s", first_line, log)
    raise AssertionError("unreachable")


def _launch(drives: list[Path], *, log: Path, memsize: int | None, smp: int | None, verbose: bool,
            cachedir: Path | None) -> GuestFS:
    import guestfs

    fh = open(log, "a", encoding="utf-8", errors="replace")
    g = guestfs.GuestFS(python_return_dict=True)
    g._harness_log = fh  # closed with the handle (close_appliance)

    def on_event(event: int, _handle: int, buf: bytes | str, array: list[int]) -> None:
        text = buf.decode(errors="replace") if isinstance(buf, bytes) else str(buf)
        if event == guestfs.EVENT_TRACE:
            fh.write(f"[trace] {text}\n")
        else:
            fh.write(text if text.endswith("\n") else text + "\n")
        fh.flush()

    g.set_event_callback(on_event, guestfs.EVENT_APPLIANCE | guestfs.EVENT_LIBRARY | guestfs.EVENT_WARNING
                         | guestfs.EVENT_TRACE)
    g.set_trace(1)
    g.set_verbose(1 if verbose else 0)
    g.set_backend(os.environ.get("LIBGUESTFS_BACKEND") or "direct")
    settings = _backend_settings()
    if settings:
        g.set_backend_settings(settings)
    if memsize:
        g.set_memsize(memsize)
    if smp:
        g.set_smp(smp)
    if cachedir:
        g.set_cachedir(str(cachedir))
    g.set_recovery_proc(False)
    fh.write(f"# libguestfs {g.version()} backend={g.get_backend()} settings={settings} "
             f"memsize={g.get_memsize()} smp={g.get_smp()} verbose={verbose} drives={[str(d) for d in drives]}\n")
    try:
        for d in drives:
            g.add_drive_opts(str(d), readonly=True, format="raw")
        with Timer() as t:
            g.launch()
        fh.write(f"# launched in {t.duration:.1f}s\n")
        fh.flush()
    except RuntimeError:
        close_appliance(g)
        raise
    return g


def close_appliance(g: GuestFS) -> None:
    try:
        g.shutdown()
    except RuntimeError:
        pass
    g.close()
    fh = getattr(g, "_harness_log", None)
    if fh:
        fh.close()
