"""pytest fixtures around a CPU tritonserver holding the stand-in TensorRT-LLM model.

The server is the ``tritonserver`` of PyPI ``nvidia-pytriton``, installed into the cache
by `modelfleet_serving.engines.triton_install`; the model is the decoupled python-backend
stand-in that ships as ``builtin://tiny-triton-standin``
(``serving/modelfleet_serving/models/triton_standin/repository``; imported by
tests/conftest.py).
"""

import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from modelfleet_serving.engines.triton_install import TritonInstallError, ensure_tritonserver
from modelfleet_serving.engines.triton_server import TritonServer
from modelfleet_serving.models.triton_standin import PACKAGED_REPOSITORY

TRITON_REPOSITORY = PACKAGED_REPOSITORY
# Read by the stand-in model (repository/ensemble/1/model.py): where it logs its events.
TRITON_EVENT_LOG_ENV = "MODELFLEET_TRITON_EVENT_LOG"


def read_events(event_log: Path, request_id: str | None = None) -> list[dict[str, Any]]:
    """The stand-in's events (received, finished, cancelled), of one request if given."""
    if not event_log.exists():
        return []
    events = [json.loads(line) for line in event_log.read_text().splitlines()]
    return [e for e in events if request_id is None or e["id"] == request_id]


def tritonservers_logging_to(event_log: Path) -> list[int]:
    """Process ids of the tritonservers whose stand-in logs to ``event_log``.

    A replica starts its server itself, out of the test's reach; the event log named in
    the server's environment tells this test's servers from any other on the machine.
    """
    wanted = f"{TRITON_EVENT_LOG_ENV}={event_log}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv0 = (entry / "cmdline").read_bytes().split(b"\0", 1)[0]
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue  # gone meanwhile, or not ours to read
        if os.path.basename(argv0) == b"tritonserver" and wanted in environ:
            found.append(int(entry.name))
    return found


@dataclass(frozen=True)
class TritonStandIn:
    """A running tritonserver holding the stand-in model, and the model's event log."""

    server: TritonServer
    repository: Path
    event_log: Path

    def events(self, request_id: str | None = None) -> list[dict[str, Any]]:
        """The model's events (received, finished, cancelled), of one request if given."""
        return read_events(self.event_log, request_id)


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
