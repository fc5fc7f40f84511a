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


def _chain_from_root(joints: list[ET.Element], path: Path) -> tuple[list[ET.Element], str]:
    """Order joints base to tip along the single chain of the tree; return them and the tip link."""
    by_parent: dict[str, list[ET.Element]] = {}
    children = set()
    for joint in joints:
        parent = joint.find("parent")
        child = joint.find("child")
        if parent is None or child is None:
            raise ValueError(f"{path}: joint {joint.get('name')!r} lacks <parent> or <child>")
        by_parent.setdefault(parent.get("link"), []).append(joint)
        children.add(child.get("link"))
    roots = [link for link in by_parent if link not in children]
    if len(roots) != 1:
        raise ValueError(f"{path}: expected one root link, found {roots}")
    chain, link = [], roots[0]
    while link in by_parent:
        next_joints = by_parent[link]
        if len(next_joints) != 1:
            raise ValueError(f"{path}: link {link!r} branches; only serial arms are supported")
        chain.append(next_joints[0])
        link = next_joints[0].find("child").get("link")
    return chain, link


def load_robot_description(
    urdf_path: str | Path | None = None, end_effector_link: str | None = None
) -> RobotDescription:
    """Parse a serial-arm URDF into a :class:`RobotDescription`.

    ``urdf_path`` defaults to ``sim/robot/vla_arm.urdf`` in the package's share folder; the end
    effector defaults to ``fingertip_link`` when the URDF has it, else the chain's last link.
    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` for a malformed URDF or an
    actuated joint without complete ``<limit lower upper velocity effort>``.
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

    chain, tip_link = _chain_from_root(root.findall("joint"), path)
    names, lower, upper, velocity, effort = [], [], [], [], []
    for joint in chain:
        if joint.get("type") not in ACTUATED_JOINT_TYPES:
            continue
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
        names.append(name)
        lower.append(lo)
        upper.append(hi)
        velocity.append(vel)
        effort.append(eff)
    if not names:
        raise ValueError(f"{path}: no actuated (revolute or prismatic) joints")

    links = {link.get("name") for link in root.findall("link")}
    if end_effector_link is None:
        end_effector_link = DEFAULT_END_EFFECTOR_LINK if DEFAULT_END_EFFECTOR_LINK in links else tip_link
    elif end_effector_link not in links:
        raise ValueError(f"{path}: end effector link {end_effector_link!r} is not in the URDF")

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
    )
