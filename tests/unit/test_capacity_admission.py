"""The webhook's verdict on whole objects, and its server configuration (no apiserver)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import kopf
import pytest
from modelfleet_operator.api import v1alpha1
from modelfleet_operator.api.v1alpha1 import ModelSpec
from modelfleet_operator.hub import ShapeLookup, resolve_shape
from modelfleet_operator.model_shape import ModelShape, Origin
from modelfleet_operator.webhook import (
    SKIP_CAPACITY_ANNOTATION,
    WEBHOOK_PATH,
    Review,
    configure_webhook,
)
from modelfleet_operator.webhook import review as webhook_review


def offline(model: ModelSpec) -> ShapeLookup:
    """Shapes without the hub: these tests judge objects, not the network."""
    return resolve_shape(model, fetch=False)


def review(obj: dict[str, Any], old: dict[str, Any] | None = None) -> Review:
    return webhook_review(obj, old, shapes=offline)


def deployment(**engine: Any) -> dict[str, Any]:
    return {
        "apiVersion": v1alpha1.API_VERSION,
        "kind": v1alpha1.KIND,
        "metadata": {"name": "qwen", "namespace": "default"},
        "spec": {
            "model": {"source": "hf://Qwen/Qwen2-7B-Instruct", "servedName": "qwen"},
            "engine": engine,
            "nodePools": [{"name": "l4", "gpu": {"type": "L4", "memoryGiB": 24}}],
        },
    }


def test_a_spec_that_fits_is_admitted_without_warnings() -> None:
    assert review(deployment()) == review(deployment())
    verdict = review(deployment())
    assert (verdict.problems, verdict.warnings) == ([], [])


def test_a_spec_that_does_not_fit_is_refused_with_the_numbers() -> None:
    verdict = review(deployment(maxModelLen=1_048_576))
    assert len(verdict.problems) == 1
    assert "< maxModelLen 1048576" in verdict.problems[0]


def test_flag_and_capacity_problems_are_reported_together() -> None:
    verdict = review(deployment(maxModelLen=1_048_576, extraArgs={"enable-prefix-cache": True}))
    assert len(verdict.problems) == 2
    assert "did you mean 'enable-prefix-caching'?" in verdict.problems[0]


def test_an_unparseable_object_is_refused_with_the_pydantic_message() -> None:
    obj = deployment()
    obj["spec"]["engine"]["maxNumSeqs"] = "many"
    verdict = review(obj)
    assert verdict.problems and "spec.engine.maxNumSeqs" in verdict.problems[0]


def test_what_cannot_be_checked_is_admitted_with_a_warning() -> None:
    obj = deployment()
    obj["spec"]["nodePools"] = [{"name": "cpu"}]
    verdict = review(obj)
    assert verdict.problems == []
    assert verdict.warnings == [
        "capacity not checked: no node pool has GPUs: GPU memory capacity is not checked"
    ]


def test_updates_that_leave_the_spec_alone_are_not_judged() -> None:
    # Admitted under older rules: the operator's own annotation patches must still pass.
    old = deployment(maxModelLen=1_048_576)
    new = copy.deepcopy(old)
    new["metadata"]["annotations"] = {f"{v1alpha1.GROUP}/last-handled-configuration": "{}"}
    assert review(new, old).problems == []
    changed = copy.deepcopy(new)
    changed["spec"]["engine"]["maxNumSeqs"] = 8
    assert review(changed, old).problems


def test_objects_being_deleted_are_not_judged() -> None:
    obj = deployment(maxModelLen=1_048_576)
    obj["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    assert review(obj).problems == []


def test_the_path_is_the_handler_id() -> None:
    # Kopf routes POST <server path>/<handler id> to the handler with that id.
    assert WEBHOOK_PATH == "/validate-modelfleet-io-v1alpha1-modeldeployment"


def test_configure_webhook_serves_tls_from_the_cert_dir(tmp_path: Path) -> None:
    (tmp_path / "tls.crt").write_text("cert")
    (tmp_path / "tls.key").write_text("key")
    settings = kopf.OperatorSettings()
    configure_webhook(settings, 9443, tmp_path, "0.0.0.0")
    server = settings.admission.server
    assert isinstance(server, kopf.WebhookServer)
    assert (server.addr, server.port) == ("0.0.0.0", 9443)
    assert (server.certfile, server.pkeyfile) == (
        str(tmp_path / "tls.crt"),
        str(tmp_path / "tls.key"),
    )
    assert settings.admission.managed is None


def test_configure_webhook_needs_the_certificate(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="--webhook-cert-dir"):
        configure_webhook(kopf.OperatorSettings(), 9443, None, "0.0.0.0")
    with pytest.raises(FileNotFoundError, match=r"tls\.crt, tls\.key not found"):
        configure_webhook(kopf.OperatorSettings(), 9443, tmp_path, "0.0.0.0")


def test_the_capacity_check_can_be_skipped_by_annotation() -> None:
    obj = deployment(maxModelLen=1_048_576)
    refused = review(obj).problems
    assert refused and f'{SKIP_CAPACITY_ANNOTATION}: "true"' in refused[0]
    obj["metadata"]["annotations"] = {SKIP_CAPACITY_ANNOTATION: "true"}
    verdict = review(obj)
    assert verdict.problems == []
    assert verdict.warnings[0].startswith(f"capacity check skipped by {SKIP_CAPACITY_ANNOTATION}")


def test_valid_vllm_serve_flags_are_admitted() -> None:
    args = {
        "tool-call-parser": "hermes",
        "enable-auto-tool-choice": True,
        "chat-template": "/templates/chat.jinja",
        "lora-modules": "sql=/adapters/sql",
    }
    assert review(deployment(extraArgs=args)).problems == []


def test_the_shape_comes_from_the_resolver() -> None:
    # A checkpoint that says it is small fits where the name alone would not.
    small = ModelShape(
        "tiny", 1e8, Origin.CHECKPOINT, layers=4, attention_heads=8, kv_heads=8, head_dim=64
    )
    obj = deployment(maxModelLen=1_048_576)
    verdict = webhook_review(obj, shapes=lambda _model: ShapeLookup(small))
    assert verdict.problems == []
    estimated = review(obj).problems
    assert estimated and estimated[0].startswith("figures estimated from the model's name")


def test_an_unreadable_checkpoint_says_why_the_figures_are_estimates() -> None:
    obj = deployment(maxModelLen=1_048_576)
    why = "could not read the checkpoint: the hub at http://127.0.0.1:1 is unreachable"
    verdict = webhook_review(obj, shapes=lambda model: ShapeLookup(offline(model).shape, why))
    assert verdict.problems and why in verdict.problems[0]
