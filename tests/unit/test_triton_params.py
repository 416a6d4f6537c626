"""OpenAI parameters → TensorRT-LLM inputs, and the stop-string scanner (pure, tables)."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import numpy as np
import pytest
from modelfleet_serving.engines.triton_params import (
    TRTLLM_INPUTS,
    ParameterError,
    StopScanner,
    to_triton_request,
)

# Every input of TensorRT-LLM's ensemble that the mapping knows.
ALL_INPUTS = frozenset(TRTLLM_INPUTS)


def _map(params: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    """The mapped inputs as plain Python values (first element of each tensor)."""
    options: dict[str, Any] = {
        "prompt_tokens": 10,
        "max_model_len": 100,
        "declared_inputs": ALL_INPUTS,
        **kwargs,
    }
    request = to_triton_request("Hello", params, **options)
    out: dict[str, Any] = {}
    for name, array in request.inputs.items():
        assert array.shape[0] == 1, f"{name} lacks the batch dimension"
        values = [v.decode() if isinstance(v, bytes) else v.item() for v in array.ravel()]
        out[name] = values if name in ("stop_words", "bad_words") else values[0]
    return out


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        # Only what the client set is sent; max_tokens defaults to the room left.
        ({}, {"text_input": "Hello", "max_tokens": 90, "stream": True}),
        ({"max_tokens": 5}, {"max_tokens": 5}),
        ({"max_completion_tokens": 7, "max_tokens": 5}, {"max_tokens": 7}),
        ({"temperature": 0.7, "top_p": 0.9}, {"temperature": 0.7, "top_p": 0.9}),
        # Greedy: TensorRT-LLM has no temperature 0 and needs top_p > 0.
        ({"temperature": 0.0, "top_p": 0.9}, {"top_k": 1}),
        ({"top_p": 0.0}, {"top_k": 1}),
        ({"top_k": 40}, {"top_k": 40}),
        ({"top_k": -1}, {"top_k": 0}),
        ({"seed": 42}, {"random_seed": 42}),
        ({"presence_penalty": 0.5, "frequency_penalty": -1}, {"presence_penalty": 0.5}),
        ({"stop": "END"}, {"stop_words": ["END"]}),
        ({"stop": ["a", "b"]}, {"stop_words": ["a", "b"]}),
        ({"bad_words": ["x"]}, {"bad_words": ["x"]}),
        # Defaults that mean "off" and options that do not change the output pass.
        ({"n": 1, "logprobs": False, "echo": False, "add_generation_prompt": True}, {}),
    ],
)
def test_mapping(params: dict[str, Any], expected: dict[str, Any]) -> None:
    mapped = _map(params)
    for name, value in expected.items():
        assert mapped[name] == (pytest.approx(value) if isinstance(value, float) else value)
    if "temperature" in params and params["temperature"] == 0:
        assert "temperature" not in mapped


def test_tensor_types_match_the_ensemble() -> None:
    request = to_triton_request(
        "Hi",
        {"temperature": 0.5, "seed": 1, "stop": ["x"]},
        prompt_tokens=1,
        max_model_len=10,
        declared_inputs=ALL_INPUTS,
        end_id=2,
        pad_id=0,
    )
    for name, array in request.inputs.items():
        assert array.dtype == np.dtype(TRTLLM_INPUTS[name][1]), name
    assert request.inputs["stop_words"].shape == (1, 1)
    assert request.inputs["text_input"].shape == (1, 1)


def test_special_tokens_only_where_declared() -> None:
    declared = ALL_INPUTS - {"pad_id"}
    mapped = _map({}, declared_inputs=declared, end_id=2, pad_id=0)
    assert mapped["end_id"] == 2
    assert "pad_id" not in mapped


def test_stop_strings_are_kept_for_the_caller() -> None:
    request = to_triton_request(
        "Hi",
        {"stop": ["\n\n", "END"]},
        prompt_tokens=1,
        max_model_len=10,
        declared_inputs=ALL_INPUTS,
    )
    assert request.stop == ("\n\n", "END")
    assert request.max_tokens == 9


@pytest.mark.parametrize(
    ("params", "param", "fragment"),
    [
        ({"max_tokens": 0}, "max_tokens", "at least 1"),
        ({"max_tokens": 91}, "max_tokens", "at most 90"),
        ({"max_completion_tokens": 500}, "max_completion_tokens", "maximum context length"),
        ({"max_tokens": 2.5}, "max_tokens", "integer"),
        ({"temperature": 2.5}, "temperature", "between"),
        ({"temperature": "hot"}, "temperature", "number"),
        ({"temperature": float("nan")}, "temperature", "number"),
        ({"top_p": 1.5}, "top_p", "between"),
        ({"top_k": -2}, "top_k", "at least -1"),
        ({"top_k": True}, "top_k", "integer"),
        ({"seed": -1}, "seed", "between 0"),
        ({"presence_penalty": 3}, "presence_penalty", "between"),
        ({"stop": ["ok", ""]}, "stop", "non-empty"),
        ({"stop": 5}, "stop", "string"),
        ({"n": 2}, "n", "not supported"),
        ({"logprobs": True}, "logprobs", "not supported"),
        ({"best_of": 3}, "best_of", "not supported"),
        ({"echo": True}, "echo", "not supported"),
        ({"logit_bias": {"1": 5}}, "logit_bias", "not supported"),
        ({"tools": [{"type": "function"}]}, "tools", "not supported"),
        ({"response_format": {"type": "json_object"}}, "response_format", "not supported"),
        ({"ignore_eos": True}, "ignore_eos", "not supported"),
    ],
)
def test_refused(params: dict[str, Any], param: str, fragment: str) -> None:
    with pytest.raises(ParameterError) as caught:
        _map(params)
    assert caught.value.param == param
    assert fragment in caught.value.message


def test_prompt_filling_the_context_is_refused() -> None:
    with pytest.raises(ParameterError) as caught:
        _map({"messages": []}, prompt_tokens=100)
    assert caught.value.code == "context_length_exceeded"
    assert caught.value.param == "messages"


def test_parameter_the_model_does_not_declare_is_refused() -> None:
    declared = ALL_INPUTS - {"top_k"}
    with pytest.raises(ParameterError) as caught:
        _map({"top_k": 5}, declared_inputs=declared)
    assert caught.value.param == "top_k"
    # Greedy decoding also needs top_k: refused the same way, naming what was set.
    with pytest.raises(ParameterError):
        _map({"temperature": 0}, declared_inputs=declared)


@pytest.mark.parametrize(
    ("stops", "pieces", "sent", "stopped"),
    [
        ([], ["a", " b", " c"], "a b c", False),
        # The stop string is cut, and what follows it in the same piece too.
        (["STOP"], ["one ", "twoSTOPthree"], "one two", True),
        # A stop split over pieces: its start is held back, then dropped.
        (["END"], ["x E", "N", "D y"], "x ", True),
        # Held text that turns out not to be a stop is released.
        (["END"], ["x E", "N", "o"], "x ENo", False),
        # The earliest of several stops wins.
        (["b", "a"], ["xab"], "x", True),
    ],
)
def test_stop_scanner(stops: list[str], pieces: list[str], sent: str, stopped: bool) -> None:
    scanner = StopScanner(stops)
    out, hit = [], False
    for piece in pieces:
        text, hit = scanner.feed(piece)
        out.append(text)
        if hit:
            break
    if not hit:
        out.append(scanner.flush())
    assert "".join(out) == sent
    assert hit is stopped


def test_stop_scanner_never_sends_part_of_a_stop() -> None:
    scanner = StopScanner(["END"])
    assert scanner.feed("x E") == ("x", False)
    assert scanner.feed("N") == (" ", False)
    assert scanner.feed("D") == ("", True)
    assert scanner.text == "x "


def test_pure_modules_import_no_engine_libraries() -> None:
    # These modules are table-tested without a server and imported by the ingress side;
    # pulling in Ray, vLLM or the gRPC client would make both slow and fragile.
    code = (
        "import sys\n"
        "import modelfleet_serving.engines.triton_params\n"
        "import modelfleet_serving.engines.triton_metrics\n"
        "import modelfleet_serving.engines.triton_openai\n"
        "heavy = {'ray', 'vllm', 'tritonclient', 'grpc', 'torch', 'transformers'}\n"
        "print(sorted(heavy & {m.split('.')[0] for m in sys.modules}))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"
