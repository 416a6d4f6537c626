"""The pure render: golden files for every example, and tables for its rules.

Regenerate the goldens after an intended change with
`MODELFLEET_UPDATE_GOLDEN=1 pytest tests/unit/test_render.py`, then review the diff.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

import pytest
import yaml
from modelfleet_cli.render import dump, render, render_documents
from modelfleet_operator.api import v1alpha1
from modelfleet_operator.api.v1alpha1 import ModelDeployment
from modelfleet_operator.monitoring import DASHBOARD_LABEL
from modelfleet_operator.names import (
    ANNOTATION_SPEC_HASH,
    LABEL_DEPLOYMENT,
    RAY_SERVE_LABEL,
    RAY_SERVICE_KIND,
    SERVICE_MONITOR_KIND,
)
from modelfleet_operator.render import (
    DEFAULT_IMAGE,
    endpoint,
    openai_service,
    ray_service,
)
from modelfleet_operator.render import render as render_objects
from modelfleet_operator.translate import pool_resource_name, serving_config
from modelfleet_serving.config import API_KEYS_DIR, API_KEYS_FILE, PVC_MOUNT_ROOT, ServingConfig
from modelfleet_serving.serve_env import CLUSTER_SERVE_ENV, SERVE_ENV

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "manifests" / "examples").glob("*.yaml"))
GOLDEN = ROOT / "tests" / "golden"
UPDATE = os.environ.get("MODELFLEET_UPDATE_GOLDEN") == "1"


def golden_path(example: Path) -> Path:
    """The golden file holding `modelfleet render` of an example."""
    return GOLDEN / f"{example.stem}.yaml"


DASHBOARDS = ROOT / "dashboards"


def without_dashboard_json(documents: str) -> str:
    """`documents` with each dashboards ConfigMap's JSON replaced by the file it equals.

    The dashboards' JSON is checked against dashboards/ here and by its own drift test;
    repeating a thousand lines of it in every golden would only hide the render's diff.
    """
    docs = list(yaml.safe_load_all(documents))
    for doc in docs:
        if DASHBOARD_LABEL in doc["metadata"].get("labels", {}):
            for name, text in doc["data"].items():
                assert text == (DASHBOARDS / name).read_text(), f"{name} differs from dashboards/"
                doc["data"][name] = f"<the content of dashboards/{name}>"
    return dump(docs)


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.stem)
def test_examples_match_goldens(example: Path) -> None:
    obj = yaml.safe_load(example.read_text())
    rendered = without_dashboard_json(render_documents(obj, image=None, namespace="default"))
    golden = golden_path(example)
    if UPDATE:
        golden.write_text(rendered)
    assert golden.exists(), f"no golden for {example.name}: run with MODELFLEET_UPDATE_GOLDEN=1"
    assert rendered == golden.read_text(), (
        f"render of {example.name} differs from {golden.name}; if intended, regenerate "
        "with MODELFLEET_UPDATE_GOLDEN=1 and review the diff"
    )


def test_every_golden_has_an_example() -> None:
    assert {p.stem for p in GOLDEN.glob("*.yaml")} == {p.stem for p in EXAMPLES}


BASE: dict[str, Any] = {
    "apiVersion": v1alpha1.API_VERSION,
    "kind": v1alpha1.KIND,
    "metadata": {"name": "m", "namespace": "team"},
    "spec": {
        "model": {"source": "hf://org/model", "servedName": "model"},
        "nodePools": [{"name": "gpu", "gpu": {"type": "L4", "memoryGiB": 24}, "cpu": 4}],
    },
}


def md(**spec: Any) -> ModelDeployment:
    """BASE with top-level spec keys replaced."""
    obj = copy.deepcopy(BASE)
    obj["spec"].update(spec)
    return ModelDeployment.from_object(obj)


def rayservice(
    model: ModelDeployment, image: str = "img", namespace: str = "team"
) -> dict[str, Any]:
    """The RayService of `model`, built from its in-cluster ServingConfig as `render` does."""
    return ray_service(
        model, serving_config(model, in_cluster=True), image=image, namespace=namespace
    )


def workers(model: ModelDeployment, image: str = "img") -> list[dict[str, Any]]:
    cluster = rayservice(model, image=image)["spec"]["rayClusterConfig"]
    groups: list[dict[str, Any]] = cluster["workerGroupSpecs"]
    return groups


def container(group: dict[str, Any]) -> dict[str, Any]:
    containers: list[dict[str, Any]] = group["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


@pytest.mark.parametrize(
    ("tp", "pp", "gpus"),
    [(1, 1, "1"), (2, 1, "2"), (4, 2, "8"), (1, 3, "3")],
)
def test_gpus_per_worker_are_tp_times_pp(tp: int, pp: int, gpus: str) -> None:
    model = md(engine={"tensorParallelSize": tp, "pipelineParallelSize": pp})
    resources = container(workers(model)[0])["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == gpus
    assert resources["requests"]["nvidia.com/gpu"] == gpus


@pytest.mark.parametrize(
    ("pool", "expected"),
    [
        ({"name": "c", "cpu": 1}, {"cpu": "1"}),
        ({"name": "c", "cpu": 0.5, "memoryGiB": 1.5}, {"cpu": "500m", "memory": "1536Mi"}),
        ({"name": "c", "cpu": 2, "memoryGiB": 8}, {"cpu": "2", "memory": "8Gi"}),
    ],
)
def test_cpu_pools_request_no_gpu(pool: dict[str, Any], expected: dict[str, str]) -> None:
    resources = container(workers(md(nodePools=[pool]))[0])["resources"]
    assert resources == {"requests": expected, "limits": expected}


def test_one_worker_group_per_pool_with_its_placement_and_bounds() -> None:
    pools = [
        {
            "name": "a",
            "gpu": {"type": "L20", "memoryGiB": 48},
            "nodeSelector": {"gpu": "l20"},
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}],
            "minReplicas": 2,
            "maxReplicas": 5,
        },
        {"name": "b", "gpu": {"type": "A100", "memoryGiB": 80}, "minReplicas": 0},
    ]
    groups = workers(md(nodePools=pools))
    assert [g["groupName"] for g in groups] == ["a", "b"]
    a, b = groups
    assert (a["minReplicas"], a["maxReplicas"]) == (2, 5)
    assert (b["minReplicas"], b["maxReplicas"]) == (0, 1)
    assert "replicas" not in a, "the autoscaler owns replicas; applying it would fight it"
    assert a["template"]["spec"]["nodeSelector"] == {"gpu": "l20"}
    assert a["template"]["spec"]["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists"}]
    assert "nodeSelector" not in b["template"]["spec"]
    for group in groups:
        advertised = json.loads(group["rayStartParams"]["resources"].strip("'"))
        assert advertised == {pool_resource_name(group["groupName"]): 1}


def test_replicas_request_what_their_worker_group_advertises() -> None:
    model = md(nodePools=[{"name": "x-y"}, {"name": "z", "gpu": {"type": "L4", "memoryGiB": 24}}])
    config = serving_config(model, in_cluster=True)
    for pool, group in zip(config.pools, workers(model), strict=True):
        advertised = json.loads(group["rayStartParams"]["resources"].strip("'"))
        assert set(pool.resources) == set(advertised)


def test_head_is_cpu_only_and_autoscaling_is_in_tree() -> None:
    spec = rayservice(md())["spec"]
    cluster = spec["rayClusterConfig"]
    assert cluster["enableInTreeAutoscaling"] is True
    head = cluster["headGroupSpec"]
    assert head["rayStartParams"]["num-gpus"] == "0"
    assert "nvidia.com/gpu" not in container(head)["resources"]["limits"]


@pytest.mark.parametrize(
    ("head", "requests", "limits", "ray_cpus"),
    [
        (None, {"cpu": "1", "memory": "4Gi"}, {"memory": "4Gi"}, "1"),
        ({"cpu": 0.5, "memoryGiB": 3}, {"cpu": "500m", "memory": "3Gi"}, {"memory": "3Gi"}, "1"),
        (
            {"cpu": 4.5, "memoryGiB": 16},
            {"cpu": "4500m", "memory": "16Gi"},
            {"memory": "16Gi"},
            "4",
        ),
    ],
)
def test_head_resources_come_from_the_spec_with_no_cpu_limit(
    head: dict[str, Any] | None, requests: dict[str, str], limits: dict[str, str], ray_cpus: str
) -> None:
    model = md() if head is None else md(head=head)
    group = rayservice(model)["spec"]["rayClusterConfig"]["headGroupSpec"]
    assert container(group)["resources"] == {"requests": requests, "limits": limits}
    # Without a CPU limit KubeRay has nothing to count Ray's CPUs from: they are stated.
    assert group["rayStartParams"]["num-cpus"] == ray_cpus


def test_the_autoscaler_sidecar_requests_little() -> None:
    options = rayservice(md())["spec"]["rayClusterConfig"]["autoscalerOptions"]
    assert options["resources"]["requests"] == {"cpu": "100m", "memory": "512Mi"}


def test_serve_config_carries_the_serving_config() -> None:
    model = md()
    serve = yaml.safe_load(rayservice(model)["spec"]["serveConfigV2"])
    (app,) = serve["applications"]
    assert app["import_path"] == "modelfleet_serving.app:app_builder"
    assert ServingConfig.model_validate(app["args"]["config"]) == serving_config(
        model, in_cluster=True
    )


def _serve_app(model: ModelDeployment) -> dict[str, Any]:
    (app,) = yaml.safe_load(rayservice(model)["spec"]["serveConfigV2"])["applications"]
    return app  # type: ignore[no-any-return]


ADAPTER = {"name": "support", "source": "pvc://adapters/support"}


def test_adapters_go_to_the_replicas_user_config_not_the_app_args() -> None:
    model = md(model={**BASE["spec"]["model"], "adapters": [ADAPTER]})
    app = _serve_app(model)
    assert "adapters" not in app["args"]["config"]
    assert app["args"]["config"]["engine"]["max_loras"] == 4  # the default, filled in
    pools = [p["name"] for p in BASE["spec"]["nodePools"]]
    assert app["deployments"] == [
        {
            "name": pool,
            "user_config": {
                "adapters": [
                    {"name": "support", "source": f"file://{PVC_MOUNT_ROOT}/adapters/support"}
                ]
            },
        }
        for pool in pools
    ]


def test_a_change_of_adapters_changes_only_the_user_config() -> None:
    """Serve then reconfigures the running replicas instead of replacing them."""
    spec_model = {**BASE["spec"]["model"]}
    one = _serve_app(md(model=spec_model | {"adapters": [ADAPTER]}))
    two = _serve_app(
        md(model=spec_model | {"adapters": [ADAPTER, {"name": "b", "source": "hf://o/b"}]})
    )
    none = _serve_app(md(model=spec_model, engine={"maxLoras": 4}))
    assert one["args"] == two["args"] == none["args"]
    assert one["deployments"] != two["deployments"]
    assert none["deployments"][0]["user_config"] == {"adapters": []}


def test_no_lora_no_user_config() -> None:
    app = _serve_app(md())
    assert "deployments" not in app and "max_loras" not in app["args"]["config"]["engine"]


def test_secrets_reach_pods_as_references_only() -> None:
    model = md(
        model={
            "source": "s3://bucket/model",
            "servedName": "model",
            "credentialsSecretRef": "s3-creds",
        },
        serving={"apiKeySecretRef": {"name": "keys", "key": "api-keys"}},
    )
    obj = rayservice(model)
    cluster = obj["spec"]["rayClusterConfig"]
    for group in [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]:
        c = container(group)
        # No secret value in the spec: the API keys are a mounted Secret volume, the
        # credentials an envFrom reference.
        assert [e["name"] for e in c["env"]] == sorted(CLUSTER_SERVE_ENV)
        assert c["envFrom"] == [{"secretRef": {"name": "s3-creds"}}]
        assert {"name": "api-keys", "mountPath": API_KEYS_DIR, "readOnly": True} in c[
            "volumeMounts"
        ]
        assert {
            "name": "api-keys",
            "secret": {"secretName": "keys", "items": [{"key": "api-keys", "path": "keys"}]},
        } in group["template"]["spec"]["volumes"]
    config = yaml.safe_load(obj["spec"]["serveConfigV2"])["applications"][0]["args"]["config"]
    # The front door re-reads the file, so a rotated key needs no restart.
    assert config["api_keys_file"] == API_KEYS_FILE
    assert config.get("api_keys_env") is None


def test_locally_the_keys_come_from_a_variable() -> None:
    model = md(serving={"apiKeySecretRef": {"name": "keys", "key": "api-keys"}})
    local = serving_config(model, in_cluster=False)
    assert (local.api_keys_env, local.api_keys_file) == ("MODELFLEET_API_KEYS", None)


def test_no_secret_no_env_but_the_serve_settings() -> None:
    c = container(workers(md())[0])
    assert c["env"] == [{"name": k, "value": v} for k, v in sorted(CLUSTER_SERVE_ENV.items())]
    assert "envFrom" not in c


def test_the_serve_settings_are_those_measured() -> None:
    # The benchmark runs `modelfleet serve`, whose settings are these plus the local
    # port range; a cluster adds HAProxy in front of the direct-ingress front doors.
    assert SERVE_ENV.items() <= CLUSTER_SERVE_ENV.items()
    assert CLUSTER_SERVE_ENV["RAY_SERVE_ENABLE_HA_PROXY"] == "1"


def test_pvc_sources_are_mounted_read_only_and_rewritten() -> None:
    model = md(
        model={"source": "pvc://weights/org/model", "servedName": "model"},
        engine={
            "kind": "triton",
            "triton": {"repository": "pvc://repo/triton", "modelName": "ensemble"},
        },
    )
    group = workers(model)[0]
    volumes = group["template"]["spec"]["volumes"]
    assert volumes == [
        {"name": "pvc-0", "persistentVolumeClaim": {"claimName": "repo", "readOnly": True}},
        {"name": "pvc-1", "persistentVolumeClaim": {"claimName": "weights", "readOnly": True}},
    ]
    assert container(group)["volumeMounts"] == [
        {"name": "pvc-0", "mountPath": f"{PVC_MOUNT_ROOT}/repo", "readOnly": True},
        {"name": "pvc-1", "mountPath": f"{PVC_MOUNT_ROOT}/weights", "readOnly": True},
    ]
    config = serving_config(model, in_cluster=True)
    assert config.model.source == f"file://{PVC_MOUNT_ROOT}/weights/org/model"
    assert config.engine.triton is not None
    assert config.engine.triton.repository == f"file://{PVC_MOUNT_ROOT}/repo/triton"


def test_a_local_config_keeps_pvc_sources() -> None:
    # Only the cluster mounts the claims; `modelfleet serve` gets the sources as written.
    model = md(model={"source": "pvc://weights/org/model", "servedName": "model"})
    assert serving_config(model, in_cluster=False).model.source == "pvc://weights/org/model"


def test_worker_pods_get_the_gpus_one_replica_asks_for() -> None:
    model = md(
        engine={"tensorParallelSize": 2},
        nodePools=[
            {"name": "g", "gpu": {"type": "L4", "memoryGiB": 24}},
            {"name": "c", "cpu": 2, "memoryGiB": 8},
        ],
    )
    config = serving_config(model, in_cluster=True)
    for pool, group in zip(config.pools, workers(model), strict=True):
        limits = container(group)["resources"]["limits"]
        assert limits.get("nvidia.com/gpu", "0") == str(pool.num_gpus), pool.name


@pytest.mark.parametrize(
    ("spec_image", "default", "expected"),
    [(None, "op/default:1", "op/default:1"), ("mine:2", "op/default:1", "mine:2")],
)
def test_image_from_spec_or_operator_default(
    spec_image: str | None, default: str, expected: str
) -> None:
    model = md(image=spec_image) if spec_image else md()
    rs = render_objects(model, image=default, namespace="x")[0]
    cluster = rs["spec"]["rayClusterConfig"]
    images = {
        container(g)["image"] for g in [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    }
    assert images == {expected}


def test_owner_references_only_with_a_uid_and_hash_ignores_them() -> None:
    model = md()
    without = render_objects(model, image="i", namespace="x")
    with_uid = render_objects(model, image="i", namespace="x", owner_uid="u-1")
    for plain, owned in zip(without, with_uid, strict=True):
        assert "ownerReferences" not in plain["metadata"]
        (ref,) = owned["metadata"]["ownerReferences"]
        assert ref == {
            "apiVersion": v1alpha1.API_VERSION,
            "kind": v1alpha1.KIND,
            "name": "m",
            "uid": "u-1",
            "controller": True,
            "blockOwnerDeletion": True,
        }
        assert plain["metadata"]["annotations"] == owned["metadata"]["annotations"]


def test_spec_hash_follows_the_spec() -> None:
    a = rayservice(md(), image="i", namespace="x")["metadata"]["annotations"]
    b = rayservice(md(engine={"maxNumSeqs": 7}), image="i", namespace="x")["metadata"][
        "annotations"
    ]
    assert a[ANNOTATION_SPEC_HASH] != b[ANNOTATION_SPEC_HASH]


def test_openai_service_selects_serving_ray_pods() -> None:
    svc = openai_service(md(), namespace="team")
    assert svc["metadata"]["name"] == "m-openai"
    assert svc["spec"]["selector"] == {LABEL_DEPLOYMENT: "m", RAY_SERVE_LABEL: "true"}
    assert svc["spec"]["ports"][0]["port"] == 8000
    assert endpoint("m", "team") == "http://m-openai.team.svc:8000/v1"


def test_network_policy_opens_only_the_openai_port_to_everyone() -> None:
    (policy,) = [
        o for o in render_objects(md(), image="i", namespace="x") if o["kind"] == "NetworkPolicy"
    ]
    name = BASE["metadata"]["name"]
    ray_pods = {"matchLabels": {"modelfleet.io/deployment": name}}
    spec = policy["spec"]
    assert spec["podSelector"] == ray_pods and spec["policyTypes"] == ["Ingress"]
    open_to_all, among_ray, kuberay = spec["ingress"]
    assert open_to_all == {"ports": [{"protocol": "TCP", "port": 8000}]}
    assert among_ray == {"from": [{"podSelector": ray_pods}]}
    assert {p["port"] for p in kuberay["ports"]} == {8265, 52365}
    # Neither the GCS nor the client server is open beyond the Ray pods.
    assert not {6379, 10001} & {
        p["port"] for rule in spec["ingress"] for p in rule.get("ports", [])
    }


def test_namespace_of_the_object_wins() -> None:
    objs = render_objects(md(), image="i", namespace="default")
    assert {o["metadata"]["namespace"] for o in objs} == {"team"}


def test_render_command_prints_and_refuses(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(BASE))
    assert render(good, image=None, namespace="default") == 0
    docs = list(yaml.safe_load_all(capsys.readouterr().out))
    assert [d["kind"] for d in docs] == [
        RAY_SERVICE_KIND,
        "Service",
        "NetworkPolicy",
        SERVICE_MONITOR_KIND,
        "ConfigMap",
    ]
    assert container(docs[0]["spec"]["rayClusterConfig"]["headGroupSpec"])["image"] == (
        DEFAULT_IMAGE
    )

    bad_obj = copy.deepcopy(BASE)
    bad_obj["spec"]["engine"] = {"tensorParallelSize": 2}
    bad_obj["spec"]["nodePools"] = [{"name": "cpu"}]
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(bad_obj))
    assert render(bad, image=None, namespace="default") == 1
    assert "give the pool a gpu" in capsys.readouterr().err
