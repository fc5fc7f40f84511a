"""The simulator graph on simulated time: both nodes with use_sim_time, sim_node driving /clock, the arm moving."""

import time

import pytest

from vla_ros.launcher import only_loopback

pytestmark = pytest.mark.skipif(not only_loopback(), reason="ROS tests run only in a loopback-only netns")


def test_the_simulator_graph_runs_on_the_clock_topic(tmp_path):
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rosgraph_msgs.msg import Clock
    from std_msgs.msg import Float64MultiArray

    from vla_ros.graph import sim_graph
    from vla_ros.launcher import NodeGraphProcesses, use_large_data_transport
    from vla_ros.ros import qos

    use_large_data_transport()
    # a simulator at half real time: simulated and wall-clock time differ, so acting on the wrong clock shows
    specs = sim_graph(vla_parameters={"use_sim_time": True},
                      sim_parameters={"use_sim_time": True, "real_time_factor": 0.5})
    context = rclpy.Context()
    with NodeGraphProcesses(specs, tmp_path / "logs") as graph:
        rclpy.init(context=context)
        node = rclpy.create_node("sim_time_probe", context=context)
        try:
            commands, clocks = [], []
            node.create_subscription(Float64MultiArray, "/forward_position_controller/commands", commands.append,
                                     qos.JOINT_COMMAND_QOS)
            node.create_subscription(Clock, "/clock", lambda m: clocks.append(m.clock.sec + m.clock.nanosec * 1e-9),
                                     qos.CLOCK_QOS)
            executor = SingleThreadedExecutor(context=context)
            executor.add_node(node)
            deadline = time.monotonic() + 150
            while len(commands) < 10 and time.monotonic() < deadline:
                executor.spin_once(timeout_sec=0.1)
                graph.check_alive()
            # frames stamped in simulated time (from 1 s) are fresh only on the simulated clock: on the wall
            # clock every one would be decades stale and the gate would hold
            assert len(commands) >= 10, graph.log_tail("vla_node") + graph.log_tail("sim_node")
            assert clocks and clocks[-1] > clocks[0] and all(b >= a for a, b in zip(clocks, clocks[1:]))
            assert clocks[-1] < 1000, "the clock is simulated time, not the wall clock"
        finally:
            node.destroy_node()
            rclpy.try_shutdown(context=context)
