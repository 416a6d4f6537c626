"""Which node pool takes the next request.

Pools are tried in order of preference (lowest `priority` first). A pool takes the
request while its queue is below `target_queue_depth` per replica; once every pool
is past that, the request goes to the least loaded one relative to its size, so an
overloaded preferred pool spills over to the next instead of queueing without bound.

Pure: the caller passes the load it knows (engine stats plus its own in-flight
counts); no Ray imports.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class PoolLoad:
    """What the router knows of one pool right now."""

    queued: float
    """Requests waiting in the pool's engines (not yet running)."""
    replicas: int
    """Replicas that are up; a pool with none is skipped while another can serve."""


@dataclass(frozen=True)
class PoolChoice:
    """A pool's name and its place in the preference order (0 = most preferred)."""

    name: str
    priority: int


def choose_pool(
    pools: Sequence[PoolChoice],
    loads: Mapping[str, PoolLoad],
    target_queue_depth: float,
) -> str:
    """Return the name of the pool that should take the next request.

    A pool missing from `loads` is treated as idle with one replica: right after start
    no stats have arrived yet, and the preferred pool must still get the traffic.
    """
    if not pools:
        raise ValueError("no pools to choose from")
    ordered = sorted(pools, key=lambda p: p.priority)

    def load(pool: PoolChoice) -> PoolLoad:
        return loads.get(pool.name, PoolLoad(queued=0, replicas=1))

    up = [p for p in ordered if load(p).replicas > 0] or ordered
    for pool in up:
        current = load(pool)
        if current.queued < target_queue_depth * max(current.replicas, 1):
            return pool.name
    # Every pool is past its target: the least queued per replica; ties keep preference.
    return min(up, key=lambda p: load(p).queued / max(load(p).replicas, 1)).name
