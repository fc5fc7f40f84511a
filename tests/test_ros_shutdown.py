"""SIGINT while vla_node is sending joint commands: a clean exit, no 'context is invalid' error, even when
the node was started with SIGINT ignored."""

import contextlib
import json
import os
import signal
import subprocess
import time

import pytest

from vla_ros.launcher import only_loopback

pytestmark = pytest.mark.skipif(not only_loopback(), reason="ROS tests run only in a loopback-only netns")


def test_sigint_while_moving_exits_cleanly(tmp_path):
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from std_msgs.msg import Float64MultiArray, String

    from vla_ros.graph import sim_graph
    from vla_ros.launcher import NodeGraphProcesses, use_large_data_transport
    from vla_ros.ros import qos

    use_large_data_transport()
    # a slow simulator: the episode is still running when the signal comes
    specs = sim_graph(sim_parameters={"start_episode_on_launch": False, "real_time_factor": 0.25})
    context = rclpy.Context()
    # Start the nodes with SIGINT ignored, as a shell's background job (`cmd &`, nohup) starts them: they must
    # still stop on SIGINT (vla_node did not, until it installed its handler explicitly).
    graph = NodeGraphProcesses(specs, tmp_path / "logs")
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        graph.start()
    finally:
        signal.signal(signal.SIGINT, previous)
    with contextlib.ExitStack() as stack:
        stack.callback(graph.stop)
        rclpy.init(context=context)
        node = rclpy.create_node("sigint_probe", context=context)
        try:
            commands = []
            node.create_subscription(Float64MultiArray, "/forward_position_controller/commands", commands.append,
                                     qos.JOINT_COMMAND_QOS)
            start = node.create_publisher(String, "/sim/start_episode", 10)
            executor = SingleThreadedExecutor(context=context)
            executor.add_node(node)
            deadline, last_request = time.monotonic() + 120, -10.0
            while len(commands) < 5 and time.monotonic() < deadline:
                if time.monotonic() > last_request + 3:  # until the simulator has subscribed
                    start.publish(String(data=json.dumps({"seed": 1})))
                    last_request = time.monotonic()
                executor.spin_once(timeout_sec=0.1)
                graph.check_alive()
            assert len(commands) >= 5, graph.log_tail("vla_node")
            process = graph.processes["vla_node"]
            process.send_signal(signal.SIGINT)
            try:
                code = process.wait(timeout=20)
            except subprocess.TimeoutExpired:  # say where it hangs: SIGUSR1 dumps every thread's stack to the log
                process.send_signal(signal.SIGUSR1)
                time.sleep(2)
                raise AssertionError("vla_node did not exit within 20 s of SIGINT:\n"
                                     + graph.log_tail("vla_node", 120)) from None
            assert code == 0
        finally:
            node.destroy_node()
            rclpy.try_shutdown(context=context)
        log = (tmp_path / "logs" / "vla_node.log").read_text()
        assert "context is invalid" not in log and "Traceback" not in log and "control.error" not in log, log[-2000:]


def test_an_idle_node_started_with_sigint_ignored_still_stops_on_sigint(tmp_path):
    """An unconfigured vla_node (no timers: its executor waits without end) from a shell's background job."""
    import sys

    from vla_ros.launcher import large_frame_transport_env

    env = {**os.environ, **large_frame_transport_env()}
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # what `cmd &` in a script gives its children
    try:
        with open(tmp_path / "vla_node.log", "w") as log:
            process = subprocess.Popen([sys.executable, "-m", "vla_ros.nodes.vla_node", "--ros-args", "-p",
                                        "autostart:=false"], stdout=log, stderr=subprocess.STDOUT, env=env,
                                       start_new_session=True)
    finally:
        signal.signal(signal.SIGINT, previous)
    try:
        _wait_for_service("/vla/estop", timeout=60)  # constructed: the e-stop is served after the imports
        time.sleep(1)  # now waiting for a lifecycle transition
        assert process.poll() is None, (tmp_path / "vla_node.log").read_text()[-2000:]
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=10) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def _wait_for_service(name: str, timeout: float) -> None:
    """Wait until a node offers the SetBool service ``name``: a fixed sleep fails on a slow machine, where
    importing the policy stack took 10 s."""
    import rclpy
    from std_srvs.srv import SetBool

    context = rclpy.Context()
    rclpy.init(context=context)
    try:
        node = rclpy.create_node("service_probe", context=context)
        try:
            assert node.create_client(SetBool, name).wait_for_service(timeout_sec=timeout), f"no {name}"
        finally:
            node.destroy_node()
    finally:
        rclpy.try_shutdown(context=context)
