"""SIGINT while vla_node is sending joint commands: a clean exit, no 'context is invalid' error."""

import json
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
    with NodeGraphProcesses(specs, tmp_path / "logs") as graph:
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
