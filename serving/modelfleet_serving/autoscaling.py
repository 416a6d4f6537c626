"""Queue-depth autoscaling policy for one model's node pools.

The policy is a pure function: the caller passes the clock reading, the observed
queue depth and the pool's current replica target, together with the state the
previous call returned, and gets back a replica count and the next state. Nothing
here imports Ray, vLLM or Kubernetes; `autoscaling_ray` adapts it to Ray Serve's
custom autoscaling policy API, and `benchmarks/autoscaling_replay.py` replays traces
through it.

Signal. The queue depth is the number of requests waiting for a slot in the engine
(vLLM's waiting queue, plus requests still queued in front of the replicas), not the
number of requests in flight: running requests are the work the replicas are already
doing well, waiting ones are the latency users feel.

Scaling up. Overload is measured against the replicas already asked for, including
those still starting, so a slow start does not make the policy ask twice for the same
backlog. An overload bucket integrates how far the queue per replica stands above the
target, in units of `UPSCALE_TOLERANCE` (20%): a queue 20% over target fills it by one
second each second, a queue twice the target or deeper by five, and a queue below
target drains it at the same rate. The pool scales up once the bucket holds
`upscale_delay_s`. A queue 20% over target therefore waits `upscale_delay_s`, a step
to twice the target or more waits a fifth of it (deep queues are already costing users
that much waiting, but a single burst sample alone never scales the pool), and the
noise of a plateau just under target, whose small spikes the dips between them cancel,
does not fill it.

The step is sized on the lowest queue seen since the overload began, the
backlog that has been there all along rather than the latest noisy sample, and it
brings that queue to within `UPSCALE_TOLERANCE` of the target per replica; whatever
excess is left fills the bucket again. It adds at least one replica, since a full
bucket means the pool has been short.

Scaling down. The pool shrinks only to a count that would hold the queue at no more
than `DOWNSCALE_HEADROOM` of the target per replica, and only after that has been true
for `downscale_delay_s` without a break. It then shrinks to the largest count any
moment of that window needed, so a momentary dip cannot take it too low. The gap
between the up threshold (above target) and the down threshold (below 80% of target
with one replica fewer) is the hysteresis that keeps a noisy plateau from flapping.

Several pools. Pools are ordered by preference (lowest `priority` first). The ingress
only spills requests into a pool once every more preferred pool is past its target,
and `decide_pools` adds the ordering the ingress cannot give: a pool scales up only
while every more preferred pool's target is at its maximum, and scales down only while
every less preferred pool's target is at its minimum. Load therefore lands on the
preferred pool first and leaves the least preferred pool first. A pool that is held
keeps its overload bucket or downscale timer, so it moves as soon as it may.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

# How far over target the queue per replica must stand for `upscale_delay_s` before the
# pool grows; deeper queues grow it proportionally sooner.
UPSCALE_TOLERANCE = 0.2
# Excess beyond this share over target counts as this much: a queue many times the
# target fills the bucket no faster than one twice the target, so one burst sample
# cannot scale the pool on its own.
MAX_COUNTED_EXCESS = 1.0
# A smaller pool must keep the queue at or below this share of the target per replica;
# the gap to the scale-up threshold (the full target) is what prevents flapping.
DOWNSCALE_HEADROOM = 0.8
# How long a pool holds replicas that are still starting before it may scale down
# anyway: longer than a large model takes to load, short enough that a replica that
# never starts (an engine that keeps failing) does not pin the pool at its size.
STARTING_GRACE_S = 900.0


@dataclass(frozen=True)
class ScalingParams:
    """One pool's autoscaling settings, already bounded by the pool's size."""

    target_queue_depth: float
    upscale_delay_s: float
    downscale_delay_s: float
    min_replicas: int
    max_replicas: int

    def __post_init__(self) -> None:
        if self.target_queue_depth <= 0:
            raise ValueError("target_queue_depth must be positive")
        if self.upscale_delay_s < 0 or self.downscale_delay_s < 0:
            raise ValueError("delays must not be negative")
        if not 0 <= self.min_replicas <= self.max_replicas:
            raise ValueError("need 0 <= min_replicas <= max_replicas")

    def clamp(self, replicas: int) -> int:
        """`replicas` bounded by this pool's minimum and maximum."""
        return max(self.min_replicas, min(self.max_replicas, replicas))


@dataclass(frozen=True)
class ScalingState:
    """What the policy remembers between two calls for one pool.

    Attributes:
        last_time: clock reading of the previous call; None before the first.
        overload_s: the overload bucket, in seconds at `UPSCALE_TOLERANCE` over target.
        underload_since: when the queue first fitted in fewer replicas, without a
            break since; None while it does not.
        downscale_floor: the most replicas any moment since `underload_since` needed.
        sustained_queue: the lowest queue depth seen since the queue went over target
            with an empty bucket; None while the bucket is empty and the queue on target.
        starting_since: when the pool last had fewer replicas serving than its
            target, without a break since; None while all of them serve.
    """

    last_time: float | None = None
    overload_s: float = 0.0
    sustained_queue: float | None = None
    underload_since: float | None = None
    downscale_floor: int = 0
    starting_since: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly form, for stores such as Ray Serve's policy state."""
        return {
            "last_time": self.last_time,
            "overload_s": self.overload_s,
            "sustained_queue": self.sustained_queue,
            "underload_since": self.underload_since,
            "downscale_floor": self.downscale_floor,
            "starting_since": self.starting_since,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> ScalingState:
        """The state `to_dict` wrote; a fresh state when there is none."""
        if not data:
            return cls()
        return cls(
            last_time=data.get("last_time"),
            overload_s=float(data.get("overload_s", 0.0)),
            sustained_queue=data.get("sustained_queue"),
            underload_since=data.get("underload_since"),
            downscale_floor=int(data.get("downscale_floor", 0)),
            starting_since=data.get("starting_since"),
        )


@dataclass(frozen=True)
class Decision:
    """The replica target for one pool, the state to pass next time, and why."""

    replicas: int
    state: ScalingState
    reason: str


def replicas_needed(queue_depth: float, target_queue_depth: float) -> int:
    """The fewest replicas that hold `queue_depth` at or below the target each."""
    return math.ceil(max(0.0, queue_depth) / target_queue_depth)


def decide(
    params: ScalingParams,
    state: ScalingState,
    *,
    now: float,
    queue_depth: float,
    replicas: int,
    may_scale_up: bool = True,
    may_scale_down: bool = True,
    running: int | None = None,
) -> Decision:
    """Decide one pool's replica target.

    Args:
        params: the pool's settings.
        state: what the previous call returned (`ScalingState()` the first time).
        now: the clock reading, in seconds; any monotonic origin.
        queue_depth: requests waiting across the pool's replicas.
        replicas: the pool's current target, counting replicas still starting.
        may_scale_up: False while a more preferred pool still has room to grow.
        may_scale_down: False while a less preferred pool is above its minimum.
        running: how many of those replicas serve already (None: all of them). While
            some are still starting the pool does not scale down (for at most
            `STARTING_GRACE_S`): a starting replica takes no requests yet, so a short
            queue says nothing about whether it is needed, and removing it would
            throw away its load (minutes for a model).

    Returns:
        The new target (within the pool's bounds) and the state for the next call.
    """
    dt = 0.0 if state.last_time is None else max(0.0, now - state.last_time)
    state = replace(state, last_time=now)
    current = params.clamp(replicas)
    if current != replicas:
        return Decision(current, _reset(state), "outside bounds")

    target = params.target_queue_depth

    # A pool with no replica at all cannot drain anything: start what it needs at once.
    if current == 0:
        if queue_depth <= 0:
            return Decision(0, state, "idle at zero")
        if not may_scale_up:
            return Decision(0, state, "up held by preference")
        needed = params.clamp(max(1, replicas_needed(queue_depth, target)))
        return Decision(needed, _reset(state), "cold start")

    load = queue_depth / (target * current)
    excess = min(load - 1, MAX_COUNTED_EXCESS)
    overload_s = max(0.0, state.overload_s + excess / UPSCALE_TOLERANCE * dt)
    if load > 1 or overload_s > 0:
        previous = state.sustained_queue
        sustained = queue_depth if previous is None else min(previous, queue_depth)
        state = replace(state, overload_s=overload_s, sustained_queue=sustained)
    else:
        state = replace(state, overload_s=0.0, sustained_queue=None)
    if load > 1 and current < params.max_replicas and overload_s >= params.upscale_delay_s:
        if may_scale_up:
            within_tolerance = target * (1 + UPSCALE_TOLERANCE)
            sustained = state.sustained_queue or 0.0
            grow_to = max(current + 1, replicas_needed(sustained, within_tolerance))
            grow_to = params.clamp(grow_to)
            return Decision(grow_to, _reset(state), f"queue {queue_depth:g} over target")
        # Held back by a more preferred pool: keep the bucket full, not growing
        # without bound, so the pool acts as soon as it may and no sooner.
        return Decision(
            current, replace(state, overload_s=params.upscale_delay_s), "up held by preference"
        )

    if running is None or running >= current:
        state = replace(state, starting_since=None)
    else:
        since = now if state.starting_since is None else state.starting_since
        state = replace(state, starting_since=since)
        if now - since < STARTING_GRACE_S:
            held = replace(state, underload_since=None, downscale_floor=0)
            return Decision(current, held, "replicas starting")
    return _consider_downscale(params, state, now, queue_depth, current, may_scale_down)


def _consider_downscale(
    params: ScalingParams,
    state: ScalingState,
    now: float,
    queue_depth: float,
    current: int,
    may_scale_down: bool,
) -> Decision:
    fits_in = params.clamp(
        replicas_needed(queue_depth, params.target_queue_depth * DOWNSCALE_HEADROOM)
    )
    if fits_in >= current:
        return Decision(current, replace(state, underload_since=None, downscale_floor=0), "hold")

    if state.underload_since is None:
        state = replace(state, underload_since=now, downscale_floor=fits_in)
    else:
        state = replace(state, downscale_floor=max(state.downscale_floor, fits_in))
    assert state.underload_since is not None  # set just above; narrows for mypy
    if now - state.underload_since < params.downscale_delay_s:
        return Decision(current, state, "waiting to scale down")
    if not may_scale_down:
        return Decision(current, state, "down held by preference")
    return Decision(state.downscale_floor, _reset(state), "queue fits in fewer replicas")


def _reset(state: ScalingState) -> ScalingState:
    """The state after a change of target: every timer starts again."""
    return replace(
        state,
        overload_s=0.0,
        sustained_queue=None,
        underload_since=None,
        downscale_floor=0,
        starting_since=None,
    )


@dataclass(frozen=True)
class PoolObservation:
    """One pool's input to `decide_pools`."""

    params: ScalingParams
    state: ScalingState
    queue_depth: float
    replicas: int
    # Of `replicas`, those serving already; None: all of them.
    running: int | None = None


def decide_pools(pools: Sequence[PoolObservation], *, now: float) -> list[Decision]:
    """Decide every pool of one model at once, honouring pool preference.

    Args:
        pools: the pools from most to least preferred.
        now: the clock reading shared by all pools.

    Returns:
        One decision per pool, in the same order.

    A pool may scale up only while every more preferred pool's current target is at
    its maximum, and scale down only while every less preferred pool's current target
    is at its minimum. Using the current targets (not this round's) keeps the rule
    free of circularity; the cost is one control-loop tick between two pools moving.

    A pool with no serving replica gets no requests (the router skips it), so its own
    queue stays empty however full the others are; it is given the backlog the more
    preferred pools hold beyond their target instead (`spill_over`). So a pool at zero
    starts once they have been full for their upscale delay, and keeps the replicas it
    started while they load, rather than taking them back for an empty queue.
    """
    decisions = []
    for index, pool in enumerate(pools):
        before, after = pools[:index], pools[index + 1 :]
        queue_depth = pool.queue_depth
        serving = pool.replicas if pool.running is None else min(pool.running, pool.replicas)
        if serving == 0:
            queue_depth = max(queue_depth, spill_over(before))
        decisions.append(
            decide(
                pool.params,
                pool.state,
                now=now,
                queue_depth=queue_depth,
                replicas=pool.replicas,
                may_scale_up=all(p.replicas >= p.params.max_replicas for p in before),
                may_scale_down=all(p.replicas <= p.params.min_replicas for p in after),
                running=pool.running,
            )
        )
    return decisions


def spill_over(before: Sequence[PoolObservation]) -> float:
    """The backlog the pools in `before` hold beyond their target, once every one of
    them is at its maximum and has been over target for its upscale delay; else 0.

    That is the demand the next pool would see if the router could send it requests.
    """
    if not before:
        return 0.0
    full = all(
        p.replicas >= p.params.max_replicas and p.state.overload_s >= p.params.upscale_delay_s
        for p in before
    )
    if not full:
        return 0.0
    return sum(max(0.0, p.queue_depth - p.params.target_queue_depth * p.replicas) for p in before)
