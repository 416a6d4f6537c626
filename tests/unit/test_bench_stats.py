"""Benchmark statistics: percentiles, TPOT, throughput, goodput (pure)."""

from __future__ import annotations

import math

import pytest
from modelfleet_cli.bench.stats import (
    Distribution,
    RequestResult,
    format_summary,
    is_good,
    percentile,
    summarize,
)


@pytest.mark.parametrize(
    ("values", "p", "expected"),
    [
        ([1.0], 50, 1.0),
        ([1.0, 2.0], 50, 1.5),
        ([3.0, 1.0, 2.0], 50, 2.0),
        ([1.0, 2.0, 3.0, 4.0, 5.0], 90, 4.6),
        (list(map(float, range(1, 101))), 99, 99.01),
        ([5.0, 1.0], 0, 1.0),
        ([5.0, 1.0], 100, 5.0),
    ],
)
def test_percentile_interpolates_like_numpy(values: list[float], p: float, expected: float) -> None:
    assert percentile(values, p) == pytest.approx(expected)


def test_percentile_of_nothing_is_nan() -> None:
    assert math.isnan(percentile([], 50))


@pytest.mark.parametrize(
    ("result", "tpot"),
    [
        (RequestResult(success=True, output_tokens=11, ttft=0.1, latency=1.1), 0.1),
        (RequestResult(success=True, output_tokens=1, ttft=0.1, latency=0.1), None),
    ],
)
def test_tpot(result: RequestResult, tpot: float | None) -> None:
    assert result.tpot == (pytest.approx(tpot) if tpot is not None else None)


@pytest.mark.parametrize(
    ("ttft", "tpot_s", "ttft_ms", "tpot_ms", "good"),
    [
        (0.05, 0.01, 100, None, True),
        (0.15, 0.01, 100, None, False),
        (0.05, 0.03, None, 20, False),
        (0.05, 0.01, 100, 20, True),
        (0.05, 0.03, 100, 20, False),
    ],
)
def test_is_good(
    ttft: float, tpot_s: float, ttft_ms: float | None, tpot_ms: float | None, good: bool
) -> None:
    result = RequestResult(success=True, output_tokens=11, ttft=ttft, latency=ttft + 10 * tpot_s)
    assert is_good(result, ttft_ms, tpot_ms) is good


def test_failed_request_is_never_good() -> None:
    assert not is_good(RequestResult(success=False, error="x"), None, None)


def test_summarize() -> None:
    results = [
        RequestResult(
            success=True, prompt_tokens=4, output_tokens=3, ttft=0.1, latency=0.3, itl=(0.1, 0.1)
        ),
        RequestResult(
            success=True, prompt_tokens=4, output_tokens=3, ttft=0.3, latency=0.7, itl=(0.2, 0.2)
        ),
        RequestResult(success=False, error="HTTP 429"),
    ]
    summary = summarize(results, duration_s=2.0, goodput_ttft_ms=200)
    assert (summary.completed, summary.failed) == (2, 1)
    assert summary.request_throughput == pytest.approx(1.0)
    assert summary.output_throughput == pytest.approx(3.0)
    assert summary.goodput == pytest.approx(0.5)
    assert summary.ttft == Distribution(200.0, 200.0, 280.0, 298.0)
    assert summary.tpot.p50_ms == pytest.approx(150.0)
    assert summary.itl.mean_ms == pytest.approx(150.0)
    assert summary.errors == ["HTTP 429"]
    assert summary.as_dict()["ttft"]["p50_ms"] == pytest.approx(200.0)
    text = format_summary(summary)
    assert "Output token throughput (tok/s):" in text and "goodput" in text


def test_summarize_without_goodput_targets_or_results() -> None:
    summary = summarize([], duration_s=1.0)
    assert summary.goodput is None
    assert summary.as_dict()["ttft"]["p50_ms"] is None
