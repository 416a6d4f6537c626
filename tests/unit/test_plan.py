"""`modelfleet plan` without a cluster, the rollout maths it uses with one, and the
capacity warning of `modelfleet render`."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from modelfleet_cli.main import main
from modelfleet_cli.render import render as render_command
from modelfleet_operator.api.v1alpha1 import ModelDeployment, ModelDeploymentSpec
from modelfleet_operator.render import render
from modelfleet_operator.rollout import (
    CREATE,
    IN_PLACE,
    NEW_CLUSTER,
    UNCHANGED,
    NodeGPUs,
    changed_fields,
    node_gpus,
    pool_upgrade,
    ray_service_rollout,
    spec_changes,
)

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "manifests" / "examples").glob("*.yaml"))
REQUIRED = {"pool", "fits", "weights_gib_per_gpu", "kv_cache_tokens", "max_concurrent_at_max_len"}


@pytest.fixture(autouse=True)
def no_cluster(monkeypatch: pytest.MonkeyPatch) -> None:
    # Without KUBECONFIG or --context, plan looks at the file only.
    monkeypatch.delenv("KUBECONFIG", raising=False)


def plan(*args: str) -> int:
    with pytest.raises(SystemExit) as exited:
        main(["plan", "--offline", *args])
    code = exited.value.code
    assert isinstance(code, int)
    return code


def write(tmp_path: Path, obj: Any, name: str = "md.yaml") -> Path:
    path = tmp_path / name
    path.write_text(obj if isinstance(obj, str) else yaml.safe_dump(obj))
    return path


def deployment(**engine: Any) -> dict[str, Any]:
    """Llama 3 70B on a pool of 24 GiB GPUs."""
    return {
        "apiVersion": "modelfleet.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "llama"},
        "spec": {
            "model": {"source": "hf://meta-llama/Meta-Llama-3-70B-Instruct", "servedName": "l"},
            "engine": {"maxModelLen": 8192, **engine},
            "nodePools": [{"name": "l4", "gpu": {"type": "L4", "memoryGiB": 24}}],
        },
    }


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.stem)
def test_every_shipped_example_fits(example: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert plan(str(example), "--output", "json") == 0
    pools = json.loads(capsys.readouterr().out)
    spec = yaml.safe_load(example.read_text())["spec"]
    gpu_pools = [p["name"] for p in spec["nodePools"] if "gpu" in p]
    assert {p["pool"] for p in pools} >= set(gpu_pools)
    for pool in pools:
        assert set(pool) >= REQUIRED and pool["fits"] is True


@pytest.mark.parametrize(
    ("engine", "code", "fits"),
    [
        ({"tensorParallelSize": 2}, 1, False),
        ({"tensorParallelSize": 8}, 0, True),
        ({"tensorParallelSize": 8, "maxModelLen": 1_000_000}, 1, False),
    ],
)
def test_made_up_specs(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    engine: dict[str, Any],
    code: int,
    fits: bool,
) -> None:
    file = write(tmp_path, deployment(**engine))
    assert plan(str(file), "-o", "json") == code
    (pool,) = json.loads(capsys.readouterr().out)
    assert pool["fits"] is fits and pool["pool"] == "l4"
    assert pool["estimated"] is True and pool["shape_from"] == "the model's name"
    assert set(pool) >= REQUIRED


def test_70b_on_two_24_gib_gpus_says_why_and_what_to_do(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert plan(str(write(tmp_path, deployment(tensorParallelSize=2)))) == 1
    out = capsys.readouterr().out
    assert "weights per GPU       65.8 GiB" in out
    assert "does not fit; raise tensorParallelSize to 8" in out
    assert "ESTIMATED from the name" in out
    assert out.rstrip().endswith("verdict: does NOT fit")


def test_the_text_has_every_figure(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert plan(str(write(tmp_path, deployment(tensorParallelSize=8)))) == 0
    out = capsys.readouterr().out
    for label in (
        "weights per GPU",
        "reserve per GPU",
        "KV cache",
        "requests at once",
        "headroom",
        "verdict               fits",
        "lint: engine.extraArgs are all known flags",
    ):
        assert label in out


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, "cannot read"),
        ("spec: [unclosed\n", "at line 2, column 1: not YAML"),
        ({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}}, "expected one"),
        ("kind: ModelDeployment\nmetadata: {name: x}\nspec: {}\n", "spec.model: Field required"),
        (
            {
                **deployment(),
                "spec": {**deployment()["spec"], "engine": {"maxNumSeqs": "many"}},
            },
            "spec.engine.maxNumSeqs",
        ),
        (
            {
                **deployment(),
                "spec": {
                    **deployment()["spec"],
                    "model": {"source": "hf://a/b", "servedName": "b", "quantization": "int4"},
                },
            },
            "spec.model.quantization",
        ),
    ],
    ids=["missing", "not-yaml", "not-a-modeldeployment", "no-model", "wrong-type", "no-int4"],
)
def test_an_invalid_file_says_what_and_where(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: Any, expected: str
) -> None:
    file = tmp_path / "missing.yaml" if content is None else write(tmp_path, content)
    assert plan(str(file)) == 2
    assert expected in capsys.readouterr().err


def test_bad_engine_flags_print_the_lint_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    file = write(
        tmp_path, deployment(tensorParallelSize=8, extraArgs={"enable-prefix-cache": True})
    )
    assert plan(str(file)) == 2
    out = capsys.readouterr().out
    assert "did you mean 'enable-prefix-caching'?" in out
    assert "verdict: refused (engine flags)" in out


def test_render_warns_on_stderr_and_still_prints_the_objects(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    file = write(tmp_path, deployment(tensorParallelSize=2))
    assert render_command(file, image=None, namespace="default") == 0
    captured = capsys.readouterr()
    assert "kind: RayService" in captured.out
    assert "modelfleet render: warning: pool l4 does not fit" in captured.err
    assert "modelfleet plan" in captured.err
    fits = write(tmp_path, deployment(tensorParallelSize=8), "fits.yaml")
    assert render_command(fits, image=None, namespace="default") == 0
    assert capsys.readouterr().err == ""


# ------------------------------------------------------------------ rollout maths


def md(**engine: Any) -> ModelDeployment:
    obj = deployment(**engine)
    obj["spec"]["nodePools"][0]["gpu"]["memoryGiB"] = 80
    obj["metadata"]["namespace"] = "ns"
    return ModelDeployment.from_object(obj)


def ray_service(model: ModelDeployment) -> dict[str, Any]:
    return render(model, image="example.org/ray:1", namespace="ns")[0]


def test_changed_fields() -> None:
    assert changed_fields({"a": {"b": 1, "c": [1, 2]}}, {"a": {"b": 2, "c": [1, 3]}}) == [
        "a.b",
        "a.c[1]",
    ]
    live = md(tensorParallelSize=4).spec
    new = md(tensorParallelSize=8, maxNumSeqs=32).spec
    assert spec_changes(live, new) == ["spec.engine.maxNumSeqs", "spec.engine.tensorParallelSize"]
    assert spec_changes(live, live) == []


@pytest.mark.parametrize(
    ("change", "kind"),
    [
        (lambda o: None, UNCHANGED),
        # The Serve application only: Ray Serve redeploys it on the running cluster.
        (lambda o: o["spec"].update(autoscaling={"targetQueueDepth": 3}), IN_PLACE),
        (lambda o: o["spec"]["nodePools"][0].update(maxReplicas=5), IN_PLACE),
        # GPUs per worker pod change: a new RayCluster.
        (lambda o: o["spec"]["engine"].update(tensorParallelSize=8), NEW_CLUSTER),
        (lambda o: o["spec"].update(image="example.org/ray:2"), NEW_CLUSTER),
    ],
    ids=["same", "serve-config", "replica-bounds", "gpus-per-replica", "image"],
)
def test_how_kuberay_rolls_a_change_out(change: Any, kind: str) -> None:
    base = deployment(tensorParallelSize=4)
    base["spec"]["nodePools"][0]["gpu"]["memoryGiB"] = 80
    base["metadata"]["namespace"] = "ns"
    new = copy.deepcopy(base)
    change(new)
    live = ray_service(ModelDeployment.from_object(base))
    # The live object carries more than was applied (defaults, status): not a change.
    live["spec"]["rayClusterConfig"]["headGroupSpec"]["serviceType"] = "ClusterIP"
    live["status"] = {"serviceStatus": "Running"}
    rollout = ray_service_rollout(live, ray_service(ModelDeployment.from_object(new)))
    assert rollout.kind == kind, rollout.changed


def test_nothing_live_is_a_create() -> None:
    assert ray_service_rollout(None, ray_service(md())).kind == CREATE


def test_node_gpus_are_allocatable_minus_requests() -> None:
    four_gpus = {"resources": {"requests": {"nvidia.com/gpu": "4"}}}
    node = {
        "metadata": {"name": "n1", "labels": {"pool": "h100"}},
        "status": {"allocatable": {"nvidia.com/gpu": "8"}},
    }
    pods = [
        {
            "spec": {
                "nodeName": "n1",
                "containers": [
                    {"resources": {"requests": {"nvidia.com/gpu": "2"}}},
                    {"resources": {"requests": {"cpu": "1"}}},
                ],
            },
            "status": {"phase": "Running"},
        },
        # Finished pods and pods elsewhere hold nothing here.
        {
            "spec": {
                "nodeName": "n1",
                "containers": [four_gpus],
            },
            "status": {"phase": "Succeeded"},
        },
        {
            "spec": {
                "nodeName": "n2",
                "containers": [four_gpus],
            },
            "status": {"phase": "Running"},
        },
    ]
    assert node_gpus(node, pods) == NodeGPUs("n1", {"pool": "h100"}, 8, 2)


@pytest.mark.parametrize(
    ("nodes", "kind", "needed", "placeable", "enough"),
    [
        # A new cluster starts minReplicas (1) × 4 GPUs beside the old one.
        ([NodeGPUs("a", {}, 8, 4)], NEW_CLUSTER, 1, 1, True),
        ([NodeGPUs("a", {}, 8, 6)], NEW_CLUSTER, 1, 0, False),
        # Free GPUs split over nodes do not add up to one worker pod.
        ([NodeGPUs("a", {}, 8, 6), NodeGPUs("b", {}, 8, 6)], NEW_CLUSTER, 1, 0, False),
        # Nodes without the pool's labels do not count.
        ([NodeGPUs("a", {"other": "x"}, 8, 0)], CREATE, 1, 0, False),
        ([NodeGPUs("a", {}, 8, 8)], IN_PLACE, 0, 0, True),
    ],
)
def test_gpus_the_rollout_needs(
    nodes: list[NodeGPUs], kind: str, needed: int, placeable: int, enough: bool
) -> None:
    spec = md(tensorParallelSize=4).spec
    if kind == CREATE:
        pool = spec.node_pools[0].model_copy(update={"node_selector": {"other": "y"}})
    else:
        pool = spec.node_pools[0]
    from modelfleet_operator.rollout import Rollout

    upgrade = pool_upgrade(pool, spec, Rollout(kind), nodes, spec.node_pools[0])
    assert upgrade is not None
    assert (upgrade.replicas_needed, upgrade.placeable_replicas, upgrade.enough) == (
        needed,
        placeable,
        enough,
    )
    assert upgrade.gpus_needed == needed * 4


def test_a_cpu_pool_needs_no_gpus() -> None:
    spec = ModelDeploymentSpec.model_validate(
        {
            "model": {"source": "builtin://tiny-llama", "servedName": "t"},
            "nodePools": [{"name": "c"}],
        }
    )
    from modelfleet_operator.rollout import Rollout

    assert pool_upgrade(spec.node_pools[0], spec, Rollout(CREATE), []) is None
