"""pytest fixtures around a running `modelfleet serve` (imported by tests/conftest.py)."""

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

_ROOT = Path(__file__).resolve().parents[1]
# vLLM on CPU plus a local Ray on a loaded two-core machine: minutes, not seconds.
_SERVE_START_TIMEOUT_S = 900.0
_SERVE_STOP_TIMEOUT_S = 60.0
_SERVING_LINE = re.compile(r"modelfleet: serving '[^']*' at (http://\S+)/v1")


@pytest.fixture(scope="session")
def tiny_cpu_serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`modelfleet serve manifests/examples/tiny-cpu.yaml` on a free port, once a session.

    Yields the base URL (`http://127.0.0.1:PORT`, without `/v1`) once the command says
    it serves. Starting a local Ray costs most of the two cores for a while, so every
    test that needs a running server should share this one.
    """
    log_path = tmp_path_factory.mktemp("serve") / "serve.log"
    command = [
        str(Path(sys.executable).with_name("modelfleet")),
        "serve",
        str(_ROOT / "manifests" / "examples" / "tiny-cpu.yaml"),
        "--port",
        "0",
    ]
    with log_path.open("w") as log:
        # A session of its own, so stopping it also reaches the Ray processes it started.
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, cwd=_ROOT, start_new_session=True
        )
    try:
        yield wait_for_serving(process, log_path)
    finally:
        stop_group(process)


def wait_for_serving(process: subprocess.Popen[bytes], log_path: Path) -> str:
    deadline = time.monotonic() + _SERVE_START_TIMEOUT_S
    while time.monotonic() < deadline:
        found = _SERVING_LINE.search(log_path.read_text(errors="replace"))
        if found:
            return found.group(1)
        if process.poll() is not None:
            break
        time.sleep(1)
    tail = log_path.read_text(errors="replace")[-4000:]
    pytest.fail(f"`modelfleet serve` did not come up (exit code {process.poll()}):\n{tail}")


def stop_group(process: subprocess.Popen[bytes]) -> None:
    """Ctrl-C first, so the command shuts Ray down itself; then kill what is left."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGINT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=_SERVE_STOP_TIMEOUT_S)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()
