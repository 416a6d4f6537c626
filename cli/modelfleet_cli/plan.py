"""`modelfleet plan FILE`: will this ModelDeployment fit, and what does applying it do?

Per node pool it prints the weights per GPU, the KV-cache tokens a replica holds, how
many requests of maxModelLen tokens run at once, the headroom, the engine-flag lint,
and the verdict with the fix: the figures the admission webhook and the operator use
(modelfleet_operator.capacity), from the model's shape as `hub.resolve_shape` finds it
(spec.model.shape, the checkpoint's config.json and weights, or the name).

With a cluster (KUBECONFIG, or --context) it also reads the live ModelDeployment and
RayService of the same name and says which fields change, whether KubeRay applies the
change in place or builds a new RayCluster, and how many GPUs the rollout needs in
each pool against what that pool's nodes have free (allocatable minus requests).

Exit status: 0 when every pool fits, 1 when one does not, 2 when the file is invalid
(each problem is printed with where it is).
"""

from __future__ import annotations

import base64
import json
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from modelfleet_operator.api import v1alpha1
from modelfleet_operator.api.v1alpha1 import EngineKind, ModelDeployment, ModelSpec, NodePoolSpec
from modelfleet_operator.capacity import (
    SKIP_CAPACITY_ANNOTATION,
    CapacityFit,
    PoolCapacity,
    capacity_fit,
    cpu_pool_capacity,
    skip_requested,
)
from modelfleet_operator.checks import check
from modelfleet_operator.engine_flags import lint_extra_args
from modelfleet_operator.hub import ShapeLookup, resolve_shape
from modelfleet_operator.names import RAY_GROUP, RAY_GROUP_VERSION, RAY_SERVICE_PLURAL
from modelfleet_operator.render import DEFAULT_IMAGE, namespace_of, render
from modelfleet_operator.rollout import (
    PoolUpgrade,
    Rollout,
    node_gpus,
    pool_upgrade,
    ray_service_rollout,
    spec_changes,
)

EXIT_FITS = 0
EXIT_DOES_NOT_FIT = 1
EXIT_INVALID = 2


@dataclass(frozen=True)
class Live:
    """What the cluster holds for this ModelDeployment, and what applying the file does."""

    namespace: str
    found: bool
    changed: list[str]
    rollout: Rollout
    pools: dict[str, PoolUpgrade]
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Plan:
    """Everything `modelfleet plan` prints for one ModelDeployment."""

    md: ModelDeployment
    lookup: ShapeLookup
    fit: CapacityFit
    pools: list[PoolCapacity]
    lint: list[str]
    live: Live | None = None

    @property
    def fits(self) -> bool:
        """True when no pool is known not to fit."""
        return all(pool.fits for pool in self.pools)


def _token(model: ModelSpec, secret_token: str | None) -> str | None:
    """A hub token: the credentials Secret's HF_TOKEN, else $HF_TOKEN, else the one
    `huggingface-cli login` saved."""
    if secret_token:
        return secret_token
    if os.environ.get("HF_TOKEN"):
        return os.environ["HF_TOKEN"]
    home = os.environ.get("HF_HOME") or os.path.join(Path.home(), ".cache", "huggingface")
    try:
        return (Path(home) / "token").read_text().strip() or None
    except OSError:
        return None


def make_plan(md: ModelDeployment, lookup: ShapeLookup, live: Live | None = None) -> Plan:
    """The capacity of every pool (GPU and CPU) and the lint, for a parsed spec."""
    spec = md.spec
    fit = capacity_fit(spec, lookup.shape, note=lookup.note)
    by_name = {pool.pool: pool for pool in fit.pools}
    pools = []
    for pool in spec.node_pools:
        if pool.name in by_name:
            pools.append(by_name[pool.name])
        elif pool.gpu is None and lookup.shape is not None and spec.engine.kind is EngineKind.VLLM:
            pools.append(cpu_pool_capacity(lookup.shape, spec, pool))
        else:
            pools.append(_not_checked(pool, fit))
    lint = lint_extra_args(spec.engine.kind, spec.engine.extra_args)
    return Plan(md=md, lookup=lookup, fit=fit, pools=pools, lint=lint, live=live)


def _not_checked(pool: NodePoolSpec, fit: CapacityFit) -> PoolCapacity:
    """A pool whose capacity cannot be worked out (unknown model, Triton on CPU)."""
    why = fit.message if pool.gpu is not None else "a CPU pool of the Triton engine"
    return PoolCapacity(
        pool=pool.name,
        gpu_memory_gib=pool.gpu.memory_gib if pool.gpu is not None else 0.0,
        usable_gib=0.0,
        weights_gib_per_gpu=0.0,
        reserve_gib_per_gpu=0.0,
        kv_cache_gib_per_gpu=0.0,
        kv_cache_tokens=None,
        max_concurrent_at_max_len=None,
        headroom_gib=0.0,
        fits=True,
        message=f"not checked: {why}",
    )


def _verdict(pool: PoolCapacity, plan: Plan) -> str:
    if plan.lint:
        return "refused: engine.extraArgs has problems (see lint)"
    if pool.message.startswith("not checked"):
        return pool.message
    if pool.fits:
        return "fits"
    skipped = skip_requested(_annotations(plan.md))
    note = f" (deployed anyway: {SKIP_CAPACITY_ANNOTATION} is set)" if skipped else ""
    return f"does not fit{note}; {pool.fix}" if pool.fix else f"does not fit{note}"


def _annotations(md: ModelDeployment) -> Mapping[str, Any]:
    extra = md.metadata.model_extra or {}
    annotations = extra.get("annotations")
    return annotations if isinstance(annotations, Mapping) else {}


def pool_json(plan: Plan) -> list[dict[str, Any]]:
    """One object per pool, as `--output json` prints them."""
    shape = plan.lookup.shape
    objects = []
    spec_pools = {pool.name: pool for pool in plan.md.spec.node_pools}
    for pool in plan.pools:
        spec_pool = spec_pools[pool.pool]
        obj = pool.as_dict()
        obj |= {
            "kind": "gpu" if spec_pool.gpu is not None else "cpu",
            "fits": pool.fits and not plan.lint,
            "capacity_fits": pool.fits,
            "verdict": _verdict(pool, plan),
            "lint": plan.lint,
            "model": shape.name if shape is not None else None,
            "shape_from": shape.origin.value if shape is not None else None,
            "estimated": bool(shape is not None and shape.estimated),
            "shape_note": plan.lookup.note,
        }
        if pool.settings is not None:
            obj["max_num_batched_tokens"] = pool.settings.max_num_batched_tokens
            obj["cuda_graphs"] = not pool.settings.enforce_eager
        if plan.live is not None:
            upgrade = plan.live.pools.get(pool.pool)
            obj["live"] = {
                "found": plan.live.found,
                "changed": plan.live.changed,
                "rollout": plan.live.rollout.kind,
                "upgrade": upgrade.as_dict() if upgrade is not None else None,
                "notes": plan.live.notes,
            }
        objects.append(obj)
    return objects


def _gib(value: float) -> str:
    return f"{value:.1f} GiB"


def _pool_text(pool: PoolCapacity, spec_pool: NodePoolSpec, plan: Plan) -> list[str]:
    if pool.message.startswith("not checked"):
        return [f"pool {pool.pool}: {pool.message}"]
    engine = plan.md.spec.engine
    lines = []
    if spec_pool.gpu is not None:
        gpus = engine.tensor_parallel_size * engine.pipeline_parallel_size
        lines.append(
            f"pool {pool.pool}: {spec_pool.gpu.type}, {pool.gpu_memory_gib:g} GiB × "
            f"{engine.gpu_memory_utilization:g} = {pool.usable_gib:.1f} GiB usable per GPU, "
            f"{gpus} GPU{'s' if gpus > 1 else ''} per replica"
        )
        settings = pool.settings
        reserve_why = ""
        if settings is not None:
            graphs = "no CUDA graphs" if settings.enforce_eager else "CUDA graphs"
            reserve_why = (
                f" (activations of {settings.max_num_batched_tokens} batched tokens, "
                f"sampler of {settings.max_num_seqs} sequences, {graphs}, buffers)"
            )
        lines += [
            f"  weights per GPU       {_gib(pool.weights_gib_per_gpu)}",
            f"  reserve per GPU       {_gib(pool.reserve_gib_per_gpu)}{reserve_why}",
        ]
    else:
        lines.append(f"pool {pool.pool}: CPU, {pool.kv_cache_gib_per_gpu:g} GiB of KV cache")
    tokens = "unknown" if pool.kv_cache_tokens is None else f"{pool.kv_cache_tokens:,} tokens"
    lines.append(f"  KV cache              {_gib(pool.kv_cache_gib_per_gpu)} = {tokens}")
    if pool.max_concurrent_at_max_len is not None:
        lines.append(
            f"  at maxModelLen {engine.max_model_len:<6} {pool.max_concurrent_at_max_len} "
            "requests at once"
        )
    lines.append(
        f"  headroom              {_gib(pool.headroom_gib)} beyond one full-length request"
    )
    lines.append(f"  verdict               {_verdict(pool, plan)}")
    upgrade = plan.live.pools.get(pool.pool) if plan.live is not None else None
    if upgrade is not None:
        enough = "enough" if upgrade.enough else "NOT enough"
        lines.append(
            f"  rollout needs         {upgrade.replicas_needed} replica(s) × "
            f"{upgrade.gpus_per_replica} GPU = {upgrade.gpus_needed} GPUs; the pool's "
            f"{upgrade.nodes} node(s) have {upgrade.free_gpus} free (room for "
            f"{upgrade.placeable_replicas}): {enough}"
        )
    return lines


def plan_text(plan: Plan) -> str:
    """The plan for people."""
    md, shape = plan.md, plan.lookup.shape
    engine = md.spec.engine
    head = f"ModelDeployment {md.metadata.name} ({md.spec.model.source})"
    if shape is None:
        head += f": size unknown ({plan.fit.message})"
    else:
        head += f": {shape.name}, shape from {shape.origin.value}"
        if plan.lookup.note:
            head += f" ({plan.lookup.note})"
        if shape.estimated:
            head += "; the figures are ESTIMATED from the name: state spec.model.shape"
    lines = [
        head,
        f"engine: {engine.kind.value}, maxModelLen {engine.max_model_len}, maxNumSeqs "
        f"{engine.max_num_seqs}, tensorParallelSize {engine.tensor_parallel_size} × "
        f"pipelineParallelSize {engine.pipeline_parallel_size}",
        "",
    ]
    spec_pools = {pool.name: pool for pool in md.spec.node_pools}
    for pool in plan.pools:
        lines += [*_pool_text(pool, spec_pools[pool.pool], plan), ""]
    if not plan.pools:
        lines += [f"capacity: {plan.fit.message}", ""]
    lines.append("lint: " + ("engine.extraArgs are all known flags" if not plan.lint else ""))
    lines += [f"  {problem}" for problem in plan.lint]
    if plan.live is not None:
        live = plan.live
        lines.append("")
        if not live.found:
            lines.append(f"live: no ModelDeployment {md.metadata.name} in {live.namespace}")
        else:
            lines.append(f"live: ModelDeployment {live.namespace}/{md.metadata.name}")
            changed = ", ".join(live.changed) if live.changed else "nothing"
            lines.append(f"  changes: {changed}")
        lines.append(f"  rollout: {live.rollout.description}")
        lines += [f"  note: {note}" for note in live.notes]
    verdict = "fits" if plan.fits and not plan.lint else "does NOT fit"
    if plan.lint:
        verdict = "refused (engine flags)"
    lines += ["", f"verdict: {verdict}"]
    return "\n".join(lines) + "\n"


def read_file(file: Path) -> tuple[dict[str, Any] | None, list[str]]:
    """The object in `file`, or the reasons it cannot be read (with where)."""
    try:
        text = file.read_text()
    except OSError as error:
        return None, [f"cannot read {file}: {error.strerror or error}"]
    try:
        documents = [doc for doc in yaml.safe_load_all(text) if doc is not None]
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        return None, [f"{file}{where}: not YAML: {getattr(error, 'problem', error)}"]
    deployments = [
        doc for doc in documents if isinstance(doc, dict) and doc.get("kind") == v1alpha1.KIND
    ]
    if len(deployments) != 1:
        return None, [
            f"{file}: expected one {v1alpha1.KIND} object, found {len(deployments)} "
            f"among {len(documents)} document(s)"
        ]
    return deployments[0], []


# ----------------------------------------------------------------------- the cluster


class Cluster:
    """The reads `plan` makes, with the caller's credentials (kubernetes client)."""

    def __init__(self, context: str | None) -> None:
        from kubernetes import client, config

        # The client reads $KUBECONFIG when it is imported; read it now instead.
        files = os.environ.get("KUBECONFIG") or None
        config.load_kube_config(config_file=files, context=context)  # type: ignore[no-untyped-call]
        contexts, active = config.list_kube_config_contexts(config_file=files)  # type: ignore[no-untyped-call]
        chosen = next((c for c in contexts if c["name"] == context), active) if context else active
        self.default_namespace: str = (chosen or {}).get("context", {}).get(
            "namespace"
        ) or "default"
        self._api = client.ApiClient()
        self._core = client.CoreV1Api(self._api)
        self._custom = client.CustomObjectsApi(self._api)

    def _plain(self, obj: Any) -> Any:
        return self._api.sanitize_for_serialization(obj)  # type: ignore[no-untyped-call]

    def custom(self, group: str, version: str, namespace: str, plural: str, name: str) -> Any:
        """A custom object, or None when it (or its CRD) does not exist."""
        from kubernetes.client.exceptions import ApiException

        try:
            return self._custom.get_namespaced_custom_object(
                group, version, namespace, plural, name
            )
        except ApiException as error:
            if error.status == 404:
                return None
            raise

    def nodes(self) -> list[dict[str, Any]]:
        """Every Node."""
        return list(self._plain(self._core.list_node()).get("items") or [])

    def pods(self) -> list[dict[str, Any]]:
        """Every pod not finished, for the GPU requests on each node."""
        selector = "status.phase!=Succeeded,status.phase!=Failed"
        found = self._core.list_pod_for_all_namespaces(field_selector=selector)
        return list(self._plain(found).get("items") or [])

    def secret_value(self, namespace: str, name: str, key: str) -> str | None:
        """One key of a Secret, when the caller may read it."""
        from kubernetes.client.exceptions import ApiException

        try:
            secret = self._core.read_namespaced_secret(name, namespace)
        except ApiException:
            return None
        data = (secret.data or {}).get(key)
        return base64.b64decode(data).decode() if data else None


def compare_live(md: ModelDeployment, cluster: Cluster, namespace: str) -> Live:
    """The live objects against the file: changes, rollout kind, GPUs per pool."""
    from kubernetes.client.exceptions import ApiException

    name = md.metadata.name
    notes: list[str] = []
    live_obj = cluster.custom(v1alpha1.GROUP, v1alpha1.VERSION, namespace, v1alpha1.PLURAL, name)
    live_md: ModelDeployment | None = None
    if live_obj is not None:
        try:
            live_md = ModelDeployment.from_object(live_obj)
        except ValueError as error:
            notes.append(f"the live ModelDeployment does not parse: {error}")
    live_rs = cluster.custom(RAY_GROUP, RAY_GROUP_VERSION, namespace, RAY_SERVICE_PLURAL, name)
    # The live head's image, so that the image the operator was started with does not
    # count as a change.
    image = _live_image(live_rs) or DEFAULT_IMAGE
    desired = render(md, image=image, namespace=namespace)[0]
    if live_rs is None and live_md is not None:
        # A ModelDeployment whose RayService is not there (yet, or held back): compare
        # with what its live spec would deploy.
        notes.append(f"no RayService {name}: compared with what the live spec renders")
        live_rs = render(live_md, image=image, namespace=namespace)[0]
    rollout = ray_service_rollout(live_rs, desired)
    changed = spec_changes(live_md.spec, md.spec) if live_md is not None else []
    try:
        pods = cluster.pods()
        nodes = [node_gpus(node, pods) for node in cluster.nodes()]
    except ApiException as error:
        notes.append(
            f"cannot read nodes and pods ({error.status} {error.reason}): free GPUs unknown"
        )
        nodes = []
    live_pools = {p.name: p for p in live_md.spec.node_pools} if live_md is not None else {}
    upgrades = {}
    for pool in md.spec.node_pools:
        upgrade = pool_upgrade(pool, md.spec, rollout, nodes, live_pools.get(pool.name))
        if upgrade is not None:
            upgrades[pool.name] = upgrade
    return Live(namespace, live_obj is not None, changed, rollout, upgrades, notes)


def _live_image(ray_service: Mapping[str, Any] | None) -> str | None:
    """The image of a live RayService's head container."""
    cluster = ((ray_service or {}).get("spec") or {}).get("rayClusterConfig") or {}
    template = (cluster.get("headGroupSpec") or {}).get("template") or {}
    containers = (template.get("spec") or {}).get("containers") or []
    return containers[0].get("image") if containers else None


def plan(
    file: Path,
    *,
    output: str = "text",
    context: str | None = None,
    namespace: str | None = None,
    offline: bool = False,
) -> int:
    """Print the plan for the ModelDeployment in `file`; the exit status (see module)."""
    obj, errors = read_file(file)
    checked = check(obj) if obj is not None else None
    if checked is not None and checked.md is not None:
        # Flag problems are printed with the plan; the rest makes the file invalid.
        lint = set(lint_extra_args(checked.md.spec.engine.kind, checked.md.spec.engine.extra_args))
        errors = [p for p in checked.problems if p not in lint]
    elif checked is not None:
        errors = checked.problems
    if errors or checked is None or checked.md is None:
        print(f"modelfleet plan: {file} is not a valid ModelDeployment:", file=sys.stderr)
        for line in errors:
            print(f"  {line}", file=sys.stderr)
        return EXIT_INVALID
    md = checked.md
    cluster: Cluster | None = None
    if context is not None or os.environ.get("KUBECONFIG"):
        cluster = Cluster(context)
    target = (
        namespace or md.metadata.namespace or (cluster.default_namespace if cluster else "default")
    )
    secret_token = None
    if cluster is not None and md.spec.model.credentials_secret_ref:
        secret_token = cluster.secret_value(
            target, md.spec.model.credentials_secret_ref, "HF_TOKEN"
        )
    lookup = resolve_shape(
        md.spec.model, token=_token(md.spec.model, secret_token), fetch=not offline
    )
    live = compare_live(md, cluster, namespace_of(md, target)) if cluster is not None else None
    result = make_plan(md, lookup, live)
    if output == "json":
        print(json.dumps(pool_json(result), indent=2))
    else:
        sys.stdout.write(plan_text(result))
    if result.lint:
        return EXIT_INVALID
    return EXIT_FITS if result.fits else EXIT_DOES_NOT_FIT
