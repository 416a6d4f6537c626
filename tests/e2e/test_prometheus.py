"""A real Prometheus scrapes a running `modelfleet serve` under load, and every PromQL
expression of every panel of the serving dashboard returns data: no "No data" panel.

The template variables are resolved the way Grafana resolves them: `$model` and `$pool`
from the variables' own `label_values(...)` queries, `$__rate_interval` to a window
that holds several 1 s scrapes.
"""

from __future__ import annotations

import re
import time

import httpx
import openai
import pytest
from modelfleet_operator.dashboards import dashboards
from modelfleet_serving.metrics import REQUESTS_TOTAL

from tests.prometheus_fixtures import SCRAPE_INTERVAL_S, Prometheus, substitute

pytestmark = pytest.mark.e2e


def _load(base_url: str, model: str) -> None:
    """A few dozen requests of every kind, some of them errors, as users send them."""
    client = openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0)
    for i in range(12):
        stream = client.completions.create(
            model=model, prompt=f"Count to {i}:", max_tokens=16, stream=True
        )
        assert any(chunk.choices and chunk.choices[0].text for chunk in stream)
        client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": f"Hello {i}"}], max_tokens=8
        )
    # Errors, so requests_total has codes other than 200: an unknown model (404) and
    # a parameter out of range (400).
    for _ in range(3):
        with pytest.raises(openai.NotFoundError):
            client.completions.create(model="no-such-model", prompt="x", max_tokens=4)
        with pytest.raises(openai.BadRequestError):
            client.completions.create(model=model, prompt="x", max_tokens=-1)


def test_every_serving_panel_has_data(prometheus: Prometheus, tiny_cpu_serve: str) -> None:
    target = tiny_cpu_serve.removeprefix("http://")
    prometheus.scrape(target)
    prometheus.wait_until_up(target)
    started = time.time()

    model = httpx.get(f"{tiny_cpu_serve}/v1/models", timeout=30).json()["data"][0]["id"]
    _load(tiny_cpu_serve, model)
    # Let a few scrapes see the final counts, so every rate window holds them.
    time.sleep(5 * SCRAPE_INTERVAL_S)

    serving = dashboards()["modelfleet-serving.json"]
    variables = {v["name"]: v for v in serving["templating"]["list"]}
    # Model and pool names are DNS labels: no regex metacharacter to escape in them.
    models = prometheus.label_values("model", _match(variables["model"]["query"], {}))
    assert model in models
    pools = prometheus.label_values("pool", _match(variables["pool"]["query"], {"model": model}))
    assert pools, "the pool variable lists no pool"
    chosen = {"model": model, "pool": "|".join(pools)}

    empty = prometheus.panels_without_data(serving, chosen, since=started)
    assert not empty, "panels with no data:\n" + "\n".join(empty)

    # The error path is visible too, on the "Requests by status code" panel.
    requests = prometheus.query(f'{REQUESTS_TOTAL}{{model="{model}"}}')
    assert {"200", "400", "404"} <= {s["metric"]["code"] for s in requests}


def _match(variable_query: str, variables: dict[str, str]) -> str:
    """The series selector of a `label_values(selector, label)` variable query."""
    found = re.fullmatch(r"label_values\((.*), *\w+\)", variable_query)
    assert found, variable_query
    return substitute(found.group(1), variables)
