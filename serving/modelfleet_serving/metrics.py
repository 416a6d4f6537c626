"""The `modelfleet_*` metrics the ingress exposes at GET /metrics.

Names and labels are a contract with the dashboards (DESIGN.md, "Metrics"). The
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

from modelfleet_serving.telemetry import HISTOGRAMS, PoolSummary

PREFIX = "modelfleet_"
LABELS = ("model", "pool")

# Every metric name DESIGN.md lists for the serving plane, without the prefix.
METRIC_NAMES = (
    *HISTOGRAMS,
    "requests_total",
    "prompt_tokens_total",
    "generation_tokens_total",
    "requests_waiting",
    "requests_running",
    "kv_cache_usage_ratio",
    "replicas",
    "autoscaling_target_queue_depth",
)

_HELP = {
    "time_to_first_token_seconds": "Time from arrival to the first output token.",
    "time_per_output_token_seconds": "Mean time per output token after the first, per request.",
    "inter_token_latency_seconds": "Time between consecutive output tokens.",
    "e2e_request_latency_seconds": "Time from arrival to the last output token.",
}

# `*_created` series double the exposition and no dashboard reads them.
disable_created_metrics()  # type: ignore[no-untyped-call]

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
        histograms = {
            name: HistogramMetricFamily(PREFIX + name, _HELP[name], labels=labels)
            for name in HISTOGRAMS
        }
        prompt = CounterMetricFamily(
            PREFIX + "prompt_tokens", "Prompt tokens processed.", labels=labels
        )
        generation = CounterMetricFamily(
            PREFIX + "generation_tokens", "Output tokens generated.", labels=labels
        )
        waiting = GaugeMetricFamily(
            PREFIX + "requests_waiting", "Requests queued in the engines.", labels=labels
        )
        running = GaugeMetricFamily(
            PREFIX + "requests_running", "Requests the engines are running.", labels=labels
        )
        kv = GaugeMetricFamily(
            PREFIX + "kv_cache_usage_ratio", "KV-cache fraction in use (mean).", labels=labels
        )
        replicas = GaugeMetricFamily(
            PREFIX + "replicas", "LLM replicas by state.", labels=[*labels, "state"]
        )
        target = GaugeMetricFamily(
            PREFIX + "autoscaling_target_queue_depth",
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
            waiting.add_metric(values, summary.waiting)
            running.add_metric(values, summary.running)
            kv.add_metric(values, summary.kv_cache_usage)
            for state, count in sorted(summary.replicas.items()):
                replicas.add_metric([*values, state], count)
        yield from histograms.values()
        yield from (prompt, generation, waiting, running, kv, replicas, target)


class IngressMetrics:
    """The ingress's registry: its request counter plus the engines' reports."""

    def __init__(
        self,
        model: str,
        summaries: Callable[[], Mapping[str, PoolSummary]],
        *,
        target_queue_depth: float,
    ) -> None:
        self.model = model
        self.registry = CollectorRegistry(auto_describe=False)
        self.requests = Counter(
            PREFIX + "requests",
            "Requests answered, by HTTP status code.",
            [*LABELS, "code"],
            registry=self.registry,
        )
        self.registry.register(_EngineCollector(model, summaries, target_queue_depth))

    def count(self, pool: str, status: int) -> None:
        """Count one answered request."""
        self.requests.labels(self.model, pool, str(status)).inc()

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)
