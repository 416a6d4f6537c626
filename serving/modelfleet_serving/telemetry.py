"""Engine-side measurements, and how the reports of many replicas add up.

The latency histograms and token counters are measured where the tokens are made,
in each LLM replica's engine, but Prometheus scrapes the ingress. So each engine fills
an `EngineTelemetry` (plain bucket counts, no Prometheus registry), its replica sends
a `ReplicaReport` to the deployment's stats hub every fraction of a second, and the
ingress turns the sum of all reports into metrics (see `metrics.py`) and into the
per-pool queue depths routing needs.

Counters and histograms are cumulative per replica; when a replica goes away the hub
folds its last telemetry into one "retired" report per pool (`retire`), so the sums
never go down when Serve replaces a replica while the hub holds a bounded number of
reports. Gauges only count replicas that reported recently.

Pure: no Ray, vLLM or Prometheus imports.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

# Bucket upper bounds in seconds, close to vLLM's own so dashboards read the same.
TTFT_BUCKETS = (
    0.001,
    0.005,
    0.01,
    0.02,
    0.04,
    0.06,
    0.08,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
    20.0,
    40.0,
    80.0,
    160.0,
    640.0,
)
TOKEN_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.015,
    0.02,
    0.025,
    0.03,
    0.04,
    0.05,
    0.075,
    0.1,
    0.15,
    0.2,
    0.3,
    0.4,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    10.0,
    20.0,
)
E2E_BUCKETS = (
    0.05,
    0.1,
    0.3,
    0.5,
    0.8,
    1.0,
    1.5,
    2.0,
    2.5,
    5.0,
    10.0,
    15.0,
    20.0,
    30.0,
    40.0,
    50.0,
    60.0,
    120.0,
    240.0,
    480.0,
    960.0,
    1920.0,
    7680.0,
)

TTFT = "time_to_first_token_seconds"
TPOT = "time_per_output_token_seconds"
ITL = "inter_token_latency_seconds"
E2E = "e2e_request_latency_seconds"
HISTOGRAMS: dict[str, tuple[float, ...]] = {
    TTFT: TTFT_BUCKETS,
    TPOT: TOKEN_BUCKETS,
    ITL: TOKEN_BUCKETS,
    E2E: E2E_BUCKETS,
}

# Replica states of the `replicas{state}` gauge.
STARTING = "starting"
RUNNING = "running"
UNHEALTHY = "unhealthy"
REPLICA_STATES = (STARTING, RUNNING, UNHEALTHY)


@dataclass
class HistogramData:
    """One histogram: per-bucket (not cumulative) counts, the last one being +Inf."""

    bounds: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    sum: float = 0.0
    count: int = 0

    def __post_init__(self) -> None:
        if not self.counts:
            self.counts = [0] * (len(self.bounds) + 1)

    def observe(self, value: float) -> None:
        """Add one observation."""
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def add(self, other: HistogramData) -> None:
        """Add another histogram with the same bounds into this one."""
        if other.bounds != self.bounds:
            raise ValueError("histograms with different buckets cannot be added")
        self.counts = [a + b for a, b in zip(self.counts, other.counts, strict=True)]
        self.sum += other.sum
        self.count += other.count

    def cumulative(self) -> list[tuple[str, int]]:
        """Prometheus buckets: (upper bound as text, cumulative count), ending in +Inf."""
        out, running = [], 0
        for bound, count in zip([*map(str, self.bounds), "+Inf"], self.counts, strict=True):
            running += count
            out.append((bound, running))
        return out

    def copy(self) -> HistogramData:
        """An independent copy."""
        return HistogramData(self.bounds, list(self.counts), self.sum, self.count)


def new_histograms() -> dict[str, HistogramData]:
    """One empty histogram per engine latency metric of docs/design.md."""
    return {name: HistogramData(bounds) for name, bounds in HISTOGRAMS.items()}


@dataclass
class EngineTelemetry:
    """What an engine measured since its replica started (cumulative)."""

    histograms: dict[str, HistogramData] = field(default_factory=new_histograms)
    prompt_tokens: int = 0
    generation_tokens: int = 0
    prefix_cache_queries: int = 0
    """Prompt tokens the engine looked up in its prefix cache."""
    prefix_cache_hits: int = 0
    """Of those, the tokens found there (their prefill was skipped)."""

    def add(self, other: EngineTelemetry) -> None:
        """Add `other`'s counts and histograms to this one."""
        for name, hist in other.histograms.items():
            self.histograms[name].add(hist)
        self.prompt_tokens += other.prompt_tokens
        self.generation_tokens += other.generation_tokens
        self.prefix_cache_queries += other.prefix_cache_queries
        self.prefix_cache_hits += other.prefix_cache_hits

    def observe(self, name: str, seconds: float) -> None:
        """Record one latency of histogram `name` (TTFT, TPOT, ITL or E2E)."""
        self.histograms[name].observe(seconds)

    def observe_request(
        self,
        *,
        ttft: float | None,
        e2e: float,
        prompt_tokens: int,
        generation_tokens: int,
        inter_token: Sequence[float] = (),
    ) -> None:
        """Record a finished request in one call, for engines that time whole requests.

        TPOT is the mean time per output token after the first, as vLLM defines it.
        """
        if ttft is not None:
            self.observe(TTFT, ttft)
            if generation_tokens > 1:
                self.observe(TPOT, (e2e - ttft) / (generation_tokens - 1))
        for gap in inter_token:
            self.observe(ITL, gap)
        self.observe(E2E, e2e)
        self.prompt_tokens += prompt_tokens
        self.generation_tokens += generation_tokens


@dataclass
class ReplicaReport:
    """One LLM replica's state as it sends it to the stats hub."""

    pool: str
    replica: str
    state: str
    at: float
    """Wall-clock time of the report (time.time())."""
    waiting: int = 0
    running: int = 0
    kv_cache_usage: float = 0.0
    telemetry: EngineTelemetry = field(default_factory=EngineTelemetry)
    address: str = ""
    """Base URL of the replica's own OpenAI API (empty until the engine serves)."""
    queued: int = 0
    """Requests at the replica that have not had their first token yet."""
    token: str = ""
    """What the front door sends the replica's API to prove itself (replica_http.py)."""
    adapters: tuple[str, ...] = ()
    """LoRA adapters loaded and served by this replica."""
    adapter_errors: dict[str, str] = field(default_factory=dict)
    """Adapters the spec lists that failed to load here, with the reason."""


@dataclass
class PoolSummary:
    """All replicas of one pool added up."""

    waiting: int = 0
    running: int = 0
    kv_cache_usage: float = 0.0
    """Mean over the replicas that reported recently."""
    replicas: dict[str, int] = field(default_factory=lambda: dict.fromkeys(REPLICA_STATES, 0))
    telemetry: EngineTelemetry = field(default_factory=EngineTelemetry)


RETIRED = "retired"
"""`replica` of the report that holds the telemetry of a pool's departed replicas."""


def retire(reports: dict[tuple[str, str], ReplicaReport], key: tuple[str, str]) -> None:
    """Remove replica `key` from `reports`, adding its telemetry to its pool's retired
    report (which is never fresh, so it counts in counters and histograms only)."""
    gone = reports.pop(key, None)
    if gone is None or gone.replica == RETIRED:
        return
    retired = reports.setdefault(
        (gone.pool, RETIRED), ReplicaReport(pool=gone.pool, replica=RETIRED, state=RETIRED, at=0.0)
    )
    retired.telemetry.add(gone.telemetry)


def summarize(
    reports: Iterable[ReplicaReport], pools: Iterable[str], *, now: float, stale_after: float
) -> dict[str, PoolSummary]:
    """Add up replica reports per pool.

    Gauges count only reports newer than `stale_after` seconds (a replica that stopped
    reporting is gone or hung); counters and histograms count every report ever seen.
    """
    out = {pool: PoolSummary() for pool in pools}
    kv: dict[str, list[float]] = {pool: [] for pool in out}
    for report in reports:
        summary = out.setdefault(report.pool, PoolSummary())
        summary.telemetry.add(report.telemetry)
        if now - report.at > stale_after:
            continue
        summary.replicas[report.state] = summary.replicas.get(report.state, 0) + 1
        if report.state == RUNNING:
            summary.waiting += report.waiting
            summary.running += report.running
            kv.setdefault(report.pool, []).append(report.kv_cache_usage)
    for pool, values in kv.items():
        if values:
            out[pool].kv_cache_usage = sum(values) / len(values)
    return out
