"""`modelfleet serve` start-up failures: one line each, chosen from the exception or log.

The texts are the ones Ray, vLLM, Triton and the OS really write (shortened); each class
must give a line that names what to change.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from modelfleet_cli.serve import (
    FAILURES,
    FailureContext,
    classify_failure,
    exception_text,
    explain_failure,
    model_problems,
    port_problem,
    preflight,
)
from modelfleet_serving.config import ServingConfig

CTX = FailureContext(
    host="127.0.0.1",
    port=8000,
    model_source="hf://org/missing",
    max_model_len=4096,
    cpu_kv_cache_gib=2,
    triton_repository="file:///srv/repo",
    triton_model="ensemble",
    log_path=Path("logs/serve-x.log"),
)

TRITON_EXIT = """\
RuntimeError: tritonserver exited with code 1 while starting:
I0101 12:00:00.000000 123 server.cc:619] Waiting for in-flight requests to complete.
E0101 12:00:00.000000 123 model_repository_manager.cc:1234] Poll failed for model \
directory 'ensemble': failed to stat file /mnt/models/tiny-triton
error: creating server: Internal - failed to stat file /mnt/models/tiny-triton
"""

# (class, text of the exception or log, words the line must contain)
CASES = [
    ("port-in-use", "OSError: [Errno 98] Address already in use", ["port 8000", "--port"]),
    (
        "port-in-use",
        "uvicorn: ERROR: [Errno 98] error while attempting to bind on address "
        "('127.0.0.1', 8000): address already in use",
        ["already in use", "--port 0"],
    ),
    ("host-not-local", "[Errno 99] Cannot assign requested address", ["--host 127.0.0.1"]),
    ("port-needs-root", "[Errno 13] Permission denied", ["port 8000 needs root", "above 1023"]),
    (
        "port-needs-root",
        "ERROR: [Errno 13] error while attempting to bind on address ('127.0.0.1', 80): "
        "permission denied",
        ["above 1023"],
    ),
    (
        "kv-cache-over-free-memory",
        "ValueError: Available memory on node 0 (3.10/23.46 GiB) on kv cache allocation is "
        "less than requested memory for kv (64.00 GiB). Decrease --kv-cache-memory-bytes, "
        "VLLM_CPU_KVCACHE_SPACE, or reduce CPU memory used by other processes.",
        ["engine.cpuKVCacheGiB: 2 GiB", "free memory (3.10 GiB)", "lower engine.cpuKVCacheGiB"],
    ),
    (
        "kv-cache-below-one-request",
        "ValueError: To serve at least one request with the model's max seq len (4096), "
        "(2.00 GiB KV cache is needed, which is larger than the available KV cache memory "
        "(1.00 GiB). Based on the available memory, the estimated maximum model length is "
        "2048. Try increasing `gpu_memory_utilization`",
        ["engine.maxModelLen 4096", "raise engine.cpuKVCacheGiB", "at most 2048 fits"],
    ),
    (
        "no-memory-for-kv-cache",
        "ValueError: No available memory for the cache blocks. Try increasing "
        "`gpu_memory_utilization` when initializing the engine",
        ["KV cache", "engine.cpuKVCacheGiB"],
    ),
    (
        "out-of-memory",
        "ray.exceptions.OutOfMemoryError: Task was killed due to the node running low on memory.",
        ["ran out of memory", "smaller model"],
    ),
    (
        "model-gated",
        "OSError: You are trying to access a gated repo. 401 Client Error.",
        ["gated", "HF_TOKEN"],
    ),
    (
        "model-offline",
        "OSError: We couldn't connect to 'https://huggingface.co' to load the files",
        ["hf://org/missing", "network", "file:///abs/path"],
    ),
    (
        "model-not-found",
        "ValueError: Invalid repository ID or local directory specified: '/nonexistent'.\n"
        "Please verify the following requirements:",
        ["hf://org/missing was not found", "model.source", "builtin://tiny-llama"],
    ),
    (
        "model-not-found",
        "huggingface_hub.errors.RepositoryNotFoundError: 404 Client Error. Repository Not "
        "Found for url: https://huggingface.co/api/models/org/missing",
        ["was not found", "hf://org/name"],
    ),
    (
        "triton-download",
        "TritonInstallError: could not download nvidia-pytriton==0.7.0 with `pip download`",
        ["MODELFLEET_TRITON_WHEEL", "engine.triton.url"],
    ),
    (
        "triton-python-backend",
        TRITON_EXIT.replace(
            "failed to stat file /mnt/models/tiny-triton",
            "libpython3.11.so.1.0: cannot open shared object file",
        ),
        ["apt-get install libpython3.11 python3-numpy"],
    ),
    (
        "triton-server-command",
        "ValueError: engine.triton.serverCommand uses placeholders but lacks {http_port}: "
        "the replica checks readiness on the HTTP port",
        ["serverCommand", "{http_port}"],
    ),
    (
        "triton-not-ensemble",
        "ValueError: Triton model 'preprocessing' lacks the TensorRT-LLM inputs "
        "['max_tokens']; point engine.triton.modelName at ensemble or tensorrt_llm_bls",
        ["engine.triton.modelName", "tensorrt_llm_bls"],
    ),
    (
        "triton-exited",
        TRITON_EXIT,
        [
            "code 1",
            "Poll failed for model directory 'ensemble': failed to stat file",
            "engine.triton.repository (file:///srv/repo)",
            "logs/serve-x.log",
        ],
    ),
    (
        "triton-unreachable",
        "RuntimeError: Triton at 10.0.0.5:8001 did not become ready: failed to connect",
        ["10.0.0.5:8001", "engine.triton.url", "'ensemble'"],
    ),
    (
        "triton-not-ready",
        "TritonServerError: tritonserver was not ready after 600 s:\n...",
        ["600 s", "engine.triton.repository"],
    ),
    (
        "ray-start-timeout",
        "Exception: The current node timed out during startup. This could happen because",
        ["Ray did not start in time", "try again"],
    ),
]


@pytest.mark.parametrize(("name", "text", "words"), CASES, ids=[c[0] for c in CASES])
def test_each_failure_class_names_what_to_change(name: str, text: str, words: list[str]) -> None:
    failure = classify_failure(text)
    assert failure is not None and failure.name == name
    line = explain_failure(text, "", CTX)
    assert "\n" not in line
    for word in words:
        assert word in line, line


def test_every_failure_class_is_covered_by_a_case() -> None:
    assert {f.name for f in FAILURES} == {name for name, _, _ in CASES}


def test_an_unset_kv_cache_size_is_named_with_its_default() -> None:
    ctx = FailureContext(max_model_len=512)
    text = (
        "ValueError: To serve at least one request with the model's max seq len (512), "
        "(1.00 GiB KV cache is needed, which is larger than the available KV cache memory"
    )
    assert "(engine.cpuKVCacheGiB unset, so 1 GiB)" in explain_failure(text, "", ctx)


def test_a_file_the_engine_may_not_open_is_not_a_port_problem() -> None:
    error = "PermissionError: [Errno 13] Permission denied: '/models/m/config.json'"
    assert classify_failure(error) is None


def test_the_exception_wins_over_the_log() -> None:
    # The log holds a warning that matched a rule, but the exception says what failed.
    log = "WARNING Model loading took 3 GiB ... [Errno 98] address already in use"
    line = explain_failure("ValueError: No available memory for the cache blocks.", log, CTX)
    assert "KV cache" in line


def test_the_log_names_what_the_exception_does_not() -> None:
    # vLLM's engine process reports its error in the log; the replica only "failed".
    error = "RuntimeError: Engine core initialization failed. See root cause above."
    log = (
        "(ServeReplica:tiny-cpu:cpu pid=1) (EngineCore pid=2) ValueError: To serve at least "
        "one request with the model's max seq len (4096), (2.00 GiB KV cache is needed, "
        "which is larger than the available KV cache memory (1.00 GiB)."
    )
    assert "lower engine.maxModelLen" in explain_failure(error, log, CTX)


def test_an_unknown_failure_quotes_the_innermost_error_and_the_log() -> None:
    error = (
        "RuntimeError: Deploying application tiny-cpu failed: The deployment failed to "
        'start 1 times in a row.\nTraceback (most recent call last):\n  File "x.py"\n'
        "    raise KeyError('boom')\nKeyError: 'boom'"
    )
    line = explain_failure(error, "nothing known here", CTX)
    assert line == "start-up failed: KeyError: 'boom'; the details are in logs/serve-x.log"


def test_exception_text_follows_the_causes() -> None:
    try:
        try:
            raise OSError("[Errno 98] Address already in use")
        except OSError as inner:
            raise RuntimeError("Deploying failed") from inner
    except RuntimeError as outer:
        text = exception_text(outer)
    assert text.splitlines() == [
        "RuntimeError: Deploying failed",
        "OSError: [Errno 98] Address already in use",
    ]


# ------------------------------------------------------------------ preflight


def test_a_taken_port_is_found_before_ray_starts() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        problem = port_problem("127.0.0.1", port)
    assert problem is not None
    assert f"port {port} on 127.0.0.1 is already in use" in problem
    assert "--port 0" in problem


def test_a_free_port_and_port_zero_pass() -> None:
    assert port_problem("127.0.0.1", 0) is None


@pytest.mark.parametrize("host", ["203.0.113.7", "no-such-host.invalid"])
def test_a_host_that_is_not_this_machine_is_refused(host: str) -> None:
    problem = port_problem(host, 0)
    assert problem is not None and "--host 127.0.0.1" in problem


def _config(source: str, **triton: object) -> ServingConfig:
    engine: dict[str, object] = {"kind": "vllm"}
    if triton:
        engine = {"kind": "triton", "triton": triton}
    return ServingConfig.model_validate(
        {
            "name": "t",
            "model": {"source": source, "served_name": "m"},
            "engine": engine,
            "pools": [{"name": "cpu"}],
        }
    )


def test_a_missing_model_path_is_found_before_ray_starts() -> None:
    problems = model_problems(_config("file:///nonexistent"))
    assert len(problems) == 1
    assert problems[0].startswith("model.source file:///nonexistent: /nonexistent does not exist")
    assert "builtin://tiny-llama" in problems[0]
    assert preflight(_config("file:///nonexistent"), "127.0.0.1", 0) == problems[0]


def test_remote_and_builtin_sources_are_not_checked_here() -> None:
    for source in ("hf://org/m", "s3://bucket/m", "builtin://tiny-llama"):
        assert model_problems(_config(source)) == []


def test_triton_repository_and_model_are_checked(tmp_path: Path) -> None:
    missing = model_problems(_config("builtin://tiny-llama", repository="file:///nope"))
    assert missing and "engine.triton.repository file:///nope" in missing[0]
    (tmp_path / "tensorrt_llm_bls").mkdir()
    (tmp_path / "preprocessing").mkdir()
    wrong = model_problems(_config("builtin://tiny-llama", repository=f"file://{tmp_path}"))
    assert wrong == [
        f"engine.triton.repository file://{tmp_path} holds no model 'ensemble'; set "
        "engine.triton.modelName to one it holds (preprocessing, tensorrt_llm_bls)"
    ]
    served = _config(
        "builtin://tiny-llama", repository=f"file://{tmp_path}", model_name="tensorrt_llm_bls"
    )
    assert model_problems(served) == []
    # A server at `url` holds its own repository: nothing local to check.
    remote = _config("builtin://tiny-llama", repository="file:///nope", url="10.0.0.5:8001")
    assert model_problems(remote) == []
