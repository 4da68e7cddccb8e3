"""harness/proc.py: the subprocess wrapper's errors are one line naming the step."""
from __future__ import annotations

import pytest

from harness import proc
from harness.errors import CommandFailed


def test_capture_failure_is_one_line_with_the_last_words():
    with pytest.raises(CommandFailed) as exc:
        proc.capture(["sh", "-c", "echo first >&2; echo 'the real reason' >&2; exit 3"], step="probe")
    text = str(exc.value)
    assert "\n" not in text and text.startswith("[probe] sh -c ") and text.endswith("exited 3: the real reason")
    assert exc.value.returncode == 3


def test_capture_failure_without_output():
    with pytest.raises(CommandFailed) as exc:
        proc.capture(["false"], step="probe")
    assert str(exc.value) == "[probe] false exited 1"
