"""``vla-ros demo``: the closed loop over ROS 2 in the simulator, with the shipped checkpoints.

Starts ``sim_node`` (MuJoCo arm, camera, controller) and ``vla_node`` (CLIP + policy + safety gate) as
processes (the graph of ``launch/sim.launch.py``), then asks the simulator for a series of episodes;
each episode's command goes out on the latched command topic and the VLA node drives the arm from
camera frames alone. Prints a per-command success table and writes, into ``--out``:

* ``demo.mp4``: the simulator's viewing camera (640x480, a three-quarter view of the arm; the policy never
  sees it) with the policy's camera frame and grounding heatmap inset, the command in a caption band below
  the scene, a title card per episode (layout: :mod:`vla_ros.envs.video_layout`);
* ``contact_sheet.png``: the first and last frame of each episode with its outcome;
* ``demo.mcap``: the topics under their absolute names (Foxglove, ``ros2 bag``); open it in Foxglove with
  the layout ``config/foxglove/demo_layout.json``.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from vla_ros.reporting import add_json_argument

VIDEO_TOPICS = ("/viewer/image_raw", "/camera/image_raw")  # the demo waits for these to match before starting
# topic -> message type recorded into the MCAP file (absolute names, as ROS tools and rosbag2 write them)
RECORDED_TOPICS = {
    "/camera/image_raw": "sensor_msgs/msg/Image",
    "/viewer/image_raw": "sensor_msgs/msg/Image",
    "/vla/command": "std_msgs/msg/String",
    "/vla/command_status": "std_msgs/msg/String",
    "/joint_states": "sensor_msgs/msg/JointState",
    "/forward_position_controller/commands": "std_msgs/msg/Float64MultiArray",
    "/sim/episode_status": "std_msgs/msg/String",
    "/vla/grounding/debug_image": "sensor_msgs/msg/Image",
    "/vla/grounding/heatmap": "sensor_msgs/msg/Image",
    "/diagnostics": "diagnostic_msgs/msg/DiagnosticArray",
}
FOXGLOVE_LAYOUT = "config/foxglove/demo_layout.json"


def add_arguments(parser) -> None:
    """Options of ``vla-ros demo``."""
    parser.add_argument("--episodes", type=int, default=6, help="episodes (commands) to run (default: 6)")
    parser.add_argument("--task", default="reach", choices=["reach", "push", "mixed"],
                        help="simulated task; mixed: a reach or push command per episode (a mixed checkpoint)")
    parser.add_argument("--split", default="train", help="instruction split of the commands (default: train)")
    parser.add_argument("--seed", type=int, default=500, help="seed of the first episode (default: 500)")
    parser.add_argument("--robot", default="", help="robot file: a name in sim/robots (vla_arm, so101) or a path "
                        "(default: vla_arm)")
    parser.add_argument("--policy", help="policy checkpoint folder (default: the robot's shipped checkpoint, "
                        "models/policy for vla_arm, models/<robot> for the others)")
    parser.add_argument("--mode", default="real_time", choices=["real_time", "lockstep"],
                        help="simulator stepping: real time on a timer, or one step per joint command")
    parser.add_argument("--out", default="artifacts/demo", help="folder for the MP4, MCAP, logs (default: %(default)s)")
    parser.add_argument("--contact-sheet", metavar="PNG",
                        help="also copy the contact sheet here (the README's: docs/media/demo_contact_sheet.png)")
    parser.add_argument("--episode-timeout", type=float, default=30.0, help="seconds allowed per episode")
    parser.add_argument("--startup-timeout", type=float, default=120.0, help="seconds allowed for nodes to start")
    parser.add_argument("--compare-in-process", action="store_true",
                        help="also run the same seeds through the Policy in this process (no ROS) and report both "
                        "success rates and how many episodes agree (lockstep should match closely)")
    parser.add_argument("--allow-network", action="store_true",
                        help="run even though interfaces other than loopback exist (DDS may leave the machine)")
    add_json_argument(parser)


class _DemoDriver:
    """The demo's own node: requests episodes, watches their status, records topics and frames."""

    def __init__(self, recorder):
        import importlib

        import rclpy
        from rclpy.qos import QoSProfile
        from std_msgs.msg import String

        from vla_ros.ros import qos

        self.node = rclpy.create_node("vla_demo")
        self.recorder = recorder
        self.statuses: list[dict] = []
        self.frames: list = []  # (viewing-camera frame, policy view, status line, episode)
        self.policy_view = None  # the latest grounding heatmap image, else camera frame
        self.episode = 0
        self.status_line = ""
        self.diagnostics_seen = False
        self.start_pub = self.node.create_publisher(String, "/sim/start_episode", 10)
        self.subscriptions: dict = {}
        profiles = {"/camera/image_raw": qos.CAMERA_QOS, "/viewer/image_raw": qos.VIEW_QOS,
                    "/vla/command": qos.COMMAND_QOS, "/joint_states": qos.JOINT_STATES_QOS,
                    "/vla/grounding/debug_image": qos.DEBUG_IMAGE_QOS, "/vla/grounding/heatmap": qos.DEBUG_IMAGE_QOS,
                    "/forward_position_controller/commands": qos.JOINT_COMMAND_RECORDING_QOS}
        for topic, type_name in RECORDED_TOPICS.items():
            package, _, name = type_name.split("/")  # "pkg/msg/Type" -> class Type of module pkg.msg
            msg_cls = getattr(importlib.import_module(f"{package}.msg"), name)
            recorder.add_topic(topic, type_name)
            profile = profiles.get(topic, QoSProfile(depth=50))
            self.subscriptions[topic] = self.node.create_subscription(
                msg_cls, topic, self._raw_callback(topic), profile, raw=True)

    def _raw_callback(self, topic: str):
        from rclpy.serialization import deserialize_message
        from sensor_msgs.msg import Image
        from std_msgs.msg import String

        from vla_ros.ros.conversions import image_to_numpy

        def callback(data: bytes) -> None:
            self.recorder.write(topic, data)
            if topic == "/sim/episode_status":
                status = json.loads(deserialize_message(data, String).data)
                self.statuses.append(status)
                outcome = ("success" if status.get("is_success") else "no success") if status.get("done") else ""
                self.status_line = f"step {status.get('step', 0)}" + (f" - {outcome}" if outcome else "")
            elif topic == "/diagnostics":
                self.diagnostics_seen = True
            elif topic == "/vla/grounding/heatmap":
                self.policy_view = image_to_numpy(deserialize_message(data, Image))
            elif topic == "/camera/image_raw" and self.policy_view is None:
                self.policy_view = image_to_numpy(deserialize_message(data, Image))
            elif topic == "/viewer/image_raw":
                self.frames.append((image_to_numpy(deserialize_message(data, Image)), self.policy_view,
                                    self.status_line, self.episode))

        return callback


def write_demo_video(frames: list, rows: list[dict], out: Path) -> tuple[Path | None, Path | None]:
    """Write ``demo.mp4`` (title card, then the composed frames, per episode) and ``contact_sheet.png``."""
    import cv2

    from vla_ros.envs.video import write_video
    from vla_ros.envs.video_layout import compose_frame, contact_sheet, title_card

    if not frames:
        return None, None
    video, sheet_rows = [], []
    for row in rows:
        episode = [f for f in frames if f[3] == row["episode"]]
        if not episode:
            continue
        outcome = "success" if row["success"] else row.get("error", "no success")
        # captioned with the episode's own command: the scene's first frame arrives before its command does
        composed = [compose_frame(view, policy_view, row["command"], status)
                    for view, policy_view, status, _ in episode]
        height, width = composed[0].shape[:2]
        video += [title_card(row["command"], row["episode"], width, height, f"seed {row['seed']}")] * 20
        video += composed + [compose_frame(episode[-1][0], episode[-1][1], row["command"],
                                           f"{row['steps']} steps - {outcome}")] * 20
        sheet_rows.append((composed[0], video[-1], f"{row['episode']}: \"{row['command']}\" - {outcome}"))
    path = write_video(video, out / "demo.mp4", fps=20)
    sheet = out / "contact_sheet.png"
    cv2.imwrite(str(sheet), cv2.cvtColor(contact_sheet(sheet_rows), cv2.COLOR_RGB2BGR))
    return path, sheet


def _in_process(policy_path, args, rows: list[dict]) -> dict:
    """The demo's seeds run through :class:`Policy` in this process; each row gains ``in_process`` (success)."""
    import gymnasium as gym

    import vla_ros.envs  # noqa: F401  (registers the env ids)
    from vla_ros.policy.envs import env_id
    from vla_ros.policy.policy import Policy
    from vla_ros.policy.rollout import run_episode

    policy = Policy.load(Path(policy_path))
    env_kwargs = {**policy.config.get("env", {}), "split": args.split}
    env = gym.make(env_id(args.task), **env_kwargs)
    try:
        for row in rows:
            row["in_process"] = run_episode(policy, env, seed=row["seed"]).success
    finally:
        env.close()
    local = [r["in_process"] for r in rows]
    rate, rate_ros = sum(local) / max(1, len(rows)), sum(r["success"] for r in rows) / max(1, len(rows))
    agreeing = sum(r["in_process"] == r["success"] for r in rows)
    print(f"in process: {sum(local)}/{len(rows)} ({rate:.3f}) against {rate_ros:.3f} over ROS; "
          f"{agreeing}/{len(rows)} episodes agree", flush=True)
    return {"success_rate": rate, "agreeing_episodes": agreeing, "difference": rate_ros - rate}


def _spin_until(executor, predicate, timeout_s: float, graph) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        executor.spin_once(timeout_sec=0.05)
        if predicate():
            return True
        graph.check_alive()
    return False


def run(args) -> int:
    """Run the demo; exit code 0 when every episode ran (successful or not), 1 on a failure to run."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from std_msgs.msg import String

    from vla_ros.graph import sim_graph
    from vla_ros.launcher import NodeGraphProcesses, only_loopback, use_large_data_transport
    from vla_ros.nodes.vla_node_parameters import default_policy_path
    from vla_ros.policy.checkpoint import CheckpointError, read_config
    from vla_ros.recording import McapRecorder
    from vla_ros.reporting import format_table, write_json

    if not only_loopback() and not args.allow_network:
        print("vla-ros demo: network interfaces other than loopback exist; run it through scripts/demo.sh "
              "(a loopback-only network namespace) or pass --allow-network")
        return 2
    policy = args.policy or default_policy_path(args.robot)
    try:  # a wrong folder is the user's error now, not six failed episodes behind a node that cannot activate
        read_config(policy)
    except CheckpointError as exc:
        print(f"vla-ros demo: --policy: {exc}")
        return 2
    use_large_data_transport()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    vla_parameters = {"policy_path": policy, "publish_debug_image": True}  # the video's inset
    if args.mode == "lockstep":
        # The simulator steps once per command, so the node acts once per new frame; simulated time is not
        # wall-clock time there, so a slow (loaded) machine must not make frames count as stale.
        vla_parameters.update(require_new_frame=True, max_frame_age_s=60.0, max_joint_state_age_s=60.0)
    graph_specs = sim_graph(
        robot=args.robot,
        vla_parameters=vla_parameters,
        sim_parameters={"task": args.task, "split": args.split, "mode": args.mode,
                        "start_episode_on_launch": False, "publish_view": True},
    )
    recorder = McapRecorder(out / "demo.mcap")
    rows = []
    with NodeGraphProcesses(graph_specs, out / "logs") as graph:
        rclpy.init()
        try:
            driver = _DemoDriver(recorder)
            executor = SingleThreadedExecutor()
            executor.add_node(driver.node)
            print("waiting for the nodes to start (models load on activation) ...", flush=True)
            if not _spin_until(executor, lambda: driver.diagnostics_seen, args.startup_timeout, graph):
                print("vla-ros demo: vla_node did not come up:\n" + graph.log_tail("vla_node"))
                return 1
            # a request published before discovery has matched sim_node's subscription is lost (volatile topic), and
            # so is a first frame published before the recorder's subscription matched its publisher
            if not _spin_until(executor, lambda: driver.start_pub.get_subscription_count() >= 1 and all(
                    driver.subscriptions[t].get_publisher_count() >= 1 for t in VIDEO_TOPICS),
                    args.startup_timeout, graph):
                print("vla-ros demo: sim_node never matched /sim/start_episode or the camera topics:\n"
                      + graph.log_tail("sim_node"))
                return 1
            for i in range(args.episodes):
                seed = args.seed + i
                driver.statuses.clear()
                driver.episode, driver.status_line, driver.policy_view = i + 1, "", None
                request = {"seed": seed, "task": args.task, "split": args.split}
                driver.start_pub.publish(String(data=json.dumps(request)))
                start = time.monotonic()
                finished = _spin_until(
                    executor, lambda: any(s.get("done") or "error" in s for s in driver.statuses),
                    args.episode_timeout, graph)
                last = driver.statuses[-1] if driver.statuses else {}
                # the last step's viewing-camera frame (large, best effort) may arrive after the final status
                steps_done = int(last.get("step", 0))
                _spin_until(executor, lambda e=i + 1, n=steps_done: sum(f[3] == e for f in driver.frames) >= n,
                            2.0, graph)
                row = {"episode": i + 1, "seed": seed, "command": last.get("command", "?"),
                       "success": bool(last.get("is_success")) and finished, "steps": last.get("step", 0),
                       "seconds": round(time.monotonic() - start, 2)}
                if "error" in last or not finished:
                    row["error"] = last.get("error", "timed out")
                rows.append(row)
                print(f"  {row['episode']}: {row['command']!r} -> {'success' if row['success'] else 'failure'} "
                      f"in {row['steps']} steps", flush=True)
            driver.node.destroy_node()
        finally:
            rclpy.try_shutdown()
            recorder.close()
    video, sheet = write_demo_video(driver.frames, rows, out)
    if sheet is not None and args.contact_sheet:
        Path(args.contact_sheet).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(sheet, args.contact_sheet)
    successes = sum(r["success"] for r in rows)
    comparison = _in_process(policy, args, rows) if args.compare_in_process else None
    print(format_table(rows, ["episode", "seed", "command", "success", "steps", "seconds"]
                       + (["in_process"] if comparison else [])))
    print(f"success: {successes}/{len(rows)}; recording {out / 'demo.mcap'} "
          f"({sum(recorder.counts.values())} messages; Foxglove layout {FOXGLOVE_LAYOUT}); video {video}; "
          f"contact sheet {sheet}")
    write_json(args.json, {"episodes": rows, "success_rate": successes / max(1, len(rows)),
                           "mcap": str(out / "demo.mcap"), "video": str(video) if video else None,
                           "contact_sheet": str(sheet) if sheet else None,
                           "messages": recorder.counts, "in_process": comparison})
    return 0 if len(rows) == args.episodes and all("error" not in r for r in rows) else 1
