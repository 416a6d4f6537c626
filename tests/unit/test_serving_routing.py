"""Pool choice with spill-over (pure)."""

from __future__ import annotations

import pytest
from modelfleet_serving.routing import PoolChoice, PoolLoad, choose_pool

POOLS = [PoolChoice("l20", 0), PoolChoice("a100", 1), PoolChoice("spot", 2)]


@pytest.mark.parametrize(
    ("loads", "expected"),
    [
        ({}, "l20"),  # no stats yet: the preferred pool
        ({"l20": PoolLoad(0, 1), "a100": PoolLoad(0, 1)}, "l20"),
        ({"l20": PoolLoad(7, 1), "a100": PoolLoad(0, 1)}, "l20"),  # below target 8
        ({"l20": PoolLoad(8, 1), "a100": PoolLoad(0, 1)}, "a100"),  # at target: spill
        ({"l20": PoolLoad(15, 2), "a100": PoolLoad(0, 1)}, "l20"),  # target scales
        ({"l20": PoolLoad(16, 2), "a100": PoolLoad(8, 1), "spot": PoolLoad(0, 1)}, "spot"),
        ({"l20": PoolLoad(0, 0), "a100": PoolLoad(3, 1)}, "a100"),  # no replica up
        # Everyone past target: least queued per replica, preference breaks ties.
        ({"l20": PoolLoad(30, 1), "a100": PoolLoad(20, 2), "spot": PoolLoad(9, 1)}, "spot"),
        ({"l20": PoolLoad(10, 1), "a100": PoolLoad(20, 2), "spot": PoolLoad(10, 1)}, "l20"),
        # No pool has a replica: keep preference (requests wait for the first to come up).
        ({"l20": PoolLoad(0, 0), "a100": PoolLoad(0, 0), "spot": PoolLoad(0, 0)}, "l20"),
    ],
)
def test_choose_pool(loads: dict[str, PoolLoad], expected: str) -> None:
    assert choose_pool(POOLS, loads, target_queue_depth=8) == expected


def test_priority_not_list_order_decides() -> None:
    pools = [PoolChoice("b", 5), PoolChoice("a", 1)]
    assert choose_pool(pools, {}, 8) == "a"


def test_no_pools() -> None:
    with pytest.raises(ValueError):
        choose_pool([], {}, 8)
