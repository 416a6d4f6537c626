"""The `modelfleet_*` metrics the ingress exposes at GET /metrics.

Names and labels are a contract with the dashboards (docs/design.md, "Metrics"): each name
is spelled once, in the constants below, which the dashboards and the tests import. The
request counter is counted here, where the HTTP status is known; latency histograms,
token counters and engine gauges come from the LLM replicas' reports (telemetry.py)
and are rendered on each scrape by a custom collector, so the ingress never keeps a
second copy of what the engines measured.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from modelfleet_serving.telemetry import (
    E2E,
    E2E_BUCKETS,
    ITL,
    TPOT,
    TTFT,
    TTFT_BUCKETS,
    PoolSummary,
)

PREFIX = "modelfleet_"
LABELS = ("model", "pool")

# The names as Prometheus stores them (counters with their `_total`). The latency
# histograms are named after the telemetry histograms they expose.
TIME_TO_FIRST_TOKEN = PREFIX + TTFT
TIME_PER_OUTPUT_TOKEN = PREFIX + TPOT
INTER_TOKEN_LATENCY = PREFIX + ITL
E2E_REQUEST_LATENCY = PREFIX + E2E
REQUESTS_TOTAL = PREFIX + "requests_total"
PROMPT_TOKENS_TOTAL = PREFIX + "prompt_tokens_total"
GENERATION_TOKENS_TOTAL = PREFIX + "generation_tokens_total"
# Prompt tokens looked up in the engines' prefix caches, and those found there: their
# ratio is the hit rate that prefix-aware routing raises.
PREFIX_CACHE_QUERIES_TOTAL = PREFIX + "prefix_cache_queries_total"
PREFIX_CACHE_HITS_TOTAL = PREFIX + "prefix_cache_hits_total"
REQUESTS_WAITING = PREFIX + "requests_waiting"
REQUESTS_RUNNING = PREFIX + "requests_running"
KV_CACHE_USAGE_RATIO = PREFIX + "kv_cache_usage_ratio"
REPLICAS = PREFIX + "replicas"
AUTOSCALING_TARGET_QUEUE_DEPTH = PREFIX + "autoscaling_target_queue_depth"
# Measured by the front door, where the user sees them: from the request's arrival
# there to the first byte of the answer sent back, and to the last. They include what
# the engine's own TTFT and e2e latency cannot see: queueing in front of the engine,
# the hop to the replica and the relay.
REQUEST_TIME_TO_FIRST_BYTE = PREFIX + "request_time_to_first_byte_seconds"
REQUEST_DURATION = PREFIX + "request_duration_seconds"
FRONT_DOOR_HISTOGRAMS = (REQUEST_TIME_TO_FIRST_BYTE, REQUEST_DURATION)

# The latency histograms, in the order docs/design.md lists them.
HISTOGRAM_NAMES = (
    TIME_TO_FIRST_TOKEN,
    TIME_PER_OUTPUT_TOKEN,
    INTER_TOKEN_LATENCY,
    E2E_REQUEST_LATENCY,
    *FRONT_DOOR_HISTOGRAMS,
)
# Every metric name docs/design.md lists for the serving plane.
METRIC_NAMES = (
    *HISTOGRAM_NAMES,
    REQUESTS_TOTAL,
    PROMPT_TOKENS_TOTAL,
    GENERATION_TOKENS_TOTAL,
    PREFIX_CACHE_QUERIES_TOTAL,
    PREFIX_CACHE_HITS_TOTAL,
    REQUESTS_WAITING,
    REQUESTS_RUNNING,
    KV_CACHE_USAGE_RATIO,
    REPLICAS,
    AUTOSCALING_TARGET_QUEUE_DEPTH,
)

NO_POOL = "none"
"""`pool` label of requests refused before a pool was chosen (401, 404, 400, 429)."""


class _EngineCollector(Collector):
    def __init__(
        self,
        model: str,
        summaries: Callable[[], Mapping[str, PoolSummary]],
        target_queue_depth: float,
    ) -> None:
        self._model = model
        self._summaries = summaries
        self._target_queue_depth = target_queue_depth

    def collect(self) -> Iterator[Metric]:
        summaries = self._summaries()
        labels = list(LABELS)
        # Keyed by the telemetry histogram each one exposes.
        histograms = {
            TTFT: HistogramMetricFamily(
                TIME_TO_FIRST_TOKEN, "Time from arrival to the first output token.", labels=labels
            ),
            TPOT: HistogramMetricFamily(
                TIME_PER_OUTPUT_TOKEN,
                "Mean time per output token after the first, per request.",
                labels=labels,
            ),
            ITL: HistogramMetricFamily(
                INTER_TOKEN_LATENCY, "Time between consecutive output tokens.", labels=labels
            ),
            E2E: HistogramMetricFamily(
                E2E_REQUEST_LATENCY, "Time from arrival to the last output token.", labels=labels
            ),
        }
        prompt = CounterMetricFamily(PROMPT_TOKENS_TOTAL, "Prompt tokens processed.", labels=labels)
        generation = CounterMetricFamily(
            GENERATION_TOKENS_TOTAL, "Output tokens generated.", labels=labels
        )
        cache_queries = CounterMetricFamily(
            PREFIX_CACHE_QUERIES_TOTAL,
            "Prompt tokens looked up in the engines' prefix caches.",
            labels=labels,
        )
        cache_hits = CounterMetricFamily(
            PREFIX_CACHE_HITS_TOTAL,
            "Prompt tokens found in the engines' prefix caches (prefill skipped).",
            labels=labels,
        )
        waiting = GaugeMetricFamily(
            REQUESTS_WAITING, "Requests queued in the engines.", labels=labels
        )
        running = GaugeMetricFamily(
            REQUESTS_RUNNING, "Requests the engines are running.", labels=labels
        )
        kv = GaugeMetricFamily(
            KV_CACHE_USAGE_RATIO, "KV-cache fraction in use (mean).", labels=labels
        )
        replicas = GaugeMetricFamily(REPLICAS, "LLM replicas by state.", labels=[*labels, "state"])
        target = GaugeMetricFamily(
            AUTOSCALING_TARGET_QUEUE_DEPTH,
            "Waiting requests per replica the autoscaler aims at (targetQueueDepth).",
            labels=labels,
        )
        for pool, summary in sorted(summaries.items()):
            values = [self._model, pool]
            target.add_metric(values, self._target_queue_depth)
            for name, hist in summary.telemetry.histograms.items():
                histograms[name].add_metric(
                    values, [(b, float(c)) for b, c in hist.cumulative()], hist.sum
                )
            prompt.add_metric(values, summary.telemetry.prompt_tokens)
            generation.add_metric(values, summary.telemetry.generation_tokens)
            cache_queries.add_metric(values, summary.telemetry.prefix_cache_queries)
            cache_hits.add_metric(values, summary.telemetry.prefix_cache_hits)
            waiting.add_metric(values, summary.waiting)
            running.add_metric(values, summary.running)
            kv.add_metric(values, summary.kv_cache_usage)
            for state, count in sorted(summary.replicas.items()):
                replicas.add_metric([*values, state], count)
        yield from histograms.values()
        yield from (prompt, generation, cache_queries, cache_hits)
        yield from (waiting, running, kv, replicas, target)


class IngressMetrics:
    """The ingress's registry: its request counter plus the engines' reports."""

    def __init__(
        self,
        model: str,
        summaries: Callable[[], Mapping[str, PoolSummary]],
        *,
        target_queue_depth: float,
    ) -> None:
        # `*_created` series double the exposition and no dashboard reads them. The
        # switch is global to prometheus_client, so it is thrown here, where the
        # ingress starts, rather than on import: the operator imports this module for
        # the metric names and keeps the `*_created` series of its own metrics.
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.model = model
        self.registry = CollectorRegistry(auto_describe=False)
        self.requests = Counter(
            REQUESTS_TOTAL,
            "Requests answered, by HTTP status code.",
            [*LABELS, "code"],
            registry=self.registry,
        )
        self.first_byte = Histogram(
            REQUEST_TIME_TO_FIRST_BYTE,
            "Time from the request's arrival at the front door to the first byte sent back.",
            LABELS,
            buckets=TTFT_BUCKETS,
            registry=self.registry,
        )
        self.duration = Histogram(
            REQUEST_DURATION,
            "Time from the request's arrival at the front door to the last byte sent back.",
            LABELS,
            buckets=E2E_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(_EngineCollector(model, summaries, target_queue_depth))

    def count(self, pool: str, status: int, model: str | None = None) -> None:
        """Count one answered request; `model` is the name asked for (a LoRA adapter's,
        or by default the deployment's served name)."""
        self.requests.labels(model or self.model, pool, str(status)).inc()

    def observe_request(
        self,
        pool: str,
        arrived: float,
        first_byte: float | None,
        done: float,
        model: str | None = None,
    ) -> None:
        """Record one relayed request's times (`time.monotonic()` seconds)."""
        model = model or self.model
        if first_byte is not None:
            self.first_byte.labels(model, pool).observe(first_byte - arrived)
        self.duration.labels(model, pool).observe(done - arrived)

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)
