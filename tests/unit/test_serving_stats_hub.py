"""The stats hub keeps live replicas' reports and retires the rest, counters intact."""

from modelfleet_serving.stats_hub import FORGET_AFTER_S, Reports
from modelfleet_serving.telemetry import (
    RETIRED,
    RUNNING,
    TTFT,
    EngineTelemetry,
    ReplicaReport,
    summarize,
)


def _report(replica: str, at: float, tokens: int, pool: str = "a") -> ReplicaReport:
    telemetry = EngineTelemetry(generation_tokens=tokens)
    telemetry.observe(TTFT, 0.01)
    return ReplicaReport(pool=pool, replica=replica, state=RUNNING, at=at, telemetry=telemetry)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_silent_replica_is_retired_and_its_counters_kept() -> None:
    clock = Clock()
    hub = Reports(clock)
    hub.report(_report("r1", clock.now, 10))
    hub.report(_report("r2", clock.now, 5))
    clock.now += FORGET_AFTER_S + 1
    hub.report(_report("r2", clock.now, 7))
    reports = hub.reports()
    assert sorted(r.replica for r in reports) == sorted(["r2", RETIRED])
    summary = summarize(reports, ["a"], now=clock.now, stale_after=10)["a"]
    # Counters never go down: r1's last 10 tokens stay, in the retired report.
    assert summary.telemetry.generation_tokens == 17
    assert summary.telemetry.histograms[TTFT].count == 2
    # Gauges count the live replica only.
    assert summary.replicas[RUNNING] == 1


def test_leaving_retires_at_once_with_the_final_telemetry() -> None:
    clock = Clock()
    hub = Reports(clock)
    hub.report(_report("r1", clock.now, 3))
    hub.leave("a", "r1", EngineTelemetry(generation_tokens=9))
    reports = hub.reports()
    assert [r.replica for r in reports] == [RETIRED]
    assert reports[0].telemetry.generation_tokens == 9


def test_the_hub_stays_bounded_as_replicas_come_and_go() -> None:
    clock = Clock()
    hub = Reports(clock)
    for i in range(100):
        hub.report(_report(f"r{i}", clock.now, 1, pool="a" if i % 2 else "b"))
        clock.now += FORGET_AFTER_S + 1
        hub.reports()
    reports = hub.reports()
    # The newest replica is retired too by now: one retired report per pool is left.
    assert sorted((r.pool, r.replica) for r in reports) == [("a", RETIRED), ("b", RETIRED)]
    assert sum(r.telemetry.generation_tokens for r in reports) == 100


def test_leaving_twice_or_unknown_is_harmless() -> None:
    hub = Reports(Clock())
    hub.leave("a", "nobody")
    hub.leave("a", RETIRED)
    assert hub.reports() == []
