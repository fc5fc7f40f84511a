"""In simulation: the MuJoCo bridge (camera, joints, controller), the VLA node, robot_state_publisher.

ros2 launch vla_ros sim.launch.py task:=reach
ros2 launch vla_ros sim.launch.py robot:=so101   # the SO-101 and its checkpoint, models/so101
"""

from launch.substitutions import LaunchConfiguration

from launch import LaunchDescription
from vla_ros.graph import sim_graph
from vla_ros.launch_support import (
    declare_arguments,
    large_data_transport_action,
    node_action,
    robot_state_publisher_action,
    vla_overrides,
)

SIM_ARGUMENTS = (
    ("task", "reach", "simulated task: reach or push"),
    ("image_size", "64", "simulated camera resolution in pixels (square)"),
)


def generate_launch_description():
    sim_spec, vla_spec = sim_graph()
    sim_overrides = {"task": LaunchConfiguration("task"), "image_size": LaunchConfiguration("image_size"),
                     "robot": LaunchConfiguration("robot")}
    return LaunchDescription([
        large_data_transport_action(),
        *declare_arguments(SIM_ARGUMENTS),
        robot_state_publisher_action(),
        node_action(sim_spec, sim_overrides),
        node_action(vla_spec, vla_overrides()),
    ])
