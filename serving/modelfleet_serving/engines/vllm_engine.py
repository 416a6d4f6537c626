"""The vLLM engine: `AsyncLLM` (continuous batching) behind vLLM's own OpenAI layer.

What we reuse from vLLM, and why: the engine arguments are parsed by vLLM's own
OpenAI-server argument parser (so `extraArgs` accept exactly the flags `vllm serve`
accepts, with vLLM's types and validation), and `init_app_state` wires the same
`OpenAIServingChat` / `OpenAIServingCompletion` objects vLLM's server uses. Chat
templates, tokenization, sampling parameters, logprobs, stop strings, `n`, usage and
the SSE chunk format are therefore vLLM's, exactly as `vllm serve` produces them —
the way Ray Serve LLM's `VLLMEngine` does it. What we add is the engine contract of
`base.py`: errors in our shape, telemetry from vLLM's stat-logger hook (the engine's
own TTFT/ITL/TPOT measurements and scheduler stats, without vLLM's Prometheus
metrics), and health.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from modelfleet_serving.config import DEFAULT_MAX_LORA_RANK, DEFAULT_MAX_LORAS, ServingConfig
from modelfleet_serving.engines.base import Engine, EngineItem, EngineStats
from modelfleet_serving.errors import ServingError, from_engine_error, internal, unavailable
from modelfleet_serving.models import resolve_model_source
from modelfleet_serving.telemetry import E2E, ITL, TPOT, TTFT

if TYPE_CHECKING:
    from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
    from vllm.entrypoints.openai.completion.protocol import CompletionRequest
    from vllm.v1.engine.async_llm import AsyncLLM
    from vllm.v1.metrics.stats import IterationStats, SchedulerStats

logger = logging.getLogger(__name__)

# vLLM's CPU backend sizes its KV cache from this variable (GiB); its default takes a
# large share of the machine, which a small box running tests cannot spare.
DEFAULT_CPU_KV_CACHE_GIB = 1.0


def engine_cli_args(config: ServingConfig, model_path: str) -> list[str]:
    """The `vllm serve` command line equivalent to `config` (without the program name)."""
    engine = config.engine
    args = [
        "--model", model_path,
        "--served-model-name", config.model.served_name,
        "--max-model-len", str(engine.max_model_len),
        "--max-num-seqs", str(engine.max_num_seqs),
        "--gpu-memory-utilization", str(engine.gpu_memory_utilization),
        "--tensor-parallel-size", str(engine.tensor_parallel_size),
        "--pipeline-parallel-size", str(engine.pipeline_parallel_size),
        "--dtype", config.model.dtype,
        # Our stat logger replaces vLLM's periodic log lines and `vllm:` metrics.
        "--disable-log-stats",
    ]  # fmt: skip
    if config.model.quantization:
        args += ["--quantization", config.model.quantization]
    if config.lora_enabled:
        # Adapters themselves are loaded at run time (load_adapter), never from here:
        # the engine starts the same whatever adapters the spec lists.
        args += [
            "--enable-lora",
            "--max-loras", str(config.engine.max_loras or DEFAULT_MAX_LORAS),
            "--max-lora-rank", str(config.engine.max_lora_rank or DEFAULT_MAX_LORA_RANK),
        ]  # fmt: skip
    for name, value in engine.extra_args.items():
        flag = "--" + name.replace("_", "-")
        if value is True:
            args.append(flag)
        elif value is False:
            args.append("--no-" + name.replace("_", "-"))
        else:
            args += [flag, str(value)]
    return args


class VLLMEngine(Engine):
    """vLLM's `AsyncLLM` with its OpenAI serving layer (see the module docstring)."""

    def __init__(self, config: ServingConfig) -> None:
        super().__init__(config)
        self._client: AsyncLLM | None = None
        self._chat: Any = None
        self._completion: Any = None
        self._models: Any = None
        self._stats = EngineStats(waiting=0, running=0, kv_cache_usage=0.0)

    async def start(self) -> None:
        """Load the model into a new `AsyncLLM` and build vLLM's OpenAI handlers."""
        from starlette.datastructures import State
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.entrypoints.launchers.api_server.app_state import init_app_state
        from vllm.entrypoints.launchers.cli_args import make_arg_parser
        from vllm.platforms import current_platform
        from vllm.usage.usage_lib import UsageContext
        from vllm.utils.argparse_utils import FlexibleArgumentParser
        from vllm.v1.engine.async_llm import AsyncLLM

        if current_platform.is_cpu():
            gib = self.config.engine.cpu_kv_cache_gib or DEFAULT_CPU_KV_CACHE_GIB
            # vLLM reads whole GiB; never round a small request down to "default".
            os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(max(1, math.ceil(gib)))

        model_path = resolve_model_source(self.config.model.source)
        parser = make_arg_parser(FlexibleArgumentParser(prog="modelfleet-engine"))  # type: ignore[no-untyped-call]
        args: argparse.Namespace = parser.parse_args(engine_cli_args(self.config, model_path))
        engine_args = AsyncEngineArgs.from_cli_args(args)
        vllm_config = engine_args.create_engine_config(UsageContext.OPENAI_API_SERVER)
        self._client = AsyncLLM.from_vllm_config(
            vllm_config,
            usage_context=UsageContext.OPENAI_API_SERVER,
            stat_loggers=[self._make_stat_logger],
            disable_log_stats=True,
        )
        supported_tasks = await self._client.get_supported_tasks()
        state = State()
        await init_app_state(self._client, state, args, supported_tasks)
        self._chat = state.openai_serving_chat
        self._completion = state.openai_serving_completion
        self._models = state.openai_serving_models
        logger.info("vLLM engine started for %s (%s)", self.config.model.served_name, model_path)

    async def check_health(self) -> None:
        """Raise when the engine core process is dead (vLLM's own check)."""
        if self._client is None:
            raise RuntimeError("engine not started")
        await self._client.check_health()

    async def stats(self) -> EngineStats:
        """The scheduler stats of the latest engine step."""
        return self._stats

    async def shutdown(self) -> None:
        """Stop the engine core process."""
        if self._client is not None:
            self._client.shutdown()
            self._client = None

    async def load_adapter(self, name: str, path: str) -> None:
        """Load a LoRA adapter through vLLM's own model registry, which also makes the
        chat and completion handlers accept `name` as the model (as vLLM's
        /v1/load_lora_adapter does)."""
        from vllm.entrypoints.serve.engine.protocol import ErrorResponse
        from vllm.entrypoints.serve.lora.protocol import LoadLoRAAdapterRequest

        if self._models is None:
            raise RuntimeError("the engine is not running")
        if not self.config.lora_enabled:
            raise ValueError(
                "the engine runs without LoRA support; list the adapter in the spec "
                "(or set engine.maxLoras) before the replicas start"
            )
        result = await self._models.load_lora_adapter(
            LoadLoRAAdapterRequest(lora_name=name, lora_path=path)
        )
        if isinstance(result, ErrorResponse):
            raise ValueError(result.error.message)

    async def unload_adapter(self, name: str) -> None:
        """Unregister the adapter and evict it from the engine."""
        from vllm.entrypoints.serve.lora.protocol import UnloadLoRAAdapterRequest

        if self._models is None or self._client is None:
            return
        lora = self._models.lora_requests.get(name)
        if lora is None:
            return
        await self._models.unload_lora_adapter(UnloadLoRAAdapterRequest(lora_name=name))
        await self._client.remove_lora(lora.lora_int_id)

    def chat(self, request: ChatCompletionRequest) -> AsyncIterator[EngineItem]:
        """Chat completion through vLLM's `OpenAIServingChat`."""
        return self._serve(self._chat.create_chat_completion, request)

    def completion(self, request: CompletionRequest) -> AsyncIterator[EngineItem]:
        """Text completion through vLLM's `OpenAIServingCompletion`."""
        return self._serve(self._completion.create_completion, request)

    async def _serve(self, handler: Any, request: Any) -> AsyncIterator[EngineItem]:
        from vllm.entrypoints.serve.engine.protocol import ErrorResponse
        from vllm.exceptions import VLLMClientError
        from vllm.v1.engine.exceptions import EngineDeadError

        if self._client is None:
            raise ServingError(unavailable("the engine is not running"))
        try:
            result = await handler(request, raw_request=None)
        except EngineDeadError as e:
            raise ServingError(unavailable(f"the engine is dead: {e}")) from e
        except (ValueError, VLLMClientError) as e:
            # vLLM raises these for requests it refuses (prompt too long, bad values).
            raise ServingError(from_engine_error(400, str(e))) from e
        if isinstance(result, ErrorResponse):
            err = result.error
            raise ServingError(from_engine_error(int(err.code), err.message, err.param))
        if not hasattr(result, "__aiter__"):
            yield result.model_dump(mode="json")
            return
        try:
            async for chunk in result:
                yield chunk
        except EngineDeadError as e:
            raise ServingError(unavailable(f"the engine died: {e}")) from e
        except Exception as e:
            # Streams report their own errors in-band; this is vLLM failing outright.
            logger.exception("vLLM stream failed")
            raise ServingError(internal(f"the engine failed: {e}")) from e

    def _make_stat_logger(self, vllm_config: Any, engine_index: int = 0) -> Any:
        """vLLM stat-logger factory: feeds our telemetry and scheduler stats."""
        from vllm.v1.metrics.loggers import StatLoggerBase

        engine = self

        class _TelemetryLogger(StatLoggerBase):
            def __init__(self, vllm_config: Any, engine_index: int = 0) -> None:
                pass

            def record(
                self,
                scheduler_stats: SchedulerStats | None,
                iteration_stats: IterationStats | None,
                mm_cache_stats: Any = None,
                engine_idx: int = 0,
            ) -> None:
                engine._record(scheduler_stats, iteration_stats)

            def log_engine_initialized(self) -> None:
                pass

        return _TelemetryLogger(vllm_config, engine_index)

    def _record(self, scheduler: SchedulerStats | None, iteration: IterationStats | None) -> None:
        telemetry = self.telemetry
        if scheduler is not None:
            self._stats = EngineStats(
                waiting=scheduler.num_waiting_reqs + scheduler.num_skipped_waiting_reqs,
                running=scheduler.num_running_reqs,
                kv_cache_usage=scheduler.kv_cache_usage,
            )
            cache = scheduler.prefix_cache_stats
            if cache is not None:
                # Counts since the last step, as vLLM's own Prometheus logger adds them.
                telemetry.prefix_cache_queries += cache.queries
                telemetry.prefix_cache_hits += cache.hits
        if iteration is None:
            return
        telemetry.prompt_tokens += iteration.num_prompt_tokens
        telemetry.generation_tokens += iteration.num_generation_tokens
        for seconds in iteration.time_to_first_tokens_iter:
            telemetry.observe(TTFT, seconds)
        for seconds in iteration.inter_token_latencies_iter:
            telemetry.observe(ITL, seconds)
        for finished in iteration.finished_requests:
            telemetry.observe(E2E, finished.e2e_latency)
            if finished.num_generation_tokens > 1:
                telemetry.observe(TPOT, finished.mean_time_per_output_token)
