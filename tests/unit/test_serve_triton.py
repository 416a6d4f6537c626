"""The Triton engine's pure parts: its server's command line, where it reads metrics, the
built-in stand-in repository, and the spec fields that reach them."""

from __future__ import annotations

from pathlib import Path

import pytest
from modelfleet_operator.api.v1alpha1 import ModelDeployment
from modelfleet_operator.translate import serving_config
from modelfleet_serving.config import TritonConfig
from modelfleet_serving.engines.triton import metrics_url
from modelfleet_serving.engines.triton_server import (
    ServerPorts,
    TritonServer,
    command_line,
    uses_placeholders,
)
from modelfleet_serving.models import BUILTIN_TRITON_STANDIN, resolve_model_source
from modelfleet_serving.models.triton_standin import PACKAGED_REPOSITORY, content_digest
from pydantic import ValidationError

REPO = Path("/srv/repo")
PORTS = ServerPorts(http=18000, grpc=18001, metrics=18002)


def test_modelfleet_appends_tritonservers_flags_to_a_plain_command() -> None:
    line = command_line(["/opt/wrapper.sh", "--log-verbose=1"], REPO, PORTS)
    assert line == [
        "/opt/wrapper.sh",
        "--log-verbose=1",
        "--model-repository=/srv/repo",
        "--http-address=127.0.0.1",
        "--http-port=18000",
        "--grpc-address=127.0.0.1",
        "--grpc-port=18001",
        "--metrics-address=127.0.0.1",
        "--metrics-port=18002",
        "--allow-metrics=true",
        "--exit-timeout-secs=5",
    ]


def test_extra_flags_come_last() -> None:
    line = command_line(["tritonserver"], REPO, PORTS, extra_flags=["--allow-gpu-metrics=false"])
    assert line[0] == "tritonserver" and line[-1] == "--allow-gpu-metrics=false"


def test_placeholders_are_substituted_and_nothing_is_appended() -> None:
    # The way TensorRT-LLM's launcher starts one server per rank under mpirun.
    command = [
        "mpirun", "--allow-run-as-root",
        "-n", "1", "tritonserver", "--model-repository={repository}",
        "--http-port={http_port}", "--grpc-port={grpc_port}", "--metrics-port={metrics_port}",
        "--backend-config=python,shm-region-prefix-name=prefix0_", ":",
        "-n", "1", "tritonserver", "--model-repository={repository}",
        "--model-control-mode=explicit", "--load-model=tensorrt_llm",
        '--log-format={"json": true}',
    ]  # fmt: skip
    assert uses_placeholders(command)
    line = command_line(command, REPO, PORTS)
    assert line[:10] == [
        "mpirun", "--allow-run-as-root",
        "-n", "1", "tritonserver", "--model-repository=/srv/repo",
        "--http-port=18000", "--grpc-port=18001", "--metrics-port=18002",
        "--backend-config=python,shm-region-prefix-name=prefix0_",
    ]  # fmt: skip
    assert line[14] == "--model-repository=/srv/repo"
    # Other braces are left alone, and no flag of ours is added.
    assert line[-1] == '--log-format={"json": true}'
    assert len(line) == len(command)


@pytest.mark.parametrize(
    ("command", "missing"),
    [
        (["launch", "--grpc_port={grpc_port}"], "{http_port}"),
        (["launch", "--model_repo={repository}"], "{http_port}, {grpc_port}"),
    ],
)
def test_placeholders_without_the_needed_ports_are_refused(
    command: list[str], missing: str
) -> None:
    with pytest.raises(ValueError, match=f"lacks {missing}:"):
        command_line(command, REPO, PORTS)


def test_a_server_refuses_an_unusable_command_when_created(tmp_path: Path) -> None:
    # Before launch: a replica fails at once instead of after a readiness timeout.
    with pytest.raises(ValueError, match="serverCommand uses placeholders"):
        TritonServer(tmp_path, command=["launch", "{repository}"], log_path=tmp_path / "log")


def test_metrics_come_from_the_replicas_own_server(tmp_path: Path) -> None:
    server = TritonServer(tmp_path, command=["tritonserver"], log_path=tmp_path / "log")
    assert metrics_url(TritonConfig(repository="file:///r"), server) == (
        f"http://127.0.0.1:{server.metrics_port}/metrics"
    )


@pytest.mark.parametrize(
    ("triton", "expected"),
    [
        (
            TritonConfig(url="triton.models.svc:8001"),
            "http://triton.models.svc:8002/metrics",
        ),
        (TritonConfig(url="[fd00::5]:8001"), "http://[fd00::5]:8002/metrics"),
        (
            TritonConfig(url="triton:8001", metrics_url="http://triton-metrics:9400/metrics"),
            "http://triton-metrics:9400/metrics",
        ),
    ],
)
def test_metrics_of_an_external_server(triton: TritonConfig, expected: str) -> None:
    assert metrics_url(triton, None) == expected


def test_the_builtin_standin_is_copied_out_of_the_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MODELFLEET_CACHE", str(tmp_path))
    served = Path(resolve_model_source(BUILTIN_TRITON_STANDIN))
    assert served.is_relative_to(tmp_path)
    assert served.name == f"triton-standin-{content_digest()}"
    for name in ("ensemble/config.pbtxt", "ensemble/1/model.py"):
        assert (served / name).read_bytes() == (PACKAGED_REPOSITORY / name).read_bytes()
    # A second resolution reuses the copy, whatever the server wrote into it.
    (served / "ensemble" / "1" / "__pycache__").mkdir()
    assert resolve_model_source(BUILTIN_TRITON_STANDIN) == str(served)


def test_the_standin_digest_follows_its_content(tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "repository"
    shutil.copytree(PACKAGED_REPOSITORY, copy, ignore=shutil.ignore_patterns("__pycache__"))
    assert content_digest(copy) == content_digest()
    (copy / "ensemble" / "config.pbtxt").write_text("changed")
    assert content_digest(copy) != content_digest()


def _triton_deployment(**triton: object) -> ModelDeployment:
    return ModelDeployment.from_object(
        {
            "apiVersion": "modelfleet.io/v1alpha1",
            "kind": "ModelDeployment",
            "metadata": {"name": "t"},
            "spec": {
                "model": {"source": "builtin://tiny-llama", "servedName": "m"},
                "engine": {"kind": "triton", "triton": triton},
                "nodePools": [{"name": "cpu"}],
            },
        }
    )


def test_server_command_and_metrics_url_reach_the_replicas() -> None:
    own = _triton_deployment(
        repository="builtin://tiny-triton-standin",
        serverCommand=["/opt/launch.sh", "--grpc_port={grpc_port}", "--http_port={http_port}"],
    )
    triton = serving_config(own, in_cluster=True).engine.triton
    assert triton is not None
    assert triton.server_command == [
        "/opt/launch.sh",
        "--grpc_port={grpc_port}",
        "--http_port={http_port}",
    ]
    assert triton.repository == "builtin://tiny-triton-standin"
    shared = _triton_deployment(
        repository="file:///unused",
        url="triton:8001",
        metricsUrl="http://triton:9400/metrics",
    )
    triton = serving_config(shared, in_cluster=True).engine.triton
    assert triton is not None
    assert triton.metrics_url == "http://triton:9400/metrics"
    assert triton.server_command is None


@pytest.mark.parametrize(
    "repository", ["builtin://tiny-llama", "builtin://tiny-triton-standin/x", "http://x"]
)
def test_only_the_standin_is_a_builtin_repository(repository: str) -> None:
    with pytest.raises(ValidationError, match="repository"):
        _triton_deployment(repository=repository)
