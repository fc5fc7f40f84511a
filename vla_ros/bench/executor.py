"""``vla-ros bench executor``: callback dispatch rate of rclpy's executors, one process.

Two nodes play publish/subscribe ping-pong over a reliable topic (each message answered by the other
node) plus a 64x64 best-effort image stream at 20 Hz, on one executor: ``single`` (the
``SingleThreadedExecutor`` every package node uses) or ``multi`` (``MultiThreadedExecutor``, 4
threads). Rows: round trips per second and the image stream's delivery latency. This is why
``vla_node`` runs its policy on a thread of its own instead of on a multi-threaded executor.
"""

from __future__ import annotations

import threading
import time

import numpy as np

from vla_ros.reporting import add_json_argument


def add_arguments(parser) -> None:
    """Options of ``vla-ros bench executor``."""
    parser.add_argument("--seconds", type=float, default=5.0, help="measurement time per executor (default: 5)")
    parser.add_argument("--executors", nargs="+", default=["single", "multi"], choices=["single", "multi"])
    add_json_argument(parser)


def measure(kind: str, seconds: float) -> dict:
    """Ping-pong round trips and image latency on one executor kind; returns a report row."""
    import rclpy
    from rclpy.executors import MultiThreadedExecutor, SingleThreadedExecutor
    from sensor_msgs.msg import Image
    from std_msgs.msg import Int64

    from vla_ros.ros import qos
    from vla_ros.ros.conversions import numpy_to_image, stamp_to_seconds

    context = rclpy.Context()
    rclpy.init(context=context)
    try:
        ping = rclpy.create_node("bench_ping", context=context)
        pong = rclpy.create_node("bench_pong", context=context)
        round_trips, image_latency = [0], []
        to_pong = ping.create_publisher(Int64, "bench_executor/ping", qos.JOINT_COMMAND_QOS)
        to_ping = pong.create_publisher(Int64, "bench_executor/pong", qos.JOINT_COMMAND_QOS)
        pong.create_subscription(Int64, "bench_executor/ping", lambda msg: to_ping.publish(msg),
                                 qos.JOINT_COMMAND_QOS)

        def on_pong(msg):
            round_trips[0] += 1
            to_pong.publish(Int64(data=msg.data + 1))

        ping.create_subscription(Int64, "bench_executor/pong", on_pong, qos.JOINT_COMMAND_QOS)
        images = ping.create_publisher(Image, "bench_executor/image", qos.CAMERA_QOS)
        frame = np.zeros((64, 64, 3), np.uint8)
        ping.create_timer(0.05, lambda: images.publish(numpy_to_image(frame, "rgb8", ping.get_clock().now(), "c")))

        def on_image(msg):
            image_latency.append(pong.get_clock().now().nanoseconds * 1e-9 - stamp_to_seconds(msg.header.stamp))

        pong.create_subscription(Image, "bench_executor/image", on_image, qos.CAMERA_QOS)
        executor = (SingleThreadedExecutor(context=context) if kind == "single"
                    else MultiThreadedExecutor(num_threads=4, context=context))
        executor.add_node(ping)
        executor.add_node(pong)
        thread = threading.Thread(target=executor.spin, daemon=True)
        thread.start()
        deadline = time.monotonic() + 10.0
        while to_pong.get_subscription_count() == 0 or to_ping.get_subscription_count() == 0:
            if time.monotonic() > deadline:
                raise RuntimeError("the ping-pong nodes did not discover each other")
            time.sleep(0.05)
        time.sleep(0.5)
        round_trips[0], image_latency[:] = 0, []
        to_pong.publish(Int64(data=0))
        time.sleep(seconds)
        count, latency = round_trips[0], np.asarray(image_latency) * 1e3
        executor.shutdown()
        thread.join(timeout=5)
        ping.destroy_node()
        pong.destroy_node()
    finally:
        rclpy.try_shutdown(context=context)
    return {"name": f"executor/{kind}", "device": "cpu", "per_s": count / seconds, "round_trips": count,
            "p50_ms": float(np.median(latency)) if len(latency) else float("nan"),
            "p99_ms": float(np.percentile(latency, 99)) if len(latency) else float("nan"),
            "images_received": int(len(latency))}


def run(args) -> int:
    """Measure each executor; print the table; write JSON."""
    from vla_ros.launcher import only_loopback
    from vla_ros.reporting import format_table, machine_description, write_json

    if not only_loopback():
        print("vla-ros bench executor: run it inside a loopback-only network namespace "
              "(scripts/loopback_netns.sh vla-ros bench executor)")
        return 2
    rows = [measure(kind, args.seconds) for kind in args.executors]
    by_name = {row["name"]: row for row in rows}
    ratios = {}
    if {"executor/single", "executor/multi"} <= set(by_name):
        ratios["round_trips single/multi"] = by_name["executor/single"]["per_s"] / max(
            by_name["executor/multi"]["per_s"], 1e-9)
    print(format_table(rows, ["name", "per_s", "round_trips", "p50_ms", "p99_ms", "images_received"]))
    for key, value in ratios.items():
        print(f"{key}: {value:.0f}x")
    write_json(args.json, {"machine": machine_description(), "rows": rows, "ratios": ratios})
    return 0
