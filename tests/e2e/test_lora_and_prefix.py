"""LoRA adapters and prefix-aware routing, on the real vLLM engine behind `modelfleet serve`.

`manifests/examples/tiny-cpu-lora.yaml` runs as shipped from a copy the tests edit:
two replicas of the tiny Llama, and the generated adapter `builtin://tiny-llama-lora`.
Adapters added to or removed from the file are loaded or unloaded on the running
replicas (Serve's reconfigure, vLLM's runtime adapter loading): the replicas' ids stay
the same, so no engine restarted. The prefix test reads each engine's prefix-cache
counters through /health.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.helpers import wait_until
from tests.serve_fixtures import stop_serve, wait_for_serving

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "manifests" / "examples" / "tiny-cpu-lora.yaml"
BASE = "tiny-llama"
ADAPTER = "tiny-llama-lora"
SYSTEM = (
    "You are the support assistant of a small shop that sells bicycles, spare parts "
    "and repairs. Answer briefly, name the part, and say whether it is in stock. "
) * 4


@pytest.fixture(scope="module")
def lora_serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """`modelfleet serve` of a copy of the example; yields the base URL and the copy
    (its output goes to `serve.log` beside the copy)."""
    folder = tmp_path_factory.mktemp("lora")
    manifest = folder / EXAMPLE.name
    shutil.copy(EXAMPLE, manifest)
    log_path = folder / "serve.log"
    command = [str(Path(sys.executable).with_name("modelfleet")), "serve", str(manifest)]
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [*command, "--port", "0"],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            start_new_session=True,
        )
    try:
        base_url = wait_for_serving(process, log_path)
        yield base_url, manifest
    finally:
        stop_serve(process)


def _health(base: str) -> dict[str, Any]:
    response = httpx.get(f"{base}/health", timeout=30)
    response.raise_for_status()
    return response.json()  # type: ignore[no-any-return]


def _models(base: str) -> list[dict[str, Any]]:
    response = httpx.get(f"{base}/v1/models", timeout=30)
    response.raise_for_status()
    return response.json()["data"]  # type: ignore[no-any-return]


def _complete(base: str, model: str, prompt: str, max_tokens: int = 12) -> httpx.Response:
    return httpx.post(
        f"{base}/v1/completions",
        json={"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0},
        timeout=120,
    )


def _text(base: str, model: str, prompt: str) -> str:
    response = _complete(base, model, prompt)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == model  # the usage and the answer carry the adapter's name
    assert body["usage"]["completion_tokens"] > 0
    return body["choices"][0]["text"]  # type: ignore[no-any-return]


def _every_replica_serves(base: str, adapters: set[str]) -> bool:
    replicas = _health(base)["replicas"]
    return len(replicas) == 2 and all(set(r["adapters"]) == adapters for r in replicas)


def _edit(manifest: Path, adapters: list[dict[str, str]]) -> None:
    obj = yaml.safe_load(manifest.read_text())
    obj["spec"]["model"]["adapters"] = adapters
    manifest.write_text(yaml.safe_dump(obj, sort_keys=False))


def _applied(manifest: Path, times: int) -> bool:
    output = (manifest.parent / "serve.log").read_text(errors="replace")
    return output.count("the changed file is applied") >= times


def test_base_model_and_adapter_are_listed_and_answer_differently(
    lora_serve: tuple[str, Path],
) -> None:
    base, _ = lora_serve
    wait_until(
        lambda: _every_replica_serves(base, {ADAPTER}), "both replicas serve the adapter", 120
    )
    models = {m["id"]: m for m in _models(base)}
    assert set(models) == {BASE, ADAPTER}
    assert models[ADAPTER]["parent"] == BASE
    prompt = "Once upon a time"
    plain, adapted = _text(base, BASE, prompt), _text(base, ADAPTER, prompt)
    # Greedy decoding: the same model gives the same text, the adapter another one.
    assert _text(base, BASE, prompt) == plain
    assert _text(base, ADAPTER, prompt) == adapted
    assert adapted != plain


def test_shared_prefix_hits_concentrate_on_one_replica(lora_serve: tuple[str, Path]) -> None:
    base, _ = lora_serve
    before = {r["replica"]: r["prefixCacheHits"] for r in _health(base)["replicas"]}
    for i in range(8):
        _text(base, BASE, f"{SYSTEM}Question {i}: do you have a {i}-speed chain?")
    time.sleep(2)  # two report intervals: the counters reach the hub
    after = {r["replica"]: r["prefixCacheHits"] for r in _health(base)["replicas"]}
    gained = {name: after[name] - before.get(name, 0) for name in after}
    print(f"prefix-cache hit tokens gained per replica: {gained}")
    # The first request fills one replica's cache; the seven after it find the prefix
    # there, and the other replica sees none of them.
    assert sum(gained.values()) > 0
    assert max(gained.values()) >= 0.9 * sum(gained.values())


def test_adapters_follow_the_file_without_restarting_the_engines(
    lora_serve: tuple[str, Path],
) -> None:
    base, manifest = lora_serve
    wait_until(
        lambda: _every_replica_serves(base, {ADAPTER}), "both replicas serve the adapter", 120
    )
    replicas = {r["replica"] for r in _health(base)["replicas"]}
    prompt = "Hello world"
    adapted = _text(base, ADAPTER, prompt)

    # Add a second adapter and one whose files do not exist.
    _edit(
        manifest,
        [
            {"name": ADAPTER, "source": "builtin://tiny-llama-lora"},
            {"name": "second", "source": "builtin://tiny-llama-lora"},
            {"name": "broken", "source": "file:///nonexistent/adapter"},
        ],
    )
    wait_until(lambda: _applied(manifest, 1), "the first edit applied", 180)
    wait_until(
        lambda: _every_replica_serves(base, {ADAPTER, "second"}), "both serve two adapters", 60
    )
    health = _health(base)
    for replica in health["replicas"]:
        reason = replica["adapterErrors"]["broken"]
        assert "/nonexistent/adapter" in reason or "not found" in reason.lower(), reason
    assert {m["id"] for m in _models(base)} == {BASE, ADAPTER, "second"}
    assert _text(base, "second", prompt) == adapted  # the same weights, another name
    assert _complete(base, "broken", prompt).status_code == 404
    assert _text(base, BASE, prompt)  # the base model keeps serving

    # Remove the first adapter: it is no longer listed nor served.
    _edit(manifest, [{"name": "second", "source": "builtin://tiny-llama-lora"}])
    wait_until(lambda: _applied(manifest, 2), "the second edit applied", 180)
    wait_until(lambda: _every_replica_serves(base, {"second"}), "the first adapter gone", 60)
    assert {m["id"] for m in _models(base)} == {BASE, "second"}
    missing = _complete(base, ADAPTER, prompt)
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "model_not_found"
    assert _health(base)["replicas"][0]["adapterErrors"] == {}
    # Same replicas throughout: adapters came and went without a new engine.
    assert {r["replica"] for r in _health(base)["replicas"]} == replicas
