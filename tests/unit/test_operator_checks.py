"""What passes the CRD schema but cannot work becomes problems with their fix."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from modelfleet_operator.checks import check

BASE: dict[str, Any] = {
    "metadata": {"name": "m", "namespace": "ns"},
    "spec": {
        "model": {"source": "hf://o/m", "servedName": "m"},
        "nodePools": [{"name": "cpu", "memoryGiB": 4}],
    },
}


def with_spec(**spec: Any) -> dict[str, Any]:
    obj = copy.deepcopy(BASE)
    obj["spec"].update(spec)
    return obj


@pytest.mark.parametrize(
    ("obj", "fragments"),
    [
        (with_spec(engine={"tensorParallelSize": 2}), ["pool 'cpu' has no gpu", "2 GPUs"]),
        (
            with_spec(engine={"pipelineParallelSize": 2, "tensorParallelSize": 2}),
            ["asks for 4 GPUs per replica", "set both sizes to 1"],
        ),
        (
            with_spec(engine={"cpuKVCacheGiB": 4}),
            ["memoryGiB 4 cannot hold engine.cpuKVCacheGiB 4", "raise memoryGiB above 4"],
        ),
        # The schema leaves extraArgs values open; a nested value cannot become a flag.
        (with_spec(engine={"extraArgs": {"foo": {"bar": 1}}}), ["spec.engine.extraArgs.foo"]),
    ],
)
def test_unworkable_specs(obj: dict[str, Any], fragments: list[str]) -> None:
    checked = check(obj)
    assert not checked.valid
    text = "; ".join(checked.problems)
    for fragment in fragments:
        assert fragment in text


@pytest.mark.parametrize(
    "obj",
    [
        BASE,
        with_spec(engine={"cpuKVCacheGiB": 1}),
        with_spec(
            engine={"tensorParallelSize": 4},
            nodePools=[{"name": "g", "gpu": {"type": "H100", "memoryGiB": 80}}],
        ),
    ],
)
def test_workable_specs(obj: dict[str, Any]) -> None:
    checked = check(obj)
    assert checked.valid, checked.problems
    assert checked.md is not None
