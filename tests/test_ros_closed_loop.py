"""Closed loop over ROS 2: sim_node + vla_node processes with a policy checkpoint, compared in-process.

The same seeds run through the ``Policy`` wrapper in-process and through the ROS graph in lockstep
(one simulator step per joint command); success rates must agree within 10 points.
"""

import argparse
import json

import gymnasium as gym
import pytest

from vla_ros.launcher import only_loopback
from vla_ros.paths import share_path

pytestmark = pytest.mark.skipif(not only_loopback(), reason="ROS tests run only in a loopback-only netns")
SEEDS = range(700, 712)


def _checkpoint(folder: str):
    path = share_path("models", folder)
    if not (path / "config.json").is_file():
        pytest.skip(f"no shipped policy checkpoint in models/{folder}")
    return path


@pytest.mark.parametrize("robot, folder", [("vla_arm", "policy"), ("so101", "so101")])
def test_ros_closed_loop_matches_in_process_success(tmp_path, robot, folder):
    import vla_ros.envs  # noqa: F401
    from vla_ros.commands import demo
    from vla_ros.policy.envs import env_id
    from vla_ros.policy.policy import Policy
    from vla_ros.policy.rollout import run_episode

    checkpoint = _checkpoint(folder)
    policy = Policy.load(checkpoint)
    assert policy.config.get("robot", "vla_arm") == robot
    env = gym.make(env_id(policy.config["task"]), **policy.config.get("env", {}))
    try:
        in_process = [run_episode(policy, env, seed=s).success for s in SEEDS]
    finally:
        env.close()
    task = policy.config["task"]

    parser = argparse.ArgumentParser()
    demo.add_arguments(parser)
    report = tmp_path / "demo.json"
    args = parser.parse_args(["--robot", robot, "--episodes", str(len(SEEDS)), "--seed", str(SEEDS[0]),
                              "--mode", "lockstep", "--compare-in-process",
                              "--task", task, "--out", str(tmp_path / "demo"),
                              "--json", str(report), "--episode-timeout", "60"])
    assert demo.run(args) == 0
    result = json.loads(report.read_text())
    episodes = result["episodes"]
    over_ros = [e["success"] for e in episodes]
    # the demo's own in-process comparison runs the same seeds as this test's
    assert [e["in_process"] for e in episodes] == in_process
    assert result["in_process"]["agreeing_episodes"] == sum(a == b for a, b in zip(over_ros, in_process))
    assert len(over_ros) == len(in_process)
    rate_ros, rate_local = sum(over_ros) / len(over_ros), sum(in_process) / len(in_process)
    assert abs(rate_ros - rate_local) <= 0.10, (over_ros, in_process)
    # lockstep feeds the node the very frames the in-process run sees: episodes should mostly agree one by one
    agreeing = sum(a == b for a, b in zip(over_ros, in_process))
    assert agreeing >= 0.8 * len(SEEDS), (over_ros, in_process)
    _check_recording(tmp_path / "demo", episodes)


def _check_recording(out, episodes):
    """The MCAP read back: absolute topic names, counts that fit the episodes; the video and contact sheet."""
    from collections import Counter

    import imageio.v2 as imageio
    from mcap.reader import make_reader

    from vla_ros.commands.demo import FOXGLOVE_LAYOUT, RECORDED_TOPICS
    from vla_ros.paths import share_path

    with open(out / "demo.mcap", "rb") as f:
        reader = make_reader(f)
        summary = reader.get_summary()
        topics = {channel.topic for channel in summary.channels.values()}
        counts = Counter(channel.topic for _, channel, _ in reader.iter_messages())
    assert topics == set(RECORDED_TOPICS) and all(t.startswith("/") for t in topics)
    steps = sum(e["steps"] for e in episodes)
    assert counts["/vla/command"] >= len(episodes)
    # one viewing-camera frame per new observation (each step's); lockstep also republishes camera frames
    assert steps <= counts["/viewer/image_raw"] <= counts["/camera/image_raw"]
    assert counts["/vla/grounding/heatmap"] > 0 and counts["/forward_position_controller/commands"] >= steps
    layout = json.loads(share_path(*FOXGLOVE_LAYOUT.split("/")).read_text())
    shown = {panel.get("imageMode", {}).get("imageTopic") or panel.get("topicPath", "").split(".")[0]
             for panel in layout["configById"].values()} - {""}
    assert shown <= topics, shown - topics  # the layout shows recorded topics only
    video = imageio.get_reader(out / "demo.mp4")
    frame = video.get_data(0)
    assert frame.shape[0] >= 480 and frame.shape[1] >= 640
    assert (out / "contact_sheet.png").stat().st_size > 0



def test_the_demo_refuses_a_policy_folder_that_is_not_a_checkpoint(tmp_path, capsys):
    """A wrong --policy is an error before any node starts, not six failed episodes behind an inactive node."""
    from vla_ros.commands import demo

    parser = argparse.ArgumentParser()
    demo.add_arguments(parser)
    args = parser.parse_args(["--policy", str(tmp_path / "missing"), "--out", str(tmp_path / "demo")])
    assert demo.run(args) == 2
    assert "policy checkpoint folder not found" in capsys.readouterr().out
    assert not (tmp_path / "demo").exists()
