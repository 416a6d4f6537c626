"""One idempotent reconciliation of a ModelDeployment, apart from Kopf.

Every trigger (create, update, resume, the drift timer, a change of an owned RayService)
runs the same steps: read the ModelDeployment afresh, check it (schema, engine flags,
and whether the model fits its GPUs: the same gate as the admission webhook, behind
it), render its children, server-side apply them, delete the monitoring children its
spec no longer asks for, and write the status when it changed. A spec that does not
fit changes nothing: no RayService is created, and one an earlier generation made
keeps serving as it is. Neither is a change that needs a new RayCluster while no node
has the GPUs it would start on (rollout.blocked_upgrade): the serving RayService stays
until they are free. User mistakes become status; waiting on others (KubeRay
missing, a name taken by a foreign object, GPUs) becomes an `Outcome` with a retry
delay, which the Kopf handlers turn into `kopf.TemporaryError`.

The Kubernetes I/O (`KubeIO`, implemented by `kube.Kube`) and the emitter of events
(`EmitEvent`) are passed in, so this module imports neither Kopf nor the Kubernetes
client, and the unit tests run it against an in-memory stand-in.

Nothing else is deleted here: the children go with their owner through garbage
collection, and only monitoring children that this operator made for this very
ModelDeployment are removed when its spec turns them off.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Protocol

from modelfleet_operator import metrics
from modelfleet_operator.api import v1alpha1
from modelfleet_operator.api.v1alpha1 import ModelDeployment, ModelSpec
from modelfleet_operator.capacity import CapacityFit, capacity_fit, gate, skip_requested
from modelfleet_operator.checks import check
from modelfleet_operator.front_door import read_health
from modelfleet_operator.hub import ShapeCache, ShapeLookup
from modelfleet_operator.monitoring import monitoring_objects, unwanted_monitoring_children
from modelfleet_operator.names import (
    ANNOTATION_SPEC_HASH,
    LABEL_DEPLOYMENT,
    LABEL_MANAGED_BY,
    MANAGED_BY,
    RAY_API_VERSION,
    RAY_SERVICE_KIND,
    SERVICE_MONITOR_API_VERSION,
    SERVICE_MONITOR_PLURAL,
)
from modelfleet_operator.render import render
from modelfleet_operator.rollout import (
    NEW_CLUSTER,
    blocked_upgrade,
    node_gpus,
    ray_service_rollout,
)
from modelfleet_operator.settings import Settings
from modelfleet_operator.status import (
    ADAPTERS_READY,
    REASON_ADAPTER_FAILED,
    REASON_ADAPTERS_LOADING,
    FrontDoorHealth,
    Observation,
    adapters_verdict,
    decide,
    ray_service_readiness,
    status_patch,
    unschedulable_pools,
)

Object = dict[str, Any]
# What Kopf hands handlers as `logger`, passed on to `reconcile`.
Logger = logging.Logger | logging.LoggerAdapter[Any]
# Emits a Kubernetes Event about a ModelDeployment: (the ModelDeployment as read,
# type "Normal" or "Warning", reason, message).
EmitEvent = Callable[[Mapping[str, Any], str, str, str], None]


class KubeIO(Protocol):
    """The Kubernetes calls a reconciliation makes; `kube.Kube` is the real one."""

    def get(self, api_version: str, kind: str, namespace: str, name: str) -> Object | None:
        """The object, or None when it does not exist."""
        ...

    def live(self, obj: Object) -> Object | None:
        """The live counterpart of a rendered object, or None."""
        ...

    def apply(self, obj: Object) -> Object:
        """Server-side apply `obj`, taking back fields others changed; the object applied."""
        ...

    def delete(
        self, api_version: str, kind: str, namespace: str, name: str, *, uid: str | None = None
    ) -> None:
        """Delete an object (only the one with `uid`, when given); gone already is fine."""
        ...

    def patch_status(self, namespace: str, name: str, patch: Object) -> None:
        """Merge-patch the status of a ModelDeployment."""
        ...

    def pods(self, namespace: str, label_selector: str) -> list[Object]:
        """The pods of `namespace` that match `label_selector`."""
        ...

    def serves(self, api_version: str, plural: str) -> bool:
        """Whether the API server serves `plural` in `api_version`."""
        ...

    def node_usage(self) -> tuple[list[Object], list[Object]] | None:
        """Every Node, and every pod of any namespace that is bound and not done; None
        when this operator may not read them."""
        ...

    def kuberay_missing(self) -> str | None:
        """Why RayServices cannot be created (their CRD is not served), or None."""
        ...


@dataclass
class Context:
    """What every reconciliation needs; the Kopf handlers receive it as `memo`."""

    kube: KubeIO
    image: str
    settings: Settings
    # One lock per ModelDeployment: the timer, change handlers and RayService events
    # may fire together, and the status must come from one reconciliation at a time.
    locks: dict[str, threading.Lock] = field(default_factory=dict)
    guard: threading.Lock = field(default_factory=threading.Lock)
    conditions: metrics.ConditionCounts = field(default_factory=metrics.ConditionCounts)
    # Where model shapes come from for the capacity gate: the checkpoint (hub, files)
    # with answers cached, or a stand-in in tests.
    shapes: Callable[[ModelSpec], ShapeLookup] = field(default_factory=ShapeCache)
    # What a ModelDeployment's front door reports on its replicas, by (namespace,
    # name): its /health over HTTP, or a stand-in in tests.
    front_door: Callable[[str, str], FrontDoorHealth] = read_health

    def lock_for(self, namespace: str, name: str) -> threading.Lock:
        """The lock of one ModelDeployment, created on first use."""
        with self.guard:
            return self.locks.setdefault(f"{namespace}/{name}", threading.Lock())

    def forget(self, namespace: str, name: str) -> None:
        """Drop the lock and the conditions of a deleted ModelDeployment."""
        with self.guard:
            self.locks.pop(f"{namespace}/{name}", None)
        self.conditions.forget(f"{namespace}/{name}")


@dataclass(frozen=True)
class Outcome:
    """How a reconciliation ended: its metrics label, and a retry delay when waiting."""

    result: str
    retry_after: float | None = None
    why: str = ""


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _owned_by(obj: Mapping[str, Any], uid: str) -> bool:
    refs = obj.get("metadata", {}).get("ownerReferences") or []
    return any(ref.get("uid") == uid and ref.get("controller") for ref in refs)


def _made_by_us_for(obj: Mapping[str, Any], uid: str) -> bool:
    """Whether this operator made `obj` for the ModelDeployment with `uid`.

    Both marks are required before deleting: the controller ownerReference says whose
    child it is, the managed-by label that this operator (not some other controller
    the user pointed at the ModelDeployment) put it there.
    """
    labels = obj.get("metadata", {}).get("labels") or {}
    return _owned_by(obj, uid) and labels.get(LABEL_MANAGED_BY) == MANAGED_BY


def _write_status(ctx: Context, md: Mapping[str, Any], seen: Observation, logger: Logger) -> bool:
    """Write the status decided for `seen` if it differs from the live one."""
    current = md.get("status") or {}
    desired = decide(seen, current, _now())
    meta = md["metadata"]
    ctx.conditions.record(
        f"{meta['namespace']}/{meta['name']}",
        {c["type"]: c["status"] for c in desired["conditions"]},
    )
    patch = status_patch(current, desired)
    if patch is None:
        return False
    ctx.kube.patch_status(meta["namespace"], meta["name"], patch)
    logger.debug("status written: %s", patch)
    return True


def _apply_children(
    ctx: Context, md_obj: Mapping[str, Any], objects: list[Object], emit: EmitEvent
) -> tuple[dict[str, Object], str | None]:
    """Apply every child unless a foreign object holds one's name; the live children.

    Every name is checked before anything is applied, so a conflict on any child
    leaves all of them as they were.
    """
    uid = md_obj["metadata"]["uid"]
    # A status naming the RayService means the children were created before: one
    # missing now was deleted by someone, and recreating it is a repair.
    created_before = bool((md_obj.get("status") or {}).get("rayService"))
    found = [(desired, ctx.kube.live(desired)) for desired in objects]
    for desired, current in found:
        if current is not None and not _owned_by(current, uid):
            kind, name = desired["kind"], desired["metadata"]["name"]
            return {}, (
                f"{kind} {name} already exists and is not owned by this ModelDeployment; "
                f"nothing was changed: delete or rename that {kind}, or rename the "
                "ModelDeployment"
            )
    live: dict[str, Object] = {}
    for desired, current in found:
        kind, name = desired["kind"], desired["metadata"]["name"]
        applied = ctx.kube.apply(desired)
        if current is None and created_before:
            emit(md_obj, "Normal", "DriftRepaired", f"recreated {kind} {name}, found deleted")
        elif current is None:
            emit(md_obj, "Normal", "Created", f"created {kind} {name}")
        elif (
            current["metadata"].get("annotations", {}).get(ANNOTATION_SPEC_HASH)
            != desired["metadata"]["annotations"][ANNOTATION_SPEC_HASH]
        ):
            emit(md_obj, "Normal", "Updated", f"updated {kind} {name} to the new spec")
        elif applied["metadata"].get("resourceVersion") != current["metadata"].get(
            "resourceVersion"
        ):
            emit(md_obj, "Normal", "DriftRepaired", f"reverted a change made to {kind} {name}")
        live[kind] = applied
    return live, None


def _remove_unwanted(
    ctx: Context,
    md_obj: Mapping[str, Any],
    md: ModelDeployment,
    service_monitor_crd_exists: bool,
    emit: EmitEvent,
) -> None:
    """Delete the monitoring children the spec turned off, where this operator made them.

    An object of the same name that someone else made (no controller ownerReference to
    this ModelDeployment, or not labelled as ours) is left as it is.
    """
    meta = md_obj["metadata"]
    namespace, uid = meta["namespace"], meta["uid"]
    unwanted = unwanted_monitoring_children(
        md, service_monitor_crd_exists=service_monitor_crd_exists
    )
    for api_version, kind, name in unwanted:
        current = ctx.kube.get(api_version, kind, namespace, name)
        if current is None or not _made_by_us_for(current, uid):
            continue
        # The uid precondition makes the API server refuse, rather than delete, an
        # object that someone recreated under this name since it was read.
        ctx.kube.delete(api_version, kind, namespace, name, uid=current["metadata"].get("uid"))
        emit(
            md_obj,
            "Normal",
            "Deleted",
            f"deleted {kind} {name}: spec.monitoring no longer asks for it",
        )


def _capacity(ctx: Context, md: ModelDeployment) -> CapacityFit:
    """The capacity verdict, reading the model's shape only when a pool has GPUs."""
    if all(pool.gpu is None for pool in md.spec.node_pools):
        return capacity_fit(md.spec)
    lookup = ctx.shapes(md.spec.model)
    return capacity_fit(md.spec, lookup.shape, note=lookup.note)


def _live_ray_service(ctx: Context, md_obj: Mapping[str, Any]) -> Object | None:
    """The RayService this ModelDeployment deployed before, if it exists and is ours."""
    meta = md_obj["metadata"]
    live = ctx.kube.get(RAY_API_VERSION, RAY_SERVICE_KIND, meta["namespace"], meta["name"])
    if live is None or not _owned_by(live, meta["uid"]):
        return None
    return live


def _waits_for_gpus(
    ctx: Context,
    md_obj: Mapping[str, Any],
    md: ModelDeployment,
    objects: list[Object],
    logger: Logger,
) -> tuple[str | None, Object | None]:
    """Why the rendered RayService must not replace the live one yet (its new RayCluster
    would wait for GPUs no node has free), or None; and the live RayService when it was
    read (only a spec with GPU pools and no skip annotation needs it)."""
    if all(pool.gpu is None for pool in md.spec.node_pools) or skip_requested(
        md_obj["metadata"].get("annotations")
    ):
        return None, None
    live = _live_ray_service(ctx, md_obj)
    if live is None:
        return None, None
    [desired] = [obj for obj in objects if obj["kind"] == RAY_SERVICE_KIND]
    rollout = ray_service_rollout(live, desired)
    if rollout.kind != NEW_CLUSTER:
        return None, live
    usage = ctx.kube.node_usage()
    if usage is None:
        logger.warning(
            "cannot read nodes and pods: the rollout goes ahead without checking free GPUs"
        )
        return None, live
    nodes, pods = usage
    return blocked_upgrade(md.spec, rollout, [node_gpus(n, pods) for n in nodes]), live


def _reconcile(ctx: Context, md_obj: Mapping[str, Any], logger: Logger, emit: EmitEvent) -> Outcome:
    meta = md_obj["metadata"]
    namespace = meta["namespace"]
    checked = check(dict(md_obj))
    seen = Observation(
        generation=meta.get("generation", 0),
        md=checked.md,
        namespace=namespace,
        problems=checked.problems,
    )
    if checked.md is None or checked.problems:
        # The user has to change the spec; the update handler runs again when they do.
        if _write_status(ctx, md_obj, seen, logger):
            emit(md_obj, "Warning", "InvalidSpec", "; ".join(checked.problems))
        return Outcome("invalid")

    # The capacity gate, behind the admission webhook (which may be off, or may have
    # admitted the spec under older figures): a spec that does not fit is not
    # deployed, and whatever an earlier generation deployed stays as it is.
    fit = _capacity(ctx, checked.md)
    verdict = gate(fit, meta.get("annotations"))
    seen = replace(seen, fit=fit, capacity_skipped=verdict.skipped)
    if verdict.refused is not None:
        held = replace(seen, held_back=verdict.refused, ray_service=_live_ray_service(ctx, md_obj))
        if _write_status(ctx, md_obj, held, logger):
            emit(md_obj, "Warning", "DoesNotFit", verdict.refused)
        return Outcome("invalid")

    missing = ctx.kube.kuberay_missing()
    if missing is not None:
        waiting = replace(seen, dependency_missing=missing)
        if _write_status(ctx, md_obj, waiting, logger):
            emit(md_obj, "Warning", "DependencyMissing", missing)
        return Outcome("dependency_missing", ctx.settings.retry_delay, missing)

    service_monitor_crd_exists = ctx.kube.serves(
        SERVICE_MONITOR_API_VERSION, SERVICE_MONITOR_PLURAL
    )
    objects = render(checked.md, image=ctx.image, namespace=namespace, owner_uid=meta["uid"])
    objects += monitoring_objects(
        checked.md,
        namespace=namespace,
        service_monitor_crd_exists=service_monitor_crd_exists,
        owner_uid=meta["uid"],
    )
    short, serving = _waits_for_gpus(ctx, md_obj, checked.md, objects, logger)
    if short is not None:
        # Nothing is applied: the serving RayService (and the children that go with
        # it) stay as they are; the retry applies the change once the GPUs are free.
        pods = ctx.kube.pods(namespace, f"{LABEL_DEPLOYMENT}={meta['name']}")
        held = replace(
            seen,
            ray_service=serving,
            unschedulable=unschedulable_pools(pods),
            upgrade_blocked=short,
        )
        if _write_status(ctx, md_obj, held, logger):
            emit(md_obj, "Warning", "UpgradeBlocked", short)
        return Outcome("upgrade_blocked", ctx.settings.retry_delay, short)

    live, conflict = _apply_children(ctx, md_obj, objects, emit)
    if conflict is not None:
        blocked = replace(seen, conflict=conflict)
        if _write_status(ctx, md_obj, blocked, logger):
            emit(md_obj, "Warning", "OwnershipConflict", conflict)
        return Outcome("conflict", ctx.settings.retry_delay, conflict)

    _remove_unwanted(ctx, md_obj, checked.md, service_monitor_crd_exists, emit)
    pods = ctx.kube.pods(namespace, f"{LABEL_DEPLOYMENT}={meta['name']}")
    ray_service = live.get(RAY_SERVICE_KIND)
    done = replace(seen, ray_service=ray_service, unschedulable=unschedulable_pools(pods))
    if checked.md.spec.model.adapters and ray_service and ray_service_readiness(ray_service)[0]:
        done = replace(done, front_door=ctx.front_door(namespace, meta["name"]))
    _write_status(ctx, md_obj, done, logger)
    return _adapters_outcome(ctx, md_obj, checked.md, done, emit)


def _adapters_outcome(
    ctx: Context, md_obj: Mapping[str, Any], md: ModelDeployment, seen: Observation, emit: EmitEvent
) -> Outcome:
    """How a reconciliation that applied everything ends, by the adapters' state.

    While replicas load adapters (or the front door cannot be read) the front door is
    read again soon: Serve's reconfigure changes no Kubernetes object that would
    trigger a reconciliation. A failed adapter waits for a change of the spec (the
    drift timer still reads it every interval) and is announced once by an event.
    """
    verdict = adapters_verdict(md, seen)
    if verdict is None or verdict.status == "True" or seen.front_door is None:
        return Outcome("success")
    if verdict.reason == REASON_ADAPTER_FAILED:
        before = {
            c.get("type"): c.get("reason")
            for c in (md_obj.get("status") or {}).get("conditions") or []
        }
        if before.get(ADAPTERS_READY) != REASON_ADAPTER_FAILED:
            emit(md_obj, "Warning", "AdapterFailed", verdict.message)
        return Outcome("adapter_failed")
    delay = (
        ctx.settings.adapter_poll
        if verdict.reason == REASON_ADAPTERS_LOADING
        else ctx.settings.retry_delay
    )
    return Outcome("adapters_pending", delay, verdict.message)


def reconcile(
    ctx: Context, namespace: str, name: str, logger: Logger, emit: EmitEvent
) -> Outcome | None:
    """Bring one ModelDeployment's children and status in line with its spec.

    Reads the object afresh so that a late trigger never acts on an old spec, and
    counts the reconciliation in the operator's metrics (an exception counts as
    "error" and propagates). Returns how it ended, with `retry_after` set while
    waiting on something the user or cluster must provide; None when the
    ModelDeployment is gone or being deleted, which is neither done nor counted.
    """
    started = time.monotonic()
    outcome: Outcome | None = Outcome("error")
    try:
        with ctx.lock_for(namespace, name):
            md_obj = ctx.kube.get(v1alpha1.API_VERSION, v1alpha1.KIND, namespace, name)
            if md_obj is None or md_obj["metadata"].get("deletionTimestamp"):
                # Being deleted: garbage collection takes the children; nothing to count.
                outcome = None
                return None
            outcome = _reconcile(ctx, md_obj, logger, emit)
    finally:
        if outcome is not None:
            metrics.observe(outcome.result, time.monotonic() - started)
    return outcome
