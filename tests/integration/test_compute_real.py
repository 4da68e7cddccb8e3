"""The compute test for real: a Debian root image (mmdebstrap) with Postgres, the runner's disks and
shape, pgbench from the host through virtio-mem and CPU scaling, swap under pressure, perf from
tools.img, QMP system_powerdown and a second boot. On the amd64 smoke kernel (what CI builds) and on
Debian's cloud kernel booting the same image, side by side: every check must pass on both (chrony's
PTP check says skipped under TCG). The production kernel's run belongs to the release gate.
Under TCG here: about 3 minutes a kernel, plus about 2 minutes for a cold image."""
from __future__ import annotations

import json
import os

import pytest

from harness.arch import get_arch
from harness.compute import run as compute

pytestmark = pytest.mark.integration
AMD64 = get_arch("amd64")
# The checks that must pass; chrony-ptp must say skipped (TCG) or pass (KVM).
MUST_PASS = [n for n in compute.CHECKS if n != "chrony-ptp"]


@pytest.fixture(scope="module")
def amd64_out(smoke_tools):
    if os.geteuid() != 0:
        pytest.skip("the compute image build needs root (mmdebstrap --mode=root)")
    return smoke_tools["amd64"]


@pytest.mark.parametrize("kernel", compute.KERNELS)
def test_compute_guest(amd64_out, kernel):
    ok = compute.compute_test(AMD64, amd64_out, kernel=kernel)
    data = json.loads((compute.results_dir(amd64_out, kernel) / "results.json").read_text())
    by_name = {c["name"]: c for c in data["checks"]}
    assert ok, {n: c["reason"] for n, c in by_name.items() if c["status"] not in ("pass", "skip")}
    for name in MUST_PASS:
        assert by_name[name]["status"] == "pass", by_name[name]
    chrony = by_name["chrony-ptp"]
    if data["meta"]["accelerator"] == "tcg":
        assert chrony["status"] == "skip" and "needs KVM" in chrony["reason"]
    else:
        assert chrony["status"] == "pass", chrony
    if kernel == "debian-cloud":
        assert "cloud" in data["meta"]["kernelrelease"]
    scale = by_name["scale-under-load"]["evidence"]
    assert [r["target_mib"] for r in scale["rounds"]] == [512, 0, 1024, 256, 0]
    assert scale["pgbench"]["runs"] >= 1 and scale["pgbench"]["failed"] == 0
    assert len(scale["backends"].split(",")) == 4  # every client connected before the first resize
    assert by_name["swap-under-pressure"]["evidence"]["swap_used_kib"] > 0
    perf = by_name["perf-backend"]["evidence"]
    assert perf["kernel_frames"] > 0 and perf["postgres_frames"] > 0
    assert by_name["powerdown"]["evidence"]["seconds_to_poweroff"] <= 30
