"""Reading a ModelDeployment's front door: `GET /health` on its OpenAI Service.

The operator asks the front door rather than Ray which adapters each LLM replica has
loaded: the front door is where requests are routed, so what it reports is what can be
answered. The Service's port is open to every pod (see render.network_policy) and
`/health` needs no API key, so this works wherever the operator runs inside the
cluster. Run outside it (`modelfleet operator` on a workstation), the Service's name
does not resolve: it is not looked up, and the status says the adapters could not be
checked.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import httpx

from modelfleet_operator.render import SERVE_PORT, openai_service_name
from modelfleet_operator.status import FrontDoorHealth

TIMEOUT_S = 5.0


def health_url(namespace: str, name: str) -> str:
    """The front door's `/health` as pods of the cluster reach it."""
    return f"http://{openai_service_name(name)}.{namespace}.svc:{SERVE_PORT}/health"


def read_health(
    namespace: str,
    name: str,
    *,
    get: Callable[..., httpx.Response] = httpx.get,
    in_cluster: bool | None = None,
) -> FrontDoorHealth:
    """What the front door of ModelDeployment `namespace/name` reports, or why it did
    not (`get` is httpx's, or a stand-in in tests).

    Outside a cluster (no KUBERNETES_SERVICE_HOST, which the kubelet sets in every
    pod) the Service's name would go to the machine's resolver, so it is not looked up.
    """
    if in_cluster is None:
        in_cluster = bool(os.environ.get("KUBERNETES_SERVICE_HOST"))
    if not in_cluster:
        return FrontDoorHealth(
            error="the operator runs outside the cluster (no KUBERNETES_SERVICE_HOST), "
            f"where {openai_service_name(name)}.{namespace}.svc does not resolve"
        )
    url = health_url(namespace, name)
    try:
        answer = get(url, timeout=TIMEOUT_S)
        answer.raise_for_status()
        replicas: Any = answer.json()["replicas"]
    except httpx.HTTPError as error:
        return FrontDoorHealth(error=f"GET {url}: {str(error) or type(error).__name__}")
    except (ValueError, KeyError, TypeError) as error:
        return FrontDoorHealth(error=f"GET {url}: not a modelfleet health answer ({error})")
    if not isinstance(replicas, list):
        return FrontDoorHealth(error=f"GET {url}: 'replicas' is not a list")
    return FrontDoorHealth(replicas=tuple(r for r in replicas if isinstance(r, dict)))
