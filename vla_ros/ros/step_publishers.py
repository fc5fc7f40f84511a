"""vla_node's outputs of a control step: the joint command, the command's status and the grounding images."""

from __future__ import annotations

import json

from sensor_msgs.msg import Image
from std_msgs.msg import Float64MultiArray, String
from trajectory_msgs.msg import JointTrajectory

from vla_ros.nodes.node_support import for_log
from vla_ros.ros import qos
from vla_ros.ros.conversions import joint_trajectory, numpy_to_image, position_command_array
from vla_ros.ros.debug_image import draw_grounding, grounding_overlay


class StepPublishers:
    """The lifecycle publishers of a configured vla_node and how each step's result goes out on them."""

    def __init__(self, node, param, output_mode: str) -> None:
        """Create the publishers on ``node``; ``param(name)`` reads a parameter."""
        self._node = node
        self.output_mode = output_mode
        command = ((Float64MultiArray, param("position_command_topic")) if output_mode == "position_array"
                   else (JointTrajectory, param("trajectory_topic")))
        self._pubs = {key: node.create_lifecycle_publisher(msg, topic, profile) for key, msg, topic, profile in (
            ("command", *command, qos.JOINT_COMMAND_QOS),
            ("debug_image", Image, param("debug_image_topic"), qos.DEBUG_IMAGE_QOS),
            ("heatmap", Image, param("heatmap_image_topic"), qos.DEBUG_IMAGE_QOS),
            ("scores", String, param("grounding_scores_topic"), qos.STATUS_QOS),
            ("status", String, param("command_status_topic"), qos.COMMAND_STATUS_QOS),
        )}
        self._status: tuple | None = None  # (command, (state, kind, reason)) last published

    def destroy(self) -> None:
        """Destroy every publisher."""
        for publisher in self._pubs.values():
            self._node.destroy_lifecycle_publisher(publisher)
        self._pubs = {}

    def joint_command(self, command, joint_names: tuple[str, ...], period: float) -> None:
        """Publish a joint command (output joint order) as the configured message."""
        if self.output_mode == "position_array":
            self._pubs["command"].publish(position_command_array(command))
        else:
            self._pubs["command"].publish(joint_trajectory(joint_names, command, period))

    def grounding(self, policy, command: str, rgb, header) -> None:
        """Publish the per-object scores, the heatmap over the policy's frame and the annotated debug image."""
        scores = getattr(policy, "last_grounding", None)
        if scores:
            self._pubs["scores"].publish(String(data=json.dumps({"command": command, "scores": scores})))
        overlay = grounding_overlay(policy, rgb)
        for key, image in (("heatmap", overlay), ("debug_image", draw_grounding(overlay, command, scores))):
            self._pubs[key].publish(numpy_to_image(image, "rgb8", header.stamp, header.frame_id))

    def status(self, command: str, refusal, presence: float | None, done: bool = False) -> None:
        """Publish the command's status when it changes: acting, done (holding), or refused with the reason."""
        status = ("refused", refusal.kind, refusal.reason) if refusal is not None else (
            ("done", "", "the policy's done signal fired: holding position") if done else ("acting", "", ""))
        if (command, status) == self._status:
            return
        self._status = (command, status)
        if refusal is not None:
            self._node.get_logger().warning(f"refusing command: {for_log(refusal.reason)}; holding position")
        message = {"command": command, "state": status[0], "kind": status[1], "reason": status[2],
                   "presence": None if presence is None else round(float(presence), 4)}
        self._pubs["status"].publish(String(data=json.dumps(message)))

    def refused_reason(self, command: str | None) -> str | None:
        """Why ``command`` is refused, if its last published status says it is."""
        status = self._status
        return status[1][2] if status and status[0] == command and status[1][0] == "refused" else None
