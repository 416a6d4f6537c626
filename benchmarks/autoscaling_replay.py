"""Replay one queue-depth trace through our autoscaling policy and Ray Serve's default.

The trace is the backlog a pool is asked to carry (requests waiting, in total), one
sample a second: a quiet start, a step up to a noisy plateau, a step down, then a
slow ramp. It does not react to the replicas, so both policies face exactly the same
demand. Each policy runs the way Ray Serve's controller runs it:

* ours: `autoscaling_ray.QueueDepthPolicy`, fed the backlog as each ready replica's
  `record_autoscaling_stats` value, with the Serve autoscaling config
  `autoscaling_config_for` renders;
* Ray's: `ray.serve.autoscaling_policy.replica_queue_length_autoscaling_policy`, the
  installed default, with the same target, bounds and delays and Ray's defaults for
  everything else, fed the backlog as ongoing requests averaged over its look-back
  window by Ray's own `aggregate_timeseries`.

Both are wrapped by Ray's `_apply_autoscaling_config` (delays, scaling factors) and
clipped to the bounds, as the controller does, and both see a fresh sample every
second. Real Ray defaults record every 6 s and push every 10 s, which would slow Ray's
reaction further; that is not counted here. A replica the policy adds becomes ready
only after the start-up delay, and scale-down removes starting replicas first.

Ray's delay logic reads the wall clock; the replay substitutes its simulated clock.

Printed per policy: decision latency after the step (seconds from the step to the first
scale-up), seconds over target (seconds in which the backlog per ready replica is
above target), replica-seconds (replicas held, starting or ready), direction reversals
(a scale-down after a scale-up or the reverse), over the whole run and on the plateau.

Run: python benchmarks/autoscaling_replay.py [--seed N]
"""

from __future__ import annotations

import argparse
import itertools
import logging
import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from unittest import mock

from modelfleet_serving.autoscaling_ray import (
    QUEUE_DEPTH_METRIC,
    QueueDepthPolicy,
    autoscaling_config_for,
)
from modelfleet_serving.config import AutoscalingConfig, ModelConfig, PoolConfig, ServingConfig
from ray.serve import autoscaling_policy as ray_policy
from ray.serve._private.common import DeploymentID, ReplicaID, TimeStampedValue
from ray.serve._private.metrics_utils import aggregate_timeseries
from ray.serve.config import AggregationFunction, AutoscalingContext
from ray.serve.config import AutoscalingConfig as RayAutoscalingConfig

# The trace, in seconds and requests waiting.
STEP_UP_AT = 60
STEP_DOWN_AT = 420
RAMP_FROM, RAMP_TO = 660, 960
END = 1080
BASELINE = 2.0
PLATEAU = 30.0
PLATEAU_NOISE = 0.25  # uniform, as a share of the plateau level
RAMP_TOP = 40.0

START_UP_DELAY_S = 30.0
TICK_S = 1.0
DEPLOYMENT = DeploymentID(name="llm-pool", app_name="replay")

# One pool sized like the spec's defaults: target 8 waiting per replica, 10 s / 120 s.
SCALING = AutoscalingConfig(target_queue_depth=8, upscale_delay_s=10, downscale_delay_s=120)
POOL = PoolConfig(name="pool", min_replicas=1, max_replicas=8)


def make_trace(seed: int) -> list[float]:
    """The backlog at each second of the replay."""
    rng = random.Random(seed)
    trace = []
    for t in range(END):
        if t < STEP_UP_AT:
            level = BASELINE
        elif t < STEP_DOWN_AT:
            level = PLATEAU * (1 + rng.uniform(-PLATEAU_NOISE, PLATEAU_NOISE))
        elif t < RAMP_FROM:
            level = BASELINE
        elif t < RAMP_TO:
            level = BASELINE + (RAMP_TOP - BASELINE) * (t - RAMP_FROM) / (RAMP_TO - RAMP_FROM)
        else:
            level = RAMP_TOP
        trace.append(round(level, 2))
    return trace


@dataclass
class Fleet:
    """The replicas of the simulated pool: when each started and when it is ready."""

    ready_at: list[float] = field(default_factory=list)

    def resize(self, target: int, now: float) -> None:
        """Add replicas that will be ready after the start-up delay, or drop some."""
        while len(self.ready_at) < target:
            self.ready_at.append(now + START_UP_DELAY_S)
        # The latest to become ready goes first: it has done the least work.
        self.ready_at.sort()
        del self.ready_at[target:]

    def ready(self, now: float) -> int:
        """Replicas serving at `now`."""
        return sum(1 for t in self.ready_at if t <= now)


# A policy step: (now, backlog so far, running replicas, current target, state)
# -> (new target, new state).
Step = Callable[
    [float, list[TimeStampedValue], int, int, dict[str, Any]], tuple[int, dict[str, Any]]
]


def _context(
    config: RayAutoscalingConfig,
    now: float,
    running: int,
    target: int,
    state: dict[str, Any],
    *,
    total_num_requests: float = 0.0,
    raw_metrics: dict[str, dict[ReplicaID, list[TimeStampedValue]]] | None = None,
) -> AutoscalingContext:
    return AutoscalingContext(
        deployment_id=DEPLOYMENT,
        deployment_name=DEPLOYMENT.name,
        app_name=DEPLOYMENT.app_name,
        current_num_replicas=running,
        target_num_replicas=target,
        running_replicas=[ReplicaID(str(i), DEPLOYMENT) for i in range(running)],
        total_num_requests=total_num_requests,
        total_queued_requests=0.0,
        aggregated_metrics={},
        raw_metrics=raw_metrics or {},
        capacity_adjusted_min_replicas=config.min_replicas,
        capacity_adjusted_max_replicas=config.max_replicas,
        policy_state=state,
        last_scale_up_time=None,
        last_scale_down_time=None,
        current_time=now,
        config=config,
    )


def _bounded(config: RayAutoscalingConfig, replicas: int) -> int:
    # What DeploymentAutoscalingState.apply_bounds does after every decision.
    return max(config.min_replicas, min(config.max_replicas, replicas))


def modelfleet_step() -> tuple[str, Step]:
    """Our policy, configured as `autoscaling_config_for` renders it for Serve."""
    serving = ServingConfig(
        name="replay",
        model=ModelConfig(source="builtin://tiny-llama", served_name="t"),
        pools=[POOL],
        autoscaling=SCALING,
    )
    rendered = autoscaling_config_for(POOL, serving)
    config = RayAutoscalingConfig(**rendered)
    policy = ray_policy._apply_autoscaling_config(
        QueueDepthPolicy(**rendered["policy"]["policy_kwargs"])
    )

    def step(
        now: float,
        samples: list[TimeStampedValue],
        running: int,
        target: int,
        state: dict[str, Any],
    ) -> tuple[int, dict[str, Any]]:
        # Each ready replica reports its share of the backlog as its engine queue.
        share = samples[-1].value / max(running, 1)
        reports = {
            ReplicaID(str(i), DEPLOYMENT): [TimeStampedValue(now, share)] for i in range(running)
        }
        ctx = _context(
            config, now, running, target, state, raw_metrics={QUEUE_DEPTH_METRIC: reports}
        )
        replicas, state = policy(ctx)
        return _bounded(config, replicas), state

    return "modelfleet queue-depth", step


def ray_default_step() -> tuple[str, Step]:
    """Ray Serve's default policy with the same target, bounds and delays."""
    config = RayAutoscalingConfig(
        min_replicas=POOL.min_replicas,
        max_replicas=POOL.max_replicas,
        target_ongoing_requests=SCALING.target_queue_depth,
        upscale_delay_s=SCALING.upscale_delay_s,
        downscale_delay_s=SCALING.downscale_delay_s,
    )
    policy = ray_policy._apply_autoscaling_config(
        ray_policy.replica_queue_length_autoscaling_policy
    )

    def step(
        now: float,
        samples: list[TimeStampedValue],
        running: int,
        target: int,
        state: dict[str, Any],
    ) -> tuple[int, dict[str, Any]]:
        # Replicas keep look_back_period_s of samples; the controller averages them
        # over time, the last one holding until now.
        window = [s for s in samples if s.timestamp >= now - config.look_back_period_s]
        last_window_s = max(now - window[-1].timestamp, 1e-3)
        ongoing = (
            aggregate_timeseries(
                window, AggregationFunction(config.aggregation_function), last_window_s
            )
            or 0.0
        )
        ctx = _context(config, now, running, target, state, total_num_requests=ongoing)
        replicas, state = policy(ctx)
        return _bounded(config, replicas), state

    return "Ray Serve default", step


@dataclass
class Figures:
    """What the replay prints for one policy."""

    decision_latency_s: float | None
    seconds_over_target: float
    replica_seconds: float
    reversals: int
    plateau_reversals: int
    plateau_changes: int
    targets: list[int]


@contextmanager
def _simulated_clock(clock: list[float]) -> Iterator[None]:
    # Ray's delay logic calls time.time(); point it at the replay's clock.
    fake_time = mock.Mock()
    fake_time.time.side_effect = lambda: clock[0]
    with mock.patch.object(ray_policy, "time", fake_time):
        yield


def replay(step: Step, trace: list[float]) -> Figures:
    """Run one policy over the trace, one control tick per second."""
    clock = [0.0]
    fleet = Fleet()
    fleet.resize(POOL.min_replicas, -START_UP_DELAY_S)  # the minimum is up at t = 0
    target = POOL.min_replicas
    state: dict[str, Any] = {}
    samples: list[TimeStampedValue] = []
    targets: list[int] = []
    over_target = replica_seconds = 0.0
    first_up: float | None = None
    with _simulated_clock(clock):
        for second, backlog in enumerate(trace):
            now = second * TICK_S
            clock[0] = now
            samples.append(TimeStampedValue(now, backlog))
            running = fleet.ready(now)
            new_target, state = step(now, samples, running, target, state)
            if new_target > target and first_up is None and now >= STEP_UP_AT:
                first_up = now
            if new_target != target:
                fleet.resize(new_target, now)
                target = new_target
            targets.append(target)
            if backlog > SCALING.target_queue_depth * max(fleet.ready(now), 1):
                over_target += TICK_S
            replica_seconds += target * TICK_S
    return Figures(
        decision_latency_s=None if first_up is None else first_up - STEP_UP_AT,
        seconds_over_target=over_target,
        replica_seconds=replica_seconds,
        reversals=_reversals(targets),
        # The plateau after the step's own rise: a minute in, until the step down.
        plateau_reversals=_reversals(targets[STEP_UP_AT + 60 : STEP_DOWN_AT]),
        plateau_changes=_changes(targets[STEP_UP_AT + 60 : STEP_DOWN_AT]),
        targets=targets,
    )


def _moves(targets: list[int]) -> list[int]:
    return [b - a for a, b in itertools.pairwise(targets) if b != a]


def _changes(targets: list[int]) -> int:
    return len(_moves(targets))


def _reversals(targets: list[int]) -> int:
    moves = _moves(targets)
    return sum(1 for a, b in itertools.pairwise(moves) if (a > 0) != (b > 0))


def run(seed: int) -> dict[str, Figures]:
    """Replay the trace of `seed` through both policies."""
    trace = make_trace(seed)
    return {name: replay(step, trace) for name, step in (modelfleet_step(), ray_default_step())}


def main() -> None:
    """Print the figures of both policies and the goals they are held to."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=7, help="seed of the plateau noise")
    args = parser.parse_args()
    # The policy logs each change for operators; here the table says it all.
    logging.getLogger("ray.serve").setLevel(logging.WARNING)
    results = run(args.seed)
    print(
        f"trace: step {BASELINE:g}->{PLATEAU:g}±{PLATEAU_NOISE:.0%} at {STEP_UP_AT}s, down at "
        f"{STEP_DOWN_AT}s, ramp to {RAMP_TOP:g} {RAMP_FROM}-{RAMP_TO}s; target "
        f"{SCALING.target_queue_depth:g}/replica, delays {SCALING.upscale_delay_s:g}s/"
        f"{SCALING.downscale_delay_s:g}s, start-up {START_UP_DELAY_S:g}s, "
        f"replicas {POOL.min_replicas}-{POOL.max_replicas}"
    )
    header = f"{'policy':<24}{'latency s':>10}{'over tgt s':>11}{'replica-s':>10}{'reversals':>10}"
    print(header + f"{'plateau rev/chg':>16}")
    for name, f in results.items():
        latency = "never" if f.decision_latency_s is None else f"{f.decision_latency_s:g}"
        print(
            f"{name:<24}{latency:>10}{f.seconds_over_target:>11g}{f.replica_seconds:>10g}"
            f"{f.reversals:>10}{f'{f.plateau_reversals}/{f.plateau_changes}':>16}"
        )
    ours, ray = results["modelfleet queue-depth"], results["Ray Serve default"]
    if ours.decision_latency_s is not None and ray.decision_latency_s is not None:
        # Latencies are measured in control ticks; a reaction within the step's own
        # tick counts as one tick.
        ratio = ray.decision_latency_s / max(ours.decision_latency_s, TICK_S)
        print(f"reaction: {ratio:.1f}x faster than Ray's default (goal >= 2x)")
    print(
        f"replica-seconds: {ours.replica_seconds / ray.replica_seconds:.3f}x Ray's (goal <= 1.1x)"
    )
    print(f"plateau reversals: {ours.plateau_reversals} (goal 0)")


if __name__ == "__main__":
    main()
