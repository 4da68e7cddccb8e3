"""harness.boot.qmp against a fake QEMU that connects to the harness' QMP socket like QEMU does:
the library's protocol under the harness' errors, deadlines and event waits."""
from __future__ import annotations

import json
import socket
import threading
import time

import pytest

from harness.boot.qmp import Qmp, QmpFailed
from harness.errors import QemuDied

GREETING = {"QMP": {"version": {"qemu": {"micro": 2, "minor": 0, "major": 10}, "package": ""}, "capabilities": []}}
NO_REPLY = {}  # a reply table entry: the fake never answers this command


def _event(name, data):
    return {"event": name, "data": data, "timestamp": {"seconds": 0, "microseconds": 0}}


class FakeQemu(threading.Thread):
    """Connects to the harness' QMP socket, negotiates, answers from a table, emits events (before
    or after the reply to a command)."""

    def __init__(self, path, replies, events_after=None, events_before=None):
        super().__init__(daemon=True)
        self.path, self.replies = path, replies
        self.events_after, self.events_before = events_after or {}, events_before or {}
        self.received = []

    def messages(self, sock):
        """QMP clients send JSON objects back to back, not necessarily one per line."""
        dec, buf = json.JSONDecoder(), ""
        while data := sock.recv(4096):
            buf += data.decode()
            while buf.strip():
                try:
                    msg, end = dec.raw_decode(buf.lstrip())
                except json.JSONDecodeError:
                    break
                buf = buf.lstrip()[end:]
                yield msg

    def run(self):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(str(self.path))
        send = lambda obj: s.sendall((json.dumps(obj) + "\n").encode())  # noqa: E731
        send(GREETING)
        try:
            for msg in self.messages(s):
                cmd = msg["execute"]
                self.received.append(msg)
                for name, data in self.events_before.get(cmd, []):
                    send(_event(name, data))
                reply = self.replies.get(cmd, {"return": {}})
                if reply is NO_REPLY:
                    continue
                send({**reply, "id": msg.get("id")})
                if cmd == "quit":
                    return
                for name, data in self.events_after.get(cmd, []):
                    send(_event(name, data))
        except OSError:  # the harness closed its side
            pass
        finally:
            s.close()


@pytest.fixture
def qmp_pair(tmp_path):
    made: list[Qmp] = []

    def make(replies=None, events_after=None, events_before=None):
        path = tmp_path / "qmp.sock"
        q = Qmp(path, name="test", on_lost=lambda: QemuDied("QEMU went away", step="test"))
        made.append(q)
        fake = FakeQemu(path, replies or {}, events_after, events_before)
        fake.start()
        q.accept(timeout=10)
        return q, fake
    yield make
    for q in made:
        q.close()


def test_execute_and_event_wait(qmp_pair):
    q, fake = qmp_pair(
        replies={"query-hotpluggable-cpus": {"return": [{"type": "qemu64-x86_64-cpu", "props": {"core-id": 2}}]}},
        events_after={"device_del": [("ACPI_DEVICE_OST", {"info": {"device": "c"}}),
                                     ("DEVICE_DELETED", {"path": "/machine/peripheral/c/lapic"}),
                                     ("DEVICE_DELETED", {"device": "c", "path": "/machine/peripheral/c"})]})
    assert q.execute("query-hotpluggable-cpus")[0]["props"] == {"core-id": 2}
    q.execute("device_del", {"id": "c"})
    assert fake.received[-1]["arguments"] == {"id": "c"}
    ev = q.wait_event("DEVICE_DELETED", timeout=5, step="t", match=lambda d: d.get("device") == "c")
    assert ev["data"]["path"] == "/machine/peripheral/c"
    # events skipped on the way stay available to later waits
    assert q.wait_event("ACPI_DEVICE_OST", timeout=1, step="t")["data"]["info"]["device"] == "c"
    assert q.wait_event("DEVICE_DELETED", timeout=1, step="t")["data"]["path"] == "/machine/peripheral/c/lapic"
    assert [e["event"] for e in q.events] == ["ACPI_DEVICE_OST", "DEVICE_DELETED", "DEVICE_DELETED"]


def test_events_sent_before_the_reply_are_not_lost(qmp_pair):
    """QEMU may emit an event while a command waits for its reply (qom-set of requested-size)."""
    q, _ = qmp_pair(events_before={"qom-set": [("MEMORY_DEVICE_SIZE_CHANGE", {"id": "vmem0", "size": 1 << 30})]})
    assert q.execute("qom-set", {"path": "/machine/peripheral/vmem0", "property": "requested-size",
                                 "value": 1 << 30}) == {}
    ev = q.wait_event("MEMORY_DEVICE_SIZE_CHANGE", timeout=5, step="t", match=lambda d: d["size"] == 1 << 30)
    assert ev is not None and ev["data"]["id"] == "vmem0"


def test_hyphenated_arguments_reach_qemu(qmp_pair):
    q, fake = qmp_pair()
    q.execute("object-add", {"qom-type": "memory-backend-ram", "id": "dimm0-mem", "size": 1 << 28})
    assert fake.received[-1] == {"execute": "object-add", "id": fake.received[-1]["id"],
                                 "arguments": {"qom-type": "memory-backend-ram", "id": "dimm0-mem", "size": 1 << 28}}


def test_missing_event_returns_none_at_deadline(qmp_pair):
    q, _ = qmp_pair()
    start = time.monotonic()
    assert q.wait_event("MEMORY_DEVICE_SIZE_CHANGE", timeout=0.3, step="t") is None
    assert 0.25 <= time.monotonic() - start < 3


def test_forget_pending_drops_earlier_events_only(qmp_pair):
    q, _ = qmp_pair(events_after={"cont": [("RESUME", {})], "stop": [("STOP", {})]})
    q.execute("cont")
    assert [e["event"] for e in q.drain(timeout=1)] == ["RESUME"]  # drain keeps them pending
    assert q.forget_pending() == 1
    assert q.wait_event("RESUME", timeout=0.3, step="t") is None
    q.execute("stop")
    assert q.wait_event("STOP", timeout=5, step="t") is not None
    assert [e["event"] for e in q.events] == ["RESUME", "STOP"]  # the evidence keeps everything


def test_refused_command_is_qmp_failure(qmp_pair):
    q, _ = qmp_pair(replies={"device_add": {"error": {"class": "GenericError", "desc": "no free slot"}}})
    with pytest.raises(QmpFailed, match="no free slot") as exc:
        q.execute("device_add", {"driver": "x"})
    assert exc.value.kind == "infra" and exc.value.step == "qmp"


def test_unanswered_command_is_qmp_failure_at_its_deadline(qmp_pair):
    q, _ = qmp_pair(replies={"query-migrate": NO_REPLY})
    start = time.monotonic()
    with pytest.raises(QmpFailed, match="query-migrate: no answer within"):
        q.execute("query-migrate", timeout=0.5)
    assert time.monotonic() - start < 3


def test_lost_connection_asks_the_vm(qmp_pair):
    q, _ = qmp_pair()
    q.execute("quit")
    with pytest.raises(QemuDied, match="went away"):
        q.execute("query-status")


def test_qemu_that_never_connects_is_qmp_failure(tmp_path):
    q = Qmp(tmp_path / "qmp.sock", name="test", on_lost=lambda: QemuDied("gone", step="test"))
    try:
        with pytest.raises(QmpFailed, match="no answer within"):
            q.accept(timeout=0.3)
    finally:
        q.close()


def test_greeting_that_is_not_qmp_is_qmp_failure(tmp_path):
    path = tmp_path / "qmp.sock"
    q = Qmp(path, name="test", on_lost=lambda: QemuDied("gone", step="test"))

    def not_qemu():
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(str(path))
        s.sendall(b'{"hello": "world"}\n')
        time.sleep(1)
        s.close()
    threading.Thread(target=not_qemu, daemon=True).start()
    try:
        with pytest.raises(QmpFailed, match="QMP handshake failed"):
            q.accept(timeout=10)
    finally:
        q.close()


def test_a_vm_has_no_qmp_or_console_before_launch(tmp_path):
    from harness.arch import get_arch
    from harness.boot import vm
    from harness.errors import InfraError

    spec = vm.VmSpec(arch=get_arch("amd64"), kernel=tmp_path / "k", initrd=tmp_path / "i",
                     accel=vm.Accel("tcg", "test"))
    v = vm.Vm(spec, log_dir=tmp_path, tag="t")
    with pytest.raises(InfraError, match="VM t has no QMP connection"):
        v.qmp  # noqa: B018
    with pytest.raises(InfraError, match="VM t has no console"):
        v.console  # noqa: B018
    assert v.console_tail() == []
