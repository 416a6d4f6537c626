"""Status decisions: tables from observations to conditions, and when to write."""

from __future__ import annotations

from typing import Any

import pytest
from modelfleet_operator.api.v1alpha1 import ModelDeployment
from modelfleet_operator.status import Observation, decide, status_patch, unschedulable_pools

NOW = "2026-01-01T00:00:10Z"
BEFORE = "2026-01-01T00:00:00Z"

MD = ModelDeployment.from_object(
    {
        "metadata": {"name": "m", "namespace": "ns"},
        "spec": {
            "model": {"source": "hf://o/m", "servedName": "served"},
            "nodePools": [
                {"name": "a", "gpu": {"type": "L4", "memoryGiB": 24}, "maxReplicas": 3},
                {"name": "b", "gpu": {"type": "L4", "memoryGiB": 24}, "minReplicas": 0},
            ],
        },
    }
)


def ray_service(ready: bool | None, deployments: dict[str, Any] | None = None) -> dict[str, Any]:
    status: dict[str, Any] = {}
    if ready is not None:
        status["conditions"] = [
            {
                "type": "Ready",
                "status": "True" if ready else "False",
                "reason": "NonZeroServeEndpoints" if ready else "ZeroServeEndpoints",
                "message": "endpoints" if ready else "no endpoints",
            }
        ]
        status["activeServiceStatus"] = {
            "applicationStatuses": {
                "modelfleet": {"serveDeploymentStatuses": deployments or {}},
            },
            "rayClusterStatus": {"readyWorkerReplicas": 2, "desiredWorkerReplicas": 3},
        }
    return {"metadata": {"name": "m"}, "status": status}


def conditions(status: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}


@pytest.mark.parametrize(
    ("seen", "expected"),
    [
        (
            Observation(generation=3, md=MD, namespace="ns", problems=["pool 'a' is wrong"]),
            {
                "Validated": ("False", "InvalidSpec"),
                "CapacityFits": ("Unknown", "InvalidSpec"),
                "RayServiceReady": ("False", "InvalidSpec"),
                "Ready": ("False", "InvalidSpec"),
            },
        ),
        (
            Observation(generation=3, md=None, namespace="ns", problems=["spec.x: bad"]),
            {
                "Validated": ("False", "InvalidSpec"),
                "CapacityFits": ("Unknown", "InvalidSpec"),
                "RayServiceReady": ("False", "InvalidSpec"),
                "Ready": ("False", "InvalidSpec"),
            },
        ),
        (
            Observation(generation=3, md=MD, namespace="ns", dependency_missing="no KubeRay"),
            {
                "Validated": ("True", "Valid"),
                "CapacityFits": ("Unknown", "UnknownModel"),
                "RayServiceReady": ("False", "DependencyMissing"),
                "Ready": ("False", "DependencyMissing"),
            },
        ),
        (
            Observation(generation=3, md=MD, namespace="ns", conflict="Service taken"),
            {
                "Validated": ("True", "Valid"),
                "CapacityFits": ("Unknown", "UnknownModel"),
                "RayServiceReady": ("False", "OwnershipConflict"),
                "Ready": ("False", "OwnershipConflict"),
            },
        ),
        (
            Observation(generation=3, md=MD, namespace="ns", ray_service=ray_service(None)),
            {
                "Validated": ("True", "Valid"),
                "CapacityFits": ("Unknown", "UnknownModel"),
                "RayServiceReady": ("False", "WaitingForKubeRay"),
                "PoolsSchedulable": ("True", "Scheduled"),
                "UpgradeBlocked": ("False", "NotBlocked"),
                "Ready": ("False", "RayServiceNotReady"),
            },
        ),
        (
            Observation(generation=3, md=MD, namespace="ns", ray_service=ray_service(False)),
            {
                "Validated": ("True", "Valid"),
                "CapacityFits": ("Unknown", "UnknownModel"),
                "RayServiceReady": ("False", "ZeroServeEndpoints"),
                "PoolsSchedulable": ("True", "Scheduled"),
                "UpgradeBlocked": ("False", "NotBlocked"),
                "Ready": ("False", "RayServiceNotReady"),
            },
        ),
        (
            Observation(generation=3, md=MD, namespace="ns", ray_service=ray_service(True)),
            {
                "Validated": ("True", "Valid"),
                "CapacityFits": ("Unknown", "UnknownModel"),
                "RayServiceReady": ("True", "NonZeroServeEndpoints"),
                "PoolsSchedulable": ("True", "Scheduled"),
                "UpgradeBlocked": ("False", "NotBlocked"),
                "Ready": ("True", "Serving"),
            },
        ),
        (
            Observation(
                generation=3,
                md=MD,
                namespace="ns",
                ray_service=ray_service(False),
                unschedulable={"b": "0/1 nodes are available: 1 Insufficient nvidia.com/gpu."},
            ),
            {
                "Validated": ("True", "Valid"),
                "CapacityFits": ("Unknown", "UnknownModel"),
                "RayServiceReady": ("False", "ZeroServeEndpoints"),
                "PoolsSchedulable": ("False", "Unschedulable"),
                "UpgradeBlocked": ("False", "NotBlocked"),
                "Ready": ("False", "RayServiceNotReady"),
            },
        ),
        (
            Observation(
                generation=3,
                md=MD,
                namespace="ns",
                ray_service=ray_service(True),
                upgrade_blocked="pool a needs 2 free GPUs",
            ),
            {
                "Validated": ("True", "Valid"),
                "CapacityFits": ("Unknown", "UnknownModel"),
                "RayServiceReady": ("True", "NonZeroServeEndpoints"),
                "PoolsSchedulable": ("True", "Scheduled"),
                "UpgradeBlocked": ("True", "InsufficientGPUs"),
                "Ready": ("True", "ServingPreviousSpec"),
            },
        ),
        (
            Observation(
                generation=3,
                md=MD,
                namespace="ns",
                ray_service=ray_service(False),
                upgrade_blocked="pool a needs 2 free GPUs",
            ),
            {
                "Validated": ("True", "Valid"),
                "CapacityFits": ("Unknown", "UnknownModel"),
                "RayServiceReady": ("False", "ZeroServeEndpoints"),
                "PoolsSchedulable": ("True", "Scheduled"),
                "UpgradeBlocked": ("True", "InsufficientGPUs"),
                "Ready": ("False", "RayServiceNotReady"),
            },
        ),
    ],
)
def test_conditions(seen: Observation, expected: dict[str, tuple[str, str]]) -> None:
    status = decide(seen, {}, NOW)
    assert conditions(status) == expected
    assert status["observedGeneration"] == 3
    assert all(c["observedGeneration"] == 3 for c in status["conditions"])
    assert all(c["message"] for c in status["conditions"])


def test_upgrade_in_progress_still_serves() -> None:
    rs = ray_service(True)
    rs["status"]["conditions"].append({"type": "UpgradeInProgress", "status": "True"})
    status = decide(Observation(generation=2, md=MD, namespace="ns", ray_service=rs), {}, NOW)
    assert conditions(status)["Ready"] == ("True", "Upgrading")


def test_problems_are_the_message() -> None:
    seen = Observation(generation=1, md=MD, namespace="ns", problems=["first", "second"])
    (validated,) = [c for c in decide(seen, {}, NOW)["conditions"] if c["type"] == "Validated"]
    assert validated["message"] == "first; second"


def test_ready_status_carries_endpoint_replicas_and_pools() -> None:
    rs = ray_service(
        True, {"a": {"status": "HEALTHY"}, "b": {"status": "UPDATING"}, "OpenAIIngress": {}}
    )
    status = decide(Observation(generation=1, md=MD, namespace="ns", ray_service=rs), {}, NOW)
    assert status["endpoint"] == "http://m-openai.ns.svc:8000/v1"
    assert (status["readyReplicas"], status["desiredReplicas"]) == (2, 3)
    assert status["rayService"] == "m"
    assert status["pools"] == [
        {"name": "a", "state": "HEALTHY", "message": "", "minReplicas": 1, "maxReplicas": 3},
        {"name": "b", "state": "UPDATING", "message": "", "minReplicas": 0, "maxReplicas": 1},
    ]


def test_invalid_status_has_no_endpoint() -> None:
    status = decide(Observation(generation=1, md=MD, namespace="ns", problems=["x"]), {}, NOW)
    assert "endpoint" not in status


def test_transition_time_kept_while_status_unchanged() -> None:
    seen = Observation(generation=1, md=MD, namespace="ns", ray_service=ray_service(False))
    first = decide(seen, {}, BEFORE)
    again = decide(seen, first, NOW)
    assert again == first, "same observation, same status: nothing to write"
    ready = decide(
        Observation(generation=1, md=MD, namespace="ns", ray_service=ray_service(True)), first, NOW
    )
    times = {c["type"]: c["lastTransitionTime"] for c in ready["conditions"]}
    assert times == {
        "Validated": BEFORE,
        "CapacityFits": BEFORE,
        "RayServiceReady": NOW,
        "PoolsSchedulable": BEFORE,
        "UpgradeBlocked": BEFORE,
        "Ready": NOW,
    }


def test_capacity_is_estimated_for_a_known_model() -> None:
    md = ModelDeployment.from_object(
        {
            "metadata": {"name": "q", "namespace": "ns"},
            "spec": {
                "model": {"source": "hf://Qwen/Qwen2-7B-Instruct", "servedName": "qwen2-7b"},
                "engine": {"maxModelLen": 8192},
                "nodePools": [{"name": "l20", "gpu": {"type": "L20", "memoryGiB": 48}}],
            },
        }
    )
    status = decide(Observation(generation=1, md=md, namespace="ns"), {}, NOW)
    assert conditions(status)["CapacityFits"] == ("True", "Fits")
    capacity = status["capacity"]
    assert capacity["pool"] == "l20"
    # 7.6 B parameters at 2 bytes each on one GPU.
    assert 13 < capacity["weightsGiBPerGpu"] < 16
    assert capacity["kvCacheTokens"] > 8192
    assert capacity["maxConcurrentAtMaxLen"] == capacity["kvCacheTokens"] // 8192


def test_invalid_status_has_no_capacity() -> None:
    status = decide(Observation(generation=1, md=MD, namespace="ns", problems=["x"]), {}, NOW)
    assert "capacity" not in status


def test_status_patch_only_when_changed() -> None:
    seen = Observation(generation=1, md=MD, namespace="ns", ray_service=ray_service(True))
    status = decide(seen, {}, NOW)
    assert status_patch(status, status) is None
    assert status_patch({}, status) == status


def test_status_patch_removes_what_no_longer_applies() -> None:
    ready = decide(
        Observation(generation=1, md=MD, namespace="ns", ray_service=ray_service(True)), {}, NOW
    )
    invalid = decide(Observation(generation=2, md=MD, namespace="ns", problems=["x"]), ready, NOW)
    patch = status_patch(ready, invalid)
    assert patch is not None
    assert patch["endpoint"] is None
    assert patch["readyReplicas"] is None
    assert patch["observedGeneration"] == 2


def _pod(pool: str | None, phase: str, *conditions: dict[str, str]) -> dict[str, Any]:
    labels = {"modelfleet.io/deployment": "m"} | ({"modelfleet.io/pool": pool} if pool else {})
    return {
        "metadata": {"labels": labels},
        "status": {"phase": phase, "conditions": list(conditions)},
    }


UNSCHEDULABLE = {
    "type": "PodScheduled",
    "status": "False",
    "reason": "Unschedulable",
    "message": "0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector.",
}


@pytest.mark.parametrize(
    ("pods", "expected"),
    [
        ([], {}),
        # Placed, or not yet looked at by the scheduler: nothing to report.
        ([_pod("a", "Running", {"type": "PodScheduled", "status": "True"})], {}),
        ([_pod("a", "Pending")], {}),
        ([_pod("a", "Pending", {**UNSCHEDULABLE, "reason": "SchedulingGated"})], {}),
        # The head has no pool: not a pool's problem (the condition is about pools).
        ([_pod(None, "Pending", UNSCHEDULABLE)], {}),
        ([_pod("b", "Pending", UNSCHEDULABLE)], {"b": UNSCHEDULABLE["message"]}),
        # One message per pool, however many of its pods wait.
        (
            [_pod("b", "Pending", UNSCHEDULABLE), _pod("b", "Pending", UNSCHEDULABLE)],
            {"b": UNSCHEDULABLE["message"]},
        ),
    ],
)
def test_unschedulable_pools(pods: list[dict[str, Any]], expected: dict[str, str]) -> None:
    assert unschedulable_pools(pods) == expected


def test_an_unschedulable_pool_is_named_with_the_schedulers_reason() -> None:
    why = UNSCHEDULABLE["message"]
    seen = Observation(
        generation=1,
        md=MD,
        namespace="ns",
        ray_service=ray_service(False),
        unschedulable={"b": why},
    )
    status = decide(seen, {}, NOW)
    (condition,) = [c for c in status["conditions"] if c["type"] == "PoolsSchedulable"]
    assert condition["message"].startswith(f"pool b: the scheduler cannot place its pods: {why}")
    assert "nodeSelector" in condition["message"]
    pools = {p["name"]: p for p in status["pools"]}
    assert (pools["b"]["state"], pools["b"]["message"]) == ("Unschedulable", why)
    assert pools["a"]["state"] != "Unschedulable"


def test_pools_show_the_pending_app_before_the_first_cluster_serves() -> None:
    slow = "Deployment 'a' has 1 replicas that have taken more than 30s to initialize."
    rs = {
        "metadata": {"name": "m"},
        "status": {
            "activeServiceStatus": {"rayClusterStatus": {}},
            "pendingServiceStatus": {
                "applicationStatuses": {
                    "modelfleet": {
                        "serveDeploymentStatuses": {"a": {"status": "UPDATING", "message": slow}}
                    }
                }
            },
        },
    }
    status = decide(Observation(generation=1, md=MD, namespace="ns", ray_service=rs), {}, NOW)
    pools = {p["name"]: p for p in status["pools"]}
    assert (pools["a"]["state"], pools["a"]["message"]) == ("UPDATING", slow)
    assert pools["b"]["state"] == "Unknown"
