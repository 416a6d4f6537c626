"""The Triton engine on its own, without Ray: a replica that owns its tritonserver.

The server is the CPU build from nvidia-pytriton with the stand-in TensorRT-LLM model
(`builtin://tiny-triton-standin`); these tests drive `TritonEngine` directly, as an LLM
replica does: with a server it starts itself (the default command, or a wrapper given
as `serverCommand`), and with a shared server given by `url` and `metricsUrl`.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from modelfleet_serving.config import ServingConfig
from modelfleet_serving.engines import create_engine
from modelfleet_serving.engines.triton import TritonEngine
from modelfleet_serving.engines.triton_install import ensure_tritonserver
from modelfleet_serving.errors import ServingError
from modelfleet_serving.models.tiny_llama import ensure_tiny_llama
from transformers import AutoTokenizer
from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
from vllm.entrypoints.openai.completion.protocol import CompletionRequest

from tests.triton_fixtures import TRITON_EVENT_LOG_ENV, TritonStandIn, copy_triton_repository

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("tritonserver_installed")]

MODEL = "tiny-llama"


def _config(repository: Path | None = None, **triton: Any) -> ServingConfig:
    if repository is not None:
        triton["repository"] = f"file://{repository}"
    return ServingConfig.model_validate(
        {
            "name": "tiny-triton",
            "model": {"source": "builtin://tiny-llama", "served_name": MODEL},
            "engine": {"kind": "triton", "max_model_len": 512, "triton": triton},
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


def _wrapper(path: Path, marker: Path) -> Path:
    """A launch script of the kind an image ships: it records how it was called, sets up
    the environment its server needs, and execs tritonserver with the flags it got."""
    install = ensure_tritonserver()
    env = install.environment({})
    path.write_text(
        "#!/bin/sh\n"
        f"printf '%s\\n' \"$@\" > {shlex.quote(str(marker))}\n"
        "unset PYTHONPATH PYTHONHOME PYTHONSTARTUP VIRTUAL_ENV\n"
        f"export LD_LIBRARY_PATH={shlex.quote(env['LD_LIBRARY_PATH'])}\n"
        f'exec {shlex.join(install.command())} "$@"\n'
    )
    path.chmod(0o755)
    return path


async def test_server_command_starts_the_replicas_server(tmp_path: Path) -> None:
    marker = tmp_path / "wrapper-args.txt"
    wrapper = _wrapper(tmp_path / "launch-triton.sh", marker)
    repository = copy_triton_repository(tmp_path / "repository")
    engine = create_engine(_config(repository, server_command=[str(wrapper), "--log-info=true"]))
    assert isinstance(engine, TritonEngine)
    await engine.start()
    try:
        # The wrapper ran, with its own arguments and then the ones modelfleet appends.
        args = marker.read_text().splitlines()
        assert args[0] == "--log-info=true"
        assert f"--model-repository={repository}" in args
        assert engine.server is not None
        assert f"--grpc-port={engine.server.grpc_port}" in args
        # And a request streams through the server it started.
        request = ChatCompletionRequest.model_validate(
            {
                "model": MODEL,
                "messages": [{"role": "user", "content": "Hi"}],
                "max_tokens": 5,
                "stream": True,
            }
        )
        chunks = await _collect(engine.chat(request))
        assert chunks[-1] == "data: [DONE]\n\n"
        assert sum(1 for c in chunks if '"content":' in c) >= 5
        await engine.check_health()
    finally:
        await engine.shutdown()


async def test_a_shared_server_down_is_503_while_the_replica_stays_healthy(
    triton_stand_in: TritonStandIn,
) -> None:
    server = triton_stand_in.server
    engine = create_engine(
        _config(repository=None, url=server.grpc_url, metrics_url=server.metrics_url)
    )
    assert isinstance(engine, TritonEngine)
    # `repository` is required by the CRD; with `url` the replica never reads it.
    await engine.start()
    try:
        assert engine.server is None
        completion = CompletionRequest.model_validate(
            {"model": MODEL, "prompt": "Hi", "max_tokens": 3}
        )
        [response] = await _collect(engine.completion(completion))
        assert len(response["choices"][0]["text"].split()) == 3
        assert (await engine.stats()).waiting == 0
        server.stop()
        try:
            # Replacing this replica could not bring someone else's server back.
            await engine.check_health()
            with pytest.raises(ServingError) as caught:
                await _collect(engine.completion(completion))
            assert caught.value.info.status == 503
            assert f"Triton server at {server.grpc_url}" in caught.value.info.message
        finally:
            server.start()
        deadline = time.monotonic() + 60
        while True:
            try:
                [response] = await _collect(engine.completion(completion))
                break
            except ServingError as e:
                if e.info.status != 503 or time.monotonic() > deadline:
                    raise
                await asyncio.sleep(1)
        assert len(response["choices"][0]["text"].split()) == 3
    finally:
        await engine.shutdown()
