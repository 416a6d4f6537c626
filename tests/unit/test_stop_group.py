"""`tests.helpers.stop_group` leaves nothing of what a test started behind."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from tests.helpers import stop_group

# Starts a grandchild in a process group of its own (as Ray does with its workers),
# prints its pid, and waits; killed, it leaves the grandchild orphaned in the session.
_PARENT = """
import subprocess, sys, time
child = subprocess.Popen(["sleep", "300"], process_group=0)
print(child.pid, flush=True)
time.sleep(300)
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().rsplit(")", 1)[1].split()[0] != "Z"


def test_a_process_that_left_the_group_is_stopped_with_the_session() -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c", _PARENT], stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    assert parent.stdout is not None
    grandchild = int(parent.stdout.readline())
    assert os.getpgid(grandchild) != parent.pid and os.getsid(grandchild) == parent.pid
    stop_group(parent, timeout=5)
    deadline = time.monotonic() + 5
    while _alive(grandchild) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(grandchild)
