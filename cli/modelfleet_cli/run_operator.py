"""`modelfleet operator`: run the Kopf operator that reconciles ModelDeployments."""

from __future__ import annotations

from pathlib import Path

import kopf
from modelfleet_operator import metrics
from modelfleet_operator.kube import Kube, connect
from modelfleet_operator.reconcile import Context
from modelfleet_operator.render import DEFAULT_IMAGE


def run_operator(
    namespace: list[str] | None,
    health_port: int,
    metrics_port: int,
    image: str | None,
    webhook_port: int | None = None,
    webhook_cert_dir: Path | None = None,
) -> int:
    """Run until interrupted; watch `namespace` (repeatable) or the whole cluster.

    Standalone (no Kopf peering): one replica runs at a time, as the Deployment in
    the chart has it, and a restarted operator resumes every object it finds.
    With `webhook_port` it also serves the validating admission webhook over HTTPS
    with the certificate in `webhook_cert_dir` (the chart registers it).
    """
    # Imported here: importing registers the handlers and reads the settings.
    from modelfleet_operator import handlers

    settings = handlers.SETTINGS
    kopf.configure(verbose=False)
    metrics.serve(metrics_port, settings.bind_address)
    context = Context(kube=Kube(connect()), image=image or DEFAULT_IMAGE, settings=settings)
    kopf_settings = kopf.OperatorSettings()
    if webhook_port is not None:
        # Imported only here: importing registers the admission handler, and Kopf
        # refuses to start with admission handlers but no webhook server.
        from modelfleet_operator import webhook

        webhook.configure_webhook(
            kopf_settings, webhook_port, webhook_cert_dir, settings.bind_address
        )
    kopf.run(
        settings=kopf_settings,
        standalone=True,
        clusterwide=not namespace,
        namespaces=namespace or (),
        liveness_endpoint=f"http://{settings.bind_address}:{health_port}/healthz",
        memo=context,
    )
    return 0
