"""The replica's own HTTP API, driven as ASGI with an engine that needs no model."""

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from modelfleet_serving.errors import ServingError, bad_request
from modelfleet_serving.replica_http import TOKEN_HEADER, ReplicaAPI
from pydantic import BaseModel, model_validator


class RefusedByValidator(Exception):
    """Like vLLM's VLLMValidationError: not a ValueError, so pydantic lets it through."""

    def __init__(self, message: str, parameter: str) -> None:
        super().__init__(message)
        self.parameter = parameter


class Request(BaseModel):
    prompt: str
    stream: bool = False
    max_tokens: int = 3

    @model_validator(mode="after")
    def _not_empty(self) -> "Request":
        if self.prompt == "":
            raise RefusedByValidator("prompt must be non-empty", "prompt")
        return self


class Engine:
    def __init__(self) -> None:
        self.closed = 0
        self.gate = asyncio.Event()
        self.gate.set()

    async def _items(self, request: Request) -> AsyncIterator[Any]:
        try:
            if request.prompt == "refuse":
                raise ServingError(bad_request("no", code="context_length_exceeded"))
            await self.gate.wait()
            if not request.stream:
                yield {"object": "text_completion"}
                return
            for i in range(request.max_tokens):
                yield f'data: {{"i": {i}}}\n\n'
                await asyncio.sleep(0)
            yield "data: [DONE]\n\n"
        finally:
            self.closed += 1

    def completion(self, request: Request) -> AsyncIterator[Any]:
        return self._items(request)

    chat = completion


TOKEN = "front-door-token"


async def _call(
    api: ReplicaAPI,
    body: Any,
    *,
    disconnect_after: int | None = None,
    token: str | None = TOKEN,
) -> tuple[int, bytes]:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    sent: list[dict[str, Any]] = []
    done = asyncio.Event()
    messages = [{"type": "http.request", "body": raw, "more_body": False}]

    async def receive() -> dict[str, Any]:
        if messages:
            return messages.pop()
        await done.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)
        bodies = [m for m in sent if m["type"] == "http.response.body"]
        if disconnect_after is not None and len(bodies) >= disconnect_after:
            done.set()

    headers = [] if token is None else [(TOKEN_HEADER.encode(), token.encode())]
    scope = {"type": "http", "path": "/v1/completions", "method": "POST", "headers": headers}
    await asyncio.wait_for(api(scope, receive, send), 5)
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    return status, b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")


def _api(engine: Engine, max_queued: int = 4, batch: int = 8) -> ReplicaAPI:
    return ReplicaAPI(
        engine,  # type: ignore[arg-type]
        {"chat": Request, "completion": Request},
        max_queued=max_queued,
        batch=batch,
        healthy=lambda: True,
        token=TOKEN,
    )


async def test_streams_every_chunk_and_ends() -> None:
    engine = Engine()
    status, body = await _call(_api(engine), {"prompt": "x", "stream": True})
    assert status == 200
    assert body.count(b"data: {") == 3 and body.endswith(b"data: [DONE]\n\n")
    assert engine.closed == 1


async def test_whole_response_is_json() -> None:
    status, body = await _call(_api(Engine()), {"prompt": "x"})
    assert (status, json.loads(body)) == (200, {"object": "text_completion"})


async def test_bad_bodies_and_refusals_have_the_error_shape() -> None:
    api = _api(Engine())
    status, body = await _call(api, b"{")
    assert status == 400 and json.loads(body)["error"]["code"] == "invalid_json"
    status, body = await _call(api, {"prompt": 3})
    assert status == 400 and json.loads(body)["error"]["param"] == "prompt"
    status, body = await _call(api, {"prompt": "refuse", "stream": True})
    assert status == 400 and json.loads(body)["error"]["code"] == "context_length_exceeded"
    # A validator's own exception (vLLM's for an empty prompt) is a 400 too, not a 500.
    status, body = await _call(api, {"prompt": ""})
    error = json.loads(body)["error"]
    assert status == 400, body
    assert (error["param"], error["message"]) == ("prompt", "prompt must be non-empty")


async def test_queue_limit_counts_requests_before_their_first_token() -> None:
    engine = Engine()
    engine.gate.clear()
    api = _api(engine, max_queued=2)
    waiting = [asyncio.create_task(_call(api, {"prompt": "x", "stream": True})) for _ in range(2)]
    await asyncio.sleep(0.05)
    assert api.waiting == 2
    status, body = await _call(api, {"prompt": "x", "stream": True})
    assert status == 429 and json.loads(body)["error"]["code"] == "queue_full"
    engine.gate.set()
    assert [s for s, _ in await asyncio.gather(*waiting)] == [200, 200]
    assert api.waiting == 0 and api.streams == 0


async def test_a_client_that_goes_away_closes_the_engine_stream() -> None:
    engine = Engine()
    status, body = await _call(
        _api(engine), {"prompt": "x", "stream": True, "max_tokens": 10_000}, disconnect_after=2
    )
    assert status == 200
    assert b"[DONE]" not in body
    assert engine.closed == 1


async def test_only_the_front_door_with_the_token_is_answered() -> None:
    engine = Engine()
    api = _api(engine)
    for token in (None, "", "front-door-token-but-longer", "wrong"):
        status, body = await _call(api, {"prompt": "x", "stream": True}, token=token)
        error = json.loads(body)["error"]
        assert (status, error["type"], error["code"]) == (403, "permission_error", "forbidden")
    # Refused before the engine was asked for anything.
    assert engine.closed == 0
    assert (await _call(api, {"prompt": "x"}))[0] == 200


async def test_requests_arriving_together_are_counted_before_the_next_is_checked() -> None:
    # All at once, with no pause between them: each must be counted as queued in the
    # same step as its check, or all of them would pass the limit together.
    engine = Engine()
    engine.gate.clear()
    api = _api(engine, max_queued=2)
    calls = [asyncio.ensure_future(_call(api, {"prompt": "x", "stream": True})) for _ in range(5)]
    await asyncio.sleep(0.05)
    assert api.waiting == 2
    engine.gate.set()
    statuses = sorted(s for s, _ in await asyncio.gather(*calls))
    assert statuses == [200, 200, 429, 429, 429]
    assert api.waiting == 0 and api.streams == 0


async def test_whole_responses_wait_only_beyond_the_batch() -> None:
    # A non-streaming request gives no first chunk: it counts as waiting only when the
    # engine's batch is already full of other requests.
    engine = Engine()
    engine.gate.clear()
    api = _api(engine, max_queued=2, batch=3)
    whole = [asyncio.create_task(_call(api, {"prompt": "x"})) for _ in range(4)]
    await asyncio.sleep(0.05)
    assert (api.whole, api.waiting) == (4, 1)
    # One more stream waits too: that makes two, the limit.
    stream = asyncio.create_task(_call(api, {"prompt": "x", "stream": True}))
    await asyncio.sleep(0.05)
    assert api.waiting == 2
    status, body = await _call(api, {"prompt": "x"})
    assert status == 429 and json.loads(body)["error"]["code"] == "queue_full"
    engine.gate.set()
    assert [s for s, _ in await asyncio.gather(*whole, stream)] == [200] * 5
    assert api.waiting == 0 and api.whole == 0 and api.streams == 0


async def test_generating_streams_take_batch_places_from_whole_responses() -> None:
    engine = Engine()
    api = _api(engine, max_queued=1, batch=1)
    # One stream generating (its first chunk came; the engine holds the rest)...
    engine.gate.set()
    held = asyncio.Event()

    async def slow(request: Request) -> AsyncIterator[Any]:
        if request.stream:
            yield 'data: {"i": 0}\n\n'
        await held.wait()
        yield "data: [DONE]\n\n" if request.stream else {"object": "text_completion"}

    engine.completion = slow  # type: ignore[method-assign]
    stream = asyncio.create_task(_call(api, {"prompt": "x", "stream": True}))
    await asyncio.sleep(0.05)
    assert (api.generating_streams, api.waiting) == (1, 0)
    # ...so a whole response has no place in the batch: it waits, and the next is refused.
    whole = asyncio.create_task(_call(api, {"prompt": "x"}))
    await asyncio.sleep(0.05)
    assert api.waiting == 1
    assert (await _call(api, {"prompt": "x"}))[0] == 429
    held.set()
    assert [s for s, _ in await asyncio.gather(stream, whole)] == [200, 200]
    assert api.waiting == 0 and api.streams == 0
