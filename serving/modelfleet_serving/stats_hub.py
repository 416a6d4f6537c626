"""The stats hub: a small named Ray actor where LLM replicas leave their reports.

Serve routes each call to one replica, so the front door cannot ask "every replica"
for its numbers; instead every LLM replica pushes a `ReplicaReport` here a few times a
second (with the address of its HTTP API), and every front-door replica reads them all
back. The hub needs no CPU reservation and is found by name, so whichever replica
starts first creates it.

It holds the latest report of each live replica only: a replica that says it leaves,
or that has not reported for `FORGET_AFTER_S`, is retired — its cumulative telemetry
is added to one report per pool (telemetry.retire), so counters never go down and the
hub's size follows the replicas that exist, not all that ever did.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import ray

from modelfleet_serving.telemetry import RETIRED, EngineTelemetry, ReplicaReport, retire

NAMESPACE = "modelfleet"
# Far past the front door's staleness cut (10 s): a replica silent this long is gone.
FORGET_AFTER_S = 60.0


class Reports:
    """The hub's state, apart from Ray so it can be tested with an injected clock."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._reports: dict[tuple[str, str], ReplicaReport] = {}

    def report(self, report: ReplicaReport) -> None:
        """Store a replica's latest report."""
        self._reports[(report.pool, report.replica)] = report

    def leave(self, pool: str, replica: str, telemetry: EngineTelemetry | None = None) -> None:
        """Retire a replica that is stopping, with its final telemetry if given."""
        key = (pool, replica)
        if telemetry is not None and key in self._reports:
            self._reports[key].telemetry = telemetry
        retire(self._reports, key)

    def reports(self) -> list[ReplicaReport]:
        """The latest report of every live replica, plus one retired report per pool
        that lost replicas; replicas silent for `FORGET_AFTER_S` are retired first."""
        now = self._clock()
        for key, report in list(self._reports.items()):
            if report.replica != RETIRED and now - report.at > FORGET_AFTER_S:
                retire(self._reports, key)
        return list(self._reports.values())


@ray.remote(num_cpus=0)
class StatsHub(Reports):
    """`Reports` of one application, as a named detached actor."""


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
