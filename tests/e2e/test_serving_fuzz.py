"""Fuzzing the OpenAI API of a running `modelfleet serve` (the tiny model on vLLM).

schemathesis generates requests from the document the server serves at
`/openapi.json` (vLLM's request models): bodies that fit the schema and bodies that
break it. Cases made by hand cover what a schema cannot say: bytes that are not
UTF-8, a 10 MB body, JSON nested past any parser's depth, the wrong content type,
absurd `max_tokens` and `n`, a client that sends its body slowly and one that goes
away mid-stream.

Every answer must be a success or an OpenAI-shaped error with a 4xx status: no 5xx for
bad input. After every case a good request must still succeed, so nothing the case did
broke the server. The counts per class of answer are printed at the end.

Generated bodies name the served model (a random name is a 404 before anything else
is read) and, to keep CI short, ask for at most `_MAX_TOKENS` tokens and
`_MAX_N` choices (what a generation costs is not what is being fuzzed; the hand-made
cases send the absurd values). `MODELFLEET_FUZZ_EXAMPLES` sets how many examples each
operation gets (default 40); a long run is the same test with a larger number.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from modelfleet_serving.openapi import ERROR_SCHEMA, openapi_document
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

pytestmark = pytest.mark.e2e

MODEL = "tiny-llama"
EXAMPLES = int(os.environ.get("MODELFLEET_FUZZ_EXAMPLES", "40"))
_MAX_TOKENS = 8
_MAX_N = 2
# What each class of answer was, by case kind: printed once the module is done.
ANSWERS: Counter[str] = Counter()

# The document the code builds (test_the_served_document_is_the_one_fuzzed checks that
# the running server serves this very one at /openapi.json). Valid bodies and ones that
# break the schema come from Hypothesis; schemathesis's coverage phase (every boundary
# of every field, some 2,300 cases here) runs only in a long run.
PHASES = {"coverage": {"enabled": "MODELFLEET_FUZZ_EXAMPLES" in os.environ}}
schema = schemathesis.openapi.from_dict(
    openapi_document(),
    config=schemathesis.Config.from_dict({"phases": PHASES, "generation": {"mode": "all"}}),
)


@pytest.fixture(scope="module", autouse=True)
def _report() -> Iterator[None]:
    yield
    lines = [f"  {kind}: {count}" for kind, count in sorted(ANSWERS.items())]
    print(f"\nfuzzed {sum(ANSWERS.values())} cases:\n" + "\n".join(lines))


def test_the_served_document_is_the_one_fuzzed(tiny_cpu_serve: str) -> None:
    answer = httpx.get(f"{tiny_cpu_serve}/openapi.json", timeout=60)
    assert answer.status_code == 200
    assert answer.json() == openapi_document()


def _good_request_succeeds(base: str) -> None:
    answer = httpx.post(
        f"{base}/v1/completions",
        json={"model": MODEL, "prompt": "The sea", "max_tokens": 2},
        timeout=120,
    )
    assert answer.status_code == 200, answer.text


def _cheap(body: Any) -> None:
    """Name the served model, and cap what a generated body asks the engine to do
    (see the module docstring)."""
    if not isinstance(body, dict):
        return
    # A random string is an unknown model: a 404 before any other field is looked at.
    if isinstance(body.get("model"), str):
        body["model"] = MODEL
    for field in ("max_tokens", "max_completion_tokens"):
        if isinstance(body.get(field), int) and not isinstance(body[field], bool):
            body[field] = min(body[field], _MAX_TOKENS)
    if isinstance(body.get("n"), int) and not isinstance(body["n"], bool):
        body["n"] = min(body["n"], _MAX_N)


@schema.parametrize()
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    print_blob=True,
    # The same cases on every CI run; a long run (MODELFLEET_FUZZ_EXAMPLES) draws anew.
    derandomize="MODELFLEET_FUZZ_EXAMPLES" not in os.environ,
)
def test_generated_requests_get_a_success_or_a_4xx(case: Any, tiny_cpu_serve: str) -> None:
    _cheap(case.body)
    response = case.call(base_url=tiny_cpu_serve, timeout=120)
    ANSWERS[f"{case.operation.label} {response.status_code // 100}xx"] += 1
    case.validate_response(
        response,
        checks=[
            not_a_server_error,
            status_code_conformance,
            content_type_conformance,
            response_schema_conformance,
        ],
    )
    _good_request_succeeds(tiny_cpu_serve)


def _nested(depth: int) -> bytes:
    return b'{"model": "tiny-llama", "prompt": ' + b"[" * depth + b"]" * depth + b"}"


HAND_MADE: list[tuple[str, bytes, str, set[int]]] = [
    ("invalid UTF-8", b'{"model": "tiny-llama", "prompt": "\xff\xfe"}', "application/json",
     {400}),
    ("not JSON", b"model=tiny-llama&prompt=hi", "application/x-www-form-urlencoded", {400}),
    ("a JSON array", b"[1, 2, 3]", "application/json", {400}),
    ("an empty body", b"", "application/json", {400}),
    ("JSON nested 100000 deep", _nested(100_000), "application/json", {400}),
    ("a 10 MB prompt",
     b'{"model": "tiny-llama", "prompt": "' + b"sea " * 2_500_000 + b'"}',
     "application/json", {400, 413}),
    ("max_tokens 10**12", b'{"model": "tiny-llama", "prompt": "hi", "max_tokens": 1000000000000}',
     "application/json", {400}),
    ("max_tokens -1", b'{"model": "tiny-llama", "prompt": "hi", "max_tokens": -1}',
     "application/json", {400}),
    ("n 10**6", b'{"model": "tiny-llama", "prompt": "hi", "n": 1000000}', "application/json",
     {400}),
    ("n true", b'{"model": "tiny-llama", "prompt": "hi", "n": true}', "application/json", {400}),
    ("temperature NaN", b'{"model": "tiny-llama", "prompt": "hi", "temperature": NaN}',
     "application/json", {400}),
    ("an unknown model", b'{"model": "gpt-7", "prompt": "hi"}', "application/json", {404}),
    ("JSON as text/plain", b'{"model": "tiny-llama", "prompt": "hi", "max_tokens": 2}',
     "text/plain", {200}),
]  # fmt: skip


@pytest.mark.parametrize(
    ("body", "content_type", "statuses"),
    [case[1:] for case in HAND_MADE],
    ids=[case[0] for case in HAND_MADE],
)
def test_a_hand_made_bad_request_gets_a_4xx(
    tiny_cpu_serve: str, body: bytes, content_type: str, statuses: set[int]
) -> None:
    response = httpx.post(
        f"{tiny_cpu_serve}/v1/completions",
        content=body,
        headers={"Content-Type": content_type},
        timeout=120,
    )
    ANSWERS[f"hand-made {response.status_code}"] += 1
    assert response.status_code in statuses, response.text[:500]
    if response.status_code >= 400:
        error = response.json()["error"]
        assert set(error) == set(ERROR_SCHEMA["properties"]["error"]["required"]), error
        assert error["message"], error
    _good_request_succeeds(tiny_cpu_serve)


def test_a_slow_client_does_not_hold_up_others(tiny_cpu_serve: str) -> None:
    """A body sent a few bytes at a time over 3 s: other requests are answered
    meanwhile, and the slow one too once its body is complete."""
    host, port = tiny_cpu_serve.removeprefix("http://").split(":")
    body = b'{"model": "tiny-llama", "prompt": "The sea", "max_tokens": 2}'
    head = (
        f"POST /v1/completions HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode()
    with socket.create_connection((host, int(port)), timeout=120) as slow:
        slow.sendall(head)
        started = time.monotonic()
        for i in range(0, len(body), 4):
            slow.sendall(body[i : i + 4])
            if i % 20 == 0:
                _good_request_succeeds(tiny_cpu_serve)
            time.sleep(3 / (len(body) / 4))
        answer = b""
        while chunk := slow.recv(65536):
            answer += chunk
    ANSWERS["hand-made slow client"] += 1
    assert answer.startswith(b"HTTP/1.1 200"), answer[:300]
    assert time.monotonic() - started >= 3


def test_clients_that_vanish_mid_stream_leave_the_server_serving(tiny_cpu_serve: str) -> None:
    async def vanish() -> None:
        async with (
            httpx.AsyncClient(timeout=120) as client,
            client.stream(
                "POST",
                f"{tiny_cpu_serve}/v1/completions",
                json={"model": MODEL, "prompt": "The sea", "max_tokens": 200, "stream": True},
            ) as response,
        ):
            assert response.status_code == 200
            async for line in response.aiter_lines():
                if line.startswith("data: {"):
                    break

    async def many() -> None:
        await asyncio.gather(*(vanish() for _ in range(8)))

    asyncio.run(many())
    ANSWERS["hand-made vanished mid-stream"] += 8
    _good_request_succeeds(tiny_cpu_serve)
