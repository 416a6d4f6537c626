"""Prefix-aware routing against least-loaded routing, same workload, same two replicas.

`modelfleet serve` runs a copy of `manifests/examples/tiny-cpu-lora.yaml` (two replicas
of the generated tiny Llama, vLLM's CPU build, 127.0.0.1, a free port), once with
`serving.routing: prefix-aware` and once with `least-loaded`, each from cold engines
(the server is restarted between them, so no prefix cache carries over).

The workload is many tenants with short sessions: `--prefixes` system prompts of about
1500 characters, each followed by `--per-prefix` different questions, sent in a fixed
shuffled order by `--concurrency` streaming clients, greedy, 8 output tokens. Each
engine keeps a prefix once it computed it, so the hit rate is bounded by how often a
prefix's requests land on a replica that has already seen it: with one replica per
prefix all but the first request hit; spread over two, all but the first two.

Printed per policy: TTFT p50 and p90 (client side, from sending the request to the
first streamed token), the prefix-cache hit rate (prompt tokens found in the engines'
caches over those looked up, from `modelfleet_prefix_cache_*_total`), and the ratio of
the two policies.

    .venv/bin/python benchmarks/prefix_routing.py [--prefixes 24] [--per-prefix 4]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "manifests" / "examples" / "tiny-cpu-lora.yaml"
SERVING_LINE = re.compile(r"modelfleet: serving '[^']*' at (http://\S+)/v1")
START_TIMEOUT_S = 900
MODEL = "tiny-llama"
POLICIES = ("prefix-aware", "least-loaded")
WORDS = ("bicycle", "chain", "wheel", "brake", "saddle", "pedal", "frame", "spoke", "tyre")


def system_prompt(tenant: int) -> str:
    """About 1500 characters, different for every tenant from the first word on."""
    rng = random.Random(tenant)
    words = [rng.choice(WORDS) for _ in range(230)]
    return f"Tenant {tenant}. You are the assistant of shop {tenant}. " + " ".join(words)


def workload(prefixes: int, per_prefix: int, seed: int) -> list[str]:
    prompts = [
        f"{system_prompt(t)}\nQuestion {q}: is part {q * 7 + t} in stock?"
        for t in range(prefixes)
        for q in range(per_prefix)
    ]
    random.Random(seed).shuffle(prompts)
    return prompts


def start(policy: str, folder: Path) -> tuple[subprocess.Popen[bytes], str]:
    manifest = folder / f"{policy}.yaml"
    obj = yaml.safe_load(EXAMPLE.read_text())
    obj["spec"]["serving"]["routing"] = policy
    # The system prompts run to about 800 of the tiny tokenizer's tokens.
    obj["spec"]["engine"]["maxModelLen"] = 2048
    manifest.write_text(yaml.safe_dump(obj, sort_keys=False))
    log = folder / f"{policy}.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            [
                str(Path(sys.executable).with_name("modelfleet")),
                "serve",
                str(manifest),
                "--port",
                "0",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        found = SERVING_LINE.search(log.read_text(errors="replace"))
        if found:
            return process, found.group(1)
        if process.poll() is not None:
            break
        time.sleep(1)
    stop(process)
    sys.exit(f"modelfleet serve did not come up:\n{log.read_text()[-3000:]}")


def stop(process: subprocess.Popen[bytes]) -> None:
    import os

    if process.poll() is None:
        os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def cache_counters(base: str) -> tuple[float, float]:
    text = httpx.get(f"{base}/metrics", timeout=30).text
    totals = {}
    for name in ("modelfleet_prefix_cache_queries_total", "modelfleet_prefix_cache_hits_total"):
        totals[name] = sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith(name + "{")
        )
    return totals["modelfleet_prefix_cache_queries_total"], totals[
        "modelfleet_prefix_cache_hits_total"
    ]


async def ttft(client: httpx.AsyncClient, base: str, prompt: str) -> float:
    body = {"model": MODEL, "prompt": prompt, "max_tokens": 8, "temperature": 0, "stream": True}
    sent = time.perf_counter()
    first: float | None = None
    async with client.stream("POST", f"{base}/v1/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            data = line.removeprefix("data: ")
            done = first is not None or data in (line, "[DONE]")
            if not done and json.loads(data)["choices"][0].get("text"):
                first = time.perf_counter() - sent
    if first is None:
        raise RuntimeError("the stream carried no token")
    return first


async def load(base: str, prompts: list[str], concurrency: int) -> list[float]:
    queue = list(prompts)
    times: list[float] = []
    async with httpx.AsyncClient(timeout=120) as client:

        async def worker() -> None:
            while queue:
                times.append(await ttft(client, base, queue.pop(0)))

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return times


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def measure(policy: str, args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    process, base = start(policy, folder)
    try:
        time.sleep(3)  # both replicas reported to the hub
        warm = [f"Warm-up {i}: hello there, how are you today my friend?" for i in range(4)]
        asyncio.run(load(base, warm, 2))
        time.sleep(1.5)
        queries0, hits0 = cache_counters(base)
        times = asyncio.run(
            load(base, workload(args.prefixes, args.per_prefix, args.seed), args.concurrency)
        )
        time.sleep(1.5)  # the last reports reach the hub
        queries1, hits1 = cache_counters(base)
    finally:
        stop(process)
    return {
        "ttft_p50_ms": percentile(times, 50) * 1000,
        "ttft_p90_ms": percentile(times, 90) * 1000,
        "hit_rate": (hits1 - hits0) / max(queries1 - queries0, 1),
        "requests": len(times),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prefixes", type=int, default=24)
    parser.add_argument("--per-prefix", type=int, default=4)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="prefix-bench-"))
    try:
        results = {policy: measure(policy, args, folder) for policy in POLICIES}
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    print(
        f"\n{args.prefixes} prefixes x {args.per_prefix} requests, concurrency "
        f"{args.concurrency}, two replicas\n"
    )
    print(f"{'routing':<14}{'TTFT p50 ms':>12}{'TTFT p90 ms':>12}{'hit rate':>10}")
    for policy, r in results.items():
        print(
            f"{policy:<14}{r['ttft_p50_ms']:>12.1f}{r['ttft_p90_ms']:>12.1f}{r['hit_rate']:>10.2f}"
        )
    a, b = results["prefix-aware"], results["least-loaded"]
    print(
        f"\nprefix-aware / least-loaded: TTFT p50 {a['ttft_p50_ms'] / b['ttft_p50_ms']:.2f}, "
        f"hit rate {a['hit_rate'] / max(b['hit_rate'], 1e-9):.2f}"
    )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
