"""The names modelfleet shares with Kubernetes, KubeRay and the Prometheus Operator.

API groups, versions, kinds and plurals of the objects the operator reads or writes,
and the labels and annotations it puts on them. Each is spelled here once; the
ModelDeployment's own group, version, kind and plural live with its schema in
`api/v1alpha1.py`. Imports nothing, so every layer may use it.
"""

from __future__ import annotations

# KubeRay.
RAY_GROUP = "ray.io"
RAY_GROUP_VERSION = "v1"
RAY_API_VERSION = f"{RAY_GROUP}/{RAY_GROUP_VERSION}"
RAY_SERVICE_KIND = "RayService"
RAY_SERVICE_PLURAL = "rayservices"
# KubeRay sets this label to "true" on the Ray pods whose Serve proxy is healthy.
RAY_SERVE_LABEL = "ray.io/serve"

# The Prometheus Operator (optional in a cluster).
SERVICE_MONITOR_GROUP = "monitoring.coreos.com"
SERVICE_MONITOR_API_VERSION = f"{SERVICE_MONITOR_GROUP}/v1"
SERVICE_MONITOR_KIND = "ServiceMonitor"
SERVICE_MONITOR_PLURAL = "servicemonitors"
# The CRD whose presence decides whether a ServiceMonitor is made.
SERVICE_MONITOR_CRD = f"{SERVICE_MONITOR_PLURAL}.{SERVICE_MONITOR_GROUP}"

# Labels and annotations on every child of a ModelDeployment.
LABEL_DEPLOYMENT = "modelfleet.io/deployment"
LABEL_POOL = "modelfleet.io/pool"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGED_BY = "modelfleet-operator"
ANNOTATION_SPEC_HASH = "modelfleet.io/spec-hash"

# The field manager of the operator's server-side applies.
FIELD_MANAGER = "modelfleet-operator"

# Kind → plural of the core and third-party kinds the operator reads or writes.
PLURALS = {
    "Service": "services",
    "ConfigMap": "configmaps",
    "NetworkPolicy": "networkpolicies",
    RAY_SERVICE_KIND: RAY_SERVICE_PLURAL,
    SERVICE_MONITOR_KIND: SERVICE_MONITOR_PLURAL,
}
