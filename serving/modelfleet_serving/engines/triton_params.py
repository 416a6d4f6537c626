"""OpenAI request parameters → TensorRT-LLM's Triton input tensors.

Pure: numpy only, no Ray, vLLM or tritonclient imports, so it is table-tested on its own.

The target is the input set of TensorRT-LLM's ``ensemble`` / ``tensorrt_llm_bls`` models
(tensorrtllm_backend, ``all_models/inflight_batcher_llm``): ``text_input``, ``max_tokens``,
``stream``, ``temperature``, ``top_p``, ``top_k``, ``presence_penalty``,
``frequency_penalty``, ``stop_words``, ``bad_words``, ``end_id``, ``pad_id`` and
``random_seed``, each with a leading batch dimension of 1. Every check that TensorRT-LLM
would fail on happens here, so a bad request is answered with a 400 naming the
parameter and never reaches the server.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

# Triton datatype and numpy dtype of each TensorRT-LLM input we may send.
TRTLLM_INPUTS: dict[str, tuple[str, type[np.generic]]] = {
    "text_input": ("BYTES", np.object_),
    "max_tokens": ("INT32", np.int32),
    "stream": ("BOOL", np.bool_),
    "temperature": ("FP32", np.float32),
    "top_p": ("FP32", np.float32),
    "top_k": ("INT32", np.int32),
    "presence_penalty": ("FP32", np.float32),
    "frequency_penalty": ("FP32", np.float32),
    "stop_words": ("BYTES", np.object_),
    "bad_words": ("BYTES", np.object_),
    "end_id": ("INT32", np.int32),
    "pad_id": ("INT32", np.int32),
    "random_seed": ("UINT64", np.uint64),
}

# The OpenAI (and vLLM-extension) parameter behind each optional input, for messages.
_SOURCE_PARAM = {
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty",
    "stop_words": "stop",
    "bad_words": "bad_words",
    "random_seed": "seed",
}

# Parameters TensorRT-LLM's ensemble cannot honour, with the values that mean "off".
# A request that sets one to anything else is refused rather than silently degraded.
_UNSUPPORTED_UNLESS: dict[str, tuple[Any, ...]] = {
    "n": (None, 1),
    "best_of": (None, 1),
    "logprobs": (None, False, 0),
    "top_logprobs": (None, 0),
    "echo": (None, False),
    "suffix": (None, ""),
    "logit_bias": (None, {}),
    "tools": (None, []),
    "tool_choice": (None, "none"),
    "response_format": (None, {"type": "text"}),
    # vLLM extensions that change the output and have no TensorRT-LLM input here.
    "min_tokens": (None, 0),
    "ignore_eos": (None, False),
    "use_beam_search": (None, False),
    "prompt_logprobs": (None,),
    "structured_outputs": (None,),
    "guided_json": (None,),
    "guided_regex": (None,),
    "guided_choice": (None,),
    "guided_grammar": (None,),
}

_UINT64_MAX = 2**64 - 1


class ParameterError(ValueError):
    """A request parameter TensorRT-LLM cannot take; becomes an HTTP 400.

    ``param`` names the offending OpenAI parameter and ``code`` says what is wrong with
    it, as in OpenAI's error object.
    """

    def __init__(self, message: str, param: str | None = None, code: str = "invalid_value") -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code


@dataclass(frozen=True)
class TritonRequest:
    """What one generation sends to Triton, and what the caller enforces on the way back.

    ``stop`` is kept because TensorRT-LLM stops on stop *tokens* and keeps them in its
    output, while OpenAI stops on *strings* and leaves them out: the caller cuts the
    text at the first stop string.
    """

    inputs: dict[str, npt.NDArray[Any]]
    max_tokens: int
    stop: tuple[str, ...]


def to_triton_request(
    prompt: str,
    params: Mapping[str, Any],
    *,
    prompt_tokens: int,
    max_model_len: int,
    declared_inputs: Collection[str],
    end_id: int | None = None,
    pad_id: int | None = None,
) -> TritonRequest:
    """Map one request's OpenAI parameters onto TensorRT-LLM input tensors.

    ``params`` holds the parameters the client set (``model_dump(exclude_unset=True)``
    of the request); ``prompt`` is the final text (chat template applied) and
    ``prompt_tokens`` its length in the model's tokens. ``declared_inputs`` are the
    input names the Triton model declares: an explicitly set parameter the model cannot
    take is refused, while ``end_id``/``pad_id`` (from the tokenizer) are only sent where
    declared. Raises `ParameterError` for anything TensorRT-LLM would reject.
    """
    _refuse_unsupported(params)
    max_tokens = _max_tokens(params, prompt_tokens, max_model_len)
    values: dict[str, Any] = {"text_input": prompt, "max_tokens": max_tokens, "stream": True}

    temperature = _number(params, "temperature", 0.0, 2.0)
    top_p = _number(params, "top_p", 0.0, 1.0)
    top_k = _integer(params, "top_k", -1, None)
    # TensorRT-LLM has no temperature 0 and needs top_p > 0; OpenAI means "greedy" by
    # either, which TensorRT-LLM spells top_k = 1.
    if temperature == 0 or top_p == 0:
        values["top_k"] = 1
    else:
        if temperature is not None:
            values["temperature"] = temperature
        if top_p is not None:
            values["top_p"] = top_p
        if top_k is not None:
            # vLLM's -1 and TensorRT-LLM's 0 both mean "no top-k".
            values["top_k"] = max(top_k, 0)
    for name in ("presence_penalty", "frequency_penalty"):
        penalty = _number(params, name, -2.0, 2.0)
        if penalty is not None:
            values[name] = penalty
    seed = _integer(params, "seed", 0, _UINT64_MAX)
    if seed is not None:
        values["random_seed"] = seed

    stop = _strings(params, "stop")
    if stop:
        values["stop_words"] = stop
    bad_words = _strings(params, "bad_words")
    if bad_words:
        values["bad_words"] = bad_words

    for name in values:
        if name not in declared_inputs and name not in ("stream", "text_input", "max_tokens"):
            raise ParameterError(
                f"the Triton model does not accept {name!r}; leave "
                f"'{_SOURCE_PARAM.get(name, name)}' unset",
                _SOURCE_PARAM.get(name, name),
            )
    # Special token ids come from the tokenizer, not from the user: send them where the
    # model has room for them and stay quiet where it has not.
    for name, token_id in (("end_id", end_id), ("pad_id", pad_id)):
        if token_id is not None and name in declared_inputs:
            values[name] = token_id
    return TritonRequest(
        inputs={name: _tensor(name, value) for name, value in values.items()},
        max_tokens=max_tokens,
        stop=tuple(stop),
    )


def _tensor(name: str, value: Any) -> npt.NDArray[Any]:
    """``value`` as a ``[1, 1]`` (scalars) or ``[1, n]`` (word lists) array of its type."""
    _, dtype = TRTLLM_INPUTS[name]
    if isinstance(value, list):
        return np.array([[v.encode() for v in value]], dtype=dtype)
    if isinstance(value, str):
        return np.array([[value.encode()]], dtype=dtype)
    return np.array([[value]], dtype=dtype)


def _refuse_unsupported(params: Mapping[str, Any]) -> None:
    # Parameters outside both tables (vLLM's chat-template options, `request_id`, ...)
    # do not change what the model generates, so they are left to the caller.
    for name, value in params.items():
        allowed = _UNSUPPORTED_UNLESS.get(name)
        if allowed is not None and value not in allowed:
            raise ParameterError(
                f"{name}={value!r} is not supported by the Triton/TensorRT-LLM engine", name
            )


def _max_tokens(params: Mapping[str, Any], prompt_tokens: int, max_model_len: int) -> int:
    room = max_model_len - prompt_tokens
    if room <= 0:
        raise ParameterError(
            f"This model's maximum context length is {max_model_len} tokens, and the "
            f"prompt alone has {prompt_tokens}; shorten the prompt.",
            "messages" if "messages" in params else "prompt",
            "context_length_exceeded",
        )
    name = "max_completion_tokens" if "max_completion_tokens" in params else "max_tokens"
    requested = _integer(params, name, 1, None)
    if requested is None:
        return room
    if requested > room:
        raise ParameterError(
            f"This model's maximum context length is {max_model_len} tokens. However, you "
            f"requested {prompt_tokens + requested} tokens ({prompt_tokens} in the prompt, "
            f"{requested} in the completion); lower {name} to at most {room}.",
            name,
            "context_length_exceeded",
        )
    return requested


def _number(params: Mapping[str, Any], name: str, low: float, high: float) -> float | None:
    value = params.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ParameterError(f"{name} must be a number, got {value!r}", name)
    if not low <= value <= high:
        raise ParameterError(f"{name} must be between {low} and {high}, got {value}", name)
    return float(value)


def _integer(params: Mapping[str, Any], name: str, low: int, high: int | None) -> int | None:
    value = params.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ParameterError(f"{name} must be an integer, got {value!r}", name)
    if value < low or (high is not None and value > high):
        bound = f"at least {low}" if high is None else f"between {low} and {high}"
        raise ParameterError(f"{name} must be {bound}, got {value}", name)
    return value


def _strings(params: Mapping[str, Any], name: str) -> list[str]:
    value = params.get(name)
    if value is None:
        return []
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(s, str) and s for s in items):
        raise ParameterError(f"{name} must be a non-empty string or a list of them", name)
    return list(items)


class StopScanner:
    """Cuts streamed text at the first OpenAI stop string.

    Text that could still turn out to be the start of a stop string is held back until
    the next piece decides it, so a client never sees part of a stop string.
    """

    def __init__(self, stops: Sequence[str]) -> None:
        self._stops = tuple(stops)
        self._hold = max((len(s) for s in self._stops), default=1) - 1
        self.text = ""
        self._sent = 0

    def feed(self, piece: str) -> tuple[str, bool]:
        """Add ``piece``; return the text now safe to send and whether a stop was hit."""
        self.text += piece
        # A stop can only end inside the new piece, so search from just before it.
        start = max(0, len(self.text) - len(piece) - self._hold)
        hits = [i for i in (self.text.find(s, start) for s in self._stops) if i >= 0]
        if hits:
            self.text = self.text[: min(hits)]
            return self.flush(), True
        safe = len(self.text) - self._hold
        if safe <= self._sent:
            return "", False
        out, self._sent = self.text[self._sent : safe], safe
        return out, False

    def flush(self) -> str:
        """Everything not sent yet (at the end of the generation)."""
        out, self._sent = self.text[self._sent :], len(self.text)
        return out
