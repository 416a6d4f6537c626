"""The Triton engine: a Triton server holding a TensorRT-LLM repository, over gRPC streaming.

Each replica either starts its own ``tritonserver`` on loopback ports (the TensorRT-LLM
image's command from ``engine.triton.serverCommand``, else the ``tritonserver`` on PATH,
else the CPU build from ``nvidia-pytriton``; see `triton_server`) or uses the one at
``engine.triton.url``, whose Prometheus metrics it reads from
``engine.triton.metricsUrl`` (default: the same host, port 8002). Every request is one
bidirectional ``ModelStreamInfer`` call of ``tritonclient.grpc.aio`` against a decoupled
model (``ensemble`` or ``tensorrt_llm_bls``) with ``stream=true``: Triton answers with
one response per generated token and ends the call after the final one.

TensorRT-LLM's Triton models only speak text, so this engine adds what vLLM's OpenAI
layer does for the vLLM engine:

* the prompt: the model's chat template, from its Hugging Face tokenizer;
* parameter checks and the mapping onto TensorRT-LLM inputs (`triton_params`), so a bad
  request is a 400 that never reaches the server;
* OpenAI stop strings (TensorRT-LLM stops on tokens and keeps them in its output);
* the response objects (`triton_openai`); ``usage`` counts prompt tokens with the
  tokenizer and completion tokens as Triton's responses (one per generated token);
* telemetry, and the scheduler gauges from Triton's ``/metrics`` (`triton_metrics`).

Errors: a server that cannot be reached is a 503 naming it; a model error is a 500.
Closing a stream early cancels the gRPC call, which Triton turns into a cancellation
of the request in the model (``response_sender.is_cancelled()``).

Health: a replica that owns its server is unhealthy when that server exits or stops
being ready, and Serve replaces the replica (and with it the server). A replica
pointed at a shared server stays healthy while that server is down and answers 503s:
replacing the replica could not bring someone else's server back.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import grpc
import httpx
import tritonclient.grpc.aio as triton_grpc
from tritonclient.grpc import InferInput
from tritonclient.utils import InferenceServerException

from modelfleet_serving.config import ServingConfig, TritonConfig
from modelfleet_serving.engines.base import Engine, EngineItem, EngineStats
from modelfleet_serving.engines.triton_metrics import TritonLoad, parse_triton_metrics
from modelfleet_serving.engines.triton_openai import (
    SSE_DONE,
    Kind,
    ResponseHeader,
    chunk,
    full_response,
    sse,
    usage_chunk,
)
from modelfleet_serving.engines.triton_params import (
    TRTLLM_INPUTS,
    ParameterError,
    StopScanner,
    TritonRequest,
    to_triton_request,
)
from modelfleet_serving.engines.triton_server import TritonServer
from modelfleet_serving.errors import (
    ErrorInfo,
    ServingError,
    bad_request,
    internal,
    unavailable,
)
from modelfleet_serving.models import resolve_model_source
from modelfleet_serving.telemetry import EngineTelemetry

if TYPE_CHECKING:
    from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
    from vllm.entrypoints.openai.completion.protocol import CompletionRequest

logger = logging.getLogger(__name__)
# Serve's own logger reaches the replica's log (and through Ray, `modelfleet serve`'s log
# file), where this module's INFO lines do not: for what a person looking for the
# server's own log needs to find.
_replica_log = logging.getLogger("ray.serve")

# How long start() waits for the model on a server at `url` (a server the replica
# starts itself has loaded its models before start() asks).
EXTERNAL_READY_TIMEOUT_S = 120.0
# Triton's default metrics port, for a server given by `url` alone.
DEFAULT_METRICS_PORT = 8002
# One readiness probe; Serve's own health-check timeout is longer.
HEALTH_TIMEOUT_S = 10.0
# Gauges are read every fraction of a second: a slow answer is skipped, not awaited.
METRICS_TIMEOUT_S = 2.0
# gRPC status codes that mean "the server is not there (now)", as opposed to a failure.
# A server killed mid-stream resets the call, which gRPC reports as CANCELLED; our own
# cancellations never reach this check, since a cancelled call is not read again.
_UNAVAILABLE_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED})


def metrics_url(triton: TritonConfig, server: TritonServer | None) -> str:
    """Where a replica reads Triton's Prometheus metrics (queue depth, KV-cache usage).

    A server the replica started serves them on the loopback metrics port chosen for
    it. A server at ``url`` serves them where ``metricsUrl`` says, else on Triton's
    default metrics port of the same host.
    """
    if server is not None:
        return server.metrics_url
    if triton.metrics_url:
        return triton.metrics_url
    host = urlsplit(f"//{triton.url}").hostname or "127.0.0.1"
    if ":" in host:  # an IPv6 address goes back into brackets in a URL
        host = f"[{host}]"
    return f"http://{host}:{DEFAULT_METRICS_PORT}/metrics"


class TritonEngine(Engine):
    """TensorRT-LLM behind Triton, driven with ``tritonclient.grpc.aio`` streaming."""

    def __init__(self, config: ServingConfig) -> None:
        super().__init__(config)
        self._triton = config.engine.triton or TritonConfig()
        self._server: TritonServer | None = None
        self._client: triton_grpc.InferenceServerClient | None = None
        self._http: httpx.AsyncClient | None = None
        self._grpc_url = ""
        self._metrics_url = ""
        self._tokenizer: Any = None
        self._declared_inputs: frozenset[str] = frozenset()
        # Streams this replica has open; the fallback for "running" where Triton does
        # not report its in-flight batch.
        self._open_streams = 0

    @property
    def server(self) -> TritonServer | None:
        """The server this replica started, or None when it uses one at ``url``."""
        return self._server

    # ----------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Load the tokenizer, start or reach the server, and read the model's inputs."""
        try:
            await self._start()
        except BaseException:
            # Serve discards a replica whose constructor failed without shutting it
            # down: stop a server started for it here, or it would hold its ports.
            await self.shutdown()
            raise

    async def _start(self) -> None:
        tokenizer_source = self._triton.tokenizer or self.config.model.source
        self._tokenizer = await asyncio.to_thread(_load_tokenizer, tokenizer_source)
        if self._triton.url:
            self._grpc_url = self._triton.url
            self._metrics_url = metrics_url(self._triton, None)
        else:
            if not self._triton.repository:
                raise ValueError("engine.triton needs a repository or a url")
            repository = Path(resolve_model_source(self._triton.repository))
            self._server = TritonServer(repository, command=self._triton.server_command)
            # Launched from the event loop's thread, which lives as long as the replica:
            # the server's parent-death signal is tied to the launching thread.
            self._server.launch()
            _replica_log.info(
                "tritonserver (pid %s) serves %s and logs to %s",
                self._server.pid,
                repository,
                self._server.log_path,
            )
            await asyncio.to_thread(self._server.wait_ready)
            self._grpc_url = self._server.grpc_url
            self._metrics_url = metrics_url(self._triton, self._server)
        self._client = triton_grpc.InferenceServerClient(self._grpc_url)
        self._http = httpx.AsyncClient(timeout=METRICS_TIMEOUT_S)
        await self._wait_model_ready()
        metadata = await self._client.get_model_metadata(self._triton.model_name, as_json=True)
        self._declared_inputs = frozenset(i["name"] for i in metadata["inputs"])
        missing = {"text_input", "max_tokens"} - self._declared_inputs
        if missing:
            raise ValueError(
                f"Triton model {self._triton.model_name!r} lacks the TensorRT-LLM inputs "
                f"{sorted(missing)}; point engine.triton.modelName at ensemble or "
                "tensorrt_llm_bls"
            )
        logger.info("Triton engine ready: model %s at %s", self._triton.model_name, self._grpc_url)

    async def _wait_model_ready(self) -> None:
        assert self._client is not None
        deadline = time.monotonic() + EXTERNAL_READY_TIMEOUT_S
        while True:
            try:
                if await self._client.is_model_ready(
                    self._triton.model_name, client_timeout=HEALTH_TIMEOUT_S
                ):
                    return
            except InferenceServerException as e:
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"Triton at {self._grpc_url} did not become ready: {e.message()}"
                    ) from e
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"model {self._triton.model_name!r} is not ready on Triton at {self._grpc_url}"
                )
            await asyncio.sleep(1.0)

    def _server_alive(self) -> bool:
        """False once the server this replica started has exited (True for one at `url`,
        whose life is not ours to watch)."""
        return self._server is None or self._server.is_running()

    async def check_health(self) -> None:
        """Raise when the replica's own server exited or is not ready (see module doc)."""
        if self._client is None:
            raise RuntimeError("the Triton engine is not started")
        if self._server is None:
            return
        if not self._server.is_running():
            raise RuntimeError(f"tritonserver exited:\n{self._server.log_tail(20)}")
        try:
            ready = await self._client.is_model_ready(
                self._triton.model_name, client_timeout=HEALTH_TIMEOUT_S
            )
        except InferenceServerException as e:
            raise RuntimeError(f"tritonserver does not answer: {e.message()}") from e
        if not ready:
            raise RuntimeError(f"model {self._triton.model_name!r} is not ready on Triton")

    async def stats(self) -> EngineStats:
        """Queue, in-flight requests and KV-cache usage from Triton's metrics."""
        load = await self._fetch_load()
        waiting = load.waiting if load else 0
        if load is not None and load.running is not None:
            running = load.running
        else:
            running = max(self._open_streams - waiting, 0)
        kv = load.kv_cache_usage if load and load.kv_cache_usage is not None else 0.0
        return EngineStats(waiting=waiting, running=running, kv_cache_usage=kv)

    async def _fetch_load(self) -> TritonLoad | None:
        if self._http is None:
            return None
        try:
            response = await self._http.get(self._metrics_url)
            response.raise_for_status()
        except httpx.HTTPError:
            # Gauges are best effort; health and requests report an absent server.
            return None
        return parse_triton_metrics(response.text)

    async def shutdown(self) -> None:
        """Close the clients and stop the replica's own server; safe to call twice."""
        client, self._client = self._client, None
        if client is not None:
            await client.close()
        http, self._http = self._http, None
        if http is not None:
            await http.aclose()
        server, self._server = self._server, None
        if server is not None:
            await asyncio.to_thread(server.stop)

    # ------------------------------------------------------------------ requests

    def chat(self, request: ChatCompletionRequest) -> AsyncIterator[EngineItem]:
        """Chat completion: the tokenizer's chat template, then one Triton stream."""
        return self._serve("chat", request)

    def completion(self, request: CompletionRequest) -> AsyncIterator[EngineItem]:
        """Text completion of one prompt through one Triton stream."""
        return self._serve("completion", request)

    async def _serve(self, kind: Kind, request: Any) -> AsyncIterator[EngineItem]:
        if self._client is None:
            raise ServingError(unavailable("the Triton engine is not running"))
        params = request.model_dump(exclude_unset=True)
        prompt, prompt_tokens = self._prompt(kind, request)
        try:
            plan = to_triton_request(
                prompt,
                params,
                prompt_tokens=prompt_tokens,
                max_model_len=self.max_model_len(),
                declared_inputs=self._declared_inputs,
                end_id=self._tokenizer.eos_token_id,
                pad_id=self._tokenizer.pad_token_id,
            )
        except ParameterError as e:
            raise ServingError(bad_request(e.message, param=e.param, code=e.code)) from e
        header = ResponseHeader(
            kind=kind,
            request_id=request.request_id,
            model=self.config.model.served_name,
            created=int(time.time()),
        )
        call = _Generation(
            client=self._client,
            model_name=self._triton.model_name,
            server=self._grpc_url,
            plan=plan,
            request_id=request.request_id,
            server_alive=self._server_alive,
        )
        self._open_streams += 1
        try:
            # The first token is awaited before anything is yielded, so an absent server
            # is an HTTP 503, not an error inside a 200 stream.
            await call.open()
            if request.stream:
                async for item in self._stream_items(header, call, prompt_tokens, request):
                    yield item
            else:
                text = "".join([piece async for piece in call.pieces()])
                yield full_response(header, text, call.finish_reason, prompt_tokens, call.steps)
        finally:
            self._open_streams -= 1
            call.close()
            call.record(self.telemetry, prompt_tokens)

    async def _stream_items(
        self, header: ResponseHeader, call: _Generation, prompt_tokens: int, request: Any
    ) -> AsyncIterator[str]:
        first = True
        async for piece in call.pieces():
            yield sse(chunk(header, piece, first=first))
            first = False
        if first:  # nothing generated: the role still has to be announced
            yield sse(chunk(header, "", first=True))
        yield sse(chunk(header, None, finish_reason=call.finish_reason))
        options = getattr(request, "stream_options", None)
        if options is not None and getattr(options, "include_usage", False):
            yield sse(usage_chunk(header, prompt_tokens, call.steps))
        yield SSE_DONE

    def _prompt(self, kind: Kind, request: Any) -> tuple[str, int]:
        """The text sent as ``text_input`` and its length in tokens."""
        if kind == "chat":
            messages = [_text_message(m) for m in request.messages]
            try:
                prompt = self._tokenizer.apply_chat_template(
                    messages,
                    tokenize=False,
                    add_generation_prompt=getattr(request, "add_generation_prompt", True),
                )
            except Exception as e:  # jinja raises its own errors for messages it refuses
                raise ServingError(bad_request(f"messages: {e}", param="messages")) from e
            # The template already wrote the special tokens it wants.
            ids = self._tokenizer.encode(prompt, add_special_tokens=False)
        else:
            prompt = _single_prompt(request.prompt, self._tokenizer)
            ids = self._tokenizer.encode(prompt)
        return prompt, len(ids)


@dataclass
class _Generation:
    """One request's ``ModelStreamInfer`` call and what it produced so far."""

    client: triton_grpc.InferenceServerClient
    model_name: str
    server: str
    plan: TritonRequest
    request_id: str
    server_alive: Callable[[], bool] = lambda: True
    steps: int = 0
    finish_reason: str = "stop"
    _stream: Any = None
    _first: str | None = None
    _done: bool = False
    _started: float = field(default_factory=time.monotonic)
    _first_at: float | None = None
    _last_at: float | None = None
    _gaps: list[float] = field(default_factory=list)

    async def open(self) -> None:
        """Send the request and wait for Triton's first response."""
        self._stream = self.client.stream_infer(self._requests())
        self._first = await self._next()

    async def _requests(self) -> AsyncIterator[dict[str, Any]]:
        # One request, then the client half-closes: Triton ends the call after the
        # request's final response, which is how the end of generation arrives.
        inputs = []
        for name, array in self.plan.inputs.items():
            tensor = InferInput(name, list(array.shape), TRTLLM_INPUTS[name][0])
            tensor.set_data_from_numpy(array)
            inputs.append(tensor)
        yield {
            "model_name": self.model_name,
            "inputs": inputs,
            "request_id": self.request_id,
        }

    async def _next(self) -> str | None:
        """The next response's text, or None when Triton ended the call."""
        try:
            result, error = await self._stream.__anext__()
        except StopAsyncIteration:
            self._done = True
            return None
        except grpc.RpcError as e:
            self._done = True
            raise ServingError(self._rpc_error(e)) from e
        if error is not None:
            self._done = True
            raise ServingError(internal(f"the Triton model failed: {error.message()}"))
        now = time.monotonic()
        if self._first_at is None:
            self._first_at = now
        elif self._last_at is not None:
            self._gaps.append(now - self._last_at)
        self._last_at = now
        self.steps += 1
        output = result.as_numpy("text_output")
        if output is None or output.size == 0:
            return ""
        value = output.reshape(-1)[0]
        return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)

    def _rpc_error(self, e: grpc.RpcError) -> ErrorInfo:
        # grpc.aio's errors carry code() and details(); the RpcError base class does not.
        code = e.code() if isinstance(e, grpc.aio.AioRpcError) else None
        details = e.details() if isinstance(e, grpc.aio.AioRpcError) else str(e)
        # A server killed under a call can end it as INTERNAL ("Internal error from
        # Core") rather than UNAVAILABLE: the dead server decides, not the code.
        if code in _UNAVAILABLE_CODES or not self.server_alive():
            return unavailable(
                f"The Triton server at {self.server} is unavailable ({details}); retry later."
            )
        return internal(f"Triton failed the request: {details}")

    async def pieces(self) -> AsyncIterator[str]:
        """The generated text, cut at OpenAI stop strings; sets ``finish_reason``."""
        scanner = StopScanner(self.plan.stop)
        piece = self._first
        while piece is not None:
            out, stopped = scanner.feed(piece)
            if out:
                yield out
            if stopped:
                # The rest of the generation is not wanted: free the engine's slot.
                self.close()
                self.finish_reason = "stop"
                return
            piece = await self._next()
        rest = scanner.flush()
        if rest:
            yield rest
        self.finish_reason = "length" if self.steps >= self.plan.max_tokens else "stop"

    def close(self) -> None:
        """Cancel the call unless Triton already ended it (cancels the request in Triton)."""
        if self._stream is not None and not self._done:
            self._done = True
            self._stream.cancel()

    def record(self, telemetry: EngineTelemetry, prompt_tokens: int) -> None:
        """Add this request's latencies and token counts to ``telemetry``."""
        if self._first_at is None:
            return
        telemetry.observe_request(
            ttft=self._first_at - self._started,
            e2e=time.monotonic() - self._started,
            prompt_tokens=prompt_tokens,
            generation_tokens=self.steps,
            inter_token=self._gaps,
        )


def _load_tokenizer(source: str) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve_model_source(source))


def _text_message(message: Any) -> dict[str, Any]:
    """A chat message with its content as plain text, which is all TensorRT-LLM takes."""
    text_message: dict[str, Any] = dict(message)
    content = text_message.get("content")
    if isinstance(content, list):
        texts = []
        for part in content:
            if part.get("type") != "text":
                raise ServingError(
                    bad_request(
                        f"messages: content of type {part.get('type')!r} is not supported "
                        "by the Triton engine; send text",
                        param="messages",
                    )
                )
            texts.append(part.get("text", ""))
        text_message["content"] = "".join(texts)
    elif content is None:
        text_message["content"] = ""
    return text_message


def _single_prompt(prompt: Any, tokenizer: Any) -> str:
    """One prompt as text; token ids are decoded, several prompts refused."""
    if isinstance(prompt, list) and len(prompt) == 1 and not isinstance(prompt[0], int):
        prompt = prompt[0]
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list) and all(isinstance(t, int) for t in prompt):
        return str(tokenizer.decode(prompt))
    raise ServingError(
        bad_request(
            "prompt: the Triton engine takes one prompt per request (a string or a list "
            "of token ids)",
            param="prompt",
        )
    )
