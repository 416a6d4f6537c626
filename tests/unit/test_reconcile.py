"""One reconciliation, run against an in-memory stand-in for the operator's Kubernetes I/O.

`FakeKube` keeps objects in a dict and records every call, so each test can say what
was applied, deleted and written; events are collected the same way. The real API
server is the subject of tests/e2e/test_operator.py and tests/e2e/test_monitoring.py.
"""

from __future__ import annotations

import copy
import itertools
import logging
from dataclasses import dataclass, field
from typing import Any

import pytest
from modelfleet_operator.api import v1alpha1
from modelfleet_operator.api.v1alpha1 import ModelSpec
from modelfleet_operator.capacity import SKIP_CAPACITY_ANNOTATION
from modelfleet_operator.hub import ShapeLookup, resolve_shape
from modelfleet_operator.names import (
    LABEL_MANAGED_BY,
    MANAGED_BY,
    RAY_API_VERSION,
    RAY_SERVICE_KIND,
    SERVICE_MONITOR_API_VERSION,
    SERVICE_MONITOR_KIND,
    SERVICE_MONITOR_PLURAL,
)
from modelfleet_operator.reconcile import Context, Outcome, reconcile
from modelfleet_operator.rollout import GPU_RESOURCE as GPU
from modelfleet_operator.settings import Settings
from modelfleet_operator.status import FrontDoorHealth
from prometheus_client import REGISTRY

Object = dict[str, Any]
Key = tuple[str, str, str, str]

NAMESPACE = "llm"
NAME = "tiny"
UID = "6f1c2d3e-0000-4000-8000-000000000001"
RETRY = 7.0
LOG = logging.getLogger("test_reconcile")
KUBERAY_MISSING = "the API server does not serve rayservices.ray.io (ray.io/v1): install KubeRay"
# Fields the API server sets, left out when comparing what was applied.
SERVER_FIELDS = ("uid", "resourceVersion", "creationTimestamp")


def _key(api_version: str, kind: str, namespace: str, name: str) -> Key:
    return (api_version, kind, namespace, name)


def _key_of(obj: Object) -> Key:
    meta = obj["metadata"]
    return _key(obj["apiVersion"], obj["kind"], meta["namespace"], meta["name"])


def _merge(target: Object, patch: Object) -> None:
    """Apply a JSON merge patch (RFC 7386) to `target` in place."""
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        elif isinstance(value, dict) and isinstance(target.get(key), dict):
            _merge(target[key], value)
        else:
            target[key] = copy.deepcopy(value)


def _content(obj: Object) -> Object:
    """`obj` without the fields the API server sets, to tell a change from a no-op."""
    essence = copy.deepcopy(obj)
    for name in SERVER_FIELDS:
        essence["metadata"].pop(name, None)
    essence.pop("status", None)
    return essence


@dataclass
class FakeKube:
    """The `KubeIO` calls over a dict of objects, each call recorded in `calls`."""

    objects: dict[Key, Object] = field(default_factory=dict)
    calls: list[tuple[str, Key]] = field(default_factory=list)
    status_writes: list[Object] = field(default_factory=list)
    missing: str | None = None
    pod_list: list[Object] = field(default_factory=list)
    # The cluster's Nodes; None: RBAC does not let the operator list them.
    node_list: list[Object] | None = field(default_factory=list)
    served: set[tuple[str, str]] = field(
        default_factory=lambda: {(SERVICE_MONITOR_API_VERSION, SERVICE_MONITOR_PLURAL)}
    )
    _versions: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def add(self, obj: Object) -> Object:
        """Store `obj` as if someone had created it, with the fields the server sets."""
        stored = copy.deepcopy(obj)
        stored["metadata"].setdefault("uid", f"uid-{next(self._versions)}")
        stored["metadata"]["resourceVersion"] = str(next(self._versions))
        self.objects[_key_of(stored)] = stored
        return stored

    def of(self, api_version: str, kind: str, name: str) -> Object | None:
        """The stored object, for the tests' own reading (not recorded as a call)."""
        return self.objects.get(_key(api_version, kind, NAMESPACE, name))

    def verbs(self, verb: str) -> list[Key]:
        """The keys of the calls made with `verb`, in order."""
        return [key for called, key in self.calls if called == verb]

    def get(self, api_version: str, kind: str, namespace: str, name: str) -> Object | None:
        key = _key(api_version, kind, namespace, name)
        self.calls.append(("get", key))
        found = self.objects.get(key)
        return copy.deepcopy(found) if found is not None else None

    def live(self, obj: Object) -> Object | None:
        self.calls.append(("live", _key_of(obj)))
        found = self.objects.get(_key_of(obj))
        return copy.deepcopy(found) if found is not None else None

    def apply(self, obj: Object) -> Object:
        key = _key_of(obj)
        self.calls.append(("apply", key))
        current = self.objects.get(key)
        if current is None:
            return copy.deepcopy(self.add(obj))
        if _content(current) != _content(obj):
            # Taking every field back, as a forced server-side apply of the whole object.
            updated = copy.deepcopy(obj)
            updated["metadata"]["uid"] = current["metadata"]["uid"]
            updated["metadata"]["resourceVersion"] = str(next(self._versions))
            if "status" in current:
                updated["status"] = current["status"]
            self.objects[key] = updated
        return copy.deepcopy(self.objects[key])

    def delete(
        self, api_version: str, kind: str, namespace: str, name: str, *, uid: str | None = None
    ) -> None:
        key = _key(api_version, kind, namespace, name)
        self.calls.append(("delete", key))
        current = self.objects.get(key)
        if current is not None and uid is not None and current["metadata"]["uid"] != uid:
            raise AssertionError(f"the uid precondition of deleting {key} failed")
        self.objects.pop(key, None)

    def patch_status(self, namespace: str, name: str, patch: Object) -> None:
        key = _key(v1alpha1.API_VERSION, v1alpha1.KIND, namespace, name)
        self.calls.append(("patch_status", key))
        self.status_writes.append(copy.deepcopy(patch))
        _merge(self.objects[key].setdefault("status", {}), patch)

    def pods(self, namespace: str, label_selector: str) -> list[Object]:
        key, _, value = label_selector.partition("=")
        self.calls.append(("pods", ("v1", "Pod", namespace, label_selector)))
        return [
            copy.deepcopy(pod)
            for pod in self.pod_list
            if (pod["metadata"].get("labels") or {}).get(key) == value
        ]

    def serves(self, api_version: str, plural: str) -> bool:
        return (api_version, plural) in self.served

    def node_usage(self) -> tuple[list[Object], list[Object]] | None:
        self.calls.append(("node_usage", ("v1", "Node", "", "")))
        if self.node_list is None:
            return None
        bound = [pod for pod in self.pod_list if (pod.get("spec") or {}).get("nodeName")]
        return copy.deepcopy(self.node_list), copy.deepcopy(bound)

    def kuberay_missing(self) -> str | None:
        return self.missing


@dataclass
class Events:
    """The events a reconciliation emitted, as (type, reason, message)."""

    seen: list[tuple[str, str, str]] = field(default_factory=list)

    def __call__(self, md: Any, kind: str, reason: str, message: str) -> None:
        assert md["metadata"]["uid"] == UID, "events are about the ModelDeployment"
        self.seen.append((kind, reason, message))

    def reasons(self) -> list[str]:
        return [reason for _, reason, _ in self.seen]


def model_deployment(monitoring: dict[str, bool] | None = None, **spec: Any) -> Object:
    """A valid ModelDeployment as read from the API (CPU pool, both monitoring parts off)."""
    return {
        "apiVersion": v1alpha1.API_VERSION,
        "kind": v1alpha1.KIND,
        "metadata": {"name": NAME, "namespace": NAMESPACE, "uid": UID, "generation": 1},
        "spec": {
            "model": {"source": "builtin://tiny-llama", "servedName": "tiny-llama"},
            "engine": {"kind": "vllm", "maxModelLen": 512, "cpuKVCacheGiB": 1},
            "nodePools": [{"name": "cpu", "cpu": 1, "memoryGiB": 4}],
            "monitoring": monitoring or {"serviceMonitor": False, "dashboards": False},
            **spec,
        },
    }


def offline_shapes(model: ModelSpec) -> ShapeLookup:
    """Model shapes without the network (the name table for hf:// sources)."""
    return resolve_shape(model, fetch=False)


def cluster(md: Object, *others: Object, missing: str | None = None) -> tuple[FakeKube, Context]:
    kube = FakeKube(missing=missing)
    kube.add(md)
    for obj in others:
        kube.add(obj)
    settings = Settings(drift_interval=60.0, retry_delay=RETRY, bind_address="127.0.0.1")
    context = Context(
        kube=kube, image="example.org/ray:1", settings=settings, shapes=offline_shapes
    )
    return kube, context


def run(ctx: Context) -> tuple[Outcome | None, Events]:
    events = Events()
    return reconcile(ctx, NAMESPACE, NAME, LOG, events), events


def settled(md: Object, *others: Object) -> tuple[FakeKube, Context]:
    """A cluster where one reconciliation already ran; its calls are forgotten."""
    kube, ctx = cluster(md, *others)
    outcome, _ = run(ctx)
    assert outcome == Outcome("success")
    kube.calls.clear()
    kube.status_writes.clear()
    return kube, ctx


def status_reason(kube: FakeKube, condition: str) -> str:
    md = kube.of(v1alpha1.API_VERSION, v1alpha1.KIND, NAME)
    assert md is not None
    found: dict[str, str] = {c["type"]: c["reason"] for c in md["status"]["conditions"]}
    return found[condition]


# The controller reference the operator puts on every child of the ModelDeployment.
OWNER = {
    "apiVersion": v1alpha1.API_VERSION,
    "kind": v1alpha1.KIND,
    "name": NAME,
    "uid": UID,
    "controller": True,
}


def ours(api_version: str, kind: str, name: str, **metadata: Any) -> Object:
    """An object marked as the operator marks its children, `metadata` replacing parts."""
    meta = {
        "name": name,
        "namespace": NAMESPACE,
        "labels": {LABEL_MANAGED_BY: MANAGED_BY},
        "ownerReferences": [OWNER],
        **metadata,
    }
    return {"apiVersion": api_version, "kind": kind, "metadata": meta}


def test_first_reconciliation_creates_the_children_and_writes_the_status_once() -> None:
    kube, ctx = cluster(model_deployment())
    outcome, events = run(ctx)
    assert outcome == Outcome("success")
    assert kube.verbs("apply") == [
        _key(RAY_API_VERSION, RAY_SERVICE_KIND, NAMESPACE, NAME),
        _key("v1", "Service", NAMESPACE, f"{NAME}-openai"),
        _key("networking.k8s.io/v1", "NetworkPolicy", NAMESPACE, f"{NAME}-ray"),
    ]
    assert events.seen == [
        ("Normal", "Created", f"created RayService {NAME}"),
        ("Normal", "Created", f"created Service {NAME}-openai"),
        ("Normal", "Created", f"created NetworkPolicy {NAME}-ray"),
    ]
    assert len(kube.status_writes) == 1
    assert kube.status_writes[0]["rayService"] == NAME
    assert status_reason(kube, "Ready") == "RayServiceNotReady"


def test_an_unchanged_status_is_not_written() -> None:
    kube, ctx = settled(model_deployment())
    outcome, events = run(ctx)
    assert outcome == Outcome("success")
    assert kube.verbs("patch_status") == []
    assert events.seen == [], "re-applying unchanged children is not news"


def test_a_changed_status_is_written_exactly_once() -> None:
    kube, ctx = settled(model_deployment())
    # KubeRay reports the Serve app running.
    ray_service = kube.of(RAY_API_VERSION, RAY_SERVICE_KIND, NAME)
    assert ray_service is not None
    ray_service["status"] = {
        "conditions": [{"type": "Ready", "status": "True", "reason": "NonZeroServeEndpoints"}],
        "activeServiceStatus": {
            "rayClusterStatus": {"readyWorkerReplicas": 1, "desiredWorkerReplicas": 1}
        },
    }
    outcome, _ = run(ctx)
    assert outcome == Outcome("success")
    assert len(kube.verbs("patch_status")) == 1
    assert status_reason(kube, "Ready") == "Serving"
    # The next round sees its own write and writes nothing.
    run(ctx)
    assert len(kube.verbs("patch_status")) == 1


def _edit_the_ray_service(kube: FakeKube) -> None:
    ray_service = kube.of(RAY_API_VERSION, RAY_SERVICE_KIND, NAME)
    assert ray_service is not None
    ray_service["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["maxReplicas"] = 9


def _delete_the_service(kube: FakeKube) -> None:
    del kube.objects[_key("v1", "Service", NAMESPACE, f"{NAME}-openai")]


@pytest.mark.parametrize(
    ("drift", "event"),
    [
        (_edit_the_ray_service, f"reverted a change made to RayService {NAME}"),
        (_delete_the_service, f"recreated Service {NAME}-openai, found deleted"),
    ],
    ids=["edited", "deleted"],
)
def test_drift_is_repaired(drift: Any, event: str) -> None:
    kube, ctx = settled(model_deployment())
    desired = copy.deepcopy(kube.objects)
    drift(kube)
    outcome, events = run(ctx)
    assert outcome == Outcome("success")
    assert events.seen == [("Normal", "DriftRepaired", event)]
    assert {key: _content(obj) for key, obj in kube.objects.items()} == {
        key: _content(obj) for key, obj in desired.items()
    }


def test_a_spec_change_updates_the_child() -> None:
    md = model_deployment()
    kube, ctx = settled(md)
    stored = kube.of(v1alpha1.API_VERSION, v1alpha1.KIND, NAME)
    assert stored is not None
    stored["spec"]["engine"]["maxNumSeqs"] = 7
    stored["metadata"]["generation"] = 2
    _, events = run(ctx)
    assert ("Normal", "Updated", f"updated RayService {NAME} to the new spec") in events.seen


# The conflicting object may hold the name of the first child or of a later one:
# either way nothing is applied, not even the children before it.
@pytest.mark.parametrize(
    ("api_version", "kind", "name"),
    [(RAY_API_VERSION, RAY_SERVICE_KIND, NAME), ("v1", "Service", f"{NAME}-openai")],
    ids=["first-child", "later-child"],
)
def test_an_ownership_conflict_touches_nothing(api_version: str, kind: str, name: str) -> None:
    foreign = {
        "apiVersion": api_version,
        "kind": kind,
        "metadata": {"name": name, "namespace": NAMESPACE, "labels": {"owner": "someone"}},
        "spec": {"theirs": True},
    }
    # Dashboards on: a monitoring child the conflict must not reach either.
    kube, ctx = cluster(model_deployment({"serviceMonitor": False, "dashboards": True}), foreign)
    before = copy.deepcopy(kube.objects[_key_of(foreign)])
    outcome, events = run(ctx)
    assert outcome is not None
    assert (outcome.result, outcome.retry_after) == ("conflict", RETRY)
    assert f"{kind} {name} already exists and is not owned" in outcome.why
    assert kube.verbs("apply") == []
    assert kube.verbs("delete") == []
    assert kube.objects[_key_of(foreign)] == before
    assert events.reasons() == ["OwnershipConflict"]
    assert status_reason(kube, "Ready") == "OwnershipConflict"


@pytest.mark.parametrize(
    ("md", "missing", "result", "retry", "reason", "event"),
    [
        (
            model_deployment(),
            KUBERAY_MISSING,
            "dependency_missing",
            RETRY,
            "DependencyMissing",
            "DependencyMissing",
        ),
        (
            model_deployment(engine={"kind": "vllm", "tensorParallelSize": 2}),
            None,
            "invalid",
            None,
            "InvalidSpec",
            "InvalidSpec",
        ),
    ],
    ids=["dependency-missing", "invalid-spec"],
)
def test_waiting_and_invalid_specs_apply_nothing(
    md: Object, missing: str | None, result: str, retry: float | None, reason: str, event: str
) -> None:
    kube, ctx = cluster(md, missing=missing)
    outcome, events = run(ctx)
    assert outcome is not None
    assert (outcome.result, outcome.retry_after) == (result, retry)
    assert kube.verbs("apply") == []
    assert status_reason(kube, "Ready") == reason
    assert events.reasons() == [event]
    # Still waiting: the status is already right, so neither a write nor an event again.
    outcome_again, events_again = run(ctx)
    assert outcome_again == outcome
    assert len(kube.status_writes) == 1
    assert events_again.seen == []


def test_a_deleted_model_deployment_is_neither_reconciled_nor_counted() -> None:
    md = model_deployment()
    md["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    kube, ctx = cluster(md)
    before = REGISTRY.get_sample_value("modelfleet_operator_reconcile_seconds_count")
    outcome, _ = run(ctx)
    assert outcome is None
    assert kube.verbs("apply") == []
    assert REGISTRY.get_sample_value("modelfleet_operator_reconcile_seconds_count") == before


def _count(result: str) -> float:
    value = REGISTRY.get_sample_value("modelfleet_operator_reconcile_total", {"result": result})
    return value or 0.0


def test_each_reconciliation_is_counted_by_its_result() -> None:
    _, ctx = cluster(model_deployment(), missing=KUBERAY_MISSING)
    before = _count("dependency_missing")
    run(ctx)
    assert _count("dependency_missing") == before + 1


def test_an_exception_is_counted_as_an_error_and_propagates() -> None:
    kube, ctx = cluster(model_deployment())

    def unreachable() -> str | None:
        raise ConnectionError("the API server is unreachable")

    kube.kuberay_missing = unreachable  # type: ignore[method-assign]
    before = _count("error")
    with pytest.raises(ConnectionError):
        run(ctx)
    assert _count("error") == before + 1


DASHBOARDS = ("v1", "ConfigMap", f"{NAME}-dashboards")
SERVICE_MONITOR = (SERVICE_MONITOR_API_VERSION, SERVICE_MONITOR_KIND, f"{NAME}-metrics")


@pytest.mark.parametrize("child", [DASHBOARDS, SERVICE_MONITOR], ids=["dashboards", "monitor"])
def test_a_monitoring_child_turned_off_is_deleted(child: tuple[str, str, str]) -> None:
    md = model_deployment({"serviceMonitor": True, "dashboards": True})
    kube, ctx = settled(md)
    assert kube.of(*child) is not None
    stored = kube.of(v1alpha1.API_VERSION, v1alpha1.KIND, NAME)
    assert stored is not None
    part = "dashboards" if child == DASHBOARDS else "serviceMonitor"
    stored["spec"]["monitoring"][part] = False
    outcome, events = run(ctx)
    assert outcome == Outcome("success")
    assert kube.verbs("delete") == [_key(child[0], child[1], NAMESPACE, child[2])]
    assert kube.of(*child) is None
    message = f"deleted {child[1]} {child[2]}: spec.monitoring no longer asks for it"
    assert events.seen == [("Normal", "Deleted", message)]
    # Gone now: the next round looks, finds nothing, and says nothing.
    _, events = run(ctx)
    assert len(kube.verbs("delete")) == 1
    assert events.seen == []


@pytest.mark.parametrize(
    "metadata",
    [
        {"ownerReferences": []},
        {"labels": {"app": "mine"}},
        # A ModelDeployment of the same name that was deleted and created again.
        {"ownerReferences": [{**OWNER, "uid": "the-uid-of-an-earlier-namesake"}]},
        {"ownerReferences": [{**OWNER, "controller": False}]},
    ],
    ids=["no-owner", "not-our-label", "another-owner-uid", "not-the-controller"],
)
def test_an_object_not_made_for_it_is_never_deleted(metadata: dict[str, Any]) -> None:
    # Monitoring off in the spec; a ConfigMap of the dashboards' name, lacking a mark.
    theirs = ours(*DASHBOARDS, **metadata)
    kube, ctx = cluster(model_deployment(), theirs)
    before = copy.deepcopy(kube.objects[_key_of(theirs)])
    outcome, events = run(ctx)
    assert outcome == Outcome("success")
    assert kube.verbs("delete") == []
    assert kube.objects[_key_of(theirs)] == before
    assert "Deleted" not in events.reasons()


def test_without_the_service_monitor_crd_no_service_monitor_is_looked_up() -> None:
    kube, ctx = cluster(model_deployment())
    kube.served.clear()
    run(ctx)
    looked_up = {key[1] for key in kube.verbs("get")}
    assert SERVICE_MONITOR_KIND not in looked_up
    assert "ConfigMap" in looked_up


# ------------------------------------------------------------- the capacity gate


def gpu_deployment(tp: int, *, annotations: dict[str, str] | None = None) -> Object:
    """Llama 3 70B on 80 GiB GPUs: it fits with tensorParallelSize 2 or more, not with 1."""
    md = model_deployment(
        model={"source": "hf://meta-llama/Meta-Llama-3-70B-Instruct", "servedName": "llama"},
        engine={"kind": "vllm", "maxModelLen": 8192, "tensorParallelSize": tp},
        nodePools=[{"name": "h100", "gpu": {"type": "H100", "memoryGiB": 80}}],
    )
    if annotations:
        md["metadata"]["annotations"] = annotations
    return md


def conditions(kube: FakeKube) -> dict[str, tuple[str, str]]:
    md = kube.of(v1alpha1.API_VERSION, v1alpha1.KIND, NAME)
    assert md is not None
    return {c["type"]: (c["status"], c["reason"]) for c in md["status"]["conditions"]}


def message(kube: FakeKube, condition: str) -> str:
    md = kube.of(v1alpha1.API_VERSION, v1alpha1.KIND, NAME)
    assert md is not None
    return next(c["message"] for c in md["status"]["conditions"] if c["type"] == condition)


def test_a_spec_that_does_not_fit_creates_no_ray_service() -> None:
    kube, ctx = cluster(gpu_deployment(tp=1))
    outcome, events = run(ctx)
    assert outcome == Outcome("invalid")
    assert kube.verbs("apply") == []
    assert kube.of(RAY_API_VERSION, RAY_SERVICE_KIND, NAME) is None
    assert conditions(kube) == {
        "Validated": ("False", "DoesNotFit"),
        "CapacityFits": ("False", "DoesNotFit"),
        "RayServiceReady": ("False", "DoesNotFit"),
        "Ready": ("False", "DoesNotFit"),
    }
    fits = message(kube, "CapacityFits")
    assert "Llama 3 70B needs 131.5 GiB of weights per GPU" in fits
    assert "raise tensorParallelSize to 2" in fits
    assert f'{SKIP_CAPACITY_ANNOTATION}: "true"' in fits
    assert events.reasons() == ["DoesNotFit"]
    # Nothing changes on the next round: no second write, no second event.
    again, events = run(ctx)
    assert again == outcome and events.seen == [] and len(kube.status_writes) == 1


def test_an_update_that_stops_fitting_leaves_the_live_ray_service_as_it_was() -> None:
    kube, ctx = settled(gpu_deployment(tp=4))
    ray_service = kube.of(RAY_API_VERSION, RAY_SERVICE_KIND, NAME)
    assert ray_service is not None
    ray_service["status"] = {
        "conditions": [{"type": "Ready", "status": "True", "reason": "NonZeroServeEndpoints"}]
    }
    before = copy.deepcopy(ray_service)
    stored = kube.of(v1alpha1.API_VERSION, v1alpha1.KIND, NAME)
    assert stored is not None
    stored["spec"]["engine"]["tensorParallelSize"] = 1
    stored["metadata"]["generation"] = 2
    outcome, events = run(ctx)
    assert outcome == Outcome("invalid")
    assert kube.verbs("apply") == [] and kube.verbs("delete") == []
    assert kube.of(RAY_API_VERSION, RAY_SERVICE_KIND, NAME) == before
    assert conditions(kube) == {
        "Validated": ("False", "DoesNotFit"),
        "CapacityFits": ("False", "DoesNotFit"),
        "RayServiceReady": ("True", "NonZeroServeEndpoints"),
        "Ready": ("True", "ServingPreviousSpec"),
    }
    assert "generation 2 is not deployed" in message(kube, "Ready")
    assert events.reasons() == ["DoesNotFit"]
    # Fitting again, the new spec is applied.
    stored = kube.of(v1alpha1.API_VERSION, v1alpha1.KIND, NAME)
    assert stored is not None
    stored["spec"]["engine"]["tensorParallelSize"] = 8
    stored["metadata"]["generation"] = 3
    outcome, events = run(ctx)
    assert outcome == Outcome("success")
    assert ("Normal", "Updated", f"updated RayService {NAME} to the new spec") in events.seen
    assert conditions(kube)["CapacityFits"] == ("True", "Fits")


def test_the_annotation_lets_a_spec_that_does_not_fit_through() -> None:
    md = gpu_deployment(tp=1, annotations={SKIP_CAPACITY_ANNOTATION: "true"})
    kube, ctx = cluster(md)
    outcome, _ = run(ctx)
    assert outcome == Outcome("success")
    assert _key(RAY_API_VERSION, RAY_SERVICE_KIND, NAMESPACE, NAME) in kube.verbs("apply")
    assert conditions(kube)["Validated"] == ("True", "Valid")
    assert conditions(kube)["CapacityFits"] == ("False", "CheckSkipped")
    assert "deployed anyway" in message(kube, "CapacityFits")


def test_unknown_engine_flags_create_no_ray_service() -> None:
    md = model_deployment(engine={"kind": "vllm", "extraArgs": {"enable-prefix-cache": True}})
    kube, ctx = cluster(md)
    outcome, events = run(ctx)
    assert outcome == Outcome("invalid")
    assert kube.verbs("apply") == []
    assert conditions(kube)["Validated"] == ("False", "InvalidSpec")
    assert "did you mean 'enable-prefix-caching'?" in message(kube, "Validated")
    assert events.reasons() == ["InvalidSpec"]


def test_the_status_says_when_the_figures_are_estimates_and_why() -> None:
    why = "could not read the checkpoint: the hub at http://127.0.0.1:9 is unreachable"
    kube, ctx = cluster(gpu_deployment(tp=4))
    ctx.shapes = lambda model: ShapeLookup(offline_shapes(model).shape, why)
    outcome, _ = run(ctx)
    assert outcome == Outcome("success")
    fits = message(kube, "CapacityFits")
    assert fits.startswith("figures estimated from the model's name") and why in fits
    md = kube.of(v1alpha1.API_VERSION, v1alpha1.KIND, NAME)
    assert md is not None and md["status"]["capacity"]["shapeFrom"] == "the model's name"


def test_cpu_pools_never_ask_for_the_models_shape() -> None:
    _, ctx = cluster(model_deployment())

    def never(model: ModelSpec) -> ShapeLookup:
        raise AssertionError("a CPU-only spec has no GPU capacity to check")

    ctx.shapes = never
    outcome, _ = run(ctx)
    assert outcome == Outcome("success")


def test_a_pool_whose_pods_cannot_be_placed_is_reported_and_then_cleared() -> None:
    kube, ctx = settled(model_deployment())
    pool = model_deployment()["spec"]["nodePools"][0]["name"]
    pending = {
        "metadata": {
            "name": "w",
            "labels": {"modelfleet.io/deployment": NAME, "modelfleet.io/pool": pool},
        },
        "status": {
            "phase": "Pending",
            "conditions": [
                {
                    "type": "PodScheduled",
                    "status": "False",
                    "reason": "Unschedulable",
                    "message": "0/1 nodes are available: 1 Insufficient cpu.",
                }
            ],
        },
    }
    # Another deployment's pod is not this one's business.
    other = {"metadata": {"name": "o", "labels": {"modelfleet.io/deployment": "other"}}}
    kube.pod_list = [pending, other]
    run(ctx)
    assert status_reason(kube, "PoolsSchedulable") == "Unschedulable"
    assert len(kube.status_writes) == 1
    # The pod is placed: the next reconciliation clears the condition.
    kube.pod_list = []
    run(ctx)
    assert status_reason(kube, "PoolsSchedulable") == "Scheduled"
    assert len(kube.status_writes) == 2


def gpu_node(name: str, gpus: int) -> Object:
    return {"metadata": {"name": name, "labels": {}}, "status": {"allocatable": {GPU: str(gpus)}}}


def gpu_pod(name: str, node: str, gpus: int) -> Object:
    """A running pod of some other workload that holds `gpus` of `node`."""
    return {
        "metadata": {"name": name, "labels": {"app": "other"}},
        "spec": {
            "nodeName": node,
            "containers": [{"name": "c", "resources": {"requests": {GPU: str(gpus)}}}],
        },
        "status": {"phase": "Running"},
    }


def serving_gpu_deployment(**kube_fields: Any) -> tuple[FakeKube, Context, Object]:
    """Llama 70B on two H100s, deployed and Ready, on one 8-GPU node where another
    workload holds four GPUs (two are free); the stored RayService as it was."""
    kube, ctx = settled(gpu_deployment(tp=2))
    kube.node_list = [gpu_node("gpu-node", 8)]
    kube.pod_list = [gpu_pod("ours", "gpu-node", 2), gpu_pod("theirs", "gpu-node", 4)]
    for name, value in kube_fields.items():
        setattr(kube, name, value)
    ray_service = kube.of(RAY_API_VERSION, RAY_SERVICE_KIND, NAME)
    assert ray_service is not None
    ray_service["status"] = {
        "conditions": [{"type": "Ready", "status": "True", "reason": "NonZeroServeEndpoints"}]
    }
    return kube, ctx, copy.deepcopy(ray_service)


def new_generation(kube: FakeKube, generation: int, **engine: Any) -> None:
    stored = kube.of(v1alpha1.API_VERSION, v1alpha1.KIND, NAME)
    assert stored is not None
    stored["spec"]["engine"].update(engine)
    stored["metadata"]["generation"] = generation


def test_a_change_no_node_has_the_gpus_for_waits_and_the_old_cluster_serves() -> None:
    kube, ctx, before = serving_gpu_deployment()
    # Four GPUs per replica need a new RayCluster beside the serving one: 2 are free.
    new_generation(kube, 2, tensorParallelSize=4)
    outcome, events = run(ctx)
    assert outcome is not None
    assert (outcome.result, outcome.retry_after) == ("upgrade_blocked", ctx.settings.retry_delay)
    assert kube.verbs("apply") == [] and kube.verbs("delete") == []
    assert kube.of(RAY_API_VERSION, RAY_SERVICE_KIND, NAME) == before
    assert conditions(kube) == {
        "Validated": ("True", "Valid"),
        "CapacityFits": ("True", "Fits"),
        "RayServiceReady": ("True", "NonZeroServeEndpoints"),
        "PoolsSchedulable": ("True", "Scheduled"),
        "UpgradeBlocked": ("True", "InsufficientGPUs"),
        "Ready": ("True", "ServingPreviousSpec"),
    }
    assert message(kube, "UpgradeBlocked").startswith(
        "generation 2 is not applied yet: the change needs a new RayCluster beside the "
        "running one, and pool h100 needs 4 free GPUs (1 replica × 4 GPUs) while its 1 "
        "node has 2 free (room for 0 replicas)."
    )
    assert events.reasons() == ["UpgradeBlocked"]
    # Still short: nothing is written or said again.
    writes = len(kube.status_writes)
    outcome, events = run(ctx)
    assert outcome is not None and outcome.result == "upgrade_blocked"
    assert (len(kube.status_writes), events.seen) == (writes, [])
    # The other workload ends: the retry applies the change.
    kube.pod_list = kube.pod_list[:1]
    outcome, events = run(ctx)
    assert outcome == Outcome("success")
    assert ("Normal", "Updated", f"updated RayService {NAME} to the new spec") in events.seen
    assert conditions(kube)["UpgradeBlocked"] == ("False", "NotBlocked")


@pytest.mark.parametrize(
    ("change", "kube_fields", "annotations"),
    [
        # Replica bounds change in place (KubeRay's autoscaler): nothing new to place.
        ({"maxReplicas": 2}, {}, None),
        # Nodes the operator may not list: it goes ahead, as KubeRay would.
        ({"tensorParallelSize": 4}, {"node_list": None}, None),
        # No node of the pool: a cluster autoscaler adds them for the Pending pods.
        ({"tensorParallelSize": 4}, {"node_list": []}, None),
        # The escape hatch of the capacity gate lets it through too.
        ({"tensorParallelSize": 4}, {}, {SKIP_CAPACITY_ANNOTATION: "true"}),
    ],
)
def test_changes_that_go_ahead_without_free_gpus(
    change: dict[str, Any], kube_fields: dict[str, Any], annotations: dict[str, str] | None
) -> None:
    kube, ctx, _ = serving_gpu_deployment(**kube_fields)
    stored = kube.of(v1alpha1.API_VERSION, v1alpha1.KIND, NAME)
    assert stored is not None
    if "maxReplicas" in change:
        stored["spec"]["nodePools"][0].update(change)
        stored["metadata"]["generation"] = 2
    else:
        new_generation(kube, 2, **change)
    if annotations:
        stored["metadata"]["annotations"] = annotations
    outcome, events = run(ctx)
    assert outcome == Outcome("success")
    assert "UpgradeBlocked" not in events.reasons()
    assert _key(RAY_API_VERSION, RAY_SERVICE_KIND, NAMESPACE, NAME) in kube.verbs("apply")


def _serving(kube: FakeKube) -> None:
    """KubeRay reports the RayService Ready."""
    ray_service = kube.of(RAY_API_VERSION, RAY_SERVICE_KIND, NAME)
    assert ray_service is not None
    ray_service["status"] = {
        "conditions": [{"type": "Ready", "status": "True", "reason": "NonZeroServeEndpoints"}]
    }


def test_ready_follows_the_adapters_the_front_door_reports() -> None:
    """Loading: polled soon; loaded on every replica: Ready; a failure: one event, and no
    poll (it waits for a change of the spec)."""
    adapter = {"name": "lora", "source": "file:///adapters/lora"}
    md = model_deployment()
    md["spec"]["model"]["adapters"] = [adapter]
    kube, ctx = cluster(md)
    reports: list[FrontDoorHealth] = []
    ctx.front_door = lambda namespace, name: reports[-1]
    outcome, _ = run(ctx)
    assert outcome == Outcome("success"), "the RayService is not ready: nothing to ask"
    assert status_reason(kube, "AdaptersReady") == "NotChecked"
    _serving(kube)

    def replica(adapters: list[str], errors: dict[str, str]) -> dict[str, Any]:
        return {"pool": "cpu", "replica": "r1", "adapters": adapters, "adapterErrors": errors}

    reports.append(FrontDoorHealth(replicas=(replica([], {}),)))
    outcome, _ = run(ctx)
    assert outcome is not None and outcome.result == "adapters_pending"
    assert outcome.retry_after == ctx.settings.adapter_poll
    assert (status_reason(kube, "AdaptersReady"), status_reason(kube, "Ready")) == (
        "AdaptersLoading",
        "AdaptersNotReady",
    )
    reports.append(FrontDoorHealth(replicas=(replica(["lora"], {}),)))
    assert run(ctx)[0] == Outcome("success")
    assert (status_reason(kube, "AdaptersReady"), status_reason(kube, "Ready")) == (
        "AdaptersLoaded",
        "Serving",
    )
    reports.append(FrontDoorHealth(replicas=(replica([], {"lora": "No adapter found"}),)))
    outcome, events = run(ctx)
    assert outcome == Outcome("adapter_failed")
    assert status_reason(kube, "Ready") == "AdaptersNotReady"
    [(kind, _, message)] = [e for e in events.seen if e[1] == "AdapterFailed"]
    assert kind == "Warning" and "adapter lora failed to load" in message
    assert "No adapter found" in message
    again, events = run(ctx)
    assert again == Outcome("adapter_failed")
    assert "AdapterFailed" not in events.reasons(), "said once, not every reconcile"
    reports.append(FrontDoorHealth(error="GET http://tiny-openai.llm.svc:8000/health: timed out"))
    outcome, _ = run(ctx)
    assert outcome is not None and (outcome.result, outcome.retry_after) == (
        "adapters_pending",
        RETRY,
    )
    assert status_reason(kube, "AdaptersReady") == "HealthUnavailable"
