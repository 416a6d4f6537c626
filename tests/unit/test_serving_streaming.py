"""Stream coalescing between LLM replicas and the ingress (pure asyncio)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

import pytest
from modelfleet_serving.streaming import coalesce


async def _items(
    *items: object,
    gap: float = 0.0,
    fail: Exception | None = None,
    closed: list[bool] | None = None,
) -> AsyncIterator[object]:
    try:
        for item in items:
            yield item
            await asyncio.sleep(gap)
        if fail is not None:
            raise fail
    finally:
        if closed is not None:
            closed.append(True)


async def _collect(
    source: AsyncIterator[object], interval: float | Callable[[], float]
) -> list[object]:
    return [item async for item in coalesce(source, interval)]


async def test_text_within_an_interval_is_joined_but_the_first_goes_alone() -> None:
    out = await _collect(_items("a", "b", "c", "d", gap=0.001), interval=0.2)
    assert out[0] == "a"
    assert "".join(str(x) for x in out) == "abcd"
    assert len(out) <= 2


async def test_first_item_is_not_delayed() -> None:
    start = time.monotonic()
    async for _ in coalesce(_items("x", gap=1.0), 5.0):
        break
    assert time.monotonic() - start < 0.5


async def test_end_of_stream_is_not_held_back() -> None:
    start = time.monotonic()
    out = await _collect(_items("a", "b"), interval=5.0)
    assert "".join(map(str, out)) == "ab"
    assert time.monotonic() - start < 1.0


async def test_other_items_pass_alone_and_in_order() -> None:
    response = {"object": "text_completion"}
    assert await _collect(_items(response), interval=0.01) == [response]
    out = await _collect(_items("a", response, "b"), interval=0.5)
    assert out == ["a", response, "b"]


async def test_empty_source() -> None:
    assert await _collect(_items(), interval=0.01) == []


async def test_errors_come_after_the_items_before_them() -> None:
    seen: list[object] = []
    with pytest.raises(ValueError, match="boom"):
        async for item in coalesce(_items("a", "b", fail=ValueError("boom")), 0.01):
            seen.append(item)
    assert "".join(map(str, seen)) == "ab"


async def test_closing_early_closes_the_source() -> None:
    closed: list[bool] = []
    stream = coalesce(_items("a", "b", "c", gap=0.05, closed=closed), 0.01)
    assert await stream.__anext__() == "a"
    await stream.aclose()
    await asyncio.sleep(0.05)
    assert closed == [True]


async def test_interval_can_change_while_streaming() -> None:
    asked: list[float] = []

    def interval() -> float:
        asked.append(0.01)
        return 0.01

    out = await _collect(_items("a", "b", "c", gap=0.02), interval)
    assert "".join(map(str, out)) == "abc"
    assert asked
