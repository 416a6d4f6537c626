"""The engine interface every LLM replica drives.

An engine owns one model instance (a vLLM `AsyncLLM`, or a Triton server's model) and
answers OpenAI requests with continuous batching. The LLM deployment around it adds
nothing model-specific: it forwards requests, reports `stats()` and `telemetry`, and
turns `check_health()` failures into a replica restart.

Streaming convention (the same for `chat` and `completion`):

* The request is vLLM's OpenAI protocol model (`ChatCompletionRequest`,
  `CompletionRequest`), already parsed and validated by the ingress; `model` is the
  served name. Engines read the sampling fields from it and ignore what they cannot do
  (or raise a 400, see below).
* With `request.stream` true the call returns an async iterator of `str`, each one or
  more complete Server-Sent Events (`"data: {json}\\n\\n"`) carrying OpenAI chunk
  objects (`chat.completion.chunk` / `text_completion`), the last one
  `"data: [DONE]\\n\\n"`. With `stream_options.include_usage` the chunk before `[DONE]`
  carries `usage`.
* Without streaming it yields exactly one item: the full response as a JSON-ready dict
  (`chat.completion` / `text_completion` with `usage`).
* A request the engine refuses (bad parameter, prompt longer than the context) raises
  `ServingError` with a 4xx `ErrorInfo` *before the first item*; engine trouble raises
  `ServingError` with 503 (engine unavailable) or 500. Any other exception is a 500
  for that request only: it must never leave the engine unable to serve others.
* Closing the iterator early (client gone, timeout) must abort the request in the
  engine and free its KV cache.

Engines record what they measure in `self.telemetry` (TTFT, TPOT, ITL, end-to-end
latency, prompt and generation tokens) — the ingress exposes it as `modelfleet_*`
metrics — and report queue depth, running requests and KV-cache usage in `stats()`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from modelfleet_serving.config import ServingConfig
from modelfleet_serving.telemetry import EngineTelemetry

if TYPE_CHECKING:
    from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
    from vllm.entrypoints.openai.completion.protocol import CompletionRequest

EngineItem = str | dict[str, Any]
"""One item of an engine's response stream: SSE text, or the whole response."""


@dataclass(frozen=True)
class EngineStats:
    """The engine's scheduler state right now."""

    waiting: int
    """Requests accepted but not yet scheduled (the queue depth autoscaling watches)."""
    running: int
    """Requests being decoded in the current batch."""
    kv_cache_usage: float
    """Fraction (0..1) of the KV cache in use."""


class Engine(ABC):
    """Base class of the vLLM and Triton engines; see the module docstring."""

    def __init__(self, config: ServingConfig) -> None:
        self.config = config
        self.telemetry = EngineTelemetry()

    @abstractmethod
    async def start(self) -> None:
        """Load the model and start serving; return once requests can be accepted."""

    @abstractmethod
    async def check_health(self) -> None:
        """Return if the engine can serve; raise (any exception) if it is dead."""

    @abstractmethod
    async def stats(self) -> EngineStats:
        """Current queue depth, running requests and KV-cache usage."""

    @abstractmethod
    async def shutdown(self) -> None:
        """Stop the engine and free its resources; safe to call twice."""

    @abstractmethod
    def chat(self, request: ChatCompletionRequest) -> AsyncIterator[EngineItem]:
        """Answer a chat completion request (see the streaming convention)."""

    @abstractmethod
    def completion(self, request: CompletionRequest) -> AsyncIterator[EngineItem]:
        """Answer a text completion request (see the streaming convention)."""

    async def load_adapter(self, name: str, path: str) -> None:
        """Load LoRA adapter `name` from `path` so requests can ask for it by name.

        Raises an exception whose message says why it cannot (missing files, a rank
        over the limit, weights that do not fit the base model); the engine keeps
        serving the base model and its other adapters either way.
        """
        raise ValueError(f"the {type(self).__name__} does not serve LoRA adapters")

    async def unload_adapter(self, name: str) -> None:
        """Stop serving adapter `name` and free what it holds."""
        return None

    def max_model_len(self) -> int:
        """Context length in tokens the engine serves."""
        return self.config.engine.max_model_len
