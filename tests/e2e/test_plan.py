"""`modelfleet plan` against the real test apiserver: the live comparison.

The live ModelDeployment is created through the API without an operator (so it has
no RayService until this test applies the rendered one itself), and the GPUs come
from a Node object created through the API with `nvidia.com/gpu` allocatable and a
pod bound to it that requests some of them. No kubelet runs: the maths only needs
the objects.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.cluster.controlplane import ControlPlane
from tests.helpers import unique_name

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
CRD = ROOT / "manifests" / "crds" / "modeldeployments.modelfleet.io.yaml"


def apply(cp: ControlPlane, obj: dict[str, Any]) -> None:
    cp.kubectl_run(
        "apply", "--server-side", "--field-manager=plan-e2e", "-f", "-", input=json.dumps(obj)
    )


@pytest.fixture
def where(control_plane: ControlPlane) -> Iterator[tuple[str, str]]:
    """A namespace and a node label of this test's own; both removed afterwards."""
    cp = control_plane
    cp.kubectl_run(
        "apply",
        "--server-side",
        "--force-conflicts",
        "--field-manager=modelfleet-tests",
        "-f",
        str(CRD),
    )
    cp.kubectl_run(
        "wait", "--for=condition=Established", "--timeout=60s", "crd/modeldeployments.modelfleet.io"
    )
    namespace, pool_label = unique_name("plan"), unique_name("gpu-pool")
    cp.kubectl_run("create", "namespace", namespace)
    try:
        yield namespace, pool_label
    finally:
        cp.kubectl_run("delete", "namespace", namespace, "--wait=false", check=False)
        cp.kubectl_run(
            "delete",
            "node",
            "-l",
            f"modelfleet.io/test-pool={pool_label}",
            "--wait=false",
            check=False,
        )


def gpu_node(name: str, pool_label: str, gpus: int) -> dict[str, Any]:
    """A Node as a kubelet with the NVIDIA device plugin would register it."""
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": {"modelfleet.io/test-pool": pool_label}},
        "status": {
            "capacity": {"cpu": "32", "memory": "256Gi", "nvidia.com/gpu": str(gpus)},
            "allocatable": {"cpu": "32", "memory": "256Gi", "nvidia.com/gpu": str(gpus)},
        },
    }


def gpu_pod(namespace: str, node: str, gpus: int) -> dict[str, Any]:
    """A pod bound to `node` that holds `gpus` GPUs (it never runs: no kubelet)."""
    resources = {"nvidia.com/gpu": str(gpus)}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": unique_name("holder"), "namespace": namespace},
        "spec": {
            "nodeName": node,
            "containers": [
                {
                    "name": "c",
                    "image": "example.org/none:1",
                    "resources": {"requests": resources, "limits": resources},
                }
            ],
        },
    }


def deployment(namespace: str, pool_label: str, *, tp: int, queue: float = 8) -> dict[str, Any]:
    return {
        "apiVersion": "modelfleet.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "llama", "namespace": namespace},
        "spec": {
            "model": {"source": "hf://meta-llama/Meta-Llama-3-70B-Instruct", "servedName": "l"},
            "engine": {"maxModelLen": 8192, "tensorParallelSize": tp},
            "nodePools": [
                {
                    "name": "h100",
                    "gpu": {"type": "H100", "memoryGiB": 80},
                    "nodeSelector": {"modelfleet.io/test-pool": pool_label},
                    "minReplicas": 1,
                    "maxReplicas": 2,
                }
            ],
            "autoscaling": {"targetQueueDepth": queue},
        },
    }


def plan(
    cp: ControlPlane,
    obj: dict[str, Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> tuple[int, dict[str, Any]]:
    from modelfleet_cli.main import main

    file = tmp_path / "new.yaml"
    file.write_text(yaml.safe_dump(obj))
    monkeypatch.setenv("KUBECONFIG", str(cp.kubeconfig))
    with pytest.raises(SystemExit) as exited:
        main(["plan", "--offline", "--output", "json", str(file)])
    assert isinstance(exited.value.code, int)
    (pool,) = json.loads(capsys.readouterr().out)
    return exited.value.code, pool


def test_plan_compares_with_the_live_objects_and_counts_free_gpus(
    control_plane: ControlPlane,
    where: tuple[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    cp = control_plane
    namespace, pool_label = where
    node = unique_name("gpu-node")
    cp.kubectl_run("create", "-f", "-", input=json.dumps(gpu_node(node, pool_label, 8)))
    cp.kubectl_run("create", "-f", "-", input=json.dumps(gpu_pod(namespace, node, 2)))
    live = deployment(namespace, pool_label, tp=2)
    apply(cp, live)

    # Nothing deployed yet (no operator here): compared with what the live spec renders.
    code, pool = plan(cp, deployment(namespace, pool_label, tp=4), tmp_path, monkeypatch, capsys)
    assert code == 0 and pool["fits"] is True
    assert pool["live"]["found"] is True
    assert pool["live"]["changed"] == ["spec.engine.tensorParallelSize"]
    assert pool["live"]["rollout"] == "new-cluster"
    assert any("no RayService" in note for note in pool["live"]["notes"])
    # One replica of 4 GPUs beside the old cluster: 8 allocatable - 2 requested = 6 free.
    assert pool["live"]["upgrade"] == {
        "gpus_per_replica": 4,
        "replicas_needed": 1,
        "gpus_needed": 4,
        "nodes": 1,
        "free_gpus": 6,
        "placeable_replicas": 1,
        "enough": True,
    }

    # The RayService the operator would have made, applied by hand.
    from modelfleet_cli.render import render_documents

    rendered = yaml.safe_load_all(render_documents(live, image=None, namespace=namespace))
    ray_service = next(doc for doc in rendered if doc["kind"] == "RayService")
    apply(cp, ray_service)

    # Only the Serve application changes: in place, no GPUs needed.
    code, pool = plan(
        cp, deployment(namespace, pool_label, tp=2, queue=3), tmp_path, monkeypatch, capsys
    )
    assert code == 0
    assert pool["live"]["changed"] == ["spec.autoscaling.targetQueueDepth"]
    assert pool["live"]["rollout"] == "in-place"
    assert pool["live"]["notes"] == []
    assert pool["live"]["upgrade"]["gpus_needed"] == 0

    # More GPUs per replica than any node has free once more are taken.
    cp.kubectl_run("create", "-f", "-", input=json.dumps(gpu_pod(namespace, node, 4)))
    code, pool = plan(cp, deployment(namespace, pool_label, tp=4), tmp_path, monkeypatch, capsys)
    assert pool["live"]["rollout"] == "new-cluster"
    assert pool["live"]["upgrade"]["free_gpus"] == 2
    assert pool["live"]["upgrade"]["enough"] is False


def test_plan_of_a_new_object_is_a_create(
    control_plane: ControlPlane,
    where: tuple[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    namespace, pool_label = where
    code, pool = plan(
        control_plane, deployment(namespace, pool_label, tp=4), tmp_path, monkeypatch, capsys
    )
    assert code == 0
    assert pool["live"]["found"] is False and pool["live"]["rollout"] == "create"
    # No node carries the pool's label: nothing to place the replica on.
    assert pool["live"]["upgrade"]["nodes"] == 0 and pool["live"]["upgrade"]["enough"] is False
