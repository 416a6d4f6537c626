"""API keys (401), the queue limit (429), a client that goes away and a dead engine on
a second `modelfleet serve`.

The example of manifests/examples/tiny-cpu.yaml with `apiKeySecretRef` set (the keys
come from a file named by MODELFLEET_API_KEYS_FILE, re-read as a mounted Secret is),
`maxQueuedRequests: 3` and one sequence per batch: one request generates, the next
three wait for the engine, and any more is refused, however fast the machine.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import psutil
import pytest
import yaml
from modelfleet_serving.metrics import GENERATION_TOKENS_TOTAL

from tests.helpers import wait_until
from tests.serve_fixtures import stop_serve, wait_for_serving

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
MODEL = "tiny-llama"
KEYS = ("first-key", "second-key")
QUEUE_LIMIT = 3


@pytest.fixture(scope="module")
def keys_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The file the server reads its API keys from (one per line), as a mounted Secret."""
    path = tmp_path_factory.mktemp("keys") / "keys"
    path.write_text("\n".join(KEYS) + "\n")
    return path


def _rotate(path: Path, keys: list[str]) -> None:
    """Replace the keys file in one step, as the kubelet swaps a Secret volume's files."""
    new = path.with_name("keys.new")
    new.write_text("\n".join(keys) + "\n")
    new.replace(path)


@pytest.fixture(scope="module")
def limited_serve(tmp_path_factory: pytest.TempPathFactory, keys_file: Path) -> Iterator[str]:
    """`modelfleet serve` of the tiny example with API keys and a queue limit of 3."""
    workdir = tmp_path_factory.mktemp("limited-serve")
    manifest = yaml.safe_load((ROOT / "manifests/examples/tiny-cpu.yaml").read_text())
    manifest["metadata"]["name"] = "tiny-limited"
    manifest["spec"]["serving"]["apiKeySecretRef"] = {"name": "keys", "key": "keys"}
    manifest["spec"]["serving"]["maxQueuedRequests"] = QUEUE_LIMIT
    # With one sequence per batch the requests behind the first one wait in the queue for
    # as long as it generates, so the limit does not depend on how fast requests arrive.
    manifest["spec"]["engine"]["maxNumSeqs"] = 1
    # Long enough generations that the queue is still there when the test looks: the
    # tiny model makes a token in about 2 ms, so 480 tokens were gone in a second.
    manifest["spec"]["engine"]["maxModelLen"] = 2048
    path = workdir / "tiny-limited.yaml"
    path.write_text(yaml.safe_dump(manifest))
    log_path = workdir / "serve.log"
    env = os.environ | {"MODELFLEET_API_KEYS_FILE": str(keys_file)}
    command = [str(Path(sys.executable).with_name("modelfleet")), "serve", str(path), "--port", "0"]
    with log_path.open("w") as log:
        process = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            env=env,
            start_new_session=True,
        )
    try:
        yield wait_for_serving(process, log_path)
    finally:
        stop_serve(process)


def _chat(base: str, key: str | None, *, authorization: str | None = None) -> httpx.Response:
    """A small chat request with `key` as bearer token (or a raw Authorization header)."""
    headers = {"Authorization": authorization or f"Bearer {key}"} if authorization or key else {}
    return httpx.post(
        f"{base}/v1/chat/completions",
        json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4},
        headers=headers,
        timeout=300,
    )


@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer wrong-key", "Bearer first-key-but-longer", "Basic first-key", "first-key"],
)
def test_missing_or_wrong_key_is_401(limited_serve: str, authorization: str | None) -> None:
    response = _chat(limited_serve, None, authorization=authorization)
    assert response.status_code == 401, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert (error["type"], error["code"]) == ("authentication_error", "invalid_api_key")
    assert _chat(limited_serve, KEYS[0]).status_code == 200


def test_a_rotated_key_is_honoured_within_seconds(limited_serve: str, keys_file: Path) -> None:
    _rotate(keys_file, ["rotated-key", KEYS[1]])
    try:
        started = time.monotonic()
        wait_until(
            lambda: _chat(limited_serve, "rotated-key").status_code == 200,
            "the new key to be accepted",
            timeout=10,
        )
        print(f"rotated key honoured after {time.monotonic() - started:.1f} s")
        assert _chat(limited_serve, KEYS[0]).status_code == 401  # the key taken out
        assert _chat(limited_serve, KEYS[1]).status_code == 200  # the key kept
    finally:
        _rotate(keys_file, list(KEYS))
    wait_until(lambda: _chat(limited_serve, KEYS[0]).status_code == 200, "keys restored", 10)


def test_models_need_a_key_too(limited_serve: str) -> None:
    assert httpx.get(f"{limited_serve}/v1/models", timeout=30).status_code == 401
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{limited_serve}/v1", api_key="bad", max_retries=0).models.list()


def test_every_configured_key_works_with_the_openai_client(limited_serve: str) -> None:
    for key in KEYS:
        client = openai.OpenAI(base_url=f"{limited_serve}/v1", api_key=key, max_retries=0)
        assert [m.id for m in client.models.list()] == [MODEL]
    # Health and metrics stay open: probes and Prometheus carry no key.
    assert httpx.get(f"{limited_serve}/health", timeout=30).status_code == 200
    assert httpx.get(f"{limited_serve}/metrics", timeout=30).status_code == 200


def _generated_tokens(base: str) -> float:
    """The engines' generated-token counter, summed over the replicas."""
    text = httpx.get(f"{base}/metrics", timeout=60).text
    pattern = rf'^{GENERATION_TOKENS_TOTAL}\{{[^}}]*pool="cpu"[^}}]*\}} (\S+)'
    return sum(float(v) for v in re.findall(pattern, text, re.M))


def _engine_idle(base: str) -> bool:
    replicas = httpx.get(f"{base}/health", timeout=60).json()["replicas"]
    return bool(replicas) and all(r["running"] == 0 and r["waiting"] == 0 for r in replicas)


def test_a_client_that_goes_away_stops_the_engine(limited_serve: str) -> None:
    """A stream of 2000 tokens cut after its first three chunks: the front door closes
    its connection to the replica, the replica aborts the request, and the engine's
    counter stops short of the 2000 the request asked for.

    This only proves something when the client cuts before the engine would have
    finished anyway. On two busy cores the client can be seconds behind the engine
    (vLLM's CPU worker and engine core take both cores while generating), so the test
    first times a whole 2000-token generation, and counts a try only when the cut came
    within half that time; up to three tries. The tokens the client was sent are
    counted from the stream (one logprob per token: vLLM hands a slow reader several
    tokens per chunk)."""
    base, max_tokens = limited_serve, 2000
    headers = {"Authorization": f"Bearer {KEYS[1]}"}
    body = {"model": MODEL, "prompt": "The sea", "max_tokens": max_tokens, "ignore_eos": True}
    url = f"{base}/v1/completions"
    wait_until(lambda: _engine_idle(base), "an idle engine", 120)
    started = time.monotonic()
    whole = httpx.post(url, json=body, headers=headers, timeout=300)
    assert whole.status_code == 200, whole.text
    full = time.monotonic() - started
    for _ in range(3):
        wait_until(lambda: _engine_idle(base), "an idle engine", 120)
        before = _generated_tokens(base)
        sent, seen = 0, 0
        started = time.monotonic()
        with httpx.stream(
            "POST", url, json={**body, "stream": True, "logprobs": 0}, headers=headers, timeout=300
        ) as response:
            assert response.status_code == 200
            for line in response.iter_lines():
                if line.startswith("data: {"):
                    sent += len(json.loads(line[6:])["choices"][0]["logprobs"]["tokens"])
                    seen += 1
                    if seen == 3:
                        break
            # Leaving the block closes the connection mid-stream.
        cut = time.monotonic() - started
        wait_until(lambda: _engine_idle(base), "the engine to stop", 60)
        # Replicas report every half second: two more reports, then the counter holds.
        time.sleep(1.5)
        generated = _generated_tokens(base) - before
        print(
            f"\ncut after {cut:.2f} s (a whole generation takes {full:.2f} s): "
            f"{generated:.0f} tokens generated of {max_tokens}, {sent} sent"
        )
        if cut < full / 2:
            break
    else:
        pytest.xfail(f"the client never cut within half of {full:.1f} s: nothing to prove")
    assert generated < max_tokens, "the engine ran the abandoned stream to its end"
    assert generated >= sent
    assert _chat(base, KEYS[0]).status_code == 200


@pytest.mark.xfail(
    reason="timing on a 2-core machine: vLLM's CPU worker and its engine core's spin-wait "
    "take both cores while generating, so the requests behind the first one can arrive "
    "after it ended; see docs/data-plane.md",
    strict=False,
)
async def test_queue_limit_is_429_and_service_continues(limited_serve: str) -> None:
    headers = {"Authorization": f"Bearer {KEYS[1]}"}
    body = {"model": MODEL, "prompt": "A long story", "max_tokens": 2000, "ignore_eos": True}
    url = f"{limited_serve}/v1/completions"

    async def one(client: httpx.AsyncClient, *, stream: bool) -> tuple[int, str]:
        """The status, and the body of an error (a success is read to its end)."""
        async with client.stream(
            "POST", url, json={**body, "stream": stream}, headers=headers
        ) as response:
            if response.status_code != 200:
                return response.status_code, (await response.aread()).decode()
            async for _ in response.aiter_lines():
                # Lines already buffered come without a pause: give the other tasks
                # (the requests sent next, the polling below) their turn.
                await asyncio.sleep(0)
            return 200, ""

    async def running(client: httpx.AsyncClient) -> int:
        """Requests running in the engine, as the replica last reported."""
        replicas = (await client.get(f"{limited_serve}/health", timeout=30)).json()["replicas"]
        return sum(r["running"] for r in replicas)

    async def attempt(client: httpx.AsyncClient) -> tuple[bool, list[tuple[int, str]]]:
        """One request generating and QUEUE_LIMIT + 1 sent behind it: is one refused?"""
        # One request generates (one sequence per batch). It streams nothing: on a small
        # machine the engine takes most of the CPU, and a fast stream read by this
        # client would slow the relays and the polling below to seconds per step...
        sent = time.monotonic()
        first = asyncio.create_task(one(client, stream=False))
        while await running(client) < 1:
            assert time.monotonic() - sent < 120, "the first request never ran"
            await asyncio.sleep(0.1)
        # ...so of the next QUEUE_LIMIT + 1, sent at once, QUEUE_LIMIT wait for the
        # engine and the last to reach the replica, whichever it is, is refused at once.
        behind = [asyncio.create_task(one(client, stream=True)) for _ in range(QUEUE_LIMIT + 1)]
        await asyncio.wait(behind, return_when=asyncio.FIRST_COMPLETED)
        # Had the first request ended before that answer, one of the others would have
        # taken its place in the batch, and with the queue below the limit a 200 is right.
        held = not first.done()
        print(f"first answer behind it after {time.monotonic() - sent:.2f} s; held: {held}")
        return held, [await first, *await asyncio.gather(*behind)]

    async with httpx.AsyncClient(timeout=300) as client:
        for _ in range(3):
            held, answers = await attempt(client)
            if held:
                break
    assert held, "the first request (2000 tokens) ended before any other was answered"
    statuses = sorted(status for status, _ in answers)
    assert statuses == [200] * (QUEUE_LIMIT + 1) + [429], answers
    error = json.loads(next(text for status, text in answers if status == 429))["error"]
    assert (error["type"], error["code"]) == ("rate_limit_error", "queue_full")
    assert str(QUEUE_LIMIT) in error["message"]
    # The queued requests were not lost (each was answered in full), and service goes on.
    assert _chat(limited_serve, KEYS[0]).status_code == 200


def _engine_processes(app: str) -> list[psutil.Process]:
    """The vLLM engine-core processes under the LLM replicas of application `app`."""
    replicas = [
        p
        for p in psutil.process_iter(["cmdline"])
        if any(f"ServeReplica:{app}:cpu" in part for part in p.info["cmdline"] or ())
    ]
    return [child for replica in replicas for child in replica.children(recursive=True)]


def test_dead_engine_is_replaced_and_service_recovers(limited_serve: str) -> None:
    engines = _engine_processes("tiny-limited")
    assert engines, "no engine process found under the LLM replica"
    for process in engines:
        process.kill()
    # Requests fail with our error shape until Serve has replaced the replica.
    deadline = time.monotonic() + 900
    statuses = []
    while time.monotonic() < deadline:
        response = _chat(limited_serve, KEYS[0])
        statuses.append(response.status_code)
        if response.status_code == 200:
            break
        # 503/500 from the dead engine; 504 when a request waited out the request
        # timeout (120 s in the example) for the replacement replica.
        assert response.status_code in (500, 503, 504), response.text
        assert set(response.json()["error"]) == {"message", "type", "param", "code"}
        time.sleep(5)
    assert statuses[-1] == 200, statuses
    assert {500, 503, 504} & set(statuses), statuses
