"""The operator against a real control plane, run as it runs in a cluster.

`modelfleet operator` runs in a subprocess as a ServiceAccount bound by
manifests/rbac/single-namespace.yaml, with a short drift interval. No Ray pods run
here: where KubeRay would report on a RayService, the tests patch its status the same
way KubeRay does.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml

from tests import helpers
from tests.cluster.controlplane import ControlPlane, ControlPlaneError, install_kuberay_crds
from tests.helpers import free_port

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
CRD = ROOT / "manifests" / "crds" / "modeldeployments.modelfleet.io.yaml"
EXAMPLES = sorted((ROOT / "manifests" / "examples").glob("*.yaml"))
GOLDEN = ROOT / "tests" / "golden"
RBAC = ROOT / "manifests" / "rbac"
MODELFLEET = Path(sys.executable).parent / "modelfleet"
NAMESPACE = "mf-operator-e2e"
SERVICE_ACCOUNT = "modelfleet-operator"
# Waits are generous: the test machine is small and shared.
TIMEOUT = 90.0

T = TypeVar("T")


class Kubectl:
    """kubectl against one control plane, in one namespace, with JSON in and out."""

    def __init__(self, cp: ControlPlane, namespace: str) -> None:
        self.cp = cp
        self.namespace = namespace

    def run(
        self, *args: str, input: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        return self.cp.kubectl_run(f"--namespace={self.namespace}", *args, input=input, check=check)

    def apply(self, obj: dict[str, Any]) -> None:
        self.run("apply", "-f", "-", input=json.dumps(obj))

    def get(self, kind: str, name: str) -> dict[str, Any] | None:
        result = self.run("get", kind, name, "-o", "json", "--ignore-not-found", check=False)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout) if result.stdout.strip() else None

    def items(self, kind: str, *selectors: str) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = json.loads(
            self.run("get", kind, "-o", "json", *selectors).stdout
        )["items"]
        return items

    def events(self, name: str) -> list[dict[str, Any]]:
        return self.items("events", f"--field-selector=involvedObject.name={name}")


class Operator:
    """`modelfleet operator` in a subprocess, its health and metrics on 127.0.0.1."""

    def __init__(self, kubeconfig: Path, namespace: str, log: Path) -> None:
        self.kubeconfig = kubeconfig
        self.namespace = namespace
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None
        self.health_port = 0
        self.metrics_port = 0

    def start(self) -> None:
        self.health_port, self.metrics_port = free_port(), free_port()
        env = {
            **os.environ,
            "KUBECONFIG": str(self.kubeconfig),
            "MODELFLEET_DRIFT_INTERVAL_SECONDS": "2",
            "MODELFLEET_RETRY_SECONDS": "2",
            "MODELFLEET_OPERATOR_BIND_ADDRESS": "127.0.0.1",
        }
        command = [
            str(MODELFLEET),
            "operator",
            f"--namespace={self.namespace}",
            f"--health-port={self.health_port}",
            f"--metrics-port={self.metrics_port}",
        ]
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        wait_for(lambda: self.healthy() or None, "the operator's health endpoint", self)

    def healthy(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"the operator exited:\n{self.tail()}")
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.health_port}/healthz", timeout=2
            ) as answer:
                return bool(answer.status == 200)
        except OSError:
            return False

    def metrics(self) -> str:
        with urllib.request.urlopen(
            f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5
        ) as answer:
            text: str = answer.read().decode()
            return text

    def _signal(self, sig: signal.Signals, timeout: float) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, sig)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=timeout)

    def kill(self) -> None:
        """SIGKILL: no chance to finish anything, as when a node dies."""
        self._signal(signal.SIGKILL, 10)

    def stop(self) -> None:
        self._signal(signal.SIGTERM, 20)

    def tail(self, lines: int = 60) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


def wait_for(
    probe: Callable[[], T | None], what: str, operator: Operator | None, timeout: float = TIMEOUT
) -> T:
    """Poll `probe` until it returns something other than None (or False)."""
    tail = (lambda: f"operator log:\n{operator.tail()}") if operator is not None else None
    return helpers.wait_for(probe, what, timeout, details=tail)


def condition(md: dict[str, Any] | None, kind: str) -> dict[str, Any]:
    for c in ((md or {}).get("status") or {}).get("conditions") or []:
        if c["type"] == kind:
            return dict(c)
    return {}


def contains(live: Any, expected: Any, path: str = "") -> list[str]:
    """Where `live` differs from `expected`, ignoring what the apiserver added."""
    if isinstance(expected, dict):
        if not isinstance(live, dict):
            return [f"{path}: expected an object, got {live!r}"]
        diffs = []
        for key, value in expected.items():
            if key not in live:
                diffs.append(f"{path}.{key}: missing")
            else:
                diffs += contains(live[key], value, f"{path}.{key}")
        return diffs
    if isinstance(expected, list):
        if not isinstance(live, list) or len(live) != len(expected):
            return [f"{path}: expected {expected!r}, got {live!r}"]
        return [d for i, e in enumerate(expected) for d in contains(live[i], e, f"{path}[{i}]")]
    return [] if live == expected else [f"{path}: expected {expected!r}, got {live!r}"]


def current_generation_handled(kubectl: Kubectl, name: str) -> dict[str, Any] | None:
    """The ModelDeployment once its status is for its latest spec, else None."""
    md = kubectl.get("md", name)
    if md is None or (md.get("status") or {}).get("observedGeneration") != md["metadata"].get(
        "generation"
    ):
        return None
    return md


def kuberay_reports_ready(kubectl: Kubectl, name: str, ready: bool = True) -> None:
    """Patch a RayService's status as KubeRay does once its Serve app runs (or fails)."""
    rs = kubectl.get("rayservice", name)
    assert rs is not None
    config = yaml.safe_load(rs["spec"]["serveConfigV2"])["applications"][0]["args"]["config"]
    deployments = {p["name"]: {"status": "HEALTHY"} for p in config["pools"]}
    status = {
        "conditions": [
            {
                "type": "Ready",
                "status": "True" if ready else "False",
                "reason": "NonZeroServeEndpoints" if ready else "ZeroServeEndpoints",
                "message": "Number of serve endpoints is greater than 0"
                if ready
                else "Number of serve endpoints dropped to 0",
                "lastTransitionTime": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "observedGeneration": rs["metadata"]["generation"],
            }
        ],
        "serviceStatus": "Running" if ready else "",
        "numServeEndpoints": 1 if ready else 0,
        "observedGeneration": rs["metadata"]["generation"],
        "activeServiceStatus": {
            "rayClusterName": f"{name}-x7k2p",
            "applicationStatuses": {
                "modelfleet": {
                    "status": "RUNNING" if ready else "UNHEALTHY",
                    "serveDeploymentStatuses": deployments,
                }
            },
            "rayClusterStatus": {
                "readyWorkerReplicas": len(deployments) if ready else 0,
                "desiredWorkerReplicas": len(deployments),
            },
        },
    }
    kubectl.run(
        "patch",
        "rayservice",
        name,
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps({"status": status}),
    )


def example(name: str) -> dict[str, Any]:
    obj: dict[str, Any] = yaml.safe_load((ROOT / "manifests" / "examples" / name).read_text())
    return obj


def tiny(name: str) -> dict[str, Any]:
    """The tiny-cpu example under another name."""
    obj = example("tiny-cpu.yaml")
    obj["metadata"]["name"] = name
    return obj


def in_namespace(docs: list[dict[str, Any]], namespace: str, suffix: str) -> list[dict[str, Any]]:
    """RBAC manifests moved to `namespace`, cluster-scoped names made unique with `suffix`."""
    moved = []
    for doc in copy.deepcopy(docs):
        meta = doc["metadata"]
        if "namespace" in meta:
            meta["namespace"] = namespace
        else:
            meta["name"] += suffix
        if doc["kind"] in ("RoleBinding", "ClusterRoleBinding"):
            for subject in doc["subjects"]:
                subject["namespace"] = namespace
            if doc["roleRef"]["kind"] == "ClusterRole":
                doc["roleRef"]["name"] += suffix
        moved.append(doc)
    return moved


def service_account_kubeconfig(cp: ControlPlane, namespace: str, path: Path) -> Path:
    """A kubeconfig that authenticates as the operator's ServiceAccount (a bound token)."""
    token = cp.kubectl_run(
        f"--namespace={namespace}", "create", "token", SERVICE_ACCOUNT, "--duration=2h"
    ).stdout.strip()
    admin = yaml.safe_load(cp.kubeconfig.read_text())
    cluster = admin["clusters"][0]
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [cluster],
        "users": [{"name": SERVICE_ACCOUNT, "user": {"token": token}}],
        "contexts": [
            {
                "name": "operator",
                "context": {"cluster": cluster["name"], "user": SERVICE_ACCOUNT},
            }
        ],
        "current-context": "operator",
    }
    path.write_text(yaml.safe_dump(config))
    return path


def install_crd(cp: ControlPlane) -> None:
    """Apply the committed ModelDeployment CRD and wait until the apiserver serves it."""
    cp.kubectl_run(
        "apply",
        "--server-side",
        "--force-conflicts",
        "--field-manager=modelfleet-tests",
        f"--filename={CRD}",
    )

    # Polled rather than `kubectl wait`, which fails outright while a just-created CRD
    # has no status yet.
    def established() -> bool:
        result = cp.kubectl_run(
            "get",
            "crd/modeldeployments.modelfleet.io",
            "--output=jsonpath={.status.conditions[?(@.type=='Established')].status}",
            check=False,
        )
        return result.stdout.strip() == "True"

    wait_for(established, "the ModelDeployment CRD to be established", None)


@pytest.fixture(scope="module")
def kubectl(control_plane: ControlPlane) -> Iterator[Kubectl]:
    """The test namespace on the shared control plane, with the ModelDeployment CRD."""
    install_crd(control_plane)
    control_plane.kubectl_run("create", "namespace", NAMESPACE)
    yield Kubectl(control_plane, NAMESPACE)
    control_plane.kubectl_run("delete", "namespace", NAMESPACE, "--wait=false", check=False)


@pytest.fixture(scope="module")
def operator(
    control_plane: ControlPlane, kubectl: Kubectl, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Operator]:
    """The operator watching the test namespace, as its ServiceAccount with the RBAC shipped."""
    docs = list(yaml.safe_load_all((RBAC / "single-namespace.yaml").read_text()))
    rbac = in_namespace(docs, NAMESPACE, suffix="-e2e")
    control_plane.kubectl_run("apply", "-f", "-", input=yaml.safe_dump_all(rbac))
    workdir = tmp_path_factory.mktemp("operator")
    config = service_account_kubeconfig(control_plane, NAMESPACE, workdir / "kubeconfig")
    op = Operator(config, NAMESPACE, workdir / "operator.log")
    op.start()
    yield op
    op.stop()
    for doc in rbac:
        if "namespace" not in doc["metadata"]:
            control_plane.kubectl_run(
                "delete", doc["kind"], doc["metadata"]["name"], "--ignore-not-found", check=False
            )


def wait_children(kubectl: Kubectl, operator: Operator, name: str) -> tuple[dict[str, Any], ...]:
    rs = wait_for(lambda: kubectl.get("rayservice", name), f"RayService {name}", operator)
    svc = wait_for(lambda: kubectl.get("service", f"{name}-openai"), f"Service {name}", operator)
    return rs, svc


def wait_condition(
    kubectl: Kubectl, operator: Operator, name: str, kind: str, status: str, reason: str
) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        md = kubectl.get("md", name)
        c = condition(md, kind)
        return md if (c.get("status"), c.get("reason")) == (status, reason) else None

    return wait_for(probe, f"{name}: {kind}={status} ({reason})", operator)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_example_creates_children_as_in_golden_and_becomes_ready(
    kubectl: Kubectl, operator: Operator, path: Path
) -> None:
    kubectl.run("apply", f"--filename={path}")
    name = yaml.safe_load(path.read_text())["metadata"]["name"]
    rs, svc = wait_children(kubectl, operator, name)
    md = kubectl.get("md", name)
    assert md is not None

    golden = {
        doc["kind"]: doc for doc in yaml.safe_load_all((GOLDEN / f"{path.stem}.yaml").read_text())
    }
    # The monitoring children are covered by test_monitoring.py; these two carry the model.
    for live in (rs, svc):
        expected = golden[live["kind"]]
        diffs = contains(live["spec"], expected["spec"], "spec")
        diffs += contains(live["metadata"]["labels"], expected["metadata"]["labels"], "labels")
        diffs += contains(
            live["metadata"]["annotations"], expected["metadata"]["annotations"], "annotations"
        )
        assert not diffs, f"{live['kind']} differs from the golden:\n" + "\n".join(diffs)
        (owner,) = live["metadata"]["ownerReferences"]
        assert (owner["kind"], owner["uid"], owner["controller"]) == (
            "ModelDeployment",
            md["metadata"]["uid"],
            True,
        )

    waiting = wait_condition(kubectl, operator, name, "Ready", "False", "RayServiceNotReady")
    assert condition(waiting, "Validated")["status"] == "True"
    assert condition(waiting, "RayServiceReady")["reason"] == "WaitingForKubeRay"

    kuberay_reports_ready(kubectl, name)
    if yaml.safe_load(path.read_text())["spec"]["model"].get("adapters"):
        # Run outside the cluster, this operator cannot read the front door, so the
        # adapters are not known to be loaded and the ModelDeployment is not Ready.
        # tests/e2e/test_kuberay_serving.py sees them load through the real KubeRay.
        ready = wait_condition(kubectl, operator, name, "Ready", "False", "AdaptersNotReady")
        adapters = condition(ready, "AdaptersReady")
        assert (adapters["status"], adapters["reason"]) == ("Unknown", "HealthUnavailable")
        assert "outside the cluster" in adapters["message"], adapters
    else:
        ready = wait_condition(kubectl, operator, name, "Ready", "True", "Serving")
    status = ready["status"]
    assert status["observedGeneration"] == ready["metadata"]["generation"]
    assert status["endpoint"] == f"http://{name}-openai.{NAMESPACE}.svc:8000/v1"
    assert condition(ready, "RayServiceReady")["reason"] == "NonZeroServeEndpoints"
    assert status["readyReplicas"] == len(ready["spec"]["nodePools"])
    assert {p["name"]: p["state"] for p in status["pools"]} == {
        p["name"]: "HEALTHY" for p in ready["spec"]["nodePools"]
    }
    created = [e["message"] for e in kubectl.events(name) if e["reason"] == "Created"]
    # One event per child, each child once (monitoring children depend on the CRDs).
    assert len(created) == len(set(created)), created
    assert {f"created RayService {name}", f"created Service {name}-openai"} <= set(created)
    # The apiserver took the NetworkPolicy as rendered, owned by the ModelDeployment.
    policy = kubectl.get("networkpolicy", f"{name}-ray")
    assert policy is not None, "no NetworkPolicy"
    assert not contains(policy["spec"], golden["NetworkPolicy"]["spec"], "spec")
    assert policy["metadata"]["ownerReferences"][0]["uid"] == md["metadata"]["uid"]
    assert f"created NetworkPolicy {name}-ray" in created

    # KubeRay losing its endpoints shows through.
    kuberay_reports_ready(kubectl, name, ready=False)
    wait_condition(kubectl, operator, name, "Ready", "False", "RayServiceNotReady")


def test_spec_change_updates_the_ray_service_in_place(kubectl: Kubectl, operator: Operator) -> None:
    kubectl.apply(tiny("spec-change"))
    rs, _ = wait_children(kubectl, operator, "spec-change")
    kubectl.run(
        "patch", "md", "spec-change", "--type=merge", "-p", '{"spec":{"engine":{"maxNumSeqs":7}}}'
    )

    def updated() -> dict[str, Any] | None:
        live = kubectl.get("rayservice", "spec-change")
        return live if live and "max_num_seqs: 7" in live["spec"]["serveConfigV2"] else None

    after = wait_for(updated, "the RayService to carry maxNumSeqs 7", operator)
    assert after["metadata"]["uid"] == rs["metadata"]["uid"], "updated in place, not recreated"
    assert (
        after["metadata"]["annotations"]["modelfleet.io/spec-hash"]
        != (rs["metadata"]["annotations"]["modelfleet.io/spec-hash"])
    )
    md = wait_for(
        lambda: (m := kubectl.get("md", "spec-change")) and m["status"]["observedGeneration"] == 2,
        "observedGeneration 2",
        operator,
    )
    assert md
    assert "Updated" in [e["reason"] for e in kubectl.events("spec-change")]


def test_manual_edit_and_deletion_are_repaired(kubectl: Kubectl, operator: Operator) -> None:
    kubectl.apply(tiny("drift"))
    rs, svc = wait_children(kubectl, operator, "drift")

    kubectl.run(
        "patch",
        "rayservice",
        "drift",
        "--type=json",
        "-p",
        '[{"op":"replace","path":"/spec/rayClusterConfig/workerGroupSpecs/0/maxReplicas",'
        '"value":9}]',
    )
    wait_for(
        lambda: (
            (r := kubectl.get("rayservice", "drift"))
            and r["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["maxReplicas"] == 1
        ),
        "the edited maxReplicas to be reverted",
        operator,
    )
    kubectl.run(
        "patch",
        "service",
        "drift-openai",
        "--type=merge",
        "-p",
        '{"spec":{"selector":{"ray.io/serve":"false"}}}',
    )
    wait_for(
        lambda: (
            (s := kubectl.get("service", "drift-openai"))
            and s["spec"]["selector"].get("ray.io/serve") == "true"
        ),
        "the edited Service selector to be reverted",
        operator,
    )

    kubectl.run("delete", "rayservice", "drift")
    kubectl.run("delete", "service", "drift-openai")
    new_rs, new_svc = wait_children(kubectl, operator, "drift")
    assert new_rs["metadata"]["uid"] != rs["metadata"]["uid"]
    assert new_svc["metadata"]["uid"] != svc["metadata"]["uid"]
    assert "DriftRepaired" in [e["reason"] for e in kubectl.events("drift")]


def test_status_is_written_only_when_it_changes(kubectl: Kubectl, operator: Operator) -> None:
    kubectl.apply(tiny("quiet"))
    wait_children(kubectl, operator, "quiet")
    before = wait_condition(kubectl, operator, "quiet", "Ready", "False", "RayServiceNotReady")
    time.sleep(6)  # three drift intervals, each a full reconciliation
    after = kubectl.get("md", "quiet")
    assert after is not None
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]
    rs = kubectl.get("rayservice", "quiet")
    assert rs is not None
    assert rs["metadata"]["generation"] == 1, "re-applying an unchanged spec writes nothing"


def test_deleting_the_model_deployment_garbage_collects_children(
    kubectl: Kubectl, operator: Operator
) -> None:
    kubectl.apply(tiny("gc"))
    wait_children(kubectl, operator, "gc")
    kubectl.run("delete", "md", "gc")
    wait_for(
        lambda: (
            kubectl.get("rayservice", "gc") is None and kubectl.get("service", "gc-openai") is None
        ),
        "garbage collection of the RayService and the Service",
        operator,
    )


def _pool(**fields: Any) -> dict[str, Any]:
    return {"name": "cpu", **fields}


INVALID: list[tuple[str, Callable[[dict[str, Any]], None], str]] = [
    (
        "min-above-max",
        lambda o: o["spec"].update(nodePools=[_pool(minReplicas=3, maxReplicas=2)]),
        "minReplicas is greater than maxReplicas",
    ),
    (
        "duplicate-pools",
        lambda o: o["spec"].update(nodePools=[_pool(), _pool()]),
        "nodePools names must be unique",
    ),
    (
        "triton-settings-with-vllm",
        lambda o: o["spec"]["engine"].update(triton={"repository": "pvc://repo/x"}),
        "engine.triton is only allowed with engine.kind: triton",
    ),
    (
        "triton-without-settings",
        lambda o: o["spec"]["engine"].update(kind="triton"),
        "engine.kind: triton needs engine.triton",
    ),
    (
        "name-too-long",
        lambda o: o["metadata"].update(name="m" * 48),
        "metadata.name must be at most 47 characters",
    ),
    (
        "name-not-dns-1035",
        lambda o: o["metadata"].update(name="7b-model"),
        "metadata.name must start with a letter",
    ),
    (
        "unknown-quantization",
        lambda o: o["spec"]["model"].update(quantization="q4"),
        'Unsupported value: "q4"',
    ),
    (
        "exists-toleration-with-value",
        lambda o: o["spec"].update(
            nodePools=[_pool(tolerations=[{"key": "k", "operator": "Exists", "value": "v"}])]
        ),
        "a toleration with operator: Exists takes no value",
    ),
    (
        "zero-tensor-parallel",
        lambda o: o["spec"]["engine"].update(tensorParallelSize=0),
        "should be greater than or equal to 1",
    ),
    ("no-pools", lambda o: o["spec"].update(nodePools=[]), "should have at least 1 items"),
    (
        "unknown-source-scheme",
        lambda o: o["spec"]["model"].update(source="ftp://host/model"),
        "spec.model.source",
    ),
]


@pytest.mark.parametrize(("case", "mutate", "message"), INVALID, ids=[c[0] for c in INVALID])
def test_invalid_specs_are_refused_by_the_apiserver(
    kubectl: Kubectl, case: str, mutate: Callable[[dict[str, Any]], None], message: str
) -> None:
    obj = tiny(f"invalid-{case}")
    mutate(obj)
    result = kubectl.run("create", "-f", "-", input=json.dumps(obj), check=False)
    assert result.returncode != 0, f"{case} was accepted"
    assert message in result.stderr, result.stderr


def test_unworkable_spec_ends_as_validated_false_then_recovers(
    kubectl: Kubectl, operator: Operator
) -> None:
    obj = tiny("unworkable")
    obj["spec"]["engine"]["tensorParallelSize"] = 2  # a CPU pool cannot hold 2 GPUs
    kubectl.apply(obj)
    md = wait_condition(kubectl, operator, "unworkable", "Validated", "False", "InvalidSpec")
    message = condition(md, "Validated")["message"]
    assert "pool 'cpu' has no gpu" in message
    assert "give the pool a gpu or set both sizes to 1" in message
    ready = condition(md, "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "InvalidSpec")
    assert kubectl.get("rayservice", "unworkable") is None
    assert "InvalidSpec" in [e["reason"] for e in kubectl.events("unworkable")]
    assert 'modelfleet_operator_reconcile_total{result="invalid"}' in operator.metrics()
    # No crash loop: the operator stays healthy, and fixing the spec is enough.
    assert operator.healthy()
    kubectl.run(
        "patch",
        "md",
        "unworkable",
        "--type=merge",
        "-p",
        '{"spec":{"engine":{"tensorParallelSize":1}}}',
    )
    wait_children(kubectl, operator, "unworkable")
    wait_condition(kubectl, operator, "unworkable", "Validated", "True", "Valid")


def test_objects_it_does_not_own_are_left_alone(kubectl: Kubectl, operator: Operator) -> None:
    foreign = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "taken-openai", "labels": {"owner": "someone-else"}},
        "spec": {"selector": {"app": "other"}, "ports": [{"port": 80}]},
    }
    kubectl.apply(foreign)
    kubectl.apply(tiny("taken"))
    md = wait_condition(kubectl, operator, "taken", "Ready", "False", "OwnershipConflict")
    assert "Service taken-openai already exists" in condition(md, "Ready")["message"]
    svc = kubectl.get("service", "taken-openai")
    assert svc is not None
    assert svc["spec"]["selector"] == {"app": "other"}
    assert svc["metadata"]["labels"] == {"owner": "someone-else"}
    assert "ownerReferences" not in svc["metadata"]
    # Once the name is free the operator proceeds on its own.
    kubectl.run("delete", "service", "taken-openai")
    wait_children(kubectl, operator, "taken")
    wait_condition(kubectl, operator, "taken", "Ready", "False", "RayServiceNotReady")


def test_restarted_operator_duplicates_nothing_and_loses_nothing(
    kubectl: Kubectl, operator: Operator
) -> None:
    kubectl.apply(tiny("restart-a"))
    rs, _ = wait_children(kubectl, operator, "restart-a")
    operator.kill()
    try:
        # While the operator is down: a spec change, a new object, a deleted child.
        kubectl.run(
            "patch", "md", "restart-a", "--type=merge", "-p", '{"spec":{"engine":{"maxNumSeqs":9}}}'
        )
        kubectl.apply(tiny("restart-b"))
        kubectl.run("delete", "service", "restart-a-openai")
    finally:
        operator.start()

    wait_children(kubectl, operator, "restart-b")
    wait_for(
        lambda: (
            (r := kubectl.get("rayservice", "restart-a"))
            and "max_num_seqs: 9" in r["spec"]["serveConfigV2"]
        ),
        "the change made while the operator was down",
        operator,
    )
    wait_for(lambda: kubectl.get("service", "restart-a-openai"), "the deleted Service", operator)
    after = kubectl.get("rayservice", "restart-a")
    assert after is not None
    assert after["metadata"]["uid"] == rs["metadata"]["uid"]
    for name in ("restart-a", "restart-b"):
        selector = f"--selector=modelfleet.io/deployment={name}"
        assert len(kubectl.items("rayservices", selector)) == 1
        assert len(kubectl.items("services", selector)) == 1
        md = wait_for(
            functools.partial(current_generation_handled, kubectl, name),
            f"{name} status for its latest generation",
            operator,
        )
        assert condition(md, "Validated")["status"] == "True"
    created = [e["message"] for e in kubectl.events("restart-a") if e["reason"] == "Created"]
    assert created.count("created RayService restart-a") == 1, created


def test_health_and_metrics_endpoints(operator: Operator) -> None:
    assert operator.healthy()
    text = operator.metrics()
    assert 'modelfleet_operator_reconcile_total{result="success"}' in text
    assert "modelfleet_operator_reconcile_seconds_bucket" in text
    assert 'modelfleet_operator_deployments{condition="Ready",status="True"}' in text


CAN = [
    ("watch", "modeldeployments.modelfleet.io"),
    ("patch", "modeldeployments.modelfleet.io/status"),
    ("create", "rayservices.ray.io"),
    ("patch", "rayservices.ray.io"),
    ("patch", "services"),
    ("create", "networkpolicies.networking.k8s.io"),
    ("patch", "networkpolicies.networking.k8s.io"),
    ("create", "events"),
    # Monitoring children that the spec turns off are removed. (ServiceMonitors too,
    # but `kubectl auth can-i` answers "no" for a kind whose CRD is not installed.)
    ("delete", "configmaps"),
    # The Ray pods, to report a pool the scheduler cannot place.
    ("list", "pods"),
]
CANNOT = [
    ("delete", "rayservices.ray.io"),
    ("delete", "services"),
    ("delete", "networkpolicies.networking.k8s.io"),
    ("delete", "modeldeployments.modelfleet.io"),
    ("update", "modeldeployments.modelfleet.io"),
    ("create", "modeldeployments.modelfleet.io"),
    ("get", "secrets"),
    ("get", "pods"),
    ("delete", "pods"),
    ("create", "deployments.apps"),
]


@pytest.mark.parametrize("manifest", ["cluster-wide.yaml", "single-namespace.yaml"])
def test_rbac_grants_what_the_operator_uses_and_no_more(
    control_plane: ControlPlane, kubectl: Kubectl, tmp_path: Path, manifest: str
) -> None:
    # `kubectl` installs the ModelDeployment CRD: can-i answers "no" for unknown kinds.
    namespace = "mf-rbac-" + manifest.split("-")[0]
    control_plane.kubectl_run("create", "namespace", namespace)
    other = f"{namespace}-other"
    control_plane.kubectl_run("create", "namespace", other)
    docs = in_namespace(
        list(yaml.safe_load_all((RBAC / manifest).read_text())), namespace, suffix=f"-{namespace}"
    )
    control_plane.kubectl_run("apply", "-f", "-", input=yaml.safe_dump_all(docs))
    user = f"--as=system:serviceaccount:{namespace}:{SERVICE_ACCOUNT}"

    def can(verb: str, resource: str, where: str) -> bool:
        result = control_plane.kubectl_run(
            "auth", "can-i", verb, resource, f"--namespace={where}", user, check=False
        )
        return result.stdout.strip() == "yes"

    try:
        for verb, resource in CAN:
            assert can(verb, resource, namespace), f"cannot {verb} {resource}"
        for verb, resource in CANNOT:
            assert not can(verb, resource, namespace), f"can {verb} {resource}"
        # Only the cluster-wide install reaches other namespaces.
        assert can("patch", "rayservices.ray.io", other) is (manifest == "cluster-wide.yaml")
    finally:
        for doc in docs:
            if "namespace" not in doc["metadata"]:
                control_plane.kubectl_run(
                    "delete",
                    doc["kind"],
                    doc["metadata"]["name"],
                    "--ignore-not-found",
                    check=False,
                )
        for ns in (namespace, other):
            control_plane.kubectl_run("delete", "namespace", ns, "--wait=false", check=False)


def test_dependency_missing_until_kuberay_is_installed(tmp_path: Path) -> None:
    """On a control plane of its own, started without the KubeRay CRDs."""
    with ControlPlane() as cp:
        install_crd(cp)
        kubectl = Kubectl(cp, "default")
        op = Operator(cp.kubeconfig, "default", tmp_path / "operator.log")
        op.start()
        try:
            kubectl.apply(tiny("needs-kuberay"))
            md = wait_condition(kubectl, op, "needs-kuberay", "Ready", "False", "DependencyMissing")
            assert "install KubeRay" in condition(md, "Ready")["message"]
            assert condition(md, "RayServiceReady")["reason"] == "DependencyMissing"
            assert condition(md, "Validated")["status"] == "True"
            assert 'result="dependency_missing"' in op.metrics()
            assert op.healthy()

            # Three large CRDs: on a loaded machine one attempt can time out.
            for attempt in range(3):
                try:
                    install_kuberay_crds(cp.kubeconfig, cp.kubectl)
                    break
                except ControlPlaneError:
                    if attempt == 2:
                        raise
            wait_children(kubectl, op, "needs-kuberay")
            wait_condition(kubectl, op, "needs-kuberay", "Ready", "False", "RayServiceNotReady")
            kuberay_reports_ready(kubectl, "needs-kuberay")
            wait_condition(kubectl, op, "needs-kuberay", "Ready", "True", "Serving")
        finally:
            op.stop()
