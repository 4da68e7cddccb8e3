"""The CI workflow (.github/workflows/ci.yml) is valid and does what docs/release.md says: GitHub's
workflow schema (check-jsonschema's vendored copy), actionlint where installed, and the structure:
tests on every push, a matrix over the arches, ./bootstrap, caches, JUnit, the release gate on tags
and publish only after every gate job."""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from test_noxfile import sessions

from harness.arch import ARCHES
from harness.layout import REPO

yaml = pytest.importorskip("yaml", reason="PyYAML is not installed (pip install -e '.[test]')")
WORKFLOWS = sorted((REPO / ".github" / "workflows").glob("*.yml"))
CI = REPO / ".github" / "workflows" / "ci.yml"


def _load(path: Path = CI) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text())
    if True in data:  # YAML 1.1 reads the key "on" as a boolean
        data["on"] = data.pop(True)
    return data


def _steps(job: dict[str, Any]) -> list[dict[str, Any]]:
    return list(job.get("steps", []))


def _runs(job: dict[str, Any]) -> str:
    return "\n".join(s.get("run", "") for s in _steps(job))


def _uses(job: dict[str, Any], action: str) -> list[dict[str, Any]]:
    return [s for s in _steps(job) if str(s.get("uses", "")).split("@")[0] == action]


def test_workflows_exist():
    assert CI in WORKFLOWS


def test_workflows_match_githubs_schema():
    exe = shutil.which("check-jsonschema")
    if not exe:
        pytest.skip("check-jsonschema is not installed (pip install -e '.[test]' installs it)")
    cp = subprocess.run([exe, "--builtin-schema", "vendor.github-workflows", *map(str, WORKFLOWS)],
                        capture_output=True, text=True, timeout=120)
    assert cp.returncode == 0, cp.stdout + cp.stderr


def test_actionlint():
    exe = shutil.which("actionlint")
    if not exe:
        pytest.skip("actionlint is not installed (its PyPI wrapper downloads the binary from GitHub at install "
                    "time, which these hosts cannot reach; the schema and structure checks stand in)")
    cp = subprocess.run([exe, "-no-color", *map(str, WORKFLOWS)], capture_output=True, text=True, timeout=120,
                        cwd=REPO)
    assert cp.returncode == 0, cp.stdout + cp.stderr


def test_tests_run_on_every_push_and_tags_trigger_the_release():
    on = _load()["on"]
    assert on["push"]["branches"] == ["**"] and on["push"]["tags"]
    assert "pull_request" in on


def test_every_job_sets_the_host_up_with_bootstrap_on_debian_12():
    for name, job in _load()["jobs"].items():
        assert job["container"]["image"] == "debian:12", name
        assert "./bootstrap " in _runs(job), f"job {name} does not use ./bootstrap"
        assert job.get("timeout-minutes"), f"job {name} has no timeout"


def test_needs_name_existing_jobs():
    jobs = _load()["jobs"]
    for name, job in jobs.items():
        needs = job.get("needs", [])
        for need in [needs] if isinstance(needs, str) else needs:
            assert need in jobs, f"{name} needs unknown job {need}"


def test_integration_is_a_matrix_over_the_arches_that_partitions_the_tests():
    job = _load()["jobs"]["integration"]
    include = job["strategy"]["matrix"]["include"]
    assert sorted(i["arch"] for i in include) == sorted(ARCHES)
    selects = {i["arch"]: i["select"] for i in include}
    assert selects == {"amd64": "not arm64", "arm64": "arm64"}, "every test must run in exactly one job"
    assert "${{ matrix.select }}" in _runs(job) and "--junitxml" in _runs(job)


def test_caches_hold_the_harness_cache_and_ccache_but_not_the_bootstrap_stamp():
    wf = _load()
    ccache_dir = wf["env"]["CCACHE_DIR"]
    assert "NEONVM_CCACHE_REMOTE" in wf["env"]
    job = wf["jobs"]["integration"]
    paths = [str(c["with"]["path"]) for c in _uses(job, "actions/cache")]
    harness = next(p for p in paths if "~/.cache/neonvm-kernel" in p)
    # a restored stamp would make ./bootstrap skip installing the packages on a fresh container
    assert "!~/.cache/neonvm-kernel/host-packages.stamp" in harness
    assert any(p.strip() in ("${{ env.CCACHE_DIR }}", ccache_dir) for p in paths)


def test_junit_is_uploaded_as_test_results_even_when_tests_fail():
    jobs = _load()["jobs"]
    for name in ("unit", "integration"):
        reports = _uses(jobs[name], "mikepenz/action-junit-report")
        assert reports and reports[0]["if"] == "always()", name
        assert jobs[name]["permissions"]["checks"] == "write"
        assert any(s.get("if") == "always()" for s in _uses(jobs[name], "actions/upload-artifact"))


def test_release_gate_runs_on_tags_and_keeps_the_release_directory():
    jobs = _load()["jobs"]
    release = jobs["release"]
    assert release["if"] == "startsWith(github.ref, 'refs/tags/')"
    assert "nox -s release" in _runs(release) and "SOURCE_DATE_EPOCH" in _runs(release)
    upload = _uses(release, "actions/upload-artifact")[0]
    assert upload["with"]["path"] == "out/release/" and upload["if"] == "always()"
    assert "nox -s reproduce -- amd64" in _runs(jobs["reproduce"])


def test_publish_only_after_every_gate_job_passed():
    jobs = _load()["jobs"]
    publish = jobs["publish"]
    gates = {n for n, j in jobs.items() if n != "publish" and j.get("if", "").startswith("startsWith(github.ref")}
    assert gates == {"release", "reproduce"} and set(publish["needs"]) == gates
    # no always()/failure() that would let it run after a failed gate
    assert not re.search(r"always\(\)|failure\(\)|cancelled\(\)", publish.get("if", ""))
    assert publish["permissions"]["packages"] == "write"
    assert "nox -s publish" in _runs(publish)
    # the credentials reach skopeo through the environment, and only in this job
    text = CI.read_text()
    assert text.count("secrets.") == 1 and "NEONVM_REGISTRY_PASSWORD: ${{ secrets.GITHUB_TOKEN }}" in text


def test_nox_sessions_the_workflow_calls_exist():
    called = set(re.findall(r"nox -s ([\w-]+)", CI.read_text()))
    assert called and called <= set(sessions())


def test_run_scripts_are_valid_bash():
    for name, job in _load()["jobs"].items():
        for step in _steps(job):
            if "run" not in step:
                continue
            script = re.sub(r"\$\{\{[^}]*\}\}", "X", step["run"])
            cp = subprocess.run(["bash", "-n"], input=script, capture_output=True, text=True, timeout=30)
            assert cp.returncode == 0, f"{name}/{step.get('name', '?')}: {cp.stderr}"
