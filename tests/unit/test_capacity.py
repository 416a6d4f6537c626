"""Capacity maths: does the model fit the GPUs of each pool, and how many tokens fit."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml
from modelfleet_operator.api.quantization import Quantization
from modelfleet_operator.api.v1alpha1 import ModelDeploymentSpec, ModelSpec
from modelfleet_operator.capacity import (
    BATCHED_TOKENS_BIG_GPU,
    BATCHED_TOKENS_H100_CLASS,
    BATCHED_TOKENS_OTHER,
    GIB,
    KV_BLOCK_TOKENS,
    QUANTIZATION_BITS,
    SKIP_CAPACITY_ANNOTATION,
    capacity_fit,
    cpu_pool_capacity,
    engine_settings,
    gate,
    kv_bytes_per_token,
    pool_capacity,
    reserve,
    weights_bytes,
)
from modelfleet_operator.model_shape import ModelShape, Origin, Weights, shape_from_name

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "manifests" / "examples"


def spec(
    source: str = "hf://Qwen/Qwen2-7B-Instruct",
    *,
    quantization: str = "none",
    dtype: str = "auto",
    gpu_gib: float | None = 48,
    gpu_type: str = "L20",
    tp: int = 1,
    pp: int = 1,
    max_model_len: int = 8192,
    max_num_seqs: int = 64,
    utilization: float = 0.9,
    extra_args: dict[str, Any] | None = None,
    served_name: str = "m",
) -> ModelDeploymentSpec:
    pool: dict[str, Any] = {"name": "l20"}
    if gpu_gib is not None:
        pool["gpu"] = {"type": gpu_type, "memoryGiB": gpu_gib}
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
                "maxNumSeqs": max_num_seqs,
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
        ("builtin://tiny-llama", "tiny-llama"),
        ("hf://acme/bert-base", None),
        ("s3://bucket/model-v2", None),
    ],
)
def test_shape_by_name(name: str, expected: str | None) -> None:
    shape = shape_from_name(ModelSpec(source=name, served_name="m"))
    assert (shape.name if shape else None) == expected


def test_a_name_match_is_an_estimate_and_the_builtin_model_is_not() -> None:
    guessed = shape_from_name(ModelSpec(source="hf://meta-llama/Llama-2-7b", served_name="m"))
    builtin = shape_from_name(ModelSpec(source="builtin://tiny-llama", served_name="m"))
    assert guessed is not None and guessed.origin is Origin.NAME and guessed.estimated
    assert builtin is not None and builtin.origin is Origin.BUILTIN and not builtin.estimated


def test_served_name_identifies_a_model_whose_source_does_not() -> None:
    shape = shape_from_name(ModelSpec(source="s3://bucket/prod", served_name="llama-2-7b"))
    assert shape is not None and shape.name == "Llama 2 7B"


def test_size_only_match_has_no_kv_shape() -> None:
    shape = shape_from_name(ModelSpec(source="hf://acme/falcon-40b", served_name="m"))
    assert shape is not None and shape.params == 40e9 and not shape.has_kv_shape


def test_every_vllm_quantization_method_has_a_width_or_takes_the_checkpoints() -> None:
    # A new method from vLLM must be placed, or it silently counts as 8 bits.
    placed = set(QUANTIZATION_BITS) | {
        "compressed-tensors",
        "quark",
        "torchao",
        "inc",
        "fp_quant",
        "modelopt_mixed",
        "online",
    }
    assert {method.value for method in Quantization} <= placed


@pytest.mark.parametrize(
    ("quantization", "bits"),
    [
        ("none", 16),
        ("fp8", 8),
        ("fp8_per_tensor", 8),
        ("int8_per_channel_weight_only", 8),
        ("awq", 4.25),
        ("gptq", 4.25),
        ("modelopt_fp4", 4.5),
        ("compressed-tensors", 8),
    ],
)
def test_weights_bytes_per_quantization(quantization: str, bits: float) -> None:
    # No embedding shape known: every parameter takes the method's width.
    shape = ModelShape("x", 1e9, Origin.SPEC)
    assert weights_bytes(shape, quantization, 2) == pytest.approx(1e9 * bits / 8)


def test_embeddings_stay_unquantized() -> None:
    shape = ModelShape("x", 1e9, Origin.SPEC, hidden=1000, vocab=100_000)  # 2e8 embeddings
    assert weights_bytes(shape, "awq", 2) == pytest.approx(8e8 * 4.25 / 8 + 2e8 * 2)


def test_float32_doubles_unquantized_weights() -> None:
    assert weights_bytes(ModelShape("x", 1e9, Origin.SPEC), "none", 4) == 4e9


def test_a_quantized_checkpoint_counts_as_stored() -> None:
    stored = Weights(total_bytes=5.5e9)
    shape = ModelShape("q", 7.6e9, Origin.CHECKPOINT, checkpoint_quantization="awq", weights=stored)
    # Whatever the spec says (vLLM reads the method from the checkpoint).
    assert weights_bytes(shape, "none", 2) == 5.5e9
    assert weights_bytes(shape, "awq", 2) == 5.5e9


def test_a_checkpoints_own_bits_win_over_the_methods_default() -> None:
    eight_bit = ModelShape(
        "g", 1e9, Origin.CONFIG, checkpoint_quantization="gptq", checkpoint_bits=8
    )
    assert weights_bytes(eight_bit, "gptq", 2) == pytest.approx(1e9)


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
        (
            "70B on two 24 GiB GPUs",
            {"source": "hf://meta-llama/Meta-Llama-3-70B", "gpu_gib": 24, "tp": 2},
            False,
            "DoesNotFit",
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
    reserved = pool.reserve_gib_per_gpu * GIB
    free = 48 * GIB * 0.9 - weights - reserved
    expected = math.floor(free / (QWEN_KV_PER_TOKEN * KV_BLOCK_TOKENS)) * KV_BLOCK_TOKENS
    assert pool.kv_cache_tokens == expected
    assert pool.max_concurrent_at_max_len == expected // 8192
    assert pool.headroom_gib == pytest.approx(free / GIB - 8192 * QWEN_KV_PER_TOKEN / GIB)
    assert result.status_capacity() == {
        "pool": "l20",
        "weightsGiBPerGpu": round(pool.weights_gib_per_gpu, 2),
        "kvCacheTokens": expected,
        "maxConcurrentAtMaxLen": expected // 8192,
        "shapeFrom": "the model's name",
    }


@pytest.mark.parametrize(
    ("gpu_type", "gib", "extra_args", "expected"),
    [
        ("L4", 24, {}, BATCHED_TOKENS_OTHER),
        ("A100", 80, {}, BATCHED_TOKENS_OTHER),
        ("H100", 80, {}, BATCHED_TOKENS_H100_CLASS),
        ("B200", 180, {}, BATCHED_TOKENS_BIG_GPU),
        ("L4", 24, {"max-num-batched-tokens": 4096}, 4096),
        ("L4", 24, {"max_num_batched_tokens": "8k"}, 8000),
        ("L4", 24, {"enable-chunked-prefill": False}, 8192),
    ],
)
def test_batched_tokens_follow_vllms_defaults(
    gpu_type: str, gib: float, extra_args: dict[str, Any], expected: int
) -> None:
    s = spec(gpu_type=gpu_type, gpu_gib=gib, extra_args=extra_args)
    assert engine_settings(s, s.node_pools[0], None).max_num_batched_tokens == expected


def test_the_reserve_grows_with_the_batch_and_shrinks_without_cuda_graphs() -> None:
    base = capacity_fit(spec()).pools[0].reserve_gib_per_gpu
    bigger = capacity_fit(spec(extra_args={"max-num-batched-tokens": 16384})).pools[0]
    eager = capacity_fit(spec(extra_args={"enforce-eager": True})).pools[0]
    assert bigger.reserve_gib_per_gpu > base + 1.0
    assert eager.reserve_gib_per_gpu < base
    assert eager.kv_cache_tokens is not None
    assert eager.kv_cache_tokens > (capacity_fit(spec()).pools[0].kv_cache_tokens or 0)


def test_the_reserve_terms() -> None:
    shape = shape_from_name(ModelSpec(source="hf://meta-llama/Meta-Llama-3-8B", served_name="m"))
    assert shape is not None
    s = spec(extra_args={"max-num-batched-tokens": 2048})
    settings = engine_settings(s, s.node_pools[0], shape)
    one, two = reserve(shape, settings, 1), reserve(shape, settings, 2)
    # 2 × hidden + 3 × intermediate per token at 2 bytes, times the allocator's overhead.
    assert one.activation == pytest.approx(2048 * (2 * 4096 + 3 * 14336) * 2 * 1.08)
    assert two.activation < one.activation  # the MLP is split over the GPUs
    assert two.non_torch > one.non_torch  # NCCL's buffers
    assert one.sampler == 64 * 128256 * 24
    off = reserve(shape, replace(settings, profiles_sampler=False, count_cuda_graphs=False), 1)
    assert (off.sampler, off.cuda_graphs) == (0.0, 0.0)


def test_tensor_parallel_splits_weights_and_kv_heads() -> None:
    one, two = (capacity_fit(spec(tp=tp)).pools[0] for tp in (1, 2))
    assert two.weights_gib_per_gpu == pytest.approx(one.weights_gib_per_gpu / 2)
    # Each GPU holds half the KV heads and has more room: over twice the tokens.
    assert two.kv_cache_tokens is not None and one.kv_cache_tokens is not None
    assert two.kv_cache_tokens > 2 * one.kv_cache_tokens


@pytest.mark.parametrize(
    ("tp", "pp", "per_token"),
    [
        (1, 1, 2 * 32 * 8 * 128 * 2),
        (2, 1, 2 * 32 * 4 * 128 * 2),
        (8, 1, 2 * 32 * 1 * 128 * 2),
        # More GPUs than KV heads: each keeps one (replicated) head.
        (16, 1, 2 * 32 * 1 * 128 * 2),
        (1, 2, 2 * 16 * 8 * 128 * 2),
    ],
)
def test_kv_bytes_per_token_with_gqa_tp_and_pp(tp: int, pp: int, per_token: int) -> None:
    shape = shape_from_name(ModelSpec(source="hf://meta-llama/Meta-Llama-3-8B", served_name="m"))
    assert shape is not None
    s = spec()
    settings = engine_settings(s, s.node_pools[0], shape)
    assert kv_bytes_per_token(shape, settings, tp, pp) == per_token


@pytest.mark.parametrize(("dtype", "ratio"), [("fp8", 2.0), ("fp8_e5m2", 2.0), ("auto", 1.0)])
def test_kv_cache_dtype_changes_the_tokens(dtype: str, ratio: float) -> None:
    plain = capacity_fit(spec()).pools[0].kv_cache_tokens
    other = capacity_fit(spec(extra_args={"kv-cache-dtype": dtype})).pools[0].kv_cache_tokens
    assert plain is not None and other is not None
    assert other == pytest.approx(ratio * plain, abs=KV_BLOCK_TOKENS)


def test_refusal_gives_the_numbers_and_the_fix() -> None:
    result = capacity_fit(spec(gpu_gib=16))
    assert result.fits is False
    message = result.message
    assert message.startswith("figures estimated from the model's name")
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


def test_a_slightly_short_cache_suggests_more_memory_utilization() -> None:
    # Find a context the cache just misses at 0.85, then check the suggestion fixes it.
    tokens = capacity_fit(spec(utilization=0.85)).pools[0].kv_cache_tokens
    assert tokens is not None
    result = capacity_fit(spec(utilization=0.85, max_model_len=tokens + 1024))
    assert result.fits is False
    assert "raise gpuMemoryUtilization to" in result.message
    suggested = float(result.message.split("raise gpuMemoryUtilization to ")[1].split(" ")[0])
    assert capacity_fit(spec(utilization=suggested, max_model_len=tokens + 1024)).fits


def test_unknown_model_says_how_to_get_it_checked() -> None:
    result = capacity_fit(spec(source="s3://bucket/prod"), note="could not read it")
    assert "spec.model.shape" in result.message and "could not read it" in result.message
    assert result.status_capacity() is None


def test_a_stated_shape_is_exact() -> None:
    shape = ModelShape(
        "mine", 7e9, Origin.SPEC, layers=32, attention_heads=32, kv_heads=8, head_dim=128
    )
    result = capacity_fit(spec(source="pvc://claim/mine"), shape)
    assert result.fits is True and not result.estimated
    assert not result.message.startswith("figures estimated")
    assert result.status_capacity() == {
        **(result.status_capacity() or {}),
        "shapeFrom": "spec.model.shape",
    }


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


@pytest.mark.parametrize(
    ("kv_gib", "max_model_len", "tokens", "fits"),
    [
        (None, 512, 1_048_576, True),  # 1 GiB / (2 layers × 2 heads × 64 × 2 × 2 bytes)
        (1, 512, 1_048_576, True),
        (1.5, 512, 2 * 1_048_576, True),  # the replica rounds up to whole GiB
        (1, 2_000_000, 1_048_576, False),
    ],
)
def test_cpu_pool_kv_cache(
    kv_gib: float | None, max_model_len: int, tokens: int, fits: bool
) -> None:
    s = ModelDeploymentSpec.model_validate(
        {
            "model": {"source": "builtin://tiny-llama", "servedName": "t"},
            "engine": {"maxModelLen": min(max_model_len, 1_048_576), "cpuKVCacheGiB": kv_gib},
            "nodePools": [{"name": "cpu"}],
        }
    )
    shape = shape_from_name(s.model)
    assert shape is not None
    if max_model_len > 1_048_576:
        s = s.model_copy(
            update={"engine": s.engine.model_copy(update={"max_model_len": max_model_len})}
        )
    pool = cpu_pool_capacity(shape, s, s.node_pools[0])
    assert (pool.kv_cache_tokens, pool.fits) == (tokens, fits)


@pytest.mark.parametrize(
    ("fit_kwargs", "annotations", "refused", "skipped", "warned"),
    [
        ({}, {}, False, False, False),
        ({"gpu_gib": 16}, {}, True, False, False),
        ({"gpu_gib": 16}, {SKIP_CAPACITY_ANNOTATION: "true"}, False, True, True),
        ({"gpu_gib": 16}, {SKIP_CAPACITY_ANNOTATION: "yes"}, True, False, False),
        ({"gpu_gib": None}, {}, False, False, True),
    ],
)
def test_the_gate(
    fit_kwargs: dict[str, Any],
    annotations: dict[str, str],
    refused: bool,
    skipped: bool,
    warned: bool,
) -> None:
    verdict = gate(capacity_fit(spec(**fit_kwargs)), annotations)
    assert (verdict.refused is not None, verdict.skipped, verdict.warning is not None) == (
        refused,
        skipped,
        warned,
    )
    if refused:
        assert f'{SKIP_CAPACITY_ANNOTATION}: "true"' in (verdict.refused or "")


def test_pool_capacity_takes_explicit_settings() -> None:
    s = spec()
    shape = shape_from_name(s.model)
    assert shape is not None
    settings = engine_settings(s, s.node_pools[0], shape)
    lean = replace(settings, max_num_batched_tokens=256, count_cuda_graphs=False)
    default = pool_capacity(shape, s, s.node_pools[0])
    assert (pool_capacity(shape, s, s.node_pools[0], lean).kv_cache_tokens or 0) > (
        default.kv_cache_tokens or 0
    )


@pytest.mark.parametrize("example", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_example_fits_or_cannot_be_checked(example: Path) -> None:
    md = yaml.safe_load(example.read_text())
    result = capacity_fit(ModelDeploymentSpec.model_validate(md["spec"]))
    assert result.fits is not False, result.message


def test_capacity_and_flag_lint_import_no_io_framework() -> None:
    # The webhook and the status both use these; they must stay pure (docs/design.md).
    code = (
        "import sys\n"
        "import modelfleet_operator.capacity, modelfleet_operator.engine_flags\n"
        "import modelfleet_operator.model_shape, modelfleet_operator.rollout\n"
        "bad = {'kopf', 'kubernetes', 'ray', 'vllm', 'tritonclient', 'torch', 'httpx'}\n"
        "bad &= set(sys.modules)\n"
        "assert not bad, bad\n"
    )
    paths = [str(ROOT / "operator"), str(ROOT / "serving")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
