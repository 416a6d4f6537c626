"""What runs in an LLM replica: the engine, its HTTP API and its stats reporting.

One Serve deployment per node pool runs `LLMServer`. Each replica starts its engine,
then serves the OpenAI API itself (replica_http.py) on a port of its own, and tells
the stats hub where, in the reports it sends twice a second. The front door reads the
hub, picks a replica and relays bytes to it: the tokens never cross a Serve handle.
Serve still owns the replica's life: health checks (a dead engine fails them and
Serve replaces the replica) and autoscaling on the engine's waiting queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import time
from collections.abc import Iterator
from typing import Any

from ray import serve

from modelfleet_serving.autoscaling_ray import queue_depth_stats
from modelfleet_serving.config import ServingConfig
from modelfleet_serving.engines import EngineStats, create_engine
from modelfleet_serving.models import resolve_model_source
from modelfleet_serving.replica_http import ReplicaAPI
from modelfleet_serving.stats_hub import stats_hub
from modelfleet_serving.telemetry import RUNNING, STARTING, UNHEALTHY, ReplicaReport

logger = logging.getLogger("ray.serve")

REPORT_INTERVAL_S = 0.5
# How long a stopping replica lets its running streams finish; below the deployment's
# graceful_shutdown_timeout_s, after which Serve kills the actor.
DRAIN_TIMEOUT_S = 25.0
# The address the replica's HTTP API binds to. Unset: the node's IP, so a front door
# on another node can reach it; `modelfleet serve` sets 127.0.0.1.
REPLICA_HOST_ENV = "MODELFLEET_REPLICA_HOST"


def _request_models() -> dict[str, Any]:
    from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
    from vllm.entrypoints.openai.completion.protocol import CompletionRequest

    return {"chat": ChatCompletionRequest, "completion": CompletionRequest}


def _bind_host() -> str:
    host = os.environ.get(REPLICA_HOST_ENV)
    if host:
        return host
    import ray.util

    return str(ray.util.get_node_ip_address())  # type: ignore[no-untyped-call]


async def start_http(app: Any, host: str) -> tuple[Any, asyncio.Task[None], int]:
    """Serve `app` with uvicorn on `host` and a free port; return server, task, port."""
    import uvicorn

    class _Server(uvicorn.Server):
        # The actor's signals belong to Ray, not to this server.
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            yield

    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    sock.set_inheritable(True)
    config = uvicorn.Config(
        app,
        loop="none",
        http="httptools",
        lifespan="off",
        access_log=False,
        log_level="warning",
        # Long generations stream for minutes; keep-alive lets the front door reuse
        # connections between requests.
        timeout_keep_alive=75,
    )
    server = _Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        if task.done():
            task.result()
            raise RuntimeError("the replica's HTTP server stopped while starting")
        await asyncio.sleep(0.01)
    return server, task, int(sock.getsockname()[1])


class LLMServer:
    """One replica of a pool's LLM deployment: engine, HTTP API, stats reporting."""

    async def __init__(self, config: dict[str, Any], pool: str) -> None:  # type: ignore[misc]
        self._config = ServingConfig.model_validate(config)
        self._pool = pool
        self._replica = serve.get_replica_context().replica_id.unique_id
        self._hub = stats_hub(self._config.name)
        self._state = STARTING
        self._address = ""
        self._engine = create_engine(self._config)
        # Only a front door that read it from the hub can call this replica's API.
        self._token = secrets.token_urlsafe(32)
        # LoRA adapters: what is loaded (name -> source), what failed (name -> reason).
        self._adapters: dict[str, str] = {}
        self._adapter_errors: dict[str, str] = {}
        self._adapters_lock = asyncio.Lock()
        self._api = ReplicaAPI(
            self._engine,
            _request_models(),
            max_queued=self._config.max_queued_requests,
            batch=self._config.engine.max_num_seqs,
            healthy=lambda: self._state == RUNNING,
            token=self._token,
        )
        # Report from the start, so `replicas{state="starting"}` shows slow loads.
        self._reporter = asyncio.create_task(self._report_loop())
        await self._engine.start()
        host = _bind_host()
        self._server, self._server_task, port = await start_http(self._api, host)
        self._address = f"http://{f'[{host}]' if ':' in host else host}:{port}"
        self._state = RUNNING
        await self._report()

    async def _report(self) -> None:
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
                address=self._address,
                queued=self._api.waiting,
                token=self._token,
                adapters=tuple(sorted(self._adapters)),
                adapter_errors=dict(self._adapter_errors),
            )
        )

    async def _report_loop(self) -> None:
        while True:
            try:
                await self._report()
            except Exception:
                # Metrics must never take serving down; the next round retries.
                logger.warning("stats report failed", exc_info=True)
            await asyncio.sleep(REPORT_INTERVAL_S)

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Serve hands over the deployment's `user_config` (config.adapters_user_config)
        when the replica starts and whenever it changes: load the adapters that are new
        or whose source changed, unload those no longer listed. Never raises: a failed
        adapter is reported (the front door's /health, the log) and the base model and
        the other adapters keep serving; Serve would otherwise replace the replica."""
        wanted = {a["name"]: a["source"] for a in user_config.get("adapters") or []}
        async with self._adapters_lock:
            for name in [n for n in self._adapters if wanted.get(n) != self._adapters[n]]:
                try:
                    await self._engine.unload_adapter(name)
                except Exception:
                    logger.warning("unloading adapter %r failed", name, exc_info=True)
                del self._adapters[name]
            self._adapter_errors = {
                n: e for n, e in self._adapter_errors.items() if wanted.get(n) is not None
            }
            for name, source in wanted.items():
                if name in self._adapters:
                    continue
                try:
                    path = await asyncio.to_thread(resolve_model_source, source)
                    await self._engine.load_adapter(name, path)
                except Exception as e:
                    reason = str(e).strip() or type(e).__name__
                    self._adapter_errors[name] = reason
                    logger.warning("adapter %r from %s failed to load: %s", name, source, reason)
                    continue
                self._adapters[name] = source
                self._adapter_errors.pop(name, None)
                logger.info("adapter %r loaded from %s", name, source)
        # At once, so the front door routes to the new adapters within a refresh.
        with contextlib.suppress(Exception):
            await self._report()

    async def address(self) -> str:
        """Where this replica's OpenAI API listens (empty while the engine loads)."""
        return self._address

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
        if self._server_task.done():
            self._state = UNHEALTHY
            raise RuntimeError("the replica's HTTP server stopped")

    async def __del__(self) -> None:
        self._reporter.cancel()
        with contextlib.suppress(Exception):
            # Tell the hub at once, so front doors stop sending here.
            await self._hub.leave.remote(self._pool, self._replica, self._engine.telemetry)
        # Streams already running finish first (within Serve's graceful shutdown
        # timeout): Serve does not see them, as they never crossed a Serve handle.
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        while self._api.streams and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        server = getattr(self, "_server", None)
        if server is not None:
            server.should_exit = True
        await self._engine.shutdown()
