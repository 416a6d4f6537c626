"""A real Prometheus for tests, scraping targets the tests name (imported by conftest.py)."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from modelfleet_operator.dashboards import panel_queries

from tests.helpers import free_port

SCRAPE_INTERVAL_S = 1
# Grafana makes $__rate_interval at least four scrape intervals; a little more keeps a
# rate defined even when one scrape of a loaded two-core machine comes late.
RATE_INTERVAL = "15s"
START_TIMEOUT_S = 60.0


def substitute(expr: str, variables: dict[str, str]) -> str:
    """`expr` with Grafana's template variables replaced, as Grafana sends it."""
    for name, value in variables.items():
        expr = expr.replace(f"${name}", value)
    expr = expr.replace("$__rate_interval", RATE_INTERVAL)
    assert "$" not in expr, f"a template variable is left in {expr}"
    return expr


class Prometheus:
    """A Prometheus server on 127.0.0.1 whose scrape targets are set from the test.

    Targets come from a file_sd file that Prometheus watches, so adding one needs no
    restart and no reload.
    """

    def __init__(self, workdir: Path) -> None:
        binary = shutil.which("prometheus")
        if binary is None:
            pytest.fail("the `prometheus` binary is missing: scripts/setup.sh installs it")
        self._targets = workdir / "targets.json"
        self._targets.write_text("[]")
        config = workdir / "prometheus.yml"
        config.write_text(
            json.dumps(
                {
                    "global": {
                        "scrape_interval": f"{SCRAPE_INTERVAL_S}s",
                        "scrape_timeout": f"{SCRAPE_INTERVAL_S}s",
                        "evaluation_interval": f"{SCRAPE_INTERVAL_S}s",
                    },
                    "scrape_configs": [
                        {
                            "job_name": "modelfleet",
                            "file_sd_configs": [
                                {"files": [str(self._targets)], "refresh_interval": "1s"}
                            ],
                        }
                    ],
                }
            )
        )
        self.url = f"http://127.0.0.1:{free_port()}"
        self._log = (workdir / "prometheus.log").open("w")
        self._process = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address={self.url.removeprefix('http://')}",
                "--log.level=warn",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self._http = httpx.Client(base_url=self.url, timeout=10)
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self._ready():
            if self._process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"Prometheus did not start; see {workdir / 'prometheus.log'}")
            time.sleep(0.2)

    def _ready(self) -> bool:
        try:
            return self._http.get("/-/ready").status_code == 200
        except httpx.TransportError:
            return False

    def scrape(self, *targets: str) -> None:
        """Scrape `host:port` targets (their /metrics) from now on."""
        self._targets.write_text(json.dumps([{"targets": list(targets)}]))

    def wait_until_up(self, target: str, timeout: float = 60.0) -> None:
        """Wait until a scrape of `target` has succeeded."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            up = self.query(f'up{{instance="{target}"}}')
            if up and up[0]["value"][1] == "1":
                return
            time.sleep(0.5)
        pytest.fail(f"Prometheus never scraped {target}")

    def query(self, expr: str) -> list[dict[str, Any]]:
        """The instant vector `expr` evaluates to now."""
        return self._api("/api/v1/query", {"query": expr})

    def query_range(self, expr: str, start: float, end: float) -> list[dict[str, Any]]:
        """The series `expr` evaluates to between `start` and `end`, one step a second."""
        return self._api(
            "/api/v1/query_range",
            {"query": expr, "start": start, "end": end, "step": SCRAPE_INTERVAL_S},
        )

    def label_values(self, label: str, match: str) -> list[str]:
        """What Grafana's `label_values(match, label)` lists."""
        response = self._http.get(f"/api/v1/label/{label}/values", params={"match[]": match})
        response.raise_for_status()
        values: list[str] = response.json()["data"]
        return values

    def panels_without_data(
        self, dashboard: dict[str, Any], variables: dict[str, str], since: float
    ) -> list[str]:
        """Every panel query of `dashboard` that had no finite value since `since`.

        Each expression is evaluated over the time range as Grafana would draw it,
        with `variables` substituted; a series holding only NaN (a quantile of no
        observations) counts as no data, as Grafana shows it.
        """
        empty = []
        for query in panel_queries(dashboard):
            expr = substitute(query.expr, variables)
            series = self.query_range(expr, since, time.time())
            if not any(math.isfinite(float(v)) for s in series for _, v in s["values"]):
                empty.append(f"  {query.dashboard} / {query.panel} [{query.ref_id}]: {expr}")
        return empty

    def _api(self, path: str, params: dict[str, Any]) -> list[dict[str, Any]]:
        response = self._http.get(path, params=params)
        body = response.json()
        assert response.status_code == 200, f"{params['query']}: {body.get('error')}"
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def stop(self) -> None:
        """Stop the server and wait for it."""
        self._http.close()
        self._process.terminate()
        try:
            self._process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._log.close()


@pytest.fixture(scope="session")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    server = Prometheus(tmp_path_factory.mktemp("prometheus"))
    try:
        yield server
    finally:
        server.stop()
