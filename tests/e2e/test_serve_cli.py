"""`modelfleet serve` as a newcomer meets it: what it prints, where the logs go, and how
it fails.

The command's own lines are few; Ray's and vLLM's go to a log file it names. Start-up
failures found before Ray starts (a taken port, a missing model, a manifest for a
cluster) end in one line and a non-zero exit within seconds.
"""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.serve_fixtures import serve_log_file, serve_output

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "manifests" / "examples"
MODELFLEET = str(Path(sys.executable).with_name("modelfleet"))
# Refusals need no Ray: only the Python start-up, on a machine that may be busy.
QUICK_S = 60.0
MAX_LINES_BEFORE_ENDPOINT = 15


def _serve(*args: str) -> tuple[subprocess.CompletedProcess[str], float]:
    """Run `modelfleet serve ARGS` to its end; the result and how long it took."""
    started = time.monotonic()
    result = subprocess.run(
        [MODELFLEET, "serve", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=QUICK_S * 3,
        check=False,
    )
    return result, time.monotonic() - started


def _one_line(result: subprocess.CompletedProcess[str]) -> str:
    """The single line a failing command printed, asserting it printed no more."""
    lines = (result.stdout + result.stderr).strip().splitlines()
    assert len(lines) == 1, lines
    assert "Traceback" not in lines[0]
    return lines[0]


def test_the_output_is_short_and_the_logs_go_to_the_file_it_names(tiny_cpu_serve: str) -> None:
    output = serve_output(tiny_cpu_serve)
    lines = output.splitlines()
    [endpoint] = [i for i, line in enumerate(lines) if line.startswith("modelfleet: serving ")]
    assert endpoint < MAX_LINES_BEFORE_ENDPOINT, output
    assert f"at {tiny_cpu_serve}/v1" in lines[endpoint]
    # Every line up to the endpoint is ours; then the curl line to paste.
    assert all(line.startswith("modelfleet: ") for line in lines[: endpoint + 1]), output
    assert lines[endpoint + 1].startswith(f"curl -s {tiny_cpu_serve}/v1/chat/completions ")
    assert any(re.search(r"engine ready after \d+", line) for line in lines[:endpoint])
    assert any(line.startswith("modelfleet: Ray started") for line in lines[:endpoint])

    log = serve_log_file(output)
    assert log is not None and log.is_file(), output
    text = log.read_text(errors="replace")
    # Ray's own lines, and vLLM's as Ray forwards them from the replica.
    assert "(ServeController pid=" in text
    assert re.search(r"\(ServeReplica:tiny-cpu:cpu pid=\d+\).*\bINFO\b.*\[\w+\.py:\d+\]", text)
    assert "init engine (profile, create kv cache, warmup model) took" in text
    # None of it reached the terminal.
    assert "(ServeController pid=" not in output


def test_a_taken_port_is_one_line_and_a_quick_failure() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result, took = _serve(str(EXAMPLES / "tiny-cpu.yaml"), "--port", str(port))
    assert result.returncode != 0
    assert took < QUICK_S
    line = _one_line(result)
    assert f"port {port} on 127.0.0.1 is already in use" in line
    assert "--port" in line


def test_a_missing_model_is_one_line_and_a_quick_failure(tmp_path: Path) -> None:
    manifest = yaml.safe_load((EXAMPLES / "tiny-cpu.yaml").read_text())
    manifest["spec"]["model"]["source"] = "file:///nonexistent"
    path = tmp_path / "missing-model.yaml"
    path.write_text(yaml.safe_dump(manifest))
    result, took = _serve(str(path), "--port", "0")
    assert result.returncode != 0
    assert took < QUICK_S
    line = _one_line(result)
    assert "model.source file:///nonexistent" in line
    assert "does not exist on this machine" in line


def test_a_manifest_for_a_cluster_is_refused_in_one_line() -> None:
    example = EXAMPLES / "triton-trtllm.yaml"
    result, took = _serve(str(example), "--port", "0")
    assert result.returncode == 2
    assert took < QUICK_S
    line = _one_line(result)
    assert "needs a cluster" in line and f"kubectl apply -f {example}" in line
