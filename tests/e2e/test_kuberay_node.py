"""KubeRay on the node cluster: its operator runs as a pod, and a RayCluster becomes a Ray
head pod of modelfleet's Ray image (CPU flavour) that starts Ray and passes the probes
KubeRay gives it.

KubeRay is installed as a prerequisite by the ``kuberay_node_cluster`` fixture (see
tests/cluster/kuberay.py); the Ray image comes from the ``node_images`` fixture, pushed
to the node's registry, so the kubelet pulls it (about 7.6 GB) when the head pod is
created.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client

from tests.cluster import kuberay
from tests.cluster.node import NodeCluster, ProductImages
from tests.helpers import unique_name, wait_until

pytestmark = pytest.mark.e2e

# The image is pulled and unpacked first (minutes on a busy machine), then Ray starts.
HEAD_READY_TIMEOUT = 900.0


def _ray_cluster(name: str, namespace: str, image: str) -> dict[str, Any]:
    """A RayCluster of a head only, small enough for a two-core node."""
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayCluster",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "rayVersion": "2.60.0",
            "headGroupSpec": {
                "rayStartParams": {"num-cpus": "1", "dashboard-host": "0.0.0.0"},
                "template": {
                    "spec": {
                        "terminationGracePeriodSeconds": 5,
                        "containers": [
                            {
                                "name": "ray-head",
                                "image": image,
                                "imagePullPolicy": "IfNotPresent",
                                "resources": {
                                    "requests": {"cpu": "500m", "memory": "2Gi"},
                                    "limits": {"cpu": "2", "memory": "3Gi"},
                                },
                            }
                        ],
                    }
                },
            },
        },
    }


@pytest.fixture(scope="module")
def namespace(kuberay_node_cluster: NodeCluster) -> Iterator[str]:
    name = unique_name("e2e-kuberay")
    kuberay_node_cluster.kubectl_run("create", "namespace", name)
    yield name
    kuberay_node_cluster.kubectl_run("delete", "namespace", name, "--wait=false", check=False)


def test_the_kuberay_operator_runs_as_a_pod(kuberay_node_cluster: NodeCluster) -> None:
    pods = client.CoreV1Api(kuberay_node_cluster.api_client).list_namespaced_pod(
        kuberay.NAMESPACE, label_selector="app.kubernetes.io/name=kuberay"
    )
    [pod] = pods.items
    assert pod.spec.containers[0].image.endswith(f"/{kuberay.IMAGE_REPOSITORY}:v1.5.0")
    assert any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions)


def test_a_ray_cluster_gets_a_ready_head_pod_of_our_image(
    kuberay_node_cluster: NodeCluster, node_images: ProductImages, namespace: str
) -> None:
    cluster = kuberay_node_cluster
    core = client.CoreV1Api(cluster.api_client)
    name = unique_name("head")
    created = time.monotonic()
    cluster.kubectl_run(
        "apply", "--filename=-", input=json.dumps(_ray_cluster(name, namespace, node_images.ray))
    )
    selector = f"ray.io/cluster={name},ray.io/node-type=head"

    def head() -> Any:
        pods = core.list_namespaced_pod(namespace, label_selector=selector).items
        return pods[0] if pods else None

    wait_until(lambda: head() is not None, "KubeRay to create the head pod", timeout=120)
    pod_created = time.monotonic()

    def ready() -> bool:
        pod = head()
        if pod.status.phase == "Failed":
            pytest.fail(f"the head pod failed: {pod.status}")
        return any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or [])

    wait_until(ready, "the Ray head pod to be Ready", timeout=HEAD_READY_TIMEOUT)
    pod_ready = time.monotonic()
    pod = head()
    events = cluster.kubectl_run(
        "get", "events", f"--namespace={namespace}",
        f"--field-selector=involvedObject.name={pod.metadata.name}", "--output=json",
    ).stdout  # fmt: skip
    pulled = [e["message"] for e in json.loads(events)["items"] if e.get("reason") == "Pulled"]
    pull = re.search(r" in (\S+?)(?: \(| including|$)", pulled[0]) if pulled else None
    print(
        f"\nRay head pod: created {pod_created - created:.1f} s after the RayCluster, "
        f"Ready {pod_ready - pod_created:.1f} s later "
        f"(image pull: {pull.group(1) if pull else 'already present'}); "
        f"node cluster {cluster.rss_bytes() / 2**30:.2f} GiB resident "
        "with KubeRay and the Ray head running"
    )

    container = pod.spec.containers[0]
    assert container.image == node_images.ray
    # KubeRay gave the container its `ray start` command and its wget probes, which
    # the image answers; it runs as the image's user, 1000.
    assert "ray start --head" in " ".join(container.args or container.command)
    assert "wget" in " ".join(container.readiness_probe._exec.command)
    exec_in = ["exec", f"--namespace={namespace}", pod.metadata.name, "-c", "ray-head", "--"]
    assert cluster.kubectl_run(*exec_in, "id", "-u").stdout.strip() == "1000"

    def cluster_ready() -> bool:
        state = cluster.kubectl_run(
            "get", "raycluster", name, f"--namespace={namespace}",
            "--output=jsonpath={.status.state}",
        ).stdout  # fmt: skip
        return state == "ready"

    wait_until(cluster_ready, "the RayCluster's state to be ready", timeout=120)
    cluster.kubectl_run("delete", "raycluster", name, f"--namespace={namespace}", "--wait=false")
