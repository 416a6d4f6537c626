"""The Grafana dashboards: committed JSON, datasource and variables, metric contract."""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from modelfleet_operator.dashboards import PanelQuery, dashboard_files, dashboards, panel_queries
from modelfleet_serving.metrics import HISTOGRAM_NAMES, METRIC_NAMES, REQUESTS_TOTAL

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "dashboards"
REGENERATE = "regenerate with: modelfleet dashboards export dashboards"


def _all_queries() -> list[PanelQuery]:
    return [q for d in dashboards().values() for q in panel_queries(d)]


def _panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def test_committed_dashboards_match_the_code() -> None:
    generated = dashboard_files()
    committed = {p.name: p.read_text(encoding="utf-8") for p in COMMITTED.glob("*.json")}
    assert sorted(committed) == sorted(generated), REGENERATE
    for name, text in generated.items():
        assert committed[name] == text, f"dashboards/{name} drifted from the code; {REGENERATE}"


def test_uids_are_unique_and_stable() -> None:
    uids = [d["uid"] for d in dashboards().values()]
    assert uids == ["modelfleet-serving", "modelfleet-operator"]


@pytest.mark.parametrize("name", sorted(dashboard_files()))
def test_datasource_is_a_variable_never_a_fixed_uid(name: str) -> None:
    dashboard = dashboards()[name]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for panel in _panels(dashboard):
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        for target in panel["targets"]:
            assert target.get("datasource", panel["datasource"])["uid"] == "${datasource}"
    # No other datasource uid hides anywhere in the JSON.
    uids = set(re.findall(r'"uid": "([^"]*)"', dashboard_files()[name]))
    assert uids == {"${datasource}", dashboard["uid"]}


def test_serving_dashboard_selects_model_and_pool_through_variables() -> None:
    serving = dashboards()["modelfleet-serving.json"]
    variables = {v["name"]: v for v in serving["templating"]["list"]}
    for name in ("model", "pool"):
        assert variables[name]["type"] == "query"
        assert variables[name]["query"].startswith("label_values(")
        assert variables[name]["query"].endswith(f", {name})")
        assert variables[name]["datasource"]["uid"] == "${datasource}"
        assert variables[name]["includeAll"] and variables[name]["multi"]
    for query in panel_queries(serving):
        assert 'model=~"$model"' in query.expr, query
        assert 'pool=~"$pool"' in query.expr, query


def test_serving_dashboard_has_every_panel_an_operator_needs() -> None:
    queries = list(panel_queries(dashboards()["modelfleet-serving.json"]))
    by_metric: dict[str, set[str]] = {}
    for q in queries:
        for metric in re.findall(r"modelfleet_\w+", q.expr):
            by_metric.setdefault(metric, set()).add(q.ref_id)
    for histogram in HISTOGRAM_NAMES:
        assert by_metric[f"{histogram}_bucket"] == {"p50", "p90", "p99"}
    for metric in METRIC_NAMES:
        if metric not in HISTOGRAM_NAMES:
            assert metric in by_metric, metric
    assert any("code" in q.expr.split("(rate(")[0] for q in queries if REQUESTS_TOTAL in q.expr)


def test_operator_dashboard_covers_reconciles_errors_durations_and_conditions() -> None:
    titles = {q.panel for q in panel_queries(dashboards()["modelfleet-operator.json"])}
    assert titles == {
        "Reconciles by result",
        "Reconcile errors",
        "Reconcile duration",
        "ModelDeployments by condition",
    }


@pytest.mark.parametrize("name", sorted(dashboard_files()))
def test_panel_ids_are_unique(name: str) -> None:
    ids = [p["id"] for p in _panels(dashboards()[name])]
    assert len(ids) == len(set(ids))


# --- Metric names: the dashboards and the code must agree --------------------------------

SOURCES = [ROOT / "serving" / "modelfleet_serving", ROOT / "operator" / "modelfleet_operator"]
DASHBOARD_CODE = ROOT / "operator" / "modelfleet_operator" / "dashboards"

# Constructors of prometheus_client metrics (and custom-collector families), with the
# suffixes each one's samples carry in the exposition format.
_SUFFIXES = {
    "Counter": ("_total", "_created"),
    "CounterMetricFamily": ("_total", "_created"),
    "Gauge": ("",),
    "GaugeMetricFamily": ("",),
    "Histogram": ("_bucket", "_sum", "_count", "_created"),
    "HistogramMetricFamily": ("_bucket", "_sum", "_count", "_created"),
    "Summary": ("_sum", "_count", "_created"),
    "SummaryMetricFamily": ("_sum", "_count", "_created"),
}


class _Unresolved(Exception):
    pass


def _module_strings(tree: ast.Module, known: dict[str, str]) -> dict[str, str]:
    """Module-level `NAME = text` assignments whose text `_names` reads with `known`.

    That covers literals and, once the constants they are built from are known, sums
    and f-strings of constants (`REQUESTS_TOTAL = PREFIX + "requests_total"`).
    """
    out = {}
    for node in tree.body:
        if not isinstance(node, ast.Assign):
            continue
        try:
            values = _names(node.value, known, {})
        except _Unresolved:
            continue
        if len(values) == 1:
            for target in node.targets:
                if isinstance(target, ast.Name):
                    out[target.id] = values[0]
    return out


def _names(node: ast.expr, strings: dict[str, str], loops: dict[str, list[str]]) -> list[str]:
    """Every string `node` can evaluate to, from literals, constants and loop variables."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.Name) and node.id in strings:
        return [strings[node.id]]
    if isinstance(node, ast.Name) and loops.get(node.id):
        return loops[node.id]
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        return [
            a + b
            for a in _names(node.left, strings, loops)
            for b in _names(node.right, strings, loops)
        ]
    if isinstance(node, ast.JoinedStr):
        parts: list[list[str]] = []
        for value in node.values:
            inner = value.value if isinstance(value, ast.FormattedValue) else value
            parts.append(_names(inner, strings, loops))
        out = [""]
        for options in parts:
            out = [a + b for a in out for b in options]
        return out
    raise _Unresolved(ast.unparse(node))


class _Imports:
    """The prometheus_client metric classes a module imported, by their local names."""

    def __init__(self, tree: ast.Module) -> None:
        self.classes: dict[str, str] = {}
        self.modules: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
                "prometheus_client"
            ):
                for alias in node.names:
                    if alias.name in _SUFFIXES:
                        self.classes[alias.asname or alias.name] = alias.name
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.startswith("prometheus_client"):
                        self.modules.add(alias.asname or alias.name)

    def constructor(self, node: ast.AST) -> str | None:
        """The metric class `node` calls (`Counter`, `HistogramMetricFamily`...), or None."""
        if not isinstance(node, ast.Call):
            return None
        func = node.func
        if isinstance(func, ast.Name):
            return self.classes.get(func.id)
        if (
            isinstance(func, ast.Attribute)
            and func.attr in _SUFFIXES
            and ast.unparse(func.value) in self.modules
        ):
            return func.attr
        return None


def _metric_calls(
    tree: ast.Module, collections: dict[str, list[str]]
) -> Iterator[tuple[ast.Call, str, dict[str, list[str]]]]:
    """prometheus_client metric constructions: the call, the class, the loop variables.

    Calls inside a comprehension come with the values its loop variables range over,
    so `Histogram(PREFIX + name) for name in HISTOGRAMS` yields every name.
    """
    imports = _Imports(tree)
    in_comprehension: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.DictComp | ast.ListComp | ast.GeneratorExp | ast.SetComp):
            loops = {
                gen.target.id: collections.get(gen.iter.id, [])
                for gen in node.generators
                if isinstance(gen.target, ast.Name) and isinstance(gen.iter, ast.Name)
            }
            for call in ast.walk(node):
                kind = imports.constructor(call)
                if kind is not None and isinstance(call, ast.Call):
                    in_comprehension.add(id(call))
                    yield call, kind, loops
    for node in ast.walk(tree):
        kind = imports.constructor(node)
        if kind is not None and isinstance(node, ast.Call) and id(node) not in in_comprehension:
            yield node, kind, {}


def _defined_metric_samples() -> set[str]:
    """Sample names the serving and operator code can expose, read from the source.

    A metric is found where a prometheus_client metric or family is constructed with a
    name built from literals, module constants (imported ones included) and loop
    variables over literal collections; any other form fails the test, so a metric
    cannot silently escape the check.
    """
    files = [
        path
        for source in SOURCES
        for path in source.rglob("*.py")
        if DASHBOARD_CODE not in path.parents
    ]
    trees = {path: ast.parse(path.read_text(encoding="utf-8")) for path in files}
    # Constants of every module, so `from x import PREFIX` resolves too. Constants built
    # from constants of other modules resolve in a later round; the rounds stop when
    # one finds no new constant.
    strings: dict[str, str] = {}
    collections: dict[str, list[str]] = {}
    while True:
        known = len(strings)
        for tree in trees.values():
            strings.update(_module_strings(tree, strings))
        if len(strings) == known:
            break
    for tree in trees.values():
        for node in tree.body:
            target = None
            if isinstance(node, ast.Assign) and len(node.targets) == 1:
                target, value = node.targets[0], node.value
            elif isinstance(node, ast.AnnAssign) and node.value is not None:
                target, value = node.target, node.value
            if not isinstance(target, ast.Name):
                continue
            if isinstance(value, ast.Dict):
                keys = [k for k in value.keys if k is not None]
                try:
                    collections[target.id] = [n for k in keys for n in _names(k, strings, {})]
                except _Unresolved:
                    continue
            elif isinstance(value, ast.Tuple | ast.List):
                try:
                    collections[target.id] = [n for e in value.elts for n in _names(e, strings, {})]
                except _Unresolved:
                    continue

    samples: set[str] = set()
    for path, tree in trees.items():
        for call, kind, loops in _metric_calls(tree, collections):
            name_node = call.args[0] if call.args else None
            name_node = next((k.value for k in call.keywords if k.arg == "name"), name_node)
            assert name_node is not None, f"{path}:{call.lineno}: metric without a name"
            try:
                names = _names(name_node, strings, loops)
            except _Unresolved as exc:
                raise AssertionError(f"{path}:{call.lineno}: cannot read the name {exc}") from exc
            for name in names:
                base = name.removesuffix("_total") if "Counter" in kind else name
                samples.update(base + suffix for suffix in _SUFFIXES[kind])
    return samples


def _metrics_in(expr: str) -> set[str]:
    return set(re.findall(r"\bmodelfleet_\w+", expr))


def test_every_dashboard_metric_is_defined_in_the_code() -> None:
    defined = _defined_metric_samples()
    used = {metric: q for q in _all_queries() for metric in _metrics_in(q.expr)}
    for d in dashboards().values():
        for variable in d["templating"]["list"]:
            for metric in _metrics_in(str(variable.get("query", ""))):
                used.setdefault(metric, PanelQuery(d["title"], "variables", variable["name"], ""))
    missing = {m: f"{q.dashboard} / {q.panel}" for m, q in used.items() if m not in defined}
    assert not missing, (
        "metrics used by dashboards but defined nowhere in serving/ or operator/: "
        + json.dumps(missing, indent=2)
    )
