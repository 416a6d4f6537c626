"""Decide a ModelDeployment's status from what the operator observed.

`decide` maps one observation (spec problems, missing dependencies, an ownership
conflict, the RayService as KubeRay reports it, pods the scheduler cannot place, a
change waiting for GPUs, the adapters each LLM replica has loaded) to the whole
status; `status_patch` says what to write, or that nothing changed, so the status is
written only when it changes. Pure: no Kubernetes, Kopf or Ray imports; the clock is
passed in.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from modelfleet_operator.api.v1alpha1 import (
    Condition,
    ConditionStatus,
    ModelDeployment,
    ModelDeploymentStatus,
    PoolStatus,
)
from modelfleet_operator.capacity import CapacityFit, capacity_fit
from modelfleet_operator.names import LABEL_POOL
from modelfleet_operator.render import APP_NAME, endpoint, namespace_of

VALIDATED = "Validated"
CAPACITY_FITS = "CapacityFits"
RAY_SERVICE_READY = "RayServiceReady"
POOLS_SCHEDULABLE = "PoolsSchedulable"
UPGRADE_BLOCKED = "UpgradeBlocked"
ADAPTERS_READY = "AdaptersReady"
READY = "Ready"

# Reasons (CamelCase, for machines) the operator itself sets.
REASON_VALID = "Valid"
REASON_INVALID = "InvalidSpec"
REASON_DEPENDENCY_MISSING = "DependencyMissing"
REASON_CONFLICT = "OwnershipConflict"
REASON_WAITING = "WaitingForKubeRay"
REASON_SERVING = "Serving"
REASON_UPGRADING = "Upgrading"
REASON_NOT_READY = "RayServiceNotReady"
# The spec does not fit its GPUs: nothing of it is deployed; the last good one serves on.
REASON_DOES_NOT_FIT = "DoesNotFit"
REASON_SERVING_PREVIOUS = "ServingPreviousSpec"
# Deployed although the estimate says it does not fit (the skip annotation).
REASON_CHECK_SKIPPED = "CheckSkipped"
# Some worker pod of a pool cannot be placed on any node (the scheduler's reason).
REASON_UNSCHEDULABLE = "Unschedulable"
REASON_SCHEDULED = "Scheduled"
# A change that needs a new RayCluster waits for the GPUs it would start on.
REASON_INSUFFICIENT_GPUS = "InsufficientGPUs"
REASON_NOT_BLOCKED = "NotBlocked"
# LoRA adapters, as the LLM replicas report them through the front door's /health.
REASON_ADAPTERS_LOADED = "AdaptersLoaded"
REASON_ADAPTERS_LOADING = "AdaptersLoading"
REASON_ADAPTER_FAILED = "AdapterFailed"
REASON_HEALTH_UNAVAILABLE = "HealthUnavailable"
REASON_NOT_CHECKED = "NotChecked"
# Ready is False while the RayService serves but an adapter of the spec does not.
REASON_ADAPTERS_NOT_READY = "AdaptersNotReady"
# vLLM's reasons can be long (a path, a traceback's last line): the status keeps a line.
_ADAPTER_REASON_CHARS = 300


@dataclass(frozen=True)
class FrontDoorHealth:
    """What the front door's `/health` said about the LLM replicas, or why it could
    not be read. Each replica entry has `pool`, `replica`, `adapters` (the names it has
    loaded) and `adapterErrors` (name → why it failed to load)."""

    replicas: tuple[Mapping[str, Any], ...] = ()
    error: str | None = None


@dataclass(frozen=True)
class AdapterVerdict:
    """The `AdaptersReady` condition's status, reason and message."""

    status: ConditionStatus
    reason: str
    message: str


def adapter_readiness(wanted: Sequence[str], health: FrontDoorHealth) -> AdapterVerdict:
    """Whether every LLM replica the front door knows has loaded each adapter in `wanted`.

    A failure on any replica wins (it names the adapter, the replicas and vLLM's
    reason); then adapters still missing somewhere (loading: Serve hands the new
    adapter list to the replicas after KubeRay deployed it); otherwise all loaded.
    Adapters a replica has but the spec no longer lists do not count.
    """
    if health.error is not None:
        return AdapterVerdict(
            "Unknown",
            REASON_HEALTH_UNAVAILABLE,
            f"cannot read which adapters the replicas loaded: {health.error}",
        )
    replicas = health.replicas
    if not replicas:
        return AdapterVerdict(
            "False", REASON_ADAPTERS_LOADING, "no LLM replica reports its adapters yet"
        )
    failures = []
    for name in wanted:
        failed = [r for r in replicas if name in (r.get("adapterErrors") or {})]
        if failed:
            why = " ".join(str(failed[0]["adapterErrors"][name]).split())
            if len(why) > _ADAPTER_REASON_CHARS:
                why = why[: _ADAPTER_REASON_CHARS - 1] + "…"
            failures.append(
                f"adapter {name} failed to load on {len(failed)} of {len(replicas)} replicas: {why}"
            )
    if failures:
        return AdapterVerdict(
            "False",
            REASON_ADAPTER_FAILED,
            "; ".join(failures) + ". The model and the other adapters keep serving; fix "
            "the adapter's source (files, rank within engine.maxLoraRank, trained for "
            "this base model) in spec.model.adapters, or remove it",
        )
    loading = []
    for name in wanted:
        loaded = sum(name in (r.get("adapters") or ()) for r in replicas)
        if loaded < len(replicas):
            loading.append(f"{name} on {loaded} of {len(replicas)}")
    if loading:
        return AdapterVerdict(
            "False", REASON_ADAPTERS_LOADING, "adapters loaded so far: " + ", ".join(loading)
        )
    return AdapterVerdict(
        "True",
        REASON_ADAPTERS_LOADED,
        f"{', '.join(wanted)} loaded on every replica ({len(replicas)})",
    )


@dataclass(frozen=True)
class Observation:
    """What one reconciliation saw; each optional part is None when it did not apply."""

    generation: int
    md: ModelDeployment | None
    namespace: str
    problems: list[str] = field(default_factory=list)
    dependency_missing: str | None = None
    conflict: str | None = None
    ray_service: Mapping[str, Any] | None = None
    # The capacity verdict (decide works it out from the spec alone when absent).
    fit: CapacityFit | None = None
    # Why this generation is not deployed (it does not fit); `ray_service` is then the
    # live one of an earlier generation, if any, which keeps serving.
    held_back: str | None = None
    # Deployed against the capacity estimate, as the skip annotation asks.
    capacity_skipped: bool = False
    # Pool → why the scheduler cannot place its pods (unschedulable_pools).
    unschedulable: Mapping[str, str] = field(default_factory=dict)
    # Why this generation waits for GPUs (rollout.blocked_upgrade); `ray_service` is
    # then the live one of an earlier generation, which keeps serving.
    upgrade_blocked: str | None = None
    # The front door's report on the replicas, read when the spec lists adapters and
    # the RayService is ready.
    front_door: FrontDoorHealth | None = None


def unschedulable_pools(pods: Iterable[Mapping[str, Any]]) -> dict[str, str]:
    """Pool → the scheduler's message, for each pool with a pod it cannot place.

    A pod counts while it is Pending with PodScheduled False for reason Unschedulable
    (e.g. "0/3 nodes are available: 3 Insufficient nvidia.com/gpu."). Pods without a
    pool label (the Ray head) are not a pool's.
    """
    found: dict[str, str] = {}
    for pod in pods:
        pool = ((pod.get("metadata") or {}).get("labels") or {}).get(LABEL_POOL)
        status = pod.get("status") or {}
        if not pool or status.get("phase") != "Pending" or pool in found:
            continue
        for condition in status.get("conditions") or []:
            if (
                condition.get("type") == "PodScheduled"
                and condition.get("status") == "False"
                and condition.get("reason") == "Unschedulable"
            ):
                found[pool] = str(condition.get("message") or "no node can run it")
    return found


def _previous(status: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    return {c.get("type", ""): c for c in status.get("conditions") or []}


def _condition(
    kind: str,
    status: ConditionStatus,
    reason: str,
    message: str,
    *,
    generation: int,
    previous: Mapping[str, Mapping[str, Any]],
    now: str,
) -> Condition:
    """A condition that keeps its lastTransitionTime while its status stays the same."""
    before = previous.get(kind)
    unchanged = before is not None and before.get("status") == status
    since = before.get("lastTransitionTime") if before is not None and unchanged else None
    return Condition(
        type=kind,
        status=status,
        reason=reason,
        message=message,
        last_transition_time=since or now,
        observed_generation=generation,
    )


def upgrading(ray_service: Mapping[str, Any] | None) -> bool:
    """Whether KubeRay reports an upgrade to a new RayCluster in progress."""
    status = (ray_service or {}).get("status") or {}
    return any(
        c.get("type") == "UpgradeInProgress" and c.get("status") == "True"
        for c in status.get("conditions") or []
    )


def ray_service_readiness(ray_service: Mapping[str, Any]) -> tuple[bool, str, str]:
    """(ready, reason, message) from KubeRay's `Ready` condition on a RayService."""
    name = ray_service.get("metadata", {}).get("name", "")
    status = ray_service.get("status") or {}
    for condition in status.get("conditions") or []:
        if condition.get("type") == "Ready":
            ready = condition.get("status") == "True"
            reason = condition.get("reason") or ("Ready" if ready else "NotReady")
            message = condition.get("message") or f"KubeRay reports RayService {name} {reason}"
            return ready, reason, message
    return False, REASON_WAITING, f"waiting for KubeRay to report on RayService {name}"


def _deployments(service_status: Mapping[str, Any] | None) -> Mapping[str, Any]:
    """Serve deployment statuses of our app in one of KubeRay's service statuses."""
    apps = (service_status or {}).get("applicationStatuses") or {}
    return (apps.get(APP_NAME) or {}).get("serveDeploymentStatuses") or {}


def _pools(
    md: ModelDeployment,
    ray_service: Mapping[str, Any] | None,
    unschedulable: Mapping[str, str],
) -> list[PoolStatus]:
    status = (ray_service or {}).get("status") or {}
    deployments = _deployments(status.get("activeServiceStatus"))
    if not deployments:
        # Before the first cluster serves, KubeRay reports the app being deployed (and
        # why its replicas are slow, e.g. a model still loading) as the pending one.
        deployments = _deployments(status.get("pendingServiceStatus"))
    pools = []
    for pool in md.spec.node_pools:
        # The serving app names each pool's Serve deployment after the pool.
        deployment = deployments.get(pool.name) or {}
        state = deployment.get("status") or "Unknown"
        message = deployment.get("message") or ""
        if pool.name in unschedulable:
            state, message = REASON_UNSCHEDULABLE, unschedulable[pool.name]
        pools.append(
            PoolStatus(
                name=pool.name,
                state=state,
                message=message,
                min_replicas=pool.min_replicas,
                max_replicas=pool.max_replicas,
            )
        )
    return pools


def _schedulable(
    cond: Callable[[str, ConditionStatus, str, str], Condition], unschedulable: Mapping[str, str]
) -> Condition:
    if not unschedulable:
        return cond(
            POOLS_SCHEDULABLE, "True", REASON_SCHEDULED, "no pod of a pool is unschedulable"
        )
    message = "; ".join(
        f"pool {pool}: the scheduler cannot place its pods: {why} Check the pool's "
        "nodeSelector, tolerations and resources against the nodes"
        for pool, why in sorted(unschedulable.items())
    )
    return cond(POOLS_SCHEDULABLE, "False", REASON_UNSCHEDULABLE, message)


def _upgrade(
    cond: Callable[[str, ConditionStatus, str, str], Condition], seen: Observation
) -> Condition:
    if seen.upgrade_blocked is None:
        return cond(UPGRADE_BLOCKED, "False", REASON_NOT_BLOCKED, "no change is waiting for GPUs")
    message = f"generation {seen.generation} is not applied yet: {seen.upgrade_blocked}"
    return cond(UPGRADE_BLOCKED, "True", REASON_INSUFFICIENT_GPUS, message)


def adapters_verdict(md: ModelDeployment, seen: Observation) -> AdapterVerdict | None:
    """The `AdaptersReady` verdict for a spec that lists adapters; None otherwise."""
    wanted = [adapter.name for adapter in md.spec.model.adapters]
    if not wanted:
        return None
    if seen.upgrade_blocked is not None:
        return AdapterVerdict(
            "Unknown",
            REASON_NOT_CHECKED,
            f"not checked: generation {seen.generation} waits for GPUs (see UpgradeBlocked)",
        )
    if seen.front_door is None:
        return AdapterVerdict(
            "Unknown", REASON_NOT_CHECKED, "not checked: the RayService is not ready"
        )
    return adapter_readiness(wanted, seen.front_door)


def _ready(
    cond: Callable[[str, ConditionStatus, str, str], Condition],
    md: ModelDeployment,
    url: str,
    seen: Observation,
    adapters: AdapterVerdict | None,
) -> Condition:
    serving = f"serving {md.spec.model.served_name} at {url}"
    if seen.upgrade_blocked is not None:
        return cond(
            READY,
            "True",
            REASON_SERVING_PREVIOUS,
            f"serving the previous spec at {url}; generation {seen.generation} waits for "
            "GPUs (see UpgradeBlocked)",
        )
    if adapters is not None and adapters.status != "True":
        # The spec is served once its adapters are too: a listed adapter that no replica
        # (or only some) can answer for is not Ready, whatever the base model does.
        return cond(
            READY,
            "False",
            REASON_ADAPTERS_NOT_READY,
            f"{serving}, but not every adapter yet (see AdaptersReady): {adapters.message}",
        )
    if upgrading(seen.ray_service):
        # Still serving, from the old RayCluster until KubeRay switches over.
        return cond(
            READY, "True", REASON_UPGRADING, f"{serving}; KubeRay is rolling out the new spec"
        )
    return cond(READY, "True", REASON_SERVING, serving)


def _held_back(
    cond: Callable[[str, ConditionStatus, str, str], Condition],
    md: ModelDeployment,
    seen: Observation,
    why: str,
) -> tuple[list[Condition], dict[str, Any]]:
    """Conditions (and status fields) of a generation that does not fit its GPUs.

    Nothing of it is deployed. A RayService of an earlier generation keeps serving,
    and the status says so; without one, nothing serves.
    """
    generation = f"generation {seen.generation} is not deployed: {why}"
    refused = [
        cond(VALIDATED, "False", REASON_DOES_NOT_FIT, generation),
        cond(CAPACITY_FITS, "False", REASON_DOES_NOT_FIT, why),
    ]
    live = seen.ray_service
    name = md.metadata.name
    if live is None:
        not_created = f"RayService {name} not created: the model does not fit its GPUs"
        return [
            *refused,
            cond(RAY_SERVICE_READY, "False", REASON_DOES_NOT_FIT, not_created),
            cond(READY, "False", REASON_DOES_NOT_FIT, generation),
        ], {}
    url = endpoint(name, namespace_of(md, seen.namespace))
    ready, reason, message = ray_service_readiness(live)
    serving = (
        cond(
            READY,
            "True",
            REASON_SERVING_PREVIOUS,
            f"serving the previous spec at {url}; {generation}",
        )
        if ready
        else cond(READY, "False", REASON_DOES_NOT_FIT, generation)
    )
    conditions = [
        *refused,
        cond(RAY_SERVICE_READY, "True" if ready else "False", reason, message),
        serving,
    ]
    return conditions, {"endpoint": url, "ray_service": name}


def decide(seen: Observation, previous_status: Mapping[str, Any], now: str) -> dict[str, Any]:
    """The whole status for `seen`, as written to the API (camelCase, no None values)."""
    previous = _previous(previous_status)

    def cond(kind: str, status: ConditionStatus, reason: str, message: str) -> Condition:
        return _condition(
            kind,
            status,
            reason,
            message,
            generation=seen.generation,
            previous=previous,
            now=now,
        )

    md = seen.md
    extra: dict[str, Any] = {}
    if seen.problems or md is None:
        message = "; ".join(seen.problems) or "the spec could not be read"
        conditions = [
            cond(VALIDATED, "False", REASON_INVALID, message),
            cond(CAPACITY_FITS, "Unknown", REASON_INVALID, "not checked: the spec is invalid"),
            cond(RAY_SERVICE_READY, "False", REASON_INVALID, "not created: the spec is invalid"),
            cond(READY, "False", REASON_INVALID, message),
        ]
    else:
        fit = seen.fit or capacity_fit(md.spec)
        valid = cond(VALIDATED, "True", REASON_VALID, "the spec is valid")
        fits = cond(CAPACITY_FITS, fit.condition_status, fit.reason, fit.message)
        if seen.capacity_skipped:
            fits = cond(
                CAPACITY_FITS,
                "False",
                REASON_CHECK_SKIPPED,
                f"deployed anyway, as the skip-capacity-check annotation asks: {fit.message}",
            )
        extra["capacity"] = fit.status_capacity()
        name = md.metadata.name
        if seen.held_back is not None:
            conditions, held = _held_back(cond, md, seen, seen.held_back)
            extra |= held
        elif seen.dependency_missing is not None:
            why = seen.dependency_missing
            conditions = [
                valid,
                fits,
                cond(RAY_SERVICE_READY, "False", REASON_DEPENDENCY_MISSING, why),
                cond(READY, "False", REASON_DEPENDENCY_MISSING, why),
            ]
        elif seen.conflict is not None:
            conditions = [
                valid,
                fits,
                cond(RAY_SERVICE_READY, "False", REASON_CONFLICT, seen.conflict),
                cond(READY, "False", REASON_CONFLICT, seen.conflict),
            ]
        else:
            url = endpoint(name, namespace_of(md, seen.namespace))
            ready, reason, message = (
                ray_service_readiness(seen.ray_service)
                if seen.ray_service is not None
                else (False, REASON_WAITING, f"RayService {name} does not exist yet")
            )
            adapters = adapters_verdict(md, seen)
            conditions = [
                valid,
                fits,
                cond(RAY_SERVICE_READY, "True" if ready else "False", reason, message),
                _schedulable(cond, seen.unschedulable),
                _upgrade(cond, seen),
            ]
            if adapters is not None:
                conditions.append(
                    cond(ADAPTERS_READY, adapters.status, adapters.reason, adapters.message)
                )
            conditions.append(
                _ready(cond, md, url, seen, adapters)
                if ready
                else cond(READY, "False", REASON_NOT_READY, message)
            )
            cluster = (
                ((seen.ray_service or {}).get("status") or {}).get("activeServiceStatus") or {}
            ).get("rayClusterStatus") or {}
            extra |= {
                "endpoint": url,
                "ray_service": name,
                "ready_replicas": cluster.get("readyWorkerReplicas", 0),
                "desired_replicas": cluster.get("desiredWorkerReplicas", 0),
            }
        extra["pools"] = _pools(md, seen.ray_service, seen.unschedulable)
    status = ModelDeploymentStatus(
        observed_generation=seen.generation, conditions=conditions, **extra
    )
    return status.model_dump(by_alias=True, exclude_none=True)


# The status keys this operator owns; others (none today) are left alone.
OWNED_KEYS = tuple(
    (info.alias or name) for name, info in ModelDeploymentStatus.model_fields.items()
)


def status_patch(current: Mapping[str, Any], desired: Mapping[str, Any]) -> dict[str, Any] | None:
    """A JSON merge patch turning `current` status into `desired`; None when equal.

    Keys the operator owns but no longer sets are removed (merge patch: null), so a
    stale endpoint does not linger after the spec becomes invalid.
    """
    patch: dict[str, Any] = {}
    for key in OWNED_KEYS:
        if key in desired:
            if current.get(key) != desired[key]:
                patch[key] = desired[key]
        elif current.get(key) is not None:
            patch[key] = None
    return patch or None
