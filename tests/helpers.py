"""Small helpers the tests share: free ports, unique names, polling, stopping processes.

Ports come from the serving package's own helper, so tests and product pick ports by
one rule.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Callable
from typing import TypeVar

import pytest
from modelfleet_serving.processes import free_port, free_ports

__all__ = ["free_port", "free_ports", "stop_group", "unique_name", "wait_for", "wait_until"]

T = TypeVar("T")


def unique_name(prefix: str) -> str:
    """A name no other test in the shared control plane uses."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def wait_for(
    probe: Callable[[], T | None],
    what: str,
    timeout: float = 60.0,
    interval: float = 0.5,
    details: Callable[[], str] | None = None,
) -> T:
    """The first answer of `probe` that is neither None nor False, asked every `interval`.

    Fails the test naming `what` after `timeout`, with `details()` (a log's tail, say)
    when given.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value is not None and value is not False:
            return value
        if time.monotonic() > deadline:
            extra = f"\n{details()}" if details is not None else ""
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}{extra}")
        time.sleep(interval)


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    """Poll `condition` every half second; fail the test naming `what` after `timeout`."""
    wait_for(lambda: condition() or None, what, timeout)


def stop_group(
    process: subprocess.Popen[bytes] | subprocess.Popen[str],
    first: signal.Signals = signal.SIGTERM,
    timeout: float = 30.0,
) -> None:
    """Stop the process group led by `process`: `first`, then SIGKILL after `timeout`;
    then SIGKILL whatever is left of its session.

    SIGINT as `first` lets a command shut its own Ray down the way Ctrl-C does. The
    session sweep catches processes that left the group and outlived their parent:
    Ray workers run in process groups of their own, and a vLLM engine core whose Ray
    worker was killed keeps running, reparented to init, in the session `process`
    started (it is started with `start_new_session=True`).
    """
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, first)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=timeout)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    for pid in _session_members(process.pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _session_members(session: int) -> list[int]:
    """The processes whose session id is `session` (Linux: read from /proc)."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if os.getsid(int(entry)) == session:
                members.append(int(entry))
    return members
