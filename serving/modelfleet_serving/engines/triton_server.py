"""Run one ``tritonserver`` process on 127.0.0.1 and know when it is ready.

A replica without ``engine.triton.url`` owns its server: it starts it with this class on
free loopback ports, waits for Triton's readiness endpoint, and stops it on shutdown.
The tests start their servers with it too.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

from modelfleet_serving.engines.triton_install import TritonInstall, ensure_tritonserver

log = logging.getLogger(__name__)

# Loading TensorRT engines takes minutes; the python stand-in takes seconds.
READY_TIMEOUT_S = 600.0
# How long Triton waits for in-flight requests when asked to stop, and how long we
# wait beyond that before killing it.
EXIT_TIMEOUT_S = 5
STOP_GRACE_S = 10.0


class TritonServerError(RuntimeError):
    """The server failed to start or exited; the message carries its last log lines."""


class TritonServer:
    """A ``tritonserver`` child process serving ``repository`` on free loopback ports.

    ``command`` is the start of the command line; when it is None, the ``tritonserver``
    on PATH (as in Triton's images) is used, else the CPU build from ``nvidia-pytriton``
    is installed and used. The ports are chosen once: a server stopped and started
    again comes back where its clients look for it.
    """

    def __init__(
        self,
        repository: Path,
        *,
        command: Sequence[str] | None = None,
        env: Mapping[str, str] | None = None,
        log_path: Path | None = None,
    ) -> None:
        self.repository = repository
        self._command = list(command) if command else None
        self._extra_env = dict(env or {})
        self.http_port, self.grpc_port, self.metrics_port = _free_ports()
        self.log_path = log_path or Path(tempfile.mkstemp(prefix="tritonserver-", suffix=".log")[1])
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def grpc_url(self) -> str:
        """``host:port`` for ``tritonclient.grpc``."""
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def start(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        """Start the server and block until it reports ready (all models loaded)."""
        self.launch()
        try:
            self.wait_ready(timeout_s)
        except BaseException:
            self.stop()
            raise

    def launch(self) -> None:
        """Start the process without waiting for readiness; a no-op while it runs.

        Linux delivers the parent-death signal when the *thread* that forked the child
        ends, so call this from a thread that lives as long as the server should (the
        event loop's, not a worker pool's).
        """
        if self.is_running():
            return
        if self._command is not None:
            command, env = list(self._command), dict(os.environ)
        elif on_path := shutil.which("tritonserver"):
            # Triton and TensorRT-LLM images put their build on PATH.
            command, env = [on_path], dict(os.environ)
        else:
            install: TritonInstall = ensure_tritonserver()
            command, env = install.command(), install.environment()
        env.update(self._extra_env)
        command += [
            f"--model-repository={self.repository}",
            "--http-address=127.0.0.1",
            f"--http-port={self.http_port}",
            "--grpc-address=127.0.0.1",
            f"--grpc-port={self.grpc_port}",
            "--metrics-address=127.0.0.1",
            f"--metrics-port={self.metrics_port}",
            "--allow-metrics=true",
            # Without a GPU, GPU metrics only add a start-up error to the log.
            "--allow-gpu-metrics=false",
            f"--exit-timeout-secs={EXIT_TIMEOUT_S}",
        ]
        log.info("starting %s", " ".join(command))
        with self.log_path.open("ab") as out:
            self._process = subprocess.Popen(
                command,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                # Its own process group, so that stop() also reaches the python-backend
                # stubs it forks.
                start_new_session=True,
                preexec_fn=_set_parent_death_signal,
            )

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        """Block until the launched server is ready; raise if it exits or times out."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.is_running():
                raise TritonServerError(
                    f"tritonserver exited with code {self._returncode()} while starting:\n"
                    f"{self.log_tail()}"
                )
            if self.is_ready():
                return
            time.sleep(0.25)
        raise TritonServerError(
            f"tritonserver was not ready after {timeout_s:.0f} s:\n{self.log_tail()}"
        )

    def is_running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def is_ready(self) -> bool:
        """Triton's own readiness: the server is up and every model is loaded."""
        try:
            with urllib.request.urlopen(f"{self.http_url}/v2/health/ready", timeout=2) as resp:
                return bool(resp.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after a grace period); idempotent."""
        process = self._process
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=EXIT_TIMEOUT_S + STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            log.warning("tritonserver %d did not stop in time; killing it", process.pid)
        # The stubs of the python backend may outlive the server; kill the whole group.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()

    def _returncode(self) -> int | None:
        return self._process.returncode if self._process else None

    def log_tail(self, lines: int = 40) -> str:
        """The last ``lines`` lines of the server's log."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def __enter__(self) -> TritonServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _free_ports() -> tuple[int, int, int]:
    """Three distinct free TCP ports on 127.0.0.1.

    The sockets stay open until all are chosen so the ports differ; another process may
    still take one before Triton binds it, which then shows as a start-up failure.
    """
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(3)]
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        http, grpc, metrics = (sock.getsockname()[1] for sock in sockets)
        return http, grpc, metrics


def _set_parent_death_signal() -> None:
    """Ask Linux to SIGTERM the server if its parent (the replica) dies uncleanly.

    Runs in the child between fork and exec, so a killed replica or test run never
    leaves a server behind holding its ports.
    """
    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)
