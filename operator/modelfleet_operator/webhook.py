"""The validating admission webhook for ModelDeployments, served by the operator.

The apiserver's schema and CEL rules cannot know whether a model fits its GPUs or
whether `engine.extraArgs` names real engine flags; this webhook refuses such specs at
`kubectl apply`, with a message that gives the numbers and the fix, instead of letting
them fail minutes later on a GPU node. The model's shape comes from its checkpoint
where the operator can read it (`hub.py`, within a few seconds, cached), else from its
name, and the message says which. What the check cannot judge (CPU pools, unknown
models) is admitted with a warning that `kubectl` prints. The reconcile applies the
same gate (`capacity.gate`), so the webhook only moves the refusal to `kubectl apply`.

Importing this module registers the handler with Kopf, and Kopf refuses to start with
admission handlers but no webhook server, so `run_operator` imports it only when a
webhook port is configured (see `configure_webhook`). The chart owns the
ValidatingWebhookConfiguration; Kopf only serves the endpoint. Kopf routes a request
to the handler whose id is the last part of the URL path, so the chart's path is
`WEBHOOK_PATH`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kopf

from modelfleet_operator.api import v1alpha1
from modelfleet_operator.api.v1alpha1 import ModelSpec

# Re-exported: the annotation that deploys a spec against the capacity estimate.
from modelfleet_operator.capacity import SKIP_CAPACITY_ANNOTATION as SKIP_CAPACITY_ANNOTATION
from modelfleet_operator.capacity import capacity_fit, gate
from modelfleet_operator.checks import check
from modelfleet_operator.hub import ShapeCache, ShapeLookup

WEBHOOK_ID = "validate-modelfleet-io-v1alpha1-modeldeployment"
WEBHOOK_PATH = f"/{WEBHOOK_ID}"

# The Secret the chart mounts holds a kubernetes.io/tls pair under these names.
CERT_FILE = "tls.crt"
KEY_FILE = "tls.key"

# Model shapes read for admission, cached across requests (hub.ShapeCache): the
# checkpoint is read once per model, within the webhook's timeout.
SHAPES = ShapeCache()


@dataclass(frozen=True)
class Review:
    """The verdict on one object: problems refuse it, warnings only inform."""

    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def review(
    obj: Mapping[str, Any],
    old: Mapping[str, Any] | None = None,
    *,
    shapes: Callable[[ModelSpec], ShapeLookup] = SHAPES,
) -> Review:
    """Judge a ModelDeployment as the apiserver sends it for CREATE or UPDATE.

    An update that leaves the spec alone (labels, annotations, finalizers, Kopf's own
    bookkeeping) is admitted unjudged, as is an object being deleted:
    refusing those would stall the operator and deletion of a spec admitted under
    older rules. `shapes` finds the model's shape (the checkpoint, read through the
    hub with a short timeout, else the name).
    """
    if (obj.get("metadata") or {}).get("deletionTimestamp"):
        return Review()
    if old is not None and old.get("spec") == obj.get("spec"):
        return Review()
    checked = check(dict(obj))
    if checked.md is None:
        # Not parseable: the pydantic messages are what the user needs to see.
        return Review(problems=checked.problems)
    spec = checked.md.spec
    problems = list(checked.problems)
    if any(pool.gpu is not None for pool in spec.node_pools):
        lookup = shapes(spec.model)
        fit = capacity_fit(spec, lookup.shape, note=lookup.note)
    else:
        fit = capacity_fit(spec)
    verdict = gate(fit, (obj.get("metadata") or {}).get("annotations"))
    if verdict.refused is not None:
        problems.append(verdict.refused)
    warnings = [verdict.warning] if verdict.warning else []
    return Review(problems=problems, warnings=warnings)


@kopf.on.validate(
    v1alpha1.GROUP,
    v1alpha1.VERSION,
    v1alpha1.PLURAL,
    id=WEBHOOK_ID,
    operations=["CREATE", "UPDATE"],
)
def validate_model_deployment(body: kopf.Body, warnings: list[str], **kwargs: Any) -> None:
    """Refuse a ModelDeployment that cannot run, with every problem and its fix."""
    # `old` is not in Kopf's typed webhook signature, although Kopf passes it.
    old: kopf.Body | None = kwargs.get("old")
    verdict = review(body, old)
    warnings.extend(verdict.warnings)
    if verdict.problems:
        # 422: the object is well-formed JSON but its content cannot be served.
        raise kopf.AdmissionError("; ".join(verdict.problems), code=422)


def webhook_server(port: int, cert_dir: Path, addr: str) -> kopf.WebhookServer:
    """Kopf's HTTPS server for the webhook, with the certificate pair from `cert_dir`.

    Kopf re-reads the files when they change, so a renewed certificate is served
    without a restart. No `host` is given: it only names the URL of webhook
    configurations Kopf manages itself, and the chart manages ours.
    """
    missing = [name for name in (CERT_FILE, KEY_FILE) if not (cert_dir / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"webhook certificate files {', '.join(missing)} not found in {cert_dir}: "
            "mount the webhook's TLS Secret there (the chart does) or pass another "
            "--webhook-cert-dir"
        )
    return kopf.WebhookServer(
        addr=addr,
        port=port,
        certfile=str(cert_dir / CERT_FILE),
        pkeyfile=str(cert_dir / KEY_FILE),
    )


def configure_webhook(
    settings: kopf.OperatorSettings, port: int, cert_dir: Path | None, addr: str
) -> None:
    """Serve the admission webhook on `addr:port` with TLS from `cert_dir`.

    The apiserver calls webhooks over HTTPS only, so a port without a certificate
    directory is a configuration error, reported before anything starts.
    """
    if cert_dir is None:
        raise ValueError("--webhook-port needs --webhook-cert-dir (holding tls.crt and tls.key)")
    settings.admission.server = webhook_server(port, cert_dir, addr)
    # The chart owns the ValidatingWebhookConfiguration; Kopf must not write its own.
    settings.admission.managed = None
