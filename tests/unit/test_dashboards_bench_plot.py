"""`modelfleet bench --plot`: the PNG of latency percentiles and throughput over a run."""

from __future__ import annotations

import argparse
import random
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from matplotlib.image import imread
from modelfleet_cli.bench.options import add_bench_arguments
from modelfleet_cli.bench.plot import plot_run

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@dataclass
class Record:
    """A request record with vLLM's `bench serve` field names."""

    start_time: float
    success: bool
    ttft: float
    latency: float
    output_tokens: int
    itl: list[float] = field(default_factory=list)


def _run(n: int, seed: int = 0) -> list[Record]:
    rng = random.Random(seed)
    records = []
    for i in range(n):
        tokens = rng.randint(1, 64)
        itl = [rng.uniform(0.01, 0.05) for _ in range(tokens - 1)]
        ttft = rng.uniform(0.05, 0.5)
        records.append(
            Record(
                start_time=1000.0 + i * 0.1,
                success=i % 17 != 0,
                ttft=ttft,
                latency=ttft + sum(itl),
                output_tokens=tokens,
                itl=itl,
            )
        )
    return records


def test_plot_writes_a_png_with_every_panel(tmp_path: Path) -> None:
    out = tmp_path / "run.png"
    plot_run(_run(200), out)
    assert out.read_bytes().startswith(PNG_MAGIC)
    height, width, _ = imread(out).shape
    assert (width, height) == (1100, 1200)


def test_plot_of_a_single_request(tmp_path: Path) -> None:
    out = tmp_path / "one.png"
    plot_run([Record(start_time=5.0, success=True, ttft=0.1, latency=0.1, output_tokens=1)], out)
    assert out.read_bytes().startswith(PNG_MAGIC)


def test_plot_when_every_request_failed(tmp_path: Path) -> None:
    out = tmp_path / "failed.png"
    failed = [
        Record(start_time=float(i), success=False, ttft=0.0, latency=0.2, output_tokens=0)
        for i in range(5)
    ]
    plot_run(failed, out)
    assert out.read_bytes().startswith(PNG_MAGIC)


def test_plot_refuses_an_empty_run(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no requests"):
        plot_run([], tmp_path / "empty.png")


def test_bench_accepts_plot_option() -> None:
    parser = argparse.ArgumentParser()
    add_bench_arguments(parser)
    args = parser.parse_args(["--url", "http://127.0.0.1:8000", "--plot", "run.png"])
    assert args.plot == Path("run.png")
    assert parser.parse_args(["--url", "http://127.0.0.1:8000"]).plot is None
