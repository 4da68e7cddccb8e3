"""The compute checks' parsing and plans: pgbench summaries, the load's verdict, the scaling plan,
perf's frames. The checks themselves run against a real guest in the integration test."""
from __future__ import annotations

import pytest

from harness.compute import checks

PGBENCH_15 = """\
pgbench (15.14 (Debian 15.14-0+deb12u1))
transaction type: <builtin: TPC-B (sort of)>
scaling factor: 4
query mode: simple
number of clients: 4
number of threads: 2
maximum number of tries: 1
duration: 10 s
number of transactions actually processed: 1234
number of failed transactions: 0 (0.000%)
latency average = 32.4 ms
initial connection time = 21.9 ms
tps = 123.456789 (without initial connection time)
"""


def test_parse_pgbench():
    assert checks.parse_pgbench(PGBENCH_15) == {"processed": 1234, "failed": 0, "tps": 123.456789}
    failing = PGBENCH_15.replace("failed transactions: 0 (0.000%)", "failed transactions: 7 (0.5%)")
    assert checks.parse_pgbench(failing)["failed"] == 7
    with pytest.raises(ValueError, match="no pgbench summary"):
        checks.parse_pgbench("pgbench: error: connection to server failed\n")


def test_load_verdict_names_the_bad_run():
    load = checks.PgbenchLoad.__new__(checks.PgbenchLoad)
    load.runs = [{"processed": 10, "failed": 0, "tps": 1.0}, {"error": "pgbench exited 2: client 1 aborted"},
                 {"processed": 0, "failed": 0, "tps": 0.0}, {"processed": 5, "failed": 2, "tps": 0.5}]
    assert load.problems() == ["run 2: pgbench exited 2: client 1 aborted", "run 3: 0 transactions, 0 failed",
                               "run 4: 5 transactions, 2 failed"]
    assert load.summary() == {"runs": 4, "transactions": 15, "failed": 2, "tps_min": 0.0, "tps_mean": 0.5}
    load.runs = [{"processed": 10, "failed": 0, "tps": 1.0}]
    assert load.problems() == []
    load.runs = []
    assert load.problems() == ["no pgbench run finished"]  # no summary looked at is not a pass


@pytest.mark.parametrize(("max_mib", "plan"), [(1024, [512, 0, 1024, 256, 0]), (24, [8, 0, 24, 8, 0]), (0, [])])
def test_scale_plan_grows_and_shrinks_in_whole_blocks(max_mib, plan):
    assert checks.scale_plan(max_mib) == plan
    assert all(m % 8 == 0 for m in plan)


def test_perf_frames_counts_kernel_and_postgres_frames():
    script = "\n".join([
        "postgres  1234",
        "\tffffffff81a0b2c1 do_syscall_64 ([kernel.kallsyms])",
        "\t    7f12aa0b3c4d __libc_recv (/usr/lib/x86_64-linux-gnu/libc.so.6)",
        "\t    55d0c0ffee00 secure_read (/usr/lib/postgresql/15/bin/postgres)",
        "",
        "postgres  1235",
        "\t    55d0c0ffee10 ExecScan (/usr/lib/postgresql/15/bin/postgres)",
    ])
    assert checks.perf_frames(script) == {"samples": 2, "kernel_frames": 1, "postgres_frames": 2}
    assert checks.perf_frames("")["samples"] == 0


class _FakeCompute:
    def __init__(self, answers):
        self.answers, self.log = list(answers), None

    def psql(self, sql, *, step):
        return self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]


def test_wait_backends_waits_for_every_client_then_names_them():
    load = checks.PgbenchLoad(_FakeCompute(["", "11", "11,12,13,14"]), step="t")
    assert load.wait_backends(timeout=5) == "11,12,13,14"


def test_wait_backends_fails_when_the_clients_never_connect():
    load = checks.PgbenchLoad(_FakeCompute(["11"]), step="t")
    with pytest.raises(checks.CheckFailed, match="not all connected"):
        load.wait_backends(timeout=0.5)
