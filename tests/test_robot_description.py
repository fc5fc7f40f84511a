"""The URDF: parsed limits, urdfdom's check_urdf, and MuJoCo loading the same joints and limits."""

import os
import subprocess
import sys
from pathlib import Path

import mujoco
import numpy as np
import pytest

from vla_ros.envs.scene import build_scene
from vla_ros.paths import share_path
from vla_ros.robot_description import load_robot_description

URDF = share_path("sim", "robot", "vla_arm.urdf")
EXPECTED_JOINTS = ("base_yaw", "shoulder_pitch", "elbow_pitch", "wrist_pitch", "wrist_roll")


def _cmeel_prefix() -> Path:
    return Path(sys.prefix) / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / \
        "site-packages" / "cmeel.prefix"


def test_default_description_lists_the_five_joints_with_limits():
    robot = load_robot_description()
    assert robot.urdf_path == URDF.resolve()
    assert robot.joint_names == EXPECTED_JOINTS
    assert robot.num_joints == 5
    assert robot.end_effector_link == "fingertip_link"
    for values in (robot.lower, robot.upper, robot.velocity, robot.effort):
        assert values.shape == (5,) and values.dtype == np.float64
    assert np.all(robot.lower < robot.upper)
    assert np.all(robot.velocity > 0) and np.all(robot.effort > 0)
    with pytest.raises(ValueError):
        robot.lower[0] = 0.0  # frozen


def test_urdf_has_no_package_paths_and_a_mujoco_compiler_block():
    text = URDF.read_text()
    assert "package://" not in text
    assert "<mujoco>" in text and "<compiler" in text


def test_check_urdf_accepts_the_urdf():
    prefix = _cmeel_prefix()
    binary = prefix / "bin" / "check_urdf"
    if not binary.exists():
        pytest.skip("cmeel-urdfdom's check_urdf is not installed in this environment")
    env = dict(os.environ, LD_LIBRARY_PATH=f"{prefix / 'lib'}:{os.environ.get('LD_LIBRARY_PATH', '')}")
    result = subprocess.run([str(binary), str(URDF)], capture_output=True, text=True, env=env, timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Successfully Parsed XML" in result.stdout
    for link in ("base_link", "fingertip_link"):
        assert link in result.stdout


@pytest.mark.parametrize("source", ["urdf_only", "scene"])
def test_mujoco_loads_the_same_joints_and_limits(source):
    robot = load_robot_description()
    if source == "urdf_only":
        model = mujoco.MjSpec.from_file(str(URDF)).compile()
    else:
        model = build_scene(robot, num_object_slots=3).model
    hinge_ids = [i for i in range(model.njnt) if model.jnt_type[i] == mujoco.mjtJoint.mjJNT_HINGE]
    assert tuple(model.joint(i).name for i in hinge_ids) == robot.joint_names
    np.testing.assert_allclose(model.jnt_range[hinge_ids, 0], robot.lower)
    np.testing.assert_allclose(model.jnt_range[hinge_ids, 1], robot.upper)
    assert all(model.jnt_limited[hinge_ids])
    assert mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_BODY, robot.end_effector_link) >= 0
    if source == "scene":  # actuators: one per joint, force-limited to the URDF effort
        assert model.nu == robot.num_joints
        np.testing.assert_allclose(model.actuator_forcerange[:, 1], robot.effort)
        actuated = [model.joint(model.actuator_trnid[i, 0]).name for i in range(model.nu)]
        assert actuated == list(robot.joint_names)


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="URDF not found"):
        load_robot_description(tmp_path / "nope.urdf")


def test_joint_without_limit_is_a_clear_error(tmp_path):
    text = URDF.read_text()
    start = text.index('<limit lower="-1.7"')
    end = text.index("/>", start) + 2
    broken = tmp_path / "broken.urdf"
    broken.write_text(text[:start] + text[end:])
    with pytest.raises(ValueError, match="shoulder_pitch.*no <limit>"):
        load_robot_description(broken)


def test_limit_without_velocity_is_a_clear_error(tmp_path):
    broken = tmp_path / "broken.urdf"
    broken.write_text(URDF.read_text().replace('velocity="1.8" ', "", 1))
    with pytest.raises(ValueError, match="elbow_pitch.*'velocity'"):
        load_robot_description(broken)


def test_unknown_end_effector_is_a_clear_error():
    with pytest.raises(ValueError, match="end effector"):
        load_robot_description(URDF, end_effector_link="gripper_link")
