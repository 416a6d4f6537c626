"""Error shape and status mapping of the serving API (pure)."""

from __future__ import annotations

import pytest
from modelfleet_serving import errors
from modelfleet_serving.errors import ErrorInfo
from pydantic import BaseModel, ValidationError


@pytest.mark.parametrize(
    ("info", "status", "type_", "code"),
    [
        (errors.bad_request("bad"), 400, "invalid_request_error", "invalid_value"),
        (errors.unauthorized("no key"), 401, "authentication_error", "invalid_api_key"),
        (errors.model_not_found("x", ["tiny"]), 404, "not_found_error", "model_not_found"),
        (errors.queue_full(4), 429, "rate_limit_error", "queue_full"),
        (errors.internal("boom"), 500, "server_error", "engine_error"),
        (errors.unavailable("dead"), 503, "service_unavailable_error", "engine_unavailable"),
        (errors.timed_out(5), 504, "timeout_error", "timeout"),
    ],
)
def test_status_type_and_code(info: ErrorInfo, status: int, type_: str, code: str) -> None:
    assert info.status == status
    body = info.body()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["type"] == type_
    assert body["error"]["code"] == code


def test_model_not_found_names_both_models() -> None:
    info = errors.model_not_found("gpt-4", ["tiny-llama"])
    assert "gpt-4" in info.message and "tiny-llama" in info.message
    assert info.param == "model"


def test_context_too_long_says_both_numbers() -> None:
    info = errors.context_too_long(prompt_tokens=600, max_tokens=10, max_model_len=512)
    assert info.status == 400
    assert "600" in info.message and "512" in info.message
    assert info.code == "context_length_exceeded"


@pytest.mark.parametrize(
    ("status", "message", "code", "expected_status"),
    [
        (400, "This model's maximum context length is 512 tokens.", "context_length_exceeded", 400),
        (400, "temperature must be positive", "invalid_value", 400),
        (404, "The model `x` does not exist.", "model_not_found", 404),
        (500, "engine crashed", "engine_error", 500),
        (503, "engine down", "engine_error", 503),
    ],
)
def test_from_engine_error(status: int, message: str, code: str, expected_status: int) -> None:
    info = errors.from_engine_error(status, message)
    assert (info.status, info.code, info.message) == (expected_status, code, message)


class _Body(BaseModel):
    max_tokens: int
    messages: list[dict[str, str]]


@pytest.mark.parametrize(
    ("data", "param"),
    [
        ({"max_tokens": "many", "messages": []}, "max_tokens"),
        ({"max_tokens": 1, "messages": [{"role": 3}]}, "messages.0.role"),
    ],
)
def test_from_validation_errors_locates_the_field(data: dict[str, object], param: str) -> None:
    with pytest.raises(ValidationError) as caught:
        _Body.model_validate(data)
    info = errors.from_validation_errors(caught.value.errors())
    assert info.status == 400
    assert info.param == param
    assert info.message.startswith(param)


def test_error_info_survives_pickling() -> None:
    import pickle

    info = errors.queue_full(3)
    assert pickle.loads(pickle.dumps(info)) == info
