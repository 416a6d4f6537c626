"""Command-line options of `modelfleet bench`, kept apart so `--help` imports nothing heavy."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the bench options to `parser` (names follow vLLM's `bench serve`)."""
    parser.add_argument("--url", required=True, help="base URL, e.g. http://127.0.0.1:8000")
    parser.add_argument("--model", default=None, help="model name (default: the first listed)")
    parser.add_argument("--api-key", default=None, help="bearer token, if the server needs one")
    parser.add_argument(
        "--endpoint",
        choices=["completions", "chat"],
        default="completions",
        help="which OpenAI API to load",
    )
    load = parser.add_mutually_exclusive_group()
    load.add_argument(
        "--request-rate",
        type=float,
        default=None,
        help="requests per second (Poisson arrivals); default: all at once",
    )
    load.add_argument(
        "--concurrency", type=int, default=None, help="keep this many requests in flight"
    )
    parser.add_argument("--num-prompts", type=int, default=100, help="requests to send")
    parser.add_argument("--input-len", type=int, default=64, help="mean prompt length, tokens")
    parser.add_argument("--output-len", type=int, default=64, help="mean output length, tokens")
    parser.add_argument(
        "--range-ratio",
        type=float,
        default=0.0,
        help="lengths are drawn uniformly from mean×[1-r, 1+r]",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of prompts and arrivals")
    parser.add_argument(
        "--goodput-ttft-ms",
        type=float,
        default=None,
        help="a request counts as good only with TTFT at most this",
    )
    parser.add_argument(
        "--goodput-tpot-ms",
        type=float,
        default=None,
        help="a request counts as good only with TPOT at most this",
    )
    parser.add_argument("--timeout", type=float, default=600, help="per-request timeout, s")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument(
        "--tokenizer",
        default=None,
        help="local tokenizer directory: exact prompt lengths in its tokens "
        "(default: one word per token)",
    )
    parser.add_argument(
        "--ignore-eos",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="generate exactly the drawn output length (vLLM's ignore_eos)",
    )
    parser.add_argument(
        "--warmup", type=int, default=0, help="send this many requests first, not counted"
    )
    parser.add_argument(
        "--plot",
        type=Path,
        default=None,
        metavar="FILE.png",
        help="draw latency percentiles and throughput over the run into FILE.png",
    )
