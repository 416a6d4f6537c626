"""Ray Serve adapter for the queue-depth autoscaling policy in `autoscaling`.

Three pieces meet here:

* Replicas report their engine's waiting queue to the Serve controller through Ray
  Serve's custom autoscaling metrics: an LLM deployment class defines
  `record_autoscaling_stats()` and returns `queue_depth_stats(waiting)`.
* `autoscaling_config_for(pool, config)` is the `autoscaling_config` of one pool's
  LLM deployment. It hands the timing to our policy (Ray's own delays are zero, its
  metric push and record intervals are short) and names `QueueDepthPolicy`, the
  deployment-scoped policy, which works wherever the app runs.
* `application_policy_for(config)` is the application-level
  `autoscaling_policy` of a Serve config (serveConfigV2, `serve deploy`). It names
  `PreferenceOrderedPolicy`, which sees every pool at once and adds the ordering
  across pools (scale up the preferred pool first, scale down the least preferred
  first). Ray gives it precedence over the deployment-level policies and only
  accepts it from a config file, not from `serve.run`.

Ray wraps any policy so that its own delays and scaling factors still apply; with the
zero delays and unit factors set here that wrapper passes our decision through, and
only clips it to the deployment's bounds. The module imports nothing from Ray at run
time: the controller hands in `AutoscalingContext` objects and takes back plain ints
and dicts, which keeps the cloudpickled policy small.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from modelfleet_serving.autoscaling import (
    Decision,
    PoolObservation,
    ScalingParams,
    ScalingState,
    decide,
    decide_pools,
)
from modelfleet_serving.config import AutoscalingConfig, PoolConfig, ServingConfig

if TYPE_CHECKING:
    from ray.serve._private.common import DeploymentID
    from ray.serve.config import AutoscalingContext

# The Serve controller's logger: our reasons land next to its "Upscaling ..." lines.
logger = logging.getLogger("ray.serve")

# The custom autoscaling metric each LLM replica reports: requests waiting in its engine.
QUEUE_DEPTH_METRIC = "modelfleet_queue_depth"

# Key of our state inside Ray's per-deployment policy state, which Ray shares with the
# bookkeeping of its own delay logic.
_STATE_KEY = "modelfleet"

# How often replicas record the metric (Ray records every 0.2 x look_back_period_s) and
# push it to the controller (`metrics_interval_s`). Ray's defaults (6 s and 10 s) would
# add up to 16 s before the policy sees a step; these keep it to about 2 s.
METRICS_LOOK_BACK_S = 5.0
METRICS_PUSH_INTERVAL_S = 1.0

_MODULE = __name__


def queue_depth_stats(waiting_requests: float) -> dict[str, float]:
    """What an LLM replica's `record_autoscaling_stats()` returns.

    Args:
        waiting_requests: requests the replica's engine holds but does not yet run
            (vLLM's waiting queue; for Triton, requests not yet scheduled).
    """
    return {QUEUE_DEPTH_METRIC: float(waiting_requests)}


def autoscaling_config_for(pool: PoolConfig, config: ServingConfig) -> dict[str, Any]:
    """The Serve `autoscaling_config` for `pool`'s LLM deployment.

    Returns a plain dict, usable in `@serve.deployment(autoscaling_config=...)`,
    `.options(...)` and a Serve config file alike.
    """
    scaling = config.autoscaling
    return {
        "min_replicas": pool.min_replicas,
        # A pool allowed to scale to zero still starts with one replica, so the first
        # request does not wait for an engine to load.
        "initial_replicas": max(pool.min_replicas, 1),
        "max_replicas": pool.max_replicas,
        # Only Ray's default policy and its target gauge read this; keeping it at our
        # target makes Ray's dashboard show the number the policy aims for.
        "target_ongoing_requests": scaling.target_queue_depth,
        # Our policy owns the timing; Ray's delay logic runs after it and must not
        # delay a second time.
        "upscale_delay_s": 0.0,
        "downscale_delay_s": 0.0,
        "upscaling_factor": 1.0,
        "downscaling_factor": 1.0,
        "look_back_period_s": METRICS_LOOK_BACK_S,
        "metrics_interval_s": METRICS_PUSH_INTERVAL_S,
        "policy": {
            "policy_function": f"{_MODULE}:{QueueDepthPolicy.__name__}",
            "policy_kwargs": _policy_kwargs(scaling),
        },
    }


def application_policy_for(config: ServingConfig) -> dict[str, Any]:
    """The application-level `autoscaling_policy` of the Serve config.

    `app.build_app` names each pool's LLM deployment after the pool, so the pool names
    in preference order are the deployment names the policy orders.
    """
    preference = [pool.name for pool in config.pools_by_preference()]
    return {
        "policy_function": f"{_MODULE}:{PreferenceOrderedPolicy.__name__}",
        "policy_kwargs": {**_policy_kwargs(config.autoscaling), "preference": preference},
    }


def _policy_kwargs(scaling: AutoscalingConfig) -> dict[str, float]:
    return {
        "target_queue_depth": scaling.target_queue_depth,
        "upscale_delay_s": scaling.upscale_delay_s,
        "downscale_delay_s": scaling.downscale_delay_s,
    }


def queue_depth(ctx: AutoscalingContext) -> float:
    """Requests waiting for one deployment: in its engines and in front of them.

    Each running replica contributes the latest value it reported; a replica that
    has not reported yet (it is still loading) counts as an empty queue. Requests
    queued at handles have not reached any engine yet, so they are waiting too.
    """
    reported = (ctx.raw_metrics or {}).get(QUEUE_DEPTH_METRIC, {})
    in_engines = sum(series[-1].value for series in reported.values() if series)
    return float(in_engines) + float(ctx.total_queued_requests or 0.0)


class _Policy:
    """Settings shared by both policy classes, as Ray passes them: `policy_kwargs`."""

    def __init__(
        self, *, target_queue_depth: float, upscale_delay_s: float, downscale_delay_s: float
    ) -> None:
        self._target_queue_depth = target_queue_depth
        self._upscale_delay_s = upscale_delay_s
        self._downscale_delay_s = downscale_delay_s

    def _observe(self, ctx: AutoscalingContext) -> PoolObservation:
        params = ScalingParams(
            target_queue_depth=self._target_queue_depth,
            upscale_delay_s=self._upscale_delay_s,
            downscale_delay_s=self._downscale_delay_s,
            min_replicas=ctx.capacity_adjusted_min_replicas,
            max_replicas=ctx.capacity_adjusted_max_replicas,
        )
        return PoolObservation(
            params=params,
            state=ScalingState.from_dict(ctx.policy_state.get(_STATE_KEY)),
            queue_depth=queue_depth(ctx),
            replicas=ctx.target_num_replicas,
            running=ctx.current_num_replicas,
        )


def _log_change(ctx: AutoscalingContext, decision: Decision) -> None:
    if decision.replicas != ctx.target_num_replicas:
        logger.info(
            "modelfleet autoscaling: %s %d -> %d replicas (%s)",
            ctx.deployment_name,
            ctx.target_num_replicas,
            decision.replicas,
            decision.reason,
        )


def _now(ctx: AutoscalingContext) -> float:
    # The controller fills current_time; the fallback only serves hand-built contexts.
    return ctx.current_time if ctx.current_time is not None else time.time()


class QueueDepthPolicy(_Policy):
    """Deployment-scoped Serve policy: one pool, scaled on its own queue depth."""

    def __call__(self, ctx: AutoscalingContext) -> tuple[int, dict[str, Any]]:
        """Ray Serve's custom policy call: the replica target and the state to keep."""
        pool = self._observe(ctx)
        decision = decide(
            pool.params,
            pool.state,
            now=_now(ctx),
            queue_depth=pool.queue_depth,
            replicas=pool.replicas,
            running=pool.running,
        )
        _log_change(ctx, decision)
        return decision.replicas, {_STATE_KEY: decision.state.to_dict()}


class PreferenceOrderedPolicy(_Policy):
    """Application-scoped Serve policy: every pool of the model, in preference order.

    Deployments not named in `preference` (the ingress, should it autoscale) get no
    decision, which leaves them to Ray.
    """

    def __init__(
        self,
        *,
        target_queue_depth: float,
        upscale_delay_s: float,
        downscale_delay_s: float,
        preference: list[str],
    ) -> None:
        super().__init__(
            target_queue_depth=target_queue_depth,
            upscale_delay_s=upscale_delay_s,
            downscale_delay_s=downscale_delay_s,
        )
        self._preference = list(preference)

    def __call__(
        self, contexts: dict[DeploymentID, AutoscalingContext]
    ) -> tuple[dict[DeploymentID, int | float], dict[DeploymentID, dict[Any, Any]] | None]:
        """Ray Serve's application policy call, keyed by Serve `DeploymentID`."""
        by_name = {ctx.deployment_name: dep_id for dep_id, ctx in contexts.items()}
        ordered = [by_name[name] for name in self._preference if name in by_name]
        if not ordered:
            return {}, {}
        now = _now(contexts[ordered[0]])
        observations = [self._observe(contexts[dep_id]) for dep_id in ordered]
        decisions = decide_pools(observations, now=now)
        for dep_id, decision in zip(ordered, decisions, strict=True):
            _log_change(contexts[dep_id], decision)
        return (
            {dep_id: d.replicas for dep_id, d in zip(ordered, decisions, strict=True)},
            {
                dep_id: {_STATE_KEY: d.state.to_dict()}
                for dep_id, d in zip(ordered, decisions, strict=True)
            },
        )
