"""The committed engine data files match the engines installed here.

The operator lints `engine.extraArgs` against operator/modelfleet_operator/data/
vllm_flags.txt and triton_flags.txt, and the CRD's quantization enum is
operator/modelfleet_operator/api/quantization.py, so that it never imports vLLM or
runs tritonserver; the front door's OpenAPI document takes its request bodies from
serving/modelfleet_serving/data/openai_requests.json, so that it never imports vLLM
either. These tests regenerate each from its source where the source is
installed (slow: vLLM imports torch) and fail on drift; each skips where its tool is
absent. Regenerate with `make generate` and review the diff.
"""

from __future__ import annotations

import importlib.util

import pytest
from modelfleet_operator.api.quantization import Quantization
from modelfleet_operator.engine_flags import TRITON_FLAGS_FILE, VLLM_FLAGS_FILE
from modelfleet_serving.openapi import REQUESTS_FILE

from scripts.generate import (
    FLAGS_FILE,
    OPENAI_REQUESTS_FILE,
    QUANTIZATION_FILE,
    member_name,
    openai_request_schemas,
    parse_triton_help,
    quantization_module,
    triton_flags,
    triton_help,
    vllm_flags,
    vllm_quantization_methods,
)
from scripts.generate import (
    TRITON_FLAGS_FILE as TRITON_FILE,
)

NO_VLLM = importlib.util.find_spec("vllm") is None


@pytest.mark.skipif(NO_VLLM, reason="vLLM is not installed")
def test_vllm_flags_match_the_installed_vllm() -> None:
    assert FLAGS_FILE.name == VLLM_FLAGS_FILE
    assert FLAGS_FILE.read_text() == vllm_flags(), (
        f"{FLAGS_FILE.name} drifted from the installed vLLM; regenerate it with "
        "`make generate` and review the diff"
    )


@pytest.mark.skipif(NO_VLLM, reason="vLLM is not installed")
def test_quantization_methods_match_the_installed_vllm() -> None:
    assert QUANTIZATION_FILE.read_text() == quantization_module(), (
        "api/quantization.py drifted from the installed vLLM; run `make generate`"
    )
    assert {m.value for m in Quantization} == {"none", *vllm_quantization_methods()}


@pytest.mark.skipif(triton_help() is None, reason="tritonserver (nvidia-pytriton) is not cached")
def test_triton_flags_match_the_installed_tritonserver() -> None:
    assert TRITON_FILE.name == TRITON_FLAGS_FILE
    assert TRITON_FILE.read_text() == triton_flags(), (
        f"{TRITON_FILE.name} drifted from `tritonserver --help`; run `make generate`"
    )


def test_triton_help_is_parsed() -> None:
    text = (
        "Usage: tritonserver [options]\n  --help\n\tPrint usage\n"
        "  --log-verbose <integer>\n\tSet verbose logging level.\n"
        "  --log-info <boolean>\n\tEnable/disable info-level logging.\n"
        "  --disable-auto-complete-config\n\tIf set, disables ...\n"
        "  --backend-config <<string>,<string>=<string>>\n\tA backend's setting.\n"
    )
    assert parse_triton_help(text) == [
        "backend-config value",
        "disable-auto-complete-config switch",
        "log-info bool",
        "log-verbose value",
    ]


@pytest.mark.parametrize(
    ("method", "member"),
    [
        ("awq", "AWQ"),
        ("compressed-tensors", "COMPRESSED_TENSORS"),
        ("fp8_per_tensor", "FP8_PER_TENSOR"),
    ],
)
def test_member_names(method: str, member: str) -> None:
    assert member_name(method) == member
    assert Quantization[member].value == method


@pytest.mark.skipif(NO_VLLM, reason="vLLM is not installed")
def test_the_front_doors_request_schemas_match_the_installed_vllm() -> None:
    assert OPENAI_REQUESTS_FILE == REQUESTS_FILE
    assert OPENAI_REQUESTS_FILE.read_text() == openai_request_schemas(), (
        f"{OPENAI_REQUESTS_FILE.name} drifted from the installed vLLM's request models; "
        "regenerate it with `make generate` and review the diff"
    )
