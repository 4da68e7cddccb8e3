"""The compute test on the production amd64 kernel: a real Debian root image (mmdebstrap), Postgres,
the runner's disks, QMP system_powerdown and a second boot (about two minutes under TCG with the image
cached; a cold image build adds about 1.5 minutes)."""
from __future__ import annotations

import json
import os

import pytest

from harness import manifest
from harness.arch import get_arch
from harness.compute import run as compute
from harness.layout import default_out_dir

pytestmark = pytest.mark.integration
AMD64 = get_arch("amd64")


def test_compute_test_on_production_amd64():
    out = default_out_dir("amd64", "production")
    if not manifest.exists(out):
        pytest.skip(f"{out} has no manifest.json: build the production amd64 kernel first")
    if os.geteuid() != 0:
        pytest.skip("the compute image build needs root (mmdebstrap --mode=root)")
    ok = compute.compute_test(AMD64, out)
    data = json.loads((out / "compute" / "results.json").read_text())
    by_name = {c["name"]: c for c in data["checks"]}
    assert ok, {n: c["reason"] for n, c in by_name.items() if c["status"] not in ("pass", "skip")}
    for name in ("image", "postgres-ready", "swap-active", "quota-edquot", "powerdown", "durable-after-powerdown"):
        assert by_name[name]["status"] == "pass", by_name[name]
    assert by_name["powerdown"]["evidence"]["seconds_to_poweroff"] <= 30
