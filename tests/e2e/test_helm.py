"""The Helm chart and the plain-YAML install against the real test control plane.

The real helm binary installs, upgrades and uninstalls the chart; the apiserver (with its
admission chain: schema validation, PodSecurity, RBAC escalation checks) judges every
object. There is no kubelet, so the operator pod is created but never runs: these tests
check the objects, not the operator's behaviour.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from scripts.chart import CHART_DIR, INSTALL_FILE, INSTALL_VALUES, NAMESPACE, RELEASE
from tests.cluster.controlplane import ControlPlane, ControlPlaneError
from tests.helm.binary import ensure_helm
from tests.helm.render import Object, helm_args, parse
from tests.helpers import unique_name, wait_until

pytestmark = pytest.mark.e2e

CRD_NAME = "modeldeployments.modelfleet.io"

# The Prometheus Operator's CRDs, from its Go module (the same source the operator's
# authors publish them from), for the ServiceMonitor the chart can create.
PROMETHEUS_OPERATOR_MODULE = "github.com/prometheus-operator/prometheus-operator"
PROMETHEUS_OPERATOR_VERSION = "v0.85.0"
MONITOR_CRDS = ("servicemonitors", "podmonitors")


class Helm:
    """The pinned helm binary pointed at one control plane, with private helm state."""

    def __init__(self, cp: ControlPlane, home: Path) -> None:
        self.cp = cp
        # helm keeps repositories, a cache and its registry config under these; keeping
        # them in a temporary directory leaves the user's own helm setup alone.
        self.env = {
            **os.environ,
            "HELM_CACHE_HOME": str(home / "cache"),
            "HELM_CONFIG_HOME": str(home / "config"),
            "HELM_DATA_HOME": str(home / "data"),
            "KUBECONFIG": str(cp.kubeconfig),
        }
        self.binary = ensure_helm()

    def __call__(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [str(self.binary), *args], capture_output=True, text=True, env=self.env, timeout=300
        )
        if check and result.returncode != 0:
            pytest.fail(f"`helm {' '.join(args)}` exited {result.returncode}:\n{result.stderr}")
        return result


@pytest.fixture(scope="module")
def helm(control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Helm:
    return Helm(control_plane, tmp_path_factory.mktemp("helm-home"))


def _create_namespace(cp: ControlPlane, name: str, *, restricted: bool = False) -> None:
    cp.kubectl_run("create", "namespace", name)
    if restricted:
        # Pod Security "restricted" makes the apiserver refuse a pod that runs as root,
        # keeps capabilities, or allows privilege escalation.
        cp.kubectl_run("label", "namespace", name, "pod-security.kubernetes.io/enforce=restricted")


def _exists(cp: ControlPlane, obj: Object) -> bool:
    args = ["get", f"{obj['kind']}.{_group(obj)}".rstrip("."), obj["metadata"]["name"]]
    if "namespace" in obj["metadata"]:
        args += ["--namespace", obj["metadata"]["namespace"]]
    result = cp.kubectl_run(*args, "--ignore-not-found", "--output=name", check=False)
    assert result.returncode == 0, result.stderr
    return bool(result.stdout.strip())


def _group(obj: Object) -> str:
    return obj["apiVersion"].rpartition("/")[0]


def _dry_run(cp: ControlPlane, manifest: str) -> str:
    result = cp.kubectl_run(
        "apply",
        "--dry-run=server",
        "--server-side",
        "--field-manager=helm-test",
        "-f",
        "-",
        input=manifest,
        check=False,
    )
    assert result.returncode == 0, f"the apiserver refused the rendered chart:\n{result.stderr}"
    return result.stdout


@pytest.fixture
def monitor_crds(control_plane: ControlPlane) -> Iterator[None]:
    """The ServiceMonitor and PodMonitor CRDs, for this test only.

    Other tests may depend on the Prometheus Operator being absent (the operator skips
    monitors then), so CRDs this fixture installs are deleted again; CRDs that were
    already there are left as they were.
    """
    present = control_plane.kubectl_run(
        "get", "crd", "--output=jsonpath={.items[*].metadata.name}"
    ).stdout.split()
    missing = [p for p in MONITOR_CRDS if f"{p}.monitoring.coreos.com" not in present]
    if missing:
        module = _download_go_module(PROMETHEUS_OPERATOR_MODULE, PROMETHEUS_OPERATOR_VERSION)
        crd_dir = module / "example" / "prometheus-operator-crd"
        files = [f"--filename={crd_dir / f'monitoring.coreos.com_{p}.yaml'}" for p in missing]
        control_plane.kubectl_run("apply", "--server-side", "--field-manager=helm-test", *files)
        control_plane.kubectl_run("wait", "--for=condition=Established", "--timeout=60s", *files)
    try:
        yield
    finally:
        if missing:
            names = [f"{p}.monitoring.coreos.com" for p in missing]
            control_plane.kubectl_run("delete", "crd", *names, "--wait=true")


def _download_go_module(module: str, version: str) -> Path:
    """The directory of ``module@version`` in the Go module cache (downloaded if needed)."""
    result = subprocess.run(
        ["go", "mod", "download", "-json", f"{module}@{version}"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    info = json.loads(result.stdout or "{}")
    if result.returncode != 0 or "Dir" not in info:
        raise ControlPlaneError(
            f"go mod download {module}@{version} failed:\n{result.stdout}{result.stderr}"
        )
    return Path(info["Dir"])


# ------------------------------------------------------------------------------ tests


def test_lint_passes(helm: Helm) -> None:
    result = helm("lint", "--strict", str(CHART_DIR))
    assert "0 chart(s) failed" in result.stdout


def test_template_is_accepted_by_the_apiserver(control_plane: ControlPlane, helm: Helm) -> None:
    namespace = unique_name("helm-dry")
    _create_namespace(control_plane, namespace)
    try:
        manifest = helm(*helm_args(), "--include-crds", "--namespace", namespace).stdout
        # helm_args names namespace "modelfleet" first; the later --namespace wins.
        out = _dry_run(control_plane, manifest)
        assert "deployment.apps/mf-modelfleet serverside-applied (server dry run)" in out
        assert f"customresourcedefinition.apiextensions.k8s.io/{CRD_NAME}" in out
    finally:
        control_plane.kubectl_run("delete", "namespace", namespace, "--wait=false")


def test_every_option_is_accepted_by_the_apiserver(
    control_plane: ControlPlane, helm: Helm, monitor_crds: None
) -> None:
    namespace, team = unique_name("helm-dry"), unique_name("team")
    for name in (namespace, team):
        _create_namespace(control_plane, name)
    try:
        values = [
            "--set",
            "webhook.enabled=true",
            "--set",
            "metrics.serviceMonitor.enabled=true",
            "--set",
            "watch.scope=namespaces",
            "--set",
            f"watch.namespaces={{{namespace},{team}}}",
        ]
        manifest = helm("template", "mf", str(CHART_DIR), "--namespace", namespace, *values).stdout
        out = _dry_run(control_plane, manifest)
        for expected in (
            "validatingwebhookconfiguration.admissionregistration.k8s.io/mf-modelfleet",
            "servicemonitor.monitoring.coreos.com/mf-modelfleet",
            "role.rbac.authorization.k8s.io/mf-modelfleet",
            "secret/mf-modelfleet-webhook-tls",
        ):
            assert expected in out
    finally:
        for name in (namespace, team):
            control_plane.kubectl_run("delete", "namespace", name, "--wait=false")


def test_install_upgrade_uninstall(control_plane: ControlPlane, helm: Helm) -> None:
    cp = control_plane
    release, namespace = unique_name("mf"), unique_name("helm-install")
    _create_namespace(cp, namespace, restricted=True)
    # The webhook is on, as by default (limited by scope to this namespace, so other
    # tests' objects are not sent to an operator that never runs here), to show its
    # certificate survives and that it fails closed for ModelDeployments only.
    values = ["--set", "watch.scope=namespaces"]
    try:
        install = helm("install", release, str(CHART_DIR), "--namespace", namespace, *values)
        assert "rollout status deployment/" in install.stdout  # NOTES.txt

        objects = parse(helm("get", "manifest", release, "--namespace", namespace).stdout)
        kinds = {o["kind"] for o in objects}
        assert {
            "Deployment",
            "ServiceAccount",
            "ClusterRole",
            "ClusterRoleBinding",
            "Role",
            "RoleBinding",
            "Service",
            "ConfigMap",
            "Secret",
            "ValidatingWebhookConfiguration",
        } <= kinds
        missing = [f"{o['kind']}/{o['metadata']['name']}" for o in objects if not _exists(cp, o)]
        assert not missing, f"helm install did not create {missing}"
        assert cp.kubectl_run("get", "crd", CRD_NAME, "--output=name").stdout.strip()

        # The Deployment controller creates the pod (no kubelet runs it). Its creation
        # proves the pod passes Pod Security "restricted" in this namespace.
        deployment = next(o for o in objects if o["kind"] == "Deployment")
        selector = ",".join(
            f"{k}={v}" for k, v in deployment["spec"]["selector"]["matchLabels"].items()
        )

        def pod_created() -> bool:
            pods = cp.kubectl_run("get", "pods", "-n", namespace, "-l", selector, "-o", "name")
            return bool(pods.stdout.strip())

        wait_until(pod_created, "the operator pod to be admitted", timeout=90)

        secret_name = next(o for o in objects if o["kind"] == "Secret")["metadata"]["name"]

        def certificate() -> str:
            out = cp.kubectl_run("get", "secret", secret_name, "-n", namespace, "-o", "json").stdout
            return json.loads(out)["data"]["tls.crt"]

        before = certificate()

        helm(
            "upgrade",
            release,
            str(CHART_DIR),
            "--namespace",
            namespace,
            "--reuse-values",
            "--set",
            "operator.replicas=0",
        )
        status = json.loads(helm("status", release, "-n", namespace, "-o", "json").stdout)
        assert status["version"] == 2
        assert status["info"]["status"] == "deployed"
        replicas = cp.kubectl_run(
            "get",
            "deployment",
            deployment["metadata"]["name"],
            "-n",
            namespace,
            "-o",
            "jsonpath={.spec.replicas}",
        ).stdout
        assert replicas == "0"
        # lookup found the first release's Secret: the same certificate, still trusted.
        assert certificate() == before
        webhook = json.loads(
            cp.kubectl_run(
                "get", "validatingwebhookconfiguration", release + "-modelfleet", "-o", "json"
            ).stdout
        )
        ca = webhook["webhooks"][0]["clientConfig"]["caBundle"]
        secret = json.loads(
            cp.kubectl_run("get", "secret", secret_name, "-n", namespace, "-o", "json").stdout
        )
        assert ca == secret["data"]["ca.crt"]
        assert base64.b64decode(before).startswith(b"-----BEGIN CERTIFICATE-----")
        _webhook_fails_closed_for_model_deployments_only(cp, webhook, namespace)

        helm("uninstall", release, "--namespace", namespace, "--wait")
        left = [f"{o['kind']}/{o['metadata']['name']}" for o in objects if _exists(cp, o)]
        assert not left, f"helm uninstall left {left}"
        # Helm never deletes CRDs (that would delete every ModelDeployment with them).
        assert cp.kubectl_run("get", "crd", CRD_NAME, "--output=name").stdout.strip()
    finally:
        helm("uninstall", release, "--namespace", namespace, "--ignore-not-found", check=False)
        cp.kubectl_run("delete", "namespace", namespace, "--wait=false", check=False)


def _webhook_fails_closed_for_model_deployments_only(
    cp: ControlPlane, webhook: Object, namespace: str
) -> None:
    """With failurePolicy Fail and no operator answering, a ModelDeployment in the
    watched namespace is refused; a labelled one, and everything else, goes through."""
    (hook,) = webhook["webhooks"]
    # The apiserver kept the scoping the chart asked for.
    assert hook["failurePolicy"] == "Fail"
    assert hook["rules"][0]["resources"] == ["modeldeployments"]
    assert hook["objectSelector"]["matchExpressions"][0]["key"] == "modelfleet.io/admission"
    assert hook["matchConditions"][0]["name"] == "not-the-operator"
    md = {
        "apiVersion": "modelfleet.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "tiny", "namespace": namespace},
        "spec": {
            "model": {"source": "builtin://tiny-llama", "servedName": "tiny"},
            "nodePools": [{"name": "cpu"}],
        },
    }
    refused = cp.kubectl_run("apply", "-f", "-", input=json.dumps(md), check=False)
    assert refused.returncode != 0
    assert "failed calling webhook" in refused.stderr, refused.stderr
    md["metadata"]["labels"] = {"modelfleet.io/admission": "skip"}
    admitted = cp.kubectl_run("apply", "-f", "-", input=json.dumps(md), check=False)
    assert admitted.returncode == 0, admitted.stderr
    other = cp.kubectl_run("create", "configmap", unique_name("cm"), "-n", namespace, check=False)
    assert other.returncode == 0, other.stderr


def test_schema_refuses_bad_values_on_install(helm: Helm) -> None:
    result = helm(
        "install",
        unique_name("bad"),
        str(CHART_DIR),
        "--namespace",
        "default",
        "--set",
        "operator.replicas=-1",
        "--set",
        "unknownKey=1",
        check=False,
    )
    assert result.returncode != 0
    assert "values don't meet the specifications of the schema" in result.stderr
    assert "at '/operator/replicas': minimum: got -1, want 0" in result.stderr
    assert "additional properties 'unknownKey' not allowed" in result.stderr


def test_plain_yaml_install_applies_and_matches_the_chart(
    control_plane: ControlPlane, helm: Helm
) -> None:
    cp = control_plane
    objects = parse(INSTALL_FILE.read_text())
    try:
        cp.kubectl_run("apply", "-f", str(INSTALL_FILE))
        missing = [f"{o['kind']}/{o['metadata']['name']}" for o in objects if not _exists(cp, o)]
        assert not missing, f"kubectl apply did not create {missing}"
        # What the chart would install is what now runs: kubectl diff compares the live
        # objects with the chart's rendering and exits 0 only when nothing differs.
        chart = helm(
            "template", RELEASE, str(CHART_DIR), "--namespace", NAMESPACE, *INSTALL_VALUES
        ).stdout
        diff = cp.kubectl_run("diff", "-f", "-", input=chart, check=False)
        assert diff.returncode == 0, (
            f"the plain-YAML install differs from the chart:\n{diff.stdout}{diff.stderr}"
        )
    finally:
        # The CRD stays, as with helm: other tests may have ModelDeployments.
        for obj in reversed(objects):
            if obj["kind"] == "CustomResourceDefinition":
                continue
            args = ["delete", f"{obj['kind']}.{_group(obj)}".rstrip("."), obj["metadata"]["name"]]
            if "namespace" in obj["metadata"]:
                args += ["--namespace", obj["metadata"]["namespace"]]
            cp.kubectl_run(*args, "--ignore-not-found", "--wait=false", check=False)
