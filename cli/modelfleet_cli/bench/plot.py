"""`modelfleet bench --plot FILE.png`: latency percentiles and throughput over a run.

The plot reads the per-request records the bench keeps anyway, with the field names
of vLLM's `bench serve` (`start_time`, `ttft`, `latency`, `itl`, `output_tokens`,
`success`), so any record type with those attributes works.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

# Percentiles drawn for every latency, and their line styles (median solid).
PERCENTILES = (50, 90, 99)
_STYLES = {50: "-", 90: "--", 99: ":"}

# About this many time windows across the run: enough to show a trend, few enough
# that each window holds several requests.
_WINDOWS = 40


class RequestRecord(Protocol):
    """One finished request as the bench measured it."""

    @property
    def start_time(self) -> float:
        """When it was sent, in seconds on any clock shared by all records."""

    @property
    def success(self) -> bool:
        """Whether it completed without error."""

    @property
    def ttft(self) -> float:
        """Time to first token, seconds."""

    @property
    def latency(self) -> float:
        """End-to-end latency, seconds."""

    @property
    def itl(self) -> Sequence[float]:
        """Gaps between consecutive streamed chunks, seconds."""

    @property
    def output_tokens(self) -> int:
        """Tokens generated."""


def plot_run(results: Sequence[RequestRecord], path: Path, *, title: str = "") -> None:
    """Draw TTFT, TPOT, ITL and E2E percentiles and throughput over the run into `path`.

    Time runs along x in seconds since the first request was sent. Latencies are
    grouped by when each request finished; throughput counts output tokens by when
    they were streamed. Failed requests are drawn as their own rate.
    """
    if not results:
        raise ValueError("no requests to plot")
    t0 = min(r.start_time for r in results)
    end = max(r.start_time + r.latency for r in results) - t0
    edges = np.linspace(0.0, max(end, 1e-3), _WINDOWS + 1)
    centers = (edges[:-1] + edges[1:]) / 2
    width = edges[1] - edges[0]

    ok = [r for r in results if r.success]
    finished = np.array([r.start_time + r.latency - t0 for r in ok])
    window = np.clip(np.digitize(finished, edges) - 1, 0, _WINDOWS - 1)

    figure = Figure(figsize=(11, 12), layout="constrained")
    axes = figure.subplots(5, 1, sharex=True)
    ttft_ax, tpot_ax, itl_ax, e2e_ax, rate_ax = axes
    figure.suptitle(title or f"modelfleet bench: {len(results)} requests, {len(ok)} succeeded")

    _percentiles(ttft_ax, centers, window, [r.ttft for r in ok], "TTFT (ms)")
    _percentiles(tpot_ax, centers, window, [_tpot(r) for r in ok], "TPOT (ms)")
    # Every gap of a request counts in the window its request finished in.
    itl_window = np.repeat(window, [len(r.itl) for r in ok])
    itl_values = [gap for r in ok for gap in r.itl]
    _percentiles(itl_ax, centers, itl_window, itl_values, "ITL (ms)")
    _percentiles(e2e_ax, centers, window, [r.latency for r in ok], "E2E latency (ms)")

    token_times = np.concatenate([np.empty(0), *(_token_times(r) - t0 for r in ok)])
    tokens, _ = np.histogram(token_times, bins=edges)
    rate_ax.plot(centers, tokens / width, color="tab:blue", label="output tokens/s")
    rate_ax.set_ylabel("output tokens/s")
    rate_ax.set_ylim(bottom=0)
    requests_ax = rate_ax.twinx()
    done, _ = np.histogram(finished, bins=edges)
    requests_ax.plot(centers, done / width, color="tab:green", label="requests/s")
    failed_at = np.array([r.start_time + r.latency - t0 for r in results if not r.success])
    if failed_at.size:
        failed, _ = np.histogram(failed_at, bins=edges)
        requests_ax.plot(centers, failed / width, color="tab:red", label="failed requests/s")
    requests_ax.set_ylabel("requests/s")
    requests_ax.set_ylim(bottom=0)
    # One legend for both y axes.
    handles, labels = rate_ax.get_legend_handles_labels()
    more_handles, more_labels = requests_ax.get_legend_handles_labels()
    rate_ax.legend(handles + more_handles, labels + more_labels, loc="upper left")
    rate_ax.set_xlabel("seconds since the first request")
    for ax in axes:
        ax.grid(True, alpha=0.3)
    figure.savefig(path, dpi=100)


def _percentiles(
    ax: Axes, centers: np.ndarray, window: np.ndarray, values: Sequence[float], label: str
) -> None:
    """Per-window percentiles of `values` (seconds, drawn in ms); empty windows are gaps."""
    data = np.asarray(values, dtype=float) * 1000
    for p in PERCENTILES:
        line = np.full(len(centers), np.nan)
        for i in range(len(centers)):
            in_window = data[window == i]
            if in_window.size:
                line[i] = np.percentile(in_window, p)
        ax.plot(centers, line, _STYLES[p], marker=".", label=f"p{p}")
    ax.set_ylabel(label)
    ax.legend(loc="upper left")


def _tpot(r: RequestRecord) -> float:
    """Mean time per output token after the first, as vLLM defines TPOT (0 for one token)."""
    if r.output_tokens < 2:
        return 0.0
    return (r.latency - r.ttft) / (r.output_tokens - 1)


def _token_times(r: RequestRecord) -> np.ndarray:
    """When each output token arrived: spread evenly from the first token to the end.

    Streamed chunks may hold several tokens, so the chunk gaps (`itl`) cannot place
    every token; an even spread over the generation keeps the rate right.
    """
    return np.linspace(r.start_time + r.ttft, r.start_time + r.latency, max(r.output_tokens, 0))
