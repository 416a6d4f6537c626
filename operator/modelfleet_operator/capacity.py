"""Does the model fit its GPUs? Capacity maths for a ModelDeployment.

vLLM sizes its KV cache at start-up: it takes `gpuMemoryUtilization` × the GPU's
memory, subtracts what a profiling pass shows everything else needs (the weights, the
activation peak of a forward pass over `max-num-batched-tokens` tokens and of the
sampler over `max-num-seqs` sequences, CUDA/NCCL memory outside PyTorch, and its
estimate of the CUDA graphs' memory unless `enforce-eager`), and gives the rest to the
KV cache, in blocks of 16 tokens. It refuses to start when that cache cannot hold one
sequence of `maxModelLen` tokens. This module does the same sums from the spec and the
model's shape (model_shape.py), so that the admission webhook and the reconcile can
refuse such a spec with the numbers and the fix before any GPU node is started, and so
that the status and `modelfleet plan` can say how many tokens and full-length
sequences a replica holds. docs/capacity.md derives every term.

CPU-only pools and models of unknown size are "cannot be checked", never a failure.

Pure: no I/O and no Kubernetes, Kopf or Ray imports.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from modelfleet_operator.api import v1alpha1
from modelfleet_operator.api.v1alpha1 import (
    ConditionStatus,
    ModelDeploymentSpec,
    NodePoolSpec,
    ScalarArg,
)
from modelfleet_operator.model_shape import ModelShape, Origin, shape_from_name

GIB = 1024**3

# Set to "true" on a ModelDeployment to deploy it although the capacity estimate says
# it does not fit (a GPU with unusual overheads, a model the estimate gets wrong).
SKIP_CAPACITY_ANNOTATION = f"{v1alpha1.GROUP}/skip-capacity-check"

# vLLM hands out KV cache on GPUs in blocks of this many tokens.
KV_BLOCK_TOKENS = 16

# Memory outside PyTorch's allocator that appears while vLLM starts: cuBLAS and
# attention-backend workspaces ("non_torch_memory" in vLLM's profile; 0.35 GiB on an
# RTX 3090 in vllm-project/vllm#10517), and with tensor parallelism NCCL's buffers and
# vLLM's custom all-reduce on top.
NON_TORCH_GIB = 0.35
NCCL_GIB = 0.25

# The forward pass's activation peak is the tensors live at a layer's MLP (see
# activation_bytes_per_token) times this: the allocator's rounding and the smaller
# tensors around them. Two profiles of Llama 3.1 8B at 20k and 29k batched tokens in
# vllm-project/vllm#10517 measured 1.08x the sum.
ACTIVATION_OVERHEAD = 1.08

# The CUDA graphs vLLM captures for decode batches up to its largest capture size;
# since v0.21 vLLM profiles them and takes its estimate from the KV cache. Published
# "Estimated CUDA graph memory" lines show 0.2-0.4 GiB for dense models; the second
# term adds the activations of the largest captured batch.
CUDA_GRAPH_BASE_GIB = 0.25
# vLLM captures decode batches up to twice max-num-seqs, at most this many.
MAX_CUDA_GRAPH_CAPTURE = 512

# vLLM (V1) also profiles its sampler over max-num-seqs sequences: per sequence and
# vocabulary entry, the fp32 logits, their softmax and the sort for top-k/top-p
# (fp32 values and int64 indices), about this many bytes. The forward pass's
# activations are freed by then, so the larger of the two is the peak.
SAMPLER_BYTES_PER_LOGIT = 24

# vLLM's defaults for max-num-batched-tokens of its OpenAI server (what the replicas
# run), by GPU: engine/arg_utils.py get_batch_defaults.
BATCHED_TOKENS_BIG_GPU = 16384  # 160 GiB and more
BATCHED_TOKENS_H100_CLASS = 8192  # 70 GiB and more, except A100
BATCHED_TOKENS_OTHER = 2048

# Bits per weight of the linear layers for each quantization method, for when the
# weights' size must be computed from the parameter count (the checkpoint is not
# readable, or vLLM quantizes an unquantized checkpoint as it loads it). Group scales
# and zero points add a little: 4.25 bits for 4-bit group-wise methods, 4.5 for FP4
# with FP8 scales per 16 weights. Methods whose width depends on the checkpoint
# (compressed-tensors, quark, torchao, ...) take the checkpoint's own bits when
# config.json says, else 8.
QUANTIZATION_BITS: Mapping[str, float | None] = {
    "none": None,
    "awq": 4.25,
    "auto_awq": 4.25,
    "awq_marlin": 4.25,
    "gptq": 4.25,
    "auto_gptq": 4.25,
    "gptq_marlin": 4.25,
    "moe_wna16": 4.25,
    "humming": 4.25,
    "fp8": 8,
    "fbgemm_fp8": 8,
    "fp8_per_tensor": 8,
    "fp8_per_block": 8,
    "fp8_per_channel": 8,
    "deepseek_v4_fp8": 8,
    "modelopt": 8,
    "modelopt_mxfp8": 8.25,
    "mxfp8": 8.25,
    "int8_per_channel_weight_only": 8,
    "experts_int8": 8,
    "modelopt_fp4": 4.5,
    "mxfp4": 4.25,
    "gpt_oss_mxfp4": 4.25,
    "nvfp4_per_token": 4.5,
}
UNKNOWN_QUANTIZATION_BITS = 8.0

# Bytes per element of `kv-cache-dtype` values; "auto" is the activation dtype.
KV_CACHE_DTYPE_BYTES: Mapping[str, float] = {
    "bfloat16": 2,
    "float16": 2,
    "fp8": 1,
    "fp8_e4m3": 1,
    "fp8_e5m2": 1,
    "fp8_inc": 1,
    "fp8_ds_mla": 1,
    "fp8_per_token_head": 1,
    "int8_per_token_head": 1,
    "int4_per_token_head": 0.5,
    "nvfp4": 0.5625,
    "nvfp4_4over6": 0.5625,
    "nvfp4_ds_mla": 0.5625,
    "turboquant_3bit_nc": 0.375,
    "turboquant_4bit_nc": 0.5,
    "turboquant_k3v4_nc": 0.4375,
    "turboquant_k8v4": 0.75,
    "ultraquant_4bit": 0.5,
}

# Tensor-parallel sizes worth suggesting.
TP_CHOICES = (1, 2, 4, 8, 16)


def _arg(extra_args: Mapping[str, ScalarArg], flag: str) -> ScalarArg | None:
    """The value of `flag` in extraArgs, whichever of dashes or underscores it is spelt with."""
    for name, value in extra_args.items():
        if name.replace("_", "-") == flag:
            return value
    return None


def _int_arg(extra_args: Mapping[str, ScalarArg], flag: str) -> int | None:
    value = _arg(extra_args, flag)
    if isinstance(value, bool) or value is None:
        return None
    try:
        # vLLM accepts human-readable sizes for token counts (8k, 1M).
        text = str(value).strip().lower()
        scale = {"k": 1_000, "m": 1_000_000}.get(text[-1:], 1)
        return int(float(text[:-1] if scale > 1 else text) * scale)
    except ValueError:
        return None


@dataclass(frozen=True)
class EngineSettings:
    """What a replica's vLLM runs with, as far as memory is concerned: the spec's
    settings and extraArgs, and vLLM's defaults for what neither sets."""

    max_num_batched_tokens: int
    max_num_seqs: int
    enforce_eager: bool
    activation_bytes: int
    kv_bytes: float
    kv_cache_dtype: str
    # vLLM since v0.21 takes its CUDA-graph estimate from the KV cache; before, the
    # graphs lived in the (1 - gpuMemoryUtilization) slack.
    count_cuda_graphs: bool = True
    # vLLM's V1 engine profiles the sampler too; the V0 engine profiled the forward
    # pass only. Both switches exist to check the maths against older published logs.
    profiles_sampler: bool = True


def activation_dtype_bytes(dtype: str) -> int:
    """Bytes of the dtype vLLM computes in: `auto` is the checkpoint's, and vLLM runs
    float32 checkpoints in 16 bits, so only an explicit float32 takes 4."""
    return 4 if dtype == "float32" else 2


def engine_settings(
    spec: ModelDeploymentSpec, pool: NodePoolSpec, shape: ModelShape | None
) -> EngineSettings:
    """The memory-relevant settings of `spec`'s engine on `pool`'s GPUs."""
    engine = spec.engine
    args = engine.extra_args
    batched = _int_arg(args, "max-num-batched-tokens")
    if batched is None:
        gib = pool.gpu.memory_gib if pool.gpu is not None else 0.0
        gpu_type = pool.gpu.type.lower() if pool.gpu is not None else ""
        if gib >= 160:
            batched = BATCHED_TOKENS_BIG_GPU
        elif gib >= 70 and "a100" not in gpu_type:
            batched = BATCHED_TOKENS_H100_CLASS
        else:
            batched = BATCHED_TOKENS_OTHER
        if _arg(args, "enable-chunked-prefill") is False:
            # Without chunked prefill a whole prompt is one batch.
            batched = max(batched, engine.max_model_len)
    activation = activation_dtype_bytes(spec.model.dtype)
    kv_dtype = str(_arg(args, "kv-cache-dtype") or "auto")
    kv_bytes = KV_CACHE_DTYPE_BYTES.get(kv_dtype, float(activation))
    return EngineSettings(
        max_num_batched_tokens=batched,
        max_num_seqs=engine.max_num_seqs,
        enforce_eager=_arg(args, "enforce-eager") is True,
        activation_bytes=activation,
        kv_bytes=kv_bytes,
        kv_cache_dtype=kv_dtype,
    )


def _linear_bits(shape: ModelShape, quantization: str) -> float | None:
    """Bits per linear-layer weight under `quantization`; None when unquantized."""
    if quantization == "none":
        return None
    if shape.checkpoint_bits and quantization == shape.checkpoint_quantization:
        return float(shape.checkpoint_bits) + (0.25 if shape.checkpoint_bits < 8 else 0.0)
    bits = QUANTIZATION_BITS.get(quantization, UNKNOWN_QUANTIZATION_BITS)
    return UNKNOWN_QUANTIZATION_BITS if bits is None else bits


def weights_bytes(shape: ModelShape, quantization: str, activation_bytes: int) -> float:
    """Bytes of the whole model in GPU memory.

    A quantized checkpoint (its config.json names a method, or `model.shape.weightBytes`
    is stated) goes into GPU memory as stored. Otherwise the parameters count: at the
    activation dtype's size, or, when vLLM quantizes as it loads (fp8 of a 16-bit
    checkpoint), the linear layers at the method's width and the embeddings and LM
    head, which these methods leave alone, at the activation dtype's.
    """
    if shape.weights is not None and shape.checkpoint_quantization is not None:
        return shape.weights.total_bytes
    if shape.params <= 0 and shape.weights is not None:
        return shape.weights.total_bytes
    method = quantization if quantization != "none" else (shape.checkpoint_quantization or "none")
    bits = _linear_bits(shape, method)
    if bits is None:
        return shape.params * activation_bytes
    embeddings = shape.embedding_params
    return (shape.params - embeddings) * bits / 8 + embeddings * activation_bytes


@dataclass(frozen=True)
class Reserve:
    """Memory per GPU that vLLM keeps out of the KV cache besides the weights (bytes)."""

    activation: float
    sampler: float
    non_torch: float
    cuda_graphs: float

    @property
    def total(self) -> float:
        """Everything but the weights and the KV cache: the larger of the forward pass's
        and the sampler's peak (one runs after the other), and the rest."""
        return max(self.activation, self.sampler) + self.non_torch + self.cuda_graphs


def activation_bytes_per_token(shape: ModelShape, tp: int, dtype_bytes: int) -> float | None:
    """Activation bytes per token live at once in one forward pass on one GPU; None if
    the layer sizes are unknown.

    At a layer's MLP the residual and hidden states (2 × hidden), the gate and up
    projections (2 × intermediate / TP) and their product (intermediate / TP) are live
    together; the attention's q, k and v projections come first and are the peak only
    of models with a narrow MLP. See docs/capacity.md.
    """
    if shape.hidden is None or shape.intermediate is None:
        return None
    heads = shape.attention_heads or 0
    head_dim = shape.head_dim or 0
    kv_heads = shape.kv_heads or heads
    mlp = 3 * shape.intermediate / tp
    attention = (heads + 2 * kv_heads) * head_dim / tp
    return (2 * shape.hidden + max(mlp, attention)) * dtype_bytes


def reserve(shape: ModelShape, settings: EngineSettings, tp: int) -> Reserve:
    """The non-KV, non-weight memory of one GPU for these engine settings."""
    per_token = activation_bytes_per_token(shape, tp, settings.activation_bytes)
    if per_token is None:
        # Unknown layer sizes: scale a 7B-class model's 100 KiB per token with the size.
        per_token = 100 * 1024 * max(shape.params / 7e9, 0.05) ** 0.5 / tp
    activation = settings.max_num_batched_tokens * per_token * ACTIVATION_OVERHEAD
    sampler = 0.0
    if settings.profiles_sampler:
        sampler = settings.max_num_seqs * (shape.vocab or 32000) * SAMPLER_BYTES_PER_LOGIT
    non_torch = (NON_TORCH_GIB + (NCCL_GIB if tp > 1 else 0.0)) * GIB
    cuda_graphs = 0.0
    if not settings.enforce_eager and settings.count_cuda_graphs:
        capture = min(MAX_CUDA_GRAPH_CAPTURE, 2 * settings.max_num_seqs)
        cuda_graphs = CUDA_GRAPH_BASE_GIB * GIB + capture * per_token
    return Reserve(
        activation=activation, sampler=sampler, non_torch=non_torch, cuda_graphs=cuda_graphs
    )


@dataclass(frozen=True)
class _Sizes:
    """Everything per GPU that does not depend on the pool's GPU size, for one layout."""

    weights: float
    reserve: Reserve
    kv_per_token: float | None

    def kv_tokens(self, gpu_gib: float, utilization: float) -> tuple[float, int | None]:
        """KV-cache bytes per GPU and the tokens they hold (whole blocks only)."""
        free = gpu_gib * GIB * utilization - self.weights - self.reserve.total
        if self.kv_per_token is None:
            return free, None
        blocks = max(0, math.floor(free / (self.kv_per_token * KV_BLOCK_TOKENS)))
        return free, blocks * KV_BLOCK_TOKENS

    def needed(self, max_model_len: int) -> float:
        """Bytes per GPU for the weights, the reserve and one full-length sequence."""
        kv = max_model_len * self.kv_per_token if self.kv_per_token is not None else 0.0
        return self.weights + self.reserve.total + kv

    def fits(self, gpu_gib: float, utilization: float, max_model_len: int) -> bool:
        """True when the weights fit and the KV cache holds one full-length sequence."""
        free, tokens = self.kv_tokens(gpu_gib, utilization)
        return free > 0 and (tokens is None or tokens >= max_model_len)


def kv_bytes_per_token(shape: ModelShape, settings: EngineSettings, tp: int, pp: int) -> float:
    """KV-cache bytes per token on one GPU: K and V for the layers of its pipeline stage
    and the KV heads of its tensor shard (at least one: heads are replicated when TP
    exceeds them)."""
    assert shape.layers is not None and shape.kv_heads is not None and shape.head_dim is not None
    layers = math.ceil(shape.layers / pp)
    heads = max(1, shape.kv_heads // tp)
    return 2.0 * layers * heads * shape.head_dim * settings.kv_bytes


def _sizes(
    shape: ModelShape, spec: ModelDeploymentSpec, settings: EngineSettings, tp: int
) -> _Sizes:
    """Per-GPU weights, reserve and KV bytes per token with tensor-parallel size `tp`.

    Each GPU holds 1/(TP×PP) of the weights (pipeline stages split the layers; the
    embeddings and LM head sit on the first and last stage, which this spreads evenly).
    """
    pp = spec.engine.pipeline_parallel_size
    weights = weights_bytes(shape, spec.model.quantization.value, settings.activation_bytes)
    kv = kv_bytes_per_token(shape, settings, tp, pp) if shape.has_kv_shape else None
    return _Sizes(weights / (tp * pp), reserve(shape, settings, tp), kv)


@dataclass(frozen=True)
class PoolCapacity:
    """The sums for one GPU node pool; KV fields are None when the shape is unknown."""

    pool: str
    gpu_memory_gib: float
    usable_gib: float
    weights_gib_per_gpu: float
    reserve_gib_per_gpu: float
    kv_cache_gib_per_gpu: float
    kv_cache_tokens: int | None
    max_concurrent_at_max_len: int | None
    # KV-cache GiB per GPU beyond one sequence of maxModelLen; negative when short.
    headroom_gib: float
    fits: bool
    message: str
    settings: EngineSettings | None = None
    fix: str = ""

    def as_dict(self) -> dict[str, Any]:
        """The figures as `modelfleet plan --output json` prints them."""
        return {
            "pool": self.pool,
            "fits": self.fits,
            "gpu_memory_gib": self.gpu_memory_gib,
            "usable_gib": round(self.usable_gib, 2),
            "weights_gib_per_gpu": round(self.weights_gib_per_gpu, 2),
            "reserve_gib_per_gpu": round(self.reserve_gib_per_gpu, 2),
            "kv_cache_gib_per_gpu": round(self.kv_cache_gib_per_gpu, 2),
            "kv_cache_tokens": self.kv_cache_tokens,
            "max_concurrent_at_max_len": self.max_concurrent_at_max_len,
            "headroom_gib": round(self.headroom_gib, 2),
            "message": self.message,
            "fix": self.fix,
        }


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
    shape: ModelShape | None = None
    # Why the checkpoint could not be read, when the shape fell back to the name.
    note: str = ""

    @property
    def condition_status(self) -> ConditionStatus:
        """The CapacityFits condition's status: True, False or Unknown."""
        if self.fits is None:
            return "Unknown"
        return "True" if self.fits else "False"

    @property
    def estimated(self) -> bool:
        """True when the figures rest on a shape guessed from the model's name."""
        return self.shape is not None and self.shape.estimated

    def status_capacity(self) -> dict[str, Any] | None:
        """`status.capacity` (camelCase) of the most constrained pool, or None.

        The pool with the fewest KV-cache tokens is the one that limits a replica
        wherever the autoscaler puts it.
        """
        if not self.pools:
            return None
        tightest = min(self.pools, key=lambda p: (p.kv_cache_tokens or 0, p.pool))
        capacity: dict[str, Any] = {
            "pool": tightest.pool,
            "weightsGiBPerGpu": round(tightest.weights_gib_per_gpu, 2),
            "kvCacheTokens": tightest.kv_cache_tokens,
            "maxConcurrentAtMaxLen": tightest.max_concurrent_at_max_len,
        }
        if self.shape is not None:
            capacity["shapeFrom"] = self.shape.origin.value
        return capacity


def _tokens(count: int) -> str:
    """A token count as people write it: 512, 2.1k, 1.3M."""
    if count >= 1_000_000:
        return f"{count / 1_000_000:.1f}M"
    if count >= 1_000:
        return f"{count / 1_000:.1f}k"
    return str(count)


def _tp_divides(shape: ModelShape, tp: int) -> bool:
    """vLLM needs the attention heads to divide evenly over the tensor-parallel GPUs."""
    heads = shape.attention_heads
    return heads is None or heads % tp == 0


def _fix(
    shape: ModelShape, spec: ModelDeploymentSpec, pool: NodePoolSpec, settings: EngineSettings
) -> str:
    """What would make the pool fit: a larger TP, a shorter context, a bigger GPU."""
    assert pool.gpu is not None
    engine = spec.engine
    utilization = engine.gpu_memory_utilization
    fixes = []
    for tp in TP_CHOICES:
        if (
            tp > engine.tensor_parallel_size
            and _tp_divides(shape, tp)
            and _sizes(shape, spec, settings, tp).fits(
                pool.gpu.memory_gib, utilization, engine.max_model_len
            )
        ):
            fixes.append(f"raise tensorParallelSize to {tp}")
            break
    sizes = _sizes(shape, spec, settings, engine.tensor_parallel_size)
    _, tokens = sizes.kv_tokens(pool.gpu.memory_gib, utilization)
    if tokens is not None and tokens >= KV_BLOCK_TOKENS:
        fixes.append(f"lower maxModelLen to {tokens}")
    needed = sizes.needed(engine.max_model_len)
    wanted_utilization = needed / (pool.gpu.memory_gib * GIB)
    if utilization < wanted_utilization <= 0.95:
        fixes.append(f"raise gpuMemoryUtilization to {math.ceil(wanted_utilization * 100) / 100}")
    fixes.append(f"use a GPU with at least {math.ceil(needed / utilization / GIB)} GiB")
    return ", ".join(fixes[:-1]) + (" or " if len(fixes) > 1 else "") + fixes[-1]


def pool_capacity(
    shape: ModelShape,
    spec: ModelDeploymentSpec,
    pool: NodePoolSpec,
    settings: EngineSettings | None = None,
) -> PoolCapacity:
    """The sums for one GPU pool and a message with the numbers (and the fix)."""
    assert pool.gpu is not None
    engine = spec.engine
    settings = settings or engine_settings(spec, pool, shape)
    gpu = pool.gpu.memory_gib
    utilization = engine.gpu_memory_utilization
    sizes = _sizes(shape, spec, settings, engine.tensor_parallel_size)
    free, tokens = sizes.kv_tokens(gpu, utilization)
    usable = gpu * utilization
    weights_gib = sizes.weights / GIB
    reserve_gib = sizes.reserve.total / GIB
    free_gib = free / GIB
    concurrent = None if tokens is None else tokens // engine.max_model_len
    one_sequence = (sizes.kv_per_token or 0.0) * engine.max_model_len / GIB
    budget = (
        f"{shape.name} needs {weights_gib:.1f} GiB of weights per GPU; pool {pool.name} "
        f"has {gpu:g} GiB × {utilization:g} = {usable:.1f} GiB usable"
    )
    after = f"after {reserve_gib:.1f} GiB for activations, CUDA graphs and buffers"
    if free <= 0:
        fits = False
        detail = f"{budget}, which leaves nothing for the KV cache {after}"
    elif tokens is None:
        fits = True
        detail = (
            f"{budget}, leaving {free_gib:.1f} GiB for the KV cache {after} "
            f"(its size in tokens is unknown for this model)"
        )
    else:
        fits = tokens >= engine.max_model_len
        relation = ">=" if fits else "<"
        detail = (
            f"{budget}, leaving {free_gib:.1f} GiB for the KV cache {after} = "
            f"{_tokens(tokens)} tokens {relation} maxModelLen {engine.max_model_len}"
        )
        if fits:
            detail += f" ({concurrent} sequences of full length at once)"
    fix = "" if fits else _fix(shape, spec, pool, settings)
    if fix:
        detail += f"; {fix}"
    return PoolCapacity(
        pool=pool.name,
        gpu_memory_gib=gpu,
        usable_gib=usable,
        weights_gib_per_gpu=weights_gib,
        reserve_gib_per_gpu=reserve_gib,
        kv_cache_gib_per_gpu=max(0.0, free_gib),
        kv_cache_tokens=tokens,
        max_concurrent_at_max_len=concurrent,
        headroom_gib=free_gib - one_sequence,
        fits=fits,
        message=detail,
        settings=settings,
        fix=fix,
    )


def _estimated_prefix(shape: ModelShape, note: str) -> str:
    """Says, when it is so, that the figures are guessed from the model's name."""
    if shape.origin is not Origin.NAME:
        return ""
    why = f" ({note})" if note else ""
    return f"figures estimated from the model's name{why}; state spec.model.shape for exact ones: "


def capacity_fit(
    spec: ModelDeploymentSpec, shape: ModelShape | None = None, *, note: str = ""
) -> CapacityFit:
    """Decide whether the model fits every GPU pool of `spec`.

    `shape` is what `hub.resolve_shape` found (spec, checkpoint or name); without it
    the model is looked up by name only. `note` says why the checkpoint could not be
    read, for the message.
    """
    gpu_pools = [pool for pool in spec.node_pools if pool.gpu is not None]
    if not gpu_pools:
        return CapacityFit(
            None, "NotChecked", "no node pool has GPUs: GPU memory capacity is not checked"
        )
    if shape is None:
        shape = shape_from_name(spec.model)
    if shape is None:
        why = f" ({note})" if note else ""
        return CapacityFit(
            None,
            "UnknownModel",
            f"the size of model {spec.model.source} is unknown{why}, so whether it fits the "
            "GPUs is not checked; state it in spec.model.shape (parameters, or the "
            "architecture) or put its size in model.servedName (e.g. my-model-7b)",
            note=note,
        )
    pools = tuple(pool_capacity(shape, spec, pool) for pool in gpu_pools)
    prefix = _estimated_prefix(shape, note)
    failing = [p for p in pools if not p.fits]
    if failing:
        message = prefix + "; ".join(p.message for p in failing)
        return CapacityFit(False, "DoesNotFit", message, pools, shape, note)
    message = prefix + "; ".join(p.message for p in pools)
    return CapacityFit(True, "Fits", message, pools, shape, note)


@dataclass(frozen=True)
class Gate:
    """What the capacity verdict means for admission and reconcile.

    `refused` holds the problem when the spec must not be deployed; `warning` what
    to tell the user otherwise (not checked, or deployed against the estimate).
    """

    refused: str | None = None
    warning: str | None = None
    skipped: bool = False


def skip_requested(annotations: Mapping[str, Any] | None) -> bool:
    """Whether the object carries the escape-hatch annotation."""
    return str((annotations or {}).get(SKIP_CAPACITY_ANNOTATION, "")).lower() == "true"


def gate(fit: CapacityFit, annotations: Mapping[str, Any] | None) -> Gate:
    """Refuse a spec that does not fit, unless the annotation says to deploy it anyway."""
    if fit.fits is None:
        return Gate(warning=f"capacity not checked: {fit.message}")
    if fit.fits:
        return Gate()
    if skip_requested(annotations):
        return Gate(
            warning=f"capacity check skipped by {SKIP_CAPACITY_ANNOTATION}: {fit.message}",
            skipped=True,
        )
    return Gate(
        refused=(
            f"{fit.message} (if this estimate is wrong, annotate the object with "
            f'{SKIP_CAPACITY_ANNOTATION}: "true")'
        )
    )


# The KV cache of a CPU replica when engine.cpuKVCacheGiB is not set; the replica
# passes whole GiB to vLLM (VLLM_CPU_KVCACHE_SPACE), rounding up (see
# modelfleet_serving.engines.vllm_engine).
CPU_KV_CACHE_DEFAULT_GIB = 1.0


def cpu_kv_cache_gib(spec: ModelDeploymentSpec) -> int:
    """The KV-cache GiB a CPU replica's vLLM gets: cpuKVCacheGiB rounded up to whole GiB."""
    return max(1, math.ceil(spec.engine.cpu_kv_cache_gib or CPU_KV_CACHE_DEFAULT_GIB))


def cpu_pool_capacity(
    shape: ModelShape, spec: ModelDeploymentSpec, pool: NodePoolSpec
) -> PoolCapacity:
    """The KV cache of a CPU pool's replica: vLLM's CPU backend takes exactly the space it
    is given, so only the tokens per GiB are computed (the weights live in RAM)."""
    engine = spec.engine
    settings = engine_settings(spec, pool, shape)
    gib = cpu_kv_cache_gib(spec)
    weights = weights_bytes(shape, spec.model.quantization.value, settings.activation_bytes)
    tokens: int | None = None
    concurrent: int | None = None
    if shape.has_kv_shape:
        per_token = kv_bytes_per_token(shape, settings, 1, engine.pipeline_parallel_size)
        tokens = math.floor(gib * GIB / (per_token * KV_BLOCK_TOKENS)) * KV_BLOCK_TOKENS
        concurrent = tokens // engine.max_model_len
        one_sequence = per_token * engine.max_model_len / GIB
    else:
        one_sequence = 0.0
    fits = tokens is None or tokens >= engine.max_model_len
    detail = f"pool {pool.name} (CPU) gives vLLM {gib} GiB of KV cache"
    if tokens is not None:
        relation = ">=" if fits else "<"
        detail += f" = {_tokens(tokens)} tokens {relation} maxModelLen {engine.max_model_len}"
    fix = "" if fits else f"raise engine.cpuKVCacheGiB above {gib} or lower maxModelLen"
    if fix:
        detail += f"; {fix}"
    return PoolCapacity(
        pool=pool.name,
        gpu_memory_gib=0.0,
        usable_gib=float(gib),
        weights_gib_per_gpu=weights / GIB,
        reserve_gib_per_gpu=0.0,
        kv_cache_gib_per_gpu=float(gib),
        kv_cache_tokens=tokens,
        max_concurrent_at_max_len=concurrent,
        headroom_gib=gib - one_sequence,
        fits=fits,
        message=detail,
        settings=settings,
        fix=fix,
    )
