"""Statistics of a benchmark run: latency percentiles, throughput and goodput.

Definitions follow vLLM's `bench serve` so numbers compare across tools:

* TTFT: request sent → first token received.
* TPOT: (E2E − TTFT) / (output tokens − 1), per request with more than one token.
* ITL: the gaps between consecutive output tokens, pooled over all requests. When one
  read brings several tokens, the gap since the previous token is shared evenly among
  them (vLLM's `bench serve` records one gap per chunk, which reads a server that
  sends several tokens at once as faster than it is).
* E2E: request sent → last byte received.
* Throughput: completed requests and output tokens per second of wall-clock run time.
* Goodput: completed requests per second that met every given target (TTFT and/or
  TPOT, in milliseconds).

Pure: no network, no clock.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

PERCENTILES = (50, 90, 99)


@dataclass(frozen=True)
class RequestResult:
    """What one request measured (seconds), or why it failed; vLLM's field names."""

    success: bool
    start_time: float = 0.0
    """When it was sent (seconds, on a clock shared by the run's requests)."""
    prompt_tokens: int = 0
    output_tokens: int = 0
    ttft: float = 0.0
    latency: float = 0.0
    """End to end: sent → last byte received."""
    itl: tuple[float, ...] = ()
    error: str = ""

    @property
    def tpot(self) -> float | None:
        """Mean time per output token after the first; None with fewer than two."""
        if self.output_tokens < 2:
            return None
        return (self.latency - self.ttft) / (self.output_tokens - 1)


def percentile(values: Sequence[float], p: float) -> float:
    """The p-th percentile with linear interpolation (numpy's default); NaN if empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * p / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass(frozen=True)
class Distribution:
    """Mean and percentiles of one latency, in milliseconds."""

    mean_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float

    @classmethod
    def of(cls, seconds: Sequence[float]) -> Distribution:
        """Summarize latencies given in seconds."""
        ms = [s * 1000 for s in seconds]
        mean = sum(ms) / len(ms) if ms else math.nan
        return cls(mean, *(percentile(ms, p) for p in PERCENTILES))


@dataclass(frozen=True)
class Summary:
    """The numbers `modelfleet bench` prints."""

    completed: int
    failed: int
    duration_s: float
    prompt_tokens: int
    output_tokens: int
    request_throughput: float
    output_throughput: float
    goodput: float | None
    ttft: Distribution
    tpot: Distribution
    itl: Distribution
    e2e: Distribution
    errors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (NaN becomes None)."""

        def clean(value: Any) -> Any:
            if isinstance(value, float) and math.isnan(value):
                return None
            if isinstance(value, dict):
                return {k: clean(v) for k, v in value.items()}
            return value

        return {k: clean(v) for k, v in asdict(self).items()}


def is_good(result: RequestResult, ttft_ms: float | None, tpot_ms: float | None) -> bool:
    """Whether a completed request met every given target."""
    if not result.success:
        return False
    if ttft_ms is not None and result.ttft * 1000 > ttft_ms:
        return False
    if tpot_ms is not None:
        tpot = result.tpot
        if tpot is not None and tpot * 1000 > tpot_ms:
            return False
    return True


def summarize(
    results: Sequence[RequestResult],
    duration_s: float,
    *,
    goodput_ttft_ms: float | None = None,
    goodput_tpot_ms: float | None = None,
) -> Summary:
    """Aggregate per-request results of a run that took `duration_s` seconds."""
    done = [r for r in results if r.success]
    duration = max(duration_s, 1e-9)
    goodput = None
    if goodput_ttft_ms is not None or goodput_tpot_ms is not None:
        good = sum(is_good(r, goodput_ttft_ms, goodput_tpot_ms) for r in done)
        goodput = good / duration
    tpots = [t for r in done if (t := r.tpot) is not None]
    output_tokens = sum(r.output_tokens for r in done)
    return Summary(
        completed=len(done),
        failed=len(results) - len(done),
        duration_s=duration_s,
        prompt_tokens=sum(r.prompt_tokens for r in done),
        output_tokens=output_tokens,
        request_throughput=len(done) / duration,
        output_throughput=output_tokens / duration,
        goodput=goodput,
        ttft=Distribution.of([r.ttft for r in done]),
        tpot=Distribution.of(tpots),
        itl=Distribution.of([gap for r in done for gap in r.itl]),
        e2e=Distribution.of([r.latency for r in done]),
        errors=sorted({r.error for r in results if not r.success})[:10],
    )


def format_summary(summary: Summary, *, title: str = "Benchmark result") -> str:
    """A human-readable table of `summary`."""
    lines = [
        f"{'=' * 20} {title} {'=' * 20}",
        f"{'Successful requests:':<40}{summary.completed:>12}",
        f"{'Failed requests:':<40}{summary.failed:>12}",
        f"{'Duration (s):':<40}{summary.duration_s:>12.2f}",
        f"{'Total input tokens:':<40}{summary.prompt_tokens:>12}",
        f"{'Total generated tokens:':<40}{summary.output_tokens:>12}",
        f"{'Request throughput (req/s):':<40}{summary.request_throughput:>12.2f}",
        f"{'Output token throughput (tok/s):':<40}{summary.output_throughput:>12.2f}",
    ]
    if summary.goodput is not None:
        lines.append(f"{'Request goodput (req/s):':<40}{summary.goodput:>12.2f}")
    for name, dist in (
        ("TTFT", summary.ttft),
        ("TPOT", summary.tpot),
        ("ITL", summary.itl),
        ("E2E", summary.e2e),
    ):
        lines.append(f"{'-' * 12} {name} (ms) {'-' * 12}")
        lines.append(f"{'Mean:':<40}{dist.mean_ms:>12.2f}")
        for p in PERCENTILES:
            lines.append(f"{f'P{p}:':<40}{getattr(dist, f'p{p}_ms'):>12.2f}")
    for error in summary.errors:
        lines.append(f"error: {error}")
    return "\n".join(lines)
