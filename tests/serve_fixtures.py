"""pytest fixtures around a running `modelfleet serve` (imported by tests/conftest.py)."""

import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import stop_group

_ROOT = Path(__file__).resolve().parents[1]
# vLLM on CPU plus a local Ray on a loaded two-core machine: minutes, not seconds.
_SERVE_START_TIMEOUT_S = 900.0
_SERVE_STOP_TIMEOUT_S = 60.0
_SERVING_LINE = re.compile(r"modelfleet: serving '[^']*' at (http://\S+)/v1")
# The command keeps Ray's and the engine's output in a log file of its own and names it.
_LOG_FILE_LINE = re.compile(r"^modelfleet: Ray's and \S+ logs go to (\S+) ", re.MULTILINE)
# The file holding the output of the session's `modelfleet serve`, by the URL it serves.
_OUTPUTS: dict[str, Path] = {}


def serve_output(base_url: str) -> str:
    """What the session's `modelfleet serve` at `base_url` printed so far."""
    return _OUTPUTS[base_url].read_text(errors="replace")


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
        base_url = wait_for_serving(process, log_path)
        _OUTPUTS[base_url] = log_path
        yield base_url
    finally:
        stop_serve(process)


def serve_log_file(output: str) -> Path | None:
    """The log file `modelfleet serve` names in its output, if it named one yet."""
    found = _LOG_FILE_LINE.search(output)
    return Path(found.group(1)) if found else None


def wait_for_serving(process: subprocess.Popen[bytes], log_path: Path) -> str:
    """The base URL once the command in `process` (output in `log_path`) serves.

    Fails the test, with the command's output and the end of its log file, when the
    command exits or does not serve in time.
    """
    deadline = time.monotonic() + _SERVE_START_TIMEOUT_S
    while time.monotonic() < deadline:
        found = _SERVING_LINE.search(log_path.read_text(errors="replace"))
        if found:
            return found.group(1)
        if process.poll() is not None:
            break
        time.sleep(1)
    output = log_path.read_text(errors="replace")
    details = ""
    serve_log = serve_log_file(output)
    if serve_log is not None and serve_log.exists():
        details = f"\n--- end of {serve_log}:\n{serve_log.read_text(errors='replace')[-4000:]}"
    pytest.fail(
        f"`modelfleet serve` did not come up (exit code {process.poll()}):\n"
        f"{output[-4000:]}{details}"
    )


def stop_serve(process: subprocess.Popen[bytes]) -> None:
    """Ctrl-C first, so the command shuts Ray down itself; then kill what is left."""
    stop_group(process, signal.SIGINT, _SERVE_STOP_TIMEOUT_S)
