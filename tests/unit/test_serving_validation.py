"""Request checks before the engine (pure)."""

from __future__ import annotations

from typing import Any

import pytest
from modelfleet_serving.errors import ServingError
from modelfleet_serving.validation import (
    Limits,
    check_chat,
    check_completion,
    check_model,
    parse_body,
)

LIMITS = Limits(served_names=["tiny-llama"], max_n=8)
CHAT = {"model": "tiny-llama", "messages": [{"role": "user", "content": "hi"}]}
COMPLETION = {"model": "tiny-llama", "prompt": "hi"}


def _status(check: Any, body: dict[str, Any]) -> tuple[int, str | None]:
    with pytest.raises(ServingError) as caught:
        check(body, LIMITS)
    return caught.value.info.status, caught.value.info.param


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({}, 400, "model"),
        ({"model": 7}, 400, "model"),
        ({"model": "gpt-4"}, 404, "model"),
    ],
)
def test_check_model(body: dict[str, Any], status: int, param: str) -> None:
    assert _status(check_model, body) == (status, param)


def test_check_model_accepts_served_name() -> None:
    assert check_model(CHAT, LIMITS) == "tiny-llama"


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"messages": []}, "messages"),
        ({"messages": "hello"}, "messages"),
        ({"messages": ["hello"]}, "messages.0"),
        ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages.0.role"),
        ({"messages": [{"content": "hi"}]}, "messages.0.role"),
        # Found by the fuzzing e2e: an unhashable role was a TypeError, a 500.
        ({"messages": [{"role": {"a": 1}, "content": "hi"}]}, "messages.0.role"),
        ({"messages": [{"role": ["user"], "content": "hi"}]}, "messages.0.role"),
        ({"max_tokens": -1}, "max_tokens"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": "10"}, "max_tokens"),
        ({"max_completion_tokens": -5}, "max_completion_tokens"),
        ({"n": 1_000_000}, "n"),
        ({"n": 0}, "n"),
        ({"n": True}, "n"),
        ({"temperature": "hot"}, "temperature"),
        ({"temperature": 3}, "temperature"),
        ({"top_p": 1.5}, "top_p"),
        ({"stream": "yes"}, "stream"),
    ],
)
def test_bad_chat_requests_are_400(change: dict[str, Any], param: str) -> None:
    assert _status(check_chat, CHAT | change) == (400, param)


def test_huge_n_message_says_the_limit() -> None:
    with pytest.raises(ServingError) as caught:
        check_chat(CHAT | {"n": 1000}, LIMITS)
    assert "8" in caught.value.info.message and "1000" in caught.value.info.message


@pytest.mark.parametrize(
    "change",
    [
        {},
        {"max_tokens": 16, "n": 8, "temperature": 0, "top_p": 1, "stream": True},
        {"messages": [{"role": "system", "content": "x"}, {"role": "user", "content": "y"}]},
    ],
)
def test_good_chat_requests_pass(change: dict[str, Any]) -> None:
    check_chat(CHAT | change, LIMITS)


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"prompt": None}, "prompt"),
        ({"prompt": []}, "prompt"),
        ({"prompt": 5}, "prompt"),
        # Found by the fuzzing e2e: vLLM's models read `false` as token 0.
        ({"prompt": [[False]]}, "prompt"),
        ({"prompt": [True, 2]}, "prompt"),
        ({"prompt": ["a", 1]}, "prompt"),
        ({"prompt": [{"text": "a"}]}, "prompt"),
        ({"max_tokens": -3}, "max_tokens"),
    ],
)
def test_bad_completion_requests_are_400(change: dict[str, Any], param: str) -> None:
    assert _status(check_completion, COMPLETION | change) == (400, param)


@pytest.mark.parametrize("prompt", ["hi", ["a", "b"], [1, 2, 3], [[1, 2], [3]]])
def test_good_completion_request_passes(prompt: Any) -> None:
    check_completion(COMPLETION | {"prompt": prompt, "max_tokens": 4}, LIMITS)


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        (b'{"prompt": "\xff"}', "utf-8"),
        (b"{", "Expecting property name"),
        (b"", "Expecting value"),
        (b'{"temperature": NaN}', "NaN is not a JSON value"),
        (b'{"temperature": -Infinity}', "-Infinity is not a JSON value"),
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    ],
)
def test_a_body_that_is_not_strict_json_is_400(raw: bytes, says: str) -> None:
    with pytest.raises(ServingError) as caught:
        parse_body(raw)
    info = caught.value.info
    assert (info.status, info.code) == (400, "invalid_json")
    assert says.lower() in info.message.lower(), info.message


def test_strict_json_parses() -> None:
    assert parse_body(b'{"n": 2, "t": 0.5, "s": "\\u00e9"}') == {"n": 2, "t": 0.5, "s": "é"}
