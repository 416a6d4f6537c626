"""The Ray Serve application: an OpenAI ingress and one LLM deployment per node pool.

    client ──HTTP──▶ OpenAIIngress ──handle (streaming)──▶ LLMServer "<pool>" × replicas
                        │  auth, validation, queue limit,          │  Engine (vLLM / Triton)
                        │  pool choice, timeout, /metrics          │  reports stats every 0.5 s
                        └──────────────── reads ◀── StatsHub ◀─────┘

The ingress parses bodies into vLLM's OpenAI protocol models (the same validation as
`vllm serve`), after our checks that need the deployment's context (served names, key,
queue limit). LLM replicas answer with the engine's SSE text or response dict, and
with `ErrorInfo` in-band for refused requests, so a bad request is an ordinary result
and never an exception that could look like a failing replica.

`app_builder` is the `import_path` target of the operator's RayService
(`modelfleet_serving.app:app_builder`, args `{"config": ServingConfig as JSON}`);
`build_app` is what `modelfleet serve` runs locally.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import ValidationError
from ray import serve
from ray.serve.handle import DeploymentHandle, DeploymentResponseGenerator
from starlette.exceptions import HTTPException as StarletteHTTPException

from modelfleet_serving.autoscaling_ray import autoscaling_config_for, queue_depth_stats
from modelfleet_serving.config import ServingConfig
from modelfleet_serving.engines import EngineItem, EngineStats, create_engine
from modelfleet_serving.errors import (
    ErrorInfo,
    ServingError,
    bad_request,
    from_validation_errors,
    internal,
    queue_full,
    timed_out,
    unauthorized,
    unavailable,
)
from modelfleet_serving.metrics import NO_POOL, IngressMetrics
from modelfleet_serving.routing import PoolChoice, PoolLoad, choose_pool
from modelfleet_serving.stats_hub import stats_hub
from modelfleet_serving.streaming import coalesce
from modelfleet_serving.telemetry import (
    RUNNING,
    STARTING,
    UNHEALTHY,
    PoolSummary,
    ReplicaReport,
    summarize,
)
from modelfleet_serving.validation import Limits, check_chat, check_completion, check_model

logger = logging.getLogger("ray.serve")

INGRESS_NAME = "OpenAIIngress"
REPORT_INTERVAL_S = 0.5
# A replica silent for this long no longer counts in the gauges (gone or hung).
STALE_AFTER_S = 10.0
# CPU reserved by the ingress: it mostly waits on I/O, and a laptop's local Ray must
# still fit the LLM replicas next to it.
INGRESS_NUM_CPUS = 0.1
# How long an LLM replica collects streamed text before sending it on (see
# streaming.py): at least this, and longer when many streams would together send more
# than STREAM_ITEMS_PER_S items a second through the Serve handles.
STREAM_BATCH_INTERVAL_S = 0.025
STREAM_ITEMS_PER_S = 400.0


class LLMServer:
    """One replica of a pool's LLM deployment: an engine plus its stats reporting."""

    async def __init__(self, config: dict[str, Any], pool: str) -> None:  # type: ignore[misc]
        self._config = ServingConfig.model_validate(config)
        self._pool = pool
        self._replica = serve.get_replica_context().replica_id.unique_id
        self._hub = stats_hub(self._config.name)
        self._state = STARTING
        self._streams = 0
        self._engine = create_engine(self._config)
        # Report from the start, so `replicas{state="starting"}` shows slow loads.
        self._reporter = asyncio.create_task(self._report_loop())
        await self._engine.start()
        self._state = RUNNING

    async def _report_loop(self) -> None:
        while True:
            try:
                stats = (
                    await self._engine.stats()
                    if self._state == RUNNING
                    else EngineStats(waiting=0, running=0, kv_cache_usage=0.0)
                )
                await self._hub.report.remote(
                    ReplicaReport(
                        pool=self._pool,
                        replica=self._replica,
                        state=self._state,
                        at=time.time(),
                        waiting=stats.waiting,
                        running=stats.running,
                        kv_cache_usage=stats.kv_cache_usage,
                        telemetry=self._engine.telemetry,
                    )
                )
            except Exception:
                # Metrics must never take serving down; the next round retries.
                logger.warning("stats report failed", exc_info=True)
            await asyncio.sleep(REPORT_INTERVAL_S)

    async def record_autoscaling_stats(self) -> dict[str, float]:
        """The queue-depth metric Serve hands to our autoscaling policy (autoscaling_ray)."""
        waiting = (await self._engine.stats()).waiting if self._state == RUNNING else 0
        return queue_depth_stats(waiting)

    async def check_health(self) -> None:
        """Serve's health probe: a dead engine fails it, and Serve replaces the replica."""
        try:
            await self._engine.check_health()
        except Exception:
            self._state = UNHEALTHY
            raise

    async def chat(self, request: Any) -> AsyncIterator[EngineItem | ErrorInfo]:
        """Stream a chat completion (engine items, or one `ErrorInfo`)."""
        async for item in self._run(self._engine.chat(request)):
            yield item

    async def completion(self, request: Any) -> AsyncIterator[EngineItem | ErrorInfo]:
        """Stream a text completion (engine items, or one `ErrorInfo`)."""
        async for item in self._run(self._engine.completion(request)):
            yield item

    async def _run(self, items: AsyncIterator[EngineItem]) -> AsyncIterator[EngineItem | ErrorInfo]:
        self._streams += 1
        try:
            async for item in coalesce(items, self._batch_interval):
                yield item
        except ServingError as e:
            yield e.info
        except Exception as e:
            logger.exception("request failed in the engine")
            yield internal(f"the engine failed: {e}")
        finally:
            self._streams -= 1

    def _batch_interval(self) -> float:
        return max(STREAM_BATCH_INTERVAL_S, self._streams / STREAM_ITEMS_PER_S)

    async def __del__(self) -> None:
        self._reporter.cancel()
        await self._engine.shutdown()


def _error_response(info: ErrorInfo) -> JSONResponse:
    return JSONResponse(info.body(), status_code=info.status)


def _sse_error(info: ErrorInfo) -> str:
    return f"data: {json.dumps(info.body())}\n\ndata: [DONE]\n\n"


def _handle_failure(exc: BaseException) -> ErrorInfo:
    """Our error for an exception raised by a Serve handle call."""
    from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError
    from ray.serve.exceptions import (
        BackPressureError,
        DeploymentUnavailableError,
        ReplicaUnavailableError,
    )

    unavailable_types = (
        ActorDiedError,
        ActorUnavailableError,
        RayActorError,
        BackPressureError,
        DeploymentUnavailableError,
        ReplicaUnavailableError,
    )
    if isinstance(exc, unavailable_types):
        return unavailable(f"no LLM replica could take the request: {type(exc).__name__}")
    return internal(f"the request failed: {type(exc).__name__}: {exc}")


api = FastAPI(title="modelfleet OpenAI-compatible API", docs_url=None, redoc_url=None)


@api.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    # Unknown paths and methods get the same error shape as everything else.
    code = "not_found" if exc.status_code == 404 else "invalid_request"
    return _error_response(ErrorInfo(exc.status_code, str(exc.detail), code))


@serve.ingress(api)
class OpenAIIngress:
    """The OpenAI-compatible HTTP front: /v1/*, /health and /metrics."""

    async def __init__(  # type: ignore[misc]
        self, config: dict[str, Any], *pool_handles: DeploymentHandle[Any]
    ) -> None:
        from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
        from vllm.entrypoints.openai.completion.protocol import CompletionRequest

        self._config = ServingConfig.model_validate(config)
        self._request_models: dict[str, Any] = {
            "chat": ChatCompletionRequest,
            "completion": CompletionRequest,
        }
        self._handles = {
            pool.name: handle.options(stream=True)
            for pool, handle in zip(self._config.pools, pool_handles, strict=True)
        }
        self._choices = [PoolChoice(p.name, p.priority) for p in self._config.pools]
        self._limits = Limits(
            served_names=[self._config.model.served_name],
            max_n=self._config.engine.max_num_seqs,
        )
        self._keys = self._load_keys()
        self._in_flight = 0
        self._summaries: dict[str, PoolSummary] = summarize(
            [], [p.name for p in self._config.pools], now=time.time(), stale_after=STALE_AFTER_S
        )
        self._metrics = IngressMetrics(
            self._config.model.served_name,
            lambda: self._summaries,
            target_queue_depth=self._config.autoscaling.target_queue_depth,
        )
        self._hub = stats_hub(self._config.name)
        self._refresher = asyncio.create_task(self._refresh_loop())

    def _load_keys(self) -> list[bytes] | None:
        env = self._config.api_keys_env
        if env is None:
            return None
        keys = [k.strip().encode() for k in os.environ.get(env, "").split(",") if k.strip()]
        if not keys:
            # Fail closed: a deployment that asked for keys must not run open.
            logger.error("API keys are required but %s is empty: every request gets 401", env)
        return keys

    async def _refresh_loop(self) -> None:
        pools = [p.name for p in self._config.pools]
        while True:
            try:
                reports = await self._hub.reports.remote()
                self._summaries = summarize(
                    reports, pools, now=time.time(), stale_after=STALE_AFTER_S
                )
            except Exception:
                logger.warning("reading the stats hub failed", exc_info=True)
            await asyncio.sleep(REPORT_INTERVAL_S)

    def _authorize(self, request: Request) -> None:
        if self._keys is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise ServingError(unauthorized("Missing API key: send 'Authorization: Bearer KEY'."))
        given = token.strip().encode()
        # Compare against every key without stopping early: no timing hint on a near miss.
        matches = [hmac.compare_digest(given, key) for key in self._keys]
        if not any(matches):
            raise ServingError(unauthorized("Invalid API key."))

    def _choose_pool(self) -> str:
        loads = {
            name: PoolLoad(queued=s.waiting, replicas=s.replicas.get(RUNNING, 0))
            for name, s in self._summaries.items()
        }
        return choose_pool(self._choices, loads, self._config.autoscaling.target_queue_depth)

    @api.get("/health")
    async def health(self) -> dict[str, Any]:
        """Liveness of the ingress, with the LLM replicas each pool has up."""
        return {
            "status": "ok",
            "pools": {n: s.replicas.get(RUNNING, 0) for n, s in self._summaries.items()},
        }

    @api.get("/metrics")
    async def metrics(self) -> Response:
        """Prometheus exposition of every `modelfleet_*` metric."""
        from prometheus_client import CONTENT_TYPE_LATEST

        return Response(self._metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @api.get("/v1/models")
    async def models(self, request: Request) -> Response:
        """The one served model, in OpenAI's list format."""
        try:
            self._authorize(request)
        except ServingError as e:
            self._metrics.count(NO_POOL, e.info.status)
            return _error_response(e.info)
        self._metrics.count(NO_POOL, 200)
        return JSONResponse(
            {
                "object": "list",
                "data": [
                    {
                        "id": self._config.model.served_name,
                        "object": "model",
                        "created": 0,
                        "owned_by": "modelfleet",
                        "root": self._config.model.source,
                        "max_model_len": self._config.engine.max_model_len,
                    }
                ],
            }
        )

    @api.post("/v1/chat/completions")
    async def chat_completions(self, request: Request) -> Response:
        """OpenAI chat completions, streaming or not."""
        return await self._generate(request, "chat")

    @api.post("/v1/completions")
    async def completions(self, request: Request) -> Response:
        """OpenAI text completions, streaming or not."""
        return await self._generate(request, "completion")

    async def _parse(self, request: Request, kind: str) -> Any:
        raw = await request.body()
        try:
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ServingError(bad_request(f"Malformed JSON body: {e}", code="invalid_json")) from e
        if not isinstance(body, dict):
            raise ServingError(bad_request("The body must be a JSON object.", code="invalid_json"))
        check_model(body, self._limits)
        (check_chat if kind == "chat" else check_completion)(body, self._limits)
        try:
            return self._request_models[kind].model_validate(body)
        except ValidationError as e:
            raise ServingError(from_validation_errors(e.errors())) from e

    async def _generate(self, request: Request, kind: str) -> Response:
        deadline = time.monotonic() + self._config.request_timeout_s
        try:
            self._authorize(request)
            parsed = await self._parse(request, kind)
            if self._in_flight >= self._config.max_queued_requests:
                raise ServingError(queue_full(self._config.max_queued_requests))
        except ServingError as e:
            self._metrics.count(NO_POOL, e.info.status)
            return _error_response(e.info)

        pool = self._choose_pool()
        self._in_flight += 1
        stream: DeploymentResponseGenerator[Any] | None = None
        streaming = False
        try:
            handle = self._handles[pool]
            stream = getattr(handle, kind).remote(parsed)
            try:
                first = await self._next(stream, deadline)
            except StopAsyncIteration:
                raise ServingError(internal("the engine returned no response")) from None
            if isinstance(first, ErrorInfo):
                self._metrics.count(pool, first.status)
                return _error_response(first)
            if not parsed.stream:
                self._metrics.count(pool, 200)
                return JSONResponse(first)
            streaming = True
            return StreamingResponse(
                self._relay(first, stream, deadline, pool),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        except ServingError as e:
            self._metrics.count(pool, e.info.status)
            return _error_response(e.info)
        finally:
            # A streaming response releases its slot when the stream ends.
            if not streaming:
                self._in_flight -= 1
                if stream is not None:
                    stream.cancel()  # type: ignore[no-untyped-call]

    async def _next(self, stream: DeploymentResponseGenerator[Any], deadline: float) -> Any:
        """The stream's next item, or `ServingError` on timeout or a failed replica."""
        try:
            async with asyncio.timeout(max(deadline - time.monotonic(), 0)):
                return await stream.__anext__()
        except StopAsyncIteration:
            raise
        except TimeoutError as e:
            raise ServingError(timed_out(self._config.request_timeout_s)) from e
        except Exception as e:
            logger.warning("LLM call failed", exc_info=True)
            raise ServingError(_handle_failure(e)) from e

    async def _relay(
        self,
        first: str,
        stream: DeploymentResponseGenerator[Any],
        deadline: float,
        pool: str,
    ) -> AsyncIterator[str]:
        status = 200
        try:
            yield first
            while True:
                try:
                    item = await self._next(stream, deadline)
                except StopAsyncIteration:
                    break
                except ServingError as e:
                    # Headers are sent already: report in-band, as vLLM does.
                    status = e.info.status
                    yield _sse_error(e.info)
                    break
                if isinstance(item, ErrorInfo):
                    status = item.status
                    yield _sse_error(item)
                    break
                yield item
        finally:
            self._in_flight -= 1
            stream.cancel()  # type: ignore[no-untyped-call]
            self._metrics.count(pool, status)


def build_app(config: ServingConfig) -> serve.Application:
    """The Serve application for `config`: the ingress bound to one LLM deployment per pool."""
    data = config.model_dump(mode="json")
    # A replica is on target when its batch is full and the target queue waits behind it.
    target_ongoing = config.engine.max_num_seqs + config.autoscaling.target_queue_depth
    pools = []
    for pool in config.pools:
        actor_options: dict[str, Any] = {"num_cpus": pool.num_cpus, "num_gpus": pool.num_gpus}
        if pool.resources:
            actor_options["resources"] = dict(pool.resources)
        pools.append(
            serve.deployment(
                name=pool.name,
                ray_actor_options=actor_options,
                # Let the engine, not Serve, hold the queue: its waiting count is what
                # the metrics and the pool choice read, and it batches continuously.
                max_ongoing_requests=max(int(target_ongoing * 2), config.max_queued_requests),
                # Scaled on the engine's waiting queue by our policy, not on Serve's
                # count of ongoing requests.
                autoscaling_config=autoscaling_config_for(pool, config),
                health_check_period_s=10,
                # A busy engine on a loaded CPU can be slow to answer its probe.
                health_check_timeout_s=30,
                graceful_shutdown_timeout_s=30,
                # The ingress logs each request once; the internal hop would log it again.
                logging_config={"enable_access_log": False},
            )(LLMServer).bind(data, pool.name)
        )
    ingress = serve.deployment(
        name=INGRESS_NAME,
        ray_actor_options={"num_cpus": INGRESS_NUM_CPUS},
        max_ongoing_requests=config.max_queued_requests * 2,
    )(OpenAIIngress)
    app: serve.Application = ingress.bind(data, *pools)
    return app


def app_builder(args: dict[str, Any]) -> serve.Application:
    """Serve application builder for a RayService's `import_path`: `args["config"]` is
    a `ServingConfig` as JSON."""
    return build_app(ServingConfig.model_validate(args["config"]))
