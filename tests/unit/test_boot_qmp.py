"""The QMP wrapper against a fake QMP server that connects to the harness' socket like QEMU does."""
from __future__ import annotations

import json
import socket
import threading

import pytest

from harness.boot.vm import Qmp, QmpFailed
from harness.errors import QemuDied

GREETING = {"QMP": {"version": {"qemu": {"micro": 2, "minor": 0, "major": 10}, "package": ""}, "capabilities": []}}


class FakeQemu(threading.Thread):
    """Connects to the harness' QMP socket, negotiates, answers from a table, emits events."""

    def __init__(self, path, replies, events_after=None):
        super().__init__(daemon=True)
        self.path, self.replies, self.events_after = path, replies, events_after or {}
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
        for msg in self.messages(s):
            cmd = msg["execute"]
            self.received.append(msg)
            send({**self.replies.get(cmd, {"return": {}}), "id": msg.get("id")})
            if cmd == "quit":
                s.close()
                return
            for name, data in self.events_after.get(cmd, []):
                send({"event": name, "data": data, "timestamp": {"seconds": 0, "microseconds": 0}})


@pytest.fixture
def qmp_pair(tmp_path):
    def make(replies=None, events_after=None):
        path = tmp_path / "qmp.sock"
        q = Qmp("test", on_lost=lambda: QemuDied("QEMU went away", step="test"))
        q.start_server(path)
        fake = FakeQemu(path, replies or {}, events_after)
        fake.start()
        q.accept(timeout=10)
        made.append(q)
        return q, fake
    made: list[Qmp] = []
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
    ev = q.wait_event("DEVICE_DELETED", timeout=5, step="t", match=lambda d: d.get("device") == "c")
    assert ev["data"]["path"] == "/machine/peripheral/c"
    # events skipped on the way stay available to later waits
    assert q.wait_event("ACPI_DEVICE_OST", timeout=1, step="t")["data"]["info"]["device"] == "c"
    assert [e["event"] for e in q.events] == ["ACPI_DEVICE_OST", "DEVICE_DELETED", "DEVICE_DELETED"]


def test_missing_event_returns_none_at_deadline(qmp_pair):
    q, _ = qmp_pair()
    assert q.wait_event("MEMORY_DEVICE_SIZE_CHANGE", timeout=0.3, step="t") is None


def test_refused_command_is_qmp_failure(qmp_pair):
    q, _ = qmp_pair(replies={"device_add": {"error": {"class": "GenericError", "desc": "no free slot"}}})
    with pytest.raises(QmpFailed, match="no free slot"):
        q.execute("device_add", {"driver": "x"})


def test_lost_connection_asks_the_vm(qmp_pair):
    q, _ = qmp_pair()
    q.execute("quit")
    with pytest.raises(QemuDied, match="went away"):
        q.execute("query-status")
