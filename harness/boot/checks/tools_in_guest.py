"""tools.img inside the guest: attached read-only on virtio-blk as the runner does, found by its
label, mounted, and its perf run there. The label and perf's path are the image's contract
(:mod:`harness.tools.spec`), the same the builder lays out and the inspection checks."""
from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

from harness.boot.checks import Check, Guest, Skip
from harness.check import Evidence
from harness.errors import CheckFailed
from harness.tools import spec

LOG = logging.getLogger(__name__)

MOUNTPOINT = "/mnt/tools"


@contextlib.contextmanager
def mounted_tools(guest: Guest, ev: Evidence, *, step: str) -> Iterator[str]:
    """Mount tools.img by its label read-only; yield the path of its perf; unmount afterwards."""
    dev = guest.sh(f"findfs LABEL={spec.FS_LABEL}", step=step).strip()
    ev["device"] = dev
    guest.sh(f"mkdir -p {MOUNTPOINT} && mount -o ro -t ext4 {dev} {MOUNTPOINT}", step=step, timeout=20)
    try:
        ev["mount"] = guest.sh(f"grep ' {MOUNTPOINT} ' /proc/mounts", step=step).strip()
        perf = f"{MOUNTPOINT}/{spec.PERF}"
        found = guest.sh(f"[ -x {perf} ] && echo {perf} ; true", step=step).split()
        if not found:
            raise CheckFailed(f"no executable perf at {spec.PERF} in the {spec.FS_LABEL} filesystem", step=step)
        ev["perf"] = perf
        yield perf
    finally:
        guest.console.run(f"umount {MOUNTPOINT}", step=step, check=False)


def tools(guest: Guest, ev: Evidence) -> None:
    step = "tools"
    img = guest.tools_img
    ev["image"] = str(img) if img else "(none)"
    if img is None or not img.is_file():
        if guest.tools_required:
            raise CheckFailed(f"{img or 'tools.img'} does not exist and tools are required", step=step)
        raise Skip(f"{img or 'tools.img'} does not exist (tools optional; --require-tools makes this a failure)")
    with mounted_tools(guest, ev, step=step) as perf:
        ev["perf_version"] = guest.sh(f"{perf} --version", step=step, timeout=30).strip()
        rc, out = guest.console.run(f"{perf} stat -- /bin/busybox true 2>&1", step=step, timeout=60, check=False)
        ev["perf_stat"] = out.strip().splitlines()[-12:]
        if rc != 0 or "Performance counter stats" not in out:
            raise CheckFailed(f"`perf stat` failed in the guest (exit {rc})", step=step)


CHECKS = [
    Check("tools", tools, doc="tools.img on read-only virtio-blk, mounted by label, perf --version and perf stat"),
]
