"""Named check results, written as JSON and JUnit XML.

A check is ``pass``, ``fail`` (the kernel or image is wrong), ``skip`` (cannot run on this host;
the reason says why) or ``error`` (the harness or host broke while checking).
"""
from __future__ import annotations

import sys
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

from harness.fsutil import atomic_write_json, atomic_write_text

STATUSES = ("pass", "fail", "skip", "error")


@dataclass
class CheckResult:
    name: str
    status: str
    reason: str = ""
    duration: float = 0.0
    evidence: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"bad status {self.status!r}")

    @property
    def ok(self) -> bool:
        return self.status in ("pass", "skip")


def summarize(results: list[CheckResult]) -> dict[str, int]:
    out = {s: 0 for s in STATUSES}
    for r in results:
        out[r.status] += 1
    return out


def write(results: list[CheckResult], *, suite: str, json_path: Path, junit_path: Path,
          meta: dict[str, Any] | None = None) -> None:
    """Write the results as JSON (with ``meta``) and as a JUnit XML test suite."""
    counts = summarize(results)
    atomic_write_json(json_path, {
        "suite": suite,
        "meta": meta or {},
        "summary": counts,
        "ok": counts["fail"] == 0 and counts["error"] == 0,
        "checks": [asdict(r) for r in results],
    })
    ts = ET.Element("testsuite", name=suite, tests=str(len(results)), failures=str(counts["fail"]),
                    errors=str(counts["error"]), skipped=str(counts["skip"]),
                    time=f"{sum(r.duration for r in results):.3f}")
    if meta:
        props = ET.SubElement(ts, "properties")
        for k, v in sorted(meta.items()):
            ET.SubElement(props, "property", name=str(k), value=str(v))
    for r in results:
        tc = ET.SubElement(ts, "testcase", classname=suite, name=r.name, time=f"{r.duration:.3f}")
        if r.status == "fail":
            ET.SubElement(tc, "failure", message=r.reason).text = r.reason
        elif r.status == "error":
            ET.SubElement(tc, "error", message=r.reason).text = r.reason
        elif r.status == "skip":
            ET.SubElement(tc, "skipped", message=r.reason)
        if r.evidence:
            ET.SubElement(tc, "system-out").text = "\n".join(f"{k}: {v}" for k, v in r.evidence.items())
    ET.indent(ts)
    atomic_write_text(junit_path, ET.tostring(ts, encoding="unicode") + "\n")


def print_table(results: list[CheckResult], *, stream: TextIO | None = None) -> None:
    stream = stream or sys.stdout
    width = max((len(r.name) for r in results), default=10)
    for r in results:
        line = f"{r.status.upper():5} {r.name:<{width}}  {r.duration:6.1f}s"
        if r.reason:
            line += f"  {r.reason}"
        print(line, file=stream)
    c = summarize(results)
    print(f"{c['pass']} passed, {c['fail']} failed, {c['skip']} skipped, {c['error']} errors", file=stream)
