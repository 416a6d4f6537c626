"""The OpenAI HTTP API an LLM replica answers itself, for the front door to relay.

The front door (frontdoor.py) checks the key and the model name, picks a replica and
relays bytes; this ASGI app, inside the replica, does the rest: vLLM's protocol models
parse the body (the same validation as `vllm serve`), the engine answers, and each SSE
chunk the engine yields is written to the socket as it comes. No Ray object, pickling
or Serve handle sits on the way of a token.

It also holds the queue limit: past `max_queued` requests waiting for the engine, a new
one gets 429. A stream waits from its arrival here until the engine yields its first
chunk (prefill done). A non-streaming answer gives no sign of its start, so those wait
only as far as they do not fit in the engine's batch (`maxNumSeqs`) beside the streams
already generating. The count is the replica's own, so it holds however many front-door
replicas send to it. Requests already generating are not counted: they are limited by
the batch and the KV cache, not by a queue.

Only the front door may call it: each replica makes a random token at start, reports
it to the stats hub with its address, and refuses (403) a request that does not carry
it in `TOKEN_HEADER`. The API key check is the front door's, so without this anything
that could reach the pod's port would skip it.

When the client (the front door, on behalf of the user) disconnects, the response task
is cancelled, which closes the engine's iterator: the engine aborts the request.

Pure ASGI: no Ray, and no vLLM import outside the request models the caller passes.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import aclosing
from typing import Any

from pydantic import ValidationError

from modelfleet_serving.engines.base import Engine, EngineItem
from modelfleet_serving.errors import (
    ErrorInfo,
    ServingError,
    bad_request,
    forbidden,
    from_validation_errors,
    internal,
    queue_full,
    unavailable,
)
from modelfleet_serving.validation import parse_body

logger = logging.getLogger("ray.serve")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

CHAT_PATH = "/v1/chat/completions"
COMPLETION_PATH = "/v1/completions"
SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]
JSON_HEADERS = [(b"content-type", b"application/json")]
# The header the front door proves itself with (the replica's token, from the hub).
TOKEN_HEADER = "x-modelfleet-replica-token"


def sse_error(info: ErrorInfo) -> bytes:
    """An error inside a stream whose headers are sent already, as vLLM reports it."""
    return f"data: {json.dumps(info.body())}\n\ndata: [DONE]\n\n".encode()


async def send_json(send: Send, status: int, body: Any) -> None:
    """A whole JSON response."""
    payload = json.dumps(body).encode()
    headers = [*JSON_HEADERS, (b"content-length", str(len(payload)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


async def send_error(send: Send, info: ErrorInfo) -> None:
    """Our one error shape with its HTTP status."""
    await send_json(send, info.status, info.body())


async def read_body(receive: Receive) -> bytes:
    """The whole request body."""
    parts = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ConnectionResetError("client went away")
        parts.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(parts)


class ReplicaAPI:
    """ASGI app: POST /v1/chat/completions and /v1/completions on one engine.

    `request_models` maps "chat" and "completion" to the protocol models (vLLM's);
    `batch` is how many sequences the engine runs at once (`maxNumSeqs`); `healthy`
    says whether the engine can take requests (503 otherwise); `token` is what the
    front door must send in `TOKEN_HEADER` (403 otherwise).
    """

    def __init__(
        self,
        engine: Engine,
        request_models: dict[str, Any],
        *,
        max_queued: int,
        batch: int,
        healthy: Callable[[], bool],
        token: str,
    ) -> None:
        self._engine = engine
        self._token = token.encode()
        self._models = request_models
        self._max_queued = max_queued
        self._batch = batch
        self._healthy = healthy
        self.queued_streams = 0
        """Streams here that have not had their first chunk from the engine yet."""
        self.generating_streams = 0
        """Streams past their first chunk, not yet ended."""
        self.whole = 0
        """Non-streaming requests being answered."""
        self.streams = 0
        """Requests being answered (queued or generating)."""

    @property
    def waiting(self) -> int:
        """Requests here waiting for the engine (see the module docstring)."""
        free = max(0, self._batch - self.generating_streams)
        return self.queued_streams + max(0, self.whole - free)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        path = scope["path"]
        kind = "chat" if path == CHAT_PATH else "completion" if path == COMPLETION_PATH else None
        given = dict(scope.get("headers") or ()).get(TOKEN_HEADER.encode(), b"")
        if not hmac.compare_digest(given, self._token):
            message = (
                "This port answers the deployment's front door only; "
                "send requests to the deployment's OpenAI endpoint."
            )
            await send_error(send, forbidden(message))
            return
        if kind is None or scope["method"] != "POST":
            await send_error(send, ErrorInfo(404, f"Not found: {path}", "not_found"))
            return
        try:
            raw = await read_body(receive)
        except ConnectionResetError:
            return
        self.streams += 1
        try:
            await self._answer(kind, raw, receive, send)
        finally:
            self.streams -= 1

    def _parse(self, kind: str, raw: bytes) -> Any:
        body = parse_body(raw)
        try:
            return self._models[kind].model_validate(body)
        except ValidationError as e:
            raise ServingError(from_validation_errors(e.errors())) from e
        except Exception as e:
            # The models' own validators raise errors of their own for bodies they
            # refuse (vLLM's VLLMValidationError: an empty prompt, logprob_token_ids
            # without logprobs), which pydantic does not wrap. Whatever validating the
            # user's body raises is a refusal of that body, not a server failure.
            param = getattr(e, "parameter", None)
            raise ServingError(
                bad_request(str(e), param=param if isinstance(param, str) else None)
            ) from e

    async def _answer(self, kind: str, raw: bytes, receive: Receive, send: Send) -> None:
        try:
            request = self._parse(kind, raw)
            if not self._healthy():
                raise ServingError(unavailable("the engine is not running"))
            if self.waiting >= self._max_queued:
                raise ServingError(queue_full(self._max_queued))
        except ServingError as e:
            await send_error(send, e.info)
            return
        # Counted at once, in the same step as the check: requests that arrive together
        # must not all pass the check before any of them is counted.
        state = "queued" if getattr(request, "stream", False) else "whole"
        if state == "queued":
            self.queued_streams += 1
        else:
            self.whole += 1

        def first_chunk() -> None:
            nonlocal state
            if state == "queued":
                state = "generating"
                self.queued_streams -= 1
                self.generating_streams += 1

        def release() -> None:
            nonlocal state
            if state == "queued":
                self.queued_streams -= 1
            elif state == "generating":
                self.generating_streams -= 1
            elif state == "whole":
                self.whole -= 1
            state = "done"

        call = self._engine.chat if kind == "chat" else self._engine.completion
        items = call(request)
        # The response runs as a task of its own so that a disconnect, seen by
        # `receive`, can cancel it; cancelling closes `items` and the engine aborts.
        respond = asyncio.ensure_future(self._respond(items, send, first_chunk))
        watch = asyncio.ensure_future(_wait_disconnect(receive))
        try:
            await asyncio.wait((respond, watch), return_when=asyncio.FIRST_COMPLETED)
        finally:
            watch.cancel()
            if not respond.done():
                respond.cancel()
                # Let the cancellation reach the engine before this request ends.
                await asyncio.gather(respond, return_exceptions=True)
            release()
        if respond.done() and not respond.cancelled() and respond.exception() is not None:
            logger.warning("response failed", exc_info=respond.exception())

    async def _respond(
        self, items: AsyncIterator[EngineItem], send: Send, first_chunk: Callable[[], None]
    ) -> None:
        async with aclosing(items):  # type: ignore[type-var]
            try:
                try:
                    first = await items.__anext__()
                finally:
                    first_chunk()
            except StopAsyncIteration:
                await send_error(send, internal("the engine returned no response"))
                return
            except ServingError as e:
                await send_error(send, e.info)
                return
            except Exception as e:
                logger.exception("request failed in the engine")
                await send_error(send, internal(f"the engine failed: {e}"))
                return
            if not isinstance(first, str):
                await send_json(send, 200, first)
                return
            await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})
            # The first chunk goes alone and at once: it carries the first token (or the
            # role), and holding it back would add to the time to first token.
            await send({"type": "http.response.body", "body": first.encode(), "more_body": True})
            tail = b""
            try:
                async for chunk in items:
                    body = chunk.encode() if isinstance(chunk, str) else json.dumps(chunk).encode()
                    await send({"type": "http.response.body", "body": body, "more_body": True})
                    # The engine's outputs and the socket are often ready at once; without
                    # a pause one stream keeps the loop from accepting new requests.
                    await asyncio.sleep(0)
            except ServingError as e:
                tail = sse_error(e.info)
            except Exception as e:
                logger.exception("stream failed in the engine")
                tail = sse_error(internal(f"the engine failed: {e}"))
            await send({"type": "http.response.body", "body": tail, "more_body": False})


async def _wait_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
