"""Build the MuJoCo model: the URDF arm attached into the tabletop scene, object slots, actuators.

The model is compiled once per env. Objects change every episode without recompiling: each
object slot is a free body holding one geom per geometry (cube, ball, cylinder); a reset switches
one of them on (collision bits, visible group, colour, mass) and the others off.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import mujoco  # vla_ros.envs (imported first, as the parent package) has chosen MUJOCO_GL
import numpy as np

from vla_ros.envs.instructions import GEOMETRIES
from vla_ros.robot_config import RobotConfig
from vla_ros.robot_description import RobotDescription

CAMERA_NAME = "workspace_camera"
VIEWING_CAMERA_NAME = "viewing_camera"  # videos only: a three-quarter view of the arm (-1 if a scene has none)
TABLE_TOP_Z = 0.0
TABLE_HALF_EXTENT = np.array([0.55, 0.6])  # table centre (0.3, 0); see sim/scenes/tabletop.xml
TABLE_CENTRE_XY = np.array([0.3, 0.0])
OBJECT_MASS = 0.1  # kg
# Half extents per geometry: (half width in the table plane, half height). ~5-6 cm objects.
OBJECT_HALF_SIZE = {"cube": (0.027, 0.027), "ball": (0.03, 0.03), "cylinder": (0.025, 0.035)}
HIDDEN_GROUP = 5  # geoms of unused geometries go here; the renderer does not draw this group
ARM_RGBA = {"fingertip_link": (0.05, 0.05, 0.05, 1.0), "base_link": (0.15, 0.15, 0.17, 1.0),
            "wrist_link": (0.15, 0.15, 0.17, 1.0)}
ARM_DEFAULT_RGBA = (0.78, 0.78, 0.80, 1.0)
# Collision bits: the arm touches table and objects but not itself; objects touch everything.
ARM_CONTYPE, ARM_CONAFFINITY = 2, 1
OBJECT_CONTYPE, OBJECT_CONAFFINITY = 1, 3
ARMATURE = 0.01  # kg m^2, reflected rotor inertia; also keeps the stiff wrist stable at 5 ms
KP_PER_NM = 15.0  # position gain per N m of effort limit: stiff enough to track 20 Hz targets


@dataclass(frozen=True)
class SceneModel:
    """A compiled model plus the indices the env needs (all into ``model``)."""

    model: mujoco.MjModel
    arm_qpos_adr: np.ndarray  # (n,) qpos addresses of the arm joints, URDF order
    arm_dof_adr: np.ndarray  # (n,) dof addresses
    ee_body_id: int
    object_body_ids: np.ndarray  # (k,)
    object_qpos_adr: np.ndarray  # (k,) start of each free joint's 7 qpos
    object_dof_adr: np.ndarray  # (k,) start of each free joint's 6 dofs
    object_geom_ids: np.ndarray  # (k, len(GEOMETRIES)) geom ids, GEOMETRIES order
    camera_id: int
    viewing_camera_id: int = -1
    gripper_qpos_adr: int = -1  # the gripper joint's qpos address (-1: no gripper)


def object_inertia(geometry: str, mass: float = OBJECT_MASS) -> np.ndarray:
    """Principal inertia (3,) of a solid object of the given geometry (sizes OBJECT_HALF_SIZE)."""
    w, h = OBJECT_HALF_SIZE[geometry]
    if geometry == "cube":
        return np.full(3, mass * (2 * w) ** 2 / 6)
    if geometry == "ball":
        return np.full(3, 0.4 * mass * w**2)
    ixx = mass * (3 * w**2 + (2 * h) ** 2) / 12
    return np.array([ixx, ixx, 0.5 * mass * w**2])


def _add_object_slot(spec: mujoco.MjSpec, index: int) -> None:
    # Parked below the table until a reset places it.
    body = spec.worldbody.add_body(name=f"object_{index}", pos=[0.0, 0.2 * index, -0.5])
    body.add_freejoint(name=f"object_{index}_joint")
    body.mass, body.ipos, body.iquat = OBJECT_MASS, [0.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]
    body.inertia = object_inertia("cube")
    body.explicitinertial = True
    for geometry in GEOMETRIES:
        w, h = OBJECT_HALF_SIZE[geometry]
        geom = body.add_geom(name=f"object_{index}_{geometry}", contype=0, conaffinity=0, group=HIDDEN_GROUP)
        if geometry == "cube":
            geom.type, geom.size = mujoco.mjtGeom.mjGEOM_BOX, [w, w, h]
        elif geometry == "ball":
            # Rolling friction so a pushed ball stops instead of rolling off the table.
            geom.type, geom.size = mujoco.mjtGeom.mjGEOM_SPHERE, [w, 0, 0]
            geom.condim, geom.friction = 6, [0.6, 0.005, 0.004]
        else:
            geom.type, geom.size = mujoco.mjtGeom.mjGEOM_CYLINDER, [w, h, 0]
        if geometry != "ball":
            geom.condim, geom.friction = 3, [0.5, 0.005, 0.0001]


def _add_position_actuator(scene: mujoco.MjSpec, joint: str, effort: float) -> None:
    """A position actuator on ``joint``, force-limited to the URDF's effort, its gain scaled by it."""
    scene.joint(joint).armature = ARMATURE
    actuator = scene.add_actuator(name=f"{joint}_position", target=joint)
    actuator.trntype = mujoco.mjtTrn.mjTRN_JOINT
    actuator.set_to_position(kp=KP_PER_NM * effort, dampratio=1.0)
    actuator.forcelimited = mujoco.mjtLimited.mjLIMITED_TRUE
    actuator.forcerange = [-effort, effort]


def build_scene(robot: RobotDescription, num_object_slots: int, scene_path: str | Path | None = None,
                config: RobotConfig | None = None) -> SceneModel:
    """Compile the arm from ``robot.urdf_path`` into the tabletop scene with ``num_object_slots`` objects.

    Joint names and limits come from the URDF through MuJoCo's URDF importer (its ``<mujoco>``
    compiler block); position actuators are added with force limits equal to the URDF efforts, arm joints
    first (in ``robot.joint_names`` order), then the gripper's if the robot has one. ``config`` (the robot
    file) places the arm's base and the workspace camera; without it the base is at the origin and the
    camera is the scene file's.
    """
    if scene_path is None:
        from vla_ros.paths import share_path

        scene_path = share_path("sim", "scenes", "tabletop.xml")
    scene = mujoco.MjSpec.from_file(str(scene_path))
    arm = mujoco.MjSpec.from_file(str(robot.urdf_path))
    arm.compiler.fusestatic = False  # keep fixed links (a tool frame) as bodies: the end effector may be one
    frame = scene.worldbody.add_frame()
    if config is not None:
        frame.pos = list(config.base_pos)
        frame.quat = list(rpy_to_quat(config.base_rpy))
        if config.camera is not None:
            camera = scene.camera(CAMERA_NAME)
            camera.pos, camera.fovy = list(config.camera.pos), config.camera.fovy
            camera.alt.type = mujoco.mjtOrientation.mjORIENTATION_XYAXES
            camera.alt.xyaxes = list(config.camera.xyaxes)
    # Attach with a prefix (an empty one makes MuJoCo warn), then strip it so names equal the URDF's.
    frame.attach_body(arm.worldbody.first_body(), "arm/", "")
    for element in [*scene.bodies, *scene.joints, *scene.geoms, *scene.sites]:
        if element.name.startswith("arm/"):
            element.name = element.name[len("arm/"):]
    for body in scene.bodies:
        if body.name in ("world",) or body.name.startswith("object_"):
            continue
        body.gravcomp = 1.0  # the arm's controller compensates gravity, as a real one would
        for geom in body.geoms:
            geom.contype, geom.conaffinity = ARM_CONTYPE, ARM_CONAFFINITY
            geom.rgba = ARM_RGBA.get(body.name, ARM_DEFAULT_RGBA)
    for name, effort in zip(robot.joint_names, robot.effort):
        _add_position_actuator(scene, name, float(effort))
    if robot.gripper_joint is not None:  # held still by its own actuator; the policy never commands it
        _add_position_actuator(scene, robot.gripper_joint, float(robot.gripper_effort))
    for index in range(num_object_slots):
        _add_object_slot(scene, index)
    model = scene.compile()
    # Broad-phase filtering uses per-body collision bits computed from the geoms at compile time,
    # when every object geom was off; resets switch geoms on, so the bodies must admit contacts.
    object_body_ids = np.array([mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_BODY, f"object_{i}")
                                for i in range(num_object_slots)], dtype=int)
    model.body_contype[object_body_ids] = OBJECT_CONTYPE
    model.body_conaffinity[object_body_ids] = OBJECT_CONAFFINITY

    def joint_id(name: str) -> int:
        return mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_JOINT, name)

    arm_joint_ids = [joint_id(name) for name in robot.joint_names]
    object_joint_ids = [joint_id(f"object_{i}_joint") for i in range(num_object_slots)]
    geom_ids = [[mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_GEOM, f"object_{i}_{g}") for g in GEOMETRIES]
                for i in range(num_object_slots)]
    return SceneModel(
        model=model,
        arm_qpos_adr=model.jnt_qposadr[arm_joint_ids].copy(),
        arm_dof_adr=model.jnt_dofadr[arm_joint_ids].copy(),
        ee_body_id=mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_BODY, robot.end_effector_link),
        object_body_ids=object_body_ids,
        object_qpos_adr=model.jnt_qposadr[object_joint_ids].copy(),
        object_dof_adr=model.jnt_dofadr[object_joint_ids].copy(),
        object_geom_ids=np.array(geom_ids, dtype=int).reshape(num_object_slots, len(GEOMETRIES)),
        camera_id=mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, CAMERA_NAME),
        viewing_camera_id=mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, VIEWING_CAMERA_NAME),
        gripper_qpos_adr=int(model.jnt_qposadr[joint_id(robot.gripper_joint)]) if robot.gripper_joint else -1,
    )


def rpy_to_quat(rpy) -> np.ndarray:
    """URDF roll-pitch-yaw (rad; R = Rz(yaw) Ry(pitch) Rx(roll)) as a MuJoCo quaternion (w, x, y, z)."""
    r, p, y = (0.5 * float(a) for a in rpy)
    cr, sr, cp, sp, cy, sy = np.cos(r), np.sin(r), np.cos(p), np.sin(p), np.cos(y), np.sin(y)
    return np.array([cr * cp * cy + sr * sp * sy, sr * cp * cy - cr * sp * sy,
                     cr * sp * cy + sr * cp * sy, cr * cp * sy - sr * sp * cy])


def project_points(points: np.ndarray, cam_pos: np.ndarray, cam_mat: np.ndarray, fovy_deg: float,
                   width: int, height: int) -> np.ndarray:
    """Project world points (k, 3) into pixel coordinates (k, 2) as (u = column, v = row).

    Pinhole model of a MuJoCo camera: it looks along its -z axis, x to the image right, y up;
    pixel (0, 0) is the top-left corner of the rendered image.
    """
    rel = (np.asarray(points, dtype=np.float64) - cam_pos) @ cam_mat.reshape(3, 3)  # camera frame
    focal = 0.5 * height / np.tan(np.deg2rad(fovy_deg) / 2)
    depth = np.maximum(-rel[:, 2], 1e-9)
    u = 0.5 * width + focal * rel[:, 0] / depth
    v = 0.5 * height - focal * rel[:, 1] / depth
    return np.stack([u, v], axis=1)
