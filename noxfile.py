"""Sessions for building, packaging and verifying the NeonVM guest kernel.

Run through ./bootstrap (which installs the host packages and the project's virtualenv), e.g.
``./bootstrap nox -s build-amd64``. Sessions run in that environment (the libguestfs bindings exist
only for Debian's /usr/bin/python3) and hand the work to ``python -m harness``.
"""
import nox

from harness.arch import ARCHES as ARCH_TABLE

nox.options.default_venv_backend = "none"
nox.options.sessions = ["tests"]
ARCHES = tuple(ARCH_TABLE)
ARCH_CHOICE = "{" + "|".join(ARCHES) + "}"


def _harness(session: nox.Session, *args: str) -> None:
    session.run("python", "-m", "harness", *args, external=True)


def _arch_arg(session: nox.Session, usage: str) -> tuple[str, list[str]]:
    if not session.posargs or session.posargs[0] not in ARCHES:
        session.error(f"usage: nox -s {session.name} -- {ARCH_CHOICE} {usage}".rstrip())
    return session.posargs[0], list(session.posargs[1:])


@nox.session(name="tests")
def tests(session: nox.Session) -> None:
    """Run the test suite: lint, type check, unit tests, then the smoke kernel built, imaged,
    inspected and booted."""
    if not session.posargs:  # a selection of tests (`-- -k ...`) runs just those
        lint(session)
        typecheck(session)
    session.run("python", "-m", "pytest", *session.posargs, external=True)


@nox.session(name="lint")
def lint(session: nox.Session) -> None:
    """ruff over the package, the tests and this file (rules in pyproject.toml)."""
    session.run("ruff", "check", "harness", "tests", "noxfile.py", external=True)


@nox.session(name="typecheck")
def typecheck(session: nox.Session) -> None:
    """mypy, strict, over the package and this file (settings in pyproject.toml)."""
    session.run("mypy", external=True)


@nox.session(name="unit")
def unit(session: nox.Session) -> None:
    """Run only the fast unit tests."""
    session.run("python", "-m", "pytest", "tests/unit", *session.posargs, external=True)


@nox.session(name="audit")
def audit(session: nox.Session) -> None:
    """Audit the committed configs: every requested option present, and current with the fragments."""
    _harness(session, "audit", *session.posargs)


@nox.session(name="update-configs")
def update_configs(session: nox.Session) -> None:
    """Re-resolve the committed per-arch configs from the fragments and show what changed."""
    _harness(session, "update-configs", *session.posargs)


@nox.session(name="upgrade")
def upgrade(session: nox.Session) -> None:
    """Move the pin to a new kernel version: -- VERSION --debian-version V | --sha256 SHA."""
    if not session.posargs:
        session.error("usage: nox -s upgrade -- VERSION (--debian-version DEBVER | --sha256 SHA)")
    _harness(session, "upgrade", *session.posargs)


def _per_arch_sessions(arch: str) -> None:
    """build-ARCH and tools-ARCH for every arch in harness/arch.py's table."""
    a = ARCH_TABLE[arch]

    def build(session: nox.Session) -> None:
        _harness(session, "build", "--arch", arch, "--tools", *session.posargs)

    def tools(session: nox.Session) -> None:
        _harness(session, "tools", "--arch", arch, *session.posargs)

    how = "Cross-build" if a.cross_compile else "Build"
    build.__doc__ = f"{how} the {arch} kernel ({a.image_target}), its tools.img, and a manifest, into out/{arch}."
    tools.__doc__ = f"(Re)build tools.img for the built {arch} kernel."
    nox.session(name=f"build-{arch}")(build)
    nox.session(name=f"tools-{arch}")(tools)


for _arch in ARCHES:
    _per_arch_sessions(_arch)


@nox.session(name="inspect-tools")
def inspect_tools(session: nox.Session) -> None:
    """Inspect tools.img with libguestfs: -- ARCH [ARCH ...] [--variant V]."""
    if not session.posargs or session.posargs[0] not in ARCHES:
        session.error(f"usage: nox -s inspect-tools -- {ARCH_CHOICE} [ARCH ...] [--variant V]")
    _harness(session, "inspect-tools", *session.posargs)


@nox.session(name="boot-test")
def boot_test(session: nox.Session) -> None:
    """Boot the built kernel under QEMU: hotplug, stress, migration, contract, ptp_kvm, tools.img: -- ARCH [opts]."""
    arch, rest = _arch_arg(session, "[--variant V] [--dry-run] [--accel auto|kvm|tcg] [--only CHECK ...] "
                                    "[--soak N] [--require-tools] [--no-acpi-override]")
    _harness(session, "boot-test", arch, *rest)


@nox.session(name="release")
def release(session: nox.Session) -> None:
    """The release gate: build, verify and package both arches; results in out/release/release.json."""
    _harness(session, "release", *session.posargs)


@nox.session(name="publish")
def publish(session: nox.Session) -> None:
    """Push the release's OCI index and images: -- REGISTRY/REPO[:TAG] (credentials: NEONVM_REGISTRY_USER/_PASSWORD)."""
    if not session.posargs:
        session.error("usage: nox -s publish -- REGISTRY/REPOSITORY[:TAG] [--layout DIR]")
    _harness(session, "publish", *session.posargs)


@nox.session(name="reproduce")
def reproduce(session: nox.Session) -> None:
    """Build one arch twice in fresh build dirs (ccache off), compare every artifact byte for byte: -- ARCH."""
    arch, rest = _arch_arg(session, "[--variant V] [-j N] [--keep]")
    _harness(session, "reproduce", arch, *rest)


@nox.session(name="compare-config")
def compare_config(session: nox.Session) -> None:
    """Compare the production config with a reference config, every difference explained: -- ARCH REFERENCE."""
    if len(session.posargs) < 2:
        session.error(f"usage: nox -s compare-config -- {ARCH_CHOICE} REFERENCE_CONFIG [--json PATH] "
                      "[--allow-unexplained] [--contract PATH] [--tree PATH]")
    _harness(session, "compare-config", *session.posargs)


@nox.session(name="set-config")
def set_config(session: nox.Session) -> None:
    """Set options in the production config through the fragments: -- ARCH|all CONFIG_X=V ... [--dry-run]."""
    if len(session.posargs) < 2 or session.posargs[0] not in (*ARCHES, "all"):
        session.error(f"usage: nox -s set-config -- {ARCH_CHOICE[:-1]}|all}} CONFIG_X=VALUE ... [--dry-run]")
    _harness(session, "set-config", *session.posargs)


@nox.session(name="menuconfig")
def menuconfig(session: nox.Session) -> None:
    """make menuconfig on the committed production config; saved changes go into the fragments."""
    arch, rest = _arch_arg(session, "[--dry-run]")
    _harness(session, "menuconfig", arch, *rest)


@nox.session(name="nconfig")
def nconfig(session: nox.Session) -> None:
    """make nconfig on the committed production config; saved changes go into the fragments."""
    arch, rest = _arch_arg(session, "[--dry-run]")
    _harness(session, "nconfig", arch, *rest)


@nox.session(name="compute-test")
def compute_test(session: nox.Session) -> None:
    """Boot a Debian guest with Postgres on the built kernel as NeonVM runs one: -- ARCH [--out OUT]
    [--kernel ours|debian-cloud|both]."""
    arch, rest = _arch_arg(session, "[--out OUT] [--accel auto|kvm|tcg] [--kernel ours|debian-cloud|both]")
    _harness(session, "compute-test", arch, *rest)


@nox.session(name="config-drift")
def config_drift(session: nox.Session) -> None:
    """Options the arches' production configs set differently, each requested or unexplained."""
    _harness(session, "config-drift", *session.posargs)


@nox.session(name="bench-build")
def bench_build(session: nox.Session) -> None:
    """Benchmark the build: harness overhead vs plain make, warm-ccache rebuild, no-op rebuild."""
    session.run("python", "-m", "harness.benchmarks.build", *session.posargs, external=True)


@nox.session(name="bench-tools")
def bench_tools(session: nox.Session) -> None:
    """Benchmark tools.img inspection against a bare libguestfs launch."""
    session.run("python", "-m", "harness.benchmarks.tools", *session.posargs, external=True)


@nox.session(name="bench-memory")
def bench_memory(session: nox.Session) -> None:
    """Benchmark 1 GiB virtio-mem grow/shrink under load against the idle guest: -- [ARCH ...] [--rounds N]."""
    session.run("python", "-m", "harness.benchmarks.memory", *session.posargs, external=True)


@nox.session(name="bench-compute")
def bench_compute(session: nox.Session) -> None:
    """The compute guest on our kernel vs Debian's cloud kernel: -- [ARCH] [--out OUT] [--rounds N]."""
    session.run("python", "-m", "harness.benchmarks.compute", *session.posargs, external=True)


@nox.session(name="bench-boot")
def bench_boot(session: nox.Session) -> None:
    """Benchmark the boot test and boot-to-shell time against Debian's generic kernel."""
    session.run("python", "-m", "harness.benchmarks.boot", *session.posargs, external=True)
