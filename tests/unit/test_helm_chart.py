"""The Helm chart, rendered by the real helm binary (no cluster needed).

What the apiserver says about the rendered objects is in tests/e2e/test_helm.py.
"""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from modelfleet_operator.api import v1alpha1
from modelfleet_operator.hub import HUB_TIMEOUT_S
from modelfleet_operator.names import (
    RAY_GROUP,
    RAY_SERVICE_KIND,
    RAY_SERVICE_PLURAL,
    SERVICE_MONITOR_GROUP,
    SERVICE_MONITOR_KIND,
    SERVICE_MONITOR_PLURAL,
)

from scripts.chart import CHART_DIR, REPO, drift, helm
from tests.helm.render import Object, grants, helm_args, of_kind, only, render

RBAC_DIR = REPO / "manifests" / "rbac"
GOLDEN_DIR = REPO / "tests" / "golden"

# The operator writes every object it renders with server-side apply: create when absent,
# patch after, and get to read it back.
APPLY_VERBS = {"get", "create", "patch"}
PLURALS = {
    (RAY_GROUP, RAY_SERVICE_KIND): RAY_SERVICE_PLURAL,
    ("", "Service"): "services",
    ("", "ConfigMap"): "configmaps",
    ("networking.k8s.io", "NetworkPolicy"): "networkpolicies",
    (SERVICE_MONITOR_GROUP, SERVICE_MONITOR_KIND): SERVICE_MONITOR_PLURAL,
    (SERVICE_MONITOR_GROUP, "PodMonitor"): "podmonitors",
}


@pytest.fixture(scope="module")
def default() -> list[Object]:
    return render()


def test_lint_passes_with_default_and_full_values() -> None:
    for extra in ([], ["--set", "webhook.enabled=true,metrics.serviceMonitor.enabled=true"]):
        result = helm("lint", "--strict", str(CHART_DIR), *extra, check=False)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "0 chart(s) failed" in result.stdout


def test_generated_files_are_in_step_with_their_sources() -> None:
    # CRDs and dashboards copied into the chart, and manifests/install rendered from it.
    assert drift() == [], "run manifests/install/generate and commit the result"


def test_crds_and_dashboards_are_shipped() -> None:
    assert (CHART_DIR / "crds" / "modeldeployments.modelfleet.io.yaml").is_file()
    assert sorted(p.name for p in (CHART_DIR / "dashboards").glob("*.json"))


def test_default_render_has_every_object(default: list[Object]) -> None:
    kinds = sorted(o["kind"] for o in default)
    assert kinds == sorted(
        [
            "ServiceAccount",
            "ClusterRole",
            "ClusterRoleBinding",
            "Deployment",
            "Service",
            "ConfigMap",
            # The admission webhook is on by default, with the chart's own certificate.
            "Secret",
            "Service",
            "ValidatingWebhookConfiguration",
        ]
    )
    assert all(o["metadata"]["name"].startswith("mf-modelfleet") for o in default)


def test_operator_deployment_is_locked_down(default: list[Object]) -> None:
    deployment = only(default, "Deployment")
    spec = deployment["spec"]
    # No leader election: one replica, and never two during an upgrade.
    assert spec["replicas"] == 1
    assert spec["strategy"] == {"type": "Recreate"}
    pod = spec["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["serviceAccountName"] == only(default, "ServiceAccount")["metadata"]["name"]
    (container,) = pod["containers"]
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert container["resources"]["requests"] and container["resources"]["limits"]
    assert container["command"] == ["modelfleet", "operator"]
    assert container["args"] == [
        "--health-port=8080",
        "--metrics-port=9090",
        "--image=modelfleet/modelfleet:0.1.0",
        "--webhook-port=9443",
        "--webhook-cert-dir=/etc/modelfleet/webhook",
    ]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"health": 8080, "metrics": 9090, "webhook": 9443}
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "health"}


def test_metrics_service_selects_the_operator(default: list[Object]) -> None:
    service = only(default, "Service", "mf-modelfleet-metrics")
    pod_labels = only(default, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert service["spec"]["ports"] == [
        {"name": "metrics", "port": 9090, "targetPort": "metrics", "protocol": "TCP"}
    ]


def test_dashboards_config_map_holds_every_dashboard(default: list[Object]) -> None:
    config_map = only(default, "ConfigMap")
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    for path in sorted((REPO / "dashboards").glob("*.json")):
        assert json.loads(config_map["data"][path.name]) == json.loads(path.read_text())
    elsewhere = render({"dashboards.namespace": "grafana"})
    assert only(elsewhere, "ConfigMap")["metadata"]["namespace"] == "grafana"
    assert not of_kind(render({"dashboards.enabled": "false"}), "ConfigMap")


def test_cluster_scope_grants_everything_in_one_cluster_role(default: list[Object]) -> None:
    role = only(default, "ClusterRole")
    binding = only(default, "ClusterRoleBinding")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "mf-modelfleet", "namespace": "modelfleet"}
    ]
    assert grants(role["rules"]) == grants(_manifest("cluster-wide.yaml", "ClusterRole")["rules"])
    # It references the API-key Secret by name and never reads it.
    assert not any(resource == "secrets" for _, resource, _ in grants(role["rules"]))
    assert not of_kind(default, "Role")


def test_namespaces_scope_grants_roles_per_namespace_only() -> None:
    objects = render({"watch.scope": "namespaces", "watch.namespaces": "{team-a,team-b}"})
    cluster_grants = grants(only(objects, "ClusterRole")["rules"])
    # Only reading stays cluster-wide.
    assert {verb for _, _, verb in cluster_grants} <= {"get", "list", "watch"}
    roles = of_kind(objects, "Role")
    bindings = of_kind(objects, "RoleBinding")
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["team-a", "team-b"]
    assert all(b["subjects"][0]["namespace"] == "modelfleet" for b in bindings)
    assert grants(roles[0]["rules"]) == grants(roles[1]["rules"])
    args = only(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert [a for a in args if a.startswith("--namespace")] == [
        "--namespace=team-a",
        "--namespace=team-b",
    ]
    # Without a list, the operator watches the release namespace.
    alone = render({"watch.scope": "namespaces"})
    assert [r["metadata"]["namespace"] for r in of_kind(alone, "Role")] == ["modelfleet"]


def test_rbac_covers_every_kind_the_operator_renders(default: list[Object]) -> None:
    granted = grants(only(default, "ClusterRole")["rules"])
    rendered = [
        doc
        for path in sorted(GOLDEN_DIR.glob("*.yaml"))
        for doc in yaml.safe_load_all(path.read_text())
        if doc
    ]
    assert rendered, "tests/golden holds the operator's rendered objects"
    for obj in rendered:
        group = obj["apiVersion"].rpartition("/")[0]
        plural = PLURALS.get((group, obj["kind"]))
        assert plural, f"add {obj['kind']} to PLURALS and to the chart's RBAC"
        missing = {verb for verb in APPLY_VERBS if (group, plural, verb) not in granted}
        assert not missing, f"the chart does not grant {sorted(missing)} on {group}/{plural}"


def _manifest(file: str, kind: str) -> Object:
    """The one object of ``kind`` in manifests/rbac/``file``."""
    return only(yaml.safe_load_all((RBAC_DIR / file).read_text()), kind)


@pytest.mark.parametrize(
    ("values", "file", "kind"),
    [
        ({}, "cluster-wide.yaml", "ClusterRole"),
        ({"watch.scope": "namespaces"}, "single-namespace.yaml", "ClusterRole"),
        ({"watch.scope": "namespaces"}, "single-namespace.yaml", "Role"),
    ],
)
def test_rbac_is_exactly_the_operators_manifests(
    values: dict[str, str], file: str, kind: str
) -> None:
    """The chart grants what manifests/rbac/ grants, for both scopes: nothing more."""
    chart = only(render(values), kind)
    assert grants(chart["rules"]) == grants(_manifest(file, kind)["rules"])


def test_webhook_is_on_by_default_and_fails_closed(default: list[Object]) -> None:
    (hook,) = only(default, "ValidatingWebhookConfiguration")["webhooks"]
    assert hook["failurePolicy"] == "Fail"
    # Within the apiserver's limit, and above the time the operator gives hub lookups.
    assert HUB_TIMEOUT_S < hook["timeoutSeconds"] <= 30
    disabled = render({"webhook.enabled": "false"})
    assert not of_kind(disabled, "ValidatingWebhookConfiguration")
    assert not of_kind(disabled, "Secret")
    args = only(disabled, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert not [a for a in args if a.startswith("--webhook")]


def test_webhook_cannot_lock_the_cluster(default: list[Object]) -> None:
    """Only ModelDeployments are judged, never in system namespaces, never the operator's
    own writes, and a labelled object is let through while the operator is down."""
    (hook,) = only(default, "ValidatingWebhookConfiguration")["webhooks"]
    assert hook["rules"] == [
        {
            "apiGroups": [v1alpha1.GROUP],
            "apiVersions": [v1alpha1.VERSION],
            "operations": ["CREATE", "UPDATE"],
            "resources": [v1alpha1.PLURAL],
            "scope": "Namespaced",
        }
    ]
    assert hook["namespaceSelector"] == {
        "matchExpressions": [
            {
                "key": "kubernetes.io/metadata.name",
                "operator": "NotIn",
                "values": ["kube-system", "kube-public", "kube-node-lease"],
            }
        ]
    }
    assert hook["objectSelector"] == {
        "matchExpressions": [
            {"key": "modelfleet.io/admission", "operator": "NotIn", "values": ["skip"]}
        ]
    }
    (condition,) = hook["matchConditions"]
    account = only(default, "ServiceAccount")["metadata"]["name"]
    assert f'"system:serviceaccount:modelfleet:{account}"' in condition["expression"]
    scoped = render({"watch.scope": "namespaces", "watch.namespaces": "{team-a}"})
    expressions = only(scoped, "ValidatingWebhookConfiguration")["webhooks"][0][
        "namespaceSelector"
    ]["matchExpressions"]
    assert expressions[0] == {
        "key": "kubernetes.io/metadata.name",
        "operator": "In",
        "values": ["team-a"],
    }


def test_webhook_wiring() -> None:
    objects = render()
    config = only(objects, "ValidatingWebhookConfiguration")
    service = only(objects, "Service", "mf-modelfleet-webhook")
    secret = only(objects, "Secret")
    (hook,) = config["webhooks"]
    assert hook["clientConfig"]["service"] == {
        "name": "mf-modelfleet-webhook",
        "namespace": "modelfleet",
        "path": "/validate-modelfleet-io-v1alpha1-modeldeployment",
        "port": 443,
    }
    assert hook["rules"][0]["resources"] == [v1alpha1.PLURAL]
    assert hook["sideEffects"] == "None"
    assert service["spec"]["ports"][0]["targetPort"] == "webhook"
    # The apiserver trusts the certificate the operator serves: same CA, right name.
    assert hook["clientConfig"]["caBundle"] == secret["data"]["ca.crt"]
    cert = x509.load_pem_x509_certificate(base64.b64decode(secret["data"]["tls.crt"]))
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "mf-modelfleet-webhook.modelfleet.svc" in names.get_values_for_type(x509.DNSName)
    pod = only(objects, "Deployment")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert "--webhook-port=9443" in container["args"]
    assert "--webhook-cert-dir=/etc/modelfleet/webhook" in container["args"]
    assert {"name": "webhook", "containerPort": 9443, "protocol": "TCP"} in container["ports"]
    assert {"name": "webhook-tls", "secret": {"secretName": secret["metadata"]["name"]}} in pod[
        "volumes"
    ]


def test_webhook_with_own_certificate() -> None:
    objects = render(
        {
            "webhook.enabled": "true",
            "webhook.tls.secretName": "my-tls",
            "webhook.tls.caBundle": "Q0E=",
        }
    )
    assert not of_kind(objects, "Secret")
    hook = only(objects, "ValidatingWebhookConfiguration")["webhooks"][0]
    assert hook["clientConfig"]["caBundle"] == "Q0E="
    volumes = only(objects, "Deployment")["spec"]["template"]["spec"]["volumes"]
    assert {"name": "webhook-tls", "secret": {"secretName": "my-tls"}} in volumes


def test_service_monitor_is_optional() -> None:
    assert not of_kind(render(), SERVICE_MONITOR_KIND)
    objects = render(
        {"metrics.serviceMonitor.enabled": "true", "metrics.serviceMonitor.labels.release": "prom"}
    )
    monitor = only(objects, SERVICE_MONITOR_KIND)
    service = only(objects, "Service", "mf-modelfleet-metrics")
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    assert monitor["metadata"]["labels"]["release"] == "prom"
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"


def test_notes_say_what_to_do_next() -> None:
    # helm template does not print NOTES.txt; a client-side dry-run install does.
    text = helm("install", "mf", str(CHART_DIR), "--dry-run=client", "-n", "modelfleet").stdout
    assert "rollout status deployment/mf-modelfleet" in text
    assert "kubectl get crd rayservices.ray.io" in text
    assert "kubectl apply -f manifests/examples/tiny-cpu.yaml" in text


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (["--set", "operator.replicas=-1"], "at '/operator/replicas': minimum: got -1, want 0"),
        (["--set", "operator.replicas=2"], "at '/operator/replicas': maximum: got 2, want 1"),
        (["--set", "operator.replicas=one"], "at '/operator/replicas': got string, want integer"),
        (["--set", "replicas=1"], "additional properties 'replicas' not allowed"),
        (["--set", "operator.imagee.tag=x"], "additional properties 'imagee' not allowed"),
        (["--set", "webhook.enabled=yes"], "at '/webhook/enabled': got string, want boolean"),
        (["--set", "operator.healthPort=70000"], "at '/operator/healthPort': maximum"),
        (["--set", "watch.scope=everywhere"], "value must be one of 'cluster', 'namespaces'"),
        (["--set", "operator.resources.limits.memory=lots"], "/operator/resources/limits/memory"),
        (["--set", "webhook.failurePolicy=Maybe"], "value must be one of 'Fail', 'Ignore'"),
        (["--set", "webhook.excludedNamespaces={Kube_System}"], "/webhook/excludedNamespaces/0"),
        (["--set", "watch.namespaces={Bad_Name}"], "/watch/namespaces/0"),
    ],
)
def test_schema_refuses_bad_values(values: list[str], message: str) -> None:
    result = helm(*helm_args(), *values, check=False)
    assert result.returncode != 0
    assert "values don't meet the specifications of the schema" in result.stderr
    assert message in result.stderr, result.stderr


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            {"watch.namespaces": "{a}"},
            "watch.namespaces is only used with watch.scope=namespaces",
        ),
        (
            {"webhook.enabled": "true", "webhook.tls.secretName": "x"},
            "webhook.tls.secretName needs webhook.tls.caBundle",
        ),
        (
            {"metrics.service.enabled": "false", "metrics.serviceMonitor.enabled": "true"},
            "metrics.serviceMonitor.enabled needs metrics.service.enabled",
        ),
        ({"kuberay.enabled": "true"}, "run `helm dependency update`"),
        ({"serviceAccount.create": "false"}, "serviceAccount.name is required"),
    ],
)
def test_inconsistent_values_fail_with_a_readable_message(
    values: dict[str, str], message: str
) -> None:
    result = helm(*helm_args(values), check=False)
    assert result.returncode != 0
    assert message in result.stderr, result.stderr


def test_kuberay_dependency_renders_once_fetched(tmp_path: Path) -> None:
    """After `helm dependency update`, kuberay.enabled=true installs KubeRay's chart.

    The real chart cannot be downloaded here, so a stand-in of the same name and version
    is packaged into charts/ exactly as `helm dependency update` would leave it.
    """
    chart = tmp_path / "modelfleet"
    shutil.copytree(CHART_DIR, chart)
    dependency = yaml.safe_load((chart / "Chart.yaml").read_text())["dependencies"][0]
    stand_in = tmp_path / "kuberay-operator"
    (stand_in / "templates").mkdir(parents=True)
    (stand_in / "Chart.yaml").write_text(
        yaml.safe_dump(
            {"apiVersion": "v2", "name": "kuberay-operator", "version": dependency["version"]}
        )
    )
    (stand_in / "templates" / "marker.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: kuberay-operator-stand-in\n"
    )
    helm("package", str(stand_in), "--destination", str(chart / "charts"))

    enabled = render({"kuberay.enabled": "true"}, chart=chart)
    assert only(enabled, "ConfigMap", "kuberay-operator-stand-in")
    disabled = render(chart=chart)
    assert not [o for o in disabled if o["metadata"]["name"] == "kuberay-operator-stand-in"]


def test_the_plain_yaml_install_has_no_webhook() -> None:
    # Its certificate would be one committed key pair shared by every cluster.
    from scripts.chart import INSTALL_FILE
    from tests.helm.render import parse

    installed = parse(INSTALL_FILE.read_text())
    assert not of_kind(installed, "ValidatingWebhookConfiguration")
    assert not of_kind(installed, "Secret")
