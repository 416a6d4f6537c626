"""The shape of a model: what the capacity maths needs to know about its checkpoint.

A shape comes, in order of preference, from `spec.model.shape` (the user states it),
from the checkpoint itself (`config.json` and the weights' size: the safetensors
headers or `model.safetensors.index.json`, read by `hub.py`), and, as the last resort,
from a table of well-known models matched by name. The `origin` of a shape says which;
a shape guessed from the name makes every figure derived from it an estimate, and the
status and `modelfleet plan` say so.

Pure: parsing and arithmetic only, no I/O and no Kubernetes, Kopf or Ray imports.
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from modelfleet_serving.models import BUILTIN_TINY_LLAMA, tiny_llama

from modelfleet_operator.api.v1alpha1 import ModelShapeSpec, ModelSpec


class Origin(StrEnum):
    """Where a shape's figures come from, from the most to the least trustworthy."""

    SPEC = "spec.model.shape"
    CHECKPOINT = "the checkpoint's config.json and weights"
    CONFIG = "the checkpoint's config.json"
    BUILTIN = "the built-in model's definition"
    NAME = "the model's name"


# Bytes per element of the safetensors dtypes (F8_* are the fp8 variants, U8/I8 also
# carry packed 4-bit weights of some quantized checkpoints).
SAFETENSORS_DTYPE_BYTES: Mapping[str, float] = {
    "F64": 8,
    "I64": 8,
    "U64": 8,
    "F32": 4,
    "I32": 4,
    "U32": 4,
    "F16": 2,
    "BF16": 2,
    "I16": 2,
    "U16": 2,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
    "F8_E8M0": 1,
    "I8": 1,
    "U8": 1,
    "BOOL": 1,
    "F4": 0.5,
}

# `torch_dtype` / `dtype` values of config.json, in bytes.
CONFIG_DTYPE_BYTES: Mapping[str, int] = {
    "float32": 4,
    "float": 4,
    "float16": 2,
    "half": 2,
    "bfloat16": 2,
}

# A safetensors header longer than this is not a header (the format caps it at 100 MB).
MAX_SAFETENSORS_HEADER = 100_000_000


@dataclass(frozen=True)
class Weights:
    """The size of a checkpoint's tensors: bytes on disk and elements per dtype."""

    total_bytes: float
    # Elements per safetensors dtype ("BF16": 8.0e9); empty when only the total is known.
    elements: Mapping[str, float] = field(default_factory=dict)

    @property
    def elements_total(self) -> float:
        """Every tensor element counted once (packed 4-bit weights count as their carrier)."""
        return sum(self.elements.values())


def parse_safetensors_header(data: bytes) -> dict[str, Any]:
    """The JSON header of a safetensors file, from the file's first bytes.

    A safetensors file starts with the header's length as an 8-byte little-endian
    integer, then the header: JSON naming each tensor's dtype, shape and offsets.
    Raises ValueError when `data` is not such a start or is cut short.
    """
    if len(data) < 8:
        raise ValueError("shorter than the 8-byte header length of a safetensors file")
    (length,) = struct.unpack("<Q", data[:8])
    if length > MAX_SAFETENSORS_HEADER:
        raise ValueError(f"header length {length} is not plausible for safetensors")
    if len(data) < 8 + length:
        raise ValueError(f"header of {length} bytes is cut short at {len(data) - 8}")
    header = json.loads(data[8 : 8 + length])
    if not isinstance(header, dict):
        raise ValueError("the safetensors header is not a JSON object")
    return header


def safetensors_header_length(first8: bytes) -> int:
    """The header length a safetensors file announces in its first 8 bytes."""
    if len(first8) < 8:
        raise ValueError("shorter than the 8-byte header length of a safetensors file")
    (length,) = struct.unpack("<Q", first8[:8])
    if length > MAX_SAFETENSORS_HEADER:
        raise ValueError(f"header length {length} is not plausible for safetensors")
    return int(length)


def weights_from_headers(headers: Sequence[Mapping[str, Any]]) -> Weights:
    """Bytes and elements per dtype of the tensors the headers describe."""
    elements: dict[str, float] = {}
    total = 0.0
    for header in headers:
        for name, tensor in header.items():
            if name == "__metadata__" or not isinstance(tensor, Mapping):
                continue
            count = 1.0
            for dim in tensor.get("shape") or []:
                count *= float(dim)
            dtype = str(tensor.get("dtype", ""))
            elements[dtype] = elements.get(dtype, 0.0) + count
            offsets = tensor.get("data_offsets")
            if isinstance(offsets, list) and len(offsets) == 2:
                total += float(offsets[1]) - float(offsets[0])
            else:
                total += count * SAFETENSORS_DTYPE_BYTES.get(dtype, 2)
    return Weights(total_bytes=total, elements=elements)


def weights_from_index(index: Mapping[str, Any]) -> Weights | None:
    """The total size in `model.safetensors.index.json` (`metadata.total_size`)."""
    metadata = index.get("metadata")
    size = metadata.get("total_size") if isinstance(metadata, Mapping) else None
    if isinstance(size, int | float) and size > 0:
        return Weights(total_bytes=float(size))
    return None


def weights_from_hub_parameters(parameters: Mapping[str, Any]) -> Weights | None:
    """Weights from the hub API's `safetensors.parameters` (elements per dtype)."""
    elements = {
        str(dtype): float(count)
        for dtype, count in parameters.items()
        if isinstance(count, int | float) and count > 0
    }
    if not elements:
        return None
    total = sum(count * SAFETENSORS_DTYPE_BYTES.get(dtype, 2) for dtype, count in elements.items())
    return Weights(total_bytes=total, elements=elements)


@dataclass(frozen=True)
class ModelShape:
    """What the maths needs about a model. Unknown parts are None.

    `params` counts every weight; `weights` (when known) is the checkpoint as stored,
    which is what a quantized checkpoint puts into GPU memory.
    """

    name: str
    params: float
    origin: Origin
    layers: int | None = None
    attention_heads: int | None = None
    kv_heads: int | None = None
    head_dim: int | None = None
    hidden: int | None = None
    intermediate: int | None = None
    vocab: int | None = None
    tied_embeddings: bool = False
    # Experts of a mixture-of-experts model, and how many each token is routed to.
    experts: int | None = None
    experts_per_token: int | None = None
    # The checkpoint's own precision and quantization (from config.json).
    checkpoint_dtype: str | None = None
    checkpoint_quantization: str | None = None
    checkpoint_bits: int | None = None
    weights: Weights | None = None

    @property
    def embedding_params(self) -> float:
        """Parameters of the embedding table and LM head (kept unquantized)."""
        if self.hidden is None or self.vocab is None:
            return 0.0
        return float(self.hidden * self.vocab * (1 if self.tied_embeddings else 2))

    @property
    def has_kv_shape(self) -> bool:
        """True when the KV cache size per token can be computed."""
        return None not in (self.layers, self.kv_heads, self.head_dim)

    @property
    def estimated(self) -> bool:
        """True when the figures are guessed from the model's name."""
        return self.origin is Origin.NAME


def _int(config: Mapping[str, Any], *keys: str) -> int | None:
    """The first of `keys` that holds a positive integer."""
    for key in keys:
        value = config.get(key)
        if isinstance(value, bool):
            continue
        if isinstance(value, int | float) and value > 0:
            return int(value)
    return None


def text_config(config: Mapping[str, Any]) -> Mapping[str, Any]:
    """The language model's part of a config (multimodal configs nest it)."""
    nested = config.get("text_config") or config.get("llm_config")
    if isinstance(nested, Mapping):
        # The outer config may carry what the nested one leaves out (dtype, quantization).
        return {**config, **nested}
    return config


def _quantization(config: Mapping[str, Any]) -> tuple[str | None, int | None]:
    """The checkpoint's quantization method and bits, from `quantization_config`."""
    quant = config.get("quantization_config") or config.get("compression_config")
    if not isinstance(quant, Mapping):
        return None, None
    method = quant.get("quant_method") or quant.get("format")
    bits = _int(quant, "bits", "w_bit", "weight_bits", "num_bits")
    groups = quant.get("config_groups")
    if bits is None and isinstance(groups, Mapping):
        # compressed-tensors: {"group_0": {"weights": {"num_bits": 4, ...}}}
        for group in groups.values():
            weights = group.get("weights") if isinstance(group, Mapping) else None
            if isinstance(weights, Mapping):
                bits = _int(weights, "num_bits")
                break
    return (str(method) if method else "unknown"), bits


def shape_from_config(
    name: str, config: Mapping[str, Any], weights: Weights | None = None
) -> ModelShape | None:
    """The shape of a decoder-only transformer from its Hugging Face `config.json`.

    The parameter count is taken from the weights when their elements are known, else
    summed from the layer sizes (attention with grouped KV heads, gated MLP or
    experts, embeddings); None when a needed key is missing.
    """
    config = text_config(config)
    hidden = _int(config, "hidden_size", "n_embd", "d_model")
    layers = _int(config, "num_hidden_layers", "n_layer", "num_layers")
    heads = _int(config, "num_attention_heads", "n_head")
    vocab = _int(config, "vocab_size")
    if hidden is None or layers is None or heads is None or vocab is None:
        return None
    inter = _int(config, "intermediate_size", "ffn_dim", "n_inner") or 4 * hidden
    kv_heads = _int(config, "num_key_value_heads", "num_kv_heads", "n_head_kv") or heads
    head_dim = _int(config, "head_dim") or hidden // heads
    tied = bool(config.get("tie_word_embeddings", False))
    experts = _int(config, "num_local_experts", "num_experts", "n_routed_experts")
    per_token = _int(config, "num_experts_per_tok", "moe_topk", "top_k") if experts else None
    expert_inter = _int(config, "moe_intermediate_size") or inter
    shared_inter = _int(config, "shared_expert_intermediate_size") or 0
    attention = hidden * heads * head_dim * 2 + hidden * kv_heads * head_dim * 2
    if experts:
        mlp = 3 * hidden * (expert_inter * experts + shared_inter) + hidden * experts
        routed_inter = expert_inter * (per_token or 1) + shared_inter
    else:
        mlp = 3 * hidden * inter
        routed_inter = inter
    summed = float(layers * (attention + mlp) + hidden * vocab * (1 if tied else 2))
    method, bits = _quantization(config)
    dtype = config.get("torch_dtype") or config.get("dtype")
    params = summed
    if weights is not None and weights.elements and method is None:
        # An unquantized checkpoint: its elements are its parameters, norms and all.
        params = weights.elements_total
    return ModelShape(
        name=name,
        params=params,
        origin=Origin.CHECKPOINT if weights is not None else Origin.CONFIG,
        layers=layers,
        attention_heads=heads,
        kv_heads=kv_heads,
        head_dim=head_dim,
        hidden=hidden,
        intermediate=routed_inter,
        vocab=vocab,
        tied_embeddings=tied,
        experts=experts,
        experts_per_token=per_token,
        checkpoint_dtype=str(dtype) if isinstance(dtype, str) else None,
        checkpoint_quantization=method,
        checkpoint_bits=bits,
        weights=weights,
    )


def shape_from_spec(name: str, stated: ModelShapeSpec) -> ModelShape | None:
    """The shape the user wrote in `spec.model.shape`; None without a size.

    A size is `parameters`, `weightBytes`, or enough of the architecture to sum the
    parameters (hidden size, layers, heads, intermediate size and vocabulary).
    """
    heads = stated.attention_heads
    head_dim = stated.head_dim or (
        stated.hidden_size // heads if stated.hidden_size and heads else None
    )
    params: float | None = float(stated.parameters) if stated.parameters else None
    if params is None and None not in (
        stated.hidden_size,
        stated.layers,
        heads,
        stated.intermediate_size,
        stated.vocab_size,
    ):
        assert stated.hidden_size and stated.layers and heads and stated.vocab_size
        config = {
            "hidden_size": stated.hidden_size,
            "num_hidden_layers": stated.layers,
            "num_attention_heads": heads,
            "num_key_value_heads": stated.kv_heads or heads,
            "head_dim": head_dim,
            "intermediate_size": stated.intermediate_size,
            "vocab_size": stated.vocab_size,
        }
        summed = shape_from_config(name, config)
        params = summed.params if summed else None
    weights = Weights(total_bytes=float(stated.weight_bytes)) if stated.weight_bytes else None
    if params is None and weights is None:
        return None
    return ModelShape(
        name=name,
        params=float(params or 0.0),
        origin=Origin.SPEC,
        layers=stated.layers,
        attention_heads=heads,
        kv_heads=stated.kv_heads or heads,
        head_dim=head_dim,
        hidden=stated.hidden_size,
        intermediate=stated.intermediate_size,
        vocab=stated.vocab_size,
        weights=weights,
        # Stated weight bytes are taken as what the GPUs hold, quantized or not.
        checkpoint_quantization="stated" if weights is not None else None,
    )


def _known(
    name: str,
    params: float,
    layers: int,
    heads: int,
    kv_heads: int,
    head_dim: int,
    hidden: int,
    intermediate: int,
    vocab: int,
    *,
    tied: bool = False,
) -> ModelShape:
    return ModelShape(
        name=name,
        params=params,
        origin=Origin.NAME,
        layers=layers,
        attention_heads=heads,
        kv_heads=kv_heads,
        head_dim=head_dim,
        hidden=hidden,
        intermediate=intermediate,
        vocab=vocab,
        tied_embeddings=tied,
    )


# Known models, matched in order against the lower-cased source and served name: the
# last resort when neither the spec nor the checkpoint tells. Figures are from the
# models' config.json files.
KNOWN_MODELS: tuple[tuple[str, ModelShape], ...] = (
    (
        r"llama-?3(\.\d)?-?405b",
        _known("Llama 3 405B", 405.9e9, 126, 128, 8, 128, 16384, 53248, 128256),
    ),
    (r"llama-?3(\.\d)?-?70b", _known("Llama 3 70B", 70.6e9, 80, 64, 8, 128, 8192, 28672, 128256)),
    (r"llama-?3(\.\d)?-?8b", _known("Llama 3 8B", 8.03e9, 32, 32, 8, 128, 4096, 14336, 128256)),
    (
        r"llama-?3\.2-?3b",
        _known("Llama 3.2 3B", 3.21e9, 28, 24, 8, 128, 3072, 8192, 128256, tied=True),
    ),
    (
        r"llama-?3\.2-?1b",
        _known("Llama 3.2 1B", 1.24e9, 16, 32, 8, 64, 2048, 8192, 128256, tied=True),
    ),
    (r"llama-?2-?70b", _known("Llama 2 70B", 69.0e9, 80, 64, 8, 128, 8192, 28672, 32000)),
    (r"llama-?2-?13b", _known("Llama 2 13B", 13.0e9, 40, 40, 40, 128, 5120, 13824, 32000)),
    (r"llama-?2-?7b", _known("Llama 2 7B", 6.74e9, 32, 32, 32, 128, 4096, 11008, 32000)),
    (r"qwen2(\.5)?-?72b", _known("Qwen2 72B", 72.7e9, 80, 64, 8, 128, 8192, 29568, 152064)),
    (r"qwen2(\.5)?-?32b", _known("Qwen2.5 32B", 32.8e9, 64, 40, 8, 128, 5120, 27648, 152064)),
    (r"qwen2(\.5)?-?14b", _known("Qwen2.5 14B", 14.8e9, 48, 40, 8, 128, 5120, 13824, 152064)),
    (r"qwen2(\.5)?-?7b", _known("Qwen2 7B", 7.62e9, 28, 28, 4, 128, 3584, 18944, 152064)),
    (r"mixtral-?8x7b", _known("Mixtral 8x7B", 46.7e9, 32, 32, 8, 128, 4096, 28672, 32000)),
    (r"mistral-?7b", _known("Mistral 7B", 7.24e9, 32, 32, 8, 128, 4096, 14336, 32000)),
)

# A size in the name ("-13b-", "_0.5B") when the family is not known: enough for the
# weights, not for the KV cache.
SIZE_IN_NAME = re.compile(r"(?<![\d.])(\d+(?:\.\d+)?)b(?![a-z0-9])")


# The vocabulary the tiny model's BPE trainer is asked for (and, with its corpus, gets);
# tests/unit/test_capacity_shape.py checks this shape against a generated model.
TINY_LLAMA_VOCAB = 512


def builtin_shape(source: str) -> ModelShape | None:
    """The shape of a built-in model, from the definition it is generated from."""
    if source != BUILTIN_TINY_LLAMA:
        return None
    config = {
        "hidden_size": tiny_llama.HIDDEN,
        "num_hidden_layers": tiny_llama.LAYERS,
        "num_attention_heads": tiny_llama.HEADS,
        "intermediate_size": tiny_llama.INTERMEDIATE,
        "vocab_size": TINY_LLAMA_VOCAB,
        "torch_dtype": "float32",
    }
    shape = shape_from_config("tiny-llama", config)
    return None if shape is None else replace(shape, origin=Origin.BUILTIN)


def shape_from_name(model: ModelSpec) -> ModelShape | None:
    """The last resort: a built-in model, a well-known model or a size in the name."""
    builtin = builtin_shape(model.source)
    if builtin is not None:
        return builtin
    names = (model.source.lower(), model.served_name.lower())
    for pattern, known in KNOWN_MODELS:
        if any(re.search(pattern, name) for name in names):
            return known
    for name in names:
        size = SIZE_IN_NAME.search(name)
        if size:
            return ModelShape(f"a {size.group(1)}B model", float(size.group(1)) * 1e9, Origin.NAME)
    return None


def named(shape: ModelShape, name: str) -> ModelShape:
    """`shape` under another display name."""
    return replace(shape, name=name)


def display_name(source: str) -> str:
    """A short name for a model source: the last part of its path."""
    tail = source.rstrip("/").rsplit("/", 1)[-1]
    return tail or source
