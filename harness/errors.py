"""Typed errors.

Three families, because a release manager reads them differently:

* ``InputError``   - the user asked for something invalid (unknown arch, bad version, bad checksum).
* ``KernelError``  - the kernel (its source, patches, config or runtime behaviour) is wrong.
* ``InfraError``   - the harness or the host is broken (missing tool, QEMU died, timeout in a tool).

Every error names the step it happened in and, where there is one, the log file to read.
``str(err)`` is the one-line form printed by the CLI.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


class HarnessError(Exception):
    kind = "error"

    def __init__(self, message: str, *, step: str = "", log: Path | str | None = None):
        super().__init__(message)
        self.message = message
        self.step = step
        self.log = Path(log) if log else None

    def __str__(self) -> str:
        text = f"[{self.step}] {self.message}" if self.step else self.message
        if self.log:
            text += f" (log: {self.log})"
        return text


class InputError(HarnessError):
    kind = "input"


class KernelError(HarnessError):
    kind = "kernel"


class InfraError(HarnessError):
    kind = "infra"


# -- input ---------------------------------------------------------------------------------------
class UnsupportedArch(InputError):
    pass


class InvalidVersion(InputError):
    pass


class InvalidArgument(InputError):
    pass


class ChecksumMismatch(InputError):
    pass


class SourceMissing(InputError):
    pass


class SourceVersionMismatch(InputError):
    pass


class CorruptSource(InputError):
    pass


# -- kernel ----------------------------------------------------------------------------------------
class PatchFailed(KernelError):
    pass


class ConfigAuditFailed(KernelError):
    pass


class BuildFailed(KernelError):
    pass


class CheckFailed(KernelError):
    pass


# -- infra -----------------------------------------------------------------------------------------
class CommandFailed(InfraError):
    """An external command exited non-zero. Callers re-raise as a KernelError where it is one."""

    def __init__(self, message: str, *, step: str, log: Path | str | None = None, returncode: int | None = None,
                 argv: Sequence[str] | None = None):
        super().__init__(message, step=step, log=log)
        self.returncode = returncode
        self.argv = list(argv or [])


class CommandTimeout(CommandFailed):
    pass


class ToolMissing(InfraError):
    pass


class Locked(InfraError):
    pass


class QemuDied(InfraError):
    pass
