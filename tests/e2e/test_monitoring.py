"""Monitoring of the operator against the real control plane.

The operator runs as `modelfleet operator` (outside any pod: there is no kubelet) and
reconciles a ModelDeployment with monitoring on. The tests check that the dashboards
ConfigMap appears with the label Grafana's sidecar watches, that a ServiceMonitor
appears only once the Prometheus Operator's CRD exists, that a real Prometheus
scraping the operator's /metrics has data for every panel of the operator dashboard,
and that turning a monitoring child off in the spec deletes the one the operator made
while a user's object that merely carries its name stays.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from modelfleet_operator.dashboards import dashboard_files, dashboards
from modelfleet_operator.monitoring import DASHBOARD_LABEL
from modelfleet_operator.names import SERVICE_MONITOR_CRD

from tests.cluster.controlplane import ControlPlane
from tests.helpers import free_port, wait_for
from tests.prometheus_fixtures import SCRAPE_INTERVAL_S, Prometheus

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "manifests" / "examples" / "tiny-cpu.yaml"
CRD = ROOT / "manifests" / "crds" / "modeldeployments.modelfleet.io.yaml"
# The Prometheus Operator's Go module publishes its CRDs; the same pin as the Helm tests.
PROMETHEUS_OPERATOR = "github.com/prometheus-operator/prometheus-operator@v0.85.0"
SERVICE_MONITOR_CRD_FILE = (
    "example/prometheus-operator-crd/monitoring.coreos.com_servicemonitors.yaml"
)
# Short operator timings, so a newly installed CRD is noticed within seconds.
OPERATOR_ENV = {
    "MODELFLEET_DRIFT_INTERVAL_SECONDS": "2",
    "MODELFLEET_RETRY_SECONDS": "2",
    "MODELFLEET_OPERATOR_BIND_ADDRESS": "127.0.0.1",
}


def _wait_for(read: Callable[[], Any], what: str, timeout: float = 90.0) -> Any:
    """The first truthy value `read` returns."""
    return wait_for(lambda: read() or None, what, timeout)


def _get(cp: ControlPlane, *args: str) -> dict[str, Any] | None:
    result = cp.kubectl_run("get", *args, "--output=json", check=False)
    if result.returncode != 0:
        return None
    obj: dict[str, Any] = json.loads(result.stdout)
    return obj


class Operator:
    """`modelfleet operator` watching one namespace, with its metrics on a free port."""

    def __init__(self, cp: ControlPlane, namespace: str, log: Path) -> None:
        self.metrics = f"127.0.0.1:{free_port()}"
        self._log = log.open("w")
        self._process = subprocess.Popen(
            [
                str(Path(sys.executable).with_name("modelfleet")),
                "operator",
                f"--namespace={namespace}",
                f"--metrics-port={self.metrics.rsplit(':', 1)[1]}",
                f"--health-port={free_port()}",
            ],
            env={**os.environ, **OPERATOR_ENV, "KUBECONFIG": str(cp.kubeconfig)},
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def stop(self) -> None:
        """Stop it the way Kubernetes does: SIGTERM, then SIGKILL after a grace period."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if self._process.poll() is not None:
                break
            os.killpg(self._process.pid, sig)
            try:
                self._process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                continue
        self._log.close()


@pytest.fixture(scope="module")
def deployment(
    control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, str, Operator]]:
    """A namespace with the tiny-cpu ModelDeployment (monitoring on) and an operator.

    The operator runs as the admin user: the RBAC it ships is the operator tests' subject.
    """
    # The same field manager as the operator tests, which apply the same CRD.
    control_plane.kubectl_run(
        "apply",
        "--server-side",
        "--force-conflicts",
        "--field-manager=modelfleet-tests",
        f"--filename={CRD}",
    )
    control_plane.kubectl_run(
        "wait", "--for=condition=Established", "--timeout=60s", f"--filename={CRD}"
    )
    namespace = f"monitoring-{uuid.uuid4().hex[:6]}"
    control_plane.kubectl_run("create", "namespace", namespace)
    md = yaml.safe_load(EXAMPLE.read_text())
    md["metadata"]["namespace"] = namespace
    md["spec"]["monitoring"] = {"serviceMonitor": True, "dashboards": True}
    operator = Operator(control_plane, namespace, tmp_path_factory.mktemp("operator") / "log")
    try:
        control_plane.kubectl_run("apply", "--filename=-", input=json.dumps(md))
        yield namespace, md["metadata"]["name"], operator
    finally:
        operator.stop()
        control_plane.kubectl_run("delete", "namespace", namespace, "--wait=false", check=False)


@pytest.fixture
def service_monitor_crd(control_plane: ControlPlane) -> Iterator[None]:
    """The ServiceMonitor CRD for one test; removed again if this fixture installed it."""
    if _get(control_plane, "crd", SERVICE_MONITOR_CRD) is not None:
        yield
        return
    download = subprocess.run(
        ["go", "mod", "download", "-json", PROMETHEUS_OPERATOR],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert download.returncode == 0, download.stdout + download.stderr
    crd = f"--filename={Path(json.loads(download.stdout)['Dir']) / SERVICE_MONITOR_CRD_FILE}"
    control_plane.kubectl_run("apply", "--server-side", crd)
    control_plane.kubectl_run("wait", "--for=condition=Established", "--timeout=60s", crd)
    try:
        yield
    finally:
        control_plane.kubectl_run("delete", "crd", SERVICE_MONITOR_CRD, "--wait=true")


def test_dashboards_config_map_carries_the_sidecar_label(
    control_plane: ControlPlane, deployment: tuple[str, str, Operator]
) -> None:
    namespace, name, _ = deployment
    config_map = _wait_for(
        lambda: _get(control_plane, "configmap", f"{name}-dashboards", f"--namespace={namespace}"),
        "the dashboards ConfigMap",
    )
    assert config_map["metadata"]["labels"][DASHBOARD_LABEL] == "1"
    assert config_map["data"] == dashboard_files()
    owners = config_map["metadata"]["ownerReferences"]
    assert [(o["kind"], o["name"]) for o in owners] == [("ModelDeployment", name)]


def test_service_monitor_only_once_its_crd_exists(
    control_plane: ControlPlane,
    deployment: tuple[str, str, Operator],
    request: pytest.FixtureRequest,
) -> None:
    namespace, name, _ = deployment
    assert _get(control_plane, "crd", SERVICE_MONITOR_CRD) is None, (
        "another test left the ServiceMonitor CRD installed"
    )
    # The operator has reconciled (its ConfigMap is there) without a ServiceMonitor.
    _wait_for(
        lambda: _get(control_plane, "configmap", f"{name}-dashboards", f"--namespace={namespace}"),
        "the first reconcile",
    )
    request.getfixturevalue("service_monitor_crd")
    monitor = _wait_for(
        lambda: _get(
            control_plane, "servicemonitor", f"{name}-metrics", f"--namespace={namespace}"
        ),
        "the ServiceMonitor after its CRD was installed",
    )
    endpoints = monitor["spec"]["endpoints"]
    assert [(e["port"], e["path"]) for e in endpoints] == [("http", "/metrics")]
    service = _get(control_plane, "service", f"{name}-openai", f"--namespace={namespace}")
    assert service is not None
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= service["metadata"]["labels"].items()


def test_every_operator_panel_has_data(
    prometheus: Prometheus, deployment: tuple[str, str, Operator]
) -> None:
    _, _, operator = deployment
    started = time.time()
    prometheus.scrape(operator.metrics)
    prometheus.wait_until_up(operator.metrics)
    # The drift timer reconciles every 2 s: wait for a few in the rate window.
    _wait_for(
        lambda: prometheus.query("sum(modelfleet_operator_reconcile_total) > 3"),
        "reconciles counted by Prometheus",
    )
    time.sleep(5 * SCRAPE_INTERVAL_S)
    empty = prometheus.panels_without_data(
        dashboards()["modelfleet-operator.json"], {}, since=started
    )
    assert not empty, "panels with no data:\n" + "\n".join(empty)


def _events(cp: ControlPlane, namespace: str, name: str, reason: str) -> list[str]:
    """The messages of the events with `reason` about the object `name`."""
    events = cp.kubectl_run(
        "get",
        "events",
        f"--namespace={namespace}",
        f"--field-selector=involvedObject.name={name}",
        "--output=json",
    )
    return [e["message"] for e in json.loads(events.stdout)["items"] if e["reason"] == reason]


def _monitoring(cp: ControlPlane, namespace: str, name: str, **parts: bool) -> None:
    patch = json.dumps({"spec": {"monitoring": parts}})
    cp.kubectl_run(
        "patch", "md", name, f"--namespace={namespace}", "--type=merge", f"--patch={patch}"
    )


def test_children_turned_off_are_deleted_and_a_namesake_stays(
    control_plane: ControlPlane,
    deployment: tuple[str, str, Operator],
    service_monitor_crd: None,
) -> None:
    # A ModelDeployment of its own next to the shared one, so the other tests keep theirs.
    namespace, _, _ = deployment
    md = yaml.safe_load(EXAMPLE.read_text())
    name = "switched-off"
    md["metadata"].update(name=name, namespace=namespace)
    md["spec"]["monitoring"] = {"serviceMonitor": True, "dashboards": True}
    control_plane.kubectl_run("apply", "--filename=-", input=json.dumps(md))
    config_map = ("configmap", f"{name}-dashboards", f"--namespace={namespace}")
    monitor = ("servicemonitor", f"{name}-metrics", f"--namespace={namespace}")
    _wait_for(lambda: _get(control_plane, *config_map), "the dashboards ConfigMap")
    _wait_for(lambda: _get(control_plane, *monitor), "the ServiceMonitor")

    _monitoring(control_plane, namespace, name, dashboards=False)
    _wait_for(lambda: _get(control_plane, *config_map) is None, "the ConfigMap to be deleted")
    assert _get(control_plane, *monitor) is not None, "only what was turned off goes"

    # Someone else takes the freed name; the operator must not count it as its own.
    control_plane.kubectl_run(
        "create", "configmap", config_map[1], f"--namespace={namespace}", "--from-literal=a=b"
    )
    theirs = _get(control_plane, *config_map)
    assert theirs is not None
    _monitoring(control_plane, namespace, name, serviceMonitor=False)
    _wait_for(lambda: _get(control_plane, *monitor) is None, "the ServiceMonitor to be deleted")
    # That reconciliation looked at the ConfigMap too; a few drift rounds more to be sure.
    time.sleep(3 * float(OPERATOR_ENV["MODELFLEET_DRIFT_INTERVAL_SECONDS"]))
    after = _get(control_plane, *config_map)
    assert after is not None, "the operator deleted a ConfigMap it did not make"
    assert after["metadata"]["uid"] == theirs["metadata"]["uid"]
    assert after["metadata"]["resourceVersion"] == theirs["metadata"]["resourceVersion"]
    assert after["data"] == {"a": "b"}

    def two_deleted_events() -> list[str] | None:
        # Kopf posts events in the background: they may trail the deletions a little.
        found = _events(control_plane, namespace, name, "Deleted")
        return found if len(found) >= 2 else None

    deleted = _wait_for(two_deleted_events, "the Deleted events")
    assert sorted(deleted) == [
        f"deleted ConfigMap {name}-dashboards: spec.monitoring no longer asks for it",
        f"deleted ServiceMonitor {name}-metrics: spec.monitoring no longer asks for it",
    ]
