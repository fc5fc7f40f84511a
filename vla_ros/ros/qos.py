"""QoS profiles of the topic table in docs/ARCHITECTURE.md.

Subscriptions use the table's profiles. Publishers that stand in for other software (the simulator
acting as camera driver and ros2_control) use what that software uses, so that any subscriber that
works against the real robot also works against the simulator.
"""

from __future__ import annotations

from rclpy.qos import (
    DurabilityPolicy,
    HistoryPolicy,
    QoSProfile,
    ReliabilityPolicy,
    qos_profile_sensor_data,
)

# Camera frames: only the newest frame matters; a lost frame is replaced 33 ms later, so never
# retransmit or queue (a queue would make the policy act on old frames).
CAMERA_QOS = QoSProfile(
    history=HistoryPolicy.KEEP_LAST,
    depth=1,
    reliability=ReliabilityPolicy.BEST_EFFORT,
    durability=DurabilityPolicy.VOLATILE,
)

# Language command: latched, so a node that starts (or restarts) after the command was sent
# still receives the current one.
COMMAND_QOS = QoSProfile(
    history=HistoryPolicy.KEEP_LAST,
    depth=1,
    reliability=ReliabilityPolicy.RELIABLE,
    durability=DurabilityPolicy.TRANSIENT_LOCAL,
)

# A second command subscription, volatile: it also matches publishers with default QoS (`ros2 topic pub`,
# GUIs, voice nodes), which a transient-local subscription does not. A latched publisher reaches both
# subscriptions; vla_node drops the second copy (same publisher and sequence number).
COMMAND_VOLATILE_QOS = QoSProfile(
    history=HistoryPolicy.KEEP_LAST,
    depth=10,
    reliability=ReliabilityPolicy.RELIABLE,
    durability=DurabilityPolicy.VOLATILE,
)

# joint_states subscriptions: sensor data (best effort matches both best-effort and reliable
# publishers such as joint_state_broadcaster).
JOINT_STATES_QOS = qos_profile_sensor_data

# joint_states as joint_state_broadcaster publishes them (system default: reliable, depth 10).
JOINT_STATES_PUBLISHER_QOS = QoSProfile(
    history=HistoryPolicy.KEEP_LAST, depth=10, reliability=ReliabilityPolicy.RELIABLE
)

# Joint commands to ros2_control: reliable, and only the newest one is worth delivering.
JOINT_COMMAND_QOS = QoSProfile(
    history=HistoryPolicy.KEEP_LAST,
    depth=1,
    reliability=ReliabilityPolicy.RELIABLE,
    durability=DurabilityPolicy.VOLATILE,
)

# A recorder keeps every joint command: reliable as the publisher is, with a queue for a loaded machine (the
# controller's depth 1 lost 2 of 175 commands in a recording with the 2 cores fully loaded, CI 2026-12-06).
JOINT_COMMAND_RECORDING_QOS = QoSProfile(
    history=HistoryPolicy.KEEP_LAST,
    depth=50,
    reliability=ReliabilityPolicy.RELIABLE,
    durability=DurabilityPolicy.VOLATILE,
)

# Debug images are for humans; drop rather than queue.
DEBUG_IMAGE_QOS = CAMERA_QOS

# The viewing camera (videos and recordings): every frame is a video frame, so reliable with a short queue; a
# best-effort, depth-1 profile lost 8 of 175 640x480 frames with the 2 cores fully loaded. Best-effort subscribers
# (Foxglove) still match.
VIEW_QOS = QoSProfile(
    history=HistoryPolicy.KEEP_LAST,
    depth=10,
    reliability=ReliabilityPolicy.RELIABLE,
)

# /diagnostics and small status/event topics (episode status, grounding scores).
DIAGNOSTICS_QOS = QoSProfile(
    history=HistoryPolicy.KEEP_LAST, depth=10, reliability=ReliabilityPolicy.RELIABLE
)
STATUS_QOS = DIAGNOSTICS_QOS

# The current command's status (acting or refused): latched, so a late subscriber learns why the arm is still.
COMMAND_STATUS_QOS = QoSProfile(
    history=HistoryPolicy.KEEP_LAST,
    depth=1,
    reliability=ReliabilityPolicy.RELIABLE,
    durability=DurabilityPolicy.TRANSIENT_LOCAL,
)

# /clock: as Gazebo and rosbag2 publish it (reliable, volatile, a small queue)
CLOCK_QOS = QoSProfile(
    history=HistoryPolicy.KEEP_LAST,
    depth=10,
    reliability=ReliabilityPolicy.RELIABLE,
    durability=DurabilityPolicy.VOLATILE,
)
