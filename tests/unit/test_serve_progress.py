"""The progress lines `modelfleet serve` derives from the engines' logs (pure)."""

from __future__ import annotations

import pytest
from modelfleet_cli.serve import ProgressParser

# How Ray forwards a replica's line to the driver: a coloured prefix, then the line.
RAY = "\x1b[36m(ServeReplica:tiny-cpu:cpu pid=617)\x1b[0m "
VLLM = RAY + "(Worker pid=2470) INFO 12-01 21:44:59 [default_loader.py:502] "
CORE = RAY + "(EngineCore pid=1196) INFO 12-01 21:45:40 [core.py:403] "

# (log line, the progress line it gives or None)
LINES = [
    (RAY + "Triton is installed, but doesn't include CPU backend. Disabling Triton.", None),
    (VLLM + "Loading weights took 0.01 seconds", "weights loaded in 0.01 s"),
    (
        RAY + "(Worker pid=2470) INFO [gpu_model_runner.py:5150] Model loading took 14.99 GiB "
        "memory and 21.503344 seconds",
        "weights loaded: 14.99 GiB in 21.5 s",
    ),
    (
        VLLM + "Warming up model for the compilation...",
        "compiling and warming up the model (a minute or more on a first start)",
    ),
    (
        CORE + "CPU KV cache size: 1,048,576 tokens, Maximum concurrency for 512 tokens per "
        "request: 2048.00x",
        "KV cache: 1,048,576 tokens (enough for 2048 requests of 512 tokens)",
    ),
    (CORE + "GPU KV cache size: 91,520 tokens", "KV cache: 91,520 tokens"),
    (
        CORE + "init engine (profile, create kv cache, warmup model) took 41.75 s "
        "(compilation: 30.10 s)",
        "engine initialised in 41.8 s",
    ),
    (
        RAY.replace("cpu", "triton") + "INFO 2026-12-01 21:47:28,602 tiny-triton_cpu x -- "
        "tritonserver (pid 3404) serves /cache/triton-standin-0123 and logs to "
        "/tmp/tritonserver-ab12.log",
        "tritonserver started; its own log is /tmp/tritonserver-ab12.log",
    ),
    ("modelfleet: weights loaded in 0.01 s", None),
]


@pytest.mark.parametrize(("line", "progress"), LINES)
def test_engine_lines_become_progress_lines(line: str, progress: str | None) -> None:
    assert ProgressParser().feed(line) == progress


def test_each_event_is_told_once() -> None:
    # A second replica (or pool) loading the same model adds no lines.
    parser = ProgressParser()
    line = VLLM + "Loading weights took 0.01 seconds"
    assert parser.feed(line) is not None
    assert parser.feed(line) is None
    assert parser.feed(VLLM + "Model loading took 1 GiB memory and 2.0 seconds") is None


def _shards(done: int, total: int) -> str:
    percent = 100 * done // total
    return (
        RAY + f"\rLoading safetensors checkpoint shards: {percent:3d}% Completed | "
        f"{done}/{total} [00:03<00:10]"
    )


def test_checkpoint_shards_are_told_by_the_quarter() -> None:
    parser = ProgressParser()
    told = [parser.feed(_shards(done, 30)) for done in range(31)]
    assert [t for t in told if t] == [
        "loading weights: 8/30 checkpoint shards",
        "loading weights: 15/30 checkpoint shards",
        "loading weights: 23/30 checkpoint shards",
        "loading weights: 30/30 checkpoint shards",
    ]


def test_one_shard_is_told_when_loaded() -> None:
    parser = ProgressParser()
    assert parser.feed(_shards(0, 1)) is None
    assert parser.feed(_shards(1, 1)) == "loading weights: 1/1 checkpoint shards"


def test_shards_are_not_told_once_the_weights_are_loaded() -> None:
    parser = ProgressParser()
    parser.feed(VLLM + "Loading weights took 0.01 seconds")
    assert parser.feed(_shards(1, 1)) is None
