"""Engine telemetry, replica reports and the metrics built from them (pure)."""

from __future__ import annotations

import pytest
from modelfleet_serving.metrics import (
    AUTOSCALING_TARGET_QUEUE_DEPTH,
    GENERATION_TOKENS_TOTAL,
    METRIC_NAMES,
    PREFIX_CACHE_HITS_TOTAL,
    PREFIX_CACHE_QUERIES_TOTAL,
    REPLICAS,
    REQUESTS_RUNNING,
    REQUESTS_TOTAL,
    TIME_TO_FIRST_TOKEN,
    IngressMetrics,
)
from modelfleet_serving.telemetry import (
    E2E,
    ITL,
    RUNNING,
    STARTING,
    TPOT,
    TTFT,
    EngineTelemetry,
    HistogramData,
    ReplicaReport,
    summarize,
)


def test_histogram_buckets_are_cumulative() -> None:
    hist = HistogramData((0.1, 1.0))
    for value in (0.05, 0.1, 0.5, 3.0):
        hist.observe(value)
    assert hist.cumulative() == [("0.1", 2), ("1.0", 3), ("+Inf", 4)]
    assert hist.count == 4 and hist.sum == pytest.approx(3.65)


def test_histograms_with_other_buckets_do_not_add() -> None:
    with pytest.raises(ValueError):
        HistogramData((1.0,)).add(HistogramData((2.0,)))


def test_observe_request_derives_tpot() -> None:
    telemetry = EngineTelemetry()
    telemetry.observe_request(
        ttft=0.1, e2e=1.1, prompt_tokens=5, generation_tokens=11, inter_token=[0.1] * 10
    )
    assert telemetry.histograms[TPOT].sum == pytest.approx(0.1)
    assert telemetry.histograms[ITL].count == 10
    assert telemetry.histograms[TTFT].count == telemetry.histograms[E2E].count == 1
    assert (telemetry.prompt_tokens, telemetry.generation_tokens) == (5, 11)


def _report(pool: str, replica: str, at: float, state: str = RUNNING, **kw: float) -> ReplicaReport:
    telemetry = EngineTelemetry()
    telemetry.observe_request(ttft=0.01, e2e=0.2, prompt_tokens=3, generation_tokens=4)
    telemetry.prefix_cache_queries, telemetry.prefix_cache_hits = 10, 6
    return ReplicaReport(pool, replica, state, at, telemetry=telemetry, **kw)  # type: ignore[arg-type]


def test_summarize_adds_fresh_gauges_and_all_counters() -> None:
    reports = [
        _report("a", "r1", at=100, waiting=2, running=3, kv_cache_usage=0.2),
        _report("a", "r2", at=100, waiting=1, running=1, kv_cache_usage=0.4),
        _report("a", "gone", at=10, waiting=50, running=50, kv_cache_usage=1.0),
        _report("b", "r3", at=100, state=STARTING),
    ]
    out = summarize(reports, ["a", "b", "c"], now=101, stale_after=10)
    a, b, c = out["a"], out["b"], out["c"]
    assert (a.waiting, a.running) == (3, 4)
    assert a.kv_cache_usage == pytest.approx(0.3)
    assert a.replicas[RUNNING] == 2
    # The stale replica's counters stay: sums never go down when a replica is replaced.
    assert a.telemetry.generation_tokens == 12
    assert a.telemetry.histograms[E2E].count == 3
    assert (a.telemetry.prefix_cache_queries, a.telemetry.prefix_cache_hits) == (30, 18)
    assert b.replicas == {"starting": 1, "running": 0, "unhealthy": 0}
    assert (b.waiting, b.running) == (0, 0)
    assert c.telemetry.prompt_tokens == 0


def test_metrics_expose_every_design_name_with_labels() -> None:
    summaries = summarize([_report("cpu", "r1", at=1, running=2)], ["cpu"], now=1, stale_after=10)
    metrics = IngressMetrics("tiny", lambda: summaries, target_queue_depth=8)
    metrics.count("cpu", 200)
    text = metrics.render().decode()
    for name in METRIC_NAMES:
        types = {f"# TYPE {name} ", f"# TYPE {name.removesuffix('_total')} "}
        assert any(t in text for t in types), name
    assert f'{REQUESTS_TOTAL}{{code="200",model="tiny",pool="cpu"}} 1.0' in text
    assert f'{REQUESTS_RUNNING}{{model="tiny",pool="cpu"}} 2.0' in text
    assert f'{GENERATION_TOKENS_TOTAL}{{model="tiny",pool="cpu"}} 4.0' in text
    assert f'{PREFIX_CACHE_QUERIES_TOTAL}{{model="tiny",pool="cpu"}} 10.0' in text
    assert f'{PREFIX_CACHE_HITS_TOTAL}{{model="tiny",pool="cpu"}} 6.0' in text
    assert f'{REPLICAS}{{model="tiny",pool="cpu",state="running"}} 1.0' in text
    assert f'{AUTOSCALING_TARGET_QUEUE_DEPTH}{{model="tiny",pool="cpu"}} 8.0' in text
    assert f'{TIME_TO_FIRST_TOKEN}_count{{model="tiny",pool="cpu"}} 1.0' in text


def test_requests_for_an_adapter_carry_its_name() -> None:
    metrics = IngressMetrics("tiny", dict, target_queue_depth=8)
    metrics.count("cpu", 200, "support-lora")
    metrics.count("cpu", 200)
    text = metrics.render().decode()
    assert f'{REQUESTS_TOTAL}{{code="200",model="support-lora",pool="cpu"}} 1.0' in text
    assert f'{REQUESTS_TOTAL}{{code="200",model="tiny",pool="cpu"}} 1.0' in text
