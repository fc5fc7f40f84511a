"""Real rclpy over Fast DDS: a peer process started by the package's launcher echoes messages back."""

import os
import time

import numpy as np
import pytest
import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image
from std_msgs.msg import String

from vla_ros.graph import NodeSpec
from vla_ros.launcher import NodeGraphProcesses, node_command, only_loopback

pytestmark = pytest.mark.skipif(not only_loopback(), reason="ROS tests run only in a loopback-only netns")


def test_tests_run_isolated_on_loopback():
    assert only_loopback(), "the test command must run inside scripts/loopback_netns.sh"


def test_node_command_carries_params_and_remaps():
    spec = NodeSpec("x", "pkg.mod", "n", parameters={"rate": 2.5, "name": "1", "on": True},
                    remappings={"a": "b"})
    cmd = node_command(spec, python="py")
    assert cmd[:5] == ["py", "-m", "pkg.mod", "--ros-args", "-r"]
    assert "rate:=2.5" in cmd and 'name:="1"' in cmd and "on:=true" in cmd and "a:=b" in cmd


def test_image_and_string_round_trip_between_processes(tmp_path):
    tests_dir = os.path.dirname(__file__)
    env = {"PYTHONPATH": tests_dir + os.pathsep + os.environ.get("PYTHONPATH", "")}
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(48, 64, 3), dtype=np.uint8)
    image = Image(height=48, width=64, encoding="rgb8", step=64 * 3, data=pixels.tobytes())
    image.header.frame_id = "camera_optical"
    text = "push the red cube to the left — ünïcode ✓"
    received = {}

    peer = NodeSpec("echo_peer", "ros_echo_peer", "echo_peer")
    with NodeGraphProcesses([peer], tmp_path, env=env) as graph:
        rclpy.init()
        try:
            node = rclpy.create_node("probe")
            qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
            image_pub = node.create_publisher(Image, "probe/image", qos)
            text_pub = node.create_publisher(String, "probe/text", qos)
            node.create_subscription(Image, "echo/image", lambda m: received.setdefault("image", m), qos)
            node.create_subscription(String, "echo/text", lambda m: received.setdefault("text", m), qos)
            executor = SingleThreadedExecutor()
            executor.add_node(node)
            deadline = time.monotonic() + 30.0
            while len(received) < 2 and time.monotonic() < deadline:
                graph.check_alive()
                image_pub.publish(image)
                text_pub.publish(String(data=text))
                executor.spin_once(timeout_sec=0.2)
            node.destroy_node()
        finally:
            rclpy.shutdown()
        codes = graph.stop()

    assert set(received) == {"image", "text"}, graph.log_tail("echo_peer")
    echoed = received["image"]
    assert (echoed.height, echoed.width, echoed.encoding, echoed.step) == (48, 64, "rgb8", 192)
    assert echoed.header.frame_id == "camera_optical"
    assert bytes(echoed.data) == pixels.tobytes()
    assert received["text"].data == text
    assert codes["echo_peer"] == 0
