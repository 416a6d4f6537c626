"""Every shipped example either serves on this machine or is refused at once, with why.

`modelfleet serve` refuses before Ray starts what exists only on a cluster (a pvc://
model source or Triton repository, GPU pools); the rest must pass that check and the
local preflight as shipped.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from modelfleet_cli.serve import cluster_needs, cluster_refusal, model_problems
from modelfleet_operator.api.v1alpha1 import ModelDeployment
from modelfleet_operator.translate import serving_config

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "manifests" / "examples").glob("*.yaml"))

# What each example needs of a cluster; an example missing here fails the test, so a
# new one has to be sorted into "serves locally" or "refused, because".
NEEDS = {
    "llama3-70b-pvc.yaml": ["model.source pvc://", "node pool 'h100' (H100) asks for GPUs"],
    "qwen2-7b-awq.yaml": ["node pools 'l20' (L20), 'a100' (A100) ask for GPUs"],
    "tiny-cpu-lora.yaml": [],
    "tiny-cpu-two-pools.yaml": [],
    "tiny-cpu.yaml": [],
    "tiny-triton.yaml": [],
    "triton-trtllm.yaml": [
        "model.source pvc://",
        "engine.triton.repository pvc://",
        "node pool 'l40s' (L40S) asks for GPUs",
    ],
}


def _load(path: Path) -> ModelDeployment:
    return ModelDeployment.from_object(yaml.safe_load(path.read_text()))


def test_every_example_is_sorted() -> None:
    assert sorted(p.name for p in EXAMPLES) == sorted(NEEDS)


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_example_serves_locally_or_is_refused_with_a_reason(example: Path) -> None:
    md = _load(example)
    needs = cluster_needs(md)
    expected = NEEDS[example.name]
    assert len(needs) == len(expected)
    for need, words in zip(needs, expected, strict=True):
        assert words in need
        # Each reason says what to change, not only what is wrong.
        assert "(" in need and ("point it at" in need or "remove gpu:" in need)
    refusal = cluster_refusal(example, md)
    if expected:
        assert refusal is not None and "\n" not in refusal
        assert refusal.startswith(f"{example} needs a cluster: ")
        assert f"kubectl apply -f {example}" in refusal
    else:
        assert refusal is None
        # Serving here as shipped also means no local path it names is missing.
        assert model_problems(serving_config(md, in_cluster=False)) == []


def test_a_cpu_example_with_a_pvc_source_is_refused() -> None:
    obj = yaml.safe_load((ROOT / "manifests" / "examples" / "tiny-cpu.yaml").read_text())
    obj["spec"]["model"]["source"] = "pvc://weights/tiny"
    refusal = cluster_refusal(Path("x.yaml"), ModelDeployment.from_object(obj))
    assert refusal is not None
    assert "model.source pvc://weights/tiny is on a PersistentVolumeClaim" in refusal
