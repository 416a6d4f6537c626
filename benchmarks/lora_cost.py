"""What LoRA support costs the tiny model's engine on this machine: start-up time and
memory, with and without it, and the time to load one adapter at run time.

Each variant runs in a fresh Python process (no import or page cache of the other
carries over beyond what the OS keeps) through modelfleet's own engine class
(`VLLMEngine`, vLLM's `AsyncLLM` and its OpenAI handlers), with the engine settings of
`manifests/examples/tiny-cpu-lora.yaml` (float32, maxNumSeqs 16, 1 GiB of KV cache):
once with its adapters (so `--enable-lora --max-loras 2 --max-lora-rank 8`), once
with none. Memory is the resident set of the process and its children (vLLM's engine
core and worker) once the engine is ready. Nothing is served over HTTP.

    .venv/bin/python benchmarks/lora_cost.py [--runs 2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "manifests" / "examples" / "tiny-cpu-lora.yaml"


def _rss_bytes(pid: int) -> int:
    """Resident bytes of `pid` and all its descendants, from /proc."""
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        try:
            status = Path(f"/proc/{current}/status").read_text()
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1]) * 1024
        todo += [int(c) for c in children]
    return total


async def _measure(with_lora: bool) -> dict[str, Any]:
    from modelfleet_operator.api.v1alpha1 import ModelDeployment
    from modelfleet_operator.translate import serving_config
    from modelfleet_serving.engines.vllm_engine import VLLMEngine
    from modelfleet_serving.models import resolve_model_source

    manifest = yaml.safe_load(EXAMPLE.read_text())
    adapters = manifest["spec"]["model"]["adapters"]
    if not with_lora:
        manifest["spec"]["model"]["adapters"] = []
        manifest["spec"]["engine"].pop("maxLoras", None)
        manifest["spec"]["engine"].pop("maxLoraRank", None)
    config = serving_config(ModelDeployment.from_object(manifest), in_cluster=False)
    assert config.lora_enabled == with_lora
    engine = VLLMEngine(config)
    started = time.monotonic()
    await engine.start()
    result: dict[str, Any] = {
        "start_s": time.monotonic() - started,
        "rss_bytes": _rss_bytes(os.getpid()),
    }
    if with_lora:
        path = resolve_model_source(adapters[0]["source"])
        started = time.monotonic()
        await engine.load_adapter(adapters[0]["name"], path)
        result["adapter_load_s"] = time.monotonic() - started
        result["rss_with_adapter_bytes"] = _rss_bytes(os.getpid())
    await engine.shutdown()
    return result


def _one(with_lora: bool) -> dict[str, Any]:
    """One variant in a fresh interpreter; its result as the child printed it."""
    command = [sys.executable, __file__, "--child", "lora" if with_lora else "plain"]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=2, help="starts per variant (default 2)")
    parser.add_argument("--child", choices=["lora", "plain"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(asyncio.run(_measure(args.child == "lora"))), flush=True)
        return
    results: dict[bool, list[dict[str, Any]]] = {False: [], True: []}
    for _ in range(args.runs):
        for with_lora in (False, True):
            results[with_lora].append(_one(with_lora))
    gib = 2**30
    print("| engine | start s (median) | resident GiB (median) | adapter load s |")
    print("|---|---|---|---|")
    for with_lora, name in ((False, "no LoRA"), (True, "LoRA, max 2 adapters of rank 8")):
        runs = results[with_lora]
        start = statistics.median(r["start_s"] for r in runs)
        rss = statistics.median(r["rss_bytes"] for r in runs) / gib
        load = f"{statistics.median(r['adapter_load_s'] for r in runs):.3f}" if with_lora else "—"
        print(f"| {name} | {start:.1f} | {rss:.2f} | {load} |")
    plain, lora = results[False], results[True]
    ratio = statistics.median(r["start_s"] for r in lora) / statistics.median(
        r["start_s"] for r in plain
    )
    extra = (
        statistics.median(r["rss_bytes"] for r in lora)
        - statistics.median(r["rss_bytes"] for r in plain)
    ) / gib
    print(f"\nLoRA support: start-up {ratio:.2f}× the plain engine's, {extra:+.2f} GiB resident")


if __name__ == "__main__":
    main()
