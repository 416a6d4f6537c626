"""Generate the ModelDeployment CustomResourceDefinition from the pydantic models.

Pydantic writes JSON Schema (draft 2020-12); Kubernetes wants a *structural* OpenAPI
v3.0 schema. The conversion below inlines `$ref`s, turns `X | None` into an optional
`X`, rewrites numeric `exclusiveMinimum` into OpenAPI 3.0's boolean form, drops what
structural schemas refuse (`title`, `additionalProperties: false` next to
`properties`) and marks free-form scalars with `x-kubernetes-preserve-unknown-fields`.

Pure: no Kubernetes or Kopf imports.
"""

from __future__ import annotations

from typing import Any

import yaml
from pydantic import BaseModel

from modelfleet_operator.api import v1alpha1

JSONSchema = dict[str, Any]

# Keys of a JSON Schema node kept as they are once the node has been converted.
_KEPT = {
    "type",
    "description",
    "default",
    "enum",
    "pattern",
    "minimum",
    "maximum",
    "minLength",
    "maxLength",
    "minItems",
    "maxItems",
    "required",
    "format",
    "x-kubernetes-validations",
    "x-kubernetes-list-type",
    "x-kubernetes-list-map-keys",
    "x-kubernetes-preserve-unknown-fields",
}


# Order of keys in the written YAML: type and description first, nested schemas last,
# so a person reading the CRD sees what a field is before its details.
_KEY_ORDER = {"type": 0, "description": 1, "properties": 90, "items": 91, "required": 92}


def _resolve(node: JSONSchema, defs: dict[str, JSONSchema]) -> JSONSchema:
    """Inline a `$ref`, letting the referring node's own keys (description) win."""
    if "$ref" not in node:
        return node
    target = defs[node["$ref"].rsplit("/", 1)[-1]]
    merged = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
    return _resolve(merged, defs)


def _structural(node: JSONSchema, defs: dict[str, JSONSchema]) -> JSONSchema:
    """Convert one pydantic JSON Schema node (recursively) to a structural one."""
    node = _resolve(node, defs)
    variants = node.get("anyOf")
    if variants is not None:
        present = [v for v in variants if v.get("type") != "null"]
        outer = {k: v for k, v in node.items() if k != "anyOf"}
        if outer.get("default", ...) is None:
            # `X | None = None`: absence already means None on the wire.
            del outer["default"]
        if len(present) == 1:
            return _structural({**_resolve(present[0], defs), **outer}, defs)
        # A union of scalars (engine flag values): structural schemas need one type,
        # so the value is left free and the operator's own validation checks it.
        kept = {k: v for k, v in outer.items() if k in _KEPT}
        return {**kept, "x-kubernetes-preserve-unknown-fields": True}

    out: JSONSchema = {}
    for key, value in node.items():
        if key == "exclusiveMinimum":
            out["minimum"] = value
            out["exclusiveMinimum"] = True
        elif key == "exclusiveMaximum":
            out["maximum"] = value
            out["exclusiveMaximum"] = True
        elif key == "properties":
            out["properties"] = {name: _structural(sub, defs) for name, sub in value.items()}
        elif key == "items":
            out["items"] = _structural(value, defs)
        elif key == "additionalProperties" and isinstance(value, dict):
            out["additionalProperties"] = _structural(value, defs)
        elif key == "const":
            out["enum"] = [value]
        elif key in _KEPT:
            out[key] = value
    if "enum" in out and "type" not in out:
        out["type"] = "string"
    return dict(sorted(out.items(), key=lambda item: _KEY_ORDER.get(item[0], 50)))


def openapi_schema(model: type[BaseModel]) -> JSONSchema:
    """The structural OpenAPI v3 schema of a pydantic model, as the CRD embeds it."""
    schema = model.model_json_schema(by_alias=True, mode="validation")
    defs = schema.pop("$defs", {})
    return _structural(schema, defs)


def crd() -> dict[str, Any]:
    """The ModelDeployment CustomResourceDefinition, generated from `v1alpha1`."""
    spec = openapi_schema(v1alpha1.ModelDeploymentSpec)
    status = openapi_schema(v1alpha1.ModelDeploymentStatus)
    root: JSONSchema = {
        "type": "object",
        "description": "A large language model served by Ray Serve (through KubeRay) behind "
        "an OpenAI-compatible endpoint inside the cluster.",
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": spec,
            "status": status,
        },
        "x-kubernetes-validations": list(v1alpha1.ROOT_VALIDATIONS),
    }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{v1alpha1.PLURAL}.{v1alpha1.GROUP}",
            "labels": {"app.kubernetes.io/part-of": "modelfleet"},
        },
        "spec": {
            "group": v1alpha1.GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": v1alpha1.KIND,
                "listKind": f"{v1alpha1.KIND}List",
                "plural": v1alpha1.PLURAL,
                "singular": v1alpha1.SINGULAR,
                "shortNames": list(v1alpha1.SHORT_NAMES),
                "categories": ["modelfleet"],
            },
            "versions": [
                {
                    "name": v1alpha1.VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": list(v1alpha1.PRINTER_COLUMNS),
                    "schema": {"openAPIV3Schema": root},
                }
            ],
        },
    }


def crd_yaml() -> str:
    """The CRD as the YAML committed in manifests/crds/."""
    header = (
        "# Generated from operator/modelfleet_operator/api/v1alpha1.py: do not edit.\n"
        "# Regenerate with: python -m modelfleet_operator.api.crd > "
        "manifests/crds/modeldeployments.modelfleet.io.yaml\n"
    )
    return header + yaml.safe_dump(crd(), sort_keys=False, width=100)


if __name__ == "__main__":
    print(crd_yaml(), end="")
