"""Desired monitoring objects of a ModelDeployment: a ServiceMonitor and the dashboards.

Pure, like `render`: plain dicts, no Kopf or Kubernetes imports. The handler finds out
whether the Prometheus Operator's CRD exists (it is optional in a cluster), applies
what `monitoring_objects` returns, and deletes the ServiceMonitor or ConfigMap
(`service_monitor_name`, `dashboards_config_map_name`) that `spec.monitoring` no
longer asks for.
"""

from __future__ import annotations

from typing import Any

from modelfleet_operator import render
from modelfleet_operator.api.v1alpha1 import ModelDeployment
from modelfleet_operator.dashboards import dashboard_files
from modelfleet_operator.names import (
    ANNOTATION_SPEC_HASH,
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
    return _finish(
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
    return _finish(
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


def _finish(obj: Object, md: ModelDeployment, owner_uid: str | None) -> Object:
    """Add the spec-hash annotation and the owner reference, as `render` does.

    A ConfigMap has `data` where other objects have `spec`: hashing it in the place of
    the spec makes a change of the dashboards count as a change of the object.
    """
    essence = {**obj, "spec": obj["spec"] if "spec" in obj else obj["data"]}
    annotations = obj["metadata"].setdefault("annotations", {})
    annotations[ANNOTATION_SPEC_HASH] = render.spec_hash(essence)
    if owner_uid is not None:
        obj["metadata"]["ownerReferences"] = [render.owner_reference(md, owner_uid)]
    return obj
