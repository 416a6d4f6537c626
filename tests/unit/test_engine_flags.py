"""Lint of engine.extraArgs: unknown flags get a did-you-mean, spec-owned flags the field."""

from __future__ import annotations

import pytest
from modelfleet_operator.api.v1alpha1 import EngineKind, ScalarArg
from modelfleet_operator.engine_flags import VLLM_OWNED, lint_extra_args, vllm_flags

VLLM = EngineKind.VLLM
TRITON = EngineKind.TRITON


def test_the_committed_vllm_flags_are_loaded() -> None:
    flags = vllm_flags()
    assert {"enable-prefix-caching", "kv-cache-dtype", "max-num-batched-tokens"} <= flags
    assert not any(flag.startswith(("#", "_", "-")) for flag in flags)


def test_every_owned_vllm_flag_is_a_real_flag() -> None:
    # A flag vLLM renamed would leave an owned entry that protects nothing.
    assert set(VLLM_OWNED) <= vllm_flags()


@pytest.mark.parametrize(
    ("kind", "args"),
    [
        (VLLM, {}),
        (VLLM, {"enable-prefix-caching": True}),
        (VLLM, {"enable_prefix_caching": False}),
        (VLLM, {"kv-cache-dtype": "fp8", "max-num-batched-tokens": 8192, "seed": 0}),
        (VLLM, {"enforce-eager": True}),
        (TRITON, {"log-verbose": 1, "strict-model-config": False}),
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
            {"enable-prefix-caching": True},
            "engine.extraArgs 'enable-prefix-caching' is not a known triton flag",
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
