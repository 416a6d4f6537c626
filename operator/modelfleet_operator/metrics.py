"""The operator's Prometheus metrics (names are a contract with the dashboards)."""

from __future__ import annotations

from prometheus_client import Counter, Histogram, start_http_server

RECONCILE_TOTAL = Counter(
    "modelfleet_operator_reconcile",
    "Reconciliations of ModelDeployments by result "
    "(success, invalid, dependency_missing, conflict, error).",
    ["result"],
)
RECONCILE_SECONDS = Histogram(
    "modelfleet_operator_reconcile_seconds",
    "Time one reconciliation of a ModelDeployment took.",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)


def observe(result: str, seconds: float) -> None:
    """Count one reconciliation and record how long it took."""
    RECONCILE_TOTAL.labels(result=result).inc()
    RECONCILE_SECONDS.observe(seconds)


def serve(port: int, address: str) -> None:
    """Expose /metrics on `address:port` from a background thread."""
    start_http_server(port, addr=address)
