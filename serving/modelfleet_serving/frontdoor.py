"""What runs in the front door: the OpenAI HTTP endpoint users call.

    client ─HTTP─▶ OpenAIIngress ─HTTP (bytes relayed)─▶ LLM replica's own API ─▶ engine
                     │ key, model name, pool and replica choice,     │ protocol models,
                     │ deadline, /metrics, TTFB and duration         │ queue limit
                     └──── reads ◀── StatsHub ◀── reports (with addresses) every 0.5 s

The front door checks what needs the deployment's context (the key, the served
name, the cheap field checks), picks a pool in preference order with spill-over
(routing.py), then a replica of that pool by the deployment's routing policy (by
default the one whose prefix cache likely holds the prompt's beginning, within a
bound on its load), and relays the replica's
response bytes as they arrive: one read and one write per chunk, no parsing. A
replica that cannot be reached is skipped for a while and the next one is tried;
with none left the answer is 503.

It measures what the user sees: the time from the request's arrival here to the
first byte and to the last byte sent back (`modelfleet_request_*`), beside the
engines' own TTFT and latency.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import random
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.exceptions import HTTPException as StarletteHTTPException

from modelfleet_serving.api_keys import KeySource
from modelfleet_serving.config import ServingConfig
from modelfleet_serving.errors import (
    ErrorInfo,
    ServingError,
    bad_request,
    timed_out,
    unauthorized,
    unavailable,
)
from modelfleet_serving.metrics import NO_POOL, IngressMetrics
from modelfleet_serving.openapi import openapi_document
from modelfleet_serving.replica_http import TOKEN_HEADER, sse_error
from modelfleet_serving.routing import (
    PoolChoice,
    PoolLoad,
    choose_pool,
    order_replicas,
    prompt_prefix,
)
from modelfleet_serving.stats_hub import stats_hub
from modelfleet_serving.telemetry import RUNNING, PoolSummary, ReplicaReport, summarize
from modelfleet_serving.validation import (
    Limits,
    check_chat,
    check_completion,
    check_model,
    parse_body,
)

logger = logging.getLogger("ray.serve")

INGRESS_NAME = "OpenAIIngress"
REFRESH_INTERVAL_S = 0.5
# A replica silent for this long no longer counts in the gauges (gone or hung).
STALE_AFTER_S = 10.0
# A replica that refused a connection is not tried again for this long.
SKIP_AFTER_FAILURE_S = 5.0
# Replicas tried for one request before answering 503.
MAX_ATTEMPTS = 3
# How much of the relayed stream one read may take.
READ_SIZE = 64 * 1024


def _error_response(info: ErrorInfo) -> JSONResponse:
    return JSONResponse(info.body(), status_code=info.status)


# The OpenAPI document is served by a route of its own (openapi.py): FastAPI's would
# not know the request bodies, which are relayed without being parsed here.
api = FastAPI(
    title="modelfleet OpenAI-compatible API", docs_url=None, redoc_url=None, openapi_url=None
)


@api.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    # Unknown paths and methods get the same error shape as everything else.
    code = "not_found" if exc.status_code == 404 else "invalid_request"
    return _error_response(ErrorInfo(exc.status_code, str(exc.detail), code))


@api.exception_handler(Exception)
async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    # A bug here must still answer in the one error shape (and not as Starlette's
    # plain-text page); the traceback goes to the log.
    logger.error("unexpected error answering %s", request.url.path, exc_info=exc)
    info = ErrorInfo(500, f"internal error in the front door: {type(exc).__name__}", "internal")
    return _error_response(info)


@serve.ingress(api)
class OpenAIIngress:
    """The OpenAI-compatible HTTP front: /v1/*, /health and /metrics."""

    async def __init__(  # type: ignore[misc]
        self, config: dict[str, Any], *pool_handles: DeploymentHandle[Any]
    ) -> None:
        """`pool_handles` are bound only so that Serve deploys the pools with this
        application: requests reach the replicas over HTTP, found through the hub."""
        import aiohttp

        self._config = ServingConfig.model_validate(config)
        self._choices = [PoolChoice(p.name, p.priority) for p in self._config.pools]
        self._limits = Limits(
            served_names=[self._config.model.served_name],
            max_n=self._config.engine.max_num_seqs,
        )
        # LoRA adapters some running replica serves, with the addresses serving each.
        self._adapters: dict[str, set[str]] = {}
        self._key_source = KeySource(env=self._config.api_keys_env, file=self._config.api_keys_file)
        self._pools = [p.name for p in self._config.pools]
        self._summaries: dict[str, PoolSummary] = summarize(
            [], self._pools, now=time.time(), stale_after=STALE_AFTER_S
        )
        self._replicas: dict[str, list[ReplicaReport]] = {p: [] for p in self._pools}
        # Requests this front door has sent to each replica and not finished.
        self._busy: dict[str, int] = {}
        self._skip_until: dict[str, float] = {}
        self._rng = random.Random()
        self._metrics = IngressMetrics(
            self._config.model.served_name,
            lambda: self._summaries,
            target_queue_depth=self._config.autoscaling.target_queue_depth,
        )
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=60),
            timeout=aiohttp.ClientTimeout(total=None),
            auto_decompress=False,
            skip_auto_headers=("User-Agent", "Accept-Encoding"),
        )
        self._hub = stats_hub(self._config.name)
        self._refresher = asyncio.create_task(self._refresh_loop())

    async def _refresh(self) -> None:
        reports = await self._hub.reports.remote()
        now = time.time()
        self._summaries = summarize(reports, self._pools, now=now, stale_after=STALE_AFTER_S)
        replicas: dict[str, list[ReplicaReport]] = {p: [] for p in self._pools}
        for report in reports:
            if report.state == RUNNING and report.address and now - report.at <= STALE_AFTER_S:
                replicas.setdefault(report.pool, []).append(report)
        self._replicas = replicas
        adapters: dict[str, set[str]] = {}
        for rs in replicas.values():
            for r in rs:
                for name in r.adapters:
                    adapters.setdefault(name, set()).add(r.address)
        self._adapters = adapters
        self._limits = Limits(
            served_names=[self._config.model.served_name, *sorted(adapters)],
            max_n=self._config.engine.max_num_seqs,
        )

    async def _refresh_loop(self) -> None:
        while True:
            try:
                # A rotated Secret reaches the mounted file within the kubelet's sync.
                self._key_source.refresh()
                await self._refresh()
            except Exception:
                logger.warning("reading the stats hub failed", exc_info=True)
            await asyncio.sleep(REFRESH_INTERVAL_S)

    def _authorize(self, request: Request) -> None:
        keys = self._key_source.keys
        if keys is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise ServingError(unauthorized("Missing API key: send 'Authorization: Bearer KEY'."))
        given = token.strip().encode()
        # Compare against every key without stopping early: no timing hint on a near miss.
        matches = [hmac.compare_digest(given, key) for key in keys]
        if not any(matches):
            raise ServingError(unauthorized("Invalid API key."))

    def _candidates(self, prefix: str, model: str) -> tuple[str, list[ReplicaReport]]:
        """The pool to use and its replicas in the order to try them (routing.py).

        A request for a LoRA adapter goes only to replicas that have it loaded: one
        still loading it (or that failed to) would answer 404.
        """
        serving = self._adapters.get(model)
        loads = {
            name: PoolLoad(queued=s.waiting, replicas=s.replicas.get(RUNNING, 0))
            for name, s in self._summaries.items()
        }
        pool = choose_pool(self._choices, loads, self._config.autoscaling.target_queue_depth)
        now = time.monotonic()
        ordered = [pool] + [c.name for c in sorted(self._choices, key=lambda c: c.priority)]
        for name in dict.fromkeys(ordered):
            usable = {
                r.address: r
                for r in self._replicas.get(name, ())
                if self._skip_until.get(r.address, 0) <= now
                and (serving is None or r.address in serving)
            }
            if usable:
                order = order_replicas(
                    list(usable),
                    self._busy,
                    policy=self._config.routing,
                    prefix=prefix,
                    rng=self._rng,
                )
                return name, [usable[a] for a in order]
        return pool, []

    @api.get("/health")
    async def health(self) -> dict[str, Any]:
        """Liveness of the front door, with the LLM replicas each pool has up and what
        each of them reports (no addresses or tokens)."""
        return {
            "status": "ok",
            "pools": {n: s.replicas.get(RUNNING, 0) for n, s in self._summaries.items()},
            "replicas": [
                {
                    "pool": r.pool,
                    "replica": r.replica,
                    "inFlight": self._busy.get(r.address, 0),
                    "queued": r.queued,
                    "waiting": r.waiting,
                    "running": r.running,
                    "prefixCacheQueries": r.telemetry.prefix_cache_queries,
                    "prefixCacheHits": r.telemetry.prefix_cache_hits,
                    "adapters": list(r.adapters),
                    "adapterErrors": r.adapter_errors,
                }
                for pool in self._pools
                for r in self._replicas.get(pool, ())
            ],
        }

    @api.get("/metrics")
    async def metrics(self) -> Response:
        """Prometheus exposition of every `modelfleet_*` metric."""
        from prometheus_client import CONTENT_TYPE_LATEST

        return Response(self._metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @api.get("/openapi.json", include_in_schema=False)
    async def openapi(self) -> JSONResponse:
        """The OpenAPI 3.1 document of this API, request bodies included."""
        return JSONResponse(openapi_document())

    @api.get("/v1/models")
    async def models(self, request: Request) -> Response:
        """The served model and the LoRA adapters running replicas serve, in OpenAI's
        list format (an adapter's `parent` is the model)."""
        try:
            self._authorize(request)
        except ServingError as e:
            self._metrics.count(NO_POOL, e.info.status)
            return _error_response(e.info)
        self._metrics.count(NO_POOL, 200)
        base = self._config.model.served_name
        card = {"object": "model", "created": 0, "owned_by": "modelfleet"}
        max_len = self._config.engine.max_model_len
        models = [card | {"id": base, "root": self._config.model.source, "max_model_len": max_len}]
        models += [
            card | {"id": name, "root": name, "parent": base, "max_model_len": max_len}
            for name in sorted(self._adapters)
        ]
        return JSONResponse({"object": "list", "data": models})

    @api.post("/v1/chat/completions")
    async def chat_completions(self, request: Request) -> Response:
        """OpenAI chat completions, streaming or not."""
        return await self._generate(request, "chat", "/v1/chat/completions")

    @api.post("/v1/completions")
    async def completions(self, request: Request) -> Response:
        """OpenAI text completions, streaming or not."""
        return await self._generate(request, "completion", "/v1/completions")

    async def _check(self, request: Request, kind: str) -> tuple[bytes, str, str]:
        """The raw body, the model asked for and the prompt's prefix, once the request
        passed the checks."""
        self._authorize(request)
        raw = await request.body()
        body = parse_body(raw)
        if not isinstance(body, dict):
            raise ServingError(bad_request("The body must be a JSON object.", code="invalid_json"))
        model = check_model(body, self._limits)
        (check_chat if kind == "chat" else check_completion)(body, self._limits)
        return raw, model, prompt_prefix(kind, body)

    async def _connect(
        self, path: str, raw: bytes, model: str, prefix: str
    ) -> tuple[str, str, Any]:
        """Send the request to a replica; return the pool, the replica and its response."""
        import aiohttp

        pool, replicas = self._candidates(prefix, model)
        if not replicas:
            # Right after start the hub may not have answered yet.
            await self._refresh()
            pool, replicas = self._candidates(prefix, model)
        for replica in replicas[:MAX_ATTEMPTS]:
            address = replica.address
            # Counted from now, not from the answer's headers: a request waiting for
            # the engine is load on that replica too (the routing policies read it).
            self._busy[address] = self._busy.get(address, 0) + 1
            try:
                headers = {"Content-Type": "application/json", TOKEN_HEADER: replica.token}
                response = await self._session.post(address + path, data=raw, headers=headers)
                return pool, address, response
            except aiohttp.ClientConnectionError:
                self._release(address)
                logger.warning("LLM replica %s cannot be reached; trying another", address)
                self._skip_until[address] = time.monotonic() + SKIP_AFTER_FAILURE_S
            except BaseException:
                self._release(address)
                raise
        raise ServingError(unavailable("no LLM replica could take the request"))

    async def _generate(self, request: Request, kind: str, path: str) -> Response:
        arrived = time.monotonic()
        deadline = arrived + self._config.request_timeout_s
        try:
            raw, model, prefix = await self._check(request, kind)
        except ServingError as e:
            self._metrics.count(NO_POOL, e.info.status)
            return _error_response(e.info)
        pool = NO_POOL
        address = ""
        response: Any = None
        try:
            async with asyncio.timeout_at(self._loop_time(deadline)):
                pool, address, response = await self._connect(path, raw, model, prefix)
                if response.content_type != "text/event-stream":
                    body = await response.read()
                    self._finish(pool, address, response.status, arrived, arrived, model)
                    response.release()
                    return Response(
                        body, status_code=response.status, media_type="application/json"
                    )
        except TimeoutError:
            info = timed_out(self._config.request_timeout_s)
        except ServingError as e:
            info = e.info
        except Exception as e:
            logger.warning("relaying to the LLM replica failed", exc_info=True)
            info = unavailable(f"the LLM replica failed: {type(e).__name__}")
        else:
            return StreamingResponse(
                self._relay(response, pool, address, arrived, deadline, model),
                status_code=response.status,
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        if response is not None:
            response.close()
        if address:
            self._finish(pool, address, info.status, arrived, None, model)
        else:
            self._metrics.count(pool, info.status, model)
        return _error_response(info)

    async def _relay(
        self,
        response: Any,
        pool: str,
        address: str,
        arrived: float,
        deadline: float,
        model: str,
    ) -> AsyncIterator[bytes]:
        first: float | None = None
        status = response.status
        try:
            async with asyncio.timeout_at(self._loop_time(deadline)):
                content = response.content
                while True:
                    chunk = await content.readany()
                    if not chunk:
                        break
                    if first is None:
                        first = time.monotonic()
                    yield chunk
                    # When the replica is ahead, reads and writes complete without
                    # waiting, and one stream would hold the event loop until it ends:
                    # every other request (new ones, /health) waited for it. Yield.
                    await asyncio.sleep(0)
        except TimeoutError:
            # Headers are sent already: report in-band, as vLLM does.
            info = timed_out(self._config.request_timeout_s)
            status = info.status
            yield sse_error(info)
        except Exception as e:
            if isinstance(e, asyncio.CancelledError):
                raise
            info = unavailable(f"the LLM replica failed mid-stream: {type(e).__name__}")
            status = info.status
            yield sse_error(info)
        finally:
            # Closing, not releasing: a stream cut short must end the replica's request.
            response.close()
            self._finish(pool, address, status, arrived, first, model)

    @staticmethod
    def _loop_time(monotonic_deadline: float) -> float:
        """A `time.monotonic()` deadline on the running loop's clock."""
        return asyncio.get_running_loop().time() + (monotonic_deadline - time.monotonic())

    def _release(self, address: str) -> None:
        """One request fewer in flight at `address`."""
        left = self._busy.get(address, 1) - 1
        if left > 0:
            self._busy[address] = left
        else:
            self._busy.pop(address, None)

    def _finish(
        self,
        pool: str,
        address: str,
        status: int,
        arrived: float,
        first: float | None,
        model: str,
    ) -> None:
        self._release(address)
        self._metrics.count(pool, status, model)
        self._metrics.observe_request(pool, arrived, first, time.monotonic(), model)
