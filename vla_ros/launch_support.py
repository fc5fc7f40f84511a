"""Turns ``vla_ros.graph`` specs into ``launch_ros`` actions (used by ``launch/*.launch.py`` only).

Imports ``launch``/``launch_ros`` lazily: the rest of the package never needs them.
"""

from __future__ import annotations

import re

import yaml

from vla_ros.graph import PACKAGE, NodeSpec
from vla_ros.paths import share_path


def configured(node: str, name: str) -> str:
    """The value of parameter ``name`` in ``config/<node>.yaml``, as a launch argument's default (text).

    Launch arguments override the YAML, so their defaults must be the YAML's: one place sets each value.
    """
    section = yaml.safe_load(share_path("config", f"{node}.yaml").read_text())["/**"]["ros__parameters"]
    return str(section[name])


# (name, default, description) of the launch arguments both launch files declare.
COMMON_ARGUMENTS = (
    ("robot", configured("vla_node", "robot"),
     "robot file: a name in sim/robots (vla_arm, so101) or a path; its URDF gives limits and the robot description"),
    ("policy_path", "", "policy checkpoint folder (policy.safetensors + config.json); empty: the robot's shipped "
     "checkpoint (models/policy for vla_arm, models/<robot> for the others)"),
    ("device", configured("vla_node", "device"), "inference device of the VLA node: cpu or cuda"),
    ("backend", configured("vla_node", "backend"), "inference backend of the VLA node: torch or onnxruntime"),
    ("output_mode", configured("vla_node", "output_mode"),
     "joint command output: position_array (forward_position_controller) or trajectory"),
    ("control_rate_hz", configured("vla_node", "control_rate_hz"),
     "policy rate of the VLA node in Hz (default: config/vla_node.yaml's, the rate the policy was trained at)"),
    ("log_level", "info", "ROS log level of every node"),
    ("namespace", "", "namespace of every node (e.g. robot1); config/*.yaml apply under any namespace"),
    ("use_sim_time", "false", "run every node on /clock (sim_node publishes it) instead of the wall clock"),
)


def declare_arguments(extra=()):
    """``DeclareLaunchArgument`` actions, each with its description."""
    from launch.actions import DeclareLaunchArgument

    return [
        DeclareLaunchArgument(name, default_value=default, description=description)
        for name, default, description in (*COMMON_ARGUMENTS, *extra)
    ]


def node_action(spec: NodeSpec, overrides: dict):
    """A ``launch_ros`` ``Node`` for ``spec``: YAML params from the share folder, then overrides."""
    from launch.substitutions import LaunchConfiguration
    from launch_ros.actions import Node

    return Node(
        package=PACKAGE,
        executable=spec.executable,
        name=spec.name,
        namespace=LaunchConfiguration("namespace"),
        output="screen",
        parameters=[*spec.param_file_paths(),
                    {**spec.parameters, **overrides, "use_sim_time": LaunchConfiguration("use_sim_time")}],
        remappings=list(spec.remappings.items()),
        arguments=["--ros-args", "--log-level", LaunchConfiguration("log_level")],
    )


def vla_overrides() -> dict:
    """VLA node parameters taken from the launch arguments."""
    from launch.substitutions import LaunchConfiguration

    return {
        name: LaunchConfiguration(name)
        for name in ("robot", "policy_path", "device", "backend", "output_mode", "control_rate_hz")
    }


def large_data_transport_action():
    """The large-frame Fast DDS profile for every node of the launch, unless the environment already chooses.

    Raw VGA images between processes need it (the default transports drop almost all of them); see
    ``vla_ros.launcher.large_frame_transport_env``. Without a choice to make it sets nothing.
    """
    from launch.actions import GroupAction, SetEnvironmentVariable

    from vla_ros.launcher import large_frame_transport_env

    return GroupAction([SetEnvironmentVariable(name, value) for name, value in large_frame_transport_env().items()],
                       scoped=False)


def robot_state_publisher_action():
    """robot_state_publisher with the ``robot`` argument's URDF (the same file MuJoCo loads)."""
    from launch.actions import OpaqueFunction
    from launch.substitutions import LaunchConfiguration
    from launch_ros.actions import Node

    def publisher(context):
        urdf_text = robot_description_text(LaunchConfiguration("robot").perform(context))
        return [Node(
            package="robot_state_publisher",
            executable="robot_state_publisher",
            output="screen",
            namespace=LaunchConfiguration("namespace"),
            parameters=[{"robot_description": urdf_text, "use_sim_time": LaunchConfiguration("use_sim_time")}],
        )]

    return OpaqueFunction(function=publisher)


def robot_description_text(robot: str) -> str:
    """The URDF text of a robot file, mesh paths made absolute (robot_state_publisher reads no files itself)."""
    from vla_ros.robot_config import load_robot

    urdf = load_robot(robot or None).description.urdf_path
    relative = re.compile(r'filename="(?!package://|file://|/)([^"]+)"')  # resolved against the URDF's folder
    return relative.sub(lambda m: f'filename="file://{urdf.parent / m.group(1)}"', urdf.read_text())
