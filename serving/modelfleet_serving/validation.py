"""Checks on an OpenAI request body before it reaches an engine.

vLLM's protocol models parse and validate every field; these checks come first
because they need deployment context (served names, the sequence limit) or because
the engine would accept a value that cannot be served well: `n` far beyond what a
replica batches, an empty `messages` list, a role no chat template knows.

Pure: raises `ServingError`; no Ray, vLLM or web-framework imports.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from modelfleet_serving.errors import ServingError, bad_request, model_not_found

CHAT_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})


@dataclass(frozen=True)
class Limits:
    """What one deployment accepts."""

    served_names: Sequence[str]
    max_n: int


def _not_json(constant: str) -> Any:
    raise ValueError(f"{constant} is not a JSON value (RFC 8259 has no NaN or Infinity)")


def parse_body(raw: bytes) -> Any:
    """The JSON value of a request body; a 400 `invalid_json` for anything that is not
    strict JSON: bytes that are not UTF-8, syntax errors, NaN or Infinity (which
    Python's parser would accept and an engine would sample with), and nesting too
    deep for the parser (RecursionError, which would otherwise be a 500)."""
    try:
        return json.loads(raw, parse_constant=_not_json)
    except RecursionError as e:
        raise ServingError(
            bad_request("Malformed JSON body: nested too deeply.", code="invalid_json")
        ) from e
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError and NaN are ValueErrors
        raise ServingError(bad_request(f"Malformed JSON body: {e}", code="invalid_json")) from e


def _fail(message: str, param: str | None, code: str = "invalid_value") -> ServingError:
    return ServingError(bad_request(message, param=param, code=code))


def _is_int(value: Any) -> bool:
    # bool is an int subclass in Python, but `"n": true` is a client bug.
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def check_model(body: dict[str, Any], limits: Limits) -> str:
    """Return the requested model name; 400 when absent, 404 when not served here."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _fail("model: a model name (string) is required", "model", "missing_model")
    if model not in limits.served_names:
        raise ServingError(model_not_found(model, limits.served_names))
    return model


def _check_common(body: dict[str, Any], limits: Limits) -> None:
    for field in ("max_tokens", "max_completion_tokens"):
        value = body.get(field)
        if value is None:
            continue
        if not _is_int(value):
            raise _fail(f"{field}: must be an integer, got {type(value).__name__}", field)
        if value < 1:
            raise _fail(f"{field}: must be at least 1, got {value}", field)
    n = body.get("n")
    if n is not None:
        if not _is_int(n):
            raise _fail(f"n: must be an integer, got {type(n).__name__}", "n")
        if not 1 <= n <= limits.max_n:
            raise _fail(
                f"n: must be between 1 and {limits.max_n} (the sequences one replica "
                f"batches), got {n}",
                "n",
            )
    for field, low, high in (("temperature", 0.0, 2.0), ("top_p", 0.0, 1.0)):
        value = body.get(field)
        if value is None:
            continue
        if not _is_number(value):
            raise _fail(f"{field}: must be a number, got {type(value).__name__}", field)
        if not low <= value <= high:
            raise _fail(f"{field}: must be between {low:g} and {high:g}, got {value}", field)
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise _fail(f"stream: must be a boolean, got {type(stream).__name__}", "stream")


def check_chat(body: dict[str, Any], limits: Limits) -> None:
    """Validate a `/v1/chat/completions` body (model already checked)."""
    messages = body.get("messages")
    if not isinstance(messages, list):
        raise _fail("messages: a list of messages is required", "messages")
    if not messages:
        raise _fail("messages: must contain at least one message", "messages")
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise _fail(f"messages.{i}: must be an object", f"messages.{i}")
        role = message.get("role")
        if not isinstance(role, str) or role not in CHAT_ROLES:
            raise _fail(
                f"messages.{i}.role: unknown role {role!r}; expected one of "
                f"{', '.join(sorted(CHAT_ROLES))}",
                f"messages.{i}.role",
            )
    _check_common(body, limits)


def _is_prompt_list(prompt: list[Any]) -> bool:
    """Strings, token ids, or lists of token ids; booleans are no token ids (vLLM's
    models would read `false` as token 0)."""
    if all(isinstance(p, str) for p in prompt) or all(_is_int(p) for p in prompt):
        return True
    return all(isinstance(p, list) and all(_is_int(t) for t in p) for p in prompt)


def check_completion(body: dict[str, Any], limits: Limits) -> None:
    """Validate a `/v1/completions` body (model already checked)."""
    prompt = body.get("prompt")
    if prompt is None:
        raise _fail("prompt: a prompt is required", "prompt")
    if not isinstance(prompt, str | list) or (isinstance(prompt, list) and not prompt):
        raise _fail("prompt: must be a string or a non-empty list", "prompt")
    if isinstance(prompt, list) and not _is_prompt_list(prompt):
        raise _fail(
            "prompt: a list must hold strings, token ids (integers), or lists of token ids",
            "prompt",
        )
    _check_common(body, limits)
