"""Kopf handlers: decorators around one idempotent `reconcile.reconcile`.

Every trigger (create, update, resume, the drift timer, a change of an owned RayService)
runs the same reconciliation, which lives in `reconcile` apart from Kopf. The handlers
only adapt: they hand it the `Context` Kopf keeps as `memo` and an event emitter built
on `kopf.event`, and turn an outcome that waits (KubeRay missing, an ownership
conflict) into `kopf.TemporaryError`, which Kopf retries after its delay.

Importing this module registers the handlers with Kopf's default registry.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

import kopf

from modelfleet_operator.api import v1alpha1
from modelfleet_operator.names import (
    LABEL_MANAGED_BY,
    MANAGED_BY,
    RAY_GROUP,
    RAY_GROUP_VERSION,
    RAY_SERVICE_PLURAL,
)
from modelfleet_operator.reconcile import Context, Logger, reconcile
from modelfleet_operator.settings import Settings

SETTINGS = Settings.from_env()
MD = (v1alpha1.GROUP, v1alpha1.VERSION, v1alpha1.PLURAL)


def _event(md: Mapping[str, Any], kind: str, reason: str, message: str) -> None:
    """Post a Kubernetes Event about the ModelDeployment `md` (through Kopf's poster)."""
    kopf.event(kopf.Body(cast(kopf.RawBody, dict(md))), type=kind, reason=reason, message=message)


def _reconcile(ctx: Context, namespace: str, name: str, logger: Logger) -> None:
    """Reconcile one ModelDeployment; raise `kopf.TemporaryError` while it waits."""
    outcome = reconcile(ctx, namespace, name, logger, _event)
    if outcome is not None and outcome.retry_after is not None:
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
    _reconcile(memo, _namespaced(namespace), name, logger)


@kopf.timer(*MD, interval=SETTINGS.drift_interval, initial_delay=SETTINGS.drift_interval)
def repair_drift(namespace: str | None, name: str, memo: Any, logger: Logger, **_: Any) -> None:
    """Re-apply the children every interval: undoes manual edits, recreates deletions."""
    _reconcile(memo, _namespaced(namespace), name, logger)


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
            _reconcile(memo, namespace, owner["name"], logger)
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
