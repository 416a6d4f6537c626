"""The test control plane is real: it builds, starts, validates CEL, collects garbage."""

import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tests.cluster.controlplane import BINARIES, ControlPlane, ensure_binaries, versions
from tests.helpers import unique_name, wait_until

pytestmark = pytest.mark.e2e


def _gone(read: Callable[[], object]) -> bool:
    """True once ``read()`` answers 404."""
    try:
        read()
    except ApiException as error:
        if error.status == 404:
            return True
        raise
    return False


def _check_serves(cp: ControlPlane) -> None:
    """/readyz is ok, the server reports the pinned version, kubectl lists namespaces."""
    assert cp.kubectl_run("get", "--raw", "/readyz").stdout == "ok"
    kube_version, _ = versions()
    reported = json.loads(cp.kubectl_run("version", "--output=json").stdout)
    assert reported["clientVersion"]["gitVersion"] == kube_version
    assert reported["serverVersion"]["gitVersion"] == kube_version
    names = cp.kubectl_run("get", "namespaces", "--output=name").stdout.split()
    assert {"namespace/default", "namespace/kube-system"} <= set(names)


def test_builds_from_cold_cache_then_starts_from_warm_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An empty binary cache forces a rebuild; the Go build cache stays warm.
    monkeypatch.setenv("MODELFLEET_CACHE", str(tmp_path))
    started = time.monotonic()
    bin_dir = ensure_binaries()
    cold_build = time.monotonic() - started
    assert bin_dir.is_relative_to(tmp_path / "modelfleet" / "controlplane")
    built = {name: (bin_dir / name).stat().st_mtime_ns for name in BINARIES}

    kube_version, _ = versions()
    client_version = subprocess.run(
        [bin_dir / "kubectl", "version", "--client"], capture_output=True, text=True, check=True
    )
    assert f"Client Version: {kube_version}" in client_version.stdout

    started = time.monotonic()
    with ControlPlane(bin_dir) as cp:
        cold_start = time.monotonic() - started
        _check_serves(cp)

    started = time.monotonic()
    assert ensure_binaries() == bin_dir
    warm_build = time.monotonic() - started
    assert {name: (bin_dir / name).stat().st_mtime_ns for name in BINARIES} == built

    started = time.monotonic()
    with ControlPlane(ensure_binaries()) as cp:
        warm_start = time.monotonic() - started
        _check_serves(cp)

    print(
        f"\ncontrol plane: build on an empty binary cache {cold_build:.1f} s, "
        f"lookup on a warm one {warm_build:.3f} s; start-up {cold_start:.1f} s "
        f"then {warm_start:.1f} s"
    )


RANGE_CRD = """
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: ranges.e2e.modelfleet.io
spec:
  group: e2e.modelfleet.io
  scope: Namespaced
  names: {plural: ranges, singular: range, kind: Range, listKind: RangeList}
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            required: [min, max]
            properties:
              min: {type: integer}
              max: {type: integer}
            x-kubernetes-validations:
            - rule: self.min <= self.max
              message: spec.min must not be greater than spec.max
"""


def test_crd_cel_rule_is_enforced_by_the_apiserver(control_plane: ControlPlane) -> None:
    control_plane.kubectl_run("apply", "--filename=-", input=RANGE_CRD)
    control_plane.kubectl_run(
        "wait", "--for=condition=Established", "--timeout=60s", "crd/ranges.e2e.modelfleet.io"
    )
    objects = client.CustomObjectsApi(control_plane.api_client)
    where = {"group": "e2e.modelfleet.io", "version": "v1", "namespace": "default"}

    def body(name: str, low: int, high: int) -> dict[str, object]:
        return {
            "apiVersion": "e2e.modelfleet.io/v1",
            "kind": "Range",
            "metadata": {"name": name},
            "spec": {"min": low, "max": high},
        }

    valid = unique_name("valid")
    objects.create_namespaced_custom_object(plural="ranges", body=body(valid, 1, 3), **where)
    stored = objects.get_namespaced_custom_object(plural="ranges", name=valid, **where)
    assert stored["spec"] == {"min": 1, "max": 3}

    with pytest.raises(ApiException) as refused:
        objects.create_namespaced_custom_object(
            plural="ranges", body=body(unique_name("invalid"), 5, 2), **where
        )
    assert refused.value.status == 422
    assert "spec.min must not be greater than spec.max" in refused.value.body


def test_garbage_collector_and_namespace_controller_run(control_plane: ControlPlane) -> None:
    core = client.CoreV1Api(control_plane.api_client)
    namespace = unique_name("e2e-gc")
    core.create_namespace({"metadata": {"name": namespace}})

    owner = core.create_namespaced_config_map(namespace, {"metadata": {"name": "owner"}})
    reference = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "name": "owner",
        "uid": owner.metadata.uid,
        "blockOwnerDeletion": False,
    }
    core.create_namespaced_config_map(
        namespace, {"metadata": {"name": "dependent", "ownerReferences": [reference]}}
    )
    core.delete_namespaced_config_map("owner", namespace)
    wait_until(
        lambda: _gone(lambda: core.read_namespaced_config_map("dependent", namespace)),
        "the garbage collector to delete the dependent ConfigMap",
    )

    # The namespace controller empties a deleted namespace, then removes it.
    core.create_namespaced_config_map(namespace, {"metadata": {"name": "leftover"}})
    core.delete_namespace(namespace)
    wait_until(
        lambda: _gone(lambda: core.read_namespace(namespace)),
        "the namespace controller to remove the namespace",
    )


def test_kuberay_crds_are_installed(control_plane: ControlPlane) -> None:
    explained = control_plane.kubectl_run("explain", "rayservice.spec.serveConfigV2").stdout
    assert "KIND:       RayService" in explained
    assert "FIELD: serveConfigV2" in explained
    names = control_plane.kubectl_run("get", "crd", "--output=name").stdout.split()
    for crd in ("rayservices.ray.io", "rayclusters.ray.io", "rayjobs.ray.io"):
        assert f"customresourcedefinition.apiextensions.k8s.io/{crd}" in names
