"""ModelDeployment → the Kubernetes objects the operator owns: a RayService and a Service.

Free functions from a parsed `ModelDeployment` to plain dicts, shaped as the apiserver
takes them (KubeRay v1.5 field names for `ray.io/v1`). The operator applies them with
server-side apply; `modelfleet render` prints them. Pure: no Kubernetes, Kopf or Ray
imports, so the objects can be unit-tested with tables and compared with golden files.

Secrets never travel in these objects: API keys and model-source credentials are
referenced through `secretKeyRef`/`envFrom`, and the ServingConfig only names the
environment variable that holds the keys.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import yaml
from modelfleet_serving.autoscaling_ray import application_policy_for
from modelfleet_serving.config import ServingConfig

from modelfleet_operator import __version__
from modelfleet_operator.api import v1alpha1
from modelfleet_operator.api.v1alpha1 import ModelDeployment, NodePoolSpec
from modelfleet_operator.names import (
    ANNOTATION_SPEC_HASH,
    LABEL_DEPLOYMENT,
    LABEL_MANAGED_BY,
    LABEL_POOL,
    MANAGED_BY,
    RAY_API_VERSION,
    RAY_SERVE_LABEL,
    RAY_SERVICE_KIND,
)
from modelfleet_operator.translate import pool_resource_name, serving_config

Object = dict[str, Any]

# The Ray release the image carries; KubeRay uses it to pick the autoscaler's version.
# Keep it equal to the `ray[serve]` pin of the project.
RAY_VERSION = "2.60.0"

# The Serve application inside the RayService, and how Ray Serve builds it.
APP_NAME = "modelfleet"
APP_IMPORT_PATH = "modelfleet_serving.app:app_builder"
SERVE_PORT = 8000
# Seconds a Ray worker pod stays idle before the Ray autoscaler removes it.
WORKER_IDLE_TIMEOUT_S = 60

# The Ray image when neither the spec nor the operator's --image names one: the
# project's image of the same version, which carries Ray, vLLM and modelfleet_serving.
DEFAULT_IMAGE = f"modelfleet/modelfleet:{__version__}"

# Where pvc:// sources are mounted in the worker pods (read-only).
PVC_MOUNT_ROOT = "/mnt/modelfleet"


@dataclass(frozen=True)
class PVCMount:
    """One PersistentVolumeClaim mounted read-only into the Ray workers."""

    claim: str
    volume: str

    @property
    def mount_path(self) -> str:
        """Where the claim's files appear inside the containers."""
        return f"{PVC_MOUNT_ROOT}/{self.claim}"


def namespace_of(md: ModelDeployment, default: str) -> str:
    """The namespace of the ModelDeployment, or `default` when its metadata has none."""
    return md.metadata.namespace or default


def openai_service_name(name: str) -> str:
    """Name of the stable Service in front of the OpenAI API."""
    return f"{name}-openai"


def endpoint(name: str, namespace: str) -> str:
    """Base URL of the OpenAI-compatible API, as clients inside the cluster use it."""
    return f"http://{openai_service_name(name)}.{namespace}.svc:{SERVE_PORT}/v1"


def pvc_mounts(md: ModelDeployment) -> list[PVCMount]:
    """The claims named by pvc:// sources (model weights, Triton repository), sorted."""
    sources = [md.spec.model.source]
    if md.spec.engine.triton is not None:
        sources.append(md.spec.engine.triton.repository)
    claims = sorted({s.removeprefix("pvc://").split("/", 1)[0] for s in sources if _is_pvc(s)})
    return [PVCMount(claim=claim, volume=f"pvc-{i}") for i, claim in enumerate(claims)]


def _is_pvc(source: str) -> bool:
    return source.startswith("pvc://")


def _local_path(source: str) -> str:
    """pvc://claim/path → file:// URL of the same files under the mount root."""
    claim_and_path = source.removeprefix("pvc://")
    return f"file://{PVC_MOUNT_ROOT}/{claim_and_path}"


def cluster_serving_config(md: ModelDeployment) -> ServingConfig:
    """The ServingConfig the replicas get in the cluster.

    pvc:// sources are rewritten to the files the workers see under the mount, so the
    serving app reads local files and never needs Kubernetes access.
    """
    config = serving_config(md, in_cluster=True)
    model = config.model
    if _is_pvc(model.source):
        model = model.model_copy(update={"source": _local_path(model.source)})
    engine = config.engine
    triton = engine.triton
    if triton is not None and triton.repository is not None and _is_pvc(triton.repository):
        triton = triton.model_copy(update={"repository": _local_path(triton.repository)})
        engine = engine.model_copy(update={"triton": triton})
    return config.model_copy(update={"model": model, "engine": engine})


def serve_config(md: ModelDeployment) -> str:
    """The RayService's `serveConfigV2`: one Serve application built from the ServingConfig.

    The application-level autoscaling policy sees every pool at once: it scales the
    preferred pool up first and the least preferred down first. Ray accepts it only
    from a config like this one, which is why it is set here and not in the app.
    """
    config = cluster_serving_config(md)
    document = {
        "proxy_location": "EveryNode",
        "http_options": {"host": "0.0.0.0", "port": SERVE_PORT},
        "applications": [
            {
                "name": APP_NAME,
                "route_prefix": "/",
                "import_path": APP_IMPORT_PATH,
                # Unset (None) fields are left out: the app fills in the same defaults,
                # and the RayService does not churn when the config gains a field.
                "args": {"config": config.model_dump(mode="json", exclude_none=True)},
                "autoscaling_policy": application_policy_for(config),
            }
        ],
    }
    return yaml.safe_dump(document, sort_keys=False)


def labels(md: ModelDeployment, component: str) -> dict[str, str]:
    """Labels of every object rendered for `md`."""
    return {
        "app.kubernetes.io/name": "modelfleet",
        "app.kubernetes.io/instance": md.metadata.name,
        "app.kubernetes.io/component": component,
        LABEL_MANAGED_BY: MANAGED_BY,
        LABEL_DEPLOYMENT: md.metadata.name,
    }


def owner_reference(md: ModelDeployment, uid: str) -> dict[str, Any]:
    """The reference that makes garbage collection delete a child with its ModelDeployment."""
    return {
        "apiVersion": v1alpha1.API_VERSION,
        "kind": v1alpha1.KIND,
        "name": md.metadata.name,
        "uid": uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _quantity_gib(gib: float) -> str:
    """A memory quantity: whole GiB as `NGi`, anything else in MiB."""
    return f"{int(gib)}Gi" if float(gib).is_integer() else f"{round(gib * 1024)}Mi"


def _quantity_cpu(cores: float) -> str:
    """A CPU quantity: whole cores as `N`, anything else in millicores."""
    return str(int(cores)) if float(cores).is_integer() else f"{round(cores * 1000)}m"


def _env(md: ModelDeployment, config: ServingConfig) -> list[dict[str, Any]]:
    """Environment of every Ray container: the API keys, read from the user's Secret."""
    ref = md.spec.serving.api_key_secret_ref
    if ref is None or config.api_keys_env is None:
        return []
    return [
        {
            "name": config.api_keys_env,
            "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}},
        }
    ]


def _env_from(md: ModelDeployment) -> list[dict[str, Any]]:
    """Model-source credentials: every key of the Secret becomes an environment variable."""
    secret = md.spec.model.credentials_secret_ref
    return [] if secret is None else [{"secretRef": {"name": secret}}]


def _container(
    name: str,
    image: str,
    resources: dict[str, Any],
    env: list[dict[str, Any]],
    env_from: list[dict[str, Any]],
    **extra: Any,
) -> dict[str, Any]:
    container: dict[str, Any] = {"name": name, "image": image, "resources": resources}
    if env:
        container["env"] = env
    if env_from:
        container["envFrom"] = env_from
    container.update({k: v for k, v in extra.items() if v})
    return container


def _head_group(md: ModelDeployment, image: str, env: list[Any], env_from: list[Any]) -> Object:
    # The head runs the GCS, the dashboard, the Serve controller and the OpenAI ingress,
    # never an engine: it has no GPU and no pool resource, so LLM replicas avoid it.
    resources = {
        "requests": {"cpu": "1", "memory": "4Gi"},
        "limits": {"cpu": "2", "memory": "4Gi"},
    }
    ports = [
        {"name": "gcs-server", "containerPort": 6379},
        {"name": "dashboard", "containerPort": 8265},
        {"name": "client", "containerPort": 10001},
        {"name": "serve", "containerPort": SERVE_PORT},
    ]
    return {
        "rayStartParams": {"dashboard-host": "0.0.0.0", "num-gpus": "0"},
        "template": {
            "metadata": {"labels": {LABEL_DEPLOYMENT: md.metadata.name}},
            "spec": {
                "containers": [_container("ray-head", image, resources, env, env_from, ports=ports)]
            },
        },
    }


def _worker_group(
    md: ModelDeployment,
    pool: NodePoolSpec,
    image: str,
    env: list[Any],
    env_from: list[Any],
    mounts: list[PVCMount],
) -> Object:
    amounts: dict[str, str] = {"cpu": _quantity_cpu(pool.cpu)}
    if pool.memory_gib is not None:
        amounts["memory"] = _quantity_gib(pool.memory_gib)
    if pool.gpu is not None:
        gpus = md.spec.engine.tensor_parallel_size * md.spec.engine.pipeline_parallel_size
        amounts["nvidia.com/gpu"] = str(gpus)
    pod_spec: dict[str, Any] = {
        "containers": [
            _container(
                "ray-worker",
                image,
                {"requests": dict(amounts), "limits": dict(amounts)},
                env,
                env_from,
                volumeMounts=[
                    {"name": m.volume, "mountPath": m.mount_path, "readOnly": True} for m in mounts
                ],
            )
        ]
    }
    if pool.node_selector:
        pod_spec["nodeSelector"] = dict(pool.node_selector)
    if pool.tolerations:
        pod_spec["tolerations"] = [
            t.model_dump(by_alias=True, exclude_none=True) for t in pool.tolerations
        ]
    if mounts:
        pod_spec["volumes"] = [
            {
                "name": m.volume,
                "persistentVolumeClaim": {"claimName": m.claim, "readOnly": True},
            }
            for m in mounts
        ]
    # One worker pod holds one replica of the pool's Serve deployment: it advertises one
    # unit of the pool's custom resource, which each replica requests. KubeRay passes the
    # value through a shell, hence the quoted JSON.
    pool_resources = json.dumps({pool_resource_name(pool.name): 1})
    # `replicas` is left out on purpose: the Ray autoscaler owns it between the bounds.
    return {
        "groupName": pool.name,
        "minReplicas": pool.min_replicas,
        "maxReplicas": pool.max_replicas,
        "rayStartParams": {"resources": f"'{pool_resources}'"},
        "template": {
            "metadata": {"labels": {LABEL_DEPLOYMENT: md.metadata.name, LABEL_POOL: pool.name}},
            "spec": pod_spec,
        },
    }


def ray_service_spec(md: ModelDeployment, image: str) -> Object:
    """The RayService spec: a CPU head group, one worker group per pool, the Serve app."""
    config = cluster_serving_config(md)
    env, env_from = _env(md, config), _env_from(md)
    mounts = pvc_mounts(md)
    return {
        "serveConfigV2": serve_config(md),
        "rayClusterConfig": {
            "rayVersion": RAY_VERSION,
            "enableInTreeAutoscaling": True,
            "autoscalerOptions": {
                "upscalingMode": "Default",
                # Serve already waited the spec's downscale delay before removing a
                # replica; its GPU pod then goes after a short idle time of its own
                # instead of waiting that delay a second time.
                "idleTimeoutSeconds": WORKER_IDLE_TIMEOUT_S,
            },
            "headGroupSpec": _head_group(md, image, env, env_from),
            "workerGroupSpecs": [
                _worker_group(md, pool, image, env, env_from, mounts) for pool in md.spec.node_pools
            ],
        },
    }


def spec_hash(obj: Object) -> str:
    """Hash of what the operator sets on a child (labels and spec), for drift detection.

    ownerReferences and the hash annotation itself are left out, so `modelfleet render`
    (which knows no owner uid) and the operator compute the same value.
    """
    meta = obj["metadata"]
    essence = {"labels": meta.get("labels", {}), "spec": obj.get("spec")}
    digest = hashlib.sha256(json.dumps(essence, sort_keys=True).encode()).hexdigest()
    return digest[:16]


def _finish(obj: Object, md: ModelDeployment, owner_uid: str | None) -> Object:
    obj["metadata"]["annotations"] = {ANNOTATION_SPEC_HASH: spec_hash(obj)}
    if owner_uid is not None:
        obj["metadata"]["ownerReferences"] = [owner_reference(md, owner_uid)]
    return obj


def ray_service(
    md: ModelDeployment, *, image: str, namespace: str, owner_uid: str | None = None
) -> Object:
    """The RayService for `md`, named like it, in `namespace`."""
    obj: Object = {
        "apiVersion": RAY_API_VERSION,
        "kind": RAY_SERVICE_KIND,
        "metadata": {
            "name": md.metadata.name,
            "namespace": namespace,
            "labels": labels(md, "ray-service"),
        },
        "spec": ray_service_spec(md, image),
    }
    return _finish(obj, md, owner_uid)


def openai_service(md: ModelDeployment, *, namespace: str, owner_uid: str | None = None) -> Object:
    """The `<name>-openai` Service: a stable endpoint in front of the Ray Serve proxies.

    It selects the Ray pods KubeRay marks as serving, across RayCluster generations,
    so the address survives the cluster swaps of a RayService upgrade.
    """
    obj: Object = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": openai_service_name(md.metadata.name),
            "namespace": namespace,
            "labels": labels(md, "openai-endpoint"),
        },
        "spec": {
            "type": "ClusterIP",
            "selector": {LABEL_DEPLOYMENT: md.metadata.name, RAY_SERVE_LABEL: "true"},
            "ports": [
                {"name": "http", "port": SERVE_PORT, "targetPort": SERVE_PORT, "protocol": "TCP"}
            ],
        },
    }
    return _finish(obj, md, owner_uid)


def render(
    md: ModelDeployment, *, image: str, namespace: str, owner_uid: str | None = None
) -> list[Object]:
    """Every object the operator owns for `md`, in the order it applies them.

    `image` is the Ray image to use when the spec names none; `namespace` applies when
    the ModelDeployment's metadata has none; `owner_uid` (the ModelDeployment's uid,
    unknown before it exists) adds the ownerReferences.
    """
    ns = namespace_of(md, namespace)
    chosen_image = md.spec.image or image
    return [
        ray_service(md, image=chosen_image, namespace=ns, owner_uid=owner_uid),
        openai_service(md, namespace=ns, owner_uid=owner_uid),
    ]
