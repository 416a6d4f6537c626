"""The serving dashboard: latency, traffic, load and capacity of each model and pool.

Metric names are the contract written in docs/design.md ("Metrics"); they come from
`modelfleet_serving.metrics`, where the ingress defines them, and a unit test checks
that every name the dashboards use is defined in the serving or operator code.

How the series add up. The ingress exports the engines' numbers already summed over
all LLM replicas (see modelfleet_serving.telemetry), so every Serve proxy Prometheus
scrapes answers the same deployment-wide totals: series that differ only by scrape
target are copies, deduplicated with `max`, never added up. Only `requests_total` is
counted by each ingress replica itself and is summed. Histogram quantiles sum their
buckets either way, which copies do not change.
"""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard, timeseries
from grafana_foundation_sdk.models import dashboard as dashboard_models
from modelfleet_serving.metrics import (
    AUTOSCALING_TARGET_QUEUE_DEPTH,
    E2E_REQUEST_LATENCY,
    GENERATION_TOKENS_TOTAL,
    INTER_TOKEN_LATENCY,
    KV_CACHE_USAGE_RATIO,
    PREFIX_CACHE_HITS_TOTAL,
    PREFIX_CACHE_QUERIES_TOTAL,
    PROMPT_TOKENS_TOTAL,
    REPLICAS,
    REQUEST_DURATION,
    REQUEST_TIME_TO_FIRST_BYTE,
    REQUESTS_RUNNING,
    REQUESTS_TOTAL,
    REQUESTS_WAITING,
    TIME_PER_OUTPUT_TOKEN,
    TIME_TO_FIRST_TOKEN,
)

from modelfleet_operator.dashboards._panels import (
    RATE_INTERVAL,
    PanelIds,
    datasource_variable,
    label_variable,
    quantile_queries,
    query,
)

UID = "modelfleet-serving"

# Every query narrows to the models and pools picked in the variables.
SELECTOR = '{model=~"$model", pool=~"$pool"}'
BY = ("model", "pool")
LEGEND = "{{model}}/{{pool}}"


def _totals(series: str, *, by: str = "model, pool") -> str:
    """Deduplicate deployment-wide totals that several scrape targets report."""
    return f"max by ({by}) ({series})"


def _gauge_panel(
    ids: PanelIds, title: str, description: str, metric: str, *, unit: str
) -> timeseries.Panel:
    """One line per model and pool of a gauge the ingress reports deployment-wide."""
    return ids.timeseries(
        title,
        description,
        [query(_totals(f"{metric}{SELECTOR}"), legend=LEGEND, ref_id="A")],
        unit=unit,
    )


def _latency_panels(ids: PanelIds) -> list[timeseries.Panel]:
    panels = [
        (
            "Time to first token",
            "Time from arrival to the first streamed token.",
            TIME_TO_FIRST_TOKEN,
        ),
        (
            "Time per output token",
            "Mean time between the output tokens of one request, after the first.",
            TIME_PER_OUTPUT_TOKEN,
        ),
        (
            "Inter-token latency",
            "Time between two consecutive streamed tokens.",
            INTER_TOKEN_LATENCY,
        ),
        ("End-to-end latency", "Time from arrival to the last token.", E2E_REQUEST_LATENCY),
        (
            "Time to first byte (front door)",
            "What the client sees: from the request's arrival at the front door to the "
            "first byte sent back, queueing in front of the engine included.",
            REQUEST_TIME_TO_FIRST_BYTE,
        ),
        (
            "Request duration (front door)",
            "From the request's arrival at the front door to the last byte sent back.",
            REQUEST_DURATION,
        ),
    ]
    return [
        ids.timeseries(
            title, description, quantile_queries(metric, SELECTOR, BY), unit="s", width=12
        )
        for title, description, metric in panels
    ]


def serving_dashboard() -> dashboard_models.Dashboard:
    """The serving dashboard, per model and node pool."""
    ids = PanelIds()
    builder = (
        dashboard.Dashboard("modelfleet / serving")
        .uid(UID)
        .description("Latency, traffic, load and autoscaling of models served by modelfleet.")
        .tags(["modelfleet", "llm", "serving"])
        .editable()
        .refresh("30s")
        .time("now-1h", "now")
        .tooltip(dashboard_models.DashboardCursorSync.CROSSHAIR)
        .with_variable(datasource_variable())
        .with_variable(label_variable("model", "Model", f"label_values({REQUESTS_RUNNING}, model)"))
        .with_variable(
            label_variable(
                "pool", "Pool", f'label_values({REQUESTS_RUNNING}{{model=~"$model"}}, pool)'
            )
        )
        .with_row(ids.row("Latency"))
    )
    for panel in _latency_panels(ids):
        builder = builder.with_panel(panel)

    return (
        builder.with_row(ids.row("Traffic"))
        .with_panel(
            ids.timeseries(
                "Requests by status code",
                "Answered requests per second by HTTP status code; anything but 200 is an "
                'error. Requests refused before a pool was chosen have pool="none".',
                [
                    query(
                        "sum by (model, pool, code) "
                        f"(rate({REQUESTS_TOTAL}{SELECTOR}[{RATE_INTERVAL}]))",
                        legend=f"{{{{code}}}} {LEGEND}",
                        ref_id="A",
                    )
                ],
                unit="reqps",
                width=12,
                stacked=True,
            )
        )
        .with_panel(
            ids.timeseries(
                "Tokens per second",
                "Prompt tokens read and output tokens generated per second.",
                [
                    query(
                        _totals(f"rate({PROMPT_TOKENS_TOTAL}{SELECTOR}[{RATE_INTERVAL}])"),
                        legend=f"prompt {LEGEND}",
                        ref_id="prompt",
                    ),
                    query(
                        _totals(f"rate({GENERATION_TOKENS_TOTAL}{SELECTOR}[{RATE_INTERVAL}])"),
                        legend=f"generation {LEGEND}",
                        ref_id="generation",
                    ),
                ],
                unit="short",
                width=12,
            )
        )
        .with_row(ids.row("Load"))
        .with_panel(
            _gauge_panel(
                ids,
                "Queue depth",
                "Requests waiting for a slot in the engines: the autoscaling signal.",
                REQUESTS_WAITING,
                unit="short",
            )
        )
        .with_panel(
            _gauge_panel(
                ids,
                "Running requests",
                "Requests the engines are generating for (the continuous batches).",
                REQUESTS_RUNNING,
                unit="short",
            )
        )
        .with_panel(
            _gauge_panel(
                ids,
                "KV-cache usage",
                "Share of KV-cache blocks in use, averaged over a pool's running replicas. "
                "Near 100% the engines preempt requests.",
                KV_CACHE_USAGE_RATIO,
                unit="percentunit",
            ).max(1)
        )
        .with_panel(
            ids.timeseries(
                "Prefix-cache hit rate",
                "Share of prompt tokens found in the engines' prefix caches, whose prefill "
                "was skipped. Prefix-aware routing (spec.serving.routing) raises it for "
                "prompts that share a system prompt or few-shot block.",
                [
                    query(
                        f"{_totals(f'rate({PREFIX_CACHE_HITS_TOTAL}{SELECTOR}[{RATE_INTERVAL}])')}"
                        " / clamp_min("
                        f"{_totals(f'rate({PREFIX_CACHE_QUERIES_TOTAL}{SELECTOR}[{RATE_INTERVAL}])')}"
                        ", 1e-9)",
                        legend=LEGEND,
                        ref_id="A",
                    )
                ],
                unit="percentunit",
            ).max(1)
        )
        .with_row(ids.row("Capacity"))
        .with_panel(
            ids.timeseries(
                "Replicas by state",
                "LLM replicas of each pool by state (starting, running, unhealthy).",
                [
                    query(
                        _totals(f"{REPLICAS}{SELECTOR}", by="model, pool, state"),
                        legend=f"{{{{state}}}} {LEGEND}",
                        ref_id="A",
                    )
                ],
                unit="short",
                width=12,
                stacked=True,
            )
        )
        .with_panel(
            ids.timeseries(
                "Autoscaling: queue depth per replica, target against actual",
                "The autoscaler adds replicas while the waiting requests per replica "
                "(starting ones included) stay above the target "
                "(spec.autoscaling.targetQueueDepth), and removes them while they stay "
                "well below it.",
                [
                    query(
                        _totals(f"{AUTOSCALING_TARGET_QUEUE_DEPTH}{SELECTOR}"),
                        legend=f"target {LEGEND}",
                        ref_id="target",
                    ),
                    # With no replica yet the divisor is clamped to one, so the panel
                    # shows the waiting requests rather than +Inf.
                    query(
                        f"{_totals(f'{REQUESTS_WAITING}{SELECTOR}')} / "
                        "clamp_min(sum by (model, pool) "
                        f"({_totals(f'{REPLICAS}{SELECTOR}', by='model, pool, state')}), 1)",
                        legend=f"actual {LEGEND}",
                        ref_id="actual",
                    ),
                ],
                unit="short",
                width=12,
            )
        )
        .build()
    )
