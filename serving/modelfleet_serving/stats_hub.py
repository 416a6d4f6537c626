"""The stats hub: a small named Ray actor where LLM replicas leave their reports.

Serve routes each call to one replica, so the ingress cannot ask "every replica" for
its numbers; instead every LLM replica pushes a `ReplicaReport` here a few times a
second, and every ingress replica reads them all back. The hub holds only the latest
report per replica (a few KB each), needs no CPU reservation, and is found by name,
so whichever replica starts first creates it.
"""

from __future__ import annotations

from typing import Any

import ray

from modelfleet_serving.telemetry import ReplicaReport

NAMESPACE = "modelfleet"


@ray.remote(num_cpus=0)
class StatsHub:
    """Latest report of every LLM replica of one application."""

    def __init__(self) -> None:
        self._reports: dict[tuple[str, str], ReplicaReport] = {}

    def report(self, report: ReplicaReport) -> None:
        """Store a replica's latest report."""
        self._reports[(report.pool, report.replica)] = report

    def reports(self) -> list[ReplicaReport]:
        """Every replica's latest report, including replicas that went away."""
        return list(self._reports.values())


def stats_hub(app_name: str) -> Any:
    """The hub of application `app_name`, created on first use.

    Detached, so it outlives the replica that happened to create it: counters must
    not reset when Serve replaces that replica.
    """
    return StatsHub.options(  # type: ignore[attr-defined]
        name=f"stats-{app_name}",
        namespace=NAMESPACE,
        get_if_exists=True,
        lifetime="detached",
    ).remote()
