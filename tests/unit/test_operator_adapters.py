"""AdaptersReady and Ready from what the front door reports: tables, then the reconcile
outcome (poll while loading, one event on a failure) against the in-memory cluster."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from modelfleet_operator.api.v1alpha1 import ModelDeployment
from modelfleet_operator.front_door import read_health
from modelfleet_operator.status import (
    FrontDoorHealth,
    Observation,
    adapter_readiness,
    decide,
)

NOW = "2026-01-01T00:00:10Z"


def replica(name: str, adapters: list[str], errors: dict[str, str] | None = None) -> dict[str, Any]:
    return {"pool": "cpu", "replica": name, "adapters": adapters, "adapterErrors": errors or {}}


MISSING = "No adapter found for /nonexistent/adapter"


@pytest.mark.parametrize(
    ("wanted", "health", "status", "reason", "says"),
    [
        (
            ["a"],
            FrontDoorHealth(error="GET http://m-openai.ns.svc:8000/health: Name not resolved"),
            "Unknown",
            "HealthUnavailable",
            "cannot read which adapters the replicas loaded: GET http://m-openai",
        ),
        (["a"], FrontDoorHealth(), "False", "AdaptersLoading", "no LLM replica reports"),
        (
            ["a", "b"],
            FrontDoorHealth(replicas=(replica("r1", ["a", "b"]), replica("r2", ["a"]))),
            "False",
            "AdaptersLoading",
            "adapters loaded so far: b on 1 of 2",
        ),
        (
            ["a"],
            FrontDoorHealth(replicas=(replica("r1", ["a"]), replica("r2", [], {"a": MISSING}))),
            "False",
            "AdapterFailed",
            f"adapter a failed to load on 1 of 2 replicas: {MISSING}. The model and the "
            "other adapters keep serving",
        ),
        # A failure wins over another adapter still loading.
        (
            ["a", "b"],
            FrontDoorHealth(replicas=(replica("r1", ["b"], {"a": "rank 64 > 8"}),)),
            "False",
            "AdapterFailed",
            "adapter a failed to load on 1 of 1 replicas: rank 64 > 8",
        ),
        # An error left over for an adapter the spec no longer lists does not count, nor
        # does an adapter still loaded that the spec removed.
        (
            ["a"],
            FrontDoorHealth(replicas=(replica("r1", ["a", "old"], {"gone": "x"}),)),
            "True",
            "AdaptersLoaded",
            "a loaded on every replica (1)",
        ),
        (
            ["a", "b"],
            FrontDoorHealth(replicas=(replica("r1", ["a", "b"]), replica("r2", ["b", "a"]))),
            "True",
            "AdaptersLoaded",
            "a, b loaded on every replica (2)",
        ),
    ],
)
def test_adapter_readiness(
    wanted: list[str], health: FrontDoorHealth, status: str, reason: str, says: str
) -> None:
    verdict = adapter_readiness(wanted, health)
    assert (verdict.status, verdict.reason) == (status, reason)
    assert says in verdict.message


def test_a_long_reason_is_cut_to_one_line() -> None:
    reason = "Traceback\n  File x\n" + "y" * 1000
    verdict = adapter_readiness(["a"], FrontDoorHealth(replicas=(replica("r", [], {"a": reason}),)))
    assert "\n" not in verdict.message
    assert "Traceback File x yyy" in verdict.message
    assert len(verdict.message) < 600


def _md(adapters: list[str]) -> ModelDeployment:
    return ModelDeployment.from_object(
        {
            "metadata": {"name": "m", "namespace": "ns"},
            "spec": {
                "model": {
                    "source": "builtin://tiny-llama",
                    "servedName": "tiny",
                    "adapters": [{"name": a, "source": f"file:///a/{a}"} for a in adapters],
                },
                "nodePools": [{"name": "cpu", "cpu": 1, "memoryGiB": 4}],
            },
        }
    )


READY_RAY_SERVICE = {
    "metadata": {"name": "m"},
    "status": {"conditions": [{"type": "Ready", "status": "True", "reason": "Ok"}]},
}


def _conditions(seen: Observation) -> dict[str, tuple[str, str, str]]:
    status = decide(seen, {}, NOW)
    return {c["type"]: (c["status"], c["reason"], c["message"]) for c in status["conditions"]}


@pytest.mark.parametrize(
    ("adapters", "ray_service", "front_door", "adapters_ready", "ready"),
    [
        # No adapters: no AdaptersReady condition, Ready from KubeRay alone.
        ([], READY_RAY_SERVICE, None, None, ("True", "Serving")),
        (["a"], None, None, ("Unknown", "NotChecked"), ("False", "RayServiceNotReady")),
        (
            ["a"],
            READY_RAY_SERVICE,
            FrontDoorHealth(replicas=(replica("r", []),)),
            ("False", "AdaptersLoading"),
            ("False", "AdaptersNotReady"),
        ),
        (
            ["a"],
            READY_RAY_SERVICE,
            FrontDoorHealth(replicas=(replica("r", [], {"a": MISSING}),)),
            ("False", "AdapterFailed"),
            ("False", "AdaptersNotReady"),
        ),
        (
            ["a"],
            READY_RAY_SERVICE,
            FrontDoorHealth(error="timed out"),
            ("Unknown", "HealthUnavailable"),
            ("False", "AdaptersNotReady"),
        ),
        (
            ["a"],
            READY_RAY_SERVICE,
            FrontDoorHealth(replicas=(replica("r", ["a"]),)),
            ("True", "AdaptersLoaded"),
            ("True", "Serving"),
        ),
    ],
)
def test_ready_waits_for_every_adapter(
    adapters: list[str],
    ray_service: dict[str, Any] | None,
    front_door: FrontDoorHealth | None,
    adapters_ready: tuple[str, str] | None,
    ready: tuple[str, str],
) -> None:
    seen = Observation(
        generation=2,
        md=_md(adapters),
        namespace="ns",
        ray_service=ray_service,
        front_door=front_door,
    )
    found = _conditions(seen)
    if adapters_ready is None:
        assert "AdaptersReady" not in found
    else:
        assert found["AdaptersReady"][:2] == adapters_ready
    assert found["Ready"][:2] == ready
    if ready[1] == "AdaptersNotReady":
        # Says what serves, and why it is not Ready.
        assert found["Ready"][2].startswith("serving tiny at http://m-openai.ns.svc:8000/v1")
        assert found["AdaptersReady"][2] in found["Ready"][2]


def test_a_change_waiting_for_gpus_does_not_check_adapters() -> None:
    seen = Observation(
        generation=4,
        md=_md(["a"]),
        namespace="ns",
        ray_service=READY_RAY_SERVICE,
        upgrade_blocked="pool cpu needs more",
        front_door=FrontDoorHealth(replicas=(replica("r", []),)),
    )
    found = _conditions(seen)
    assert found["AdaptersReady"][:2] == ("Unknown", "NotChecked")
    assert found["Ready"][:2] == ("True", "ServingPreviousSpec")


def _answer(status: int, body: str) -> Any:
    def get(url: str, timeout: float) -> httpx.Response:
        assert url == "http://m-openai.ns.svc:8000/health"
        return httpx.Response(status, text=body, request=httpx.Request("GET", url))

    return get


def _refused(url: str, timeout: float) -> httpx.Response:
    raise httpx.ConnectError("Connection refused")


@pytest.mark.parametrize(
    ("get", "replicas", "error"),
    [
        (_answer(200, '{"status": "ok", "replicas": [{"replica": "r", "adapters": ["a"]}]}'),
         ({"replica": "r", "adapters": ["a"]},), None),
        (_refused, (), "GET http://m-openai.ns.svc:8000/health: Connection refused"),
        (_answer(503, "starting"), (), "GET http://m-openai.ns.svc:8000/health: Server error"),
        (_answer(200, "<html>"), (), "not a modelfleet health answer"),
        (_answer(200, '{"status": "ok"}'), (), "not a modelfleet health answer"),
        (_answer(200, '{"replicas": 3}'), (), "'replicas' is not a list"),
    ],
)  # fmt: skip
def test_reading_the_front_door(get: Any, replicas: tuple[Any, ...], error: str | None) -> None:
    health = read_health("ns", "m", get=get, in_cluster=True)
    assert health.replicas == replicas
    if error is None:
        assert health.error is None
    else:
        assert health.error is not None and error in health.error, health.error


def test_outside_the_cluster_the_service_name_is_not_looked_up() -> None:
    def unreachable(url: str, timeout: float) -> httpx.Response:
        raise AssertionError("no request outside the cluster")

    health = read_health("ns", "m", get=unreachable, in_cluster=False)
    assert health.replicas == ()
    assert health.error is not None and "outside the cluster" in health.error
    assert "m-openai.ns.svc" in health.error
