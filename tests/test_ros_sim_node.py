"""sim_node with real rclpy nodes in one process: episodes, camera and joint states, joint commands."""

from __future__ import annotations

import itertools
import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

rclpy = pytest.importorskip("rclpy")
pytest.importorskip("vla_ros.envs")

from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from sensor_msgs.msg import Image, JointState  # noqa: E402
from std_msgs.msg import String  # noqa: E402
from waiting import wait_until  # noqa: E402

from vla_ros.nodes.sim_node import PARAMETERS, SimNode, action_from_target  # noqa: E402
from vla_ros.robot_description import load_robot_description  # noqa: E402
from vla_ros.ros import qos  # noqa: E402
from vla_ros.ros.conversions import (  # noqa: E402
    image_to_numpy,
    joint_state_to_arrays,
    joint_trajectory,
    position_command_array,
    stamp_to_seconds,
)

ROBOT = load_robot_description()
CONFIG = Path(__file__).resolve().parent.parent / "config" / "sim_node.yaml"
COMMAND = "touch the red cube"
_namespaces = itertools.count()


class Probe:
    """A policy-side view of the simulator: reads camera, joint states and status; sends commands."""

    def __init__(self, context, namespace: str):
        self.node = node = rclpy.create_node("probe", namespace=namespace, context=context)
        self.images: list[Image] = []
        self.joint_states: list[JointState] = []
        self.statuses: list[dict] = []
        self.commands: list[str] = []
        node.create_subscription(Image, "camera/image_raw", self.images.append, qos.CAMERA_QOS)
        node.create_subscription(JointState, "joint_states", self.joint_states.append, qos.JOINT_STATES_QOS)
        node.create_subscription(
            String,
            "sim/episode_status",
            lambda msg: self.statuses.append(json.loads(msg.data)),
            qos.STATUS_QOS,
        )
        node.create_subscription(
            String, "vla/command", lambda msg: self.commands.append(msg.data), qos.COMMAND_QOS
        )
        self.start_pub = node.create_publisher(String, "sim/start_episode", 10)
        self.position_pub = node.create_publisher(
            type(position_command_array([0.0])), "forward_position_controller/commands", qos.JOINT_COMMAND_QOS
        )
        self.trajectory_pub = node.create_publisher(
            type(joint_trajectory(["a"], [0.0], 0.1)),
            "joint_trajectory_controller/joint_trajectory",
            qos.JOINT_COMMAND_QOS,
        )

    def positions(self) -> np.ndarray:
        return joint_state_to_arrays(self.joint_states[-1], ROBOT.joint_names)[0]

    def start(self, **request) -> dict:
        episodes = {status.get("episode") for status in self.statuses}
        wait_until(lambda: self.start_pub.get_subscription_count() > 0, what="sim_node subscribed")
        self.start_pub.publish(String(data=json.dumps(request)))
        wait_until(
            lambda: any(s.get("episode") not in episodes and s.get("step") == 0 for s in self.statuses),
            what="the episode start",
        )
        return [s for s in self.statuses if s.get("episode") not in episodes][0]


@pytest.fixture
def make_sim(ros_context):
    executor = SingleThreadedExecutor(context=ros_context)
    thread = threading.Thread(target=executor.spin, daemon=True)
    thread.start()
    made = []

    def make(**parameters):
        namespace = f"/sim_test_{next(_namespaces)}"
        probe = Probe(ros_context, namespace)  # first, so it sees the first episode's messages
        executor.add_node(probe.node)
        defaults = {"start_episode_on_launch": False}
        overrides = [Parameter(k, value=v) for k, v in {**defaults, **parameters}.items()]
        sim = SimNode(namespace=namespace, context=ros_context, parameter_overrides=overrides)
        made.extend([sim, probe.node])
        executor.add_node(sim)
        return sim, probe

    try:
        yield make
    finally:
        executor.shutdown()
        thread.join(timeout=5)
        for node in made:
            node.destroy_node()


def test_action_from_target_inverts_the_env_action_rule():
    rng = np.random.default_rng(0)
    max_delta = ROBOT.velocity * 0.05
    for _ in range(200):
        q = rng.uniform(ROBOT.lower, ROBOT.upper)
        a = rng.uniform(-1, 1, size=q.size)
        target = np.clip(q + a * max_delta, ROBOT.lower, ROBOT.upper)
        recovered = action_from_target(target, q, max_delta)
        np.testing.assert_allclose(
            np.clip(q + recovered * max_delta, ROBOT.lower, ROBOT.upper), target, atol=1e-12
        )
    far = action_from_target(q + 10.0, q, max_delta)
    np.testing.assert_array_equal(far, np.ones(q.size))


def test_every_parameter_has_a_description_and_the_config_file_matches(make_sim):
    sim, _ = make_sim()
    names = [name for name, _, _ in PARAMETERS]
    assert all(d.description for d in sim.describe_parameters(names))
    configured = yaml.safe_load(CONFIG.read_text())["/**"]["ros__parameters"]
    assert set(configured) <= set(names)
    for name, default, _ in PARAMETERS:
        assert type(configured.get(name, default)) is type(default), name


def test_the_config_file_applies_under_any_namespace(ros_context, tmp_path):
    """``/**`` keys: a robot started with ``-r __ns:=/robot1`` gets the file's parameters (not the defaults)."""
    shipped = yaml.safe_load(CONFIG.read_text())
    (key, section), = shipped.items()
    section["ros__parameters"].update(seed=77, num_objects=4, start_episode_on_launch=False)
    path = tmp_path / "sim_node.yaml"
    path.write_text(yaml.safe_dump({key: section}))
    for namespace in ("/robot1", "/robot2/arm"):
        sim = SimNode(namespace=namespace, context=ros_context, cli_args=["--ros-args", "--params-file", str(path)])
        try:
            assert sim.get_fully_qualified_name() == f"{namespace}/sim_node"
            assert sim.get_parameter("seed").value == 77 and sim.get_parameter("num_objects").value == 4
        finally:
            sim.destroy_node()


def test_use_sim_time_runs_on_the_simulators_own_clock(make_sim):
    """With use_sim_time the simulator still steps (its timers are steady), publishes /clock, stamps on it."""
    from rclpy.clock import ClockType
    from rosgraph_msgs.msg import Clock

    sim, probe = make_sim(use_sim_time=True, real_time_factor=4.0)
    clocks = []
    probe.node.create_subscription(Clock, "/clock", lambda msg: clocks.append(msg.clock), qos.CLOCK_QOS)
    probe.start(seed=3, command=COMMAND)
    wait_until(lambda: len(probe.images) >= 5 and len(clocks) >= 5, what="camera frames and /clock under sim time")
    seconds = [c.sec + c.nanosec * 1e-9 for c in clocks]
    assert all(b > a for a, b in zip(seconds, seconds[1:]))  # advances
    step = sim._control_dt
    stamps = [m.header.stamp.sec + m.header.stamp.nanosec * 1e-9 for m in probe.images[-3:]]
    assert all(abs((b - a) / step - round((b - a) / step)) < 1e-6 for a, b in zip(stamps, stamps[1:]))
    assert stamps[-1] <= sim.sim_time_ns * 1e-9 + 1e-9  # camera stamps are simulated time, not wall time
    assert sim.get_clock().clock_type == ClockType.ROS_TIME


def test_episode_start_publishes_command_camera_and_joint_states(make_sim):
    sim, probe = make_sim(real_time_factor=4.0)
    status = probe.start(seed=3, command=COMMAND)
    assert status["command"] == COMMAND and status["task"] == "reach" and status["seed"] == 3
    assert status["done"] is False and "colour" in status["target"]
    wait_until(lambda: COMMAND in probe.commands, what="the latched command")
    wait_until(lambda: probe.images and probe.joint_states, what="camera and joint states")
    image = probe.images[-1]
    assert (image.encoding, image.width, image.height, image.header.frame_id) == (
        "rgb8",
        64,
        64,
        "workspace_camera",
    )
    assert image_to_numpy(image).std() > 0  # a rendered scene, not a blank frame
    assert tuple(probe.joint_states[-1].name) == ROBOT.joint_names
    positions, velocities = joint_state_to_arrays(probe.joint_states[-1], ROBOT.joint_names)
    assert np.all(positions >= ROBOT.lower) and np.all(positions <= ROBOT.upper)
    # Without commands the sim steps and holds position.
    wait_until(lambda: probe.statuses[-1]["step"] >= 5, what="steps")


def test_late_subscriber_gets_the_latched_command(make_sim, ros_context):
    sim, probe = make_sim(start_episode_on_launch=True, command=COMMAND)
    late = rclpy.create_node("late", namespace=probe.node.get_namespace(), context=ros_context)
    received = []
    late.create_subscription(String, "vla/command", lambda msg: received.append(msg.data), qos.COMMAND_QOS)
    executor = SingleThreadedExecutor(context=ros_context)
    executor.add_node(late)
    try:
        deadline = time.monotonic() + 10
        while not received and time.monotonic() < deadline:
            executor.spin_once(timeout_sec=0.05)
        assert received == [COMMAND]
    finally:
        executor.shutdown()
        late.destroy_node()


@pytest.mark.parametrize("message", ["position_array", "trajectory"])
def test_position_commands_move_the_joints(make_sim, message):
    # lockstep: each command is one step, so a loaded machine cannot run the episode out before the joint arrives
    sim, probe = make_sim(mode="lockstep", lockstep_republish_s=0.05, lockstep_start_delay_s=0.1)
    probe.start(seed=0, command=COMMAND)
    wait_until(lambda: probe.joint_states, what="joint states")
    start = probe.positions()
    target = start.copy()
    target[0] = start[0] + 0.3  # base yaw, 4 steps of max_delta away

    def send_and_check():
        if message == "position_array":
            probe.position_pub.publish(position_command_array(target))
        else:
            order = list(reversed(ROBOT.joint_names))  # names, not order, identify joints
            probe.trajectory_pub.publish(joint_trajectory(order, target[::-1], 0.05))
        return abs(probe.positions()[0] - target[0]) < 0.05

    wait_until(send_and_check, what="base_yaw to reach its target")
    assert np.all(np.abs(probe.positions()[1:] - start[1:]) < 0.1)  # the others held


def test_real_time_keeps_tracking_the_last_command(make_sim):
    """Like a forward position controller: one far target is followed over several steps, no resend."""
    sim, probe = make_sim(real_time_factor=1.0)
    probe.start(seed=0, command=COMMAND)
    wait_until(lambda: probe.statuses[-1].get("step", 0) >= 1, what="the first (held) step")
    start = probe.positions()
    target = start.copy()
    target[0] = min(start[0] + 0.3, ROBOT.upper[0])  # several steps of max_delta away
    probe.position_pub.publish(position_command_array(target))
    wait_until(lambda: abs(probe.positions()[0] - target[0]) < 0.05, what="base_yaw to reach its target")
    assert np.all(np.abs(probe.positions()[1:] - start[1:]) < 0.1)


def test_real_time_drops_commands_before_the_first_step_of_an_episode(make_sim):
    """A command sent right after the reset was computed from the scene before: the first step holds."""
    sim, probe = make_sim(real_time_factor=0.1)  # a step every 0.5 s
    probe.start(seed=0, command=COMMAND)
    wait_until(lambda: probe.joint_states, what="joint states")
    start = probe.positions()
    target = start.copy()
    target[0] = min(start[0] + 0.3, ROBOT.upper[0])
    assert probe.statuses[-1]["step"] == 0
    probe.position_pub.publish(position_command_array(target))
    wait_until(lambda: probe.statuses[-1].get("step", 0) >= 2, what="two steps")
    assert np.all(np.abs(probe.positions() - start) < 0.02)  # held: the early command was dropped, not kept
    probe.position_pub.publish(position_command_array(target))
    wait_until(lambda: probe.positions()[0] > start[0] + 0.05, what="the same command, now accepted")


def latest_stamp(probe: Probe) -> float:
    return stamp_to_seconds(probe.joint_states[-1].header.stamp)


def test_lockstep_steps_once_per_command(make_sim):
    sim, probe = make_sim(mode="lockstep", lockstep_republish_s=0.05, lockstep_start_delay_s=0.5)
    probe.start(seed=1, command=COMMAND)
    # A command before the episode's first observation was computed from an older frame: dropped.
    if not probe.joint_states:  # (on a very slow machine the observation may already be out)
        probe.position_pub.publish(position_command_array(np.zeros(len(ROBOT.joint_names))))
    wait_until(lambda: probe.joint_states, what="joint states")
    first_stamp = stamp_to_seconds(probe.joint_states[-1].header.stamp)
    wait_until(lambda: len(probe.joint_states) >= 3, what="republished observations")
    # Without commands nothing steps: republished observations keep their stamp.
    assert {stamp_to_seconds(msg.header.stamp) for msg in probe.joint_states} == {first_stamp}
    assert probe.statuses[-1]["step"] == 0
    for step in (1, 2, 3):
        probe.position_pub.publish(position_command_array(probe.positions()))
        wait_until(lambda step=step: probe.statuses[-1]["step"] == step, what=f"step {step}")
        previous = first_stamp
        wait_until(lambda previous=previous: latest_stamp(probe) > previous, what="a new state")
        first_stamp = latest_stamp(probe)


def test_episode_ends_with_a_done_status(make_sim):
    sim, probe = make_sim(real_time_factor=20.0)
    probe.start(seed=2, command=COMMAND, task="reach")
    wait_until(lambda: probe.statuses[-1].get("done"), what="the end of the episode")
    last = probe.statuses[-1]
    assert last["truncated"] or last["terminated"]
    assert last["step"] <= 50


def test_start_episode_service_uses_the_current_parameters(make_sim):
    from rclpy.parameter import Parameter
    from std_srvs.srv import Trigger

    sim, probe = make_sim(real_time_factor=4.0)
    client = probe.node.create_client(Trigger, "sim/start_episode")
    assert client.wait_for_service(timeout_sec=10.0)
    sim.set_parameters([Parameter("seed", value=11), Parameter("command", value="go to the blue ball")])
    future = client.call_async(Trigger.Request())
    wait_until(future.done, what="the service reply")
    reply = future.result()
    assert reply.success, reply.message
    status = json.loads(reply.message)
    assert (status["seed"], status["command"], status["step"]) == (11, "go to the blue ball", 0)
    wait_until(lambda: "go to the blue ball" in probe.commands, what="the latched command")
    sim.set_parameters([Parameter("task", value="stack")])  # no such task: a clear failure, no crash
    future = client.call_async(Trigger.Request())
    wait_until(future.done, what="the service reply")
    assert not future.result().success and "task" in future.result().message


def test_push_task_and_bad_requests(make_sim):
    sim, probe = make_sim(real_time_factor=4.0)
    for bad in ("not json", "[1, 2]", json.dumps({"seed": "x"}), json.dumps({"colour": "red"})):
        probe.start_pub.publish(String(data=bad))
    wait_until(lambda: len([s for s in probe.statuses if "error" in s]) >= 4, what="error statuses")
    status = probe.start(seed=0, task="push")
    assert status["task"] == "push" and status["command"]  # sampled by the env
    wait_until(lambda: status["command"] in probe.commands, what="the sampled command")
