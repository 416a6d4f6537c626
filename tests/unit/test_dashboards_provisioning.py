"""The monitoring objects the operator renders: ServiceMonitor and dashboards ConfigMap."""

from __future__ import annotations

import json
from typing import Any

import pytest
from modelfleet_operator import monitoring, render
from modelfleet_operator.api.v1alpha1 import ModelDeployment
from modelfleet_operator.dashboards import dashboard_files
from modelfleet_operator.monitoring import (
    DASHBOARD_LABEL,
    dashboards_config_map,
    dashboards_config_map_name,
    monitoring_objects,
    service_monitor,
    service_monitor_name,
    unwanted_monitoring_children,
)
from modelfleet_operator.names import ANNOTATION_SPEC_HASH

UID = "0b1e4c8e-5f0a-4d57-9b2a-3f6f2c1d7e90"


def _md(monitoring: dict[str, bool] | None = None) -> ModelDeployment:
    spec: dict[str, Any] = {
        "model": {"source": "hf://Qwen/Qwen2-7B-Instruct-AWQ", "servedName": "qwen2-7b"},
        "nodePools": [{"name": "l20", "gpu": {"type": "L20", "memoryGiB": 48}}],
    }
    if monitoring is not None:
        spec["monitoring"] = monitoring
    return ModelDeployment.from_object(
        {
            "apiVersion": "modelfleet.io/v1alpha1",
            "kind": "ModelDeployment",
            "metadata": {"name": "qwen", "namespace": "llm"},
            "spec": spec,
        }
    )


def test_service_monitor_scrapes_the_openai_service() -> None:
    md = _md()
    sm = service_monitor(md, namespace="llm", owner_uid=UID)
    assert sm["apiVersion"] == "monitoring.coreos.com/v1"
    assert sm["kind"] == "ServiceMonitor"
    assert sm["metadata"]["name"] == "qwen-metrics"
    assert sm["metadata"]["namespace"] == "llm"
    assert sm["metadata"]["ownerReferences"] == [render.owner_reference(md, UID)]
    assert sm["spec"]["endpoints"] == [{"port": "http", "path": "/metrics", "interval": "15s"}]
    # The selector matches the Service the operator renders, on the port it names.
    service = render.openai_service(md, namespace="llm")
    selector = sm["spec"]["selector"]["matchLabels"]
    assert selector.items() <= service["metadata"]["labels"].items()
    assert "http" in {p["name"] for p in service["spec"]["ports"]}


def test_dashboards_config_map_carries_the_sidecar_label_and_every_dashboard() -> None:
    md = _md()
    cm = dashboards_config_map(md, namespace="llm", owner_uid=UID)
    assert cm["kind"] == "ConfigMap"
    assert cm["metadata"]["name"] == "qwen-dashboards"
    assert cm["metadata"]["namespace"] == "llm"
    assert cm["metadata"]["labels"][DASHBOARD_LABEL] == "1"
    assert cm["metadata"]["labels"]["modelfleet.io/deployment"] == "qwen"
    assert cm["metadata"]["annotations"]["grafana_folder"] == "modelfleet"
    assert cm["metadata"]["ownerReferences"] == [render.owner_reference(md, UID)]
    assert cm["data"] == dashboard_files()
    for text in cm["data"].values():
        json.loads(text)
    # ConfigMaps are capped at 1 MiB; stay far below it.
    assert sum(len(text) for text in cm["data"].values()) < 256 * 1024


def test_spec_hash_changes_with_the_dashboards(monkeypatch: pytest.MonkeyPatch) -> None:
    # The operator's apply loop reads this annotation to tell updates from drift.
    md = _md()
    before = dashboards_config_map(md, namespace="llm")["metadata"]["annotations"]
    monkeypatch.setattr(monitoring, "dashboard_files", lambda: {"other.json": "{}"})
    after = dashboards_config_map(md, namespace="llm")["metadata"]["annotations"]
    assert before[ANNOTATION_SPEC_HASH] != after[ANNOTATION_SPEC_HASH]
    assert service_monitor(md, namespace="llm")["metadata"]["annotations"][
        ANNOTATION_SPEC_HASH
    ] == render.spec_hash(service_monitor(md, namespace="llm"))


def test_without_an_owner_uid_there_is_no_owner_reference() -> None:
    assert "ownerReferences" not in service_monitor(_md(), namespace="llm")["metadata"]
    assert "ownerReferences" not in dashboards_config_map(_md(), namespace="llm")["metadata"]


@pytest.mark.parametrize(
    ("monitoring", "crd_exists", "kinds"),
    [
        (None, True, ["ServiceMonitor", "ConfigMap"]),
        (None, False, ["ConfigMap"]),
        ({"serviceMonitor": False, "dashboards": True}, True, ["ConfigMap"]),
        ({"serviceMonitor": True, "dashboards": False}, True, ["ServiceMonitor"]),
        ({"serviceMonitor": True, "dashboards": False}, False, []),
        ({"serviceMonitor": False, "dashboards": False}, True, []),
    ],
)
def test_monitoring_objects_follow_the_spec_and_the_crd(
    monitoring: dict[str, bool] | None, crd_exists: bool, kinds: list[str]
) -> None:
    objects = monitoring_objects(
        _md(monitoring), namespace="llm", service_monitor_crd_exists=crd_exists
    )
    assert [o["kind"] for o in objects] == kinds


def test_names_match_the_rendered_objects() -> None:
    md = _md()
    objects = monitoring_objects(md, namespace="llm", service_monitor_crd_exists=True)
    names = [o["metadata"]["name"] for o in objects]
    assert names == [service_monitor_name(md), dashboards_config_map_name(md)]


@pytest.mark.parametrize(
    ("monitoring", "crd_exists", "unwanted"),
    [
        (None, True, []),
        ({"serviceMonitor": True, "dashboards": True}, False, []),
        ({"serviceMonitor": False, "dashboards": True}, True, ["ServiceMonitor"]),
        # Without the CRD there can be no ServiceMonitor to delete.
        ({"serviceMonitor": False, "dashboards": True}, False, []),
        ({"serviceMonitor": True, "dashboards": False}, True, ["ConfigMap"]),
        ({"serviceMonitor": False, "dashboards": False}, True, ["ServiceMonitor", "ConfigMap"]),
        ({"serviceMonitor": False, "dashboards": False}, False, ["ConfigMap"]),
    ],
)
def test_unwanted_monitoring_children_are_those_the_spec_turns_off(
    monitoring: dict[str, bool] | None, crd_exists: bool, unwanted: list[str]
) -> None:
    found = unwanted_monitoring_children(_md(monitoring), service_monitor_crd_exists=crd_exists)
    assert [kind for _, kind, _ in found] == unwanted


def test_unwanted_children_are_named_as_the_rendered_ones() -> None:
    # What would be deleted is exactly what an earlier spec had applied.
    md = _md()
    rendered = {
        (o["apiVersion"], o["kind"], o["metadata"]["name"])
        for o in monitoring_objects(md, namespace="llm", service_monitor_crd_exists=True)
    }
    off = _md({"serviceMonitor": False, "dashboards": False})
    assert set(unwanted_monitoring_children(off, service_monitor_crd_exists=True)) == rendered
