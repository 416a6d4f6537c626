"""Lint of engine.extraArgs: unknown flags get a did-you-mean, spec-owned flags the field."""

from __future__ import annotations

import pytest
from modelfleet_operator.api.v1alpha1 import EngineKind, ScalarArg
from modelfleet_operator.engine_flags import (
    TRITON_OWNED,
    VLLM_OWNED,
    Flag,
    lint_extra_args,
    parse_flag_file,
    triton_flags,
    vllm_flag_table,
    vllm_flags,
)

VLLM = EngineKind.VLLM
TRITON = EngineKind.TRITON


def test_the_committed_vllm_flags_are_loaded() -> None:
    flags = vllm_flags()
    assert {"enable-prefix-caching", "kv-cache-dtype", "max-num-batched-tokens"} <= flags
    assert not any(flag.startswith(("#", "_", "-")) for flag in flags)


def test_the_server_flags_are_there_not_only_the_engines() -> None:
    # `vllm serve` takes the OpenAI frontend's flags as well as AsyncEngineArgs' fields.
    assert {
        "tool-call-parser",
        "enable-auto-tool-choice",
        "chat-template",
        "lora-modules",
        "response-role",
    } <= vllm_flags()
    # The --no- twins of boolean flags are not separate entries.
    assert "no-enable-prefix-caching" not in vllm_flags()


def test_every_owned_flag_is_a_real_flag() -> None:
    # A flag an engine renamed would leave an owned entry that protects nothing.
    assert set(VLLM_OWNED) <= vllm_flags()
    assert set(TRITON_OWNED) <= triton_flags()


def test_the_committed_triton_flags_are_loaded() -> None:
    assert {"log-verbose", "backend-config", "cache-config", "model-control-mode"} <= (
        triton_flags()
    )


def test_flag_files_parse() -> None:
    text = "# a comment\nswitchy switch\nboolish bool\nchoosy value a,b\nplain value\n"
    assert parse_flag_file(text) == {
        "switchy": Flag("switchy", "switch"),
        "boolish": Flag("boolish", "bool"),
        "choosy": Flag("choosy", "value", ("a", "b")),
        "plain": Flag("plain", "value"),
    }


def test_choices_come_from_the_parser() -> None:
    assert "fp8" in vllm_flag_table()["kv-cache-dtype"].choices
    assert vllm_flag_table()["enforce-eager"].takes == "bool"


@pytest.mark.parametrize(
    ("kind", "args"),
    [
        (VLLM, {}),
        (VLLM, {"enable-prefix-caching": True}),
        (VLLM, {"enable_prefix_caching": False}),
        (VLLM, {"kv-cache-dtype": "fp8", "max-num-batched-tokens": 8192, "seed": 0}),
        (VLLM, {"enforce-eager": True}),
        (VLLM, {"tool-call-parser": "hermes", "enable-auto-tool-choice": True}),
        (VLLM, {"chat-template": "/t.jinja", "lora-modules": "sql=/adapters/sql"}),
        (VLLM, {"aggregate-engine-logging": True}),
        (TRITON, {"log-verbose": 1, "strict-model-config": False}),
        (TRITON, {"model-control-mode": "explicit", "disable-auto-complete-config": True}),
    ],
)
def test_known_flags_pass(kind: EngineKind, args: dict[str, ScalarArg]) -> None:
    assert lint_extra_args(kind, args) == []


@pytest.mark.parametrize(
    ("kind", "args", "expected"),
    [
        (
            VLLM,
            {"enable-prefix-cache": True},
            "engine.extraArgs 'enable-prefix-cache' is not a known vllm flag; "
            "did you mean 'enable-prefix-caching'?",
        ),
        (
            VLLM,
            {"kv_cache_dtyp": "fp8"},
            "engine.extraArgs 'kv_cache_dtyp' is not a known vllm flag; "
            "did you mean 'kv-cache-dtype'?",
        ),
        (
            VLLM,
            {"frobnicate": 1},
            "engine.extraArgs 'frobnicate' is not a known vllm flag",
        ),
        (
            VLLM,
            {"max-model-len": 4096},
            "engine.extraArgs 'max-model-len' is owned by the spec; set engine.maxModelLen instead",
        ),
        (
            VLLM,
            {"tensor_parallel_size": 2},
            "engine.extraArgs 'tensor_parallel_size' is owned by the spec; "
            "set engine.tensorParallelSize instead",
        ),
        (
            VLLM,
            {"quantization": "awq"},
            "engine.extraArgs 'quantization' is owned by the spec; set model.quantization instead",
        ),
        (
            VLLM,
            {"disable-log-stats": True},
            "engine.extraArgs 'disable-log-stats' is set by modelfleet; "
            "remove it (nothing: modelfleet's own metrics replace vLLM's)",
        ),
        (
            VLLM,
            {"no-enable-prefix-caching": True},
            "engine.extraArgs 'no-enable-prefix-caching': write enable-prefix-caching: false "
            "instead",
        ),
        (
            VLLM,
            {"--enforce-eager": True},
            "engine.extraArgs '--enforce-eager': write the flag without leading dashes",
        ),
        (
            TRITON,
            {"log-verbos": 1},
            "engine.extraArgs 'log-verbos' is not a known triton flag; did you mean 'log-verbose'?",
        ),
        (
            TRITON,
            {"grpc-port": 9000},
            "engine.extraArgs 'grpc-port' is set by modelfleet; "
            "remove it (nothing: the replica picks its own ports)",
        ),
        (
            TRITON,
            {"prefix-caching": True},
            "engine.extraArgs 'prefix-caching' is not a known triton flag",
        ),
        (
            VLLM,
            {"host": "0.0.0.0"},
            "engine.extraArgs 'host' is set by modelfleet; remove it (nothing: the endpoint "
            "is Ray Serve's, behind the <name>-openai Service)",
        ),
        (
            VLLM,
            {"api-key": "secret"},
            "engine.extraArgs 'api-key' is owned by the spec; set serving.apiKeySecretRef instead",
        ),
        (
            VLLM,
            {"kv-cache-dtype": "fp9"},
            "engine.extraArgs 'kv-cache-dtype': 'fp9' is not one of "
            + ", ".join(vllm_flag_table()["kv-cache-dtype"].choices)
            + " (did you mean 'fp8'?)",
        ),
        (
            VLLM,
            {"enforce-eager": "yes"},
            "engine.extraArgs 'enforce-eager' is on or off; write true or false, not 'yes'",
        ),
        (
            VLLM,
            {"max-num-batched-tokens": True},
            "engine.extraArgs 'max-num-batched-tokens' needs a value, not true",
        ),
        (
            VLLM,
            {"aggregate-engine-logging": False},
            "engine.extraArgs 'aggregate-engine-logging' is off unless given; remove it "
            "instead of writing false",
        ),
        (
            TRITON,
            {"disable-auto-complete-config": 1},
            "engine.extraArgs 'disable-auto-complete-config' takes no value; write true to give it",
        ),
        (
            TRITON,
            {"model-store": "/models"},
            "engine.extraArgs 'model-store' is owned by the spec; set engine.triton.repository "
            "instead",
        ),
    ],
)
def test_bad_flags_are_refused_with_the_fix(
    kind: EngineKind, args: dict[str, ScalarArg], expected: str
) -> None:
    assert lint_extra_args(kind, args) == [expected]


def test_every_bad_flag_is_reported() -> None:
    problems = lint_extra_args(VLLM, {"max-model-len": 1, "enforce-eager": True, "foo-bar": 1})
    assert len(problems) == 2
