"""On a robot: the VLA node and robot_state_publisher (camera and ros2_control run elsewhere).

ros2 launch vla_ros vla.launch.py policy_path:=/path/to/policy device:=cuda
"""

from launch import LaunchDescription
from vla_ros.graph import robot_graph
from vla_ros.launch_support import (
    declare_arguments,
    large_data_transport_action,
    node_action,
    robot_state_publisher_action,
    vla_overrides,
)


def generate_launch_description():
    return LaunchDescription([
        large_data_transport_action(),
        *declare_arguments(),
        robot_state_publisher_action(),
        *(node_action(spec, vla_overrides()) for spec in robot_graph()),
    ])
