"""The operator as a pod: the chart installed with helm on the node cluster, from the
image built by images/build.py and pulled by the kubelet from the node's registry.

With its default values (only the image values point at the images just built) the
chart runs the operator under its ServiceAccount, as user 65532 with a read-only root
filesystem; the kubelet's probes make the pod Ready; a ModelDeployment applied
afterwards gets its RayService; the apiserver calls the admission webhook through its
Service, and the webhook refuses a ModelDeployment whose model does not fit its GPUs,
with the numbers; `helm upgrade` keeps all of it working; `helm uninstall` leaves no
operator pod and keeps the CRD.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from tests.cluster.controlplane import install_kuberay_crds
from tests.cluster.node import NodeCluster, ProductImages
from tests.helm.binary import Helm
from tests.helpers import unique_name, wait_until

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "modelfleet"
EXAMPLE = ROOT / "manifests" / "examples" / "tiny-cpu.yaml"
CRD = "modeldeployments.modelfleet.io"
RELEASE = "modelfleet"
POD_TIMEOUT = 300.0
HELM_TIMEOUT = "300s"


def _operator_pods(cluster: NodeCluster, namespace: str) -> list[Any]:
    pods = client.CoreV1Api(cluster.api_client).list_namespaced_pod(
        namespace, label_selector="app.kubernetes.io/instance=" + RELEASE
    )
    return [p for p in pods.items if p.metadata.deletion_timestamp is None]


def _ready(pod: Any) -> bool:
    return any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or [])


def _wait_operator_ready(cluster: NodeCluster, namespace: str) -> Any:
    def one_ready() -> bool:
        pods = _operator_pods(cluster, namespace)
        return len(pods) == 1 and _ready(pods[0])

    wait_until(one_ready, "the operator pod to be Ready", timeout=POD_TIMEOUT)
    return _operator_pods(cluster, namespace)[0]


def _model_deployment(name: str, namespace: str, **spec: Any) -> dict[str, Any]:
    document = yaml.safe_load(EXAMPLE.read_text())
    document["metadata"] = {"name": name, "namespace": namespace}
    document["spec"].update(spec)
    return dict(document)


# Llama 3 70B on one 24 GiB GPU: the weights alone need far more than the GPU holds.
TOO_BIG = {
    "model": {"source": "hf://meta-llama/Meta-Llama-3-70B-Instruct", "servedName": "llama3-70b"},
    "engine": {"kind": "vllm", "maxModelLen": 8192},
    "nodePools": [{"name": "l4", "gpu": {"type": "L4", "memoryGiB": 24}}],
}


def _apply(cluster: NodeCluster, obj: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    return cluster.kubectl_run("apply", "--filename=-", input=json.dumps(obj), check=False)


def _ray_service(cluster: NodeCluster, namespace: str, name: str) -> dict[str, Any] | None:
    result = cluster.kubectl_run(
        "get", "rayservices.ray.io", name, f"--namespace={namespace}", "--output=json",
        check=False,
    )  # fmt: skip
    return json.loads(result.stdout) if result.returncode == 0 else None


def _assert_reconciled(cluster: NodeCluster, namespace: str, images: ProductImages) -> None:
    """A ModelDeployment applied now gets its RayService, with the chart's Ray image."""
    name = unique_name("tiny")
    result = _apply(cluster, _model_deployment(name, namespace))
    assert result.returncode == 0, result.stderr
    started = time.monotonic()
    wait_until(
        lambda: _ray_service(cluster, namespace, name) is not None,
        f"the RayService of {name}",
        timeout=120,
    )
    service = _ray_service(cluster, namespace, name)
    assert service is not None
    print(f"\nModelDeployment {name} → RayService in {time.monotonic() - started:.1f} s")
    owner = service["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["name"]) == ("ModelDeployment", name)
    head = service["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]
    assert head["containers"][0]["image"] == images.ray
    # Deleted at once: with KubeRay running in the session, its Ray pods would
    # otherwise load the machine for the tests that follow. Garbage collection removes
    # the RayService with its owner.
    cluster.kubectl_run("delete", "modeldeployment", name, f"--namespace={namespace}")


def _assert_refused_with_the_numbers(cluster: NodeCluster, namespace: str) -> None:
    """The apiserver calls the webhook through its Service; the webhook says why not."""
    name = unique_name("too-big")
    started = time.monotonic()
    result = _apply(cluster, _model_deployment(name, namespace, **TOO_BIG))
    # Right after a rollout the webhook may not answer yet although the pod is Ready
    # (its Service's endpoints follow the pod, kube-proxy follows them within a second):
    # with failurePolicy Fail the apiserver then refuses for that reason instead.
    while "failed calling webhook" in result.stderr and time.monotonic() - started < 60:
        time.sleep(1)
        result = _apply(cluster, _model_deployment(name, namespace, **TOO_BIG))
    waited = time.monotonic() - started
    if waited > 2:
        print(f"\nthe webhook answered {waited:.1f} s after the operator pod was Ready")
    assert result.returncode != 0, "a 70B model on one 24 GiB GPU was admitted"
    message = result.stderr
    assert 'admission webhook "modeldeployments.modelfleet.io" denied the request' in message
    assert "needs 131.5 GiB of weights per GPU" in message, message
    assert "24 GiB × 0.9 = 21.6 GiB usable" in message, message
    absent = cluster.kubectl_run(
        "get", "modeldeployment", name, f"--namespace={namespace}", check=False
    )
    assert absent.returncode != 0, "the refused ModelDeployment was stored"


@pytest.fixture(scope="module")
def namespace(node_cluster: NodeCluster) -> Iterator[str]:
    name = unique_name("e2e-operator-pod")
    yield name
    # ModelDeployments have no finalizer, so this never waits on the (gone) operator.
    node_cluster.kubectl_run("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture(scope="module")
def helm(node_cluster: NodeCluster, tmp_path_factory: pytest.TempPathFactory) -> Helm:
    return Helm(node_cluster.kubeconfig, tmp_path_factory.mktemp("helm-home"))


def _chart_args(images: ProductImages) -> list[str]:
    """The chart's defaults, but for the images (and the webhook, should it be off)."""
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    extra = [] if defaults["webhook"]["enabled"] else ["--set=webhook.enabled=true"]
    return [*images.chart_set(), *extra]


def test_the_chart_runs_the_operator_as_a_pod_through_install_upgrade_and_uninstall(
    node_cluster: NodeCluster, node_images: ProductImages, helm: Helm, namespace: str
) -> None:
    install_kuberay_crds(node_cluster.kubeconfig, node_cluster.kubectl)
    started = time.monotonic()
    helm(
        "install", RELEASE, str(CHART), f"--namespace={namespace}", "--create-namespace",
        *_chart_args(node_images), "--wait", f"--timeout={HELM_TIMEOUT}",
    )  # fmt: skip
    pod = _wait_operator_ready(node_cluster, namespace)
    print(
        f"\nhelm install to operator pod Ready: {time.monotonic() - started:.1f} s "
        f"(image {node_images.operator})"
    )

    # Its ServiceAccount, a non-root user, a read-only root filesystem, and probes
    # that pass: Ready, and never restarted.
    assert pod.spec.service_account_name == RELEASE
    container = pod.spec.containers[0]
    assert container.image == node_images.operator
    assert container.security_context.read_only_root_filesystem is True
    assert pod.spec.security_context.run_as_non_root is True
    assert container.readiness_probe.http_get is not None
    assert pod.status.container_statuses[0].restart_count == 0
    exec_in = ["exec", f"--namespace={namespace}", pod.metadata.name, "--"]
    uid = node_cluster.kubectl_run(*exec_in, "id", "-u").stdout.strip()
    assert uid == "65532"
    written = node_cluster.kubectl_run(*exec_in, "touch", "/opt/written", check=False)
    assert written.returncode != 0 and "Read-only file system" in written.stderr

    _assert_reconciled(node_cluster, namespace, node_images)
    _assert_refused_with_the_numbers(node_cluster, namespace)

    # An upgrade (Recreate: the old pod stops first) keeps every part working.
    helm(
        "upgrade", RELEASE, str(CHART), f"--namespace={namespace}", "--reuse-values",
        "--set=operator.podAnnotations.modelfleet\\.io/upgraded=yes",
        "--wait", f"--timeout={HELM_TIMEOUT}",
    )  # fmt: skip
    upgraded = _wait_operator_ready(node_cluster, namespace)
    assert upgraded.metadata.name != pod.metadata.name
    assert upgraded.metadata.annotations.get("modelfleet.io/upgraded") == "yes"
    _assert_refused_with_the_numbers(node_cluster, namespace)
    _assert_reconciled(node_cluster, namespace, node_images)
    rss = node_cluster.rss_bytes()
    print(f"\nnode cluster with the operator running: {rss / 2**30:.2f} GiB resident")

    # Uninstall: no operator pod is left, the CRD stays.
    helm("uninstall", RELEASE, f"--namespace={namespace}", "--wait", f"--timeout={HELM_TIMEOUT}")
    wait_until(
        lambda: not client.CoreV1Api(node_cluster.api_client).list_namespaced_pod(namespace).items,
        "the operator pod to be gone",
        timeout=120,
    )
    crd = node_cluster.kubectl_run("get", "crd", CRD, "--output=name", check=False)
    assert crd.returncode == 0, "helm uninstall removed the CRD"
