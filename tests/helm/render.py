"""Helpers for tests that render the chart with the real helm binary."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from scripts.chart import CHART_DIR, helm

Object = dict[str, Any]


def helm_args(values: Mapping[str, str] | None = None, *, chart: Path = CHART_DIR) -> list[str]:
    """``template`` arguments for release "mf" in namespace "modelfleet" with ``--set``s."""
    args = ["template", "mf", str(chart), "--namespace", "modelfleet"]
    for key, value in (values or {}).items():
        args += ["--set", f"{key}={value}"]
    return args


def render(values: Mapping[str, str] | None = None, *, chart: Path = CHART_DIR) -> list[Object]:
    """The chart's objects (templates only, no CRDs) for the given ``--set`` values."""
    return parse(helm(*helm_args(values, chart=chart)).stdout)


def parse(text: str) -> list[Object]:
    """Every non-empty document of a multi-document YAML text."""
    return [doc for doc in yaml.safe_load_all(text) if doc]


def only(objects: Iterable[Object], kind: str, name: str | None = None) -> Object:
    """The one object of ``kind`` (and ``name``); fails the test when not exactly one."""
    found = [
        o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)
    ]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def of_kind(objects: Iterable[Object], kind: str) -> list[Object]:
    return [o for o in objects if o["kind"] == kind]


def grants(rules: Iterable[Mapping[str, Any]]) -> set[tuple[str, str, str]]:
    """RBAC rules flattened to (apiGroup, resource, verb) triples, to compare rule sets
    that say the same thing in a different grouping or order."""
    return {
        (group, resource, verb)
        for rule in rules
        for group in rule.get("apiGroups", [])
        for resource in rule.get("resources", [])
        for verb in rule.get("verbs", [])
    }
