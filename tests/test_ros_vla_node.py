"""vla_node with real rclpy nodes in one process: input rejection, diagnostics, safety holds, commands.

Tests marked ``needs_policy`` run the node active with a small, untrained checkpoint built by
``vla_ros.policy`` (real format, real ``Policy.load``); the others run it configured only, where
inputs are validated and counted but never acted upon.
"""

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

from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from policy_fixtures import make_policy_checkpoint  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.lifecycle import TransitionCallbackReturn  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from sensor_msgs.msg import Image, JointState  # noqa: E402
from std_msgs.msg import Float64MultiArray, String  # noqa: E402
from std_srvs.srv import SetBool, Trigger  # noqa: E402
from trajectory_msgs.msg import JointTrajectory  # noqa: E402
from waiting import wait_until  # noqa: E402

from vla_ros.keys import COMMAND_MAX_BYTES  # noqa: E402
from vla_ros.nodes.vla_node import PARAMETERS, VlaNode  # noqa: E402
from vla_ros.robot_description import load_robot_description  # noqa: E402
from vla_ros.ros import qos  # noqa: E402
from vla_ros.ros.conversions import arrays_to_joint_state, numpy_to_image  # noqa: E402
from vla_ros.ros.diagnostics import key_values_to_dict  # noqa: E402

ROBOT = load_robot_description()
N = len(ROBOT.joint_names)
HOME = (ROBOT.lower + ROBOT.upper) / 2
CONFIG = Path(__file__).resolve().parent.parent / "config" / "vla_node.yaml"
COMMAND = "touch the red cube"
_namespaces = itertools.count()


@pytest.fixture(scope="module")
def policy_checkpoint(tmp_path_factory):
    """Late fusion: the cheapest network."""
    return make_policy_checkpoint(tmp_path_factory.mktemp("vla_node_policy"), fusion="late")


class Probe:
    """The world around vla_node: camera, operator, joint state publisher, controller, diagnostics reader."""

    def __init__(self, context, executor, namespace: str, feed: bool = True):
        self.node = rclpy.create_node("probe", namespace=namespace, context=context)
        self.executor = executor
        node = self.node
        self.image_pub = node.create_publisher(Image, "camera/image_raw", qos.CAMERA_QOS)
        self.command_pub = node.create_publisher(String, "vla/command", qos.COMMAND_QOS)
        self.joint_pub = node.create_publisher(JointState, "joint_states", qos.JOINT_STATES_PUBLISHER_QOS)
        self.positions: list[np.ndarray] = []
        self.trajectories: list[JointTrajectory] = []
        self.debug_images: list[Image] = []
        self.diagnostics: dict[str, str] = {}
        self.diagnostics_status: tuple[bytes, str] | None = None  # (level, message) of vla_node's last status
        node.create_subscription(
            Float64MultiArray,
            "forward_position_controller/commands",
            lambda msg: self.positions.append(np.array(msg.data)),
            qos.JOINT_COMMAND_QOS,
        )
        node.create_subscription(
            JointTrajectory,
            "joint_trajectory_controller/joint_trajectory",
            self.trajectories.append,
            qos.JOINT_COMMAND_QOS,
        )
        node.create_subscription(
            Image, "vla/grounding/debug_image", self.debug_images.append, qos.DEBUG_IMAGE_QOS
        )
        node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, qos.DIAGNOSTICS_QOS)
        self.estop = node.create_client(SetBool, "vla/estop")
        self.clear = node.create_client(Trigger, "vla/clear_command")
        self.namespace = namespace
        # What the feeder timer streams (None = nothing); tests swap these.
        self.frame = np.full((64, 64, 3), 90, np.uint8)
        self.frame_age = 0.0
        self.joint_positions = HOME.copy()
        self.image_override: Image | None = None
        self.joint_override: JointState | None = None
        if feed:
            node.create_timer(0.02, self._feed)
        executor.add_node(node)

    def _on_diagnostics(self, msg: DiagnosticArray) -> None:
        for status in msg.status:
            if status.name.startswith(f"{self.namespace}/vla_node"):
                self.diagnostics = key_values_to_dict(status)
                self.diagnostics_status = (status.level, status.message)

    def _feed(self) -> None:
        now = self.node.get_clock().now().nanoseconds * 1e-9
        if self.image_override is not None:
            self.image_pub.publish(self.image_override)
        elif self.frame is not None:
            self.image_pub.publish(
                numpy_to_image(self.frame, "bgr8", stamp=now - self.frame_age, frame_id="cam")
            )
        if self.joint_override is not None:
            self.joint_pub.publish(self.joint_override)
        elif self.joint_positions is not None:
            self.joint_pub.publish(
                arrays_to_joint_state(ROBOT.joint_names, self.joint_positions, np.zeros(N), now)
            )

    def send_command(self, text: str) -> None:
        self.command_pub.publish(String(data=text))

    def call(self, client, request):
        assert client.wait_for_service(timeout_sec=10.0), f"service {client.srv_name} not available"
        future = client.call_async(request)
        wait_until(future.done, what=f"reply of {client.srv_name}")
        return future.result()


@pytest.fixture
def make_node(ros_context):
    """Start a VlaNode and a Probe in a fresh namespace on one single-threaded executor."""
    executor = SingleThreadedExecutor(context=ros_context)
    thread = threading.Thread(target=executor.spin, daemon=True)
    thread.start()
    made = []

    def make(state="configured", feed=True, **parameters):
        namespace = f"/vla_test_{next(_namespaces)}"
        defaults = {"diagnostics_period_s": 0.1, "log_throttle_s": 0.0, "autostart": False}
        overrides = [Parameter(k, value=v) for k, v in {**defaults, **parameters}.items()]
        node = VlaNode(namespace=namespace, context=ros_context, parameter_overrides=overrides)
        probe = Probe(ros_context, executor, namespace, feed)
        made.append((node, probe))
        executor.add_node(node)
        if state in ("configured", "active"):
            assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
        if state == "active":
            assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS
        return node, probe

    def add(other_node):
        made.append((other_node, None))
        executor.add_node(other_node)

    make.add = add
    try:
        yield make
    finally:
        # Stop all callbacks before destroying what they use.
        executor.shutdown()
        thread.join(timeout=5)
        for node, probe in made:
            if isinstance(node, VlaNode):
                node.trigger_shutdown()
            node.destroy_node()
            if probe is not None:
                probe.node.destroy_node()


# ----------------------------------------------------------------------------- parameters


def test_every_parameter_has_a_description_and_the_config_file_matches(make_node):
    node, _ = make_node(state="unconfigured")
    names = [name for name, _, _ in PARAMETERS]
    for descriptor in node.describe_parameters(names):
        assert descriptor.description, f"parameter {descriptor.name} has no description"
    configured = yaml.safe_load(CONFIG.read_text())["/**"]["ros__parameters"]
    assert set(configured) <= set(names), f"unknown parameters in {CONFIG}: {set(configured) - set(names)}"
    for name, default, _ in PARAMETERS:
        if name in configured and not isinstance(default, Parameter.Type):
            assert type(configured[name]) is type(default), f"{name}: type differs from the declared default"


def test_bad_parameters_make_configure_fail_and_the_node_keeps_running(make_node):
    node, _ = make_node(state="unconfigured", output_mode="velocity")
    assert node.trigger_configure() == TransitionCallbackReturn.FAILURE
    node.set_parameters([Parameter("output_mode", value="trajectory")])
    assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS


# ------------------------------------------------------------- rejected inputs (no policy needed)


def malformed_image(kind: str) -> Image:
    msg = numpy_to_image(np.zeros((8, 8, 3), np.uint8))
    if kind == "encoding":
        msg.encoding = "yuv422"
    elif kind == "step":
        msg.step = 8
    elif kind == "size":
        msg.data = msg.data[:-1]
    elif kind == "empty":
        msg.data = []
    return msg


BAD_COMMANDS = {
    "empty": "",
    "whitespace": " \t ",
    "over_long": "touch " + "x" * COMMAND_MAX_BYTES,
    "binary": "\x89PNG\r\n\x1a\n\x00\x01",
}


def nan_joint_state() -> JointState:
    positions = HOME.copy()
    positions[2] = np.nan
    return arrays_to_joint_state(ROBOT.joint_names, positions, np.zeros(N))


def incomplete_joint_state() -> JointState:
    return arrays_to_joint_state(ROBOT.joint_names[:-1], HOME[:-1], np.zeros(N - 1))


def corrupt(probe: Probe, kind: str) -> str:
    """Make the probe send one kind of bad input; return the diagnostics counter it must raise."""
    if kind.startswith("image_"):
        probe.image_override = malformed_image(kind.removeprefix("image_"))
        return "rejected.malformed_image"
    if kind.startswith("command_"):
        probe.send_command(BAD_COMMANDS[kind.removeprefix("command_")])
        return "rejected.bad_command"
    if kind == "joint_state_nan":
        probe.joint_override = nan_joint_state()
        return "rejected.nan_joint_state"
    probe.joint_override = incomplete_joint_state()
    return "rejected.bad_joint_state"


BAD_INPUTS = (
    [f"image_{kind}" for kind in ("encoding", "step", "size", "empty")]
    + [f"command_{kind}" for kind in BAD_COMMANDS]
    + ["joint_state_nan", "joint_state_incomplete"]
)


@pytest.mark.parametrize("kind", BAD_INPUTS)
def test_bad_inputs_are_counted_in_diagnostics_while_configured(make_node, kind):
    node, probe = make_node()
    key = corrupt(probe, kind)
    wait_until(lambda: int(probe.diagnostics.get(key, 0)) >= 1, what=f"{key} in /diagnostics")
    assert probe.diagnostics["active"] == "False"
    assert not probe.positions and node.counter("commands_published") == 0


def test_a_bad_command_replaces_the_current_command(make_node):
    node, probe = make_node()
    probe.send_command(f"  {COMMAND} ")
    wait_until(lambda: probe.diagnostics.get("command") == COMMAND, what="the command in /diagnostics")
    probe.send_command("\x00\x01")
    wait_until(lambda: node.counter("rejected.bad_command") == 1, what="the bad command")
    wait_until(lambda: probe.diagnostics.get("command") == "", what="the command cleared")


def test_a_default_qos_publisher_is_followed_and_a_latched_command_counts_once(make_node):
    node, probe = make_node()
    # `ros2 topic pub` and most GUIs publish reliable + volatile: no transient-local subscription matches them
    default_qos = probe.node.create_publisher(String, "vla/command", 10)
    wait_until(lambda: default_qos.get_subscription_count() >= 1, what="the node matching a volatile publisher")
    default_qos.publish(String(data="touch the blue ball"))
    wait_until(lambda: probe.diagnostics.get("command") == "touch the blue ball", what="the volatile command")
    serial = node.controller.command_serial
    probe.send_command(COMMAND)  # latched: it reaches both of the node's command subscriptions
    wait_until(lambda: probe.diagnostics.get("command") == COMMAND, what="the latched command")
    time.sleep(0.5)  # the second copy, had it been kept, arrives within this
    assert node.controller.command_serial == serial + 1


def test_estop_and_clear_command_services(make_node):
    node, probe = make_node()
    probe.send_command(COMMAND)
    wait_until(lambda: probe.diagnostics.get("command") == COMMAND, what="the command")
    reply = probe.call(probe.clear, Trigger.Request())
    assert reply.success and COMMAND in reply.message
    wait_until(lambda: probe.diagnostics.get("command") == "", what="the command cleared")
    reply = probe.call(probe.estop, SetBool.Request(data=True))
    assert reply.success and "engaged" in reply.message
    wait_until(lambda: probe.diagnostics.get("estop") == "True", what="e-stop in /diagnostics")
    reply = probe.call(probe.estop, SetBool.Request(data=False))
    assert reply.success and "new command" in reply.message


def test_activate_fails_cleanly_without_a_policy_checkpoint(make_node, tmp_path):
    node, probe = make_node(policy_path=str(tmp_path / "missing"))
    assert node.trigger_activate() == TransitionCallbackReturn.FAILURE
    probe.image_override = malformed_image("step")  # still validating inputs
    wait_until(lambda: node.counter("rejected.malformed_image") >= 1, what="counted input")


# --------------------------------------------------------------------- active, with a policy


def assert_safe(command: np.ndarray, position: np.ndarray, period: float) -> None:
    assert np.all(command >= ROBOT.lower) and np.all(command <= ROBOT.upper)
    assert np.all(np.abs(command - position) <= ROBOT.velocity * period + 1e-9)


@pytest.mark.parametrize("output_mode", ["position_array", "trajectory"])
def test_valid_inputs_give_commands_within_limits(make_node, policy_checkpoint, output_mode):
    node, probe = make_node(
        "active", policy_path=str(policy_checkpoint), output_mode=output_mode, publish_debug_image=True
    )
    probe.send_command(COMMAND)
    received = probe.positions if output_mode == "position_array" else probe.trajectories
    wait_until(lambda: len(received) >= 3, what="joint commands")
    for message in received:
        if output_mode == "trajectory":
            assert list(message.joint_names) == list(ROBOT.joint_names)
            assert message.points[0].time_from_start.nanosec == 50_000_000
            message = np.array(message.points[0].positions)
        assert_safe(message, HOME, 0.05)
    wait_until(lambda: probe.debug_images, what="a debug image")
    assert probe.debug_images[0].encoding == "rgb8" and probe.debug_images[0].header.frame_id == "cam"
    stages = ("decode", "policy", "publish", "step")
    wait_until(
        lambda: (
            all(f"latency_ms.{stage}.p50" in probe.diagnostics for stage in stages)
            and "commands_published" in probe.diagnostics
        ),
        what="per-stage latencies in /diagnostics",
    )
    for stage in stages:
        assert float(probe.diagnostics[f"latency_ms.{stage}.max"]) >= 0
    assert int(probe.diagnostics["commands_published"]) >= 1 and "frame_age_s" in probe.diagnostics


def test_compressed_and_raw_camera_frames_give_the_same_commands(make_node, policy_checkpoint):
    from sensor_msgs.msg import CompressedImage

    from vla_ros.ros.conversions import numpy_to_compressed_image

    frame = np.random.default_rng(3).integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
    raw_node, raw_probe = make_node("active", policy_path=str(policy_checkpoint))
    raw_probe.frame = frame
    packed_node, packed_probe = make_node("active", policy_path=str(policy_checkpoint), image_transport="compressed")
    packed_probe.frame = None  # its camera sends only PNG-compressed frames, on camera/image_raw/compressed
    publisher = packed_probe.node.create_publisher(CompressedImage, "camera/image_raw/compressed", qos.CAMERA_QOS)
    packed_probe.node.create_timer(0.02, lambda: publisher.publish(numpy_to_compressed_image(
        frame, "png", stamp=packed_probe.node.get_clock().now())))
    for probe in (raw_probe, packed_probe):
        probe.send_command(COMMAND)
    wait_until(lambda: len(raw_probe.positions) >= 3 and len(packed_probe.positions) >= 3, what="commands from both")
    # the same frame, joint state and command: the same first command, whichever transport carried the frame
    np.testing.assert_allclose(packed_probe.positions[0], raw_probe.positions[0], atol=1e-9)
    assert packed_node.counter("rejected.malformed_image") == 0


def test_commands_are_clamped_to_limits_when_the_arm_is_at_a_limit(make_node, policy_checkpoint):
    node, probe = make_node("active", policy_path=str(policy_checkpoint), max_step=0.01)
    probe.joint_positions = ROBOT.upper.copy()
    probe.send_command(COMMAND)
    wait_until(lambda: len(probe.positions) >= 3, what="joint commands")
    for command in probe.positions:
        assert np.all(command <= ROBOT.upper) and np.all(np.abs(command - ROBOT.upper) <= 0.01 + 1e-9)


def hold_steps(node, reason: str) -> int:
    return node.counter(f"hold.{reason}")


@pytest.mark.parametrize(
    "kind, hold",
    [
        ("image_step", "no_frame"),
        ("command_over_long", "no_command"),
        ("command_binary", "no_command"),
        ("joint_state_nan", "no_joint_state"),
    ],
)
def test_bad_inputs_while_active_publish_no_command(make_node, policy_checkpoint, kind, hold):
    node, probe = make_node("active", policy_path=str(policy_checkpoint))
    key = corrupt(probe, kind)
    # The rejection clears the input slot; only then send the command (a valid frame or joint state
    # sent before the corruption began could otherwise drive a step).
    wait_until(lambda: node.counter(key) >= 1, what=key)
    if not kind.startswith("command_"):
        probe.send_command(COMMAND)  # everything else valid: a command would be published
    wait_until(lambda: hold_steps(node, hold) >= 5, what=f"hold.{hold}")
    assert node.counter("commands_published") == 0 and not probe.positions
    # The node recovers as soon as the input is good again.
    probe.image_override = probe.joint_override = None
    if kind.startswith("command_"):
        probe.send_command(COMMAND)
    wait_until(lambda: probe.positions, what="commands after recovery")


@pytest.mark.parametrize("stale", ["frame", "joint_state"])
def test_stale_inputs_publish_no_command(make_node, policy_checkpoint, stale):
    node, probe = make_node("active", policy_path=str(policy_checkpoint), max_frame_age_s=0.3)
    if stale == "frame":
        probe.frame_age = 5.0  # stamped 5 s ago
    else:
        probe.joint_override = arrays_to_joint_state(ROBOT.joint_names, HOME, np.zeros(N), stamp=1.0)
    probe.send_command(COMMAND)
    wait_until(lambda: hold_steps(node, f"stale_{stale}") >= 5, what=f"stale_{stale} holds")
    assert node.counter("commands_published") == 0 and not probe.positions


def test_estop_holds_and_release_needs_a_new_command(make_node, policy_checkpoint):
    node, probe = make_node("active", policy_path=str(policy_checkpoint))
    probe.send_command(COMMAND)
    wait_until(lambda: probe.positions, what="commands before the e-stop")
    assert probe.call(probe.estop, SetBool.Request(data=True)).success
    engaged = hold_steps(node, "estop")
    wait_until(lambda: hold_steps(node, "estop") >= engaged + 1, what="a held step")
    published = node.counter("commands_published")
    wait_until(lambda: hold_steps(node, "estop") >= engaged + 5, what="held steps")
    assert node.counter("commands_published") == published
    assert probe.call(probe.estop, SetBool.Request(data=False)).success
    released = hold_steps(node, "no_command")
    wait_until(lambda: hold_steps(node, "no_command") >= released + 5, what="holds after release")
    assert node.counter("commands_published") == published
    probe.send_command(COMMAND)
    wait_until(lambda: node.counter("commands_published") > published, what="commands after a new command")


def test_clear_command_holds(make_node, policy_checkpoint):
    node, probe = make_node("active", policy_path=str(policy_checkpoint))
    probe.send_command(COMMAND)
    wait_until(lambda: probe.positions, what="commands")
    assert probe.call(probe.clear, Trigger.Request()).success
    cleared = hold_steps(node, "no_command")
    wait_until(lambda: hold_steps(node, "no_command") >= cleared + 1, what="a held step")
    published = node.counter("commands_published")
    wait_until(lambda: hold_steps(node, "no_command") >= cleared + 5, what="held steps")
    assert node.counter("commands_published") == published


def test_the_control_loop_keeps_running_while_the_executor_is_busy(make_node, policy_checkpoint):
    """The policy runs on the node's control thread, not in executor callbacks (a slow callback cannot stall it)."""
    node, probe = make_node("active", policy_path=str(policy_checkpoint))
    probe.send_command(COMMAND)
    wait_until(lambda: node.counter("commands_published") > 0, what="commands")
    steps_while_blocked = []

    def block_the_executor():
        timer.cancel()
        before = node.counter("steps")
        time.sleep(0.6)  # the executor's only thread is taken: no input, service or timer callback runs
        steps_while_blocked.append(node.counter("steps") - before)

    timer = probe.node.create_timer(0.01, block_the_executor)
    wait_until(lambda: steps_while_blocked, what="the blocking callback")
    assert steps_while_blocked[0] >= 3  # 12 periods at 20 Hz


def test_a_reference_frame_policy_takes_its_reference_from_a_frame_after_the_command(make_node, tmp_path):
    """The frame held when a command arrives belongs to the scene before it: it must not become the reference."""
    import torch

    checkpoint = make_policy_checkpoint(tmp_path, fusion="cross_attention", reference_frame=True)
    node, probe = make_node("active", policy_path=str(checkpoint))
    wait_until(lambda: node.counter("hold.no_command") >= 1, what="a held step before the command")
    probe.frame = None  # the camera pauses; the node keeps the last frame (the old scene)
    time.sleep(0.2)
    dropped = hold_steps(node, "no_frame")
    probe.send_command(COMMAND)
    wait_until(lambda: hold_steps(node, "no_frame") > dropped, what="the held frame dropped by the command")
    assert node.counter("commands_published") == 0
    new_scene = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    probe.frame = new_scene
    wait_until(lambda: probe.positions, what="commands on frames after the command")
    policy = node.controller.policy
    expected = policy.encoder.encode_images(new_scene).patches  # RGB in, bgr8 on the wire, RGB in the node
    assert torch.allclose(policy._reference, expected, atol=1e-5)


def test_frame_trigger_acts_once_on_each_new_frame_and_joint_state(make_node, policy_checkpoint):
    """``control_trigger: frame``: one step per frame with a joint state as new, none while no frame comes."""
    node, probe = make_node("active", feed=False, policy_path=str(policy_checkpoint), control_trigger="frame")
    probe.send_command(COMMAND)
    clock = probe.node.get_clock()
    for i in range(5):
        now = clock.now().nanoseconds * 1e-9
        probe.image_pub.publish(numpy_to_image(probe.frame, "bgr8", stamp=now, frame_id="cam"))
        time.sleep(0.02)  # the frame alone: no step until the joint state of the same instant is in
        assert len(probe.positions) == i
        probe.joint_pub.publish(arrays_to_joint_state(ROBOT.joint_names, HOME, np.zeros(N), now))
        wait_until(lambda i=i: len(probe.positions) == i + 1, what=f"the command of frame {i}")
        time.sleep(0.06)
    time.sleep(0.3)  # six control periods without a new frame: a timer would have acted again on the old one
    assert len(probe.positions) == 5 and node.counter("commands_published") == 5
    for command in probe.positions:
        assert_safe(command, HOME, 0.05)


def test_an_unknown_control_trigger_makes_configure_fail(make_node):
    node, _ = make_node(state="unconfigured", control_trigger="sometimes")
    assert node.trigger_configure() == TransitionCallbackReturn.FAILURE


def test_use_sim_time_paces_the_control_loop_on_the_clock_topic(make_node, policy_checkpoint):
    """A simulator at half real time: one control step per simulated period, not per wall-clock period."""
    from rclpy.time import Time
    from rosgraph_msgs.msg import Clock

    node, probe = make_node("active", policy_path=str(policy_checkpoint), use_sim_time=True)
    clock_pub = probe.node.create_publisher(Clock, "/clock", qos.CLOCK_QOS)
    sim = [1.0]

    def tick():
        sim[0] += 0.025  # 25 ms of simulated time per 50 ms of wall-clock time
        clock_pub.publish(Clock(clock=Time(seconds=sim[0]).to_msg()))

    probe.node.create_timer(0.05, tick)
    wait_until(lambda: node.counter("steps") > 0, what="steps on simulated time")
    start_steps, start_sim = node.counter("steps"), sim[0]
    time.sleep(2.0)
    steps, simulated = node.counter("steps") - start_steps, sim[0] - start_sim
    assert simulated < 1.6, "the probe's clock ran too fast for this check"
    assert abs(steps - simulated * 20) <= 4, (steps, simulated)  # 20 Hz of simulated time (about 40 on the wall)


def test_deactivate_stops_commands_and_reactivate_resumes(make_node, policy_checkpoint):
    node, probe = make_node("active", policy_path=str(policy_checkpoint))
    probe.send_command(COMMAND)
    wait_until(lambda: probe.positions, what="commands")
    assert node.trigger_deactivate() == TransitionCallbackReturn.SUCCESS
    steps = node.counter("steps")
    published = node.counter("commands_published")
    wait_until(lambda: probe.diagnostics.get("active") == "False", what="inactive in /diagnostics")
    time.sleep(0.2)  # several control periods: the timer must be gone
    assert node.counter("steps") == steps and node.counter("commands_published") == published
    assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS
    wait_until(lambda: node.counter("commands_published") > published, what="commands after reactivation")


def test_closed_loop_with_the_simulator_in_lockstep(make_node, policy_checkpoint, ros_context):
    """vla_node drives sim_node: one command per simulated step, every one of them safe."""
    pytest.importorskip("vla_ros.envs")
    from vla_ros.nodes.sim_node import SimNode

    node, probe = make_node(
        "configured", feed=False, policy_path=str(policy_checkpoint), require_new_frame=True
    )
    statuses = []
    probe.node.create_subscription(
        String, "sim/episode_status", lambda msg: statuses.append(json.loads(msg.data)), qos.STATUS_QOS
    )
    sim_parameters = {"mode": "lockstep", "command": COMMAND, "seed": 4, "lockstep_republish_s": 0.2}
    sim = SimNode(
        namespace=probe.namespace,
        context=ros_context,
        parameter_overrides=[Parameter(k, value=v) for k, v in sim_parameters.items()],
    )
    make_node.add(sim)
    assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS
    wait_until(lambda: statuses and statuses[-1].get("step", 0) >= 8, timeout=30, what="8 simulated steps")
    assert statuses[0]["command"] == COMMAND
    # Lockstep: every simulated step was driven by exactly one published command.
    wait_until(lambda: len(probe.positions) >= statuses[-1]["step"], what="the commands")
    assert abs(node.counter("commands_published") - statuses[-1]["step"]) <= 1
    for command in probe.positions:
        assert np.all(command >= ROBOT.lower) and np.all(command <= ROBOT.upper)


# ----------------------------------------------------------------------------- refusal

def _with_refusal(checkpoint: Path, threshold: float) -> Path:
    """A copy of ``checkpoint`` beside it (its CLIP path is relative) with a refusal rule."""
    import shutil

    out = checkpoint.parent / f"refusal_{threshold}"
    shutil.copytree(checkpoint, out, symlinks=True, dirs_exist_ok=True)
    config = json.loads((out / "config.json").read_text())
    config["refusal"] = {"threshold": threshold, "sigma_patches": 0.75}
    (out / "config.json").write_text(json.dumps(config))
    return out


def test_a_refused_command_moves_nothing_and_says_why(make_node, policy_checkpoint):
    """A presence threshold no region reaches: every command is refused, held, and reported on the status topic."""
    node, probe = make_node("active", policy_path=str(_with_refusal(policy_checkpoint, 1.0)))
    statuses: list[dict] = []
    probe.node.create_subscription(String, "vla/command_status", lambda m: statuses.append(json.loads(m.data)),
                                   qos.COMMAND_STATUS_QOS)
    probe.send_command("touch the purple cube")
    wait_until(lambda: node.counter("hold.refused_command") >= 5, what="refused steps")
    assert node.counter("commands_published") == 0 and not probe.positions
    wait_until(lambda: statuses, what="a command status")
    status = statuses[-1]
    assert status["state"] == "refused" and status["kind"] == "not_in_view"
    assert "touch the purple cube" in status["reason"] and status["presence"] < 1.0
    wait_until(lambda: probe.diagnostics.get("command") == "touch the purple cube", what="diagnostics")


def test_a_command_over_the_encoders_token_limit_is_refused_with_a_clear_status(make_node, policy_checkpoint):
    """Within the node's byte limit but over the text encoder's context (the tiny CLIP's 32 tokens): refused as
    unreadable, reported on the status topic and as a WARN in /diagnostics; nothing moves. Before, it was shown
    as current, /diagnostics said OK and every step failed with a policy error."""
    from diagnostic_msgs.msg import DiagnosticStatus

    node, probe = make_node("active", policy_path=str(_with_refusal(policy_checkpoint, -1.0)))
    statuses: list[dict] = []
    probe.node.create_subscription(String, "vla/command_status", lambda m: statuses.append(json.loads(m.data)),
                                   qos.COMMAND_STATUS_QOS)
    too_long = " ".join("abcdefghijklmnopqrstuvwxyzabcde")  # 31 one-letter words: 33 tokens with start and end
    probe.send_command(too_long)
    wait_until(lambda: statuses, what="a command status")
    status = statuses[-1]
    assert status["state"] == "refused" and status["kind"] == "unreadable" and "context" in status["reason"]
    wait_until(lambda: probe.diagnostics_status and probe.diagnostics_status[0] == DiagnosticStatus.WARN
               and "refused" in probe.diagnostics_status[1], what="a WARN diagnostics status")
    assert node.counter("commands_published") == 0 and not probe.positions
    assert node.counter("hold.policy_error") == 0  # refused before the policy, not failing in it


def test_an_accepted_command_reports_acting(make_node, policy_checkpoint):
    node, probe = make_node("active", policy_path=str(_with_refusal(policy_checkpoint, -1.0)))
    statuses: list[dict] = []
    probe.node.create_subscription(String, "vla/command_status", lambda m: statuses.append(json.loads(m.data)),
                                   qos.COMMAND_STATUS_QOS)
    probe.send_command(COMMAND)
    wait_until(lambda: probe.positions, what="commands")
    wait_until(lambda: statuses, what="a command status")
    assert statuses[-1]["state"] == "acting" and statuses[-1]["command"] == COMMAND
    assert node.counter("hold.refused_command") == 0


def test_the_shipped_policy_refuses_an_absent_object_through_the_node_and_nothing_moves(make_node):
    """The shipped checkpoint and its calibrated rule, a simulator frame, a command naming a colour and a shape
    that are not on it."""
    from vla_ros.envs.instructions import load_instructions
    from vla_ros.envs.tabletop import TabletopEnv
    from vla_ros.paths import share_path

    env = TabletopEnv(split="train")
    try:
        obs, info = env.reset(seed=900_000)
    finally:
        env.close()
    instructions = load_instructions()
    absent = next(c for c in instructions.colours if c not in {o["colour"] for o in info["objects"]})
    shape = next(s for s in instructions.shapes if s not in {o["shape"] for o in info["objects"]})
    node, probe = make_node("active", policy_path=str(share_path("models", "policy")))
    statuses: list[dict] = []
    probe.node.create_subscription(String, "vla/command_status", lambda m: statuses.append(json.loads(m.data)),
                                   qos.COMMAND_STATUS_QOS)
    probe.frame = obs["image"].copy()  # RGB; the probe sends it as bgr8
    probe.send_command(f"touch the {absent} {shape}")
    wait_until(lambda: node.counter("hold.refused_command") >= 5, what="refused steps", timeout=60)
    assert node.counter("commands_published") == 0 and not probe.positions
    wait_until(lambda: statuses, what="a command status")
    assert statuses[-1]["state"] == "refused" and absent in statuses[-1]["reason"]
    probe.send_command(info["command"])  # the object the env named is there: the arm moves
    wait_until(lambda: probe.positions, what="commands for a present object", timeout=60)
    assert statuses[-1]["state"] == "acting"
