"""Run a `ServingConfig` on a Ray started in this process: `modelfleet serve`.

The same application the operator deploys through a RayService, on a one-node Ray
sized for a laptop: a few logical CPUs, a small object store, no dashboard, listening
on the address given (127.0.0.1 by default).
"""

from __future__ import annotations

import logging
import math
import os
import signal
import socket
import sys
import threading
from collections.abc import Callable
from types import FrameType

from modelfleet_serving.config import ServingConfig

# The object store only carries request and response objects here, never tensors.
OBJECT_STORE_BYTES = 128 * 1024**2
RAY_START_ATTEMPTS = 3


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def logical_cpus(config: ServingConfig) -> int:
    """Ray CPUs to declare: every pool at its maximum, plus one for the ingress and Serve.

    Logical, not physical: replicas mostly wait on their engine, and the engine's own
    processes are scheduled by the OS, not by Ray.
    """
    pools = sum(p.num_cpus * p.max_replicas for p in config.pools)
    return max(2, math.ceil(pools) + 1)


def _start_ray(num_cpus: int) -> None:
    import ray

    # Ray runs its workers at nice 15; here they hold the engine, which must not lose
    # the CPU to every other process on the machine.
    os.environ.setdefault("RAY_worker_niceness", "0")
    # Run deployment code and handle routing on each replica's main event loop instead
    # of extra threads: fewer cross-thread hops per streamed item, which on a couple of
    # cores costs more throughput than the isolation buys (Ray Serve's tuning advice).
    os.environ.setdefault("RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD", "0")
    os.environ.setdefault("RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP", "0")
    # Ray's own metrics (per-request Serve counters and histograms, exported through
    # the dashboard agent) cost CPU on every hop; nobody scrapes them locally, and the
    # modelfleet_* metrics at /metrics do not depend on them.
    os.environ.setdefault("RAY_enable_metrics_collection", "0")
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


def run_local(
    config: ServingConfig,
    host: str,
    port: int,
    on_ready: Callable[[str], None],
) -> int:
    """Start Ray and Serve, deploy `config`, call `on_ready(base_url)`, and block until
    SIGINT or SIGTERM; then stop Serve and Ray. Returns the exit status."""
    import ray
    from ray import serve

    from modelfleet_serving.app import build_app

    stop = threading.Event()

    def _stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, _stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    port = port or free_port(host)
    _start_ray(logical_cpus(config))
    try:
        # The ingress already logs every request; the proxy's copy would double it.
        serve.start(
            http_options={"host": host, "port": port},
            logging_config={"enable_access_log": False},
        )
        # Deploying blocks until every replica is healthy (the engine has loaded), or
        # raises if one cannot start; a signal meanwhile ends the process the usual way.
        signal.signal(signal.SIGINT, signal.default_int_handler)
        serve.run(build_app(config), name=config.name, route_prefix="/")
        signal.signal(signal.SIGINT, _stop)
        on_ready(f"http://{host}:{port}")
        while not stop.wait(1.0):
            pass
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
