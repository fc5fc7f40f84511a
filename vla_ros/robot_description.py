"""The arm's joint names and limits, parsed from the URDF (the one source of truth).

Parsing uses ``xml.etree`` only, so this module works without ROS or MuJoCo installed.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ACTUATED_JOINT_TYPES = ("revolute", "prismatic")
DEFAULT_END_EFFECTOR_LINK = "fingertip_link"


@dataclass(frozen=True)
class RobotDescription:
    """Actuated joints of a serial arm, base to tip, with their limits (SI units)."""

    urdf_path: Path
    joint_names: tuple[str, ...]  # actuated joints, base to tip
    lower: np.ndarray  # rad, (n,)
    upper: np.ndarray  # rad, (n,)
    velocity: np.ndarray  # rad/s, (n,)
    effort: np.ndarray  # N m, (n,)
    end_effector_link: str
    gripper_joint: str | None = None  # actuated, off the arm's chain: held by the simulator, not the policy
    gripper_range: tuple[float, float] | None = None  # rad (or m), the gripper joint's limits
    gripper_effort: float | None = None

    @property
    def num_joints(self) -> int:
        """Number of actuated joints."""
        return len(self.joint_names)


def _float_attr(element: ET.Element, name: str, joint: str, path: Path) -> float:
    value = element.get(name)
    if value is None:
        raise ValueError(f"{path}: joint {joint!r} <limit> has no {name!r} attribute")
    try:
        return float(value)
    except ValueError:
        raise ValueError(f"{path}: joint {joint!r} <limit {name}={value!r}> is not a number") from None


def _chain_from_root(joints: list[ET.Element], path: Path,
                     end_effector_link: str | None) -> tuple[list[ET.Element], str, list[ET.Element]]:
    """Joints on the path from the root link to ``end_effector_link`` (base to tip), that link, and the rest.

    Without an end effector the tree must be a single chain, whose last link is the tip. With one, the tree
    may branch (a gripper's jaw hangs off the wrist): the joints off the path come back as the third item.
    """
    by_parent: dict[str, list[ET.Element]] = {}
    by_child: dict[str, ET.Element] = {}
    for joint in joints:
        parent = joint.find("parent")
        child = joint.find("child")
        if parent is None or child is None:
            raise ValueError(f"{path}: joint {joint.get('name')!r} lacks <parent> or <child>")
        by_parent.setdefault(parent.get("link"), []).append(joint)
        by_child[child.get("link")] = joint
    roots = [link for link in by_parent if link not in by_child]
    if len(roots) != 1:
        raise ValueError(f"{path}: expected one root link, found {roots}")
    if end_effector_link is None:
        chain, link = [], roots[0]
        while link in by_parent:
            next_joints = by_parent[link]
            if len(next_joints) != 1:
                raise ValueError(f"{path}: link {link!r} branches; name the end effector link "
                                 "(the robot file's end_effector_link) to choose the arm's chain")
            chain.append(next_joints[0])
            link = next_joints[0].find("child").get("link")
        return chain, link, []
    chain, link = [], end_effector_link
    while link in by_child:
        chain.append(by_child[link])
        link = by_child[link].find("parent").get("link")
    chain.reverse()
    on_chain = {id(j) for j in chain}
    return chain, end_effector_link, [j for j in joints if id(j) not in on_chain]


def _limits(joint: ET.Element, path: Path) -> tuple[float, float, float, float]:
    name = joint.get("name")
    limit = joint.find("limit")
    if limit is None:
        raise ValueError(f"{path}: joint {name!r} has no <limit>; every actuated joint needs one")
    lo, hi = _float_attr(limit, "lower", name, path), _float_attr(limit, "upper", name, path)
    if not lo < hi:
        raise ValueError(f"{path}: joint {name!r} has lower limit {lo} >= upper limit {hi}")
    vel, eff = _float_attr(limit, "velocity", name, path), _float_attr(limit, "effort", name, path)
    if vel <= 0 or eff <= 0:
        raise ValueError(f"{path}: joint {name!r} needs positive velocity and effort limits")
    return lo, hi, vel, eff


def load_robot_description(
    urdf_path: str | Path | None = None, end_effector_link: str | None = None, gripper_joint: str | None = None
) -> RobotDescription:
    """Parse a serial-arm URDF into a :class:`RobotDescription`.

    ``urdf_path`` defaults to ``sim/robot/vla_arm.urdf`` in the package's share folder. The arm's joints are
    the actuated ones on the path from the root link to ``end_effector_link``; without it, the URDF must be
    a single chain and the end effector is ``fingertip_link`` when the URDF has it, else the chain's last link.
    An actuated joint off that path must be ``gripper_joint`` (held by the simulator, never commanded by the
    policy). Raises ``FileNotFoundError`` for a missing file and ``ValueError`` for a malformed URDF, a named
    link or joint it lacks, or an actuated joint without complete ``<limit lower upper velocity effort>``.
    """
    if urdf_path is None:
        from vla_ros.paths import share_path

        urdf_path = share_path("sim", "robot", "vla_arm.urdf")
    path = Path(urdf_path).resolve()
    if not path.is_file():
        raise FileNotFoundError(f"URDF not found: {path}")
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as exc:
        raise ValueError(f"{path}: not well-formed XML: {exc}") from None
    if root.tag != "robot":
        raise ValueError(f"{path}: root element is <{root.tag}>, expected <robot>")

    links = {link.get("name") for link in root.findall("link")}
    if end_effector_link is not None and end_effector_link not in links:
        raise ValueError(f"{path}: end effector link {end_effector_link!r} is not in the URDF "
                         f"(links: {', '.join(sorted(links))})")
    joints = root.findall("joint")
    chain, tip_link, off_chain = _chain_from_root(joints, path, end_effector_link)
    names, lower, upper, velocity, effort = [], [], [], [], []
    for joint in chain:
        if joint.get("type") not in ACTUATED_JOINT_TYPES:
            continue
        lo, hi, vel, eff = _limits(joint, path)
        names.append(joint.get("name"))
        lower.append(lo)
        upper.append(hi)
        velocity.append(vel)
        effort.append(eff)
    if not names:
        raise ValueError(f"{path}: no actuated (revolute or prismatic) joints")
    gripper_limits = None
    for joint in off_chain:
        if joint.get("type") not in ACTUATED_JOINT_TYPES:
            continue
        if joint.get("name") != gripper_joint:
            raise ValueError(f"{path}: actuated joint {joint.get('name')!r} is neither on the arm's chain to "
                             f"{tip_link!r} nor the gripper joint ({gripper_joint!r})")
        gripper_limits = _limits(joint, path)
    if gripper_joint is not None and gripper_limits is None:
        if gripper_joint in names:
            raise ValueError(f"{path}: gripper joint {gripper_joint!r} is on the arm's chain to {tip_link!r}; "
                             "choose an end effector link before the gripper")
        raise ValueError(f"{path}: gripper joint {gripper_joint!r} is not an actuated joint of the URDF")

    if end_effector_link is None:
        end_effector_link = DEFAULT_END_EFFECTOR_LINK if DEFAULT_END_EFFECTOR_LINK in links else tip_link

    def frozen(values: list[float]) -> np.ndarray:
        array = np.asarray(values, dtype=np.float64)
        array.flags.writeable = False  # the dataclass is frozen; keep its arrays so too
        return array

    return RobotDescription(
        urdf_path=path,
        joint_names=tuple(names),
        lower=frozen(lower),
        upper=frozen(upper),
        velocity=frozen(velocity),
        effort=frozen(effort),
        end_effector_link=end_effector_link,
        gripper_joint=gripper_joint,
        gripper_range=None if gripper_limits is None else (gripper_limits[0], gripper_limits[1]),
        gripper_effort=None if gripper_limits is None else gripper_limits[3],
    )
