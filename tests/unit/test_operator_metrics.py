"""The operator's gauge of ModelDeployments by condition."""

from __future__ import annotations

from modelfleet_operator.metrics import DEPLOYMENTS_METRIC, ConditionCounts
from prometheus_client import REGISTRY


def value(condition: str, status: str) -> float | None:
    return REGISTRY.get_sample_value(DEPLOYMENTS_METRIC, {"condition": condition, "status": status})


def test_counts_follow_the_latest_conditions_and_deletions() -> None:
    counts = ConditionCounts()
    counts.record("ns/a", {"Ready": "True", "Validated": "True"})
    counts.record("ns/b", {"Ready": "False", "Validated": "True"})
    assert (value("Ready", "True"), value("Ready", "False")) == (1, 1)
    assert value("Validated", "True") == 2

    counts.record("ns/b", {"Ready": "True", "Validated": "True"})
    assert (value("Ready", "True"), value("Ready", "False")) == (2, 0)

    counts.forget("ns/a")
    counts.forget("ns/b")
    assert value("Ready", "True") == 0, "zero, not gone, once nothing is Ready"
    assert value("Ready", "Unknown") == 0
