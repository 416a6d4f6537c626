"""The pure queue-depth policy (`modelfleet_serving.autoscaling`) on traces, clock injected."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from collections.abc import Sequence

import pytest
from modelfleet_serving.autoscaling import (
    STARTING_GRACE_S,
    Decision,
    PoolObservation,
    ScalingParams,
    ScalingState,
    decide,
    decide_pools,
    replicas_needed,
)

PARAMS = ScalingParams(
    target_queue_depth=8, upscale_delay_s=10, downscale_delay_s=120, min_replicas=1, max_replicas=8
)


def replay(
    trace: Sequence[tuple[float, float]],
    *,
    replicas: int = 1,
    params: ScalingParams = PARAMS,
) -> list[tuple[float, int]]:
    """Feed (time, queue depth) samples to `decide`; return (time, target) after each."""
    state = ScalingState()
    targets = []
    for now, queue in trace:
        decision = decide(params, state, now=now, queue_depth=queue, replicas=replicas)
        state, replicas = decision.state, decision.replicas
        targets.append((now, replicas))
    return targets


def first_change(targets: list[tuple[float, int]], start: int) -> tuple[float, int] | None:
    """The first (time, target) whose target differs from `start`."""
    return next(((t, n) for t, n in targets if n != start), None)


def steady(queue: float, seconds: int, start: float = 0.0) -> list[tuple[float, float]]:
    """One sample a second of a constant queue depth."""
    return [(start + t, queue) for t in range(seconds)]


@pytest.mark.parametrize(
    ("queue", "replicas", "acts_at", "grows_to"),
    [
        # 20% over target: the full upscale delay (10 s of samples after the first).
        pytest.param(9.6 + 0.01, 1, 10.0, 2, id="20%-over-waits-the-delay"),
        # Twice the target or deeper: a fifth of the delay, whatever the depth.
        pytest.param(16.01, 1, 2.0, 2, id="twice-target-a-fifth"),
        pytest.param(200, 1, 2.0, 8, id="very-deep-same-pace-capped-at-max"),
        # Sized so the queue is within 20% of target per replica: 30 / 9.6 -> 4.
        pytest.param(30, 1, 2.0, 4, id="sized-within-tolerance"),
        # Overload is per replica asked for, starting ones included.
        pytest.param(30, 4, None, 4, id="already-enough-replicas"),
        pytest.param(8, 1, None, 1, id="exactly-on-target-holds"),
    ],
)
def test_scale_up_pace_and_size(
    queue: float, replicas: int, acts_at: float | None, grows_to: int
) -> None:
    targets = replay(steady(queue, 60), replicas=replicas)
    change = first_change(targets, replicas)
    if acts_at is None:
        assert change is None
    else:
        assert change == (acts_at, grows_to)


def test_one_burst_sample_does_not_scale() -> None:
    trace = [*steady(2, 10), (10.0, 500.0), *steady(2, 60, start=11)]
    assert first_change(replay(trace), 1) is None


def test_step_is_sized_on_the_sustained_queue_not_the_last_spike() -> None:
    # Two samples at 30 then a spike: the pool grows for 30 (4), not for 90 (8... capped).
    trace = [(0.0, 2.0), (1.0, 30.0), (2.0, 90.0)]
    assert replay(trace)[-1] == (2.0, 4)


def test_a_full_bucket_adds_at_least_one_replica() -> None:
    # Spiky overload: the queue dips to target now and then, but averages 30% over it.
    trace = [(float(t), 8.0 if t % 4 == 0 else 11.5) for t in range(120)]
    change = first_change(replay(trace), 1)
    assert change is not None and change[1] == 2


def test_noisy_plateau_just_under_target_does_not_flap() -> None:
    rng = random.Random(3)
    # Four replicas at target 8 hold 32; the plateau averages 30 with ±25% noise.
    trace = [(float(t), 30 * (1 + rng.uniform(-0.25, 0.25))) for t in range(1800)]
    targets = replay(trace, replicas=4)
    assert {n for _, n in targets} == {4}


@pytest.mark.parametrize(
    ("trace", "expected"),
    [
        # Idle after load: down to the minimum once the delay has passed.
        pytest.param(steady(0, 200), (120.0, 1), id="idle-after-delay"),
        # A queue that still needs two replicas (with 20% headroom) keeps two.
        pytest.param(steady(12, 200), (120.0, 2), id="down-to-what-the-queue-needs"),
        # The largest need seen during the window wins over the last sample.
        pytest.param(
            [*steady(0, 60), (60.0, 15.0), *steady(0, 140, start=61)],
            (120.0, 3),
            id="floor-is-the-window-peak",
        ),
    ],
)
def test_scale_down_waits_the_delay_and_keeps_the_window_peak(
    trace: list[tuple[float, float]], expected: tuple[float, int]
) -> None:
    assert first_change(replay(trace, replicas=4), 4) == expected


def test_a_break_in_underload_restarts_the_downscale_timer() -> None:
    # At 100 s the queue needs all four replicas again: the 120 s start over from 101 s.
    trace = [*steady(0, 100), (100.0, 40.0), *steady(0, 300, start=101)]
    assert first_change(replay(trace, replicas=4), 4) == (221.0, 1)


def test_no_scale_down_right_after_scale_up_on_the_same_queue() -> None:
    # Grows 1 -> 4 for a queue of 30, then holds it for as long as the queue stays.
    targets = replay(steady(30, 900))
    assert sorted({n for _, n in targets}) == [1, 4]
    assert targets[-1][1] == 4


def test_bounds_are_enforced() -> None:
    params = ScalingParams(
        target_queue_depth=8,
        upscale_delay_s=0,
        downscale_delay_s=0,
        min_replicas=2,
        max_replicas=3,
    )
    assert replay(steady(1000, 3), replicas=2, params=params)[-1][1] == 3
    assert replay(steady(0, 3), replicas=3, params=params)[-1][1] == 2
    # A target outside the bounds (Ray's capacity changed) is brought back at once.
    assert replay([(0.0, 0.0)], replicas=7, params=params) == [(0.0, 3)]


def test_cold_start_from_zero_replicas_is_immediate() -> None:
    params = ScalingParams(
        target_queue_depth=8,
        upscale_delay_s=10,
        downscale_delay_s=120,
        min_replicas=0,
        max_replicas=4,
    )
    assert replay([(0.0, 20.0)], replicas=0, params=params) == [(0.0, 3)]
    assert replay([(0.0, 0.0)], replicas=0, params=params) == [(0.0, 0)]


def test_zero_delays_act_on_the_first_sample() -> None:
    params = ScalingParams(
        target_queue_depth=8,
        upscale_delay_s=0,
        downscale_delay_s=0,
        min_replicas=1,
        max_replicas=4,
    )
    assert replay([(0.0, 20.0)], params=params) == [(0.0, 3)]


def test_state_survives_a_json_round_trip() -> None:
    decision = decide(PARAMS, ScalingState(), now=5.0, queue_depth=0, replicas=3)
    restored = ScalingState.from_dict(json.loads(json.dumps(decision.state.to_dict())))
    assert restored == decision.state
    assert ScalingState.from_dict(None) == ScalingState()


def test_replicas_needed() -> None:
    assert [replicas_needed(q, 8) for q in (0, 1, 8, 8.5, 16, -3)] == [0, 1, 1, 2, 2, 0]


@pytest.mark.parametrize(
    "bad",
    [
        {"target_queue_depth": 0},
        {"upscale_delay_s": -1},
        {"min_replicas": 5, "max_replicas": 4},
    ],
)
def test_params_are_checked(bad: dict[str, float]) -> None:
    fields = {
        "target_queue_depth": 8,
        "upscale_delay_s": 1,
        "downscale_delay_s": 1,
        "min_replicas": 1,
        "max_replicas": 4,
        **bad,
    }
    with pytest.raises(ValueError):
        ScalingParams(**fields)  # type: ignore[arg-type]


# Two pools: "a" preferred (min 1, max 2), "b" next (min 1, max 2); fast delays.
A = ScalingParams(
    target_queue_depth=2, upscale_delay_s=1, downscale_delay_s=5, min_replicas=1, max_replicas=2
)
B = A


def run_pools(
    trace: Sequence[tuple[float, float, float]], replicas: tuple[int, int] = (1, 1)
) -> list[tuple[float, int, int]]:
    """Feed (time, queue a, queue b) to `decide_pools`; return (time, a, b) targets."""
    states = (ScalingState(), ScalingState())
    out = []
    for now, qa, qb in trace:
        decisions: list[Decision] = decide_pools(
            [
                PoolObservation(A, states[0], qa, replicas[0]),
                PoolObservation(B, states[1], qb, replicas[1]),
            ],
            now=now,
        )
        states = (decisions[0].state, decisions[1].state)
        replicas = (decisions[0].replicas, decisions[1].replicas)
        out.append((now, *replicas))
    return out


def test_scale_up_fills_the_preferred_pool_first() -> None:
    # Both pools overloaded from t=0: "b" waits until "a" is at its maximum.
    out = run_pools([(float(t), 10.0, 10.0) for t in range(6)])
    assert out[:2] == [(0.0, 1, 1), (1.0, 2, 1)]
    # "b" kept its full bucket while held, so it moves on the very next tick.
    assert out[2] == (2.0, 2, 2)


def test_scale_down_empties_the_least_preferred_pool_first() -> None:
    # Both idle from t=0 at their maximum: "b" goes first, "a" right after.
    out = run_pools([(float(t), 0.0, 0.0) for t in range(10)], replicas=(2, 2))
    changes = [
        (t, a, b) for (t, a, b), prev in zip(out[1:], out, strict=False) if (a, b) != prev[1:]
    ]
    assert changes == [(5.0, 2, 1), (6.0, 1, 1)]


def test_a_held_pool_keeps_its_downscale_timer() -> None:
    # "b" is busy for 20 s, so "a" (idle) is held at 2; it drops one tick after "b" does.
    trace = [(float(t), 0.0, 3.0 if t < 20 else 0.0) for t in range(40)]
    out = run_pools(trace, replicas=(2, 2))
    b_down = next(t for t, _, b in out if b == 1)
    a_down = next(t for t, a, _ in out if a == 1)
    assert b_down == 25.0 and a_down == b_down + 1


# "z" is an overflow pool that may rest at zero replicas.
Z = ScalingParams(
    target_queue_depth=2, upscale_delay_s=1, downscale_delay_s=5, min_replicas=0, max_replicas=2
)


def run_to_zero(trace: Sequence[tuple[float, float]]) -> list[tuple[float, int, int]]:
    """Feed (time, queue of "a") to `decide_pools` with "z" behind it; the router sends
    "z" nothing while it has no replica, so its own queue is 0 throughout."""
    states, replicas, out = (ScalingState(), ScalingState()), (1, 0), []
    for now, qa in trace:
        decisions = decide_pools(
            [
                PoolObservation(A, states[0], qa, replicas[0]),
                PoolObservation(Z, states[1], 0, replicas[1]),
            ],
            now=now,
        )
        states = (decisions[0].state, decisions[1].state)
        replicas = (decisions[0].replicas, decisions[1].replicas)
        out.append((now, *replicas))
    return out


def test_an_overflow_pool_at_zero_starts_from_the_preferred_pools_backlog() -> None:
    # "a" is overloaded: it grows to its maximum at t=1; its bucket is full again at
    # t=2, and on the next tick "z" starts from zero for the backlog beyond "a"'s
    # target (10 - 2×2 = 6, three replicas' worth, bounded to its maximum of 2).
    out = run_to_zero([(float(t), 10.0) for t in range(6)])
    assert out == [(0.0, 1, 0), (1.0, 2, 0), (2.0, 2, 0), (3.0, 2, 2), (4.0, 2, 2), (5.0, 2, 2)]


def test_an_overflow_pool_started_from_zero_returns_to_zero_when_idle() -> None:
    out = run_to_zero(
        [(float(t), 10.0) for t in range(4)] + [(float(t), 0.0) for t in range(4, 30)]
    )
    assert out[3] == (3.0, 2, 2)
    assert out[-1][1:] == (1, 0)


@pytest.mark.parametrize(
    ("queue", "expected"),
    [
        # Within what "a" at its maximum holds at target (2 × 2): nothing spills.
        (3.0, 0),
        (4.0, 0),
        # Beyond: "z" gets what the backlog beyond "a"'s target needs, within its bounds.
        (5.0, 1),
        (6.0, 1),
        (8.0, 2),
        (40.0, 2),
    ],
)
def test_spill_into_a_pool_at_zero_is_sized_on_the_excess(queue: float, expected: int) -> None:
    out = run_to_zero([(0.0, 10.0), (1.0, 10.0)] + [(float(t), queue) for t in range(2, 8)])
    assert out[-1][2] == expected, out


def test_an_overflow_pool_at_zero_is_not_started_by_a_burst() -> None:
    # "a" reaches its maximum, then one deep sample: "a"'s bucket is not full, "z" waits.
    out = run_to_zero([(0.0, 10.0), (1.0, 10.0), (1.1, 0.0), (1.2, 40.0)])
    assert out[-1] == (1.2, 2, 0)


def test_a_pool_does_not_scale_down_while_replicas_start() -> None:
    # Two replicas, one still loading: an empty queue does not take either back.
    params = ScalingParams(
        target_queue_depth=2, upscale_delay_s=1, downscale_delay_s=0, min_replicas=1,
        max_replicas=4,
    )  # fmt: skip
    starting = decide(params, ScalingState(), now=0, queue_depth=0, replicas=2, running=1)
    assert (starting.replicas, starting.reason) == (2, "replicas starting")
    # Once both serve, the same empty queue lets the pool shrink.
    served = decide(params, ScalingState(), now=0, queue_depth=0, replicas=2, running=2)
    assert served.replicas == 1
    # A replica that never starts holds the pool only for the grace period.
    state = ScalingState()
    for now in (0.0, STARTING_GRACE_S - 1):
        held = decide(params, state, now=now, queue_depth=0, replicas=2, running=1)
        assert (held.replicas, held.reason) == (2, "replicas starting")
        state = held.state
    late = decide(params, state, now=STARTING_GRACE_S, queue_depth=0, replicas=2, running=1)
    assert late.replicas == 1
    # Growing is not held by starting replicas.
    busy = ScalingState(last_time=0, overload_s=5)
    grown = decide(params, busy, now=1, queue_depth=20, replicas=2, running=1)
    assert grown.replicas > 2


def test_an_overflow_pool_started_from_zero_keeps_its_replicas_while_they_load() -> None:
    # "z" is started from "a"'s backlog at t=3; its replicas load for 20 s, taking no
    # requests (its own queue stays 0): they are kept all that time (its downscale
    # delay is 5 s), not taken back and started again.
    states, replicas, out = (ScalingState(), ScalingState()), (1, 0), []
    started_at = None
    for now in [float(t) for t in range(40)]:
        running = 0 if started_at is None or now < started_at + 20 else replicas[1]
        decisions = decide_pools(
            [
                PoolObservation(A, states[0], 10.0, replicas[0]),
                PoolObservation(Z, states[1], 0, replicas[1], running=running),
            ],
            now=now,
        )
        states = (decisions[0].state, decisions[1].state)
        replicas = (decisions[0].replicas, decisions[1].replicas)
        if replicas[1] and started_at is None:
            started_at = now
        out.append(replicas[1])
    assert started_at == 3.0
    assert out[3:23] == [2] * 20, out


def test_the_policy_module_is_pure() -> None:
    # docs/design.md: the policy imports nothing from Ray, vLLM, Kubernetes or Kopf.
    code = (
        "import sys, modelfleet_serving.autoscaling\n"
        "bad = {'ray', 'vllm', 'kubernetes', 'kopf', 'tritonclient'}\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in bad))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"
