"""`modelfleet serve` with `engine.kind: triton`, as users reach it: the `openai` client.

`modelfleet serve manifests/examples/tiny-triton.yaml` runs the example as shipped on a
local Ray: its replica starts the CPU build of tritonserver (from nvidia-pytriton) with
the built-in stand-in for TensorRT-LLM (`builtin://tiny-triton-standin`, a decoupled
python-backend model). The stand-in logs what reaches it to the file named by
MODELFLEET_TRITON_EVENT_LOG in the command's environment, which the replica and its
server inherit; the same variable finds the replica's server when a test kills it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.serve_fixtures import stop_serve, wait_for_serving
from tests.triton_fixtures import TRITON_EVENT_LOG_ENV, read_events, tritonservers_logging_to

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "manifests" / "examples" / "tiny-triton.yaml"
MODEL = "tiny-llama"
# The stand-in's words; any generated text is made of these.
WORDS = frozenset((
    "alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel",
    "india", "juliett", "kilo", "lima", "mike", "november", "oscar", "papa",
))  # fmt: skip
# Serve notices a dead server at its next health check (every 10 s) and starts a new
# replica, which loads the tokenizer and starts a server again: on a busy two-core
# machine that takes a minute or more.
REPLACEMENT_TIMEOUT_S = 240.0


@dataclass(frozen=True)
class Served:
    """`modelfleet serve` of the example: its base URL and the stand-in's event log."""

    base_url: str
    event_log: Path

    def events(self, request_id: str | None = None) -> list[dict[str, Any]]:
        """What reached the stand-in model (received, finished, cancelled)."""
        return read_events(self.event_log, request_id)


@pytest.fixture(scope="module")
def served(
    tritonserver_installed: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    """The example manifest, as shipped, served by `modelfleet serve`."""
    root = tmp_path_factory.mktemp("triton-serve")
    event_log = root / "events.jsonl"
    log_path = root / "serve.log"
    command = [
        str(Path(sys.executable).with_name("modelfleet")),
        "serve",
        str(EXAMPLE),
        "--port",
        "0",
    ]
    env = {**os.environ, TRITON_EVENT_LOG_ENV: str(event_log)}
    with log_path.open("w") as log:
        process = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            env=env,
            start_new_session=True,
        )
    try:
        yield Served(wait_for_serving(process, log_path), event_log)
    finally:
        stop_serve(process)


@pytest.fixture(scope="module")
def base_url(served: Served) -> str:
    return served.base_url


@pytest.fixture
def client(base_url: str) -> openai.OpenAI:
    # No retries: a 503 must reach the test, not be hidden by the client's back-off.
    return openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0, timeout=60)


def _chat(client: openai.OpenAI, **kwargs: Any) -> Any:
    messages = [{"role": "user", "content": "Tell me a story"}]
    return client.chat.completions.create(model=MODEL, messages=messages, **kwargs)


def test_completion(client: openai.OpenAI) -> None:
    response = client.completions.create(model=MODEL, prompt="Hello", max_tokens=5)
    choice = response.choices[0]
    assert response.object == "text_completion"
    assert len(choice.text.split()) == 5 and set(choice.text.split()) <= WORDS
    assert choice.finish_reason == "length"
    assert response.usage is not None
    assert response.usage.completion_tokens == 5
    assert response.usage.prompt_tokens > 0


def test_chat_with_stop(client: openai.OpenAI) -> None:
    full = _chat(client, max_tokens=6).choices[0].message.content
    words = full.split()
    assert len(words) == 6 and set(words) <= WORDS
    # Stopping at the fourth word leaves the first three, without the stop string.
    stopped = _chat(client, max_tokens=6, stop=[f" {words[3]}"])
    assert stopped.choices[0].message.content == " ".join(words[:3])
    assert stopped.choices[0].finish_reason == "stop"


def test_stream_matches_the_whole_response(client: openai.OpenAI) -> None:
    whole = _chat(client, max_tokens=8, seed=3)
    chunks = list(
        _chat(client, max_tokens=8, seed=3, stream=True, stream_options={"include_usage": True})
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) > 1
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 8


def test_engine_telemetry_reaches_the_metrics(base_url: str) -> None:
    # Earlier tests generated tokens; the replica reports them every half second.
    deadline = time.monotonic() + 15
    while True:
        text = httpx.get(f"{base_url}/metrics", timeout=10).text
        samples = [
            line
            for line in text.splitlines()
            if line.startswith("modelfleet_generation_tokens_total")
        ]
        if any(float(line.rsplit(" ", 1)[1]) > 0 for line in samples):
            break
        assert time.monotonic() < deadline, f"no generation tokens counted:\n{samples}"
        time.sleep(0.5)
    assert "modelfleet_time_to_first_token_seconds_bucket" in text


def test_closing_a_stream_cancels_the_triton_request(client: openai.OpenAI, served: Served) -> None:
    # 400 words at the stand-in's pace take several seconds: long enough to cancel.
    stream = _chat(client, max_tokens=400, stream=True)
    first = next(iter(stream))
    request_id = first.id.removeprefix("chatcmpl-")
    stream.close()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        events = {e["event"]: e for e in served.events(request_id)}
        if "cancelled" in events or "finished" in events:
            break
        time.sleep(0.2)
    assert "received" in events, f"request {request_id} never reached Triton"
    assert "cancelled" in events, f"Triton's request was not cancelled: {events}"
    assert events["cancelled"]["tokens"] < 400


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"n": 2}, "n"),
        ({"logprobs": True}, "logprobs"),
        ({"seed": -1}, "seed"),
        ({"max_tokens": 100_000}, "max_tokens"),
        ({"extra_body": {"top_k": -5}}, "top_k"),
        ({"temperature": 3.0}, "temperature"),
    ],
)
def test_bad_parameters_never_reach_triton(
    client: openai.OpenAI, served: Served, kwargs: dict[str, Any], param: str
) -> None:
    received = len(served.events())
    with pytest.raises(openai.BadRequestError) as caught:
        _chat(client, **kwargs)
    error = caught.value.body
    assert isinstance(error, dict) and error["param"] == param, error
    assert len(served.events()) == received


def test_triton_down_is_503_and_back_serves_again(client: openai.OpenAI, served: Served) -> None:
    # The replica owns its server: killing the server makes the replica's requests 503
    # until Serve's health check replaces the replica, and with it the server.
    [pid] = tritonservers_logging_to(served.event_log)
    os.killpg(pid, signal.SIGKILL)
    with pytest.raises(openai.APIStatusError) as caught:
        _chat(client, max_tokens=3)
    assert caught.value.status_code == 503
    assert "Triton server at" in caught.value.message
    with pytest.raises(openai.APIStatusError) as caught:
        list(_chat(client, max_tokens=3, stream=True))
    assert caught.value.status_code == 503
    # Requests wait in Serve while the new replica starts: allow them that long.
    patient = client.with_options(timeout=REPLACEMENT_TIMEOUT_S)
    deadline = time.monotonic() + REPLACEMENT_TIMEOUT_S
    while True:
        try:
            response = _chat(patient, max_tokens=3)
            break
        except (openai.APIStatusError, openai.APITimeoutError) as e:
            if isinstance(e, openai.APIStatusError) and e.status_code != 503:
                raise
            if time.monotonic() > deadline:
                raise
            time.sleep(1)
    assert len(response.choices[0].message.content.split()) == 3
    [replacement] = tritonservers_logging_to(served.event_log)
    assert replacement != pid
