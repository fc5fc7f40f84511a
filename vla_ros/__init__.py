"""vla_ros: language-commanded robot arm control from a camera, on ROS 2.

Camera frame + command text -> CLIP grounding -> fused embedding -> PPO policy -> joint commands.
Importing the package never imports rclpy; only ``vla_ros.ros`` and ``vla_ros.nodes`` do.
"""

__version__ = "0.1.0"
