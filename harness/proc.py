"""The one subprocess wrapper.

Every external command goes through :func:`run`: the quoted argv is logged, all output is appended
to a per-step log file, a deadline is honoured, and failure raises a typed error naming the step and
the log. Long steps can report progress through a callback that sees each output line.
"""
from __future__ import annotations

import logging
import os
import re
import shlex
import shutil
import subprocess
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from harness.errors import CommandFailed, CommandTimeout, ToolMissing
from harness.progress import Timer

LOG = logging.getLogger(__name__)
#: A command-line argument: a string or a path (converted with os.fspath).
Arg = str | os.PathLike[str]


def quote(argv: Iterable[Arg]) -> str:
    return shlex.join(os.fspath(a) for a in argv)


@dataclass
class Result:
    argv: list[str]
    returncode: int
    log: Path
    duration: float
    tail: list[str]


def require_tool(name: str, *, step: str, hint: str = "") -> str:
    """Return the path of ``name`` or raise ToolMissing naming the step."""
    path = shutil.which(name)
    if not path:
        msg = f"required program {name!r} not found on PATH"
        if hint:
            msg += f"; {hint}"
        raise ToolMissing(msg, step=step)
    return path


def run(
    argv: Sequence[Arg],
    *,
    step: str,
    log: Path,
    cwd: Path | str | None = None,
    env: dict[str, str] | None = None,
    timeout: float | None = None,
    on_line: Callable[[str], None] | None = None,
    check: bool = True,
    input_text: str | None = None,
    tail_lines: int = 20,
) -> Result:
    """Run ``argv``, appending its output to ``log``.

    Raises CommandFailed (non-zero exit) or CommandTimeout (deadline passed; the process group is
    killed). With ``check=False`` a non-zero exit is returned instead of raised.
    """
    args: list[str] = [os.fspath(a) for a in argv]
    require_tool(args[0], step=step) if os.sep not in args[0] else None
    log = Path(log)
    log.parent.mkdir(parents=True, exist_ok=True)
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    LOG.info("[%s] $ %s", step, quote(args))
    tail: list[str] = []
    clock = Timer.begin()
    with open(log, "a", encoding="utf-8", errors="replace") as fh:
        fh.write(f"\n### step {step}: $ {quote(args)}\n")
        if cwd:
            fh.write(f"### cwd: {cwd}\n")
        fh.flush()
        proc = subprocess.Popen(
            args,
            cwd=cwd,
            env=full_env,
            stdin=subprocess.PIPE if input_text is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            bufsize=1,
            start_new_session=True,
        )
        timed_out = threading.Event()

        def _kill() -> None:
            timed_out.set()
            try:
                os.killpg(proc.pid, 9)
            except ProcessLookupError:
                pass

        timer = threading.Timer(timeout, _kill) if timeout else None
        if timer:
            timer.daemon = True
            timer.start()
        try:
            if input_text is not None:
                assert proc.stdin is not None
                proc.stdin.write(input_text)
                proc.stdin.close()
            assert proc.stdout is not None
            for line in proc.stdout:
                fh.write(line)
                tail.append(line.rstrip("\n"))
                if len(tail) > tail_lines:
                    del tail[0]
                if on_line:
                    on_line(line)
            proc.wait()
        except BaseException:
            _kill()
            proc.wait()
            raise
        finally:
            if timer:
                timer.cancel()
        duration = clock.elapsed
        fh.write(f"### exit {proc.returncode} after {duration:.1f}s\n")
    result = Result(args, proc.returncode, log, duration, tail)
    if timed_out.is_set():
        raise CommandTimeout(
            f"{Path(args[0]).name} timed out after {timeout:.0f}s", step=step, log=log,
            returncode=proc.returncode, argv=args,
        )
    if check and proc.returncode != 0:
        last = first_error(log) or next((t.strip()[:200] for t in reversed(tail) if t.strip()), "")
        raise CommandFailed(
            f"{Path(args[0]).name} exited {proc.returncode}" + (f": {last}" if last else ""),
            step=step, log=log, returncode=proc.returncode, argv=args,
        )
    return result


def interactive(argv: Sequence[Arg], *, step: str, cwd: Path | str | None = None) -> int:
    """Run an interactive program (menuconfig) on this terminal; its exit status. Logged, not captured."""
    args = [os.fspath(a) for a in argv]
    require_tool(args[0], step=step) if os.sep not in args[0] else None
    LOG.info("[%s] $ %s", step, quote(args))
    return subprocess.run(args, cwd=cwd, check=False).returncode


def capture(argv: Sequence[Arg], *, step: str, cwd: Path | str | None = None, env: dict[str, str] | None = None,
            timeout: float = 60, log: Path | None = None) -> str:
    """Run a short command and return its stdout (for version queries and the like). With ``log``,
    the command and its output are appended there and a failure names that log."""
    args: list[str] = [os.fspath(a) for a in argv]
    require_tool(args[0], step=step) if os.sep not in args[0] else None
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    LOG.debug("[%s] $ %s", step, quote(args))
    try:
        cp = subprocess.run(args, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise CommandTimeout(f"{quote(args)} timed out after {timeout}s", step=step, argv=args, log=log) from exc
    if log is not None:
        Path(log).parent.mkdir(parents=True, exist_ok=True)
        with open(log, "a", encoding="utf-8", errors="replace") as fh:
            fh.write(f"\n### step {step}: $ {quote(args)}\n{cp.stdout}{cp.stderr}### exit {cp.returncode}\n")
    if cp.returncode != 0:
        # one line: the last thing the command said (stderr first), never a multi-line dump
        said = next((ln.strip() for text in (cp.stderr, cp.stdout) for ln in reversed(text.splitlines())
                     if ln.strip()), "")
        raise CommandFailed(
            f"{quote(args)} exited {cp.returncode}" + (f": {said[:200]}" if said else ""), step=step,
            returncode=cp.returncode, argv=args, log=log,
        )
    return cp.stdout


_ERROR_LINE = re.compile(r"(\berror:|\*\*\* .*Error \d+|undefined reference|No rule to make target|"
                         r"not found|No such file|fatal:)", re.I)


def first_error(log: Path) -> str:
    """The first error-looking line of the last step in ``log`` (for one-line error messages)."""
    try:
        text = Path(log).read_text(errors="replace")
    except OSError:
        return ""
    start = text.rfind("\n### step")
    for line in text[max(start, 0):].splitlines():
        if not line.startswith("###") and _ERROR_LINE.search(line):
            return line.strip()[:200]
    return ""
