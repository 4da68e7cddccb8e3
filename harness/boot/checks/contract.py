"""The capability contract, proven in the booted guest (configs/contract.toml, harness/kernel/contract.py).

Each check proves some capabilities; when it fails, its message names the capability and the
NeonVM component that needs it (the contract's ``needed_by``), not only the symptom:

* ``contract-probe``: the static probe in the test initramfs asks the kernel for madvise,
  inotify, io_uring, bpf, memfd, membarrier, rseq, file handles, quotactl and a core dump;
* ``contract-config``: the running kernel's own /proc/config.gz has every option of the contract;
* ``contract-prjquota``: a disk made like the runner's Postgres data disk (ext4, project quota,
  mount_opts=prjquota) mounts read-write, and a write past a project quota fails with EDQUOT;
* ``contract-ip-pnp``: ``ip=`` on the command line configured the virtio-net interface;
* ``contract-rtc``: /dev/rtc0 exists and the clock was set from it (not 1970);
* ``contract-log-port``: the runner's virtio-serial port tech.neon.log.0 carries a line to the host;
* ``contract-perf``: perf from tools.img records call graphs and counts a tracepoint;
* ``contract-powerdown`` (always last: it ends the VM): QMP system_powerdown -> the power button
  reaches acpid -> the guest powers itself off within 30 s.
"""
from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass

from harness.boot.checks import Check, Guest, Skip
from harness.boot.checks.tools_in_guest import mounted_tools
from harness.boot.console import GuestTimeout
from harness.boot.initramfs import CONTRACT_PATTERNS, POWER_MARKER
from harness.boot.vm import GUEST_HOSTNAME, GUEST_IP, GUEST_NETDEV, LOG_PORT_NAME
from harness.check import Evidence
from harness.errors import CheckFailed, InfraError
from harness.kernel import contract as contract_mod
from harness.progress import Timer

LOG = logging.getLogger(__name__)

PROBE = "/bin/contract-probe"
CORE_DIR = "/tmp/cores"
DATA_LABEL = "pgdata"
DATA_MOUNT = "/mnt/pgdata"
POWERDOWN_SECONDS = 30
# Items the probe reports (harness/boot/probe/contract-probe.c); the contract's "probe:<item>" proofs.
PROBE_ITEMS = ("madvise", "inotify", "io_uring", "bpf", "memfd", "membarrier", "rseq", "fhandle", "quotactl",
               "coredump", "accounting", "syncookies", "printk-time", "prjquota")
_PROBE_LINE = re.compile(r"^PROBE (\S+) (ok|fail)(?: (\S+))?(?: (.*))?$")
EARLIEST_YEAR = 2024  # a clock before this was not set from the RTC


@dataclass(frozen=True)
class ProbeItem:
    item: str
    ok: bool
    errno: str  # "" when ok; "-" when the failure has no errno
    detail: str


def parse_probe(output: str) -> dict[str, ProbeItem]:
    """The probe's ``PROBE <item> ok|fail ...`` lines, by item."""
    items: dict[str, ProbeItem] = {}
    for line in output.splitlines():
        m = _PROBE_LINE.match(line.strip())
        if not m:
            continue
        item, status = m[1], m[2]
        if status == "ok":
            detail = " ".join(x for x in (m[3], m[4]) if x)
            items[item] = ProbeItem(item, True, "", detail)
        else:
            items[item] = ProbeItem(item, False, m[3] or "-", m[4] or "")
    return items


def _contract() -> contract_mod.Contract:
    return contract_mod.load()


def blame(proof: str, arch: str, symptom: str) -> str:
    """The failure message for a proof: the symptom, then each capability it proves and who needs it."""
    caps = _contract().proven_by(proof, arch)
    if not caps:
        return symptom
    return symptom + " -- " + "; ".join(c.describe() for c in caps)


def _fail(guest: Guest, proof: str, symptom: str, step: str) -> CheckFailed:
    return CheckFailed(blame(proof, guest.arch.name, symptom), step=step)


# -- the probe ------------------------------------------------------------------------------------
def probe(guest: Guest, ev: Evidence) -> None:
    step = "contract-probe"
    rc, out = guest.console.run(f"{PROBE} all {CORE_DIR} 2>&1", step=step, timeout=60, check=False)
    items = parse_probe(out)
    ev["probe"] = {k: ("ok " if v.ok else f"FAIL {v.errno} ") + v.detail for k, v in items.items()}
    ev["probe_exit"] = rc
    expected = [i for i in PROBE_ITEMS if i != "prjquota"]
    missing = [i for i in expected if i not in items]
    if missing:
        raise CheckFailed(f"the probe did not report {', '.join(missing)} (exit {rc}): {out.strip()[-200:]!r}",
                          step=step)
    failed = [v for v in items.values() if not v.ok]
    if failed:
        first = failed[0]
        msg = blame(f"probe:{first.item}", guest.arch.name, f"{first.item}: {first.detail} failed ({first.errno})")
        more = f" (+{len(failed) - 1} more: {', '.join(f.item for f in failed[1:])})" if len(failed) > 1 else ""
        raise CheckFailed(msg + more, step=step)
    if rc != 0:
        raise CheckFailed(f"the probe reported every item ok but exited {rc}", step=step)


# -- the running kernel's own config ---------------------------------------------------------------
def running_config(guest: Guest, ev: Evidence) -> None:
    step = "contract-config"
    from harness.kernel.kconfig import parse_config_text

    caps = _contract().for_arch(guest.arch.name)
    symbols = sorted({o for c in caps for o in c.options})
    rc, _ = guest.console.run("[ -r /proc/config.gz ]", step=step, check=False)
    if rc != 0:
        raise CheckFailed("the kernel has no /proc/config.gz (IKCONFIG_PROC), so it cannot show its contract",
                          step=step)
    # Only the contract's options that are set (absent means n), through a patterns file in the
    # initramfs: a short command line and a short answer. The count guards against lost output.
    out = guest.sh(f"zcat /proc/config.gz | grep -f {CONTRACT_PATTERNS} > /tmp/contract.cfg; "
                   "wc -l < /tmp/contract.cfg; cat /tmp/contract.cfg", step=step, timeout=120)
    first, _, rest = out.strip().partition("\n")
    have = parse_config_text(rest)
    if not first.strip().isdigit() or int(first) != len(have):
        raise InfraError(f"the console lost output: the guest found {first.strip()!r} contract lines, "
                         f"{len(have)} arrived", step=step)
    ev["options_checked"] = len(symbols)
    wrong = []
    for cap in caps:
        for sym, want in cap.options.items():
            got = have.get(f"CONFIG_{sym}", "n")
            if got != want:
                wrong.append((cap, f"CONFIG_{sym}={got} (contract: {want})"))
    if wrong:
        ev["wrong"] = [f"{w} [{c.name}]" for c, w in wrong]
        cap, what = wrong[0]
        more = f" (+{len(wrong) - 1} more)" if len(wrong) > 1 else ""
        raise CheckFailed(f"the running kernel has {what} -- {cap.describe()}{more}", step=step)


# -- the runner's data disk ------------------------------------------------------------------------
def prjquota(guest: Guest, ev: Evidence) -> None:
    step = "contract-prjquota"
    if not guest.data_disk:
        raise InfraError("the boot test attached no data disk", step=step)
    rc, dev = guest.console.run(f"findfs LABEL={DATA_LABEL}", step=step, check=False)
    if rc != 0:
        raise CheckFailed(f"no filesystem labelled {DATA_LABEL} (the data disk is not visible)", step=step)
    dev = dev.strip()
    ev["device"] = dev
    rc, out = guest.console.run(f"mkdir -p {DATA_MOUNT} && mount -t ext4 {dev} {DATA_MOUNT} 2>&1", step=step,
                                timeout=30, check=False)
    if rc != 0:
        _, kmsg = guest.console.run("dmesg | grep -i -E 'ext4|quota' | tail -3", step=step, check=False)
        ev["dmesg"] = kmsg.strip().splitlines()
        raise _fail(guest, "contract-prjquota", f"mount of the prjquota data disk failed: {out.strip()[-160:]!r} "
                    f"(kernel: {' / '.join(ev['dmesg'])[:200]})", step)
    try:
        mount = guest.sh(f"grep ' {DATA_MOUNT} ' /proc/mounts", step=step).strip()
        ev["mount"] = mount
        opts = mount.split()[3].split(",") if len(mount.split()) > 3 else []
        if "rw" not in opts:
            raise _fail(guest, "contract-prjquota", f"the data disk mounted read-only: {mount}", step)
        guest.sh(f"echo row > {DATA_MOUNT}/written && sync", step=step)
        # ext4 enables quota from its superblock (quota feature + mount_opts=prjquota); /proc/mounts
        # need not list it, so the kernel is asked, and a project limit is put to the test.
        rc, out = guest.console.run(f"{PROBE} prjquota {dev} {DATA_MOUNT}/pgdata", step=step, timeout=60,
                                    check=False)
        item = parse_probe(out).get("prjquota")
        ev["quota"] = out.strip()
        if rc != 0 or item is None or not item.ok:
            raise _fail(guest, "contract-prjquota", f"project quota on the data disk does not hold: "
                        f"{out.strip()[-200:]!r}", step)
    finally:
        guest.console.run(f"umount {DATA_MOUNT}", step=step, check=False)


# -- ip= -------------------------------------------------------------------------------------------
def ip_pnp(guest: Guest, ev: Evidence) -> None:
    step = "contract-ip-pnp"
    addr = guest.sh(f"ip -4 addr show dev {GUEST_NETDEV} 2>&1; true", step=step)
    ev["ip_addr"] = addr.strip().splitlines()
    rc, pnp = guest.console.run("cat /proc/net/pnp", step=step, check=False)
    ev["proc_net_pnp"] = pnp.strip().splitlines() if rc == 0 else f"missing (exit {rc})"
    hostname = guest.sh("uname -n", step=step).strip()
    ev["hostname"] = hostname
    if f"inet {GUEST_IP}/" not in addr:
        raise _fail(guest, "contract-ip-pnp", f"ip= on the command line did not configure {GUEST_NETDEV} with "
                    f"{GUEST_IP}: {' '.join(addr.split())[:160]!r}", step)
    if hostname != GUEST_HOSTNAME:
        raise _fail(guest, "contract-ip-pnp", f"ip= did not set the hostname: uname -n says {hostname!r}", step)


# -- the wall clock --------------------------------------------------------------------------------
def rtc(guest: Guest, ev: Evidence) -> None:
    step = "contract-rtc"
    rc, _ = guest.console.run("[ -e /dev/rtc0 ]", step=step, check=False)
    ev["dev_rtc0"] = rc == 0
    if rc != 0:
        raise _fail(guest, "contract-rtc", "/dev/rtc0 does not exist: the guest has no RTC driver for this machine",
                    step)
    ev["rtc_name"] = guest.sh("cat /sys/class/rtc/rtc0/name 2>/dev/null; true", step=step).strip()
    year = int(guest.sh("date -u +%Y", step=step).strip())
    ev["guest_date"] = guest.sh("date -u '+%Y-%m-%dT%H:%M:%SZ'", step=step).strip()
    ev["host_date"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    if year < EARLIEST_YEAR:
        raise _fail(guest, "contract-rtc", f"the guest's clock says {ev['guest_date']} (not set from the RTC)", step)


# -- the runner's log port -------------------------------------------------------------------------
def log_port(guest: Guest, ev: Evidence) -> None:
    step = "contract-log-port"
    names = guest.sh("for p in /sys/class/virtio-ports/*; do [ -e $p/name ] && echo $(basename $p) $(cat $p/name);"
                     " done; true", step=step)
    ports = dict(line.split(None, 1) for line in names.strip().splitlines() if " " in line)
    ev["ports"] = ports
    dev = next((d for d, n in ports.items() if n.strip() == LOG_PORT_NAME), None)
    if dev is None:
        raise _fail(guest, "contract-log-port", f"no virtio-serial port named {LOG_PORT_NAME} in the guest "
                    f"(ports: {ports or 'none'})", step)
    marker = f"neonvm-log-port-{int(time.time())}"
    guest.sh(f"echo {marker} > /dev/{dev}", step=step)
    path = guest.vm.log_port_log
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if path.is_file() and marker in path.read_text(errors="replace"):
            ev["host_file"] = str(path)
            return
        time.sleep(0.1)
    raise _fail(guest, "contract-log-port", f"a line written to /dev/{dev} did not reach the host ({path})", step)


# -- perf from tools.img ---------------------------------------------------------------------------
PERF_WORKLOAD = "/bin/busybox sh -c 'i=0; while [ $i -lt 30000 ]; do i=$((i+1)); done'"


def perf(guest: Guest, ev: Evidence) -> None:
    step = "contract-perf"
    with mounted_tools(guest, ev, step=step) as perf_bin:
        rc, out = guest.console.run(f"{perf_bin} record -q -g -o /tmp/perf.data -- {PERF_WORKLOAD} 2>&1",
                                    step=step, timeout=120, check=False)
        ev["record_exit"] = rc
        if rc != 0:
            raise _fail(guest, "contract-perf", f"perf record -g failed (exit {rc}): {out.strip()[-200:]!r}", step)
        rc, out = guest.console.run(f"{perf_bin} report -i /tmp/perf.data --stdio --no-children 2>&1 | head -60",
                                    step=step, timeout=120, check=False)
        ev["report_head"] = out.strip().splitlines()[:25]
        m = re.search(r"# Samples: (\d+\S*)", out)
        if not m or m.group(1).startswith("0"):
            raise _fail(guest, "contract-perf", f"perf record -g took no samples: {out.strip()[:200]!r}", step)
        if not re.search(r"^\s*\|", out, re.M) and "---" not in out:
            raise _fail(guest, "contract-perf", "perf report shows no call chains for perf record -g", step)
        ev["samples"] = m.group(1)
        rc, out = guest.console.run(f"{perf_bin} stat -e sched:sched_switch -- /bin/busybox sleep 0.2 2>&1",
                                    step=step, timeout=60, check=False)
        ev["stat_tracepoint"] = out.strip().splitlines()[-8:]
        counted = re.search(r"^\s*([\d,.]+)\s+sched:sched_switch", out, re.M)
        if rc != 0 or not counted:
            raise _fail(guest, "contract-perf", f"perf stat -e sched:sched_switch did not count the tracepoint "
                        f"(exit {rc}): {' '.join(out.split())[-200:]!r}", step)
        guest.console.run("rm -f /tmp/perf.data", step=step, check=False)


# -- graceful shutdown (last: the VM is gone afterwards) ----------------------------------------------
def powerdown(guest: Guest, ev: Evidence) -> None:
    step = "contract-powerdown"
    rc, out = guest.console.run("pidof acpid", step=step, check=False)
    if rc != 0:
        raise InfraError("acpid is not running in the test initramfs", step=step)
    ev["acpid_pid"] = out.strip()
    with Timer() as since_button:
        guest.qmp.execute("system_powerdown")
        try:
            guest.console.wait(re.escape(POWER_MARKER), timeout=POWERDOWN_SECONDS, scaled=False, step=step,
                               what="acpid to run the power-button action")
        except GuestTimeout as exc:
            raise _fail(guest, "contract-powerdown", f"the power button did not reach acpid: {exc.message}",
                        step) from exc
        ev["acpid_seconds"] = round(since_button.elapsed, 2)
        left = POWERDOWN_SECONDS - since_button.elapsed
        shutdown = guest.qmp.wait_event("SHUTDOWN", timeout=max(1.0, left), step=step)
    if shutdown is None:
        raise _fail(guest, "contract-powerdown", f"the guest did not power off within {POWERDOWN_SECONDS}s of "
                    "system_powerdown", step)
    ev["shutdown_event"] = shutdown.get("data", {})
    ev["seconds_to_power_off"] = round(since_button.duration, 2)
    if shutdown.get("data", {}).get("reason") != "guest-shutdown":
        raise _fail(guest, "contract-powerdown", f"QEMU stopped for {shutdown.get('data')}, not a guest power-off",
                    step)
    guest.powered_off = True


def _skip_without_tools(guest: Guest) -> None:
    if guest.tools_img is None or not guest.tools_img.is_file():
        if guest.tools_required:
            raise CheckFailed("tools.img does not exist and tools are required", step="contract-perf")
        raise Skip("tools.img does not exist (tools optional; --require-tools makes this a failure)")


def perf_check(guest: Guest, ev: Evidence) -> None:
    _skip_without_tools(guest)
    perf(guest, ev)


CHECKS = [
    Check("contract-probe", probe, doc="the probe: madvise, inotify, io_uring, bpf, memfd, membarrier, rseq, "
                                       "fhandle, quotactl, a core dump, accounting"),
    Check("contract-config", running_config, doc="the running kernel's /proc/config.gz has every contract option"),
    Check("contract-prjquota", prjquota, doc="the runner's prjquota data disk mounts read-write with project quota"),
    Check("contract-ip-pnp", ip_pnp, doc="ip= on the command line configures the virtio-net interface"),
    Check("contract-rtc", rtc, doc="/dev/rtc0 exists and the clock is not 1970"),
    Check("contract-log-port", log_port, doc="the runner's virtio-serial log port carries a line to the host"),
    Check("contract-perf", perf_check, doc="perf record -g and a tracepoint count with the perf from tools.img"),
]
# Runs after every other check: it powers the guest off.
LAST = [Check("contract-powerdown", powerdown, doc="QMP system_powerdown -> acpid -> power-off within 30 s")]
