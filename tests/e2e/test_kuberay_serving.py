"""A ModelDeployment served for real: the chart's operator renders a RayService, the real
KubeRay makes a Ray cluster of our CPU image on the node (the kubelet pulls the 7.6 GB
image from the node's registry the first time), KubeRay deploys the Serve application,
and the OpenAI API answers from inside the cluster and through `kubectl port-forward`.

Every status the operator reads is KubeRay's own: nothing here patches a RayService.
`manifests/examples/tiny-cpu.yaml` is applied as a user would (`kubectl apply -f`),
unchanged; its head and worker fit on a two-core node next to the two operators.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml
from kubernetes import client

from tests.cluster import kuberay
from tests.cluster.node import NodeCluster, ProductImages
from tests.helm.binary import Helm
from tests.helpers import unique_name, wait_for, wait_until

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "modelfleet"
EXAMPLE = ROOT / "manifests" / "examples" / "tiny-cpu.yaml"
NAME = "tiny-cpu"
MODEL = "tiny-llama"
ADAPTER = "tiny-llama-lora"
GOOD_ADAPTER = {"name": ADAPTER, "source": "builtin://tiny-llama-lora"}
SERVE_PORT = 8000
# The Ray image is pulled once (minutes), Ray starts in two pods, KubeRay deploys the
# Serve app, and vLLM loads the model on CPU: many minutes on a busy two-core machine.
READY_TIMEOUT = 1800.0
GONE_TIMEOUT = 300.0


def _get(cluster: NodeCluster, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
    result = cluster.kubectl_run(
        "get", kind, name, f"--namespace={namespace}", "--output=json", check=False
    )
    return json.loads(result.stdout) if result.returncode == 0 else None


def _pulled(cluster: NodeCluster, namespace: str, pod: str) -> str:
    """How long the kubelet took to pull the pod's image, from its Pulled event."""
    events = cluster.kubectl_run(
        "get", "events", f"--namespace={namespace}",
        f"--field-selector=involvedObject.name={pod}", "--output=json",
    ).stdout  # fmt: skip
    pulled = [e["message"] for e in json.loads(events)["items"] if e.get("reason") == "Pulled"]
    took = re.search(r" in (\S+?)(?: \(| including|$)", pulled[0]) if pulled else None
    return f"image pulled in {took.group(1)}" if took else "image already present"


def _condition(obj: dict[str, Any] | None, kind: str) -> dict[str, Any]:
    for condition in ((obj or {}).get("status") or {}).get("conditions") or []:
        if condition.get("type") == kind:
            return dict(condition)
    return {}


def _state(cluster: NodeCluster, namespace: str) -> str:
    """What a person would look at when it does not come up: pods, Ray objects, events."""
    parts = [
        cluster.kubectl_run(*args, f"--namespace={namespace}", check=False).stdout
        for args in (
            ("get", "pods,rayservices,rayclusters,services", "--output=wide"),
            ("get", "modeldeployment", NAME, "--output=jsonpath={.status}"),
            ("get", "rayservice", NAME, "--output=jsonpath={.status}"),
            ("get", "events", "--sort-by=.lastTimestamp"),
        )
    ]
    core = client.CoreV1Api(cluster.api_client)
    for pod in core.list_namespaced_pod(namespace).items:
        for container in pod.spec.containers:
            logs = cluster.kubectl_run(
                "logs", f"--namespace={namespace}", pod.metadata.name, "-c", container.name,
                "--tail=60", check=False,
            )  # fmt: skip
            parts.append(f"--- {pod.metadata.name}/{container.name}\n{logs.stdout}{logs.stderr}")
    return "\n".join(parts)


def _wait_ready(cluster: NodeCluster, namespace: str, what: str, timeout: float) -> None:
    """Until the ModelDeployment's Ready condition is True."""
    wait_until(
        lambda: (
            _condition(_get(cluster, "modeldeployment", namespace, NAME), "Ready").get("status")
            == "True"
        ),
        what,
        timeout=timeout,
    )


def _wait_gone(cluster: NodeCluster, namespace: str, name: str) -> None:
    """Until the RayService, RayCluster, pods and Services of `name` are all gone."""
    core = client.CoreV1Api(cluster.api_client)

    def gone() -> bool:
        listed = cluster.kubectl_run(
            "get", "rayservices,rayclusters", f"--namespace={namespace}", "--output=name"
        ).stdout.split()
        ray_objects = [line for line in listed if line.split("/", 1)[1].startswith(name)]
        pods = core.list_namespaced_pod(
            namespace, label_selector=f"modelfleet.io/deployment={name}"
        ).items
        services = [
            s.metadata.name
            for s in core.list_namespaced_service(namespace).items
            if s.metadata.name.startswith(name)
        ]
        return not ray_objects and not pods and not services

    wait_until(gone, f"the RayService, RayCluster, pods and Services of {name} to go", GONE_TIMEOUT)


@pytest.fixture(scope="module")
def namespace(kuberay_node_cluster: NodeCluster) -> Iterator[str]:
    name = unique_name("e2e-serving")
    kuberay_node_cluster.kubectl_run("create", "namespace", name)
    yield name
    kuberay_node_cluster.kubectl_run("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture(scope="module")
def operator(
    kuberay_node_cluster: NodeCluster,
    node_images: ProductImages,
    namespace: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[None]:
    """The chart with its default values, its images pointed at the ones just built."""
    helm = Helm(kuberay_node_cluster.kubeconfig, tmp_path_factory.mktemp("helm-home"))
    helm(
        "install", "modelfleet", str(CHART), f"--namespace={namespace}",
        *node_images.chart_set(), "--wait", "--timeout=300s",
    )  # fmt: skip
    yield
    helm("uninstall", "modelfleet", f"--namespace={namespace}", "--wait", "--timeout=300s")


def _apply_example(cluster: NodeCluster, namespace: str) -> Any:
    return cluster.kubectl_run(
        "apply", f"--filename={EXAMPLE}", f"--namespace={namespace}", check=False
    )


@pytest.fixture(scope="module")
def served(kuberay_node_cluster: NodeCluster, namespace: str, operator: None) -> Iterator[float]:
    """The example applied with kubectl and Ready; yields the seconds from apply to Ready."""
    cluster = kuberay_node_cluster
    assert yaml.safe_load(EXAMPLE.read_text())["metadata"]["name"] == NAME
    applied = time.monotonic()
    result = _apply_example(cluster, namespace)
    # Right after the rollout the apiserver may not reach the webhook yet (its Service's
    # endpoints follow the pod within a second or so); it refuses with that reason.
    while "failed calling webhook" in result.stderr and time.monotonic() - applied < 60:
        time.sleep(1)
        result = _apply_example(cluster, namespace)
    assert result.returncode == 0, result.stderr

    def ready() -> bool:
        md = _get(cluster, "modeldeployment", namespace, NAME)
        return _condition(md, "Ready").get("status") == "True"

    try:
        wait_until(ready, f"ModelDeployment {NAME} to be Ready", timeout=READY_TIMEOUT)
    except Exception:
        print(_state(cluster, namespace))
        raise
    took = time.monotonic() - applied
    print(
        f"\nkubectl apply to ModelDeployment Ready: {took:.0f} s; node cluster "
        f"{cluster.rss_bytes() / 2**30:.2f} GiB resident with both operators, the Ray head "
        "and the worker"
    )
    yield took


def test_the_kuberay_operator_runs_as_a_pod(kuberay_node_cluster: NodeCluster) -> None:
    """Installed by `tests/cluster/up --node` and the fixture from its own manifests."""
    pods = client.CoreV1Api(kuberay_node_cluster.api_client).list_namespaced_pod(
        kuberay.NAMESPACE, label_selector="app.kubernetes.io/name=kuberay"
    )
    [pod] = pods.items
    assert pod.spec.containers[0].image.endswith(f"/{kuberay.IMAGE_REPOSITORY}:v1.5.0")
    assert any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions)


def test_apply_becomes_ready_from_kuberays_own_status(
    kuberay_node_cluster: NodeCluster, namespace: str, served: float
) -> None:
    cluster = kuberay_node_cluster
    md = _get(cluster, "modeldeployment", namespace, NAME)
    service = _get(cluster, "rayservice", namespace, NAME)
    assert md is not None and service is not None
    # The operator's RayServiceReady mirrors KubeRay's Ready condition, which KubeRay
    # wrote after its Serve deployment reported the application RUNNING.
    assert _condition(service, "Ready")["status"] == "True"
    assert _condition(md, "RayServiceReady")["status"] == "True"
    active = service["status"]["activeServiceStatus"]
    assert active["applicationStatuses"]["modelfleet"]["status"] == "RUNNING"
    assert md["status"]["endpoint"] == f"http://{NAME}-openai.{namespace}.svc:{SERVE_PORT}/v1"
    # Real pods of our image: a head and one worker of the `cpu` pool, both Ready.
    pods = client.CoreV1Api(cluster.api_client).list_namespaced_pod(
        namespace, label_selector=f"modelfleet.io/deployment={NAME}"
    )
    kinds = sorted(p.metadata.labels["ray.io/node-type"] for p in pods.items)
    assert kinds == ["head", "worker"], kinds
    for pod in pods.items:
        container = pod.spec.containers[0]
        assert container.image.endswith("/modelfleet/modelfleet:0.1.0-cpu")
        assert any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions)
        # KubeRay gave each container its `ray start` command and its wget probes, which
        # the image answers; they run as the image's user, 1000.
        assert "ray start" in " ".join(container.args or container.command)
        assert "wget" in " ".join(container.readiness_probe._exec.command)
        exec_in = ["exec", f"--namespace={namespace}", pod.metadata.name, "-c", container.name]
        assert cluster.kubectl_run(*exec_in, "--", "id", "-u").stdout.strip() == "1000"
    head = next(p for p in pods.items if p.metadata.labels["ray.io/node-type"] == "head")
    print(f"\nRay head pod: {_pulled(cluster, namespace, head.metadata.name)}")


def test_the_openai_api_answers_through_port_forward(
    kuberay_node_cluster: NodeCluster, namespace: str, served: float
) -> None:
    with kuberay_node_cluster.port_forward(namespace, f"svc/{NAME}-openai", SERVE_PORT) as port:
        base = f"http://127.0.0.1:{port}/v1"
        api = openai.OpenAI(base_url=base, api_key="unused", max_retries=0, timeout=300)
        assert [m.id for m in api.models.list()] == [MODEL]
        completion = api.completions.create(model=MODEL, prompt="The sea", max_tokens=8)
        assert completion.usage is not None and completion.usage.completion_tokens == 8
        chat = api.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=8
        )
        assert chat.choices[0].message.role == "assistant"
        stream = api.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "Tell a story"}],
            max_tokens=16,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = list(stream)
        assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 16
        assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) > 1

        # Bad input gets the OpenAI error shape with the right status.
        unknown = httpx.post(
            f"{base}/completions", json={"model": "nope", "prompt": "x"}, timeout=60
        )
        assert unknown.status_code == 404, unknown.text
        assert unknown.json()["error"]["code"] == "model_not_found"
        bad = httpx.post(
            f"{base}/completions",
            json={"model": MODEL, "prompt": "x", "temperature": -1},
            timeout=60,
        )
        assert bad.status_code == 400, bad.text
        assert set(bad.json()["error"]) == {"message", "type", "param", "code"}


_STREAM_CLIENT = """
import sys, openai
api = openai.OpenAI(base_url=sys.argv[1], api_key="unused", max_retries=0, timeout=300)
stream = api.chat.completions.create(
    model=sys.argv[2], messages=[{"role": "user", "content": "Tell a story"}],
    max_tokens=12, stream=True, stream_options={"include_usage": True},
)
pieces = [c for c in stream]
print("content chunks", sum(1 for c in pieces if c.choices and c.choices[0].delta.content))
print("completion tokens", pieces[-1].usage.completion_tokens)
"""


def test_a_pod_streams_a_chat_completion_from_the_service_by_its_dns_name(
    kuberay_node_cluster: NodeCluster, node_images: ProductImages, namespace: str, served: float
) -> None:
    cluster = kuberay_node_cluster
    core = client.CoreV1Api(cluster.api_client)
    name = unique_name("openai-client")
    url = f"http://{NAME}-openai.{namespace}.svc:{SERVE_PORT}/v1"
    core.create_namespaced_pod(
        namespace,
        {
            "metadata": {"name": name},
            "spec": {
                "restartPolicy": "Never",
                "containers": [
                    {
                        "name": "client",
                        # The Ray image has Python and the openai client (vLLM's).
                        "image": node_images.ray,
                        "imagePullPolicy": "IfNotPresent",
                        "command": ["python", "-c", _STREAM_CLIENT, url, MODEL],
                        "resources": {
                            "requests": {"cpu": "50m", "memory": "256Mi"},
                            "limits": {"memory": "512Mi"},
                        },
                    }
                ],
            },
        },
    )

    def finished() -> bool:
        phase = core.read_namespaced_pod(name, namespace).status.phase
        return phase in ("Succeeded", "Failed")

    wait_until(finished, "the client pod to finish", timeout=300)
    logs = cluster.kubectl_run("logs", f"--namespace={namespace}", name).stdout
    assert core.read_namespaced_pod(name, namespace).status.phase == "Succeeded", logs
    assert "completion tokens 12" in logs, logs
    chunks = int(logs.split("content chunks ")[1].split()[0])
    assert chunks > 1, logs
    core.delete_namespaced_pod(name, namespace)


def _head_pod(cluster: NodeCluster, namespace: str) -> str:
    core = client.CoreV1Api(cluster.api_client)
    selector = f"modelfleet.io/deployment={NAME},ray.io/node-type=head"
    [head] = core.list_namespaced_pod(namespace, label_selector=selector).items
    return str(head.metadata.name)


def _serve_application(dashboard: str) -> dict[str, Any] | None:
    """The application as the Ray dashboard on the head reports it (Serve's REST API)."""
    try:
        answer = httpx.get(f"{dashboard}/api/serve/applications/", timeout=60)
        answer.raise_for_status()
        application: dict[str, Any] = answer.json()["applications"]["modelfleet"]
    except (httpx.HTTPError, KeyError, ValueError):
        return None
    return application


def test_a_serve_level_change_is_applied_in_place(
    kuberay_node_cluster: NodeCluster, namespace: str, served: float
) -> None:
    """maxNumSeqs, LoRA support (with an adapter) and the autoscaling target live in
    serveConfigV2 only: KubeRay hands the new config to the running Ray cluster, no pod
    is recreated, and the ModelDeployment is Ready again once Serve has restarted the
    replica with the new engine settings and the replica has loaded the adapter (the
    operator reads the front door's /health through the Service's DNS name)."""
    cluster = kuberay_node_cluster
    core = client.CoreV1Api(cluster.api_client)
    selector = f"modelfleet.io/deployment={NAME}"
    before = {
        p.metadata.uid for p in core.list_namespaced_pod(namespace, label_selector=selector).items
    }
    change = {
        "spec": {
            # vLLM's CPU LoRA kernels need float32 with the tiny model.
            "model": {"dtype": "float32", "adapters": [GOOD_ADAPTER]},
            "engine": {"maxNumSeqs": 16, "maxLoras": 2, "maxLoraRank": 8},
            "autoscaling": {"targetQueueDepth": 4},
        }
    }
    started = time.monotonic()
    cluster.kubectl_run(
        "patch", "modeldeployment", NAME, f"--namespace={namespace}", "--type=merge",
        f"--patch={json.dumps(change)}",
    )  # fmt: skip

    def applied(dashboard: str) -> bool | None:
        application = _serve_application(dashboard)
        if application is None or application["status"] != "RUNNING":
            return None
        config = application["deployed_app_config"]["args"]["config"]
        new = (config["engine"]["max_num_seqs"], config["autoscaling"]["target_queue_depth"])
        return new == (16, 4) or None

    with cluster.port_forward(namespace, f"pod/{_head_pod(cluster, namespace)}", 8265) as port:
        dashboard = f"http://127.0.0.1:{port}"
        wait_for(lambda: applied(dashboard), "Ray Serve to run the new config", 900, interval=3)
    _wait_ready(cluster, namespace, "the ModelDeployment to be Ready again", 600)
    print(f"\nServe-level change applied in place in {time.monotonic() - started:.0f} s")
    md = _get(cluster, "modeldeployment", namespace, NAME)
    adapters = _condition(md, "AdaptersReady")
    assert (adapters.get("status"), adapters.get("reason")) == ("True", "AdaptersLoaded"), md
    after = {
        p.metadata.uid for p in core.list_namespaced_pod(namespace, label_selector=selector).items
    }
    assert after == before, "a Serve-level change recreated pods"
    with cluster.port_forward(namespace, f"svc/{NAME}-openai", SERVE_PORT) as port:
        api = openai.OpenAI(
            base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0, timeout=300
        )
        completion = api.completions.create(model=MODEL, prompt="The sea", max_tokens=4)
        assert completion.usage is not None and completion.usage.completion_tokens == 4
        answer = api.completions.create(model=ADAPTER, prompt="The sea", max_tokens=4)
        assert answer.model == ADAPTER


def _patch_adapters(cluster: NodeCluster, namespace: str, adapters: list[dict[str, str]]) -> None:
    change = {"spec": {"model": {"adapters": adapters}}}
    cluster.kubectl_run(
        "patch", "modeldeployment", NAME, f"--namespace={namespace}", "--type=merge",
        f"--patch={json.dumps(change)}",
    )  # fmt: skip


def test_an_adapter_that_fails_to_load_is_named_and_the_rest_serve(
    kuberay_node_cluster: NodeCluster, namespace: str, served: float
) -> None:
    """After the in-place change (LoRA on, one adapter): a second adapter whose files do
    not exist. The replica keeps serving the model and the first adapter; the status
    names the broken one with vLLM's reason; removing it makes the ModelDeployment Ready
    again, with no restart of the engine."""
    cluster = kuberay_node_cluster
    broken = {"name": "broken", "source": "file:///nonexistent/adapter"}
    _patch_adapters(cluster, namespace, [GOOD_ADAPTER, broken])

    def failed() -> dict[str, Any] | None:
        md = _get(cluster, "modeldeployment", namespace, NAME)
        condition = _condition(md, "AdaptersReady")
        return md if condition.get("reason") == "AdapterFailed" else None

    try:
        md = wait_for(failed, "AdaptersReady to name the broken adapter", 300, interval=2)
    except Exception:
        print(_state(cluster, namespace))
        raise
    message = _condition(md, "AdaptersReady")["message"]
    assert message.startswith("adapter broken failed to load on 1 of 1 replicas: "), message
    assert "nonexistent" in message or "not found" in message.lower(), "vLLM's reason is kept"
    ready = _condition(md, "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "AdaptersNotReady"), ready
    events = cluster.kubectl_run(
        "get", "events", f"--namespace={namespace}", "--field-selector=reason=AdapterFailed",
        "--output=json",
    ).stdout  # fmt: skip
    [event] = json.loads(events)["items"]
    assert event["type"] == "Warning" and "adapter broken" in event["message"]
    with cluster.port_forward(namespace, f"svc/{NAME}-openai", SERVE_PORT) as port:
        base = f"http://127.0.0.1:{port}/v1"
        for model in (MODEL, ADAPTER):
            answer = httpx.post(
                f"{base}/completions",
                json={"model": model, "prompt": "The sea", "max_tokens": 4},
                timeout=300,
            )
            assert answer.status_code == 200, (model, answer.text)
        refused = httpx.post(
            f"{base}/completions",
            json={"model": "broken", "prompt": "The sea", "max_tokens": 4},
            timeout=300,
        )
        assert refused.status_code == 404, refused.text
        assert refused.json()["error"]["code"] == "model_not_found"
    _patch_adapters(cluster, namespace, [GOOD_ADAPTER])
    _wait_ready(cluster, namespace, "Ready once the broken adapter is removed", 300)
    md = _get(cluster, "modeldeployment", namespace, NAME)
    assert _condition(md, "AdaptersReady")["reason"] == "AdaptersLoaded"


def test_deleting_the_model_deployment_removes_everything_it_made(
    kuberay_node_cluster: NodeCluster, namespace: str, served: float
) -> None:
    """After the tests that use it: it takes the deployment down."""
    cluster = kuberay_node_cluster
    cluster.kubectl_run("delete", "modeldeployment", NAME, f"--namespace={namespace}")
    started = time.monotonic()
    _wait_gone(cluster, namespace, NAME)
    print(f"\nModelDeployment deleted: its Ray cluster gone in {time.monotonic() - started:.0f} s")


def test_a_pool_no_node_can_take_says_so(
    kuberay_node_cluster: NodeCluster, namespace: str, served: float
) -> None:
    """After the deletion above: a pool whose nodeSelector matches no node. The real
    scheduler leaves its worker pod Pending; the ModelDeployment names the pool and the
    scheduler's reason instead of waiting silently."""
    cluster = kuberay_node_cluster
    document = yaml.safe_load(EXAMPLE.read_text())
    name = "unplaceable"
    document["metadata"] = {"name": name, "namespace": namespace}
    document["spec"]["nodePools"][0]["nodeSelector"] = {"example.com/accelerator": "none-here"}
    result = cluster.kubectl_run("apply", "--filename=-", input=json.dumps(document), check=False)
    assert result.returncode == 0, result.stderr

    def reported() -> dict[str, Any] | None:
        md = _get(cluster, "modeldeployment", namespace, name)
        condition = _condition(md, "PoolsSchedulable")
        return condition if condition.get("status") == "False" else None

    # The operator looks at the pods on every reconciliation: on KubeRay's status
    # updates, and at the latest on its drift check (every 60 s).
    wait_until(lambda: reported() is not None, "PoolsSchedulable to turn False", timeout=300)
    condition = reported()
    assert condition is not None
    print(f"\nPoolsSchedulable: {condition['message']}")
    assert condition["reason"] == "Unschedulable"
    assert condition["message"].startswith("pool cpu: the scheduler cannot place its pods: ")
    assert "node affinity/selector" in condition["message"]
    md = _get(cluster, "modeldeployment", namespace, name)
    assert md is not None
    [pool] = md["status"]["pools"]
    assert pool["state"] == "Unschedulable"
    cluster.kubectl_run("delete", "modeldeployment", name, f"--namespace={namespace}")
    _wait_gone(cluster, namespace, name)


GPU = "nvidia.com/gpu"


def _advertise_gpus(cluster: NodeCluster, node: str, gpus: int | None) -> None:
    """What a device plugin does: the node's capacity of `GPU` (None removes it)."""
    amount = None if gpus is None else str(gpus)
    client.CoreV1Api(cluster.api_client).patch_node_status(
        node, {"status": {"capacity": {GPU: amount}, "allocatable": {GPU: amount}}}
    )


def test_a_change_waits_for_gpus_the_node_does_not_have_free(
    kuberay_node_cluster: NodeCluster, node_images: ProductImages, namespace: str, operator: None
) -> None:
    """After the deletions above. The node advertises two GPUs, as a device plugin
    would; a ModelDeployment's worker pod takes one and another workload's pod the
    other. A change that makes KubeRay build a new RayCluster would leave its worker
    Pending, so the operator holds it, says so (`UpgradeBlocked`), and hands it to
    KubeRay once the other pod ends. The real scheduler places the pods and the real
    kubelet admits them against the advertised GPUs; the Ray image is one the node's
    registry does not have (the pods hold their GPUs without starting vLLM on a GPU
    this machine lacks), so nothing here becomes Ready."""
    cluster = kuberay_node_cluster
    core = client.CoreV1Api(cluster.api_client)
    [node] = [n.metadata.name for n in core.list_node().items]
    assert node_images.registry is not None
    name, holder = "gpu-upgrade", unique_name("gpu-holder")
    document = {
        "apiVersion": "modelfleet.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "model": {"source": "builtin://tiny-llama", "servedName": MODEL},
            "engine": {"kind": "vllm", "maxModelLen": 512},
            "image": f"{node_images.registry}/modelfleet/absent:1",
            "nodePools": [{"name": "gpu", "gpu": {"type": "L4", "memoryGiB": 24}, "cpu": 0.25}],
            "monitoring": {"serviceMonitor": False, "dashboards": False},
        },
    }

    def apply() -> None:
        result = cluster.kubectl_run(
            "apply", "--filename=-", input=json.dumps(document), check=False
        )
        assert result.returncode == 0, result.stderr

    def workers_bound() -> int:
        pods = core.list_namespaced_pod(
            namespace, label_selector=f"modelfleet.io/deployment={name},modelfleet.io/pool=gpu"
        ).items
        return sum(1 for pod in pods if pod.spec.node_name and not pod.metadata.deletion_timestamp)

    def blocked() -> dict[str, Any]:
        return _condition(_get(cluster, "modeldeployment", namespace, name), "UpgradeBlocked")

    def ray_service_generation() -> int:
        ray_service = _get(cluster, "rayservice", namespace, name)
        assert ray_service is not None
        return int(ray_service["metadata"]["generation"])

    _advertise_gpus(cluster, node, 2)
    try:
        core.create_namespaced_pod(
            namespace,
            {
                "metadata": {"name": holder},
                "spec": {
                    "terminationGracePeriodSeconds": 0,
                    "containers": [
                        {
                            "name": "holder",
                            "image": node_images.operator,
                            "imagePullPolicy": "IfNotPresent",
                            "command": ["sleep", "3600"],
                            "resources": {
                                "requests": {"cpu": "10m", "memory": "16Mi", GPU: "1"},
                                "limits": {"memory": "32Mi", GPU: "1"},
                            },
                        }
                    ],
                },
            },
        )
        apply()
        wait_until(lambda: workers_bound() == 1, "the gpu pool's worker pod to be placed", 180)
        wait_until(lambda: blocked().get("status") == "False", "UpgradeBlocked False at first", 120)
        before = ray_service_generation()

        # More CPU per replica: a new worker group spec, so a new RayCluster.
        document["spec"]["nodePools"][0]["cpu"] = 0.3
        apply()
        wait_until(lambda: blocked().get("status") == "True", "UpgradeBlocked to turn True", 120)
        condition = blocked()
        print(f"\nUpgradeBlocked: {condition['message']}")
        assert condition["reason"] == "InsufficientGPUs"
        assert (
            "pool gpu needs 1 free GPU (1 replica × 1 GPU) while its 1 node has 0 free"
            in condition["message"]
        )
        time.sleep(5)
        assert ray_service_generation() == before, "the held change reached the RayService"

        # The other workload ends; the operator's retry (30 s) hands the change over.
        core.delete_namespaced_pod(holder, namespace, grace_period_seconds=0)
        released = time.monotonic()
        wait_until(lambda: blocked().get("status") == "False", "UpgradeBlocked to turn False", 180)
        print(f"change applied {time.monotonic() - released:.0f} s after the GPU was freed")
        assert ray_service_generation() > before
    finally:
        cluster.kubectl_run("delete", "modeldeployment", name, f"--namespace={namespace}",
                            "--ignore-not-found", check=False)  # fmt: skip
        cluster.kubectl_run("delete", "pod", holder, f"--namespace={namespace}",
                            "--ignore-not-found", "--grace-period=0", check=False)  # fmt: skip
        _wait_gone(cluster, namespace, name)
        _advertise_gpus(cluster, node, None)
