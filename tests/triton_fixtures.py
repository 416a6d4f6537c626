"""pytest fixtures around a CPU tritonserver holding the stand-in TensorRT-LLM model.

The server is the ``tritonserver`` of PyPI ``nvidia-pytriton``, installed into the cache
by `modelfleet_serving.engines.triton_install`; the model is the decoupled python-backend
stand-in in ``tests/assets/triton/repository`` (imported by tests/conftest.py).
"""

import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from modelfleet_serving.engines.triton_install import TritonInstallError, ensure_tritonserver
from modelfleet_serving.engines.triton_server import TritonServer

TRITON_REPOSITORY = Path(__file__).parent / "assets" / "triton" / "repository"
# Read by the stand-in model (tests/assets/triton/repository/ensemble/1/model.py).
TRITON_EVENT_LOG_ENV = "MODELFLEET_TRITON_EVENT_LOG"


@dataclass(frozen=True)
class TritonStandIn:
    """A running tritonserver holding the stand-in model, and the model's event log."""

    server: TritonServer
    repository: Path
    event_log: Path

    def events(self, request_id: str | None = None) -> list[dict[str, Any]]:
        """The model's events (received, finished, cancelled), of one request if given."""
        if not self.event_log.exists():
            return []
        events = [json.loads(line) for line in self.event_log.read_text().splitlines()]
        return [e for e in events if request_id is None or e["id"] == request_id]


def copy_triton_repository(into: Path) -> Path:
    """A private copy of the stand-in repository (the backend writes __pycache__ there)."""
    shutil.copytree(TRITON_REPOSITORY, into, ignore=shutil.ignore_patterns("__pycache__"))
    return into


@pytest.fixture(scope="session")
def tritonserver_installed() -> None:
    """Skip when the tritonserver of nvidia-pytriton cannot be downloaded or unpacked."""
    try:
        ensure_tritonserver()
    except TritonInstallError as e:
        pytest.skip(f"tritonserver (PyPI nvidia-pytriton) cannot be obtained: {e}")


@pytest.fixture(scope="module")
def triton_stand_in(
    tmp_path_factory: pytest.TempPathFactory, tritonserver_installed: None
) -> Iterator[TritonStandIn]:
    """A tritonserver on 127.0.0.1 with the stand-in model, shared by one test module."""
    root = tmp_path_factory.mktemp("triton")
    repository = copy_triton_repository(root / "repository")
    event_log = root / "events.jsonl"
    server = TritonServer(
        repository, env={TRITON_EVENT_LOG_ENV: str(event_log)}, log_path=root / "server.log"
    )
    with server:
        yield TritonStandIn(server, repository, event_log)
