"""When a change must wait for GPUs: a table of pools, nodes and rollouts."""

from __future__ import annotations

import pytest
from modelfleet_operator.api.v1alpha1 import ModelDeploymentSpec
from modelfleet_operator.capacity import SKIP_CAPACITY_ANNOTATION
from modelfleet_operator.rollout import (
    CREATE,
    IN_PLACE,
    NEW_CLUSTER,
    UNCHANGED,
    NodeGPUs,
    Rollout,
    blocked_upgrade,
)

# Two GPU pools of 2-GPU replicas (tensorParallelSize 2) and a CPU pool.
SPEC = ModelDeploymentSpec.model_validate(
    {
        "model": {"source": "hf://meta-llama/Meta-Llama-3-70B-Instruct", "servedName": "l"},
        "engine": {"kind": "vllm", "tensorParallelSize": 2},
        "nodePools": [
            {
                "name": "h100",
                "gpu": {"type": "H100", "memoryGiB": 80},
                "minReplicas": 2,
                "maxReplicas": 4,
                "nodeSelector": {"gpu": "h100"},
            },
            {
                "name": "a100",
                "gpu": {"type": "A100", "memoryGiB": 80},
                "nodeSelector": {"gpu": "a100"},
            },
            {"name": "cpu"},
        ],
    }
)
H100 = {"gpu": "h100"}
A100 = {"gpu": "a100"}


@pytest.mark.parametrize(
    ("kind", "nodes", "short"),
    [
        # Room for the new cluster's minimum beside the old one in every GPU pool.
        (NEW_CLUSTER, [NodeGPUs("h", H100, 8, 4), NodeGPUs("a", A100, 2, 0)], []),
        # h100 needs 2 replicas × 2 GPUs; 3 free GPUs place only one of them.
        (NEW_CLUSTER, [NodeGPUs("h", H100, 8, 5), NodeGPUs("a", A100, 2, 0)], ["h100"]),
        # 4 free GPUs, but 1 + 1 + 2 over three nodes: a pod takes its GPUs on one node.
        (
            NEW_CLUSTER,
            [
                NodeGPUs("h1", H100, 8, 7),
                NodeGPUs("h2", H100, 8, 7),
                NodeGPUs("h3", H100, 8, 6),
                NodeGPUs("a", A100, 2, 0),
            ],
            ["h100"],
        ),
        # Both pools short: both are named.
        (NEW_CLUSTER, [NodeGPUs("h", H100, 8, 8), NodeGPUs("a", A100, 2, 2)], ["h100", "a100"]),
        # No node of a pool at all: a cluster autoscaler makes them, so it is not held.
        (NEW_CLUSTER, [NodeGPUs("h", H100, 8, 8)], ["h100"]),
        (NEW_CLUSTER, [], []),
        # Only a new cluster waits: in place, a create and no change go ahead.
        (IN_PLACE, [NodeGPUs("h", H100, 8, 8), NodeGPUs("a", A100, 2, 2)], []),
        (CREATE, [NodeGPUs("h", H100, 8, 8), NodeGPUs("a", A100, 2, 2)], []),
        (UNCHANGED, [NodeGPUs("h", H100, 8, 8), NodeGPUs("a", A100, 2, 2)], []),
    ],
)
def test_which_pools_hold_the_change(kind: str, nodes: list[NodeGPUs], short: list[str]) -> None:
    why = blocked_upgrade(SPEC, Rollout(kind), nodes)
    if not short:
        assert why is None
        return
    assert why is not None
    named = [pool.name for pool in SPEC.node_pools if f"pool {pool.name} " in why]
    assert named == short
    assert why.startswith("the change needs a new RayCluster beside the running one")
    assert "The RayService stays on the previous spec until the GPUs are free" in why
    assert SKIP_CAPACITY_ANNOTATION in why


def test_the_message_has_the_figures() -> None:
    nodes = [NodeGPUs("h1", H100, 8, 7), NodeGPUs("h2", H100, 8, 5), NodeGPUs("a", A100, 2, 0)]
    why = blocked_upgrade(SPEC, Rollout(NEW_CLUSTER), nodes)
    assert why is not None
    assert (
        "pool h100 needs 4 free GPUs (2 replicas × 2 GPUs) while its 2 nodes have 4 free "
        "(room for 1 replica)" in why
    )
