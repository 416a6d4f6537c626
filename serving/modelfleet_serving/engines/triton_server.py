"""Run one ``tritonserver`` process on 127.0.0.1 and know when it is ready.

A replica without ``engine.triton.url`` owns its server: it starts it with this class on
free loopback ports, waits for Triton's readiness endpoint, and stops it on shutdown.
The tests start their servers with it too.

The command line is ``engine.triton.serverCommand`` when given (the image's own way to
start Triton, e.g. ``mpirun ... tritonserver`` for a TensorRT-LLM engine split over
several GPUs), else the ``tritonserver`` on PATH, else the CPU build of
``nvidia-pytriton``. The repository and the loopback ports reach it in one of two ways:

* the command holds none of the placeholders below: modelfleet appends tritonserver's
  own flags (``--model-repository=…``, ``--http-address=127.0.0.1``, ``--http-port=…``,
  the same for gRPC and metrics, ``--allow-metrics=true``, ``--exit-timeout-secs=…``),
  which suits ``tritonserver`` itself or a wrapper that ends in ``exec tritonserver "$@"``;
* the command holds placeholders: modelfleet replaces ``{repository}``, ``{http_port}``,
  ``{grpc_port}`` and ``{metrics_port}`` wherever they appear and appends nothing, for
  launchers that spell the flags their own way. ``{http_port}`` (readiness) and
  ``{grpc_port}`` (requests) must appear; without ``{metrics_port}`` the scheduler
  gauges fall back to what the replica counts itself.

The command must stay in the foreground for as long as the server runs (a launcher
that starts tritonserver in the background and exits reads as a server that exited).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from modelfleet_serving.engines.triton_install import TritonInstall, ensure_tritonserver
from modelfleet_serving.processes import free_ports, set_parent_death_signal

log = logging.getLogger(__name__)

# Loading TensorRT engines takes minutes; the python stand-in takes seconds.
READY_TIMEOUT_S = 600.0
# How long Triton waits for in-flight requests when asked to stop, and how long we
# wait beyond that before killing it.
EXIT_TIMEOUT_S = 5
STOP_GRACE_S = 10.0


# What a server command may hold instead of taking the flags modelfleet appends.
PLACEHOLDERS = ("{repository}", "{http_port}", "{grpc_port}", "{metrics_port}")
# Without these the replica could neither see the server ready nor send it requests.
REQUIRED_PLACEHOLDERS = ("{http_port}", "{grpc_port}")


@dataclass(frozen=True)
class ServerPorts:
    """The loopback ports one server listens on."""

    http: int
    grpc: int
    metrics: int


def uses_placeholders(command: Sequence[str]) -> bool:
    """Whether ``command`` spells the repository and ports itself (see module doc)."""
    return any(p in arg for arg in command for p in PLACEHOLDERS)


def command_line(
    command: Sequence[str],
    repository: Path,
    ports: ServerPorts,
    *,
    extra_flags: Sequence[str] = (),
) -> list[str]:
    """The full command line that starts a server of ``repository`` on ``ports``.

    ``extra_flags`` go after the flags modelfleet appends; they are dropped, like those,
    when ``command`` holds placeholders. Raises ValueError when it holds some but not
    the ones the replica needs.
    """
    if uses_placeholders(command):
        missing = [p for p in REQUIRED_PLACEHOLDERS if not any(p in arg for arg in command)]
        if missing:
            raise ValueError(
                f"engine.triton.serverCommand uses placeholders but lacks {', '.join(missing)}: "
                "the replica checks readiness on the HTTP port and sends requests to the "
                "gRPC port; add them, or drop every placeholder to let modelfleet append "
                "tritonserver's flags"
            )
        values = {
            "{repository}": str(repository),
            "{http_port}": str(ports.http),
            "{grpc_port}": str(ports.grpc),
            "{metrics_port}": str(ports.metrics),
        }
        substituted = []
        for arg in command:
            for placeholder, value in values.items():
                arg = arg.replace(placeholder, value)
            substituted.append(arg)
        return substituted
    return [
        *command,
        f"--model-repository={repository}",
        "--http-address=127.0.0.1",
        f"--http-port={ports.http}",
        "--grpc-address=127.0.0.1",
        f"--grpc-port={ports.grpc}",
        "--metrics-address=127.0.0.1",
        f"--metrics-port={ports.metrics}",
        "--allow-metrics=true",
        f"--exit-timeout-secs={EXIT_TIMEOUT_S}",
        *extra_flags,
    ]


class TritonServerError(RuntimeError):
    """The server failed to start or exited; the message carries its last log lines."""


class TritonServer:
    """A ``tritonserver`` child process serving ``repository`` on free loopback ports.

    ``command`` is the server command (see the module doc for how the repository and
    ports reach it); when it is None, the ``tritonserver`` on PATH (as in Triton's
    images) is used, else the CPU build from ``nvidia-pytriton`` is installed and used.
    The ports are chosen once: a server stopped and started again comes back where its
    clients look for it.
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
        self.http_port, self.grpc_port, self.metrics_port = free_ports(3)
        if self._command is not None:
            # A command that cannot work fails the replica now, not after a readiness
            # timeout of several minutes.
            command_line(self._command, repository, self.ports)
        self.log_path = log_path or Path(tempfile.mkstemp(prefix="tritonserver-", suffix=".log")[1])
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def ports(self) -> ServerPorts:
        """The loopback ports chosen for this server."""
        return ServerPorts(http=self.http_port, grpc=self.grpc_port, metrics=self.metrics_port)

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
        extra_flags: list[str] = []
        if self._command is not None:
            base, env = list(self._command), dict(os.environ)
        elif on_path := shutil.which("tritonserver"):
            # Triton and TensorRT-LLM images put their build on PATH.
            base, env = [on_path], dict(os.environ)
        else:
            install: TritonInstall = ensure_tritonserver()
            base, env = install.command(), install.environment()
            # The CPU build runs where there is no GPU, whose metrics would only add a
            # start-up error to the log.
            extra_flags.append("--allow-gpu-metrics=false")
        env.update(self._extra_env)
        command = command_line(base, self.repository, self.ports, extra_flags=extra_flags)
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
                preexec_fn=set_parent_death_signal,
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
