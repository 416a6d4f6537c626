"""`modelfleet bench --url URL`: load an OpenAI-compatible endpoint and report latencies.

Requests stream (SSE) over aiohttp (the client must cost little next to the server),
arrive as a Poisson process at `--request-rate` or keep `--concurrency` in flight
(default: all at once), and ask for exactly the output length drawn (`ignore_eos`,
as vLLM's `bench serve` does with random data), so two servers of the same model do
the same work.

Prompts are random words. With `--tokenizer` (a local model directory) their length
is exact in that tokenizer's tokens; without it each word counts as one token, which
is close for the generated tiny model and for English text in real tokenizers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
import httpx

from modelfleet_cli.bench.stats import RequestResult, format_summary, summarize

# Prompt vocabulary: common words that most tokenizers keep whole.
_TEXT = (
    "the quick brown fox jumps over lazy dog model token batch cache serve ray kube hello "
    "world today story robot cat sea sky mountain poem large language small fast"
)
_WORDS = _TEXT.split()


@dataclass(frozen=True)
class Job:
    """One request to send: the prompt and the exact output length."""

    prompt: str
    prompt_tokens: int
    output_tokens: int


def _length(mean: int, ratio: float, rng: random.Random) -> int:
    low, high = max(1, round(mean * (1 - ratio))), max(1, round(mean * (1 + ratio)))
    return rng.randint(low, high)


def make_jobs(
    count: int,
    input_len: int,
    output_len: int,
    range_ratio: float,
    seed: int,
    tokenizer: Any = None,
) -> list[Job]:
    """Random prompts and output lengths, reproducible from `seed`."""
    rng = random.Random(seed)
    jobs = []
    for _ in range(count):
        n_in = _length(input_len, range_ratio, rng)
        words = [rng.choice(_WORDS) for _ in range(n_in)]
        prompt = " ".join(words)
        if tokenizer is not None:
            ids = tokenizer.encode(prompt, add_special_tokens=False)
            while len(ids) < n_in:
                ids += ids or [0]
            prompt = tokenizer.decode(ids[:n_in])
        jobs.append(Job(prompt, n_in, _length(output_len, range_ratio, rng)))
    return jobs


async def send(
    session: aiohttp.ClientSession, base: str, model: str, endpoint: str, job: Job, args: Any
) -> RequestResult:
    """Send one streaming request and time it.

    The client must cost little next to the server it measures: the body is read in
    whatever pieces the socket gives, split into SSE events by bytes, and only events
    are parsed. ITL is per token: when one read brings the events of several tokens
    (or one event carries several, per `continuous_usage_stats`), the gap since the
    last token is shared evenly among them.
    """
    payload: dict[str, Any] = {
        "model": model,
        "max_tokens": job.output_tokens,
        "stream": True,
        "stream_options": {"include_usage": True},
        "temperature": 0.0,
    }
    if args.ignore_eos:
        payload["ignore_eos"] = True
    if endpoint == "chat":
        url = f"{base}/v1/chat/completions"
        payload["messages"] = [{"role": "user", "content": job.prompt}]
    else:
        url = f"{base}/v1/completions"
        payload["prompt"] = job.prompt
    headers = {"Content-Type": "application/json"}
    if args.api_key:
        headers["Authorization"] = f"Bearer {args.api_key}"
    body = json.dumps(payload).encode()
    start = time.perf_counter()
    first = last = 0.0
    gaps: list[float] = []
    tokens = 0
    usage: dict[str, Any] = {}
    pending = b""
    try:
        async with session.post(url, data=body, headers=headers) as response:
            if response.status != 200:
                text = (await response.read()).decode(errors="replace")
                return RequestResult(success=False, error=f"HTTP {response.status}: {text[:200]}")
            async for piece in response.content.iter_any():
                now = time.perf_counter()
                *events, pending = (pending + piece).split(b"\n\n")
                new = 0
                for event in events:
                    data = event.strip()
                    if not data.startswith(b"data:"):
                        continue
                    data = data[5:].strip()
                    if data == b"[DONE]":
                        continue
                    parsed = json.loads(data)
                    if "error" in parsed:
                        return RequestResult(
                            success=False, error=str(parsed["error"].get("message"))
                        )
                    if parsed.get("usage"):
                        usage = parsed["usage"]
                    if _has_text(parsed):
                        new += 1
                if not new:
                    continue
                if tokens == 0:
                    first = now
                    # The first event's token is the TTFT; the rest of this read's
                    # tokens came with it.
                    gaps.extend([0.0] * (new - 1))
                else:
                    gaps.extend([(now - last) / new] * new)
                last = now
                tokens += new
    except (aiohttp.ClientError, json.JSONDecodeError, TimeoutError) as e:
        return RequestResult(success=False, error=f"{type(e).__name__}: {e}")
    end = time.perf_counter()
    if tokens == 0:
        return RequestResult(success=False, error="no tokens streamed")
    return RequestResult(
        success=True,
        start_time=start,
        prompt_tokens=int(usage.get("prompt_tokens", job.prompt_tokens)),
        output_tokens=int(usage.get("completion_tokens", tokens)),
        ttft=first - start,
        latency=end - start,
        itl=tuple(gaps),
    )


def _has_text(event: dict[str, Any]) -> bool:
    """Whether an event carries an output token, as vLLM's `bench serve` counts them:
    every completion choice does (a token may decode to no text yet, a partial UTF-8
    byte say); a chat delta does unless it only opens the message (the role)."""
    for choice in event.get("choices", ()):
        if "text" in choice:
            return True
        delta = choice.get("delta") or {}
        if delta.get("content") is not None and "role" not in delta:
            return True
    return False


async def run_load(
    base: str, model: str, jobs: Sequence[Job], args: Any
) -> tuple[list[RequestResult], float]:
    """Send every job per the load options; return the results and the run's duration."""
    rng = random.Random(args.seed + 1)
    semaphore = asyncio.Semaphore(args.concurrency) if args.concurrency else None
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    timeout = aiohttp.ClientTimeout(total=args.timeout)
    async with aiohttp.ClientSession(
        connector=connector, timeout=timeout, auto_decompress=False
    ) as session:

        async def one(job: Job) -> RequestResult:
            if semaphore is None:
                return await send(session, base, model, args.endpoint, job, args)
            async with semaphore:
                return await send(session, base, model, args.endpoint, job, args)

        start = time.perf_counter()
        tasks = []
        for job in jobs:
            tasks.append(asyncio.create_task(one(job)))
            if args.request_rate:
                await asyncio.sleep(rng.expovariate(args.request_rate))
        results = await asyncio.gather(*tasks)
        return list(results), time.perf_counter() - start


async def _first_model(base: str, api_key: str | None) -> str:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    async with httpx.AsyncClient(timeout=30) as client:
        response = await client.get(f"{base}/v1/models", headers=headers)
        response.raise_for_status()
        return str(response.json()["data"][0]["id"])


def run_bench(args: argparse.Namespace) -> int:
    """Entry point of `modelfleet bench`; returns the exit status."""
    base = args.url.rstrip("/")
    if base.endswith("/v1"):
        base = base[:-3]
    tokenizer = None
    if args.tokenizer:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    try:
        model = args.model or asyncio.run(_first_model(base, args.api_key))
    except httpx.HTTPError as e:
        print(f"modelfleet bench: cannot list models at {base}: {e}", file=sys.stderr)
        return 2
    jobs = make_jobs(
        args.num_prompts, args.input_len, args.output_len, args.range_ratio, args.seed, tokenizer
    )
    if args.warmup:
        asyncio.run(run_load(base, model, jobs[: args.warmup], args))
    results, duration = asyncio.run(run_load(base, model, jobs, args))
    summary = summarize(
        results,
        duration,
        goodput_ttft_ms=args.goodput_ttft_ms,
        goodput_tpot_ms=args.goodput_tpot_ms,
    )
    if args.plot:
        from modelfleet_cli.bench.plot import plot_run

        plot_run(results, args.plot, title=f"{model} at {base}")
    if args.json:
        print(json.dumps(summary.as_dict(), indent=2))
    else:
        print(format_summary(summary))
    return 0 if summary.completed else 1
