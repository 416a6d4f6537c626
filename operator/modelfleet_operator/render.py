"""ModelDeployment → the Kubernetes objects the operator owns: a RayService and a Service.

Free functions from a parsed `ModelDeployment` to plain dicts, shaped as the apiserver
takes them (KubeRay v1.5 field names for `ray.io/v1`). The operator applies them with
server-side apply; `modelfleet render` prints them. Pure: no Kubernetes, Kopf or Ray
imports, so the objects can be unit-tested with tables and compared with golden files.

`render` turns the spec into the in-cluster ServingConfig once (`translate`) and hands
that one object to every builder that needs it, so the RayService's Serve application
and its worker groups cannot disagree about a pool.

Secrets never travel in these objects: API keys and model-source credentials are
referenced through `secretKeyRef`/`envFrom`, and the ServingConfig only names the
environment variable that holds the keys.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
from typing import Any

import yaml
from modelfleet_serving.autoscaling_ray import application_policy_for
from modelfleet_serving.config import (
    API_KEYS_DIR,
    API_KEYS_FILE,
    PoolConfig,
    ServingConfig,
    application_config,
)
from modelfleet_serving.serve_env import CLUSTER_SERVE_ENV

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
from modelfleet_operator.translate import PVCMount, pvc_mounts, serving_config

Object = dict[str, Any]

# The Ray release the image carries; KubeRay uses it to pick the autoscaler's version.
# Keep it equal to the `ray[serve]` pin of the project.
RAY_VERSION = "2.60.0"

# The Serve application inside the RayService, and how Ray Serve builds it.
APP_NAME = "modelfleet"
SERVE_PORT = 8000
# Ray's dashboard (job and Serve REST APIs) and its agent, which KubeRay calls to deploy
# the serveConfigV2 and read the applications' status.
DASHBOARD_PORT = 8265
DASHBOARD_AGENT_PORT = 52365
# The pods of the KubeRay operator, as its Helm chart labels them.
KUBERAY_OPERATOR_POD_LABELS = {"app.kubernetes.io/name": "kuberay-operator"}
# Seconds a Ray worker pod stays idle before the Ray autoscaler removes it.
WORKER_IDLE_TIMEOUT_S = 60
# The Ray autoscaler's container in the head pod.
AUTOSCALER_RESOURCES = {
    "requests": {"cpu": "100m", "memory": "512Mi"},
    "limits": {"cpu": "500m", "memory": "512Mi"},
}

# The Ray image when neither the spec nor the operator's --image names one: the
# project's image of the same version, which carries Ray, vLLM and modelfleet_serving.
DEFAULT_IMAGE = f"modelfleet/modelfleet:{__version__}"


def namespace_of(md: ModelDeployment, default: str) -> str:
    """The namespace of the ModelDeployment, or `default` when its metadata has none."""
    return md.metadata.namespace or default


def openai_service_name(name: str) -> str:
    """Name of the stable Service in front of the OpenAI API."""
    return f"{name}-openai"


def endpoint(name: str, namespace: str) -> str:
    """Base URL of the OpenAI-compatible API, as clients inside the cluster use it."""
    return f"http://{openai_service_name(name)}.{namespace}.svc:{SERVE_PORT}/v1"


def serve_config(config: ServingConfig) -> str:
    """The RayService's `serveConfigV2`: one Serve application built from `config`.

    `config` is the in-cluster ServingConfig (`serving_config(md, in_cluster=True)`).
    The application-level autoscaling policy sees every pool at once: it scales the
    preferred pool up first and the least preferred down first. Ray accepts it only
    from a config like this one, which is why it is set here and not in the app.
    """
    # A change of adapters alone reaches the running replicas through reconfigure():
    # KubeRay hands Serve the new config, and Serve keeps replicas whose arguments did
    # not change.
    application = application_config(config, APP_NAME) | {
        "autoscaling_policy": application_policy_for(config),
    }
    document = {
        "proxy_location": "EveryNode",
        "http_options": {"host": "0.0.0.0", "port": SERVE_PORT},
        "applications": [application],
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
    """Environment of every Ray container: the Serve settings the data plane was
    measured with (serve_env.py). The API keys come as a file (`_api_keys_volume`)."""
    return [{"name": name, "value": value} for name, value in sorted(CLUSTER_SERVE_ENV.items())]


API_KEYS_VOLUME = "api-keys"


def _api_keys_volume(md: ModelDeployment) -> list[dict[str, Any]]:
    """The user's API-key Secret as a volume: the one key, as the file the front door
    re-reads (config.API_KEYS_FILE), so a rotated key needs no pod restart."""
    ref = md.spec.serving.api_key_secret_ref
    if ref is None:
        return []
    items = [{"key": ref.key, "path": API_KEYS_FILE.rsplit("/", 1)[1]}]
    return [{"name": API_KEYS_VOLUME, "secret": {"secretName": ref.name, "items": items}}]


def _api_keys_mount(md: ModelDeployment) -> list[dict[str, Any]]:
    if md.spec.serving.api_key_secret_ref is None:
        return []
    return [{"name": API_KEYS_VOLUME, "mountPath": API_KEYS_DIR, "readOnly": True}]


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
        # A copy per container: one list shared by several would be written as a
        # YAML anchor and alias, which kubectl accepts but people reading it do not.
        container["env"] = copy.deepcopy(env)
    if env_from:
        container["envFrom"] = copy.deepcopy(env_from)
    container.update({k: v for k, v in extra.items() if v})
    return container


def _head_group(md: ModelDeployment, image: str, env: list[Any], env_from: list[Any]) -> Object:
    # The head runs the GCS, the dashboard, the Serve controller and the OpenAI ingress,
    # never an engine: it has no GPU and no pool resource, so LLM replicas avoid it.
    # No CPU limit: its processes are bursty and latency-sensitive, and a quota would
    # throttle the front door; its memory is capped, like any pod that must not grow.
    head = md.spec.head
    memory = _quantity_gib(head.memory_gib)
    resources = {
        "requests": {"cpu": _quantity_cpu(head.cpu), "memory": memory},
        "limits": {"memory": memory},
    }
    ports = [
        {"name": "gcs-server", "containerPort": 6379},
        {"name": "dashboard", "containerPort": DASHBOARD_PORT},
        {"name": "client", "containerPort": 10001},
        {"name": "serve", "containerPort": SERVE_PORT},
    ]
    return {
        # Ray's logical CPUs on the head, stated because there is no CPU limit for
        # KubeRay to take them from: enough for the front door (a tenth of a core).
        "rayStartParams": {
            "dashboard-host": "0.0.0.0",
            "num-cpus": str(max(1, math.floor(head.cpu))),
            "num-gpus": "0",
        },
        "template": {
            "metadata": {"labels": {LABEL_DEPLOYMENT: md.metadata.name}},
            "spec": {
                "containers": [
                    _container(
                        "ray-head",
                        image,
                        resources,
                        env,
                        env_from,
                        ports=ports,
                        volumeMounts=_api_keys_mount(md),
                    )
                ],
                **({"volumes": _api_keys_volume(md)} if _api_keys_volume(md) else {}),
            },
        },
    }


def _ray_resources(resources: dict[str, float]) -> str:
    """Custom Ray resources as `ray start --resources` takes them, through KubeRay.

    Ray reads whole amounts as integers or floats alike; they are written as integers,
    the way counts of a resource are written by hand. KubeRay passes the value through
    a shell, hence the quoted JSON.
    """
    amounts = {name: int(v) if float(v).is_integer() else v for name, v in resources.items()}
    return f"'{json.dumps(amounts)}'"


def _worker_group(
    md: ModelDeployment,
    node_pool: NodePoolSpec,
    pool: PoolConfig,
    image: str,
    env: list[Any],
    env_from: list[Any],
    mounts: list[PVCMount],
) -> Object:
    # One worker pod holds one replica of the pool's Serve deployment, so the pod gets
    # what one replica asks Ray for; memory and placement are the node pool's own.
    amounts: dict[str, str] = {"cpu": _quantity_cpu(pool.num_cpus)}
    if node_pool.memory_gib is not None:
        amounts["memory"] = _quantity_gib(node_pool.memory_gib)
    if pool.num_gpus:
        amounts["nvidia.com/gpu"] = str(pool.num_gpus)
    pod_spec: dict[str, Any] = {
        "containers": [
            _container(
                "ray-worker",
                image,
                {"requests": dict(amounts), "limits": dict(amounts)},
                env,
                env_from,
                # The front door may run on any Ray node, so every pod gets the keys.
                volumeMounts=[
                    {"name": m.volume, "mountPath": m.mount_path, "readOnly": True} for m in mounts
                ]
                + _api_keys_mount(md),
            )
        ]
    }
    if node_pool.node_selector:
        pod_spec["nodeSelector"] = dict(node_pool.node_selector)
    if node_pool.tolerations:
        pod_spec["tolerations"] = [
            t.model_dump(by_alias=True, exclude_none=True) for t in node_pool.tolerations
        ]
    volumes = [
        {"name": m.volume, "persistentVolumeClaim": {"claimName": m.claim, "readOnly": True}}
        for m in mounts
    ] + _api_keys_volume(md)
    if volumes:
        pod_spec["volumes"] = volumes
    # The pod advertises the pool's custom resources, which each replica requests, so
    # the pool's replicas land on its pods and nowhere else.
    # `replicas` is left out on purpose: the Ray autoscaler owns it between the bounds.
    return {
        "groupName": pool.name,
        "minReplicas": pool.min_replicas,
        "maxReplicas": pool.max_replicas,
        "rayStartParams": {"resources": _ray_resources(pool.resources)},
        "template": {
            "metadata": {"labels": {LABEL_DEPLOYMENT: md.metadata.name, LABEL_POOL: pool.name}},
            "spec": pod_spec,
        },
    }


def ray_service_spec(md: ModelDeployment, config: ServingConfig, image: str) -> Object:
    """The RayService spec: a CPU head group, one worker group per pool, the Serve app.

    `config` is the in-cluster ServingConfig of `md`; the worker groups give each pod
    what one replica of its pool asks for there.
    """
    env, env_from = _env(md, config), _env_from(md)
    mounts = pvc_mounts(md)
    pools = {pool.name: pool for pool in config.pools}
    return {
        "serveConfigV2": serve_config(config),
        "rayClusterConfig": {
            "rayVersion": RAY_VERSION,
            "enableInTreeAutoscaling": True,
            "autoscalerOptions": {
                "upscalingMode": "Default",
                # Serve already waited the spec's downscale delay before removing a
                # replica; its GPU pod then goes after a short idle time of its own
                # instead of waiting that delay a second time.
                "idleTimeoutSeconds": WORKER_IDLE_TIMEOUT_S,
                # The autoscaler sidecar is idle between decisions: a small request
                # (KubeRay's default reserves half a core) with room to burst.
                "resources": AUTOSCALER_RESOURCES,
            },
            "headGroupSpec": _head_group(md, image, env, env_from),
            "workerGroupSpecs": [
                _worker_group(md, node_pool, pools[node_pool.name], image, env, env_from, mounts)
                for node_pool in md.spec.node_pools
            ],
        },
    }


def spec_hash(obj: Object) -> str:
    """Hash of what the operator sets on a child (labels and spec), for drift detection.

    ownerReferences and the hash annotation itself are left out, so `modelfleet render`
    (which knows no owner uid) and the operator compute the same value. A ConfigMap has
    `data` where other objects have `spec`: it is hashed in the place of the spec, so a
    change of the data counts as a change of the object.
    """
    meta = obj["metadata"]
    content = obj["spec"] if "spec" in obj else obj.get("data")
    essence = {"labels": meta.get("labels", {}), "spec": content}
    digest = hashlib.sha256(json.dumps(essence, sort_keys=True).encode()).hexdigest()
    return digest[:16]


def finish_child(obj: Object, md: ModelDeployment, owner_uid: str | None) -> Object:
    """Complete a child of `md`: the spec-hash annotation and, with a uid, the owner.

    Annotations the object already carries are kept. `owner_uid` is None where the
    ModelDeployment does not exist yet (`modelfleet render`).
    """
    annotations = obj["metadata"].setdefault("annotations", {})
    annotations[ANNOTATION_SPEC_HASH] = spec_hash(obj)
    if owner_uid is not None:
        obj["metadata"]["ownerReferences"] = [owner_reference(md, owner_uid)]
    return obj


def ray_service(
    md: ModelDeployment,
    config: ServingConfig,
    *,
    image: str,
    namespace: str,
    owner_uid: str | None = None,
) -> Object:
    """The RayService for `md`, named like it, in `namespace`, serving `config`.

    `config` is the in-cluster ServingConfig of `md` (`serving_config(md,
    in_cluster=True)`).
    """
    obj: Object = {
        "apiVersion": RAY_API_VERSION,
        "kind": RAY_SERVICE_KIND,
        "metadata": {
            "name": md.metadata.name,
            "namespace": namespace,
            "labels": labels(md, "ray-service"),
        },
        "spec": ray_service_spec(md, config, image),
    }
    return finish_child(obj, md, owner_uid)


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
    return finish_child(obj, md, owner_uid)


def network_policy_name(name: str) -> str:
    """The name of the NetworkPolicy around a ModelDeployment's Ray pods."""
    return f"{name}-ray"


def network_policy(md: ModelDeployment, *, namespace: str, owner_uid: str | None = None) -> Object:
    """The NetworkPolicy around the Ray pods of `md`.

    Ray's ports run code for whoever reaches them (the dashboard's job API on 8265, the
    GCS on 6379, the client server on 10001: the "ShadowRay" attacks), so only the
    OpenAI port (8000, which also serves /metrics) is open to every client. Everything
    else is kept to the Ray pods of this ModelDeployment (the GCS, the object store, the
    replicas' own APIs on ports Ray picks) and to the KubeRay operator on the dashboard
    and its agent, which it calls to deploy the Serve config. It takes effect where the
    cluster's network plugin enforces NetworkPolicies.
    """
    ray_pods = {"matchLabels": {LABEL_DEPLOYMENT: md.metadata.name}}
    obj: Object = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {
            "name": network_policy_name(md.metadata.name),
            "namespace": namespace,
            "labels": labels(md, "network-policy"),
        },
        "spec": {
            "podSelector": ray_pods,
            "policyTypes": ["Ingress"],
            "ingress": [
                {"ports": [{"protocol": "TCP", "port": SERVE_PORT}]},
                {"from": [{"podSelector": ray_pods}]},
                {
                    "from": [
                        {
                            "namespaceSelector": {},
                            "podSelector": {"matchLabels": dict(KUBERAY_OPERATOR_POD_LABELS)},
                        }
                    ],
                    "ports": [
                        {"protocol": "TCP", "port": DASHBOARD_PORT},
                        {"protocol": "TCP", "port": DASHBOARD_AGENT_PORT},
                    ],
                },
            ],
        },
    }
    return finish_child(obj, md, owner_uid)


def render(
    md: ModelDeployment, *, image: str, namespace: str, owner_uid: str | None = None
) -> list[Object]:
    """Every object the operator owns for `md`, in the order it applies them.

    `image` is the Ray image to use when the spec names none; `namespace` applies when
    the ModelDeployment's metadata has none; `owner_uid` (the ModelDeployment's uid,
    unknown before it exists) adds the ownerReferences. The spec becomes a ServingConfig
    once, here, and every builder takes that one.
    """
    ns = namespace_of(md, namespace)
    chosen_image = md.spec.image or image
    config = serving_config(md, in_cluster=True)
    return [
        ray_service(md, config, image=chosen_image, namespace=ns, owner_uid=owner_uid),
        openai_service(md, namespace=ns, owner_uid=owner_uid),
        network_policy(md, namespace=ns, owner_uid=owner_uid),
    ]
