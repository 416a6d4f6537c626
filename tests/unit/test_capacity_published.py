"""The capacity maths against KV-cache sizes vLLM itself printed on real GPUs.

Each row is a start-up log published in vLLM's own issue tracker: the model, the GPU's
memory as CUDA reported it, tensor parallelism, gpu-memory-utilization, the batch the
engine profiled, and what vLLM then printed ("# GPU blocks: N" × 16 tokens, "GPU KV
cache size: N tokens", or "the rest of the memory reserved for KV Cache is X GiB").
The estimate must stay within 15 % of each; when it does not, the memory model
(capacity.py: activation peak, reserve) is what gets fixed, not the tolerance.

The logs come from vLLM's V0 engine, which profiled the forward pass only and captured
CUDA graphs after sizing the KV cache; the rows say so with `profiles_sampler=False,
count_cuda_graphs=False`, the two switches of `EngineSettings` that describe that
accounting (the replicas run vLLM 0.32, which does both). The model shapes are those
of the models' config.json files.

Left out, with the reason:
- https://github.com/vllm-project/vllm/pull/2031, Llama 2 70B TP 4 (20865 blocks): the
  vLLM 0.2 profiler of that PR charged NCCL's whole pool to the activations, an
  accounting replaced since (vllm-project/vllm#9352);
- https://github.com/vllm-project/vllm/issues/12330 (Llama 3 8B on an A100 40GB): the
  run's max-num-seqs is not given, and its 9.37 GiB activation peak depends on it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import pytest
from modelfleet_operator.api.v1alpha1 import ModelDeploymentSpec
from modelfleet_operator.capacity import engine_settings, pool_capacity
from modelfleet_operator.model_shape import shape_from_config

TOLERANCE = 0.15

LLAMA_3_1_8B = {
    "hidden_size": 4096,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "intermediate_size": 14336,
    "vocab_size": 128256,
}
LLAMA_2_7B = {
    "hidden_size": 4096,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
    "intermediate_size": 11008,
    "vocab_size": 32000,
}
# DeepSeek-R1-Distill-Qwen-14B has Qwen2.5 14B's shape.
QWEN_2_5_14B = {
    "hidden_size": 5120,
    "num_hidden_layers": 48,
    "num_attention_heads": 40,
    "num_key_value_heads": 8,
    "intermediate_size": 13824,
    "vocab_size": 152064,
}
QWEN_2_5_7B_AWQ = {
    "hidden_size": 3584,
    "num_hidden_layers": 28,
    "num_attention_heads": 28,
    "num_key_value_heads": 4,
    "intermediate_size": 18944,
    "vocab_size": 152064,
    "quantization_config": {"quant_method": "awq", "bits": 4},
}


@dataclass(frozen=True)
class Published:
    """One start-up that vLLM logged, and what it printed."""

    url: str
    model: str
    config: dict[str, Any]
    gpu_gib: float
    utilization: float
    tp: int
    max_model_len: int
    # What the engine profiled: without chunked prefill a whole max_model_len prompt.
    batched_tokens: int
    tokens: int | None = None  # the KV-cache size vLLM printed, in tokens
    kv_gib: float | None = None  # or in GiB, where the tokens line is not one GPU's
    started: bool = True  # whether vLLM went on to serve (one full-length sequence fit)
    quantization: str = "none"


PUBLISHED = (
    Published(
        # "Loading model weights took 14.9888 GB ... total_gpu_memory=23.58GiB ...
        # kv_cache_size=3.81GiB gpu_memory_utilization=0.90 / GPU blocks: 1952"
        url="https://github.com/vllm-project/vllm/issues/10517",
        model="Llama 3.1 8B Instruct, RTX 3090, max-model-len 20000",
        config=LLAMA_3_1_8B,
        gpu_gib=23.58,
        utilization=0.90,
        tp=1,
        max_model_len=20000,
        batched_tokens=20000,
        tokens=1952 * 16,
    ),
    Published(
        # Same GPU and model at 29k: "# GPU blocks: 1478 ... larger than the maximum
        # number of tokens that can be stored in KV cache (23648)"
        url="https://github.com/vllm-project/vllm/issues/10517",
        model="Llama 3.1 8B Instruct, RTX 3090, max-model-len 29000",
        config=LLAMA_3_1_8B,
        gpu_gib=23.58,
        utilization=0.90,
        tp=1,
        max_model_len=29000,
        batched_tokens=29000,
        tokens=23648,
        started=False,
    ),
    Published(
        # "Llama2-7B with TP=1 and 1xA100-80GB ... This PR: # GPU blocks: 7351", posted by
        # a vLLM maintainer (default gpu-memory-utilization 0.9, max-model-len 4096).
        url="https://github.com/vllm-project/vllm/pull/2031",
        model="Llama 2 7B, A100 80GB",
        config=LLAMA_2_7B,
        gpu_gib=79.15,
        utilization=0.90,
        tp=1,
        max_model_len=4096,
        batched_tokens=4096,
        tokens=7351 * 16,
    ),
    Published(
        # Two RTX 4090, TP 2, gpu-memory-utilization 0.98 (= 23.08 GiB of each), context
        # 131072 with chunked prefill (2048 batched tokens): "model weights took 13.9476
        # GB, non_torch_memory takes 0.25GiB; PyTorch activation peak memory takes
        # 0.19GiB; ... the rest of the memory reserved for KV Cache is 8.69GiB", then
        # refused: "max seq len (131072) is larger than ... KV cache (81536)". The token
        # figure is the smaller of the two GPUs'; the GiB line is the first GPU's.
        url="https://github.com/vllm-project/vllm/issues/13061",
        model="DeepSeek-R1-Distill-Qwen-14B, 2 × RTX 4090, TP 2",
        config=QWEN_2_5_14B,
        gpu_gib=23.08 / 0.98,
        utilization=0.98,
        tp=2,
        max_model_len=131072,
        batched_tokens=2048,
        kv_gib=8.69,
        started=False,
    ),
    Published(
        # RTX 4060 8 GiB at 0.70: "model weights take 5.20GiB; non_torch_memory takes
        # 0.03GiB; PyTorch activation peak memory takes 1.42GiB; the rest of the memory
        # reserved for KV Cache is -1.05GiB. # cuda blocks: 0"
        url="https://github.com/vllm-project/vllm/issues/13882",
        model="Qwen2.5 7B Instruct AWQ, RTX 4060 8GB",
        config=QWEN_2_5_7B_AWQ,
        gpu_gib=8.0,
        utilization=0.70,
        tp=1,
        max_model_len=4096,
        batched_tokens=4096,
        tokens=0,
        started=False,
        quantization="awq",
    ),
)


def estimate(row: Published) -> tuple[int | None, float, bool]:
    """(KV tokens, KV GiB per GPU, fits) as modelfleet estimates them for the row."""
    spec = ModelDeploymentSpec.model_validate(
        {
            "model": {
                "source": "hf://published/model",
                "servedName": "m",
                "quantization": row.quantization,
            },
            "engine": {
                "maxModelLen": row.max_model_len,
                "maxNumSeqs": 256,
                "gpuMemoryUtilization": row.utilization,
                "tensorParallelSize": row.tp,
                "extraArgs": {"max-num-batched-tokens": row.batched_tokens},
            },
            "nodePools": [{"name": "gpu", "gpu": {"type": "GPU", "memoryGiB": row.gpu_gib}}],
        }
    )
    shape = shape_from_config(row.model, row.config)
    assert shape is not None
    pool = spec.node_pools[0]
    settings = replace(
        engine_settings(spec, pool, shape), profiles_sampler=False, count_cuda_graphs=False
    )
    capacity = pool_capacity(shape, spec, pool, settings)
    return capacity.kv_cache_tokens, capacity.kv_cache_gib_per_gpu, capacity.fits


@pytest.mark.parametrize("row", PUBLISHED, ids=lambda row: row.model)
def test_the_estimate_holds_against_what_vllm_printed(row: Published) -> None:
    tokens, kv_gib, fits = estimate(row)
    assert fits == row.started, f"{row.model}: vLLM {'started' if row.started else 'refused'}"
    if row.tokens == 0:
        assert tokens == 0, f"{row.model}: vLLM had no room for a KV cache, we estimate {tokens}"
    elif row.tokens is not None:
        assert tokens is not None
        assert abs(tokens / row.tokens - 1) <= TOLERANCE, f"{row.model}: {tokens} vs {row.tokens}"
    else:
        assert row.kv_gib is not None
        assert abs(kv_gib / row.kv_gib - 1) <= TOLERANCE, f"{row.model}: {kv_gib} vs {row.kv_gib}"


def test_at_least_five_published_points() -> None:
    assert len(PUBLISHED) >= 5
    assert all(row.url.startswith("https://github.com/vllm-project/vllm/") for row in PUBLISHED)
