"""Operator settings read from the environment (the CLI flags cover the rest).

Environment variables rather than flags because tests and the Helm chart tune them
without changing the command line, and the drift interval is needed when the Kopf
handlers are registered, before any flag parsing could reach them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


def _seconds(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    value = float(raw)
    if value <= 0:
        raise ValueError(f"{name} must be a positive number of seconds, not {raw!r}")
    return value


@dataclass(frozen=True)
class Settings:
    """Timings and addresses of the operator."""

    drift_interval: float
    """Seconds between drift checks of each ModelDeployment (its children re-applied)."""
    retry_delay: float
    """Seconds before retrying while waiting on others (KubeRay CRDs, a name conflict)."""
    bind_address: str
    """Address the health and metrics endpoints listen on."""
    adapter_poll: float = 5.0
    """Seconds between reads of the front door while the replicas load adapters."""

    @classmethod
    def from_env(cls) -> Settings:
        """MODELFLEET_DRIFT_INTERVAL_SECONDS (60), MODELFLEET_RETRY_SECONDS (30),
        MODELFLEET_OPERATOR_BIND_ADDRESS (0.0.0.0: probes come from the kubelet),
        MODELFLEET_ADAPTER_POLL_SECONDS (5)."""
        return cls(
            drift_interval=_seconds("MODELFLEET_DRIFT_INTERVAL_SECONDS", 60.0),
            retry_delay=_seconds("MODELFLEET_RETRY_SECONDS", 30.0),
            bind_address=os.environ.get("MODELFLEET_OPERATOR_BIND_ADDRESS") or "0.0.0.0",
            adapter_poll=_seconds("MODELFLEET_ADAPTER_POLL_SECONDS", 5.0),
        )
