"""The node graphs of vla_ros, as data: one definition for the launch files and the process runner.

``launch/*.launch.py`` turn these specs into ``launch_ros`` ``Node`` actions; ``vla_ros.launcher``
starts the same specs as plain processes where ``ros2 launch`` is not installed.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from vla_ros.paths import share_path

PACKAGE = "vla_ros"


@dataclass(frozen=True)
class NodeSpec:
    """One node of a graph: which executable, its name, parameter files, overrides and remaps."""

    executable: str  # console script name (ros2 run vla_ros <executable>)
    module: str  # python module with main(), for the process runner
    name: str
    param_files: tuple[str, ...] = ()  # paths relative to the share folder, e.g. config/vla_node.yaml
    parameters: dict = field(default_factory=dict)
    remappings: dict = field(default_factory=dict)
    namespace: str = ""  # e.g. "/robot1"; config/*.yaml (keyed /**) apply in any namespace

    @property
    def key(self) -> str:
        """A name unique within several namespaced graphs: ``vla_node``, ``robot1.vla_node``."""
        return ".".join([*self.namespace.strip("/").split("/"), self.name]) if self.namespace else self.name

    def param_file_paths(self) -> list[str]:
        """Absolute paths of the parameter files."""
        return [str(share_path(*p.split("/"))) for p in self.param_files]


def vla_node_spec(parameters: dict | None = None, remappings: dict | None = None) -> NodeSpec:
    """The VLA node: camera + command + joint states -> joint commands."""
    return NodeSpec(
        executable="vla_node",
        module="vla_ros.nodes.vla_node",
        name="vla_node",
        param_files=("config/vla_node.yaml",),
        parameters=dict(parameters or {}),
        remappings=dict(remappings or {}),
    )


def sim_node_spec(parameters: dict | None = None, remappings: dict | None = None) -> NodeSpec:
    """The MuJoCo simulator bridge standing in for the robot and its camera."""
    return NodeSpec(
        executable="sim_node",
        module="vla_ros.nodes.sim_node",
        name="sim_node",
        param_files=("config/sim_node.yaml",),
        parameters=dict(parameters or {}),
        remappings=dict(remappings or {}),
    )


def robot_graph(vla_parameters: dict | None = None) -> list[NodeSpec]:
    """Nodes started on a real robot (robot_state_publisher is added by the launch file)."""
    return [vla_node_spec(vla_parameters)]


def sim_graph(vla_parameters: dict | None = None, sim_parameters: dict | None = None,
              namespace: str = "", robot: str = "") -> list[NodeSpec]:
    """Nodes of the closed loop in simulation: simulator bridge + VLA node (in ``namespace``, if given).

    ``robot`` (a robot file's name or path) sets both nodes' ``robot`` parameter, so the simulator builds that
    arm and the VLA node loads its checkpoint (``models/<robot>`` unless ``policy_path`` says otherwise).

    The simulator publishes one frame per control step, so the VLA node acts on each new frame
    (``control_trigger: frame``) instead of on a timer that drifts in phase against the simulator's.
    """
    vla_parameters = {"control_trigger": "frame", **({"robot": robot} if robot else {}), **(vla_parameters or {})}
    sim_parameters = {**({"robot": robot} if robot else {}), **(sim_parameters or {})}
    specs = [sim_node_spec(sim_parameters), vla_node_spec(vla_parameters)]
    return [replace(spec, namespace=namespace) for spec in specs] if namespace else specs
