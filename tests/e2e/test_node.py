"""The test node runs real pods: they complete, serve, resolve Services, log, forward.

Everything runs on the session's ``node_cluster`` (about 10-30 s to start; see
docs/control-plane.md), whose teardown fails the session if it leaves a process,
mount, cgroup or network namespace behind. The pods use the test image built from
tests/assets/node/httpecho.
"""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tests.cluster.node import CLUSTER_DOMAIN, NodeCluster
from tests.helpers import unique_name, wait_until

pytestmark = pytest.mark.e2e

POD_TIMEOUT = 120.0
SERVER_PORT = 8080


def _pod(
    cluster: NodeCluster, name: str, args: list[str], labels: dict[str, str] | None = None
) -> dict[str, Any]:
    """A pod of one container running the test image with ``args``, never restarted."""
    container: dict[str, Any] = {
        "name": "main",
        "image": cluster.images.httpecho.name,
        # The image was imported at start; it is in no registry to pull from.
        "imagePullPolicy": "Never",
        "args": args,
    }
    if args[0] == "serve":
        container["ports"] = [{"containerPort": SERVER_PORT}]
        # The kubelet probes the pod's IP from the node, across the CNI bridge.
        container["readinessProbe"] = {
            "httpGet": {"path": "/ready", "port": SERVER_PORT},
            "periodSeconds": 1,
        }
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels or {}},
        "spec": {
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 1,
            "containers": [container],
        },
    }


def _phase(core: client.CoreV1Api, namespace: str, name: str) -> str:
    return str(core.read_namespaced_pod(name, namespace).status.phase)


def _wait_succeeded(cluster: NodeCluster, namespace: str, name: str) -> None:
    """Wait until the pod has succeeded; fail with its logs if it failed."""
    core = client.CoreV1Api(cluster.api_client)
    wait_until(
        lambda: _phase(core, namespace, name) in ("Succeeded", "Failed"),
        f"pod {name} to finish",
        timeout=POD_TIMEOUT,
    )
    if _phase(core, namespace, name) == "Failed":
        logs = cluster.kubectl_run("logs", f"--namespace={namespace}", name, check=False)
        pytest.fail(f"pod {name} failed:\n{logs.stdout}{logs.stderr}")


def _ready(core: client.CoreV1Api, namespace: str, name: str) -> bool:
    conditions = core.read_namespaced_pod(name, namespace).status.conditions or []
    return any(c.type == "Ready" and c.status == "True" for c in conditions)


@pytest.fixture(scope="module")
def namespace(node_cluster: NodeCluster) -> Iterator[str]:
    """A namespace of this module's own, with its default service account in place."""
    core = client.CoreV1Api(node_cluster.api_client)
    name = unique_name("e2e-node")
    core.create_namespace({"metadata": {"name": name}})

    def has_default_account() -> bool:
        try:
            core.read_namespaced_service_account("default", name)
        except ApiException as error:
            if error.status == 404:
                return False
            raise
        return True

    # Pods are refused until the service-account controller has made `default`.
    wait_until(has_default_account, f"the default service account in {name}")
    yield name
    # Not waited for: the cluster's teardown kills whatever is still running.
    core.delete_namespace(name)


@pytest.fixture(scope="module")
def web(node_cluster: NodeCluster, namespace: str) -> Iterator[str]:
    """A Ready HTTP server pod named ``web`` behind a ClusterIP Service ``web`` (port 80)."""
    core = client.CoreV1Api(node_cluster.api_client)
    labels = {"app": "web"}
    created = time.monotonic()
    core.create_namespaced_pod(
        namespace, _pod(node_cluster, "web", ["serve", "-name=web"], labels=labels)
    )
    core.create_namespaced_service(
        namespace,
        {
            "metadata": {"name": "web"},
            "spec": {
                "selector": labels,
                "ports": [{"port": 80, "targetPort": SERVER_PORT}],
            },
        },
    )
    wait_until(lambda: _ready(core, namespace, "web"), "pod web to be Ready", POD_TIMEOUT)
    ready = time.monotonic()
    print(
        f"\nnode cluster: binaries {node_cluster.timings['binaries']:.1f} s (build or "
        f"lookup), start to Node Ready {node_cluster.timings['node_ready']:.1f} s, "
        f"pod created to Ready {ready - created:.1f} s, "
        f"start to this pod Ready {ready - node_cluster.started_at:.1f} s"
    )
    yield "web"


def test_pod_runs_to_completion(node_cluster: NodeCluster, namespace: str) -> None:
    core = client.CoreV1Api(node_cluster.api_client)
    name = unique_name("say")
    core.create_namespaced_pod(namespace, _pod(node_cluster, name, ["say", "hello", "node"]))
    _wait_succeeded(node_cluster, namespace, name)
    pod = core.read_namespaced_pod(name, namespace)
    assert pod.spec.node_name == node_cluster.node_name
    assert pod.status.container_statuses[0].state.terminated.exit_code == 0
    # kubectl logs: host → forwarder → apiserver → kubelet → the container's log file.
    logs = node_cluster.kubectl_run("logs", f"--namespace={namespace}", name).stdout
    assert logs == "hello node\n"


def test_service_answers_by_cluster_ip_and_dns_name(
    node_cluster: NodeCluster, namespace: str, web: str
) -> None:
    core = client.CoreV1Api(node_cluster.api_client)
    cluster_ip = core.read_namespaced_service(web, namespace).spec.cluster_ip
    by_ip = f"http://{cluster_ip}/by-ip"
    by_name = f"http://{web}.{namespace}.svc.{CLUSTER_DOMAIN}/by-name"
    name = unique_name("probe")
    core.create_namespaced_pod(namespace, _pod(node_cluster, name, ["probe", by_ip, by_name]))
    _wait_succeeded(node_cluster, namespace, name)

    # The client pod printed what answered: kube-proxy's NAT reached the server pod,
    # and CoreDNS resolved the Service's name to its ClusterIP.
    logs = node_cluster.kubectl_run("logs", f"--namespace={namespace}", name).stdout
    assert f"{by_ip} -> web /by-ip" in logs
    assert f"{by_name} -> web /by-name" in logs
    served = node_cluster.kubectl_run("logs", f"--namespace={namespace}", web).stdout
    assert "GET /by-ip" in served
    assert "GET /by-name" in served

    rss = node_cluster.rss_bytes()
    print(
        f"\nnode cluster: {len(node_cluster.processes())} processes with "
        f"{rss / 2**30:.2f} GiB resident (components, shims, pods)"
    )


def test_port_forward_from_the_host(node_cluster: NodeCluster, namespace: str, web: str) -> None:
    with (
        node_cluster.port_forward(namespace, f"pod/{web}", SERVER_PORT) as port,
        urllib.request.urlopen(f"http://127.0.0.1:{port}/from-host", timeout=10) as r,
    ):
        assert r.read().decode() == "web /from-host\n"
