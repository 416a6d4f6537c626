"""Lint of `engine.extraArgs` against the flags the engine knows.

A misspelt flag would otherwise surface only when a GPU pod starts and vLLM's argument
parser exits, minutes later and far from the `kubectl apply` that caused it. The
webhook refuses it at once, with the closest known flag as a suggestion; flags the
spec already owns (maxModelLen, tensorParallelSize, ...) are refused with the field to
set instead, because the operator passes those itself and a second value would conflict.

vLLM's flags are read from a data file generated from vLLM's `AsyncEngineArgs` (see
tests/unit/test_engine_flags_drift.py), so the operator never imports vLLM.

Pure: no Kubernetes, Kopf or Ray imports.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from functools import cache
from importlib import resources

from modelfleet_operator.api.v1alpha1 import EngineKind, ScalarArg

VLLM_FLAGS_FILE = "vllm_flags.txt"

# vLLM flags the operator derives from the spec, and the field to set instead.
VLLM_OWNED: Mapping[str, str] = {
    "model": "model.source",
    "served-model-name": "model.servedName",
    "quantization": "model.quantization",
    "dtype": "model.dtype",
    "max-model-len": "engine.maxModelLen",
    "max-num-seqs": "engine.maxNumSeqs",
    "gpu-memory-utilization": "engine.gpuMemoryUtilization",
    "tensor-parallel-size": "engine.tensorParallelSize",
    "pipeline-parallel-size": "engine.pipelineParallelSize",
    "disable-log-stats": "nothing: modelfleet's own metrics replace vLLM's",
}

# tritonserver options a replica may take. The addresses, ports, model repository and
# metrics switches are the replica's own wiring and are listed in TRITON_OWNED.
TRITON_FLAGS = frozenset(
    {
        "backend-config",
        "buffer-manager-thread-count",
        "cache-config",
        "cuda-memory-pool-byte-size",
        "exit-on-error",
        "log-error",
        "log-info",
        "log-verbose",
        "log-warning",
        "min-supported-compute-capability",
        "model-load-thread-count",
        "pinned-memory-pool-byte-size",
        "rate-limit",
        "response-cache-byte-size",
        "strict-model-config",
        "strict-readiness",
    }
)

TRITON_OWNED: Mapping[str, str] = {
    "model-repository": "engine.triton.repository",
    "http-address": "nothing: the replica binds its own addresses",
    "http-port": "nothing: the replica picks its own ports",
    "grpc-address": "nothing: the replica binds its own addresses",
    "grpc-port": "nothing: the replica picks its own ports",
    "metrics-address": "nothing: the replica binds its own addresses",
    "metrics-port": "nothing: the replica picks its own ports",
    "allow-metrics": "nothing: modelfleet reads Triton's metrics itself",
    "allow-gpu-metrics": "nothing: modelfleet reads Triton's metrics itself",
    "exit-timeout-secs": "nothing: the replica sets its own shutdown timeout",
}


@cache
def vllm_flags() -> frozenset[str]:
    """vLLM's engine flag names (dashed, without `--`), from the committed data file."""
    text = (resources.files("modelfleet_operator") / "data" / VLLM_FLAGS_FILE).read_text()
    lines = (line.strip() for line in text.splitlines())
    return frozenset(line for line in lines if line and not line.startswith("#"))


def known_flags(kind: EngineKind) -> tuple[frozenset[str], Mapping[str, str]]:
    """The flags `kind` accepts and the ones the spec owns (flag → field to set)."""
    if kind is EngineKind.TRITON:
        return TRITON_FLAGS, TRITON_OWNED
    return vllm_flags(), VLLM_OWNED


def _check_one(
    kind: EngineKind, name: str, known: frozenset[str], owned: Mapping[str, str]
) -> str | None:
    """The problem with one extraArgs entry, or None when it is fine."""
    if name.startswith("-"):
        return f"engine.extraArgs {name!r}: write the flag without leading dashes"
    # The engine command line is built with dashes, so both spellings name one flag.
    flag = name.replace("_", "-")
    if flag in owned:
        instead = owned[flag]
        if instead.startswith("nothing"):
            return f"engine.extraArgs {name!r} is set by modelfleet; remove it ({instead})"
        return f"engine.extraArgs {name!r} is owned by the spec; set {instead} instead"
    if flag in known:
        return None
    negated = flag.removeprefix("no-")
    if negated != flag and negated in known:
        return f"engine.extraArgs {name!r}: write {negated}: false instead"
    close = difflib.get_close_matches(flag, sorted(known | set(owned)), n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"engine.extraArgs {name!r} is not a known {kind.value} flag{hint}"


def lint_extra_args(kind: EngineKind, extra_args: Mapping[str, ScalarArg]) -> list[str]:
    """One message per unusable extraArgs entry, each saying how to fix it."""
    known, owned = known_flags(kind)
    found = (_check_one(kind, name, known, owned) for name in extra_args)
    return [problem for problem in found if problem is not None]
