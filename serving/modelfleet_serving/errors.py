"""One error shape for the whole API, and the HTTP status of each kind of failure.

Every failure a client sees is `{"error": {"message", "type", "param", "code"}}`, as
OpenAI's API returns it, so the official clients raise their typed exceptions
(`BadRequestError`, `AuthenticationError`, ...). `ErrorInfo` is a plain frozen
dataclass so it crosses Ray's object store unchanged: LLM replicas yield it in-band
instead of raising, which keeps a bad request from ever looking like a replica crash.

Pure: no Ray, vLLM or web-framework imports.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

# OpenAI's `type` for each status we return; clients switch on the status, people on
# the type and message.
_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "service_unavailable_error",
    504: "timeout_error",
}


@dataclass(frozen=True)
class ErrorInfo:
    """An API error: the HTTP status and the body's fields."""

    status: int
    message: str
    code: str
    param: str | None = None

    @property
    def type(self) -> str:
        """OpenAI's error type for this status."""
        return _TYPES.get(
            self.status, "server_error" if self.status >= 500 else "invalid_request_error"
        )

    def body(self) -> dict[str, Any]:
        """The JSON body: `{"error": {"message", "type", "param", "code"}}`."""
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


class ServingError(Exception):
    """Raised inside the serving code to end a request with `info`."""

    def __init__(self, info: ErrorInfo) -> None:
        super().__init__(info.message)
        self.info = info


def bad_request(
    message: str, *, param: str | None = None, code: str = "invalid_value"
) -> ErrorInfo:
    """400: the request cannot be served as sent."""
    return ErrorInfo(400, message, code, param)


def unauthorized(message: str) -> ErrorInfo:
    """401: missing or wrong API key."""
    return ErrorInfo(401, message, "invalid_api_key")


def forbidden(message: str) -> ErrorInfo:
    """403: the caller may not use this endpoint."""
    return ErrorInfo(403, message, "forbidden")


def model_not_found(model: str, served: Sequence[str]) -> ErrorInfo:
    """404: the `model` field names no model served here."""
    return ErrorInfo(
        404,
        f"The model {model!r} does not exist; this endpoint serves {', '.join(served)}.",
        "model_not_found",
        "model",
    )


def queue_full(limit: int) -> ErrorInfo:
    """429: the deployment already holds its maximum of queued requests."""
    return ErrorInfo(
        429,
        f"Too many requests in flight: the queue limit of {limit} is reached; retry later.",
        "queue_full",
    )


def timed_out(seconds: float) -> ErrorInfo:
    """504: the request ran past the deployment's request timeout."""
    return ErrorInfo(504, f"The request did not finish within {seconds:g} seconds.", "timeout")


def unavailable(message: str) -> ErrorInfo:
    """503: no healthy engine can take the request now."""
    return ErrorInfo(503, message, "engine_unavailable")


def internal(message: str) -> ErrorInfo:
    """500: the engine failed while serving the request."""
    return ErrorInfo(500, message, "engine_error")


def context_too_long(prompt_tokens: int, max_tokens: int, max_model_len: int) -> ErrorInfo:
    """400: prompt plus requested output do not fit the model's context."""
    return bad_request(
        f"This model's maximum context length is {max_model_len} tokens, but the request "
        f"has {prompt_tokens} prompt tokens and asks for {max_tokens} more "
        f"({prompt_tokens + max_tokens} in all). Shorten the prompt or lower max_tokens.",
        param="messages",
        code="context_length_exceeded",
    )


def from_validation_errors(errors: Iterable[Mapping[str, Any]]) -> ErrorInfo:
    """400 from pydantic's `ValidationError.errors()`: the first error, located.

    `param` is the dotted path of the offending field (`messages.0.role`), so a client
    can point at it; the message names it too, for people reading logs.
    """
    for error in errors:
        loc = [str(part) for part in error.get("loc", ()) if part not in ("body",)]
        # Union members add their type name to the location; keep only field names.
        param = ".".join(p for p in loc if not p[:1].isupper() and "[" not in p) or None
        message = str(error.get("msg", "invalid value"))
        if message.startswith("Value error, "):
            message = message[len("Value error, ") :]
        where = f"{param}: " if param else ""
        return bad_request(f"{where}{message}", param=param)
    return bad_request("invalid request")


def from_engine_error(status: int, message: str, param: str | None = None) -> ErrorInfo:
    """Our shape for an error the engine's own OpenAI layer produced (status + message)."""
    if status == 404:
        return ErrorInfo(404, message, "model_not_found", param or "model")
    if status == 400 and "context length" in message:
        return bad_request(message, param=param, code="context_length_exceeded")
    if status >= 500:
        return ErrorInfo(status, message, "engine_error", param)
    return ErrorInfo(status, message, "invalid_value", param)
