"""``vla-ros bench ros``: end-to-end latency of ``vla_node``, camera Image publish -> joint command receipt.

A driver node publishes 640x480 rgb8 frames (simulator renders, upscaled) at 30 Hz, joint states at
100 Hz and a latched command; ``vla_node`` runs as its own process with the shipped checkpoints (debug
image off). Each joint command is matched to the newest frame published before it arrived. Two node
settings are measured in one run: ``event`` (act on each new frame, polled at 200 Hz: processing
latency; frames not acted on count as dropped) and ``timer`` (the default 20 Hz loop on the newest
frame: latency including the wait for the next tick; frames skipped between ticks are by design).
RSS is the node process's resident memory.

Where the time goes: the node times each stage of a step and reports rolling windows (its last 200 samples)
on ``/diagnostics``; the bench reads them at the end of each setting. Stages, in order: ``transport`` (frame
header stamp -> the node's image callback), ``queued`` (callback -> the control step that acts on it),
``decode`` (Image -> array), ``policy`` (resize, CLIP, fusion, actor), ``gate`` (safety filter), ``publish``;
``step`` is decode..publish. What end-to-end latency has beyond their sum is the command's way back to the
bench and its callback.
"""

from __future__ import annotations

import time

import numpy as np

from vla_ros.reporting import add_json_argument

FRAME_SHAPE = (480, 640)
STAGES = ("transport", "queued", "decode", "policy", "gate", "publish", "step")


def add_arguments(parser) -> None:
    """Options of ``vla-ros bench ros``."""
    parser.add_argument("--seconds", type=float, default=15.0, help="measurement time per setting (default: 15)")
    parser.add_argument("--fps", type=float, default=30.0, help="camera rate (default: 30)")
    parser.add_argument("--policy", help="policy checkpoint folder (default: the shipped models/policy)")
    parser.add_argument("--settings", nargs="+", default=["event", "timer"], choices=["event", "timer"])
    parser.add_argument("--startup-timeout", type=float, default=120.0)
    parser.add_argument("--log-dir", help="keep the node logs here (default: a temporary folder)")
    add_json_argument(parser)


def _camera_frames(count: int = 8) -> list[np.ndarray]:
    import cv2
    import gymnasium as gym

    import vla_ros.envs  # noqa: F401

    env = gym.make("vla_ros/Reach-v0", image_size=128)
    try:
        frames = []
        for seed in range(count):
            obs, _ = env.reset(seed=seed)
            frames.append(cv2.resize(obs["image"], FRAME_SHAPE[::-1], interpolation=cv2.INTER_LINEAR))
        return frames
    finally:
        env.close()


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def measure(setting: str, args, frames: list[np.ndarray], tmp_dir) -> dict:
    """Run vla_node with one setting and measure; returns a report row."""
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.executors import SingleThreadedExecutor
    from sensor_msgs.msg import Image, JointState
    from std_msgs.msg import Float64MultiArray, String

    from vla_ros.graph import vla_node_spec
    from vla_ros.launcher import NodeGraphProcesses
    from vla_ros.paths import share_path
    from vla_ros.robot_description import load_robot_description
    from vla_ros.ros import qos
    from vla_ros.ros.conversions import arrays_to_joint_state, numpy_to_image, stamp_to_seconds
    from vla_ros.ros.diagnostics import key_values_to_dict

    robot = load_robot_description()
    n = len(robot.joint_names)
    params = {"policy_path": args.policy or str(share_path("models", "policy")), "publish_debug_image": False}
    if setting == "event":
        params.update(require_new_frame=True, control_rate_hz=200.0)
    spec = vla_node_spec(params)
    with NodeGraphProcesses([spec], tmp_dir / setting) as graph:
        rclpy.init()
        try:
            node = rclpy.create_node("bench_ros_driver")
            image_pub = node.create_publisher(Image, "camera/image_raw", qos.CAMERA_QOS)
            joint_pub = node.create_publisher(JointState, "joint_states", qos.JOINT_STATES_PUBLISHER_QOS)
            command_pub = node.create_publisher(String, "vla/command", qos.COMMAND_QOS)
            published: dict[float, float] = {}  # frame stamp -> wall time of publish
            commands: list[float] = []  # receipt times
            matched: list[float] = []
            acted: set[float] = set()
            measuring = [False]

            def on_command(_msg):
                now = time.perf_counter()
                commands.append(now)
                if measuring[0] and published:
                    stamp, sent = max(published.items(), key=lambda kv: kv[1])  # newest frame
                    if stamp not in acted:
                        acted.add(stamp)
                        matched.append(now - sent)

            node.create_subscription(Float64MultiArray, "forward_position_controller/commands", on_command,
                                     qos.JOINT_COMMAND_QOS)
            diagnostics: dict[str, str] = {}

            def on_diagnostics(msg):
                for status in msg.status:
                    if "vla_node" in status.name:
                        diagnostics.update(key_values_to_dict(status))

            node.create_subscription(DiagnosticArray, "/diagnostics", on_diagnostics, qos.DIAGNOSTICS_QOS)
            executor = SingleThreadedExecutor()
            executor.add_node(node)
            command_pub.publish(String(data="touch the red cube"))
            q = (np.asarray(robot.lower) + np.asarray(robot.upper)) / 2

            def publish_joints():
                joint_pub.publish(arrays_to_joint_state(robot.joint_names, q, np.zeros(n),
                                                        node.get_clock().now()))

            deadline = time.monotonic() + args.startup_timeout
            while not commands and time.monotonic() < deadline:  # wait for the node's first command
                graph.check_alive()
                publish_joints()
                image_pub.publish(numpy_to_image(frames[0], "rgb8", node.get_clock().now(), "camera"))
                executor.spin_once(timeout_sec=0.1)
            if not commands:
                raise RuntimeError("vla_node published no command:\n" + graph.log_tail(spec.name))
            time.sleep(0.5)
            executor.spin_once(timeout_sec=0.1)
            published.clear()
            matched.clear()
            measuring[0] = True
            period, next_frame, next_joint = 1.0 / args.fps, time.perf_counter(), time.perf_counter()
            end = time.perf_counter() + args.seconds
            index = 0
            while time.perf_counter() < end:
                now = time.perf_counter()
                if now >= next_joint:
                    publish_joints()
                    next_joint += 0.01
                if now >= next_frame:
                    stamp = node.get_clock().now()
                    published[stamp_to_seconds(stamp.to_msg())] = time.perf_counter()
                    image_pub.publish(numpy_to_image(frames[index % len(frames)], "rgb8", stamp, "camera"))
                    index += 1
                    next_frame += period
                executor.spin_once(timeout_sec=max(0.0, min(next_frame, next_joint) - time.perf_counter()))
            settle = time.perf_counter() + 1.5  # and one more diagnostics report (1 s period)
            while time.perf_counter() < settle:
                executor.spin_once(timeout_sec=0.05)
            rss = _rss_mb(graph.processes[spec.name].pid)
            node.destroy_node()
        finally:
            rclpy.try_shutdown()
    lat = np.asarray(matched) * 1e3
    sent = len(published)
    return {"name": f"vla_node/{setting}", "device": "cpu", "frames_published": sent,
            "frames_acted_on": int(len(lat)), "dropped_frames": int(sent - len(lat)),
            "p50_ms": float(np.median(lat)) if len(lat) else float("nan"),
            "p99_ms": float(np.percentile(lat, 99)) if len(lat) else float("nan"),
            "per_s": float(len(lat) / args.seconds), "node_rss_mb": rss,
            "stages_ms": {stage: {q: float(diagnostics.get(f"latency_ms.{stage}.{q}", "nan")) for q in ("p50", "p99")}
                          for stage in STAGES}}


def run(args) -> int:
    """Measure each setting; print the table; write JSON."""
    import tempfile
    from pathlib import Path

    from vla_ros.launcher import only_loopback, use_large_data_transport
    from vla_ros.reporting import format_table, machine_description, write_json

    if not only_loopback():
        print("vla-ros bench ros: run it inside a loopback-only network namespace "
              "(scripts/loopback_netns.sh vla-ros bench ros)")
        return 2
    use_large_data_transport()
    frames = _camera_frames()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for setting in args.settings:
            row = measure(setting, args, frames, Path(args.log_dir or tmp))
            rows.append(row)
            print(f"{row['name']}: p50 {row['p50_ms']:.1f} ms, p99 {row['p99_ms']:.1f} ms, "
                  f"dropped {row['dropped_frames']}/{row['frames_published']}", flush=True)
    columns = ["name", "device", "p50_ms", "p99_ms", "per_s", "frames_published", "dropped_frames", "node_rss_mb"]
    print(format_table(rows, columns))
    stage_rows = [{"stage": stage, **{f"{row['name']} {q}_ms": row["stages_ms"][stage][q] for row in rows
                                      for q in ("p50", "p99")}} for stage in STAGES]
    print("per stage (the node's last 200 samples of each):")
    print(format_table(stage_rows, list(stage_rows[0])))
    write_json(args.json, {"machine": machine_description(), "rows": rows, "ratios": {}})
    return 0
