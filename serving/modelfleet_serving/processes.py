"""Free ports and child processes: the few helpers every launcher here needs.

`modelfleet serve` picks a port, the Triton engine starts its own tritonserver, and the
tests start control planes and servers; all of them use these, so each rule is
written once.
"""

from __future__ import annotations

import contextlib
import ctypes
import signal
import socket

LOOPBACK = "127.0.0.1"

# Looked up at import rather than in a forked child, where loading a library could
# deadlock on a lock held by another thread of the parent at fork time.
_prctl = ctypes.CDLL(None, use_errno=True).prctl
_PR_SET_PDEATHSIG = 1


def free_ports(count: int, host: str = LOOPBACK) -> list[int]:
    """`count` distinct TCP ports on `host` that nothing listens on right now.

    All sockets stay open until every port is chosen, so the ports differ from each
    other; another process may still take one before ours binds it, which the caller
    then sees as a start-up failure.
    """
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind((host, 0))
        return [int(sock.getsockname()[1]) for sock in sockets]


def free_port(host: str = LOOPBACK) -> int:
    """One TCP port on `host` that nothing listens on right now."""
    return free_ports(1, host)[0]


def set_parent_death_signal() -> None:
    """Ask Linux to SIGTERM this process when its parent dies.

    Meant as `preexec_fn` of `subprocess.Popen`: it runs in the child between fork and
    exec, so a parent killed without cleaning up (a replica, a test run) leaves no
    server behind holding its ports.
    """
    _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
