"""Pool choice with spill-over, and replica order within a pool (pure)."""

from __future__ import annotations

import math
import random
from collections import Counter
from typing import Any

import pytest
from modelfleet_serving import routing
from modelfleet_serving.routing import (
    PREFIX_KEY_CHARS,
    PoolChoice,
    PoolLoad,
    RoutingPolicy,
    choose_pool,
    order_replicas,
    prompt_prefix,
)

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


# Replica order within a pool: prefix-aware with bounded load, or least loaded.

SYSTEM = "You are a careful assistant. Answer in one short paragraph. " * 3
REPLICAS = ["r1", "r2", "r3", "r4"]


def _order(
    loads: dict[str, int], prefix: str, policy: RoutingPolicy = RoutingPolicy.PREFIX_AWARE
) -> list[str]:
    return order_replicas(REPLICAS, loads, policy=policy, prefix=prefix, rng=random.Random(0))


def _home(prefix: str) -> str:
    """The replica a prefix goes to when nothing is loaded."""
    return _order({}, prefix)[0]


def test_same_prefix_same_replica_different_prefixes_spread() -> None:
    prefixes = [f"{i:03d} " + SYSTEM for i in range(64)]
    homes = [_home(p) for p in prefixes]
    assert [_home(p) for p in prefixes] == homes  # stable
    counts = Counter(homes)
    assert set(counts) == set(REPLICAS)
    assert max(counts.values()) <= 64 // 4 * 2  # no replica wins most of the keys


def test_a_replica_leaving_moves_only_its_own_prefixes() -> None:
    prefixes = [f"{i:03d} " + SYSTEM for i in range(64)]
    before = {p: _home(p) for p in prefixes}
    rng = random.Random(0)
    after = {
        p: order_replicas(
            ["r1", "r2", "r4"], {}, policy=RoutingPolicy.PREFIX_AWARE, prefix=p, rng=rng
        )[0]
        for p in prefixes
    }
    moved = [p for p in prefixes if before[p] != after[p]]
    assert moved and all(before[p] == "r3" for p in moved)


@pytest.mark.parametrize(
    ("home_load", "others", "stays"),
    [
        (0, 0, True),  # idle: home
        # In flight with this request: 13, bound ceil(1.25 * 13 / 4) = 5; 3 + 1 fits.
        (3, 3, True),
        (4, 3, True),  # 14 in flight, bound 5: 4 + 1 fits
        (5, 3, False),  # 15 in flight, bound 5: 5 + 1 does not, so it spills
        (9, 0, False),  # far above the mean: spill
    ],
)
def test_bounded_load(home_load: int, others: int, stays: bool) -> None:
    home = _home(SYSTEM)
    loads = {r: others for r in REPLICAS} | {home: home_load}
    total = sum(loads.values()) + 1
    bound = max(1, math.ceil(1.25 * total / 4))
    assert (home_load + 1 <= bound) is stays
    first = _order(loads, SYSTEM)[0]
    assert (first == home) is stays
    if not stays:
        # The spill goes to the prefix's next replica in its own order, not at random.
        ranked = sorted(
            (r for r in REPLICAS if r != home),
            key=lambda r: routing._score(SYSTEM, r),
            reverse=True,
        )
        assert first == next(r for r in ranked if loads[r] + 1 <= bound)


@pytest.mark.parametrize(
    ("policy", "prefix"),
    [
        (RoutingPolicy.LEAST_LOADED, SYSTEM),
        (RoutingPolicy.PREFIX_AWARE, "hi"),  # too short to steer for
        (RoutingPolicy.PREFIX_AWARE, ""),
    ],
)
def test_least_loaded(policy: RoutingPolicy, prefix: str) -> None:
    loads = {"r1": 3, "r2": 0, "r3": 1, "r4": 2}
    assert _order(loads, prefix, policy) == ["r2", "r3", "r4", "r1"]


def test_every_replica_is_a_fallback_once() -> None:
    order = _order({"r2": 1}, SYSTEM)
    assert sorted(order) == REPLICAS
    assert (
        order_replicas(
            [], {}, policy=RoutingPolicy.PREFIX_AWARE, prefix=SYSTEM, rng=random.Random(0)
        )
        == []
    )


@pytest.mark.parametrize(
    ("kind", "body", "expected"),
    [
        ("completion", {"prompt": "abc"}, "abc"),
        ("completion", {"prompt": ["first", "second"]}, "first"),
        ("completion", {"prompt": [1, 2, 3]}, "1"),
        ("completion", {"prompt": "x" * 1000}, "x" * PREFIX_KEY_CHARS),
        ("chat", {"messages": [{"role": "user", "content": "hi"}]}, "user\x1fhi\x1e"),
        (
            "chat",
            {"messages": [{"role": "user", "content": [{"type": "text", "text": "a"}, "b"]}]},
            "user\x1fab\x1e",
        ),
        ("chat", {"messages": ["not a message"]}, ""),
    ],
)
def test_prompt_prefix(kind: str, body: dict[str, Any], expected: str) -> None:
    assert prompt_prefix(kind, body) == expected


def test_chat_prefix_is_shared_by_a_shared_system_prompt() -> None:
    def body(question: str) -> dict[str, Any]:
        return {
            "messages": [
                {"role": "system", "content": SYSTEM * 2},
                {"role": "user", "content": question},
            ]
        }

    assert prompt_prefix("chat", body("one?")) == prompt_prefix("chat", body("two?"))
    assert len(prompt_prefix("chat", body("one?"))) == PREFIX_KEY_CHARS
