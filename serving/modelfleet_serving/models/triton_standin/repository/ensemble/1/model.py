"""A decoupled python-backend model that stands in for a TensorRT-LLM engine build.

It accepts the TensorRT-LLM ensemble's tensors (text_input, max_tokens, stream,
temperature, top_p, top_k, stop_words, bad_words, end_id, pad_id, random_seed, ...) and
answers with text_output, one response per generated word when ``stream`` is true, like
the real ensemble. The words come from a fixed list, so tests can predict them:

* word ``i`` of ``WORDS`` has token id ``FIRST_WORD_ID + i`` (ids below are reserved, as
  a Llama tokenizer reserves them for unk/bos/eos);
* generation starts at word ``(random_seed + len(text_input)) % len(WORDS)`` and walks
  the list; words in ``bad_words`` are skipped;
* it stops after ``max_tokens`` words, before emitting the word whose id is ``end_id``,
  or after emitting a word that completes one of ``stop_words`` (TensorRT-LLM also keeps
  the stop sequence in its output; the caller strips it);
* it notices cancellation between two words (``response_sender.is_cancelled()``).

Sampling parameters are accepted and validated but do not change the words: the
stand-in is deterministic on purpose.

When the environment variable ``MODELFLEET_TRITON_EVENT_LOG`` names a file, every request
appends JSON lines to it (``received``, then ``finished`` or ``cancelled``) with the
request id, so tests can see what reached the server and what was cancelled.

This file runs inside Triton's python backend stub, with the system Python and its numpy,
not in the project's environment.
"""

import json
import os
import threading
import time
from typing import Any

import numpy as np

# Provided by Triton's python backend at run time; it has no stubs and no package.
import triton_python_backend_utils as pb_utils  # type: ignore[import-not-found]

WORDS = (
    "alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel",
    "india", "juliett", "kilo", "lima", "mike", "november", "oscar", "papa",
)  # fmt: skip
FIRST_WORD_ID = 3
EVENT_LOG_ENV = "MODELFLEET_TRITON_EVENT_LOG"


def _scalar(request: Any, name: str, default: Any) -> Any:
    """The first element of an optional ``[batch, 1]`` input, or ``default``."""
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        return default
    return tensor.as_numpy().reshape(-1)[0]


def _strings(request: Any, name: str) -> list[str]:
    """An optional ``[batch, n]`` string input as a list of str (empty strings dropped)."""
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        return []
    values = [v.decode() if isinstance(v, bytes) else str(v) for v in tensor.as_numpy().ravel()]
    return [v for v in values if v]


def _text_response(text: str) -> Any:
    """One response carrying ``text`` as text_output, shaped ``[1, 1]`` like the ensemble."""
    tensor = pb_utils.Tensor("text_output", np.array([[text.encode()]], dtype=np.object_))
    return pb_utils.InferenceResponse(output_tensors=[tensor])


class TritonPythonModel:
    """The stand-in model; one thread per request so that requests overlap."""

    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        params = config.get("parameters", {})
        self.token_delay_s = float(params.get("token_delay_s", {}).get("string_value", "0.02"))
        self.event_log = os.environ.get(EVENT_LOG_ENV)
        self.log_lock = threading.Lock()
        self.threads: list[threading.Thread] = []

    def _log(self, event: str, request_id: str, **fields: Any) -> None:
        if not self.event_log:
            return
        line = json.dumps({"event": event, "id": request_id, **fields})
        with self.log_lock, open(self.event_log, "a") as f:
            f.write(line + "\n")

    def execute(self, requests: list[Any]) -> None:
        # Decoupled models answer through response senders, from any thread; returning
        # at once lets Triton hand this instance the next requests meanwhile.
        self.threads = [t for t in self.threads if t.is_alive()]
        for request in requests:
            thread = threading.Thread(target=self._generate, args=(request,), daemon=True)
            thread.start()
            self.threads.append(thread)
        return None

    def _generate(self, request: Any) -> None:
        sender = request.get_response_sender()
        request_id = request.request_id()
        try:
            text = _scalar(request, "text_input", b"")
            text = text.decode() if isinstance(text, bytes) else str(text)
            max_tokens = int(_scalar(request, "max_tokens", 16))
            stream = bool(_scalar(request, "stream", False))
            temperature = float(_scalar(request, "temperature", 1.0))
            top_p = float(_scalar(request, "top_p", 1.0))
            end_id = int(_scalar(request, "end_id", -1))
            seed = int(_scalar(request, "random_seed", 0))
            stop_words = _strings(request, "stop_words")
            bad_words = set(_strings(request, "bad_words"))
            self._log(
                "received",
                request_id,
                text_input=text,
                max_tokens=max_tokens,
                stream=stream,
                temperature=temperature,
                top_p=top_p,
                end_id=end_id,
                random_seed=seed,
                stop_words=stop_words,
                bad_words=sorted(bad_words),
            )
            # The same checks TensorRT-LLM makes, so a request that slips past the
            # caller's validation fails here the way it would on a real engine.
            if max_tokens <= 0:
                raise ValueError(f"max_tokens must be positive, got {max_tokens}")
            if temperature < 0 or not 0 <= top_p <= 1:
                raise ValueError(f"invalid sampling: temperature={temperature} top_p={top_p}")
            if bad_words >= set(WORDS):
                raise ValueError("bad_words excludes every word")
        except Exception as exc:  # any bad input becomes the request's error
            sender.send(
                pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc))),
                flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL,
            )
            return

        generated = ""
        position = (seed + len(text)) % len(WORDS)
        count = 0
        while count < max_tokens:
            if sender.is_cancelled():
                self._log("cancelled", request_id, tokens=count)
                sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
                return
            word = WORDS[position % len(WORDS)]
            position += 1
            if word in bad_words:
                continue
            if FIRST_WORD_ID + WORDS.index(word) == end_id:
                break
            piece = word if count == 0 else " " + word
            generated += piece
            count += 1
            if stream:
                sender.send(_text_response(piece))
            if any(generated.endswith(stop) for stop in stop_words):
                break
            time.sleep(self.token_delay_s)
        if not stream:
            sender.send(_text_response(generated))
        self._log("finished", request_id, tokens=count)
        sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)

    def finalize(self) -> None:
        for thread in self.threads:
            thread.join(timeout=5)
