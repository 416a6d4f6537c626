"""Kopf handlers: thin wrappers around one idempotent `reconcile`.

Every trigger (create, update, resume, the drift timer, a change of an owned RayService)
runs the same steps: read the ModelDeployment afresh, check it, render its children,
server-side apply them, and write the status when it changed. User mistakes become
status, waiting on others becomes `kopf.TemporaryError`, and nothing is deleted here:
children go with their owner through garbage collection.

Importing this module registers the handlers with Kopf's default registry.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, cast

import kopf

from modelfleet_operator import metrics
from modelfleet_operator.api import v1alpha1
from modelfleet_operator.checks import check
from modelfleet_operator.kube import Kube
from modelfleet_operator.monitoring import monitoring_objects
from modelfleet_operator.names import (
    ANNOTATION_SPEC_HASH,
    LABEL_MANAGED_BY,
    MANAGED_BY,
    RAY_GROUP,
    RAY_GROUP_VERSION,
    RAY_SERVICE_KIND,
    RAY_SERVICE_PLURAL,
    SERVICE_MONITOR_API_VERSION,
    SERVICE_MONITOR_PLURAL,
)
from modelfleet_operator.render import render
from modelfleet_operator.settings import Settings
from modelfleet_operator.status import Observation, decide, status_patch

SETTINGS = Settings.from_env()
# What Kopf hands handlers as `logger`.
Logger = logging.Logger | logging.LoggerAdapter[Any]
MD = (v1alpha1.GROUP, v1alpha1.VERSION, v1alpha1.PLURAL)


@dataclass
class Context:
    """What every handler needs, handed over by Kopf as `memo`."""

    kube: Kube
    image: str
    settings: Settings
    # One lock per ModelDeployment: the timer, change handlers and RayService events
    # may fire together, and the status must come from one reconciliation at a time.
    locks: dict[str, threading.Lock] = field(default_factory=dict)
    guard: threading.Lock = field(default_factory=threading.Lock)
    conditions: metrics.ConditionCounts = field(default_factory=metrics.ConditionCounts)

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


def _event(md: Mapping[str, Any], kind: str, reason: str, message: str) -> None:
    kopf.event(kopf.Body(cast(kopf.RawBody, dict(md))), type=kind, reason=reason, message=message)


def _apply_children(
    ctx: Context, md_obj: Mapping[str, Any], objects: list[dict[str, Any]]
) -> tuple[dict[str, dict[str, Any]], str | None]:
    """Apply each child unless a foreign object holds its name; the live children."""
    uid = md_obj["metadata"]["uid"]
    # A status naming the RayService means the children were created before: one
    # missing now was deleted by someone, and recreating it is a repair.
    created_before = bool((md_obj.get("status") or {}).get("rayService"))
    live: dict[str, dict[str, Any]] = {}
    for desired in objects:
        kind, name = desired["kind"], desired["metadata"]["name"]
        current = ctx.kube.live(desired)
        if current is not None and not _owned_by(current, uid):
            return live, (
                f"{kind} {name} already exists and is not owned by this ModelDeployment; "
                f"nothing was changed: delete or rename that {kind}, or rename the "
                "ModelDeployment"
            )
        applied = ctx.kube.apply(desired)
        if current is None and created_before:
            _event(md_obj, "Normal", "DriftRepaired", f"recreated {kind} {name}, found deleted")
        elif current is None:
            _event(md_obj, "Normal", "Created", f"created {kind} {name}")
        elif (
            current["metadata"].get("annotations", {}).get(ANNOTATION_SPEC_HASH)
            != desired["metadata"]["annotations"][ANNOTATION_SPEC_HASH]
        ):
            _event(md_obj, "Normal", "Updated", f"updated {kind} {name} to the new spec")
        elif applied["metadata"].get("resourceVersion") != current["metadata"].get(
            "resourceVersion"
        ):
            _event(md_obj, "Normal", "DriftRepaired", f"reverted a change made to {kind} {name}")
        live[kind] = applied
    return live, None


def _reconcile(ctx: Context, md_obj: Mapping[str, Any], logger: Logger) -> Outcome:
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
            _event(md_obj, "Warning", "InvalidSpec", "; ".join(checked.problems))
        return Outcome("invalid")

    missing = ctx.kube.kuberay_missing()
    if missing is not None:
        waiting = replace(seen, dependency_missing=missing)
        if _write_status(ctx, md_obj, waiting, logger):
            _event(md_obj, "Warning", "DependencyMissing", missing)
        return Outcome("dependency_missing", ctx.settings.retry_delay, missing)

    objects = render(checked.md, image=ctx.image, namespace=namespace, owner_uid=meta["uid"])
    objects += monitoring_objects(
        checked.md,
        namespace=namespace,
        service_monitor_crd_exists=ctx.kube.serves(
            SERVICE_MONITOR_API_VERSION, SERVICE_MONITOR_PLURAL
        ),
        owner_uid=meta["uid"],
    )
    live, conflict = _apply_children(ctx, md_obj, objects)
    if conflict is not None:
        blocked = replace(seen, conflict=conflict)
        if _write_status(ctx, md_obj, blocked, logger):
            _event(md_obj, "Warning", "OwnershipConflict", conflict)
        return Outcome("conflict", ctx.settings.retry_delay, conflict)

    done = replace(seen, ray_service=live.get(RAY_SERVICE_KIND))
    _write_status(ctx, md_obj, done, logger)
    return Outcome("success")


def reconcile(ctx: Context, namespace: str, name: str, logger: Logger) -> None:
    """Bring one ModelDeployment's children and status in line with its spec.

    Reads the object afresh so that a late trigger never acts on an old spec. Raises
    `kopf.TemporaryError` while waiting on something the user or cluster must provide.
    """
    started = time.monotonic()
    outcome: Outcome | None = Outcome("error")
    try:
        with ctx.lock_for(namespace, name):
            md_obj = ctx.kube.get(v1alpha1.API_VERSION, v1alpha1.KIND, namespace, name)
            if md_obj is None or md_obj["metadata"].get("deletionTimestamp"):
                # Being deleted: garbage collection takes the children; nothing to count.
                outcome = None
                return
            outcome = _reconcile(ctx, md_obj, logger)
    finally:
        if outcome is not None:
            metrics.observe(outcome.result, time.monotonic() - started)
    if outcome.retry_after is not None:
        raise kopf.TemporaryError(outcome.why, delay=outcome.retry_after)


def _namespaced(namespace: str | None) -> str:
    # ModelDeployment is a namespaced kind: Kopf always passes its namespace.
    assert namespace is not None, "ModelDeployment is namespaced"
    return namespace


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    """Keep Kopf's bookkeeping in annotations, out of the status the users read."""
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=v1alpha1.GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=v1alpha1.GROUP, key="last-handled-configuration"
    )
    # The API calls are blocking; a few threads keep one slow object from stalling others.
    settings.execution.max_workers = 8


# An unexpected error (the API unreachable, say) is retried after the same delay as
# waiting, rather than Kopf's default minute.
@kopf.on.resume(*MD, backoff=SETTINGS.retry_delay)
@kopf.on.create(*MD, backoff=SETTINGS.retry_delay)
@kopf.on.update(*MD, backoff=SETTINGS.retry_delay)
def on_change(namespace: str | None, name: str, memo: Any, logger: Logger, **_: Any) -> None:
    """Create, update and (after an operator restart) resume: reconcile."""
    reconcile(memo, _namespaced(namespace), name, logger)


@kopf.timer(*MD, interval=SETTINGS.drift_interval, initial_delay=SETTINGS.drift_interval)
def repair_drift(namespace: str | None, name: str, memo: Any, logger: Logger, **_: Any) -> None:
    """Re-apply the children every interval: undoes manual edits, recreates deletions."""
    reconcile(memo, _namespaced(namespace), name, logger)


@kopf.on.event(
    RAY_GROUP, RAY_GROUP_VERSION, RAY_SERVICE_PLURAL, labels={LABEL_MANAGED_BY: MANAGED_BY}
)
def on_ray_service(body: kopf.Body, memo: Any, logger: Logger, **_: Any) -> None:
    """A RayService we own changed (KubeRay's status, an edit, a deletion): reconcile its owner.

    This keeps the ModelDeployment's status in step with KubeRay without waiting for
    the drift timer, and recreates a deleted RayService at once.
    """
    owners = [
        ref
        for ref in body.metadata.get("ownerReferences") or []
        if ref.get("kind") == v1alpha1.KIND and ref.get("controller")
    ]
    namespace = body.metadata.namespace
    for owner in owners:
        if namespace is None:
            continue
        try:
            reconcile(memo, namespace, owner["name"], logger)
        except kopf.TemporaryError as waiting:
            # The owner's own handlers and timer retry; an event handler cannot.
            logger.info("owner %s waits: %s", owner["name"], waiting)


@kopf.on.event(*MD)
def on_md_event(
    type: str, namespace: str | None, name: str, memo: Any, logger: Logger, **_: Any
) -> None:
    """Deletion needs no handler (and so no finalizer): ownerReferences let garbage
    collection remove the RayService and Service. Once an object is gone, drop its lock."""
    if type == "DELETED":
        memo.forget(_namespaced(namespace), name)
        logger.info("deleted; its children are removed by garbage collection")
