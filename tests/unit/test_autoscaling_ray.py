"""The Ray Serve adapter of the queue-depth policy, run through Ray's own policy wrappers,
and the replay simulator's figures against the policy's goals: at least twice as quick to
react as Ray Serve's default, at most 10 % more replica-seconds, no reversal on a plateau."""

from __future__ import annotations

from typing import Any

import pytest
from modelfleet_serving.autoscaling_ray import (
    QUEUE_DEPTH_METRIC,
    PreferenceOrderedPolicy,
    QueueDepthPolicy,
    application_policy_for,
    autoscaling_config_for,
    queue_depth,
    queue_depth_stats,
)
from modelfleet_serving.config import (
    AutoscalingConfig,
    ModelConfig,
    PoolConfig,
    ServingConfig,
)
from ray.serve import autoscaling_policy as ray_policy
from ray.serve._private.common import DeploymentID, ReplicaID, TimeStampedValue
from ray.serve.config import AutoscalingConfig as RayAutoscalingConfig
from ray.serve.config import AutoscalingContext

CONFIG = ServingConfig(
    name="tiny",
    model=ModelConfig(source="builtin://tiny-llama", served_name="tiny"),
    pools=[
        PoolConfig(name="spot", min_replicas=1, max_replicas=2, priority=5),
        PoolConfig(name="reserved", min_replicas=1, max_replicas=2, priority=0),
    ],
    autoscaling=AutoscalingConfig(target_queue_depth=2, upscale_delay_s=1, downscale_delay_s=5),
)
RESERVED, SPOT = CONFIG.pools[1], CONFIG.pools[0]


def context(
    pool: PoolConfig,
    *,
    now: float,
    waiting: list[float],
    target: int,
    state: dict[str, Any] | None = None,
    handle_queued: float = 0.0,
) -> AutoscalingContext:
    """What the Serve controller hands a policy: `waiting` is each running replica's report."""
    deployment = DeploymentID(name=pool.name, app_name="tiny")
    replicas = [ReplicaID(str(i), deployment) for i in range(len(waiting))]
    config = RayAutoscalingConfig(**autoscaling_config_for(pool, CONFIG))
    return AutoscalingContext(
        deployment_id=deployment,
        deployment_name=pool.name,
        app_name="tiny",
        current_num_replicas=len(replicas),
        target_num_replicas=target,
        running_replicas=replicas,
        total_num_requests=sum(waiting),
        total_queued_requests=handle_queued,
        aggregated_metrics={},
        raw_metrics={
            QUEUE_DEPTH_METRIC: {
                r: [TimeStampedValue(now - 1, 0.0), TimeStampedValue(now, w)]
                for r, w in zip(replicas, waiting, strict=True)
            }
        },
        capacity_adjusted_min_replicas=config.min_replicas,
        capacity_adjusted_max_replicas=config.max_replicas,
        policy_state=state or {},
        last_scale_up_time=None,
        last_scale_down_time=None,
        current_time=now,
        config=config,
    )


def test_rendered_config_is_valid_for_ray_and_hands_timing_to_our_policy() -> None:
    rendered = autoscaling_config_for(RESERVED, CONFIG)
    config = RayAutoscalingConfig(**rendered)
    assert (config.min_replicas, config.max_replicas, config.initial_replicas) == (1, 2, 1)
    assert (config.upscale_delay_s, config.downscale_delay_s) == (0, 0)
    assert config.policy.policy_function == "modelfleet_serving.autoscaling_ray:QueueDepthPolicy"
    assert config.policy.policy_kwargs == {
        "target_queue_depth": 2,
        "upscale_delay_s": 1,
        "downscale_delay_s": 5,
    }
    # Ray records the metric every 0.2 x look-back and pushes it every metrics interval.
    assert config.look_back_period_s * 0.2 <= 1 and config.metrics_interval_s <= 1


def test_application_policy_orders_pools_by_priority() -> None:
    policy = application_policy_for(CONFIG)
    assert policy["policy_kwargs"]["preference"] == ["reserved", "spot"]
    # Ray accepts it as the application-level `autoscaling_policy` of a Serve config.
    parsed = RayAutoscalingConfig.model_validate({"policy": policy}).policy
    assert parsed.policy_function == "modelfleet_serving.autoscaling_ray:PreferenceOrderedPolicy"
    # The controller unpickles it by value and instantiates it with the kwargs.
    instance = parsed.get_policy()(**parsed.policy_kwargs)
    assert isinstance(instance, PreferenceOrderedPolicy)


def test_replicas_report_their_engine_queue() -> None:
    assert queue_depth_stats(3) == {QUEUE_DEPTH_METRIC: 3.0}


@pytest.mark.parametrize(
    ("waiting", "handle_queued", "expected"),
    [
        pytest.param([3, 4], 0.0, 7.0, id="latest-report-of-each-replica"),
        pytest.param([3], 2.0, 5.0, id="plus-requests-queued-at-handles"),
        pytest.param([], 0.0, 0.0, id="no-report-yet"),
    ],
)
def test_queue_depth_from_context(
    waiting: list[float], handle_queued: float, expected: float
) -> None:
    ctx = context(RESERVED, now=10, waiting=waiting, target=1, handle_queued=handle_queued)
    assert queue_depth(ctx) == expected


def test_deployment_policy_through_rays_wrapper() -> None:
    # As the controller runs it: Ray's wrapper applies (zero) delays and unit factors.
    policy = ray_policy._apply_autoscaling_config(
        QueueDepthPolicy(target_queue_depth=2, upscale_delay_s=1, downscale_delay_s=5)
    )
    state: dict[str, Any] = {}
    targets = []
    for now in range(4):
        replicas, state = policy(context(RESERVED, now=now, waiting=[6.0], target=1, state=state))
        targets.append(replicas)
    # 6 waiting for target 2 on one replica fills the bucket five times faster than real
    # time, so the second sample (the first has no elapsed time) scales to the maximum, 2.
    assert targets == [1, 2, 2, 2]
    assert "modelfleet" in state


def _app_round(
    policy: Any,
    waiting: dict[str, float],
    targets: dict[str, int],
    now: float,
    states: dict[Any, dict[str, Any]],
) -> tuple[dict[str, int], dict[Any, dict[str, Any]]]:
    contexts = {}
    for pool in (RESERVED, SPOT):
        ctx = context(
            pool,
            now=now,
            # Every replica of the target serves at once, the pool's queue spread on them.
            waiting=[waiting[pool.name] / targets[pool.name]] * targets[pool.name],
            target=targets[pool.name],
            state=states.get(pool.name),
        )
        contexts[ctx.deployment_id] = ctx
    decisions, new_states = policy(contexts)
    return (
        {dep.name: n for dep, n in decisions.items()},
        {dep.name: s for dep, s in new_states.items()},
    )


def test_application_policy_scales_up_preferred_first_and_down_least_preferred_first() -> None:
    kwargs = application_policy_for(CONFIG)["policy_kwargs"]
    policy = ray_policy._apply_app_level_autoscaling_config(PreferenceOrderedPolicy(**kwargs))
    targets = {"reserved": 1, "spot": 1}
    states: dict[Any, dict[str, Any]] = {}
    history = []
    for now in range(4):  # both pools overloaded
        targets, states = _app_round(policy, {"reserved": 6, "spot": 6}, targets, now, states)
        history.append((targets["reserved"], targets["spot"]))
    assert history == [(1, 1), (2, 1), (2, 2), (2, 2)]

    history = []
    for now in range(4, 14):  # both idle
        targets, states = _app_round(policy, {"reserved": 0, "spot": 0}, targets, now, states)
        history.append((targets["reserved"], targets["spot"]))
    assert history.index((2, 1)) < history.index((1, 1))
    assert history[-1] == (1, 1)


def test_a_pool_keeps_the_replicas_it_started_from_zero_while_they_load() -> None:
    """Ray's running count reaches the policy: the overflow pool at zero is started by
    the preferred pool's backlog, and its replica, loading for a while with no
    requests, is not taken back for its empty queue."""
    reserved = RESERVED.model_copy(update={"max_replicas": 1})
    spot = SPOT.model_copy(update={"min_replicas": 0, "max_replicas": 1})
    kwargs = application_policy_for(CONFIG)["policy_kwargs"]
    policy = ray_policy._apply_app_level_autoscaling_config(PreferenceOrderedPolicy(**kwargs))
    states: dict[str, Any] = {}
    spot_target, history = 0, []
    for now in range(60):
        contexts = {}
        for pool, waiting, target in ((reserved, [9.0], 1), (spot, [], spot_target)):
            ctx = context(
                pool, now=now, waiting=waiting, target=target, state=states.get(pool.name)
            )
            contexts[ctx.deployment_id] = ctx
        decisions, new_states = policy(contexts)
        states = {dep.name: s for dep, s in new_states.items()}
        spot_target = next(n for dep, n in decisions.items() if dep.name == spot.name)
        history.append(spot_target)
    started = history.index(1)
    assert started < 10 and history[started:] == [1] * (60 - started), history


def test_application_policy_leaves_other_deployments_to_ray() -> None:
    policy = PreferenceOrderedPolicy(
        target_queue_depth=2, upscale_delay_s=1, downscale_delay_s=5, preference=["absent"]
    )
    ctx = context(RESERVED, now=0, waiting=[9], target=1)
    assert policy({ctx.deployment_id: ctx}) == ({}, {})


def test_replay_meets_the_autoscaling_goals() -> None:
    from benchmarks.autoscaling_replay import run

    results = run(seed=7)
    ours, ray = results["modelfleet queue-depth"], results["Ray Serve default"]
    assert ours.decision_latency_s is not None and ray.decision_latency_s is not None
    assert ray.decision_latency_s >= 2 * max(ours.decision_latency_s, 1.0)
    assert ours.replica_seconds <= 1.1 * ray.replica_seconds
    assert ours.plateau_reversals == 0 and ours.plateau_changes == 0
