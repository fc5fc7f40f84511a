"""Safety gate between the policy and the joint command publisher (no ROS imports).

The gate turns a policy's absolute joint position target into a command that is safe to send to a
position controller, or into a *hold* decision (no command; the controller keeps its last target):

* hold while e-stopped, when no language command is active, when the camera frame or the joint state
  is missing or older than its maximum age, and on NaN/Inf anywhere in the target or joint state;
* otherwise clamp the target to the URDF position limits and limit the change from the measured
  position to ``max_step`` per control period (derived from the URDF velocity limits).

Every decision carries a machine-readable :class:`GateReason` so the node can count reasons in its
diagnostics. Times are plain float seconds on one clock (the node's ROS clock).
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

import numpy as np

# Measured positions may sit a hair outside the URDF limits (sensor noise, soft joint limits in
# simulation); such a state is still steered back inside. Only a state further out than one step
# (where no in-limit command within the step bound exists) makes the gate hold.
_EPS = 1e-12


class GateReason(str, enum.Enum):
    """Why the gate passed or held; values are stable strings for diagnostics keys."""

    OK = "ok"
    ESTOP = "estop"
    NO_COMMAND = "no_command"
    NO_FRAME = "no_frame"
    STALE_FRAME = "stale_frame"
    NO_JOINT_STATE = "no_joint_state"
    STALE_JOINT_STATE = "stale_joint_state"
    NONFINITE_JOINT_STATE = "nonfinite_joint_state"
    NONFINITE_TARGET = "nonfinite_target"
    SHAPE_MISMATCH = "shape_mismatch"
    JOINT_STATE_OUT_OF_LIMITS = "joint_state_out_of_limits"
    IMPLAUSIBLE_JOINT_VELOCITY = "implausible_joint_velocity"


@dataclass(frozen=True)
class GateDecision:
    """The gate's answer: a command to send (``None`` means hold) and why."""

    command: np.ndarray | None
    reason: GateReason
    clamped_to_limits: bool = False  # the target was outside the position limits
    rate_limited: bool = False  # the target was further than max_step from the measured position

    @property
    def hold(self) -> bool:
        """True when no command must be sent."""
        return self.command is None


@dataclass(frozen=True)
class JointLimits:
    """Position and velocity limits of the actuated joints, in one joint order."""

    joint_names: tuple[str, ...]
    lower: np.ndarray  # rad, (n,)
    upper: np.ndarray  # rad, (n,)
    velocity: np.ndarray  # rad/s, (n,)

    def __post_init__(self) -> None:
        """Validate shapes and values; store read-only float64 copies."""
        n = len(self.joint_names)
        if n == 0:
            raise ValueError("JointLimits needs at least one joint")
        if len(set(self.joint_names)) != n:
            raise ValueError(f"duplicate joint names: {self.joint_names}")
        for field in ("lower", "upper", "velocity"):
            value = np.array(getattr(self, field), dtype=np.float64).reshape(-1)
            if value.shape != (n,):
                raise ValueError(f"{field} has {value.size} entries for {n} joints")
            if not np.all(np.isfinite(value)):
                raise ValueError(f"{field} limits must be finite, got {value}")
            value.flags.writeable = False
            object.__setattr__(self, field, value)
        object.__setattr__(self, "joint_names", tuple(self.joint_names))
        if np.any(self.lower > self.upper):
            raise ValueError(f"lower limits exceed upper limits: {self.lower} > {self.upper}")
        if np.any(self.velocity <= 0):
            raise ValueError(f"velocity limits must be positive, got {self.velocity}")

    @classmethod
    def from_robot(cls, robot) -> JointLimits:
        """Take the limits from a ``RobotDescription`` (or anything with the same fields)."""
        if isinstance(robot, JointLimits):
            return robot
        return cls(tuple(robot.joint_names), robot.lower, robot.upper, robot.velocity)

    @property
    def num_joints(self) -> int:
        """Number of joints."""
        return len(self.joint_names)

    def reordered(self, joint_names) -> JointLimits:
        """Return the limits for ``joint_names`` in that order (e.g. the policy's joint order)."""
        names = tuple(joint_names)
        missing = [name for name in names if name not in self.joint_names]
        if missing:
            raise ValueError(f"joints {missing} have no limits; known joints: {self.joint_names}")
        index = [self.joint_names.index(name) for name in names]
        return JointLimits(names, self.lower[index], self.upper[index], self.velocity[index])


class SafetyGate:
    """Clamp, rate-limit and veto joint position targets; see the module docstring.

    ``max_step`` (rad per control period, scalar or per joint) caps the change from the measured
    position. With ``control_period`` given, the cap is at most ``velocity_limit * control_period``;
    a ``max_step`` given as well can only make it smaller.
    """

    def __init__(
        self,
        robot,
        *,
        control_period: float | None = None,
        max_step: float | np.ndarray | None = None,
        max_frame_age_s: float = 0.5,
        max_joint_state_age_s: float = 0.5,
    ) -> None:
        """Build a gate from a ``RobotDescription`` or :class:`JointLimits`."""
        self.limits = JointLimits.from_robot(robot)
        n = self.limits.num_joints
        if control_period is None and max_step is None:
            raise ValueError("give control_period (to derive the step from velocity limits) or max_step")
        step = np.full(n, np.inf)
        if control_period is not None:
            if not (math.isfinite(control_period) and control_period > 0):
                raise ValueError(f"control_period must be a positive number of seconds, got {control_period}")
            step = self.limits.velocity * float(control_period)
        if max_step is not None:
            extra = np.broadcast_to(np.asarray(max_step, dtype=np.float64), (n,))
            if not np.all(np.isfinite(extra)) or np.any(extra <= 0):
                raise ValueError(f"max_step must be positive and finite, got {max_step}")
            step = np.minimum(step, extra)
        step = step.copy()
        step.flags.writeable = False
        self.max_step = step
        for name, value in (
            ("max_frame_age_s", max_frame_age_s),
            ("max_joint_state_age_s", max_joint_state_age_s),
        ):
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive number of seconds, got {value}")
        self.max_frame_age_s = float(max_frame_age_s)
        self.max_joint_state_age_s = float(max_joint_state_age_s)
        self._estopped = False

    @property
    def estopped(self) -> bool:
        """Whether the e-stop is engaged."""
        return self._estopped

    def set_estop(self, engaged: bool) -> None:
        """Engage or release the e-stop; while engaged every decision is a hold."""
        self._estopped = bool(engaged)

    def check_inputs(
        self,
        joint_state,
        now: float,
        frame_stamp: float | None,
        joint_state_stamp: float | None,
        has_command: bool,
    ) -> GateDecision | None:
        """Return a hold decision if the inputs alone forbid motion, else ``None``.

        Lets the node skip the (expensive) policy step when the gate would hold anyway. Checks run
        in order of severity, so the reason names the most important one.
        """
        if self._estopped:
            return GateDecision(None, GateReason.ESTOP)
        if not has_command:
            return GateDecision(None, GateReason.NO_COMMAND)
        if frame_stamp is None:
            return GateDecision(None, GateReason.NO_FRAME)
        if joint_state is None or joint_state_stamp is None:
            return GateDecision(None, GateReason.NO_JOINT_STATE)
        state = np.asarray(joint_state, dtype=np.float64).reshape(-1)
        if state.shape != (2 * self.limits.num_joints,):
            return GateDecision(None, GateReason.SHAPE_MISMATCH)
        if not np.all(np.isfinite(state)):
            return GateDecision(None, GateReason.NONFINITE_JOINT_STATE)
        velocity = state[self.limits.num_joints:]
        if np.any(np.abs(velocity) > IMPLAUSIBLE_VELOCITY_FACTOR * self.limits.velocity):
            # a joint state no arm can be in (1e308 rad/s): a broken driver or a hostile publisher
            return GateDecision(None, GateReason.IMPLAUSIBLE_JOINT_VELOCITY)
        if not _is_fresh(now, frame_stamp, self.max_frame_age_s):
            return GateDecision(None, GateReason.STALE_FRAME)
        if not _is_fresh(now, joint_state_stamp, self.max_joint_state_age_s):
            return GateDecision(None, GateReason.STALE_JOINT_STATE)
        return None

    def filter(
        self,
        target,
        joint_state,
        now: float,
        frame_stamp: float | None,
        joint_state_stamp: float | None,
        has_command: bool,
    ) -> GateDecision:
        """Decide on one control step.

        ``target``: absolute joint position targets (n,) or ``None``; ``joint_state``: (2n,)
        positions then velocities, or ``None``; stamps and ``now`` in seconds, ``None`` = never
        received.
        """
        held = self.check_inputs(joint_state, now, frame_stamp, joint_state_stamp, has_command)
        if held is not None:
            return held
        n = self.limits.num_joints
        if target is None:
            return GateDecision(None, GateReason.NONFINITE_TARGET)
        goal = np.asarray(target, dtype=np.float64).reshape(-1)
        if goal.shape != (n,):
            return GateDecision(None, GateReason.SHAPE_MISMATCH)
        if not np.all(np.isfinite(goal)):
            return GateDecision(None, GateReason.NONFINITE_TARGET)
        position = np.asarray(joint_state, dtype=np.float64).reshape(-1)[:n]
        return self._clamp(goal, position)

    def _clamp(self, goal: np.ndarray, position: np.ndarray) -> GateDecision:
        lower, upper = self.limits.lower, self.limits.upper
        # The feasible set is the intersection of the position limits and the step window around
        # the measured position; it is empty only when the arm is more than a step outside its limits.
        low = np.maximum(lower, position - self.max_step)
        high = np.minimum(upper, position + self.max_step)
        if np.any(low > high + _EPS):
            return GateDecision(None, GateReason.JOINT_STATE_OUT_OF_LIMITS)
        high = np.maximum(low, high)
        in_limits = np.clip(goal, lower, upper)
        command = np.clip(in_limits, low, high)
        return GateDecision(
            command,
            GateReason.OK,
            clamped_to_limits=bool(np.any(in_limits != goal)),
            rate_limited=bool(np.any(command != in_limits)),
        )


IMPLAUSIBLE_VELOCITY_FACTOR = 10.0
"""a measured joint speed above this many times the URDF velocity limit is a broken reading: hold"""
FUTURE_STAMP_TOLERANCE_S = 0.05
"""how far ahead of the node's clock a stamp may be (clock skew between machines); beyond, it is stale"""


def _is_fresh(now: float, stamp: float, max_age: float) -> bool:
    """Whether ``stamp`` is at most ``max_age`` old and not more than a small tolerance in the future.

    A stamp from the future is a bad clock: allowing it ``max_age`` ahead would keep a frozen frame fresh
    for up to twice as long.
    """
    age = now - stamp
    return math.isfinite(age) and -min(max_age, FUTURE_STAMP_TOLERANCE_S) <= age <= max_age
