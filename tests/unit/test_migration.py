"""The migration check without QEMU: the destination's argv (against the argv golden files), the
clock and dmesg logic, QEMU's migration figures and waits with a fake QMP, a migration that fails or
completes with fake VMs, and boottest tearing down every QEMU a check started."""
from __future__ import annotations

from pathlib import Path

import pytest
from fixture_paths import FIXTURES

from harness.arch import ARCHES, get_arch
from harness.boot import run as boottest
from harness.boot import vm
from harness.boot.checks import Check, Guest
from harness.boot.checks import migration as mig
from harness.boot.run import BootRequest
from harness.errors import CheckFailed, InfraError
from harness.report import CheckResult

AMD64, ARM64 = get_arch("amd64"), get_arch("arm64")
TCG = vm.Accel("tcg", "test")
MIB = 1 << 20


# -- the destination's command line -----------------------------------------------------------------
def _spec(arch_name: str) -> vm.VmSpec:
    return boottest.vm_spec(arch=get_arch(arch_name), kernel=Path("/OUT/vmlinuz"), initrd=Path("/CACHE/initramfs.cpio"),
                            accel=TCG, tools_img=Path("/OUT/tools.img"))


@pytest.mark.parametrize("arch_name", sorted(ARCHES))
def test_destination_argv_is_the_golden_argv_plus_incoming(arch_name):
    """The runner's target: the source's very argv (fixtures/argv/<arch>.txt), its own sockets and
    logs, and -incoming last."""
    dest = vm.qemu_argv(_spec(arch_name), console_sock="/RUN-D/console.sock", qmp_sock="/RUN-D/qmp.sock",
                        log_port="/OUT/boot/boot.dest1.logport.log", early_log="/OUT/boot/boot.dest1.early.log",
                        incoming="unix:/RUN-D/migrate.sock")
    golden = (FIXTURES / "argv" / f"{arch_name}.txt").read_text().splitlines()
    own = {"/RUN/": "/RUN-D/", "boot.logport.log": "boot.dest1.logport.log", "boot.early.log": "boot.dest1.early.log"}
    expected = []
    for arg in golden:
        for old, new in own.items():
            arg = arg.replace(old, new)
        expected.append(arg)
    assert dest == expected + ["-incoming", "unix:/RUN-D/migrate.sock"]
    assert "-incoming" not in golden


def test_vm_destination_argv_and_logs():
    spec = _spec("amd64")
    dest = vm.Vm(spec, log_dir=Path("/OUT/boot"), tag=mig.dest_tag("boot", 1), incoming=True)
    argv = dest.argv("/RUN-D")
    assert argv[-2:] == ["-incoming", "unix:/RUN-D/migrate.sock"]
    assert "file,id=log,path=/OUT/boot/boot.dest1.logport.log" in argv
    assert "socket,id=console,path=/RUN-D/console.sock" in argv and "socket,id=qmp,path=/RUN-D/qmp.sock" in argv
    assert dest.console_log == Path("/OUT/boot/boot.dest1.console.log")
    assert dest.qemu_log == Path("/OUT/boot/boot.dest1.qemu.log")
    # the same drives: QEMU hands the image locks over when the migration completes
    source = vm.Vm(spec, log_dir=Path("/OUT/boot"), tag="boot").argv("/RUN")
    assert [a for a in argv if a.startswith("id=tools,")] == [a for a in source if a.startswith("id=tools,")]
    assert "-incoming" not in source
    with pytest.raises(InfraError, match="not a launched migration destination"):
        dest.migration_uri  # noqa: B018 - only after launch


def test_dry_run_prints_the_destination(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(vm.Vm, "launch", lambda self: pytest.fail("dry run launched QEMU"))
    boottest.run(BootRequest(AMD64, kernel=tmp_path / "vmlinuz", release="x", results_dir=tmp_path, accel="tcg",
                             dry_run=True, only=["migration"]))
    out = capsys.readouterr().out
    assert "# migration destination" in out and "-incoming 'unix:$RUNDIR_DEST/migrate.sock'" in out
    assert "boot.dest1.logport.log" in out


def test_order_migration_after_memory_before_contract():
    names = [c.name for c in boottest.select_checks(AMD64, None)]
    at = names.index("migration")
    assert max(names.index(n) for n in ("virtio-mem", "acpi-dimm", "memory-stress")) < at
    assert at < min(i for i, n in enumerate(names) if n.startswith("contract-")) and names[-1] == "contract-powerdown"
    assert names.index("cpu-sysfs") < at < names.index("cpu-qmp")  # cpu-qmp runs in the migrated VM
    assert "migration" in [c.name for c in boottest.select_checks(ARM64, None)]


# -- the clock ----------------------------------------------------------------------------------------
ADJTIMEX = """    mode:         0
-o  offset:       0 us
-f  freq.adjust:  0 (65536 = 1ppm)
    maxerror:     16000000
    esterror:     16000000
    status:       64 (UNSYNC)
-p  timeconstant: 2
    precision:    1 us
    tolerance:    32768000
-t  tick:         10000 us
    time.tv_sec:  1795964879
    time.tv_usec: 465596
    return value: 5 (clock not synchronized)"""


def test_parse_adjtimex():
    assert mig.parse_adjtimex(ADJTIMEX) == pytest.approx(1795964879.465596)
    nano = ADJTIMEX.replace("64 (UNSYNC)", "8256 (UNSYNC NANO)").replace("465596", "465596123")
    assert mig.parse_adjtimex(nano) == pytest.approx(1795964879.465596123)
    with pytest.raises(CheckFailed, match="cannot read the guest's clock"):
        mig.parse_adjtimex("adjtimex: not found")


def test_clock_sample_offset_and_window():
    s = mig.ClockSample(guest=1000.2, host_before=1000.0, host_after=1000.2)
    assert s.offset == pytest.approx(0.1) and s.uncertainty == pytest.approx(0.1)


def _sample(offset: float, window: float = 0.02, at: float = 1000.0) -> mig.ClockSample:
    return mig.ClockSample(guest=at + window / 2 + offset, host_before=at, host_after=at + window)


def test_clock_lagging_by_the_downtime_passes():
    delta, limit, problem = mig.clock_problem(_sample(-0.05), _sample(-0.35, at=1010), downtime_ms=300)
    assert problem is None and delta == pytest.approx(-0.3) and limit == pytest.approx(0.3 + 0.5 + 0.02)


@pytest.mark.parametrize("after,way", [(-2.0, "backwards"), (+1.5, "forward")])
def test_clock_jump_beyond_downtime_and_tolerance_fails(after, way):
    delta, limit, problem = mig.clock_problem(_sample(0.0), _sample(after), downtime_ms=60)
    assert problem and f"jumped {way} by {abs(after):.3f}s" in problem
    assert "downtime 60 ms" in problem and abs(delta) > limit


def test_wide_sampling_windows_widen_the_allowance():
    assert mig.clock_problem(_sample(0.0, window=0.8), _sample(-1.2, window=0.8), downtime_ms=0)[2] is None


# -- dmesg -----------------------------------------------------------------------------------------
def test_new_failures_by_timestamp():
    before = "[    1.000000] WARNING: CPU: 0 PID: 1 at old\n[    2.500000] virtio_mem virtio0: plugged size: 0x0"
    after = before + ("\n[    9.000000] clocksource: Switched to clocksource tsc"
                      "\n[    9.100000] WARNING: CPU: 1 PID: 7 at mm/page_alloc.c:4000 new")
    assert mig.new_failures(before, before) == []
    assert mig.new_failures(before, after) == ["WARNING: CPU: 1 PID: 7 at mm/page_alloc.c:4000 new"]


def test_new_failures_without_timestamps_by_count():
    before = "BUG: x\nok"
    assert mig.new_failures(before, before + "\nok") == []
    assert mig.new_failures(before, before + "\nBUG: x\nOops: y") == ["BUG: x", "Oops: y"]


@pytest.mark.skipif(not Path("/bin/busybox").exists(), reason="no busybox on this host")
def test_the_guest_side_filter_keeps_only_lines_after_the_mark():
    import subprocess

    log = "[    1.000000] a\n[    2.500000] b\n[   12.000001] WARNING: c\nno stamp\n[  100.000000] d\n"
    out = subprocess.run(["/bin/busybox", "awk", "-v", "t=2.500000", mig.AWK_AFTER], input=log, text=True,
                         capture_output=True, check=True).stdout
    assert out.splitlines() == ["[   12.000001] WARNING: c", "[  100.000000] d"]


class ScriptConsole:
    scale = 1.0

    def __init__(self, answers):
        self.answers, self.ran = answers, []

    def run(self, command, *, step, timeout=10, check=True, watch=True):
        assert not watch  # old failure lines must not trip the console watcher
        self.ran.append(command)
        return next(a for p, a in self.answers if command.startswith(p))


def test_dmesg_mark_and_since_move_only_new_lines():
    console = ScriptConsole([("dmesg | tail -n 1", (0, "[   42.123456] virtio_mem virtio0: plugged size: 0x0")),
                             ("dmesg | awk", (0, "[   50.000000] BUG: Bad page state"))])
    g = Guest(vm=FakeVmWithConsole(console), arch=AMD64, accel_name="tcg", release="x")
    mark = mig.dmesg_mark(g, "t")
    assert mark == "[   42.123456] virtio_mem virtio0: plugged size: 0x0"
    assert mig.new_failures(mark, mig.dmesg_since(g, mark, "t")) == ["BUG: Bad page state"]
    assert console.ran[-1].startswith("dmesg | awk -v t=42.123456 '{s = $0;")
    plain = ScriptConsole([("dmesg | tail -n 1", (0, "no timestamps")), ("dmesg", (0, "BUG: old\nno timestamps"))])
    g = Guest(vm=FakeVmWithConsole(plain), arch=AMD64, accel_name="tcg", release="x")
    mark = mig.dmesg_mark(g, "t")
    assert mark == "BUG: old\nno timestamps" and mig.new_failures(mark, mig.dmesg_since(g, mark, "t")) == []


class FakeVmWithConsole:
    def __init__(self, console):
        self.console, self.qmp = console, None


# -- QEMU's side, with a fake QMP ----------------------------------------------------------------------
QUERY_MIGRATE_DONE = {"status": "completed", "setup-time": 3, "downtime": 64, "total-time": 361,
                      "ram": {"transferred": 60839551, "total": 1611407360, "duplicate": 182496, "normal": 14346,
                              "mbps": 1359.5430391061452, "dirty-sync-count": 3}}


def test_figures():
    f = mig.figures(QUERY_MIGRATE_DONE)
    assert f == {"status": "completed", "total_ms": 361, "downtime_ms": 64, "setup_ms": 3, "transferred_mib": 58.0,
                 "ram_total_mib": 1536.8, "duplicate_pages": 182496, "normal_pages": 14346, "dirty_sync_count": 3,
                 "mbps": 1359.5}
    failed = mig.figures({"status": "failed", "error-desc": "Unable to write to socket: Broken pipe"})
    assert failed["error_desc"] == "Unable to write to socket: Broken pipe" and "downtime_ms" not in failed


class FakeQmp:
    """Scripted answers per command (a list is consumed in order, its last item repeated); records calls."""

    def __init__(self, answers: dict | None = None):
        self.answers = dict(answers or {})
        self.calls: list[tuple[str, dict | None]] = []
        self.events: list[dict] = []
        self.waited: list[str] = []

    def execute(self, cmd, args=None, *, timeout=10):
        self.calls.append((cmd, args))
        answer = self.answers.get(cmd, {})
        if isinstance(answer, list) and cmd not in ("query-memory-devices", "query-hotpluggable-cpus"):
            answer = answer.pop(0) if len(answer) > 1 else answer[0]
        return answer(args) if callable(answer) else answer

    def wait_event(self, name, *, timeout, step, match=lambda d: True):
        self.waited.append(name)
        return None

    def forget_pending(self, timeout=0.2):
        return 0

    def commands(self) -> list[str]:
        return [c for c, _ in self.calls]


def test_wait_migration_until_completed():
    qmp = FakeQmp({"query-migrate": [{"status": "setup"}, {"status": "active"}, QUERY_MIGRATE_DONE]})
    assert mig.wait_migration(qmp, timeout=10, step="t")["status"] == "completed"
    assert qmp.commands() == ["query-migrate"] * 3 and qmp.waited == ["MIGRATION"] * 2


def test_wait_migration_gives_up_at_the_deadline_or_a_stuck_setup(monkeypatch):
    monkeypatch.setattr(mig, "POLL_SECONDS", 0.01)
    assert mig.wait_migration(FakeQmp({"query-migrate": {"status": "active"}}), timeout=0.05, step="t")["status"] \
        == "active"
    info = mig.wait_migration(FakeQmp({"query-migrate": {"status": "setup"}}), timeout=60, step="t", setup_timeout=0.05)
    assert info["status"] == "setup"


def test_wait_running():
    qmp = FakeQmp({"query-status": [{"status": "inmigrate"}, {"status": "running", "running": True}]})
    assert mig.wait_running(qmp, timeout=5, step="t")["status"] == "running" and qmp.waited == ["RESUME"]


def test_hot_plugged_devices_are_replayed_on_the_destination():
    src = FakeQmp({
        "query-memory-devices": [
            {"type": "virtio-mem", "data": {"id": "vm0", "memdev": "/objects/vmem0", "size": 0}},
            {"type": "dimm", "data": {"id": "dimm0", "memdev": "/objects/dimm0-mem", "size": 128 * MIB,
                                      "addr": 4294967296, "slot": 0, "hotplugged": True}}],
        "qom-get": lambda a: "memory-backend-ram" if a == {"path": "/objects/dimm0-mem", "property": "type"} else None,
        "query-hotpluggable-cpus": [
            {"type": "qemu64-x86_64-cpu", "props": {"socket-id": 0, "core-id": 3, "thread-id": 0}},
            {"type": "qemu64-x86_64-cpu", "props": {"socket-id": 0, "core-id": 2, "thread-id": 0},
             "qom-path": "/machine/peripheral/cpu2"},
            {"type": "qemu64-x86_64-cpu", "props": {"socket-id": 0, "core-id": 0, "thread-id": 0},
             "qom-path": "/machine/unattached/device[0]"}]})
    dst = FakeQmp()
    done = mig.sync_hotplugged(src, dst, cpus=True)
    assert dst.calls == [
        ("object-add", {"qom-type": "memory-backend-ram", "id": "dimm0-mem", "size": 128 * MIB}),
        ("device_add", {"driver": "pc-dimm", "memdev": "dimm0-mem", "addr": 4294967296, "slot": 0, "id": "dimm0"}),
        ("device_add", {"driver": "qemu64-x86_64-cpu", "id": "cpu2", "socket-id": 0, "core-id": 2, "thread-id": 0})]
    assert done == ["pc-dimm dimm0 (memory-backend-ram 128 MiB)",
                    "vCPU cpu2 (qemu64-x86_64-cpu {'socket-id': 0, 'core-id': 2, 'thread-id': 0})"]
    dst2 = FakeQmp()
    mig.sync_hotplugged(FakeQmp({"query-memory-devices": []}), dst2, cpus=False)  # arm64: no QMP vCPUs
    assert dst2.calls == []
    with pytest.raises(InfraError, match="nvdimm"):
        mig.sync_hotplugged(FakeQmp({"query-memory-devices": [{"type": "nvdimm", "data": {}}]}), FakeQmp(), cpus=False)


def test_vcpu_unplugged():
    assert mig.vcpu_unplugged([{"event": "DEVICE_DELETED", "data": {"path": "/machine/peripheral/hotcpu0/lapic"}}])
    assert not mig.vcpu_unplugged([{"event": "DEVICE_DELETED", "data": {"device": "dimm0",
                                                                          "path": "/machine/peripheral/dimm0"}}])


# -- one migration with fake VMs ------------------------------------------------------------------------
class FakeConsole:
    scale = 1.0

    def __init__(self, lines=()):
        self.lines = list(lines)

    def tail(self, n=30):
        return self.lines[-n:]


class FakeVm:
    def __init__(self, tag, qmp, console_lines=(), qemu_lines=()):
        self.tag, self.qmp, self.console = tag, qmp, FakeConsole(console_lines)
        self._qemu = list(qemu_lines)
        self.shut = 0
        self.migration_uri = f"unix:/RUN-{tag}/migrate.sock"

    def console_tail(self):
        return self.console.tail()

    def qemu_tail(self, n=5):
        return self._qemu[-n:]

    def shutdown(self):
        self.shut += 1


def _guest(src) -> Guest:
    return Guest(vm=src, arch=AMD64, accel_name="tcg", release="6.12.117", vms=[src])


def test_failed_migration_keeps_the_guest_in_the_source_with_qemus_error():
    src = FakeVm("boot", FakeQmp({"query-migrate": {"status": "failed", "error-desc": "Unable to write to socket: "
                                                    "Connection reset by peer"},
                                  "query-status": {"status": "running", "running": True}}))
    dest = FakeVm("boot.dest1", FakeQmp(), console_lines=["(nothing yet)"],
                  qemu_lines=["qemu-system-x86_64: load of migration failed: Invalid argument"])
    g = _guest(src)
    g.adopt(dest)
    rec: dict = {}
    with pytest.raises(mig.MigrationFailed) as info:
        mig._migrate(g, dest, rec, "migration")
    msg = str(info.value)
    assert "failed: Unable to write to socket: Connection reset by peer" in msg
    assert "destination QEMU: qemu-system-x86_64: load of migration failed" in msg
    assert info.value.tail[-1] == "[boot.dest1 QEMU] qemu-system-x86_64: load of migration failed: Invalid argument"
    assert g.vm is src and dest.shut == 1 and src.shut == 0 and not g.lost
    assert rec["source_status_after"] == "running" and rec["error_desc"].startswith("Unable to write")
    assert ("migrate", {"uri": "unix:/RUN-boot.dest1/migrate.sock"}) in src.qmp.calls
    caps = dict(src.qmp.calls)["migrate-set-capabilities"]["capabilities"]
    assert {"capability": "auto-converge", "state": True} in caps  # NeonVM's default
    assert dict(src.qmp.calls)["migrate-set-parameters"] == {"max-bandwidth": 1 << 30}


def test_stuck_migration_is_cancelled_and_explained(monkeypatch):
    monkeypatch.setattr(mig, "SETUP_TIMEOUT", 0.02)
    monkeypatch.setattr(mig, "CANCEL_TIMEOUT", 0.02)
    monkeypatch.setattr(mig, "POLL_SECONDS", 0.01)
    src = FakeVm("boot", FakeQmp({"query-migrate": {"status": "setup"}, "query-status": {"status": "running"}}))
    src.qmp.events = [{"event": "DEVICE_DELETED", "data": {"path": "/machine/peripheral/hotcpu0/lapic"}}]
    g = _guest(src)
    with pytest.raises(mig.MigrationFailed, match=r"status setup.*cancelled.*hot-unplugged a vCPU"):
        mig._migrate(g, g.adopt(FakeVm("boot.dest1", FakeQmp())), {}, "migration")
    assert "migrate_cancel" in src.qmp.commands()


def test_completed_migration_switches_to_the_destination_and_stops_the_source():
    src = FakeVm("boot", FakeQmp({"query-migrate": QUERY_MIGRATE_DONE,  # completed just before postmigrate
                                  "query-status": [{"status": "finish-migrate"}, {"status": "postmigrate"}]}))
    dest = FakeVm("boot.dest1", FakeQmp({"query-status": {"status": "running", "running": True},
                                         "query-migrate": {"status": "completed"}}))
    g = _guest(src)
    g.adopt(dest)
    rec: dict = {}
    mig._migrate(g, dest, rec, "migration")
    assert g.vm is dest and src.shut == 1 and dest.shut == 0
    assert rec["downtime_ms"] == 64 and rec["total_ms"] == 361 and rec["setup_ms"] == 3
    assert rec["transferred_mib"] == 58.0 and rec["source_status"] == "postmigrate" and rec["dest_status"] == "running"


def test_a_destination_that_never_runs_loses_the_guest(monkeypatch):
    monkeypatch.setattr(mig, "ARRIVAL_TIMEOUT", 0.02)
    monkeypatch.setattr(mig, "POLL_SECONDS", 0.01)
    src = FakeVm("boot", FakeQmp({"query-migrate": QUERY_MIGRATE_DONE, "query-status": {"status": "postmigrate"}}))
    dest = FakeVm("boot.dest1", FakeQmp({"query-status": {"status": "inmigrate"}}))
    g = _guest(src)
    with pytest.raises(mig.MigrationFailed, match="boot.dest1 is inmigrate, not running"):
        mig._migrate(g, g.adopt(dest), {}, "migration")
    assert g.lost.startswith("the guest was lost in migration") and g.vm is dest and src.shut == 1


# -- ownership: every QEMU is torn down ------------------------------------------------------------------
def test_guest_teardown_stops_every_vm_newest_first_despite_errors():
    order = []

    class Stub:
        def __init__(self, tag, fail=False):
            self.tag, self.fail = tag, fail

        def shutdown(self):
            order.append(self.tag)
            if self.fail:
                raise OSError("boom")

    g = Guest(vm=None, arch=AMD64, accel_name="tcg", release="x", vms=[Stub("boot")])
    g.adopt(Stub("boot.dest1", fail=True))
    g.switch_to(Stub("boot.dest2"))
    assert g.teardown() == ["boot.dest1: boom"] and order == ["boot.dest2", "boot.dest1", "boot"]


class CmVm(FakeVm):
    """Stands in for harness.boot.vm.Vm in boottest.run: a context manager that tears itself down."""

    def __init__(self, spec, log_dir, tag="boot", incoming=False):
        super().__init__(tag, FakeQmp())
        self.spec, self.log_dir = spec, log_dir

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.shutdown()
        return False


@pytest.mark.parametrize("how", ["check-error", "interrupt"])
def test_boottest_tears_down_every_vm_a_check_started(tmp_path, monkeypatch, how):
    started = []

    def check(guest, ev):
        dest = guest.adopt(CmVm(None, tmp_path, tag="boot.dest1"))
        started.append(dest)
        guest.switch_to(dest)
        raise KeyboardInterrupt if how == "interrupt" else RuntimeError("harness bug")

    def boot_guest(vm_, **kw):
        started.append(vm_)
        return CheckResult("boot", "pass"), Guest(vm=vm_, arch=AMD64, accel_name="tcg", release="x", vms=[vm_])

    monkeypatch.setattr(boottest, "Vm", CmVm)
    monkeypatch.setattr(boottest, "boot_guest", boot_guest)
    monkeypatch.setattr(boottest, "select_checks", lambda arch, only: [Check("migration", check)])
    monkeypatch.setattr(boottest.initramfs, "build", lambda arch, **kw: tmp_path / "initrd")
    monkeypatch.setattr(boottest, "_qemu_version", lambda arch: "QEMU emulator version 10.0.2")
    monkeypatch.setattr(boottest, "make_data_disk", lambda path, log: path)
    req = BootRequest(AMD64, kernel=tmp_path / "vmlinuz", release="x", results_dir=tmp_path, accel="tcg")
    if how == "interrupt":
        with pytest.raises(KeyboardInterrupt):
            boottest.run(req)
    else:
        results = boottest.run(req)
        assert [r.status for r in results] == ["pass", "error"]
    assert len(started) == 2 and all(v.shut >= 1 for v in started)


def test_a_lost_guest_skips_the_remaining_checks(tmp_path, monkeypatch):
    def lose(guest, ev):
        guest.lost = "the guest was lost in migration: boot.dest1 is inmigrate (see check migration)"
        raise CheckFailed("boot.dest1 is inmigrate, not running", step="migration")

    monkeypatch.setattr(boottest, "Vm", CmVm)
    monkeypatch.setattr(boottest, "boot_guest", lambda vm_, **kw: (CheckResult("boot", "pass"), Guest(
        vm=vm_, arch=AMD64, accel_name="tcg", release="x", vms=[vm_])))
    monkeypatch.setattr(boottest, "select_checks", lambda arch, only: [Check("migration", lose),
                                                                       Check("tools", lambda g, ev: None)])
    monkeypatch.setattr(boottest.initramfs, "build", lambda arch, **kw: tmp_path / "initrd")
    monkeypatch.setattr(boottest, "_qemu_version", lambda arch: "QEMU emulator version 10.0.2")
    monkeypatch.setattr(boottest, "make_data_disk", lambda path, log: path)
    results = {r.name: r for r in boottest.run(BootRequest(AMD64, kernel=tmp_path / "vmlinuz", release="x",
                                                            results_dir=tmp_path, accel="tcg"))}
    assert results["migration"].status == "fail"
    assert results["tools"].status == "skip" and "lost in migration" in results["tools"].reason
