"""The operator dashboard: how the reconcile loop is doing and what state objects are in."""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard
from grafana_foundation_sdk.models import dashboard as dashboard_models

from modelfleet_operator.dashboards._panels import (
    RATE_INTERVAL,
    PanelIds,
    datasource_variable,
    quantile_queries,
    query,
)
from modelfleet_operator.metrics import (
    DEPLOYMENTS_METRIC,
    RECONCILE_SECONDS_METRIC,
    RECONCILES_METRIC,
)

UID = "modelfleet-operator"

# The `result` of a reconcile that went through; every other result (invalid,
# dependency_missing, conflict, error) left the object short of what its spec asks.
_SUCCESS = "success"


def operator_dashboard() -> dashboard_models.Dashboard:
    """The operator dashboard."""
    ids = PanelIds()
    return (
        dashboard.Dashboard("modelfleet / operator")
        .uid(UID)
        .description(
            "Reconciles, errors and durations of the modelfleet operator, and the "
            "conditions of the ModelDeployments it manages."
        )
        .tags(["modelfleet", "operator"])
        .editable()
        .refresh("30s")
        .time("now-1h", "now")
        .tooltip(dashboard_models.DashboardCursorSync.CROSSHAIR)
        .with_variable(datasource_variable())
        .with_row(ids.row("Reconciles"))
        .with_panel(
            ids.timeseries(
                "Reconciles by result",
                "Reconciles per second by their result.",
                [
                    query(
                        f"sum by (result) (rate({RECONCILES_METRIC}[{RATE_INTERVAL}]))",
                        legend="{{result}}",
                        ref_id="A",
                    )
                ],
                unit="ops",
                stacked=True,
            )
        )
        .with_panel(
            ids.timeseries(
                "Reconcile errors",
                "Share of reconciles that did not end in success: invalid spec, missing "
                "dependency (KubeRay), conflict or error.",
                [
                    # `or vector(0)` keeps the line at zero, instead of "No data", while
                    # nothing has failed yet.
                    query(
                        f'(sum(rate({RECONCILES_METRIC}{{result!="{_SUCCESS}"}}'
                        f"[{RATE_INTERVAL}])) or vector(0)) / "
                        f"sum(rate({RECONCILES_METRIC}[{RATE_INTERVAL}]))",
                        legend="errors",
                        ref_id="A",
                    )
                ],
                unit="percentunit",
            )
        )
        .with_panel(
            ids.timeseries(
                "Reconcile duration",
                "Time one reconcile takes, from the event to the status patch.",
                quantile_queries(RECONCILE_SECONDS_METRIC, "", ()),
                unit="s",
            )
        )
        .with_row(ids.row("ModelDeployments"))
        .with_panel(
            ids.timeseries(
                "ModelDeployments by condition",
                "How many ModelDeployments have each condition (Validated, CapacityFits, "
                "RayServiceReady, Ready) in each status (True, False, Unknown).",
                [
                    query(
                        f"sum by (condition, status) ({DEPLOYMENTS_METRIC})",
                        legend="{{condition}}={{status}}",
                        ref_id="A",
                    )
                ],
                unit="short",
                width=24,
            )
        )
        .build()
    )
