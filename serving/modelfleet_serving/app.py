"""The Ray Serve application: a front door and one LLM deployment per node pool.

    client ─HTTP─▶ OpenAIIngress (frontdoor.py) ─HTTP─▶ LLMServer "<pool>" × replicas
                                                         (replica.py, replica_http.py)

What runs where lives in its own module, as Ray Serve LLM keeps them apart: the front
door in `frontdoor.py`, the LLM replica in `replica.py` (its HTTP API in
`replica_http.py`), and here only the builder that binds them, with the Serve options
of each deployment. See docs/data-plane.md for the path a request takes.

`app_builder` is the `import_path` target of the Serve config
(`config.application_config`)
that both the operator's RayService and `modelfleet serve` deploy: Serve builds the
application from it on the cluster, and, as it derives the deployments' versions from
that config, a change of the LoRA adapters alone (the LLM deployments' `user_config`)
reconfigures the running replicas instead of replacing them.
"""

from __future__ import annotations

from typing import Any

from ray import serve

from modelfleet_serving.autoscaling_ray import autoscaling_config_for
from modelfleet_serving.config import ServingConfig
from modelfleet_serving.frontdoor import INGRESS_NAME, OpenAIIngress
from modelfleet_serving.replica import LLMServer

__all__ = ["INGRESS_NAME", "LLMServer", "OpenAIIngress", "app_builder", "build_app"]

# CPU reserved by the front door: it mostly waits on I/O, and a laptop's local Ray must
# still fit the LLM replicas next to it.
INGRESS_NUM_CPUS = 0.1
# Serve handle calls an LLM replica takes at once: only health probes and autoscaling
# stats go through Serve now; requests come over the replica's own HTTP API.
LLM_MAX_ONGOING_REQUESTS = 16


def build_app(config: ServingConfig) -> serve.Application:
    """The Serve application for `config`: the front door bound to one LLM deployment
    per pool."""
    data = config.app_args()
    pools = []
    for pool in config.pools:
        actor_options: dict[str, Any] = {"num_cpus": pool.num_cpus, "num_gpus": pool.num_gpus}
        if pool.resources:
            actor_options["resources"] = dict(pool.resources)
        options: dict[str, Any] = {}
        if config.lora_enabled:
            # Adapters come and go through reconfigure(), not a new replica.
            options["user_config"] = config.adapters_user_config()
        pools.append(
            serve.deployment(
                name=pool.name,
                ray_actor_options=actor_options,
                max_ongoing_requests=LLM_MAX_ONGOING_REQUESTS,
                # Scaled on the engine's waiting queue by our policy, not on Serve's
                # count of ongoing requests (which no longer sees the traffic).
                autoscaling_config=autoscaling_config_for(pool, config),
                health_check_period_s=10,
                # A busy engine on a loaded CPU can be slow to answer its probe.
                health_check_timeout_s=30,
                graceful_shutdown_timeout_s=30,
                logging_config={"enable_access_log": False},
                **options,
            )(LLMServer).bind(data, pool.name)
        )
    ingress = serve.deployment(
        name=INGRESS_NAME,
        ray_actor_options={"num_cpus": INGRESS_NUM_CPUS},
        # The front door holds no queue of its own: requests wait in the engines,
        # whose replicas refuse (429) past `maxQueuedRequests`.
        max_ongoing_requests=max(config.max_queued_requests * 4, 1024),
        logging_config={"enable_access_log": False},
    )(OpenAIIngress)
    app: serve.Application = ingress.bind(data, *pools)
    return app


def app_builder(args: dict[str, Any]) -> serve.Application:
    """Serve application builder for a RayService's `import_path`: `args["config"]` is
    a `ServingConfig` as JSON."""
    return build_app(ServingConfig.model_validate(args["config"]))
