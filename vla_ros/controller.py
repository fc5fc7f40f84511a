"""vla_node's control logic without rclpy: inputs, commands, joint maps, the control step and its scheduling.

The node (``vla_ros.nodes.vla_node``) is a shell around :class:`Controller`: its callbacks hand inputs over
(already validated and converted), its control thread runs :meth:`Controller.run`, and it publishes what each
:class:`StepResult` says. Everything here is tested directly (``tests/test_controller.py``), as image_pipeline
keeps its calibration algorithm apart from its node.

Each step: gate pre-check (e-stop, command, inputs present, finite, plausible, fresh) -> decode the frame ->
policy (a new command starts a new episode for it: ``Policy.reset``) -> safety gate -> the joint command in the
controller's joint order. A refused command or a failing policy holds; the step says why.

Scheduling (:meth:`Controller.run`): ``timer`` steps every control period on the steady clock, or on the clock
``now`` reads (ROS time, i.e. ``/clock`` under ``use_sim_time``) when ``clock_paced``; ``frame`` steps as soon
as a new frame and a joint state at least as new have arrived, at most once per half period. Missed ticks are
skipped, never made up in a burst. A step acts on a frame once when ``require_new_frame`` (lockstep simulation).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable

import numpy as np

from vla_ros.safety import GateDecision, GateReason, JointLimits, SafetyGate
from vla_ros.stats import NodeStats

TRIGGERS = ("timer", "frame")
HOLD_POLICY_ERROR = "hold.policy_error"
HOLD_COMMAND_DONE = "hold.command_done"  # the policy's done signal fired for the current command
HOLD_REFUSED_COMMAND = "hold.refused_command"


def hold_key(reason: GateReason) -> str:
    """Diagnostics counter key of a gate hold reason, e.g. ``hold.stale_frame``."""
    return f"hold.{reason.value}"


@dataclass
class Stamped:
    """The latest message of an input with the time (s, node clock) it stands for."""

    value: object
    stamp: float
    received: float = 0.0  # time.perf_counter() when it was stored (latency breakdown)


@dataclass
class StepResult:
    """What one control step decided; the node publishes from it."""

    serial: int  # the command serial the step ran for
    command: str | None
    decision: GateDecision | None = None  # None: the policy refused or failed (a hold)
    joint_command: np.ndarray | None = None  # in output joint order; None = publish nothing
    refusal: object | None = None  # the policy's Refusal, when it refused
    error: str | None = None  # why the policy step failed
    acted: bool = False  # the policy ran
    done: bool = False  # the policy's done signal fired for this command (this step or before): holding
    rgb: np.ndarray | None = None  # the decoded frame (debug images)
    header: object | None = None  # the frame message's header (stamps of debug images)

    @property
    def hold_reason(self) -> str:
        """``""`` when commands flow, else why the step holds."""
        if self.refusal is not None:
            return "refused_command"
        if self.done:
            return "command_done"
        if self.error is not None:
            return "policy_error"
        return self.decision.reason.value if self.decision is not None and self.decision.hold else ""


class Controller:
    """Inputs, command, policy binding and the control step of one arm; thread-safe between callbacks and loop."""

    def __init__(self, stats: NodeStats, now: Callable[[], float], decode: Callable[[object], np.ndarray],
                 control_period: float, require_new_frame: bool = False) -> None:
        """``now``: node-clock seconds; ``decode``: frame message -> RGB array (the node's converter)."""
        if not 0 < control_period < 10:
            raise ValueError(f"control period must be in (0, 10) s, got {control_period}")
        self.stats = stats
        self.now = now
        self.decode = decode
        self.control_period = float(control_period)
        self.require_new_frame = bool(require_new_frame)
        self.input_lock = threading.Lock()
        # held through a step (and by the node through publishing it): waiting on it waits for a step in flight
        self.step_lock = threading.RLock()
        self.new_input = threading.Event()
        self.frame: Stamped | None = None
        self.joint_state: Stamped | None = None  # (positions, velocities) in robot joint order
        self.command: str | None = None
        self.command_serial = 0
        self.recent_messages: deque = deque(maxlen=32)  # keys of command messages seen (latched duplicates)
        self.policy = None
        self.gate: SafetyGate | None = None
        self.joint_names: tuple[str, ...] = ()  # the policy's joint order
        self.output_names: tuple[str, ...] = ()
        self._policy_index = self._output_index = np.zeros(0, int)
        self._policy_serial = 0
        self._done_serial = -1  # the command serial whose done signal fired (held until the command changes)
        self._last_frame_stamp: float | None = None
        self.estopped = False

    # ---------------------------------------------------------------------------------- inputs

    def set_frame(self, value, stamp: float) -> None:
        """Store the newest frame (validated, not decoded) and wake a frame-triggered loop."""
        with self.input_lock:
            self.frame = Stamped(value, stamp, time.perf_counter())
        self.new_input.set()

    def set_joint_state(self, positions: np.ndarray, velocities: np.ndarray, stamp: float) -> None:
        """Store the newest joint state (robot joint order)."""
        with self.input_lock:
            self.joint_state = Stamped((positions, velocities), stamp, time.perf_counter())
        self.new_input.set()

    def clear_frame(self) -> None:
        """Forget the frame (a broken camera must not leave an older frame in use)."""
        with self.input_lock:
            self.frame = None

    def clear_joint_state(self) -> None:
        """Forget the joint state (a broken or NaN one must not leave an older one in use)."""
        with self.input_lock:
            self.joint_state = None

    def seen(self, message_key) -> bool:
        """True if a command message with this key was handled already (``None``: unknown, never seen)."""
        if message_key is None:
            return False
        with self.input_lock:
            if message_key in self.recent_messages:
                return True
            self.recent_messages.append(message_key)
        return False

    def set_command(self, command: str | None) -> tuple[int, bool]:
        """Make ``command`` (validated; ``None`` holds) current, a new episode: (its serial, whether it changed)."""
        with self.input_lock:
            changed = command != self.command
            self.command = command
            self.command_serial += 1
            if command is not None and getattr(self.policy, "reference_frame", False):
                # The policy remembers the first frame of each command as where the objects are: take it
                # from a frame received after the command, not one of the scene before.
                self.frame = None
            return self.command_serial, changed

    def drop_command(self, serial: int | None = None, wait_for_step: bool = False) -> str | None:
        """Hold: drop the command (only if it is still command ``serial``, when given); returns the dropped one.

        ``wait_for_step`` also waits for a step in flight, so nothing is published for it after this returns (the
        lock is re-entrant: on the control thread itself it does not wait).
        """
        with self.input_lock:
            dropped = self.command
            if serial is None or serial == self.command_serial:
                self.command = None
        if wait_for_step:
            with self.step_lock:
                pass
        return dropped

    def set_estop(self, engaged: bool) -> bool:
        """Engage or release the e-stop; True if that changed it. Releasing also drops the command (ISO 13850)."""
        changed = self.estopped != bool(engaged)
        self.estopped = bool(engaged)
        gate = self.gate
        if gate is not None:
            gate.set_estop(self.estopped)
        if not engaged:
            self.drop_command()
        return changed

    def summary(self, active: bool, refused_reason: str | None = None) -> tuple[bool, str]:
        """(whether it is a warning, a one-line state) for diagnostics: e-stop, waiting, refused or running."""
        if self.estopped:
            return True, "e-stop engaged"
        if not active:
            return False, "inactive"
        if self.command is None:
            return False, "waiting for a command"
        if refused_reason:
            return True, f"command refused: {refused_reason}"
        return False, "running"

    # ------------------------------------------------------------------------------ the policy

    def bind(self, policy, robot_limits: JointLimits, output_joint_names: tuple[str, ...] = (),
             max_step: float | None = None, max_frame_age_s: float = 0.5,
             max_joint_state_age_s: float = 0.5) -> None:
        """Use ``policy``: joint maps (robot -> policy order, policy -> output order) and a safety gate."""
        joint_names = tuple(policy.joint_names)
        robot_names = robot_limits.joint_names
        missing = [name for name in joint_names if name not in robot_names]
        if missing:
            raise ValueError(f"the policy's joints {missing} are not in the robot description {robot_names}")
        output_names = tuple(output_joint_names) or joint_names
        if sorted(output_names) != sorted(joint_names):
            raise ValueError(f"output_joint_names {output_names} are not the policy's joints {joint_names}")
        gate = SafetyGate(robot_limits.reordered(joint_names), control_period=self.control_period,
                          max_step=max_step, max_frame_age_s=max_frame_age_s,
                          max_joint_state_age_s=max_joint_state_age_s)
        gate.set_estop(self.estopped)
        policy.reset()
        with self.step_lock:
            self._policy_index = np.array([robot_names.index(name) for name in joint_names])
            self._output_index = np.array([joint_names.index(name) for name in output_names])
            self.joint_names, self.output_names = joint_names, output_names
            self.policy, self.gate = policy, gate
            self._policy_serial = self.command_serial
            self._last_frame_stamp = None

    def unbind(self) -> None:
        """Stop using the policy (after a step in flight)."""
        with self.step_lock:
            self.policy, self.gate = None, None

    # -------------------------------------------------------------------------------- the step

    def is_new_observation(self, frame: Stamped | None, joint: Stamped | None) -> bool:
        """Lockstep: a frame not acted on yet, and a joint state at least as new (same sim step)."""
        if frame is None or frame.stamp == self._last_frame_stamp:
            return False
        return joint is None or joint.stamp >= frame.stamp

    def step(self) -> StepResult | None:
        """One control step (None: no policy bound, or no new frame where one is required)."""
        with self.step_lock:
            policy, gate = self.policy, self.gate
            if policy is None or gate is None:
                return None
            start = time.perf_counter()
            with self.input_lock:
                frame, joint, command, serial = self.frame, self.joint_state, self.command, self.command_serial
            if self.require_new_frame and not self.is_new_observation(frame, joint):
                return None
            result = self._step(policy, gate, frame, joint, command, serial, start)
            self._account(result.decision, start)
            return result

    def _step(self, policy, gate: SafetyGate, frame, joint, command, serial: int, start: float) -> StepResult:
        now = self.now()
        result = StepResult(serial=serial, command=command)
        joint_state = None
        if joint is not None:  # robot joint order -> policy joint order, positions then velocities
            positions, velocities = joint.value
            joint_state = np.concatenate([positions[self._policy_index], velocities[self._policy_index]])
            self.stats.set_value("joint_state_age_s", f"{now - joint.stamp:.3f}")
        if frame is not None:
            self.stats.set_value("frame_age_s", f"{now - frame.stamp:.3f}")
        stamps = (now, frame and frame.stamp, joint and joint.stamp, command is not None)
        self.stats.count("steps")
        # Validation first: the policy (the expensive part) runs only if the gate could pass a command.
        result.decision = gate.check_inputs(joint_state, *stamps)
        if result.decision is not None:
            # a chunked policy's plan was made for the scene before this hold: it must not resume with it
            getattr(policy, "discard_plan", lambda: None)()
            return result
        if frame.stamp != self._last_frame_stamp:  # received -> acted on: the wait for this step
            self.stats.add_latency("queued", start - frame.received)
        self._last_frame_stamp = frame.stamp
        result.header = getattr(frame.value, "header", None)
        try:
            decode_start = time.perf_counter()
            result.rgb = self.decode(frame.value)
            policy_start = time.perf_counter()
            self.stats.add_latency("decode", policy_start - decode_start)
            if serial != self._policy_serial:  # a new command starts a new episode for the policy
                policy.reset()
                self._policy_serial = serial
            if serial == self._done_serial:  # fulfilled: hold until a new command (no drift)
                result.done = True
                self.stats.count(HOLD_COMMAND_DONE)
                return result
            result.acted = True
            target = policy.select_action(result.rgb, command, joint_state)
            self.stats.add_latency("policy", time.perf_counter() - policy_start)
        except Exception as error:  # a failing policy must not stop the node; hold and report
            result.acted = False
            refusal = getattr(error, "refusal", None)  # Policy's CommandRefused (torch loads lazily, not here)
            if refusal is not None:  # nothing in view matches the command: hold still and say why
                result.refusal = refusal
                self.stats.count(HOLD_REFUSED_COMMAND)
            else:  # the caller reports it (and counts HOLD_POLICY_ERROR)
                result.error = f"policy step failed: {type(error).__name__}: {error}"
            return result
        if getattr(policy, "has_done_signal", False) and getattr(policy, "last_done", False):
            result.done, self._done_serial = True, serial  # this frame shows the command fulfilled: stop here
            self.stats.count(HOLD_COMMAND_DONE)
            return result
        gate_start = time.perf_counter()
        result.decision = gate.filter(target, joint_state, *stamps)
        self.stats.add_latency("gate", time.perf_counter() - gate_start)
        if result.decision.command is not None:
            result.joint_command = result.decision.command[self._output_index]
        return result

    def _account(self, decision: GateDecision | None, start: float) -> None:
        if decision is not None:
            self.stats.count(hold_key(decision.reason) if decision.hold else "commands_published")
            self.stats.count("clamped_to_limits", int(decision.clamped_to_limits))
            self.stats.count("rate_limited", int(decision.rate_limited))
        elapsed = time.perf_counter() - start
        self.stats.add_latency("step", elapsed)
        if elapsed > self.control_period:
            self.stats.count("deadline_misses")

    # ---------------------------------------------------------------------------- scheduling

    def run(self, stop: threading.Event, on_step: Callable[[], None], trigger: str = "timer",
            clock_paced: bool = False, poll_s: float = 0.002) -> None:
        """Call ``on_step`` (which steps and publishes) as ``trigger`` says until ``stop`` is set."""
        if trigger not in TRIGGERS:
            raise ValueError(f"control trigger must be one of {TRIGGERS}, got {trigger!r}")
        period = self.control_period
        if trigger == "frame":
            self._run_on_frames(stop, on_step, period)
        elif clock_paced:
            self._run_on_clock(stop, on_step, period, poll_s)
        else:
            self._run_on_steady_clock(stop, on_step, period)

    @staticmethod
    def _run_on_steady_clock(stop: threading.Event, on_step: Callable[[], None], period: float) -> None:
        next_tick = time.monotonic()
        while not stop.is_set():
            on_step()
            next_tick += period
            delay = next_tick - time.monotonic()
            if delay < 0:  # overran: skip the missed ticks (never burst to catch up on old frames)
                next_tick += np.ceil(-delay / period) * period
                delay = next_tick - time.monotonic()
            stop.wait(max(0.0, delay))

    def _run_on_clock(self, stop: threading.Event, on_step: Callable[[], None], period: float,
                      poll_s: float) -> None:
        """A step every ``period`` of ``now`` (simulated) time; none while it stands still; restart if it jumps back."""
        next_tick = None
        while not stop.is_set():
            now = self.now()
            if next_tick is None or now < next_tick - 2 * period:  # start, or the simulator was reset
                next_tick = now
            if now >= next_tick:
                on_step()
                next_tick += period
                if now >= next_tick:  # overran: skip the missed ticks, as on the steady clock
                    next_tick += np.ceil((now - next_tick) / period + 1e-9) * period
            stop.wait(poll_s)

    def _run_on_frames(self, stop: threading.Event, on_step: Callable[[], None], period: float) -> None:
        # a new input wakes the loop; a step acts only on a frame not acted on yet with a joint state at
        # least as new, and never sooner than half a period after the last step (a burst of frames)
        last_step = -np.inf
        while not stop.is_set():
            self.new_input.wait(timeout=period)
            self.new_input.clear()
            wait = last_step + 0.5 * period - time.monotonic()
            if wait > 0 and stop.wait(wait):
                return
            with self.input_lock:
                ready = self.is_new_observation(self.frame, self.joint_state)
            if not ready:
                continue
            last_step = time.monotonic()
            on_step()
