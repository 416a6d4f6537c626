"""The committed CRD is the one generated from the pydantic models, and it is structural."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from modelfleet_operator.api import v1alpha1
from modelfleet_operator.api.crd import crd, crd_yaml

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "manifests" / "crds" / "modeldeployments.modelfleet.io.yaml"


def test_committed_crd_matches_the_models() -> None:
    assert COMMITTED.read_text() == crd_yaml(), (
        "manifests/crds is out of date: regenerate it with "
        "`python -m modelfleet_operator.api.crd > manifests/crds/<name>.yaml`"
    )


def _nodes(schema: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, schema
    for name, sub in schema.get("properties", {}).items():
        yield from _nodes(sub, f"{path}.{name}")
    if "items" in schema:
        yield from _nodes(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from _nodes(schema["additionalProperties"], f"{path}{{}}")


def _schema() -> dict[str, Any]:
    version = crd()["spec"]["versions"][0]
    schema: dict[str, Any] = version["schema"]["openAPIV3Schema"]
    return schema


def test_schema_is_structural() -> None:
    for path, node in _nodes(_schema()):
        for key in ("$ref", "anyOf", "oneOf", "allOf", "title", "$defs"):
            assert key not in node, f"{path or 'root'} has {key}"
        assert "type" in node or node.get("x-kubernetes-preserve-unknown-fields"), path
        if "properties" in node:
            assert "additionalProperties" not in node, path


def test_every_spec_field_is_described() -> None:
    # `kubectl explain` shows these; list items and map values are described by their field.
    spec = _schema()["properties"]["spec"]
    missing = [
        path
        for path, node in _nodes(spec, "spec")
        if "description" not in node and not path.endswith(("[]", "{}"))
    ]
    assert not missing


def test_crd_shape() -> None:
    doc = yaml.safe_load(COMMITTED.read_text())
    spec = doc["spec"]
    assert spec["group"] == v1alpha1.GROUP
    assert spec["names"]["shortNames"] == ["md"]
    (version,) = spec["versions"]
    assert version["name"] == v1alpha1.VERSION
    assert version["subresources"] == {"status": {}}
    columns = {c["name"] for c in version["additionalPrinterColumns"]}
    assert {"Engine", "Model", "Ready", "Replicas", "Endpoint", "Age"} <= columns
    rules = [
        r["rule"]
        for _, node in _nodes(version["schema"]["openAPIV3Schema"])
        for r in node.get("x-kubernetes-validations", [])
    ]
    assert any("minReplicas <= self.maxReplicas" in r for r in rules)
    assert any("q.name == p.name" in r for r in rules)
    assert any("self.kind == 'triton'" in r for r in rules)
