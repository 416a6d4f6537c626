"""The admission webhook against a real apiserver: `kubectl apply` is refused or admitted.

The webhook is served by `modelfleet operator --webhook-port` in a subprocess, over
TLS with a certificate from a throwaway CA, and registered with a
ValidatingWebhookConfiguration that points the apiserver at
https://127.0.0.1:<port>/<path>, the same path the chart uses, with the chart's
failurePolicy (Fail) and timeout. The configuration only selects this test's
namespace, so the other tests sharing the control plane never meet it, and it is
deleted at the end even when a test fails.

The operator reads models' shapes from a stand-in hub on 127.0.0.1 (HF_ENDPOINT):
like huggingface.co it refuses gated meta-llama models without a token (so their
figures are estimated from the name), serves one public model's config.json and
parameter count, and answers one model too slowly.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.cluster.controlplane import CertificateAuthority, ControlPlane
from tests.helpers import free_port

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
CRD = ROOT / "manifests" / "crds" / "modeldeployments.modelfleet.io.yaml"
CHART_VALUES = ROOT / "helm" / "modelfleet" / "values.yaml"
NAMESPACE = "mf-webhook-e2e"
TIMEOUT = 90.0


# A public 70B-class model on the stand-in hub: Llama 3 70B's config.json, parameters
# as the hub's API reports them.
PUBLIC_REPO = "acme/big-model"
PUBLIC_CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "hidden_size": 8192,
    "intermediate_size": 28672,
    "num_hidden_layers": 80,
    "num_attention_heads": 64,
    "num_key_value_heads": 8,
    "vocab_size": 128256,
    "torch_dtype": "bfloat16",
}
PUBLIC_PARAMETERS = 70_553_706_496
# A model whose hub answers only after the operator's hub timeout (4 s).
SLOW_REPO = "acme/slow-70b"
SLOW_SECONDS = 6.0


class StandInHub(BaseHTTPRequestHandler):
    """Answers like huggingface.co for the few repositories these tests use."""

    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        if SLOW_REPO in self.path:
            time.sleep(SLOW_SECONDS)
        if "meta-llama/" in self.path:
            return self._send(401, {"error": "Access to model meta-llama is restricted."})
        if self.path == f"/api/models/{PUBLIC_REPO}":
            info = {"id": PUBLIC_REPO, "safetensors": {"parameters": {"BF16": PUBLIC_PARAMETERS}}}
            return self._send(200, info)
        if self.path == f"/{PUBLIC_REPO}/resolve/main/config.json":
            return self._send(200, PUBLIC_CONFIG)
        return self._send(404, {"error": "Repository not found"})

    def _send(self, code: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture(scope="module")
def hub() -> Iterator[str]:
    """The stand-in hub's base URL (for HF_ENDPOINT)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), StandInHub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


# Kopf with only the webhook handler registered (importing the module registers it),
# serving on 127.0.0.1 with the certificate pair in the given directory.


CHART_WEBHOOK: dict[str, Any] = yaml.safe_load(CHART_VALUES.read_text())["webhook"]


def chart_webhook_path() -> str:
    path: str = CHART_WEBHOOK["path"]
    return path


class Webhook:
    """The webhook server in a subprocess, and the configuration that routes to it."""

    def __init__(self, cp: ControlPlane, workdir: Path, hub: str) -> None:
        self.cp = cp
        self.workdir = workdir
        self.hub = hub
        self.log = workdir / "webhook.log"
        self.name = f"modelfleet-e2e-{uuid.uuid4().hex[:8]}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        ca = CertificateAuthority()
        pair = ca.serving(["localhost"], ["127.0.0.1"])
        cert_dir = self.workdir / "certs"
        cert_dir.mkdir()
        (cert_dir / "tls.crt").write_bytes(pair.cert)
        (cert_dir / "tls.key").write_bytes(pair.key)
        port = free_port()
        env = {
            **os.environ,
            "KUBECONFIG": str(self.cp.kubeconfig),
            "MODELFLEET_OPERATOR_BIND_ADDRESS": "127.0.0.1",
            "HF_ENDPOINT": self.hub,
        }
        env.pop("HF_TOKEN", None)
        # The operator as the chart runs it, watching only this test's namespace.
        command = [
            str(Path(sys.executable).with_name("modelfleet")),
            "operator",
            f"--namespace={NAMESPACE}",
            f"--health-port={free_port()}",
            f"--metrics-port={free_port()}",
            f"--webhook-port={port}",
            f"--webhook-cert-dir={cert_dir}",
        ]
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.cp.kubectl_run("apply", "-f", "-", input=json.dumps(self._configuration(ca, port)))

    def _configuration(self, ca: CertificateAuthority, port: int) -> dict[str, Any]:
        """Like the chart's, with a URL instead of a Service and this namespace only."""
        return {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingWebhookConfiguration",
            "metadata": {"name": self.name},
            "webhooks": [
                {
                    "name": "modeldeployments.modelfleet.io",
                    "admissionReviewVersions": ["v1"],
                    "sideEffects": "None",
                    "failurePolicy": CHART_WEBHOOK["failurePolicy"],
                    "timeoutSeconds": CHART_WEBHOOK["timeoutSeconds"],
                    "clientConfig": {
                        "url": f"https://127.0.0.1:{port}{chart_webhook_path()}",
                        "caBundle": base64.b64encode(ca.pair.cert).decode(),
                    },
                    "rules": [
                        {
                            "apiGroups": ["modelfleet.io"],
                            "apiVersions": ["v1alpha1"],
                            "operations": ["CREATE", "UPDATE"],
                            "resources": ["modeldeployments"],
                            "scope": "Namespaced",
                        }
                    ],
                    "namespaceSelector": {
                        "matchLabels": {"kubernetes.io/metadata.name": NAMESPACE}
                    },
                }
            ],
        }

    def stop(self) -> None:
        self.cp.kubectl_run(
            "delete", "validatingwebhookconfiguration", self.name, "--ignore-not-found", check=False
        )
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)

    def tail(self, lines: int = 40) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


def model_deployment(
    name: str, source: str = "hf://meta-llama/Meta-Llama-3-70B-Instruct", **engine: Any
) -> dict[str, Any]:
    """A 70B deployment on one pool of 80 GiB GPUs (Llama 3 70B unless `source` says)."""
    return {
        "apiVersion": "modelfleet.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "model": {"source": source, "servedName": "llama3-70b"},
            "engine": {"maxModelLen": 8192, **engine},
            "nodePools": [{"name": "h100", "gpu": {"type": "H100", "memoryGiB": 80}}],
        },
    }


def apply(cp: ControlPlane, obj: dict[str, Any], *extra: str) -> subprocess.CompletedProcess[str]:
    return cp.kubectl_run("apply", "-f", "-", *extra, input=json.dumps(obj), check=False)


@pytest.fixture(scope="module")
def webhook(
    control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory, hub: str
) -> Iterator[None]:
    """The CRD, this test's namespace, and the webhook serving it, answering."""
    cp = control_plane
    cp.kubectl_run(
        "apply",
        "--server-side",
        "--force-conflicts",
        "--field-manager=modelfleet-tests",
        f"--filename={CRD}",
    )
    cp.kubectl_run(
        "wait", "--for=condition=Established", "--timeout=60s", "crd/modeldeployments.modelfleet.io"
    )
    cp.kubectl_run("create", "namespace", NAMESPACE)
    server = Webhook(cp, tmp_path_factory.mktemp("webhook"), hub)
    try:
        server.start()
        # The webhook answers once Kopf has started and the apiserver has seen the
        # configuration: a server-side dry run of a bad object is then refused by it.
        probe = model_deployment("probe", tensorParallelSize=1)
        deadline = time.monotonic() + TIMEOUT
        while "denied the request" not in apply(cp, probe, "--dry-run=server").stderr:
            assert server.process is not None
            if server.process.poll() is not None:
                raise AssertionError(f"the webhook server exited:\n{server.tail()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"the webhook never answered:\n{server.tail()}")
            time.sleep(1)
        yield
    finally:
        server.stop()
        cp.kubectl_run("delete", "namespace", NAMESPACE, "--wait=false", check=False)


@pytest.mark.usefixtures("webhook")
def test_a_model_that_does_not_fit_is_refused_with_the_numbers(control_plane: ControlPlane) -> None:
    result = apply(control_plane, model_deployment("too-big"))
    assert result.returncode != 0
    message = result.stderr
    assert 'admission webhook "modeldeployments.modelfleet.io" denied the request' in message
    assert "Llama 3 70B needs 131.5 GiB of weights per GPU" in message
    assert "pool h100 has 80 GiB × 0.9 = 72.0 GiB usable" in message
    assert "raise tensorParallelSize to 2" in message
    # The hub refused the gated model without a token: the figures say they are guesses.
    assert "figures estimated from the model's name" in message
    assert "refused access (HTTP 401" in message
    assert (
        control_plane.kubectl_run(
            f"--namespace={NAMESPACE}", "get", "md", "too-big", "--ignore-not-found"
        ).stdout.strip()
        == ""
    )


@pytest.mark.usefixtures("webhook")
def test_an_unknown_engine_flag_is_refused_with_a_suggestion(control_plane: ControlPlane) -> None:
    obj = model_deployment("typo", tensorParallelSize=4, extraArgs={"enable-prefix-cache": True})
    result = apply(control_plane, obj)
    assert result.returncode != 0
    assert (
        "engine.extraArgs 'enable-prefix-cache' is not a known vllm flag; "
        "did you mean 'enable-prefix-caching'?"
    ) in result.stderr


@pytest.mark.usefixtures("webhook")
def test_a_good_model_is_admitted_and_a_bad_update_refused(control_plane: ControlPlane) -> None:
    good = model_deployment("fits", tensorParallelSize=4, extraArgs={"enable-prefix-caching": True})
    result = apply(control_plane, good)
    assert result.returncode == 0, result.stderr
    assert "warning" not in result.stderr.lower()
    # An update that no longer fits is refused like a create, and the object stays as it was.
    result = apply(control_plane, model_deployment("fits", tensorParallelSize=1))
    assert result.returncode != 0
    assert "raise tensorParallelSize to 2" in result.stderr
    live = json.loads(
        control_plane.kubectl_run(
            f"--namespace={NAMESPACE}", "get", "md", "fits", "-o", "json"
        ).stdout
    )
    assert live["spec"]["engine"]["tensorParallelSize"] == 4


@pytest.mark.usefixtures("webhook")
def test_what_cannot_be_checked_is_admitted_with_a_warning(control_plane: ControlPlane) -> None:
    obj = model_deployment("cpu-only")
    obj["spec"]["nodePools"] = [{"name": "cpu"}]
    result = apply(control_plane, obj)
    assert result.returncode == 0, result.stderr
    assert "Warning: capacity not checked: no node pool has GPUs" in result.stderr


@pytest.mark.usefixtures("webhook")
def test_valid_vllm_serve_flags_are_admitted(control_plane: ControlPlane) -> None:
    extra = {
        "tool-call-parser": "llama3_json",
        "enable-auto-tool-choice": True,
        "chat-template": "/templates/llama3.jinja",
    }
    result = apply(control_plane, model_deployment("tools", tensorParallelSize=4, extraArgs=extra))
    assert result.returncode == 0, result.stderr


@pytest.mark.usefixtures("webhook")
def test_a_readable_checkpoint_gives_exact_figures(control_plane: ControlPlane) -> None:
    result = apply(control_plane, model_deployment("public", source=f"hf://{PUBLIC_REPO}"))
    assert result.returncode != 0
    # 70,553,706,496 parameters × 2 bytes, from the hub's API: no "estimated" about it.
    assert f"{PUBLIC_REPO} needs 131.4 GiB of weights per GPU" in result.stderr
    assert "estimated" not in result.stderr


@pytest.mark.usefixtures("webhook")
def test_a_slow_hub_falls_back_within_the_webhooks_timeout(control_plane: ControlPlane) -> None:
    started = time.monotonic()
    result = apply(control_plane, model_deployment("slow", source=f"hf://{SLOW_REPO}"))
    took = time.monotonic() - started
    # Answered by the webhook (not timed out by the apiserver), from the name.
    assert result.returncode != 0
    assert 'admission webhook "modeldeployments.modelfleet.io" denied the request' in (
        result.stderr
    )
    assert "did not answer in time" in result.stderr
    # The served name (llama3-70b) names a model the table knows.
    assert "Llama 3 70B needs 131.5 GiB" in result.stderr
    assert took < CHART_WEBHOOK["timeoutSeconds"]
