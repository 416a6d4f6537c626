"""What applying a new spec over a live one does: the fields that change, how KubeRay
rolls the change out, and the GPUs the rollout needs against what the nodes have free.

KubeRay applies a RayService whose `serveConfigV2` alone changed in place (Ray Serve
redeploys the application on the running cluster). A change of `rayClusterConfig`,
apart from the worker groups' replica bounds, which its autoscaler follows in place,
makes it build a new RayCluster next to the old one and switch traffic once the new
one serves (its zero-downtime upgrade): for that while both clusters hold GPUs, so
the new cluster's workers need GPUs that are free now. `modelfleet plan` prints these
figures; the pure functions here compute them from objects read by the caller.

Pure: no Kubernetes, Kopf or Ray imports.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from modelfleet_operator.api.v1alpha1 import ModelDeploymentSpec, NodePoolSpec
from modelfleet_operator.capacity import SKIP_CAPACITY_ANNOTATION

GPU_RESOURCE = "nvidia.com/gpu"

IN_PLACE = "in-place"
NEW_CLUSTER = "new-cluster"
CREATE = "create"
UNCHANGED = "unchanged"

# Worker-group fields KubeRay's autoscaler changes on the running cluster.
SCALING_FIELDS = ("replicas", "minReplicas", "maxReplicas")


def _diff(old: Any, new: Any, path: str, out: list[str]) -> None:
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        for key in sorted(set(old) | set(new), key=str):
            _diff(old.get(key), new.get(key), f"{path}.{key}" if path else str(key), out)
    elif isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        for i, (a, b) in enumerate(zip(old, new, strict=True)):
            _diff(a, b, f"{path}[{i}]", out)
    elif old != new:
        out.append(path)


def changed_fields(old: Any, new: Any, path: str = "") -> list[str]:
    """The dotted paths whose values differ between two JSON-like documents."""
    out: list[str] = []
    _diff(old, new, path, out)
    return out


def spec_changes(live: ModelDeploymentSpec, new: ModelDeploymentSpec) -> list[str]:
    """The spec fields (camelCase paths) a new spec changes, defaults filled on both
    sides so that a field the apiserver defaulted does not count as a change."""
    return changed_fields(
        live.model_dump(by_alias=True, mode="json"),
        new.model_dump(by_alias=True, mode="json"),
        "spec",
    )


def _subset_changes(live: Any, desired: Any, path: str, out: list[str]) -> None:
    """Differences in the fields `desired` sets (the live object carries more: defaults
    the apiserver or KubeRay filled in)."""
    if isinstance(desired, Mapping) and isinstance(live, Mapping):
        for key, value in desired.items():
            _subset_changes(live.get(key), value, f"{path}.{key}", out)
    elif isinstance(desired, list) and isinstance(live, list) and len(live) == len(desired):
        for i, (a, b) in enumerate(zip(live, desired, strict=True)):
            _subset_changes(a, b, f"{path}[{i}]", out)
    elif live != desired:
        out.append(path)


def _without_scaling(cluster: Mapping[str, Any]) -> dict[str, Any]:
    groups = [
        {k: v for k, v in group.items() if k not in SCALING_FIELDS}
        for group in cluster.get("workerGroupSpecs") or []
    ]
    return {**cluster, "workerGroupSpecs": groups}


@dataclass(frozen=True)
class Rollout:
    """How KubeRay applies the desired RayService over the live one."""

    kind: str
    changed: tuple[str, ...] = ()

    @property
    def description(self) -> str:
        """The rollout in words, for `modelfleet plan`."""
        return {
            CREATE: "a new RayService (nothing is deployed yet)",
            UNCHANGED: "nothing changes on the RayService",
            IN_PLACE: "KubeRay applies it in place (Serve config and replica bounds only)",
            NEW_CLUSTER: "KubeRay builds a new RayCluster beside the old one and switches "
            "over when it serves (the old one keeps its GPUs until then)",
        }[self.kind]


def ray_service_rollout(live: Mapping[str, Any] | None, desired: Mapping[str, Any]) -> Rollout:
    """Whether KubeRay updates `live` in place or builds a new RayCluster for `desired`."""
    if live is None:
        return Rollout(CREATE)
    live_spec, desired_spec = live.get("spec") or {}, desired.get("spec") or {}
    cluster: list[str] = []
    _subset_changes(
        _without_scaling(live_spec.get("rayClusterConfig") or {}),
        _without_scaling(desired_spec.get("rayClusterConfig") or {}),
        "spec.rayClusterConfig",
        cluster,
    )
    everything: list[str] = []
    _subset_changes(live_spec, desired_spec, "spec", everything)
    if cluster:
        return Rollout(NEW_CLUSTER, tuple(everything))
    if everything:
        return Rollout(IN_PLACE, tuple(everything))
    return Rollout(UNCHANGED)


@dataclass(frozen=True)
class NodeGPUs:
    """One node's labels and GPUs: allocatable, and requested by its running pods."""

    name: str
    labels: Mapping[str, str]
    allocatable: int
    requested: int

    @property
    def free(self) -> int:
        """GPUs no pod has requested."""
        return max(0, self.allocatable - self.requested)


def _quantity(value: Any) -> int:
    try:
        return int(float(str(value)))
    except ValueError:
        return 0


def node_gpus(node: Mapping[str, Any], pods: Iterable[Mapping[str, Any]]) -> NodeGPUs:
    """The GPUs of a Node object, less those requested by `pods` bound to it."""
    meta = node.get("metadata") or {}
    name = meta.get("name", "")
    allocatable = _quantity(
        ((node.get("status") or {}).get("allocatable") or {}).get(GPU_RESOURCE, 0)
    )
    requested = 0
    for pod in pods:
        spec = pod.get("spec") or {}
        phase = (pod.get("status") or {}).get("phase")
        if spec.get("nodeName") != name or phase in ("Succeeded", "Failed"):
            continue
        for container in spec.get("containers") or []:
            requests = (container.get("resources") or {}).get("requests") or {}
            requested += _quantity(requests.get(GPU_RESOURCE, 0))
    return NodeGPUs(name, dict(meta.get("labels") or {}), allocatable, requested)


@dataclass(frozen=True)
class PoolUpgrade:
    """The GPUs a pool needs for the rollout, against what its nodes have free."""

    pool: str
    gpus_per_replica: int
    replicas_needed: int
    nodes: int
    free_gpus: int
    placeable_replicas: int

    @property
    def gpus_needed(self) -> int:
        """GPUs the rollout takes on top of what runs now."""
        return self.replicas_needed * self.gpus_per_replica

    @property
    def enough(self) -> bool:
        """Whether the pool's nodes can place every replica the rollout starts."""
        return self.placeable_replicas >= self.replicas_needed

    def as_dict(self) -> dict[str, Any]:
        """For `modelfleet plan --output json`."""
        return {
            "gpus_per_replica": self.gpus_per_replica,
            "replicas_needed": self.replicas_needed,
            "gpus_needed": self.gpus_needed,
            "nodes": self.nodes,
            "free_gpus": self.free_gpus,
            "placeable_replicas": self.placeable_replicas,
            "enough": self.enough,
        }


def pool_nodes(pool: NodePoolSpec, nodes: Iterable[NodeGPUs]) -> list[NodeGPUs]:
    """The nodes the pool's worker pods may run on: their labels match its nodeSelector,
    and they have GPUs."""
    return [
        node
        for node in nodes
        if node.allocatable > 0
        and all(node.labels.get(k) == v for k, v in pool.node_selector.items())
    ]


def pool_upgrade(
    pool: NodePoolSpec,
    spec: ModelDeploymentSpec,
    rollout: Rollout,
    nodes: Iterable[NodeGPUs],
    live_pool: NodePoolSpec | None = None,
) -> PoolUpgrade | None:
    """The GPUs `pool` needs to roll out `spec` (None for a CPU pool).

    A new RayCluster starts every pool's minimum of replicas while the old cluster
    still holds its own; an in-place change needs only the replicas a raised minimum
    adds. A worker pod takes all its GPUs on one node, so free GPUs count in whole
    replicas per node.
    """
    if pool.gpu is None:
        return None
    per_replica = spec.engine.tensor_parallel_size * spec.engine.pipeline_parallel_size
    if rollout.kind in (CREATE, NEW_CLUSTER):
        needed = pool.min_replicas
    elif live_pool is not None:
        needed = max(0, pool.min_replicas - live_pool.min_replicas)
    else:
        needed = pool.min_replicas
    candidates = pool_nodes(pool, nodes)
    return PoolUpgrade(
        pool=pool.name,
        gpus_per_replica=per_replica,
        replicas_needed=needed,
        nodes=len(candidates),
        free_gpus=sum(node.free for node in candidates),
        placeable_replicas=sum(math.floor(node.free / per_replica) for node in candidates),
    )


def _count(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def blocked_upgrade(
    spec: ModelDeploymentSpec, rollout: Rollout, nodes: Iterable[NodeGPUs]
) -> str | None:
    """Why the rollout must wait for GPUs, or None when it can go ahead.

    Only a new RayCluster can stall: KubeRay starts it beside the serving one, and
    its worker pods sit Pending while no node has their GPUs, so the upgrade never
    completes. The operator holds such a change (the serving cluster is left as it
    is) until every GPU pool can place the replicas it starts. A new RayService has
    no old one to keep and goes ahead (its Pending pods are reported as
    unschedulable); an in-place change adds at most the replicas of a raised
    minimum, next to the serving ones. A pool that no GPU node matches at all is
    not held either: its nodes come from a cluster autoscaler (scaled to zero), which
    adds them for the Pending pods.
    """
    if rollout.kind != NEW_CLUSTER:
        return None
    nodes = list(nodes)
    short = [
        upgrade
        for pool in spec.node_pools
        if (upgrade := pool_upgrade(pool, spec, rollout, nodes)) is not None
        and upgrade.nodes > 0
        and not upgrade.enough
    ]
    if not short:
        return None
    missing = "; ".join(
        f"pool {u.pool} needs {_count(u.gpus_needed, 'free GPU')} "
        f"({_count(u.replicas_needed, 'replica')} × {_count(u.gpus_per_replica, 'GPU')}) "
        f"while its {_count(u.nodes, 'node')} {'has' if u.nodes == 1 else 'have'} "
        f"{u.free_gpus} free (room for {_count(u.placeable_replicas, 'replica')})"
        for u in short
    )
    return (
        f"the change needs a new RayCluster beside the running one, and {missing}. The "
        "RayService stays on the previous spec until the GPUs are free, then the change "
        "is applied: free GPUs on the pool's nodes, add nodes, or lower the pool's "
        "minReplicas (or, where a cluster autoscaler adds nodes, annotate the object "
        f'with {SKIP_CAPACITY_ANNOTATION}: "true")'
    )
