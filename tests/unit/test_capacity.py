"""Capacity maths: does the model fit the GPUs of each pool, and how many tokens fit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from modelfleet_operator.api.v1alpha1 import ModelDeploymentSpec, ModelSpec, Quantization
from modelfleet_operator.capacity import (
    GIB,
    KV_BLOCK_TOKENS,
    ModelShape,
    capacity_fit,
    local_model_config,
    model_shape,
    shape_from_config,
    weights_bytes,
)

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "manifests" / "examples"


def spec(
    source: str = "hf://Qwen/Qwen2-7B-Instruct",
    *,
    quantization: str = "none",
    dtype: str = "auto",
    gpu_gib: float | None = 48,
    tp: int = 1,
    pp: int = 1,
    max_model_len: int = 8192,
    utilization: float = 0.9,
    extra_args: dict[str, Any] | None = None,
    served_name: str = "m",
) -> ModelDeploymentSpec:
    pool: dict[str, Any] = {"name": "l20"}
    if gpu_gib is not None:
        pool["gpu"] = {"type": "L20", "memoryGiB": gpu_gib}
    return ModelDeploymentSpec.model_validate(
        {
            "model": {
                "source": source,
                "servedName": served_name,
                "quantization": quantization,
                "dtype": dtype,
            },
            "engine": {
                "maxModelLen": max_model_len,
                "gpuMemoryUtilization": utilization,
                "tensorParallelSize": tp,
                "pipelineParallelSize": pp,
                "extraArgs": extra_args or {},
            },
            "nodePools": [pool],
        }
    )


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("hf://meta-llama/Meta-Llama-3-70B-Instruct", "Llama 3 70B"),
        ("pvc://weights/meta-llama/Meta-Llama-3.1-8B", "Llama 3 8B"),
        ("hf://meta-llama/Llama-3.2-1B-Instruct", "Llama 3.2 1B"),
        ("hf://meta-llama/Llama-2-13b-chat-hf", "Llama 2 13B"),
        ("hf://Qwen/Qwen2-7B-Instruct-AWQ", "Qwen2 7B"),
        ("hf://Qwen/Qwen2.5-72B-Instruct", "Qwen2 72B"),
        ("hf://mistralai/Mistral-7B-Instruct-v0.3", "Mistral 7B"),
        ("hf://mistralai/Mixtral-8x7B-v0.1", "Mixtral 8x7B"),
        ("hf://acme/falcon-40b", "a 40B model"),
        ("hf://acme/phi_3.8b-mini", "a 3.8B model"),
        ("hf://acme/bert-base", None),
        ("s3://bucket/model-v2", None),
    ],
)
def test_model_shape_by_name(name: str, expected: str | None) -> None:
    shape = model_shape(ModelSpec(source=name, served_name="m"))
    assert (shape.name if shape else None) == expected


def test_served_name_identifies_a_model_whose_source_does_not() -> None:
    shape = model_shape(ModelSpec(source="s3://bucket/prod", served_name="llama-2-7b"))
    assert shape is not None and shape.name == "Llama 2 7B"


def test_size_only_match_has_no_kv_shape() -> None:
    shape = model_shape(ModelSpec(source="hf://acme/falcon-40b", served_name="m"))
    assert shape is not None and shape.params == 40e9 and not shape.has_kv_shape


LLAMA_2_7B_CONFIG = {
    "hidden_size": 4096,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
    "intermediate_size": 11008,
    "vocab_size": 32000,
}


def test_shape_from_config_counts_parameters() -> None:
    shape = shape_from_config("file:///m", LLAMA_2_7B_CONFIG)
    assert shape is not None
    # Llama 2 7B has 6.74e9 parameters (norms left out of the sum).
    assert shape.params == pytest.approx(6.74e9, rel=0.01)
    assert (shape.layers, shape.kv_heads, shape.head_dim) == (32, 32, 128)


def test_shape_from_config_without_the_needed_keys() -> None:
    assert shape_from_config("file:///m", {"model_type": "bert"}) is None


def test_config_wins_over_the_name() -> None:
    model = ModelSpec(source="file:///models/llama-3-70b", served_name="m")
    shape = model_shape(model, LLAMA_2_7B_CONFIG)
    assert shape is not None and shape.layers == 32


def test_local_model_config(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps(LLAMA_2_7B_CONFIG))
    assert local_model_config(f"file://{tmp_path}") == LLAMA_2_7B_CONFIG
    assert local_model_config(f"file://{tmp_path}/missing") is None
    assert local_model_config("hf://org/name") is None


@pytest.mark.parametrize(
    ("quantization", "per_weight"),
    [
        (Quantization.NONE, 2.0),
        (Quantization.FP8, 1.0),
        (Quantization.INT8, 1.0),
        (Quantization.AWQ, 0.5),
        (Quantization.GPTQ, 0.5),
        (Quantization.INT4, 0.5),
    ],
)
def test_weights_bytes_per_quantization(quantization: Quantization, per_weight: float) -> None:
    # No embedding shape known: every parameter takes the quantized size.
    assert weights_bytes(ModelShape("x", 1e9), quantization, 2) == 1e9 * per_weight


def test_embeddings_stay_unquantized() -> None:
    shape = ModelShape("x", 1e9, hidden=1000, vocab=100_000)  # 2e8 embedding parameters
    assert weights_bytes(shape, Quantization.AWQ, 2) == 8e8 * 0.5 + 2e8 * 2


def test_float32_doubles_unquantized_weights() -> None:
    assert weights_bytes(ModelShape("x", 1e9), Quantization.NONE, 4) == 4e9


# Qwen2 7B: 28 layers × 4 KV heads × 128 × 2 (K and V) × 2 bytes = 56 KiB per token.
QWEN_KV_PER_TOKEN = 2 * 28 * 4 * 128 * 2


@pytest.mark.parametrize(
    ("case", "kwargs", "fits", "reason"),
    [
        ("7B fp16 on 48 GiB", {}, True, "Fits"),
        ("7B awq on 24 GiB", {"quantization": "awq", "gpu_gib": 24}, True, "Fits"),
        ("7B fp16 on 16 GiB", {"gpu_gib": 16}, False, "DoesNotFit"),
        ("7B fp16 on 16 GiB, TP 2", {"gpu_gib": 16, "tp": 2}, True, "Fits"),
        ("7B fp16 on 16 GiB, PP 2", {"gpu_gib": 16, "pp": 2}, True, "Fits"),
        (
            "70B on one 80 GiB GPU",
            {"source": "hf://meta-llama/Meta-Llama-3-70B", "gpu_gib": 80},
            False,
            "DoesNotFit",
        ),
        (
            "70B on four 80 GiB GPUs",
            {"source": "hf://meta-llama/Meta-Llama-3-70B", "gpu_gib": 80, "tp": 4},
            True,
            "Fits",
        ),
        ("context longer than the cache", {"max_model_len": 1_048_576}, False, "DoesNotFit"),
        ("CPU pool", {"gpu_gib": None}, None, "NotChecked"),
        ("unknown model", {"source": "s3://bucket/prod"}, None, "UnknownModel"),
        ("size only, fits", {"source": "hf://acme/falcon-7b"}, True, "Fits"),
        ("size only, too big", {"source": "hf://acme/falcon-180b"}, False, "DoesNotFit"),
    ],
)
def test_capacity_fit(case: str, kwargs: dict[str, Any], fits: bool | None, reason: str) -> None:
    result = capacity_fit(spec(**kwargs))
    assert (result.fits, result.reason) == (fits, reason), f"{case}: {result.message}"
    assert result.condition_status == {True: "True", False: "False", None: "Unknown"}[fits]


def test_kv_tokens_follow_the_formula() -> None:
    result = capacity_fit(spec())
    pool = result.pools[0]
    weights = pool.weights_gib_per_gpu * GIB
    free = 48 * GIB * 0.9 - weights - 1.0 * GIB
    expected = int(free // QWEN_KV_PER_TOKEN) // KV_BLOCK_TOKENS * KV_BLOCK_TOKENS
    assert pool.kv_cache_tokens == expected
    assert pool.max_concurrent_at_max_len == expected // 8192
    assert result.status_capacity() == {
        "pool": "l20",
        "weightsGiBPerGpu": round(pool.weights_gib_per_gpu, 2),
        "kvCacheTokens": expected,
        "maxConcurrentAtMaxLen": expected // 8192,
    }


def test_tensor_parallel_splits_weights_and_kv_heads() -> None:
    one, two = (capacity_fit(spec(tp=tp)).pools[0] for tp in (1, 2))
    assert two.weights_gib_per_gpu == pytest.approx(one.weights_gib_per_gpu / 2)
    # Each GPU holds half the KV heads and has more room: over twice the tokens.
    assert two.kv_cache_tokens is not None and one.kv_cache_tokens is not None
    assert two.kv_cache_tokens > 2 * one.kv_cache_tokens


def test_fp8_kv_cache_doubles_the_tokens() -> None:
    plain = capacity_fit(spec()).pools[0].kv_cache_tokens
    fp8 = capacity_fit(spec(extra_args={"kv-cache-dtype": "fp8"})).pools[0].kv_cache_tokens
    assert plain is not None and fp8 is not None
    assert fp8 == pytest.approx(2 * plain, abs=KV_BLOCK_TOKENS)


def test_refusal_gives_the_numbers_and_the_fix() -> None:
    result = capacity_fit(spec(gpu_gib=16))
    assert result.fits is False
    message = result.message
    assert "Qwen2 7B needs 14.2 GiB of weights per GPU" in message
    assert "pool l20 has 16 GiB × 0.9 = 14.4 GiB usable" in message
    assert "raise tensorParallelSize to 2" in message
    assert "use a GPU with at least" in message


def test_context_refusal_suggests_a_shorter_context() -> None:
    result = capacity_fit(spec(max_model_len=1_048_576))
    message = result.message
    assert "< maxModelLen 1048576" in message
    tokens = result.pools[0].kv_cache_tokens
    assert f"lower maxModelLen to {tokens}" in message


def test_unknown_model_says_how_to_get_it_checked() -> None:
    result = capacity_fit(spec(source="s3://bucket/prod"))
    assert "servedName" in result.message
    assert result.status_capacity() is None


def test_most_constrained_pool_goes_to_the_status() -> None:
    two_pools = ModelDeploymentSpec.model_validate(
        {
            "model": {"source": "hf://Qwen/Qwen2-7B-Instruct", "servedName": "q"},
            "nodePools": [
                {"name": "big", "gpu": {"type": "A100", "memoryGiB": 80}},
                {"name": "small", "gpu": {"type": "L4", "memoryGiB": 24}},
                {"name": "cpu"},
            ],
        }
    )
    result = capacity_fit(two_pools)
    assert [p.pool for p in result.pools] == ["big", "small"]
    capacity = result.status_capacity()
    assert capacity is not None and capacity["pool"] == "small"


@pytest.mark.parametrize("example", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_example_fits_or_cannot_be_checked(example: Path) -> None:
    md = yaml.safe_load(example.read_text())
    result = capacity_fit(ModelDeploymentSpec.model_validate(md["spec"]))
    assert result.fits is not False, result.message


def test_capacity_and_flag_lint_import_no_io_framework() -> None:
    # The webhook and the status both use these; they must stay pure (see DESIGN.md).
    code = (
        "import sys\n"
        "import modelfleet_operator.capacity, modelfleet_operator.engine_flags\n"
        "bad = {'kopf', 'kubernetes', 'ray', 'vllm', 'tritonclient'} & set(sys.modules)\n"
        "assert not bad, bad\n"
    )
    paths = [str(ROOT / "operator"), str(ROOT / "serving")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
