"""Monitoring objects of a ModelDeployment: a ServiceMonitor and the dashboards ConfigMap.

Pure, like `render`: plain dicts, no Kopf or Kubernetes imports. `monitoring_objects`
builds the ones `spec.monitoring` asks for; `unwanted_monitoring_children` names the
ones it does not ask for. The reconciliation (`reconcile`) finds out through discovery
whether the Prometheus Operator's CRD is served (it is optional in a cluster), applies
the first list, and deletes those of the second that exist and that the operator made
for this ModelDeployment; an object of the same name that anyone else made stays.
"""

from __future__ import annotations

from typing import Any

from modelfleet_operator import render
from modelfleet_operator.api.v1alpha1 import ModelDeployment
from modelfleet_operator.dashboards import dashboard_files
from modelfleet_operator.names import (
    LABEL_DEPLOYMENT,
    SERVICE_MONITOR_API_VERSION,
    SERVICE_MONITOR_KIND,
)

Object = dict[str, Any]

# Grafana's dashboard sidecar (k8s-sidecar, as in kube-prometheus-stack) loads every
# ConfigMap that carries this label; the annotation names the Grafana folder for
# sidecars configured with `folderAnnotation: grafana_folder`.
DASHBOARD_LABEL = "grafana_dashboard"
DASHBOARD_LABEL_VALUE = "1"
DASHBOARD_FOLDER_ANNOTATION = "grafana_folder"
DASHBOARD_FOLDER = "modelfleet"

# The ingress answers GET /metrics on the OpenAI Service's port.
METRICS_PORT = "http"
METRICS_PATH = "/metrics"
SCRAPE_INTERVAL = "15s"
_OPENAI_COMPONENT = "openai-endpoint"


def service_monitor_name(md: ModelDeployment) -> str:
    """Name of the ServiceMonitor of `md`."""
    return f"{md.metadata.name}-metrics"


def dashboards_config_map_name(md: ModelDeployment) -> str:
    """Name of the dashboards ConfigMap of `md`."""
    return f"{md.metadata.name}-dashboards"


def service_monitor(md: ModelDeployment, *, namespace: str, owner_uid: str | None = None) -> Object:
    """A ServiceMonitor that scrapes `/metrics` through the `<name>-openai` Service.

    Without a namespaceSelector a ServiceMonitor selects Services of its own
    namespace, which is where the operator puts that Service.
    """
    service_labels = render.labels(md, _OPENAI_COMPONENT)
    return render.finish_child(
        {
            "apiVersion": SERVICE_MONITOR_API_VERSION,
            "kind": SERVICE_MONITOR_KIND,
            "metadata": {
                "name": service_monitor_name(md),
                "namespace": namespace,
                "labels": render.labels(md, "service-monitor"),
            },
            "spec": {
                "selector": {
                    "matchLabels": {
                        LABEL_DEPLOYMENT: service_labels[LABEL_DEPLOYMENT],
                        "app.kubernetes.io/component": _OPENAI_COMPONENT,
                    }
                },
                "endpoints": [
                    {"port": METRICS_PORT, "path": METRICS_PATH, "interval": SCRAPE_INTERVAL}
                ],
            },
        },
        md,
        owner_uid,
    )


def dashboards_config_map(
    md: ModelDeployment, *, namespace: str, owner_uid: str | None = None
) -> Object:
    """A ConfigMap holding every dashboard's JSON, labelled for Grafana's sidecar.

    The dashboards pick models and pools through variables, so the ConfigMaps of all
    deployments hold the same JSON with the same uids, and Grafana keeps one copy.
    """
    return render.finish_child(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": dashboards_config_map_name(md),
                "namespace": namespace,
                "labels": {
                    **render.labels(md, "dashboards"),
                    DASHBOARD_LABEL: DASHBOARD_LABEL_VALUE,
                },
                "annotations": {DASHBOARD_FOLDER_ANNOTATION: DASHBOARD_FOLDER},
            },
            "data": dashboard_files(),
        },
        md,
        owner_uid,
    )


def monitoring_objects(
    md: ModelDeployment,
    *,
    namespace: str,
    service_monitor_crd_exists: bool,
    owner_uid: str | None = None,
) -> list[Object]:
    """Every monitoring object `md` should have now, following `spec.monitoring`.

    The ServiceMonitor is left out when its CRD is missing: a cluster without the
    Prometheus Operator is normal, not an error.
    """
    monitoring = md.spec.monitoring
    objects = []
    if monitoring.service_monitor and service_monitor_crd_exists:
        objects.append(service_monitor(md, namespace=namespace, owner_uid=owner_uid))
    if monitoring.dashboards:
        objects.append(dashboards_config_map(md, namespace=namespace, owner_uid=owner_uid))
    return objects


def unwanted_monitoring_children(
    md: ModelDeployment, *, service_monitor_crd_exists: bool
) -> list[tuple[str, str, str]]:
    """(apiVersion, kind, name) of each monitoring child `spec.monitoring` does not ask for.

    These are the children to delete if an earlier spec had them made. The
    ServiceMonitor is named only while its CRD is served: without the CRD there can
    be none, and asking the API server for one would only answer 404.
    """
    monitoring = md.spec.monitoring
    unwanted = []
    if not monitoring.service_monitor and service_monitor_crd_exists:
        unwanted.append(
            (SERVICE_MONITOR_API_VERSION, SERVICE_MONITOR_KIND, service_monitor_name(md))
        )
    if not monitoring.dashboards:
        unwanted.append(("v1", "ConfigMap", dashboards_config_map_name(md)))
    return unwanted
