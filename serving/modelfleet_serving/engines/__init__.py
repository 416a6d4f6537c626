"""Inference engines behind the LLM deployments, and the factory that picks one."""

from __future__ import annotations

from modelfleet_serving.config import EngineKind, ServingConfig
from modelfleet_serving.engines.base import Engine, EngineItem, EngineStats

__all__ = ["Engine", "EngineItem", "EngineStats", "create_engine"]


def create_engine(config: ServingConfig) -> Engine:
    """The engine `config.engine.kind` asks for (not started yet).

    Each implementation is imported only here, so a replica loads vLLM or the Triton
    client, never both, and neither is needed to import this package.
    """
    if config.engine.kind == EngineKind.TRITON:
        from modelfleet_serving.engines.triton import TritonEngine

        return TritonEngine(config)
    from modelfleet_serving.engines.vllm_engine import VLLMEngine

    return VLLMEngine(config)
