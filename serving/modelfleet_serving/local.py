"""Run a `ServingConfig` on a Ray started in this process: `modelfleet serve`.

The same application the operator deploys through a RayService, on a one-node Ray
sized for a laptop: a few logical CPUs, a small object store, no dashboard, listening
on the address given (127.0.0.1 by default).

Ray, its workers and the engines they run write to this process's standard output and
error (Ray forwards every worker's output to the driver). `output_to_file` points both
at a log file, and `LogFollower` reads that file back as it grows, so that the command
can show a person a few lines of its own while the full log stays on disk.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from types import FrameType, TracebackType
from typing import TextIO

from modelfleet_serving.config import ServingConfig, application_config
from modelfleet_serving.processes import free_port
from modelfleet_serving.serve_env import local_serve_env

# The object store only carries request and response objects here, never tensors.
OBJECT_STORE_BYTES = 128 * 1024**2
RAY_START_ATTEMPTS = 3
# How often the log follower looks for new lines.
FOLLOW_INTERVAL_S = 0.2


class Phase(StrEnum):
    """Steps of `run_local` that a caller may want to tell a person about."""

    RAY_STARTED = "ray-started"
    # Asked to stop once serving (Ctrl-C or SIGTERM); shutting down takes a few seconds.
    STOPPING = "stopping"
    # A changed config (the file was edited) is deployed and serving.
    RELOADED = "reloaded"


@dataclass(frozen=True)
class Terminal:
    """Where the command's own lines go: the streams the person is looking at."""

    out: TextIO
    err: TextIO


@contextlib.contextmanager
def output_to_file(path: Path) -> Iterator[Terminal]:
    """Send this process's standard output and error to `path`; yield the terminal.

    The redirection is of file descriptors 1 and 2, not of `sys.stdout` alone, so it
    also takes what native code writes and what the processes started meanwhile (Ray's
    GCS and raylet, and through them every worker) inherit. The yielded streams write
    to the original descriptors, duplicated first.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    saved = (os.dup(1), os.dup(2))
    path.parent.mkdir(parents=True, exist_ok=True)
    log_fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    terminal = Terminal(
        out=open(os.dup(saved[0]), "w", buffering=1, errors="replace"),  # noqa: SIM115
        err=open(os.dup(saved[1]), "w", buffering=1, errors="replace"),  # noqa: SIM115
    )
    try:
        os.dup2(log_fd, 1)
        os.dup2(log_fd, 2)
        # A file is block-buffered by default; line by line keeps the log in step with
        # what the follower reads from it.
        sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
        yield terminal
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, log_fd):
            os.close(fd)
        terminal.out.close()
        terminal.err.close()


class LogFollower:
    """Calls `on_line` with every complete line appended to `path`, from a thread.

    Use it as a context manager around the work whose output lands in the file;
    leaving it reads what is left and stops the thread.
    """

    def __init__(self, path: Path, on_line: Callable[[str], None]) -> None:
        self._path = path
        self._on_line = on_line
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="log-follower", daemon=True)

    def __enter__(self) -> LogFollower:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        with self._path.open("rb") as log:
            pending = b""
            while True:
                stopping = self._stop.is_set()
                chunk = log.read()
                if chunk:
                    pending += chunk
                    *lines, pending = pending.split(b"\n")
                    for line in lines:
                        self._deliver(line.decode("utf-8", errors="replace"))
                elif stopping:
                    return
                else:
                    self._stop.wait(FOLLOW_INTERVAL_S)

    def _deliver(self, line: str) -> None:
        try:
            self._on_line(line)
        except Exception:
            # Progress lines are a courtesy; they must never stop the server.
            logging.getLogger(__name__).debug("log follower callback failed", exc_info=True)


# How often `deploy` asks Serve whether the application runs.
DEPLOY_POLL_S = 0.5


def logical_cpus(config: ServingConfig) -> int:
    """Ray CPUs to declare: every pool at its maximum, plus one for the ingress and Serve.

    Logical, not physical: replicas mostly wait on their engine, and the engine's own
    processes are scheduled by the OS, not by Ray.
    """
    pools = sum(p.num_cpus * p.max_replicas for p in config.pools)
    return max(2, math.ceil(pools) + 1)


def _start_ray(num_cpus: int, port: int) -> None:
    import ray

    # Ray runs its workers at nice 15; here they hold the engine, which must not lose
    # the CPU to every other process on the machine.
    os.environ.setdefault("RAY_worker_niceness", "0")
    # The data plane's Serve settings (serve_env.py): the front door listens on `port`
    # itself, the LLM replicas on loopback ports of their own. Set before Ray starts,
    # so that every worker inherits them.
    for name, value in local_serve_env(port).items():
        if "PORT" in name:
            os.environ[name] = value
        else:
            os.environ.setdefault(name, value)
    # Ray's own metrics (per-request Serve counters and histograms, exported through
    # the dashboard agent) cost CPU on every hop; nobody scrapes them locally, and the
    # modelfleet_* metrics at /metrics do not depend on them.
    os.environ.setdefault("RAY_enable_metrics_collection", "0")
    # Serve tries a failing replica constructor three times per replica before it gives
    # up. Locally a failure (a missing model, a KV cache that does not fit) repeats
    # every time, and each try loads the engine again: report the first one.
    os.environ.setdefault("RAY_SERVE_MAX_PER_REPLICA_RETRY_COUNT", "1")
    for attempt in range(1, RAY_START_ATTEMPTS + 1):
        try:
            ray.init(
                num_cpus=num_cpus,
                object_store_memory=OBJECT_STORE_BYTES,
                include_dashboard=False,
                namespace="modelfleet",
                configure_logging=True,
                logging_level=logging.WARNING,
            )
            return
        except Exception as e:
            # Ray gives its raylet a fixed 30 s to register; on a machine busy with
            # other work that can pass, and a second try usually succeeds.
            if "timed out during startup" not in str(e) or attempt == RAY_START_ATTEMPTS:
                raise
            print(f"modelfleet: Ray start timed out, retrying ({attempt})", file=sys.stderr)
            ray.shutdown()


def deploy(config: ServingConfig) -> None:
    """Deploy `config` on the running Serve from a Serve config document, as KubeRay
    deploys a RayService's (`application_config`), and wait until it runs.

    Serve derives each deployment's version from that document, so deploying a config
    whose adapters alone changed reconfigures the running replicas, as in a cluster
    (`serve.run` would give every deployment a new random version and replace them).
    Raises `RuntimeError("Deploying application NAME failed: ...")` when it cannot.
    """
    from ray import serve
    from ray.serve.context import _get_global_client
    from ray.serve.schema import ServeDeploySchema

    document = {"applications": [application_config(config, config.name)]}
    client = _get_global_client()
    if client is None:
        raise RuntimeError("Serve is not running")
    client.deploy_apps(ServeDeploySchema.model_validate(document))
    # Until the controller has taken the new config, the status is the previous one's.
    time.sleep(DEPLOY_POLL_S)
    while True:
        app = serve.status().applications.get(config.name)
        status = str(app.status) if app is not None else ""
        if status.endswith("RUNNING"):
            return
        if status.endswith("DEPLOY_FAILED") and app is not None:
            raise RuntimeError(f"Deploying application {config.name} failed: {app.message}")
        time.sleep(DEPLOY_POLL_S)


def run_local(
    config: ServingConfig,
    host: str,
    port: int,
    on_ready: Callable[[str], None],
    on_phase: Callable[[Phase], None] | None = None,
    reload: Callable[[], ServingConfig | None] | None = None,
) -> int:
    """Start Ray and Serve, deploy `config`, call `on_ready(base_url)`, and block until
    SIGINT or SIGTERM; then stop Serve and Ray. Returns the exit status.

    `on_phase` hears of the steps before that (see `Phase`). A failure to start raises
    the exception Ray or Serve raised, after Serve and Ray are stopped. `reload`, asked
    once a second while serving, returns a changed config to deploy over the running
    one (Serve keeps what did not change: an adapter added or removed reconfigures the
    replicas, it does not restart them), or None.
    """
    import ray
    from ray import serve

    stop = threading.Event()

    def _stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, _stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    port = port or free_port(host)
    try:
        _start_ray(logical_cpus(config), port)
    except BaseException:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        raise
    try:
        if stop.is_set():  # Ctrl-C while Ray was starting
            return 130
        if on_phase is not None:
            on_phase(Phase.RAY_STARTED)
        # The ingress already logs every request; the proxy's copy would double it.
        # With direct ingress the front door listens on `port` itself; Serve still
        # starts its proxy, which must then keep off that port (it carries no traffic).
        serve.start(
            http_options={"host": host, "port": free_port(host)},
            logging_config={"enable_access_log": False},
        )
        # Deploying blocks until every replica is healthy (the engine has loaded), or
        # raises if one cannot start; a signal meanwhile ends the process the usual way.
        signal.signal(signal.SIGINT, signal.default_int_handler)
        deploy(config)
        signal.signal(signal.SIGINT, _stop)
        on_ready(f"http://{host}:{port}")
        while not stop.wait(1.0):
            try:
                changed = reload() if reload is not None else None
                if changed is not None:
                    signal.signal(signal.SIGINT, signal.default_int_handler)
                    deploy(changed)
                    signal.signal(signal.SIGINT, _stop)
                    if on_phase is not None:
                        on_phase(Phase.RELOADED)
            except Exception as e:
                # A change that cannot be applied must not stop what already serves.
                signal.signal(signal.SIGINT, _stop)
                print(f"modelfleet: applying the change failed: {e}", file=sys.stderr)
        if on_phase is not None:
            on_phase(Phase.STOPPING)
        return 0
    except KeyboardInterrupt:
        return 130
    finally:
        try:
            serve.shutdown()  # type: ignore[no-untyped-call]
        finally:
            ray.shutdown()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
