"""Model sources: turning `ModelConfig.source` into something an engine can load."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

from modelfleet_serving.config import PVC_MOUNT_ROOT

BUILTIN_TINY_LLAMA = "builtin://tiny-llama"
# A LoRA adapter of the tiny Llama whose output differs from the base model's.
BUILTIN_TINY_LLAMA_LORA = "builtin://tiny-llama-lora"
# A Triton model repository (engine.triton.repository), not weights: see triton_standin.
BUILTIN_TRITON_STANDIN = "builtin://tiny-triton-standin"


def resolve_model_source(source: str) -> str:
    """Return the path or Hugging Face id an engine loads for `source`.

    `builtin://tiny-llama` is generated on first use, and `builtin://tiny-triton-standin`
    (a Triton model repository) copied out of the package on first use; `hf://org/name`
    becomes the hub id `org/name`; `file:///abs` the local path; `pvc://claim/path` the
    path under the volume the operator mounts; `s3://` URIs pass through for the
    engine's own loader.
    """
    if source == BUILTIN_TINY_LLAMA:
        from modelfleet_serving.models.tiny_llama import ensure_tiny_llama

        return str(ensure_tiny_llama())
    if source == BUILTIN_TINY_LLAMA_LORA:
        from modelfleet_serving.models.tiny_llama import ensure_tiny_lora

        return str(ensure_tiny_lora())
    if source == BUILTIN_TRITON_STANDIN:
        from modelfleet_serving.models.triton_standin import ensure_triton_standin

        return str(ensure_triton_standin())
    parsed = urlparse(source)
    if parsed.scheme == "hf":
        return parsed.netloc + parsed.path
    if parsed.scheme == "file":
        return parsed.path
    if parsed.scheme == "pvc":
        return str(Path(PVC_MOUNT_ROOT) / parsed.netloc / parsed.path.lstrip("/"))
    if parsed.scheme in ("s3", ""):
        return source
    raise ValueError(f"unsupported model source {source!r}")
