"""Grafana dashboards as code, and the loader the operator and the CLI read them through.

The dashboards are written with Grafana's typed builders (`grafana-foundation-sdk`)
and rendered to canonical JSON: sorted keys and a fixed indent, so the committed
files under `dashboards/` change only when the code does.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from typing import Any, NamedTuple

from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import dashboard as dashboard_models

from modelfleet_operator.dashboards.controller import operator_dashboard
from modelfleet_operator.dashboards.serving import serving_dashboard

# File name → builder; the file names are those committed under dashboards/ and the
# keys of the dashboards ConfigMap.
_BUILDERS: dict[str, Callable[[], dashboard_models.Dashboard]] = {
    "modelfleet-serving.json": serving_dashboard,
    "modelfleet-operator.json": operator_dashboard,
}


def dashboards() -> dict[str, dict[str, Any]]:
    """Every dashboard as a JSON object, keyed by its file name."""
    return {name: json.loads(_to_json(build())) for name, build in _BUILDERS.items()}


def dashboard_files() -> dict[str, str]:
    """Every dashboard as the text of its file, keyed by its file name."""
    return {name: _to_json(build()) for name, build in _BUILDERS.items()}


class PanelQuery(NamedTuple):
    """One PromQL expression of one panel."""

    dashboard: str
    panel: str
    ref_id: str
    expr: str


def panel_queries(dashboard: Mapping[str, Any]) -> Iterator[PanelQuery]:
    """Every PromQL expression of the panels of `dashboard` (a JSON object), rows included."""
    title = str(dashboard.get("title", ""))
    stack: list[Mapping[str, Any]] = list(dashboard.get("panels", []))
    while stack:
        panel = stack.pop(0)
        # Collapsed rows carry their panels inside them.
        stack.extend(panel.get("panels", []))
        for target in panel.get("targets", []):
            if "expr" in target:
                yield PanelQuery(
                    title, str(panel.get("title", "")), str(target.get("refId", "")), target["expr"]
                )


def _to_json(dashboard: dashboard_models.Dashboard) -> str:
    return json.dumps(dashboard, cls=JSONEncoder, indent=2, sort_keys=True) + "\n"
