"""vla_node's input callbacks: validate a camera frame, joint state or command and hand it to the controller.

They run on the executor thread and only check and store (decoding waits for the control step). A rejected input
is counted in ``/diagnostics`` under one of the ``REJECT_*`` keys and logged at most once per ``log_throttle_s``
per kind, with its content truncated (:func:`vla_ros.nodes.node_support.for_log`); what it would have replaced
is cleared, so the safety gate holds instead of acting on stale data.
"""

from __future__ import annotations

import time
from typing import Callable

from sensor_msgs.msg import CompressedImage, Image, JointState

from vla_ros.nodes.node_support import for_log
from vla_ros.ros.conversions import (
    NonFiniteJointStateError,
    joint_state_to_arrays,
    stamp_to_seconds,
    validate_command,
    validate_compressed_image,
    validate_image,
)

# Diagnostics counter keys for inputs rejected before they reach the policy.
REJECT_MALFORMED_IMAGE = "rejected.malformed_image"
REJECT_BAD_COMMAND = "rejected.bad_command"
REJECT_BAD_JOINT_STATE = "rejected.bad_joint_state"
REJECT_NAN_JOINT_STATE = "rejected.nan_joint_state"


class InputCallbacks:
    """Frame, joint-state and command intake for ``controller`` (a :class:`vla_ros.controller.Controller`).

    ``now`` is the node clock (s), ``logger`` the node's logger, ``joint_names`` a callable giving the robot's
    joint order (known after configure).
    """

    def __init__(self, controller, stats, now: Callable[[], float], logger, joint_names: Callable[[], list[str]],
                 log_throttle_s: float = 5.0):
        self.controller, self.stats, self.now, self.logger = controller, stats, now, logger
        self.joint_names = joint_names
        self.log_throttle_s = float(log_throttle_s)
        self._last_log: dict[str, float] = {}

    def reject(self, key: str, message: str) -> None:
        """Count a rejected input and log it, at most once per ``log_throttle_s`` per kind."""
        self.stats.count(key)
        now = time.monotonic()
        if now - self._last_log.get(key, float("-inf")) >= self.log_throttle_s:
            self._last_log[key] = now
            self.logger.warning(f"{key}: {for_log(message)} (counted in /diagnostics; holding position)")

    def on_image(self, msg: Image | CompressedImage) -> None:
        """Check a frame's header and size; store it with its stamp (the receive time when unstamped)."""
        try:
            validate_compressed_image(msg) if isinstance(msg, CompressedImage) else validate_image(msg)
        except ValueError as error:
            self.controller.clear_frame()
            self.reject(REJECT_MALFORMED_IMAGE, str(error))
            return
        now, stamp = self.now(), stamp_to_seconds(msg.header.stamp)
        stamp = stamp if stamp > 0 else now  # some drivers leave it at zero: the receive time is the best guess
        if 0.0 <= now - stamp < 10.0:
            self.stats.add_latency("transport", now - stamp)  # header stamp -> here (and any clock offset)
        self.controller.set_frame(msg, stamp)

    def on_joint_state(self, msg: JointState) -> None:
        """Map a joint state onto the robot's joints (finite values only) and store it."""
        try:
            positions, velocities = joint_state_to_arrays(msg, self.joint_names())
        except ValueError as error:
            self.controller.clear_joint_state()
            nan = isinstance(error, NonFiniteJointStateError)
            self.reject(REJECT_NAN_JOINT_STATE if nan else REJECT_BAD_JOINT_STATE, str(error))
            return
        stamp = stamp_to_seconds(msg.header.stamp)
        self.controller.set_joint_state(positions, velocities, stamp if stamp > 0 else self.now())

    def follow(self, text) -> tuple[int | None, str | None]:
        """Make ``text`` the command: (its serial, None), or (None, why not). An unreadable one still holds."""
        try:
            command = validate_command(text)
        except ValueError as error:  # the operator meant to change the task: continuing the old one is wrong
            self.controller.set_command(None)
            return None, str(error)
        serial, changed = self.controller.set_command(command)
        if changed:
            policy = self.controller.policy
            reading = policy.reading(command) if policy is not None and hasattr(policy, "reading") else None
            read_as = f" (read as {for_log(repr(reading[0]))})" if reading and reading[1] else ""
            self.logger.info(f"command: {for_log(repr(command))}{read_as}")
        return serial, None
