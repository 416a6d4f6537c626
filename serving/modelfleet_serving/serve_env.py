"""The Serve settings (environment variables) the data plane runs with.

One home, read by `modelfleet serve` (local.py) and by the operator's render, which
puts them in the RayService's containers: production gets what the benchmark
(benchmarks/serving_vs_vllm.py) measured. docs/data-plane.md says what each buys.

Pure: no imports.
"""

from __future__ import annotations

# Everywhere: the front door serves HTTP itself (Serve's direct ingress) instead of
# behind Serve's Python proxy, which relayed every chunk as a Ray object; deployment
# code and handle routing run on each replica's main event loop (no thread hops).
SERVE_ENV: dict[str, str] = {
    "RAY_SERVE_ENABLE_DIRECT_INGRESS": "1",
    "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0",
    "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0",
}

# In a cluster, Serve's HAProxy listens on the Serve port (8000) of every node and
# relays bytes to the front-door replicas' own ports; locally one front door listens
# on the port asked for, so no proxy is needed.
CLUSTER_SERVE_ENV: dict[str, str] = {**SERVE_ENV, "RAY_SERVE_ENABLE_HA_PROXY": "1"}


def local_serve_env(port: int) -> dict[str, str]:
    """The settings of `modelfleet serve` on `port`: the one front-door replica's
    direct-ingress port range is that port alone."""
    return {
        **SERVE_ENV,
        "RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT": str(port),
        "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT": str(port + 1),
        # The LLM replicas' own HTTP APIs listen on loopback only.
        "MODELFLEET_REPLICA_HOST": "127.0.0.1",
        # No load balancer has to notice a stopping front door here, so Ctrl-C takes
        # seconds instead of Serve's 30 s draining period for direct ingress.
        "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "1",
    }
