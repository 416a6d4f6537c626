"""OpenAI response objects for the Triton engine, which has no OpenAI layer of its own.

vLLM builds these objects itself; TensorRT-LLM's Triton models only return text, so the
Triton engine shapes chunks and responses here, in the same JSON vLLM produces
(``chat.completion[.chunk]``, ``text_completion``), so clients cannot tell the engines
apart. Pure: no Ray, vLLM or tritonclient imports.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

Kind = Literal["chat", "completion"]


@dataclass(frozen=True)
class ResponseHeader:
    """The fields every chunk and response of one request repeats."""

    kind: Kind
    request_id: str
    model: str
    created: int

    @property
    def id(self) -> str:
        prefix = "chatcmpl" if self.kind == "chat" else "cmpl"
        return f"{prefix}-{self.request_id}"

    def object(self, streaming: bool) -> str:
        if self.kind == "completion":
            return "text_completion"
        return "chat.completion.chunk" if streaming else "chat.completion"

    def fields(self, streaming: bool) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": self.object(streaming),
            "created": self.created,
            "model": self.model,
        }


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    """OpenAI's ``usage`` object."""
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def chunk(
    header: ResponseHeader,
    text: str | None,
    *,
    finish_reason: str | None = None,
    first: bool = False,
) -> dict[str, Any]:
    """One streamed chunk carrying ``text`` (a chat delta or a completion's text).

    The first chat chunk announces the assistant role, as OpenAI's and vLLM's do.
    """
    choice: dict[str, Any] = {"index": 0}
    if header.kind == "chat":
        delta: dict[str, Any] = {"role": "assistant"} if first else {}
        if text is not None:
            delta["content"] = text
        choice["delta"] = delta
    else:
        choice["text"] = text or ""
    choice["logprobs"] = None
    choice["finish_reason"] = finish_reason
    return {**header.fields(streaming=True), "choices": [choice]}


def usage_chunk(
    header: ResponseHeader, prompt_tokens: int, completion_tokens: int
) -> dict[str, Any]:
    """The chunk before ``[DONE]`` when the client asked for ``include_usage``."""
    return {
        **header.fields(streaming=True),
        "choices": [],
        "usage": usage(prompt_tokens, completion_tokens),
    }


def full_response(
    header: ResponseHeader,
    text: str,
    finish_reason: str,
    prompt_tokens: int,
    completion_tokens: int,
) -> dict[str, Any]:
    """The whole response of a request without streaming."""
    choice: dict[str, Any] = {"index": 0}
    if header.kind == "chat":
        choice["message"] = {"role": "assistant", "content": text}
    else:
        choice["text"] = text
    choice["logprobs"] = None
    choice["finish_reason"] = finish_reason
    return {
        **header.fields(streaming=False),
        "choices": [choice],
        "usage": usage(prompt_tokens, completion_tokens),
    }


def sse(payload: dict[str, Any]) -> str:
    """One Server-Sent Event carrying ``payload``."""
    return f"data: {json.dumps(payload, separators=(',', ':'))}\n\n"


SSE_DONE = "data: [DONE]\n\n"
