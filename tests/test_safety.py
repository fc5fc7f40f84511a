"""SafetyGate: limits, step bound, holds (no ROS)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from vla_ros.safety import GateReason, JointLimits, SafetyGate

NAMES = ("shoulder_pan", "shoulder_lift", "elbow", "wrist")
LOWER = np.array([-2.0, -1.5, -2.5, -1.0])
UPPER = np.array([2.0, 1.5, 0.5, 1.0])
VELOCITY = np.array([1.0, 1.5, 2.0, 3.0])
PERIOD = 0.1
NOW = 100.0


@pytest.fixture
def limits() -> JointLimits:
    return JointLimits(NAMES, LOWER, UPPER, VELOCITY)


@pytest.fixture
def gate(limits) -> SafetyGate:
    return SafetyGate(limits, control_period=PERIOD, max_frame_age_s=0.5, max_joint_state_age_s=0.2)


def state(position, velocity=None) -> np.ndarray:
    position = np.asarray(position, dtype=float)
    velocity = np.zeros_like(position) if velocity is None else np.asarray(velocity, dtype=float)
    return np.concatenate([position, velocity])


def passing(gate, target, joint_state, **overrides):
    kwargs = dict(now=NOW, frame_stamp=NOW - 0.05, joint_state_stamp=NOW - 0.01, has_command=True)
    kwargs.update(overrides)
    return gate.filter(target, joint_state, **kwargs)


class FakeRobotDescription:
    """Has the fields of vla_ros.robot_description.RobotDescription that the gate reads."""

    joint_names = NAMES
    lower = LOWER
    upper = UPPER
    velocity = VELOCITY


def test_limits_from_robot_description_fields():
    limits = JointLimits.from_robot(FakeRobotDescription())
    assert limits.joint_names == NAMES
    np.testing.assert_array_equal(limits.velocity, VELOCITY)
    assert JointLimits.from_robot(limits) is limits


def test_limits_reordered_to_policy_joint_order(limits):
    reordered = limits.reordered(("wrist", "shoulder_pan"))
    assert reordered.joint_names == ("wrist", "shoulder_pan")
    np.testing.assert_array_equal(reordered.lower, [-1.0, -2.0])
    np.testing.assert_array_equal(reordered.velocity, [3.0, 1.0])
    with pytest.raises(ValueError, match="no limits"):
        limits.reordered(("wrist", "gripper"))


@pytest.mark.parametrize(
    "lower, upper, velocity, message",
    [
        ([0.0], [1.0, 2.0], [1.0, 1.0], "lower has 1 entries"),
        ([2.0, 0.0], [1.0, 1.0], [1.0, 1.0], "lower limits exceed"),
        ([0.0, 0.0], [1.0, 1.0], [1.0, 0.0], "velocity limits must be positive"),
        ([0.0, -np.inf], [1.0, 1.0], [1.0, 1.0], "finite"),
    ],
)
def test_limits_rejects_bad_values(lower, upper, velocity, message):
    with pytest.raises(ValueError, match=message):
        JointLimits(("a", "b"), lower, upper, velocity)


def test_gate_needs_a_step_bound(limits):
    with pytest.raises(ValueError, match="control_period"):
        SafetyGate(limits)
    with pytest.raises(ValueError, match="control_period"):
        SafetyGate(limits, control_period=0.0)
    with pytest.raises(ValueError, match="max_step"):
        SafetyGate(limits, max_step=-1.0)
    with pytest.raises(ValueError, match="max_frame_age_s"):
        SafetyGate(limits, control_period=0.1, max_frame_age_s=math.nan)


def test_step_bound_from_velocity_limits_and_an_optional_cap(limits):
    np.testing.assert_allclose(SafetyGate(limits, control_period=PERIOD).max_step, VELOCITY * PERIOD)
    capped = SafetyGate(limits, control_period=PERIOD, max_step=0.12)
    np.testing.assert_allclose(capped.max_step, [0.1, 0.12, 0.12, 0.12])
    np.testing.assert_allclose(SafetyGate(limits, max_step=0.05).max_step, [0.05] * 4)


def test_small_in_limit_target_passes_unchanged(gate):
    target = np.array([0.05, -0.1, 0.1, 0.2])
    decision = passing(gate, target, state(np.zeros(4)))
    assert decision.reason is GateReason.OK and not decision.hold
    np.testing.assert_array_equal(decision.command, target)
    assert not decision.clamped_to_limits and not decision.rate_limited


def test_far_target_is_rate_limited_towards_it(gate):
    decision = passing(gate, [1.0, 1.0, -1.0, 0.0], state(np.zeros(4)))
    np.testing.assert_allclose(decision.command, [0.1, 0.15, -0.2, 0.0])
    assert decision.rate_limited and not decision.clamped_to_limits


def test_target_beyond_limits_is_clamped(gate):
    position = np.array([1.95, 0.0, 0.45, -0.95])
    decision = passing(gate, [5.0, 0.0, 5.0, -5.0], state(position))
    np.testing.assert_allclose(decision.command, [2.0, 0.0, 0.5, -1.0])
    assert decision.clamped_to_limits


def test_state_slightly_outside_limits_is_steered_back(gate):
    decision = passing(gate, [3.0, 0, 0, 0], state([2.05, 0, 0, 0]))
    assert decision.reason is GateReason.OK
    assert decision.command[0] == pytest.approx(2.0)


def test_state_far_outside_limits_holds(gate):
    decision = passing(gate, [0.0, 0, 0, 0], state([2.5, 0, 0, 0]))
    assert decision.hold and decision.reason is GateReason.JOINT_STATE_OUT_OF_LIMITS


@pytest.mark.parametrize(
    "overrides, reason",
    [
        (dict(has_command=False), GateReason.NO_COMMAND),
        (dict(frame_stamp=None), GateReason.NO_FRAME),
        (dict(joint_state_stamp=None), GateReason.NO_JOINT_STATE),
        (dict(frame_stamp=NOW - 0.51), GateReason.STALE_FRAME),
        (dict(frame_stamp=NOW + 5.0), GateReason.STALE_FRAME),  # stamped in the future: bad clock
        # a camera 0.4 s ahead: within max_frame_age_s but beyond the skew tolerance, so stale
        (dict(frame_stamp=NOW + 0.4), GateReason.STALE_FRAME),
        (dict(joint_state_stamp=NOW + 0.1), GateReason.STALE_JOINT_STATE),
        (dict(frame_stamp=math.nan), GateReason.STALE_FRAME),
        (dict(joint_state_stamp=NOW - 0.21), GateReason.STALE_JOINT_STATE),
    ],
)
def test_missing_or_stale_inputs_hold(gate, overrides, reason):
    decision = passing(gate, np.zeros(4), state(np.zeros(4)), **overrides)
    assert decision.hold and decision.command is None
    assert decision.reason is reason


def test_inputs_at_the_age_limit_still_pass(gate):
    decision = passing(
        gate, np.zeros(4), state(np.zeros(4)), frame_stamp=NOW - 0.499, joint_state_stamp=NOW - 0.199
    )
    assert decision.reason is GateReason.OK
    # clock skew between machines up to FUTURE_STAMP_TOLERANCE_S is tolerated
    decision = passing(gate, np.zeros(4), state(np.zeros(4)), frame_stamp=NOW + 0.04, joint_state_stamp=NOW + 0.04)
    assert decision.reason is GateReason.OK


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("where", ["target", "position", "velocity"])
def test_nonfinite_values_anywhere_hold(gate, bad, where):
    target = np.zeros(4)
    joint_state = state(np.zeros(4))
    if where == "target":
        target[2] = bad
    elif where == "position":
        joint_state[1] = bad
    else:
        joint_state[5] = bad
    decision = passing(gate, target, joint_state)
    expected = GateReason.NONFINITE_TARGET if where == "target" else GateReason.NONFINITE_JOINT_STATE
    assert decision.hold and decision.reason is expected


def test_missing_target_and_wrong_shapes_hold(gate):
    assert passing(gate, None, state(np.zeros(4))).reason is GateReason.NONFINITE_TARGET
    assert passing(gate, np.zeros(3), state(np.zeros(4))).reason is GateReason.SHAPE_MISMATCH
    assert passing(gate, np.zeros(4), np.zeros(7)).reason is GateReason.SHAPE_MISMATCH
    assert passing(gate, np.zeros(4), None).reason is GateReason.NO_JOINT_STATE


def test_check_inputs_lets_the_node_skip_the_policy(gate):
    fresh = dict(now=NOW, frame_stamp=NOW, joint_state_stamp=NOW, has_command=True)
    assert gate.check_inputs(state(np.zeros(4)), **fresh) is None
    held = gate.check_inputs(state(np.zeros(4)), **{**fresh, "has_command": False})
    assert held.hold and held.reason is GateReason.NO_COMMAND


def test_estop_holds_until_released_and_wins_over_everything(gate):
    gate.set_estop(True)
    assert gate.estopped
    assert passing(gate, np.zeros(4), state(np.zeros(4))).reason is GateReason.ESTOP
    assert passing(gate, None, None, has_command=False, frame_stamp=None).reason is GateReason.ESTOP
    gate.set_estop(False)
    assert passing(gate, np.zeros(4), state(np.zeros(4))).reason is GateReason.OK


def test_gate_does_not_modify_its_inputs(gate):
    target = np.array([9.0, 9.0, 9.0, 9.0])
    joint_state = state(np.zeros(4))
    passing(gate, target, joint_state)
    np.testing.assert_array_equal(target, [9.0] * 4)
    np.testing.assert_array_equal(joint_state, np.zeros(8))


def test_random_targets_and_states_always_give_commands_within_limits_and_step(limits):
    """Property: any passed command lies within the position limits and one step of the state."""
    rng = np.random.default_rng(0)
    for trial in range(3000):
        max_step = None if trial % 3 else rng.uniform(0.001, 0.5, size=4)
        gate = SafetyGate(limits, control_period=rng.uniform(0.005, 0.5), max_step=max_step)
        span = UPPER - LOWER
        # States mostly inside, sometimes slightly or far outside the limits; wild targets.
        position = rng.uniform(LOWER - 0.3 * span, UPPER + 0.3 * span)
        if trial % 2:
            position = np.clip(position, LOWER, UPPER)
        scale = 10.0 ** rng.uniform(-3, 3)
        target = position + rng.normal(scale=scale, size=4)
        decision = passing(gate, target, state(position, rng.normal(size=4)))
        if decision.hold:
            assert decision.reason is GateReason.JOINT_STATE_OUT_OF_LIMITS
            outside = np.maximum(LOWER - position, position - UPPER)
            assert np.any(outside > gate.max_step)
            continue
        command = decision.command
        assert command.shape == (4,) and np.all(np.isfinite(command))
        assert np.all(command >= LOWER) and np.all(command <= UPPER)
        assert np.all(np.abs(command - position) <= gate.max_step + 1e-9)
        if not decision.clamped_to_limits and not decision.rate_limited:
            np.testing.assert_array_equal(command, target)


def test_random_corruptions_always_hold(gate):
    """Property: a NaN/Inf anywhere or a stale stamp never lets a command through."""
    rng = np.random.default_rng(1)
    for _ in range(1000):
        target = rng.uniform(-1, 1, size=4)
        joint_state = state(rng.uniform(-0.4, 0.4, size=4), rng.normal(size=4))
        corruption = rng.integers(4)
        stamps = dict(frame_stamp=NOW, joint_state_stamp=NOW)
        if corruption == 0:
            target[rng.integers(4)] = rng.choice([np.nan, np.inf, -np.inf])
        elif corruption == 1:
            joint_state[rng.integers(8)] = rng.choice([np.nan, np.inf, -np.inf])
        elif corruption == 2:
            stamps["frame_stamp"] = NOW - rng.uniform(0.5001, 1e4)
        else:
            stamps["joint_state_stamp"] = NOW - rng.uniform(0.2001, 1e4)
        assert passing(gate, target, joint_state, **stamps).hold


@pytest.mark.parametrize("velocity", [1e308, -1e308, 10.01 * 3.0])
def test_an_implausible_joint_velocity_holds(gate, velocity):
    decision = passing(gate, np.zeros(4), state(np.zeros(4), [0.0, 0.0, 0.0, velocity]))
    assert decision.hold and decision.reason is GateReason.IMPLAUSIBLE_JOINT_VELOCITY


def test_fast_but_possible_joint_velocities_pass(gate):
    # up to ten times the URDF limit still passes (overshoot, sensor noise); the step cap limits the command
    decision = passing(gate, np.zeros(4), state(np.zeros(4), 9.9 * VELOCITY))
    assert decision.reason is GateReason.OK
