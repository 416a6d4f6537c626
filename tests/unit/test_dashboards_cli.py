"""`modelfleet dashboards export` and `push`.

No Grafana server can be installed here, so `push` talks to a small HTTP server that
answers the three endpoints it uses (`GET/POST /api/folders`, `POST /api/dashboards/db`)
the way Grafana documents them, and records what it was sent.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from modelfleet_cli.dashboards import export, push
from modelfleet_cli.main import main
from modelfleet_operator.dashboards import dashboard_files

TOKEN = "glsa_test"


@dataclass
class FakeGrafana:
    """What the server holds: folders by uid, dashboards by uid, requests seen."""

    url: str = ""
    folders: dict[str, str] = field(default_factory=dict)
    dashboards: dict[str, dict[str, Any]] = field(default_factory=dict)
    authorizations: list[str] = field(default_factory=list)


def _handler(state: FakeGrafana) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            """Keep the test output quiet."""

        def _reply(self, status: int, body: object) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _body(self) -> dict[str, Any]:
            length = int(self.headers.get("Content-Length", "0"))
            body: dict[str, Any] = json.loads(self.rfile.read(length) or b"{}")
            return body

        def _authorized(self) -> bool:
            state.authorizations.append(self.headers.get("Authorization", ""))
            if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                self._reply(401, {"message": "Unauthorized"})
                return False
            return True

        def do_GET(self) -> None:
            if not self._authorized():
                return
            if self.path.split("?")[0] == "/api/folders":
                self._reply(200, [{"uid": u, "title": t} for u, t in state.folders.items()])
            else:
                self._reply(404, {"message": "Not found"})

        def do_POST(self) -> None:
            if not self._authorized():
                return
            body = self._body()
            if self.path == "/api/folders":
                if body["uid"] in state.folders:
                    self._reply(409, {"message": "a folder with the same uid already exists"})
                    return
                state.folders[body["uid"]] = body["title"]
                self._reply(200, {"uid": body["uid"], "title": body["title"]})
            elif self.path == "/api/dashboards/db":
                uid = body["dashboard"]["uid"]
                if body["folderUid"] not in state.folders:
                    self._reply(400, {"message": "folder not found"})
                    return
                if uid in state.dashboards and not body.get("overwrite"):
                    self._reply(412, {"message": "version-mismatch"})
                    return
                state.dashboards[uid] = body
                self._reply(200, {"uid": uid, "status": "success"})
            else:
                self._reply(404, {"message": "Not found"})

    return Handler


@pytest.fixture
def grafana() -> Iterator[FakeGrafana]:
    state = FakeGrafana()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_export_writes_every_dashboard(tmp_path: Path) -> None:
    assert export(tmp_path / "out") == 0
    files = dashboard_files()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(files)
    for name, text in files.items():
        assert (tmp_path / "out" / name).read_text(encoding="utf-8") == text


def test_export_through_the_cli(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["dashboards", "export", str(tmp_path)])
    assert exit_.value.code == 0
    assert (tmp_path / "modelfleet-serving.json").is_file()


def test_push_creates_the_folder_once_and_overwrites_dashboards(grafana: FakeGrafana) -> None:
    assert push(grafana.url, token=TOKEN, folder="LLM serving") == 0
    assert grafana.folders == {"llm-serving": "LLM serving"}
    assert sorted(grafana.dashboards) == ["modelfleet-operator", "modelfleet-serving"]
    for body in grafana.dashboards.values():
        assert body["folderUid"] == "llm-serving"
        assert body["overwrite"] is True

    # A second push finds the folder by its title and replaces the dashboards.
    assert push(grafana.url, token=TOKEN, folder="LLM serving") == 0
    assert grafana.folders == {"llm-serving": "LLM serving"}
    assert len(grafana.dashboards) == 2


def test_push_reuses_a_folder_created_by_hand(grafana: FakeGrafana) -> None:
    grafana.folders["abc123"] = "modelfleet"
    assert push(grafana.url, token=TOKEN) == 0
    assert grafana.folders == {"abc123": "modelfleet"}
    assert {b["folderUid"] for b in grafana.dashboards.values()} == {"abc123"}


def test_push_reads_the_token_from_the_environment(
    grafana: FakeGrafana, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GRAFANA_TOKEN", TOKEN)
    assert push(grafana.url, token=None) == 0
    assert set(grafana.authorizations) == {f"Bearer {TOKEN}"}


def test_push_reports_a_refused_token(
    grafana: FakeGrafana, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("GRAFANA_TOKEN", raising=False)
    assert push(grafana.url, token="wrong") == 1
    assert "401" in capsys.readouterr().err
    assert grafana.dashboards == {}
