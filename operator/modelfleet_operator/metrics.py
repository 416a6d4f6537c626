"""The operator's Prometheus metrics.

Their names are a contract with the dashboards: each is spelled once, in the constants
below, which the operator dashboard and the tests import.
"""

from __future__ import annotations

import threading
from collections import Counter as Tally
from collections.abc import Mapping

from prometheus_client import Counter, Gauge, Histogram, start_http_server

# The names as Prometheus stores them (the counter with its `_total`).
RECONCILES_METRIC = "modelfleet_operator_reconcile_total"
RECONCILE_SECONDS_METRIC = "modelfleet_operator_reconcile_seconds"
DEPLOYMENTS_METRIC = "modelfleet_operator_deployments"

RECONCILE_TOTAL = Counter(
    RECONCILES_METRIC,
    "Reconciliations of ModelDeployments by result "
    "(success, invalid, dependency_missing, conflict, upgrade_blocked, adapters_pending, "
    "adapter_failed, error).",
    ["result"],
)
RECONCILE_SECONDS = Histogram(
    RECONCILE_SECONDS_METRIC,
    "Time one reconciliation of a ModelDeployment took.",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
DEPLOYMENTS = Gauge(
    DEPLOYMENTS_METRIC,
    "ModelDeployments by condition (Validated, RayServiceReady, Ready) and its status.",
    ["condition", "status"],
)

CONDITION_STATUSES = ("True", "False", "Unknown")


def observe(result: str, seconds: float) -> None:
    """Count one reconciliation and record how long it took."""
    RECONCILE_TOTAL.labels(result=result).inc()
    RECONCILE_SECONDS.observe(seconds)


class ConditionCounts:
    """The latest conditions of every ModelDeployment, summed into `DEPLOYMENTS`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_object: dict[str, dict[str, str]] = {}
        # Condition types ever seen, so their series stay (at 0) when no object has them.
        self._kinds: set[str] = set()

    def record(self, key: str, conditions: Mapping[str, str]) -> None:
        """Set the conditions (type → status) of the object `key` (namespace/name)."""
        with self._lock:
            self._by_object[key] = dict(conditions)
            self._kinds.update(conditions)
            self._publish()

    def forget(self, key: str) -> None:
        """Stop counting a deleted object."""
        with self._lock:
            self._by_object.pop(key, None)
            self._publish()

    def _publish(self) -> None:
        tally = Tally(
            (kind, status)
            for conditions in self._by_object.values()
            for kind, status in conditions.items()
        )
        # Every known condition gets all three statuses, zeros included, so a count
        # that drops to zero shows as 0 rather than disappearing from the graph.
        for kind in self._kinds:
            for status in CONDITION_STATUSES:
                DEPLOYMENTS.labels(condition=kind, status=status).set(tally[(kind, status)])


def serve(port: int, address: str) -> None:
    """Expose /metrics on `address:port` from a background thread."""
    start_http_server(port, addr=address)
