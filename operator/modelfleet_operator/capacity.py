"""Does the model fit its GPUs? Capacity maths for a ModelDeployment.

vLLM loads the weights, reserves memory for activations, and gives what is left of
`gpuMemoryUtilization` × GPU memory to the KV cache; it refuses to start when that
cache cannot hold one sequence of `maxModelLen` tokens. This module does the same
sums from the spec alone, so that the admission webhook can refuse such a spec with
the numbers and the fix before any GPU node is started, and so that the status can
say how many tokens and full-length sequences a replica holds.

The sizes are estimates: the model's shape comes from a table of known models matched
by name (or from its `config.json` when the source is a local path); a model matched
only by its size in the name (`...-13b-...`) gets the weights check without the KV
check. CPU-only pools and unknown models are "cannot be checked", never a failure.

Pure: no Kubernetes, Kopf or Ray imports.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelfleet_operator.api.v1alpha1 import (
    ConditionStatus,
    EngineSpec,
    ModelDeploymentSpec,
    ModelSpec,
    NodePoolSpec,
    Quantization,
)

GIB = 1024**3

# Memory vLLM needs per GPU beyond weights and KV cache: the activation peak of a
# profiling forward pass, CUDA graphs and the allocator's slack. Measured peaks for
# 7B-70B models at the default batch token budget are around one GiB.
ACTIVATION_RESERVE_GIB = 1.0

# vLLM hands out KV cache in blocks of this many tokens.
KV_BLOCK_TOKENS = 16

# Bytes per weight of a quantized checkpoint. Embeddings and the LM head are not
# quantized by these methods, so they keep the activation dtype's size.
QUANTIZED_BYTES: Mapping[Quantization, float] = {
    Quantization.FP8: 1.0,
    Quantization.INT8: 1.0,
    Quantization.AWQ: 0.5,
    Quantization.GPTQ: 0.5,
    Quantization.INT4: 0.5,
}

# Tensor-parallel sizes worth suggesting: vLLM needs the attention heads to divide
# evenly, which powers of two do for every common model.
TP_CHOICES = (1, 2, 4, 8, 16)


@dataclass(frozen=True)
class ModelShape:
    """What the maths needs about a model. Unknown parts are None."""

    name: str
    params: float
    layers: int | None = None
    kv_heads: int | None = None
    head_dim: int | None = None
    hidden: int | None = None
    vocab: int | None = None
    tied_embeddings: bool = False

    @property
    def embedding_params(self) -> float:
        """Parameters of the embedding table and LM head (kept unquantized)."""
        if self.hidden is None or self.vocab is None:
            return 0.0
        return self.hidden * self.vocab * (1 if self.tied_embeddings else 2)

    @property
    def has_kv_shape(self) -> bool:
        """True when the KV cache size per token can be computed."""
        return None not in (self.layers, self.kv_heads, self.head_dim)


# Known models, matched in order against the lower-cased source and served name.
# Figures are from the models' config.json files.
KNOWN_MODELS: tuple[tuple[str, ModelShape], ...] = (
    (
        r"llama-?3(\.\d)?-?405b",
        ModelShape("Llama 3 405B", 405.9e9, 126, 8, 128, 16384, 128256),
    ),
    (
        r"llama-?3(\.\d)?-?70b",
        ModelShape("Llama 3 70B", 70.6e9, 80, 8, 128, 8192, 128256),
    ),
    (r"llama-?3(\.\d)?-?8b", ModelShape("Llama 3 8B", 8.03e9, 32, 8, 128, 4096, 128256)),
    (
        r"llama-?3\.2-?3b",
        ModelShape("Llama 3.2 3B", 3.21e9, 28, 8, 128, 3072, 128256, tied_embeddings=True),
    ),
    (
        r"llama-?3\.2-?1b",
        ModelShape("Llama 3.2 1B", 1.24e9, 16, 8, 64, 2048, 128256, tied_embeddings=True),
    ),
    (r"llama-?2-?70b", ModelShape("Llama 2 70B", 69.0e9, 80, 8, 128, 8192, 32000)),
    (r"llama-?2-?13b", ModelShape("Llama 2 13B", 13.0e9, 40, 40, 128, 5120, 32000)),
    (r"llama-?2-?7b", ModelShape("Llama 2 7B", 6.74e9, 32, 32, 128, 4096, 32000)),
    (r"qwen2(\.5)?-?72b", ModelShape("Qwen2 72B", 72.7e9, 80, 8, 128, 8192, 152064)),
    (r"qwen2(\.5)?-?32b", ModelShape("Qwen2.5 32B", 32.8e9, 64, 8, 128, 5120, 152064)),
    (r"qwen2(\.5)?-?14b", ModelShape("Qwen2.5 14B", 14.8e9, 48, 8, 128, 5120, 152064)),
    (r"qwen2(\.5)?-?7b", ModelShape("Qwen2 7B", 7.62e9, 28, 4, 128, 3584, 152064)),
    (r"mixtral-?8x7b", ModelShape("Mixtral 8x7B", 46.7e9, 32, 8, 128, 4096, 32000)),
    (r"mistral-?7b", ModelShape("Mistral 7B", 7.24e9, 32, 8, 128, 4096, 32000)),
    (r"^builtin://tiny-llama$", ModelShape("tiny-llama", 1.3e6, 2, 2, 64, 128, 1000)),
)

# A size in the name ("-13b-", "_0.5B") when the family is not known: enough for the
# weights, not for the KV cache.
SIZE_IN_NAME = re.compile(r"(?<![\d.])(\d+(?:\.\d+)?)b(?![a-z0-9])")


def shape_from_config(name: str, config: Mapping[str, Any]) -> ModelShape | None:
    """The shape of a Llama-like decoder from its Hugging Face `config.json`.

    The parameter count is summed from the layer sizes (attention with grouped KV
    heads, gated MLP, embeddings); None when a needed key is missing.
    """
    try:
        hidden = int(config["hidden_size"])
        layers = int(config["num_hidden_layers"])
        heads = int(config["num_attention_heads"])
        inter = int(config["intermediate_size"])
        vocab = int(config["vocab_size"])
    except (KeyError, TypeError, ValueError):
        return None
    kv_heads = int(config.get("num_key_value_heads") or heads)
    head_dim = int(config.get("head_dim") or hidden // heads)
    tied = bool(config.get("tie_word_embeddings", False))
    attention = hidden * heads * head_dim * 2 + hidden * kv_heads * head_dim * 2
    mlp = 3 * hidden * inter
    params = layers * (attention + mlp) + hidden * vocab * (1 if tied else 2)
    return ModelShape(name, float(params), layers, kv_heads, head_dim, hidden, vocab, tied)


def local_model_config(source: str) -> dict[str, Any] | None:
    """The `config.json` of a `file://` model source, when it is readable here."""
    if not source.startswith("file://"):
        return None
    path = Path(source.removeprefix("file://")) / "config.json"
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return config if isinstance(config, dict) else None


def model_shape(model: ModelSpec, config: Mapping[str, Any] | None = None) -> ModelShape | None:
    """The shape of the model: from `config` when given, else by name; None if unknown."""
    if config is not None:
        shape = shape_from_config(model.source, config)
        if shape is not None:
            return shape
    names = (model.source.lower(), model.served_name.lower())
    for pattern, known in KNOWN_MODELS:
        if any(re.search(pattern, name) for name in names):
            return known
    for name in names:
        size = SIZE_IN_NAME.search(name)
        if size:
            return ModelShape(f"a {size.group(1)}B model", float(size.group(1)) * 1e9)
    return None


def dtype_bytes(dtype: str) -> int:
    """Bytes of the activation dtype; `auto` is 16-bit, as for nearly every checkpoint."""
    return 4 if dtype == "float32" else 2


def kv_cache_dtype_bytes(engine: EngineSpec, activation_bytes: int) -> int:
    """Bytes per KV-cache element, honouring an fp8 `kv-cache-dtype` in extraArgs."""
    for name, value in engine.extra_args.items():
        if name.replace("_", "-") == "kv-cache-dtype" and str(value).startswith("fp8"):
            return 1
    return activation_bytes


def weights_bytes(shape: ModelShape, quantization: Quantization, activation_bytes: int) -> float:
    """Bytes of the whole checkpoint in GPU memory."""
    per_weight = QUANTIZED_BYTES.get(quantization, float(activation_bytes))
    embeddings = shape.embedding_params
    return (shape.params - embeddings) * per_weight + embeddings * activation_bytes


@dataclass(frozen=True)
class PoolCapacity:
    """The sums for one GPU node pool; KV fields are None when the shape is unknown."""

    pool: str
    gpu_memory_gib: float
    usable_gib: float
    weights_gib_per_gpu: float
    kv_cache_gib_per_gpu: float
    kv_cache_tokens: int | None
    max_concurrent_at_max_len: int | None
    fits: bool
    message: str


@dataclass(frozen=True)
class CapacityFit:
    """The capacity verdict for a whole spec.

    `fits` is True, False, or None when it cannot be checked (no GPU pool, unknown
    model); `reason` is a CamelCase word for the CapacityFits condition.
    """

    fits: bool | None
    reason: str
    message: str
    pools: tuple[PoolCapacity, ...] = ()

    @property
    def condition_status(self) -> ConditionStatus:
        """The CapacityFits condition's status: True, False or Unknown."""
        if self.fits is None:
            return "Unknown"
        return "True" if self.fits else "False"

    def status_capacity(self) -> dict[str, Any] | None:
        """`status.capacity` (camelCase) of the most constrained pool, or None.

        The pool with the fewest KV-cache tokens is the one that limits a replica
        wherever the autoscaler puts it.
        """
        if not self.pools:
            return None
        tightest = min(self.pools, key=lambda p: (p.kv_cache_tokens or 0, p.pool))
        return {
            "pool": tightest.pool,
            "weightsGiBPerGpu": round(tightest.weights_gib_per_gpu, 2),
            "kvCacheTokens": tightest.kv_cache_tokens,
            "maxConcurrentAtMaxLen": tightest.max_concurrent_at_max_len,
        }


def _tokens(count: int) -> str:
    """A token count as people write it: 512, 2.1k, 1.3M."""
    if count >= 1_000_000:
        return f"{count / 1_000_000:.1f}M"
    if count >= 1_000:
        return f"{count / 1_000:.1f}k"
    return str(count)


@dataclass(frozen=True)
class _Sizes:
    """Everything per GPU that does not depend on the pool, for one TP×PP layout."""

    weights: float
    kv_per_token: float | None

    def kv_tokens(self, gpu_gib: float, utilization: float) -> tuple[float, int | None]:
        """KV-cache bytes per GPU and the tokens they hold (whole blocks only)."""
        free = gpu_gib * GIB * utilization - self.weights - ACTIVATION_RESERVE_GIB * GIB
        if self.kv_per_token is None:
            return free, None
        blocks = max(0, math.floor(free / self.kv_per_token)) // KV_BLOCK_TOKENS
        return free, blocks * KV_BLOCK_TOKENS

    def fits(self, gpu_gib: float, utilization: float, max_model_len: int) -> bool:
        """True when the weights fit and the KV cache holds one full-length sequence."""
        free, tokens = self.kv_tokens(gpu_gib, utilization)
        return free > 0 and (tokens is None or tokens >= max_model_len)


def _sizes(shape: ModelShape, spec: ModelDeploymentSpec, tp: int) -> _Sizes:
    """Per-GPU weights and KV bytes per token with tensor-parallel size `tp`.

    Each GPU holds 1/(TP×PP) of the weights, the KV heads of its tensor shard (at
    least one: heads are replicated when TP exceeds them) and the layers of its stage.
    """
    engine, model = spec.engine, spec.model
    pp = engine.pipeline_parallel_size
    activation = dtype_bytes(model.dtype)
    weights = weights_bytes(shape, model.quantization, activation) / (tp * pp)
    if not shape.has_kv_shape:
        return _Sizes(weights, None)
    assert shape.layers is not None and shape.kv_heads is not None and shape.head_dim is not None
    layers = math.ceil(shape.layers / pp)
    heads = math.ceil(shape.kv_heads / tp)
    kv_bytes = kv_cache_dtype_bytes(engine, activation)
    return _Sizes(weights, 2.0 * layers * heads * shape.head_dim * kv_bytes)


def _fix(shape: ModelShape, spec: ModelDeploymentSpec, pool: NodePoolSpec) -> str:
    """What would make the pool fit: a larger TP, a shorter context, a bigger GPU."""
    assert pool.gpu is not None
    engine = spec.engine
    utilization = engine.gpu_memory_utilization
    fixes = []
    for tp in TP_CHOICES:
        if tp > engine.tensor_parallel_size and _sizes(shape, spec, tp).fits(
            pool.gpu.memory_gib, utilization, engine.max_model_len
        ):
            fixes.append(f"raise tensorParallelSize to {tp}")
            break
    sizes = _sizes(shape, spec, engine.tensor_parallel_size)
    _, tokens = sizes.kv_tokens(pool.gpu.memory_gib, utilization)
    if tokens is not None and tokens >= KV_BLOCK_TOKENS:
        fixes.append(f"lower maxModelLen to {tokens}")
    needed = sizes.weights + ACTIVATION_RESERVE_GIB * GIB
    if sizes.kv_per_token is not None:
        needed += engine.max_model_len * sizes.kv_per_token
    fixes.append(f"use a GPU with at least {needed / utilization / GIB:.0f} GiB")
    return ", ".join(fixes[:-1]) + (" or " if len(fixes) > 1 else "") + fixes[-1]


def pool_capacity(shape: ModelShape, spec: ModelDeploymentSpec, pool: NodePoolSpec) -> PoolCapacity:
    """The sums for one GPU pool and a message with the numbers (and the fix)."""
    assert pool.gpu is not None
    engine = spec.engine
    gpu = pool.gpu.memory_gib
    utilization = engine.gpu_memory_utilization
    sizes = _sizes(shape, spec, engine.tensor_parallel_size)
    free, tokens = sizes.kv_tokens(gpu, utilization)
    usable = gpu * utilization
    weights_gib = sizes.weights / GIB
    free_gib = free / GIB
    concurrent = None if tokens is None else tokens // engine.max_model_len
    budget = (
        f"{shape.name} needs {weights_gib:.1f} GiB of weights per GPU; pool {pool.name} "
        f"has {gpu:g} GiB × {utilization:g} = {usable:.1f} GiB usable"
    )
    if free <= 0:
        fits = False
        detail = (
            f"{budget}, which leaves nothing for the KV cache after "
            f"{ACTIVATION_RESERVE_GIB:g} GiB for activations"
        )
    elif tokens is None:
        fits = True
        detail = (
            f"{budget}, leaving {free_gib:.1f} GiB for the KV cache "
            f"(its size in tokens is unknown for this model)"
        )
    else:
        fits = tokens >= engine.max_model_len
        relation = ">=" if fits else "<"
        detail = (
            f"{budget}, leaving {free_gib:.1f} GiB for the KV cache after "
            f"{ACTIVATION_RESERVE_GIB:g} GiB for activations = {_tokens(tokens)} tokens "
            f"{relation} maxModelLen {engine.max_model_len}"
        )
        if fits:
            detail += f" ({concurrent} sequences of full length at once)"
    if not fits:
        detail += f"; {_fix(shape, spec, pool)}"
    return PoolCapacity(
        pool=pool.name,
        gpu_memory_gib=gpu,
        usable_gib=usable,
        weights_gib_per_gpu=weights_gib,
        kv_cache_gib_per_gpu=max(0.0, free_gib),
        kv_cache_tokens=tokens,
        max_concurrent_at_max_len=concurrent,
        fits=fits,
        message=detail,
    )


def capacity_fit(spec: ModelDeploymentSpec, config: Mapping[str, Any] | None = None) -> CapacityFit:
    """Decide whether the model fits every GPU pool of `spec`.

    `config` is the model's `config.json` when the caller could read it (see
    `local_model_config`); without it the model is looked up by name.
    """
    gpu_pools = [pool for pool in spec.node_pools if pool.gpu is not None]
    if not gpu_pools:
        return CapacityFit(
            None, "NotChecked", "no node pool has GPUs: GPU memory capacity is not checked"
        )
    shape = model_shape(spec.model, config)
    if shape is None:
        return CapacityFit(
            None,
            "UnknownModel",
            f"the size of model {spec.model.source} is unknown, so whether it fits the "
            "GPUs is not checked; put its size in model.servedName (e.g. my-model-7b) "
            "to have it checked",
        )
    pools = tuple(pool_capacity(shape, spec, pool) for pool in gpu_pools)
    failing = [p for p in pools if not p.fits]
    if failing:
        return CapacityFit(False, "DoesNotFit", "; ".join(p.message for p in failing), pools)
    return CapacityFit(True, "Fits", "; ".join(p.message for p in pools), pools)
