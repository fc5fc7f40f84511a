"""Two simulated robots side by side, each in its own namespace, each with config/*.yaml applied."""

import time

import pytest

from vla_ros.launcher import only_loopback

pytestmark = pytest.mark.skipif(not only_loopback(), reason="ROS tests run only in a loopback-only netns")


def test_two_namespaced_graphs_run_side_by_side_with_their_yaml(tmp_path):
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from sensor_msgs.msg import Image
    from std_msgs.msg import Float64MultiArray

    from vla_ros.graph import sim_graph
    from vla_ros.launcher import NodeGraphProcesses, use_large_data_transport
    from vla_ros.nodes.vla_node import PARAMETERS
    from vla_ros.ros import qos

    # the YAML turns the debug image on; the node's own default is off: seeing it proves the file applied
    assert dict((name, default) for name, default, _ in PARAMETERS)["publish_debug_image"] is False
    use_large_data_transport()
    robots = ("/robot1", "/robot2")
    specs = [spec for ns in robots for spec in sim_graph(namespace=ns, sim_parameters={"real_time_factor": 0.5})]
    context = rclpy.Context()
    with NodeGraphProcesses(specs, tmp_path / "logs") as graph:
        rclpy.init(context=context)
        node = rclpy.create_node("namespace_probe", context=context)
        try:
            seen = {topic: [] for ns in ("", *robots)
                    for topic in (f"{ns}/forward_position_controller/commands", f"{ns}/vla/grounding/debug_image")}
            for topic, received in seen.items():
                kind, profile = ((Image, qos.DEBUG_IMAGE_QOS) if topic.endswith("debug_image")
                                 else (Float64MultiArray, qos.JOINT_COMMAND_QOS))
                node.create_subscription(kind, topic, received.append, profile)
            executor = SingleThreadedExecutor(context=context)
            executor.add_node(node)
            deadline = time.monotonic() + 150
            while time.monotonic() < deadline and not all(seen[t] for t in seen if t.startswith("/robot")):
                executor.spin_once(timeout_sec=0.1)
                graph.check_alive()
            missing = [t for t in seen if t.startswith("/robot") and not seen[t]]
            assert not missing, (missing, graph.log_tail("robot1.vla_node"), graph.log_tail("robot2.vla_node"))
            # nothing leaks to the root namespace
            assert not seen["/forward_position_controller/commands"] and not seen["/vla/grounding/debug_image"]
            assert set(graph.processes) == {f"robot{i}.{name}" for i in (1, 2) for name in ("sim_node", "vla_node")}
        finally:
            node.destroy_node()
            rclpy.try_shutdown(context=context)
