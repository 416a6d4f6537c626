"""The Triton engine on its own, without Ray: a replica that owns its tritonserver.

The server is the CPU build from nvidia-pytriton with the stand-in TensorRT-LLM model
(tests/assets/triton); these tests drive `TritonEngine` directly, as an LLM replica does.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from modelfleet_serving.config import ServingConfig
from modelfleet_serving.engines import create_engine
from modelfleet_serving.engines.triton import TritonEngine
from modelfleet_serving.errors import ServingError
from modelfleet_serving.models.tiny_llama import ensure_tiny_llama
from transformers import AutoTokenizer
from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
from vllm.entrypoints.openai.completion.protocol import CompletionRequest

from tests.triton_fixtures import TRITON_EVENT_LOG_ENV, copy_triton_repository

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("tritonserver_installed")]

MODEL = "tiny-llama"


def _config(repository: Path) -> ServingConfig:
    return ServingConfig.model_validate(
        {
            "name": "tiny-triton",
            "model": {"source": "builtin://tiny-llama", "served_name": MODEL},
            "engine": {
                "kind": "triton",
                "max_model_len": 512,
                "triton": {"repository": f"file://{repository}"},
            },
            "pools": [{"name": "cpu"}],
        }
    )


async def _collect(items: AsyncIterator[Any]) -> list[Any]:
    return [item async for item in items]


@pytest.fixture
async def engine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[TritonEngine]:
    """A started engine whose replica-owned server logs the model's events."""
    monkeypatch.setenv(TRITON_EVENT_LOG_ENV, str(tmp_path / "events.jsonl"))
    engine = create_engine(_config(copy_triton_repository(tmp_path / "repository")))
    assert isinstance(engine, TritonEngine)
    await engine.start()
    try:
        yield engine
    finally:
        await engine.shutdown()


async def test_replica_owns_its_server_and_turns_unhealthy_when_it_dies(
    engine: TritonEngine,
) -> None:
    server = engine.server
    assert server is not None and server.is_running()
    await engine.check_health()

    request = ChatCompletionRequest.model_validate(
        {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}
    )
    [response] = await _collect(engine.chat(request))
    assert response["object"] == "chat.completion"
    assert response["choices"][0]["finish_reason"] == "length"
    assert len(response["choices"][0]["message"]["content"].split()) == 4
    # Prompt tokens come from the model's tokenizer and its chat template.
    tokenizer = AutoTokenizer.from_pretrained(ensure_tiny_llama())
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True
    )
    expected_prompt_tokens = len(tokenizer.encode(prompt, add_special_tokens=False))
    assert response["usage"] == {
        "prompt_tokens": expected_prompt_tokens,
        "completion_tokens": 4,
        "total_tokens": expected_prompt_tokens + 4,
    }
    assert engine.telemetry.generation_tokens == 4
    assert engine.telemetry.histograms["time_to_first_token_seconds"].count == 1

    assert server.pid is not None
    os.killpg(server.pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while server.is_running() and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    with pytest.raises(RuntimeError, match="tritonserver exited"):
        await engine.check_health()
    completion = CompletionRequest.model_validate({"model": MODEL, "prompt": "Hi"})
    with pytest.raises(ServingError) as caught:
        await _collect(engine.completion(completion))
    assert caught.value.info.status == 503
    assert "Triton server" in caught.value.info.message


async def test_gauges_follow_open_streams(engine: TritonEngine) -> None:
    # The python backend reports no TensorRT-LLM batch metrics, so "running" falls back
    # to the streams this replica holds open; Triton's queue is read from /metrics.
    request = CompletionRequest.model_validate(
        {"model": MODEL, "prompt": "Hi", "max_tokens": 200, "stream": True}
    )
    stream = engine.completion(request)
    await anext(stream)
    stats = await engine.stats()
    assert (stats.running, stats.waiting, stats.kv_cache_usage) == (1, 0, 0.0)
    await stream.aclose()
    assert (await engine.stats()).running == 0
