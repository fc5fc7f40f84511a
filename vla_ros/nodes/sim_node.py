"""sim_node: the MuJoCo Gymnasium env acting as the robot, camera and ros2_control controllers.

Publishes the camera (``camera/image_raw``, rgb8), ``joint_states``, the episode status (JSON on
``sim/episode_status``), ``/clock`` (simulated time, one control period per step; with ``use_sim_time`` the
stamps follow it while the node's own timers stay on the steady clock), and with ``publish_view`` the viewing
camera for videos (``viewer/image_raw``, 640x480; the policy never sees it). It accepts absolute joint
position commands like a real controller (Float64MultiArray on ``forward_position_controller/commands`` in
URDF joint order, or a JointTrajectory) and converts them into the env's action ``a = clip((q_target - q) /
max_delta, -1, 1)`` (the inverse of the env's ``q_target = clip(q + a * max_delta, lower, upper)``). Like a
forward position controller, a real-time step without a new command keeps moving towards the last target (at
most ``max_delta`` per step); before an episode's first command the arm holds position.

Episodes start from the ``sim/start_episode`` service (``std_srvs/Trigger``: an episode with the
current ``seed``, ``command`` and ``task`` parameters, e.g. after ``ros2 param set``; the reply
carries the episode status as JSON) or from a JSON request on the ``sim/start_episode`` topic:
``{"seed": int, "command": str, "task": "reach" | "push", "split": ..., "target": ..., "direction": ...}``
(all optional). The episode's command is then published latched on ``vla/command``.

Timing: ``real_time`` steps the env on a timer every ``control_dt``; ``lockstep`` steps once per
received command (deterministic, for parity tests), and republishes the last observation unchanged
(same stamp) every ``lockstep_republish_s`` so a lost best-effort frame cannot stall the loop. In
lockstep an episode's first observation goes out ``lockstep_start_delay_s`` after its command, and
commands arriving before it are dropped: they were computed from the previous episode's frames, and
the delay lets the new command reach the policy node before the first frame does. In real time the
episode's first step holds position and commands arriving before it are dropped, for the same reason:
between episodes the camera keeps running and a policy node keeps acting on its previous command, and
one of those commands can arrive just after the reset.
The env runs on one worker thread of its own: its OpenGL (EGL) context is bound to the thread that
created it, and executors may run callbacks on any thread. All callbacks also share the node's default
(mutually exclusive) callback group, so env calls never interleave.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from rclpy.clock import Clock as RosClock
from rclpy.clock import ClockType
from rclpy.node import Node
from rclpy.time import Time as RosTime
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Float64MultiArray, String
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory

from vla_ros.envs.scene import VIEWING_CAMERA_NAME
from vla_ros.nodes.node_support import declare_parameters, run_node
from vla_ros.ros import qos
from vla_ros.ros.conversions import (
    arrays_to_joint_state,
    numpy_to_image,
    positions_from_command_array,
    positions_from_trajectory,
)

TASKS = ("reach", "push", "mixed")  # mixed: reach or push per episode, decided by the command
MODES = ("real_time", "lockstep")
EPISODE_OPTIONS = ("command", "split", "target", "direction")  # passed to env.reset(options=...)

PARAMETERS = (
    ("robot", "vla_arm", "Robot file: a name in sim/robots (vla_arm, so101) or a path to one."),
    ("task", "reach", f"Task of the first episode and of service-started ones, one of {TASKS}."),
    ("image_size", 64, "Camera resolution (square, pixels; 64..224)."),
    ("num_objects", 3, "Objects on the table."),
    ("split", "train", "Instruction split: train, heldout_combos or heldout_phrasings."),
    ("perturbation", "", "Env perturbation: '' (none), distractors, jitter or corrupted."),
    ("seed", 0, "Seed of the first episode and of service-started ones."),
    ("command", "", "Command of the first episode and of service-started ones; empty = sampled by the env."),
    ("start_episode_on_launch", True, "Start an episode at launch (else wait for sim/start_episode)."),
    ("mode", "real_time", f"Stepping: one of {MODES}."),
    ("real_time_factor", 1.0, "real_time mode: simulated seconds per wall-clock second."),
    ("lockstep_republish_s", 0.5, "lockstep mode: republish the last observation this often (s)."),
    (
        "lockstep_start_delay_s",
        0.3,
        "lockstep mode: delay between an episode's command and its first observation (s).",
    ),
    ("camera_frame_id", "workspace_camera", "frame_id of the camera images."),
    ("camera_topic", "camera/image_raw", "Camera frames (sensor_msgs/Image, rgb8)."),
    ("publish_view", False, "Also render and publish the viewing camera (640x480, for videos; costs ~4 ms a step)."),
    ("view_topic", "viewer/image_raw", "Viewing-camera frames (sensor_msgs/Image, rgb8), when publish_view."),
    ("joint_states_topic", "joint_states", "Joint positions and velocities (sensor_msgs/JointState)."),
    (
        "position_command_topic",
        "forward_position_controller/commands",
        "Absolute joint positions in URDF joint order (std_msgs/Float64MultiArray).",
    ),
    (
        "trajectory_topic",
        "joint_trajectory_controller/joint_trajectory",
        "Joint trajectory commands (trajectory_msgs/JointTrajectory).",
    ),
    ("command_topic", "vla/command", "Where the episode's language command is published (latched)."),
    ("episode_status_topic", "sim/episode_status", "Episode status (JSON std_msgs/String) after each step."),
    ("start_episode_topic", "sim/start_episode", "Episode start requests (JSON std_msgs/String)."),
    (
        "start_episode_service",
        "sim/start_episode",
        "Service (std_srvs/Trigger) starting an episode with the current seed, command and task parameters; "
        "the reply's message is the episode status (JSON).",
    ),
)


SIM_TIME_START_NS = 1_000_000_000


def action_from_target(target: np.ndarray, position: np.ndarray, max_delta: np.ndarray) -> np.ndarray:
    """The env action that moves from ``position`` towards the absolute ``target`` in one step."""
    return np.clip((np.asarray(target, float) - np.asarray(position, float)) / max_delta, -1.0, 1.0)


class SimNode(Node):
    """Steps the tabletop env and bridges it to ROS topics like a robot with ros2_control."""

    def __init__(self, node_name: str = "sim_node", **kwargs) -> None:
        """Declare parameters, create the env, publishers and subscriptions; maybe start an episode."""
        super().__init__(node_name, **kwargs)
        declare_parameters(self, PARAMETERS)
        self._mode = self._param("mode")
        if self._mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self._mode!r}")
        self._env = None
        self._task = None
        self._env_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sim_env")
        self._on_env_thread(self._make_env, self._param("task"))

        self._image_pub = self.create_publisher(Image, self._param("camera_topic"), qos.CAMERA_QOS)
        self._joint_pub = self.create_publisher(
            JointState, self._param("joint_states_topic"), qos.JOINT_STATES_PUBLISHER_QOS
        )
        self._status_pub = self.create_publisher(String, self._param("episode_status_topic"), qos.STATUS_QOS)
        self._view_pub = (self.create_publisher(Image, self._param("view_topic"), qos.VIEW_QOS)
                          if self._param("publish_view") else None)
        self._command_pub = self.create_publisher(String, self._param("command_topic"), qos.COMMAND_QOS)
        self.create_subscription(
            Float64MultiArray, self._param("position_command_topic"), self._on_position_command,
            qos.JOINT_COMMAND_QOS,
        )  # fmt: skip
        self.create_subscription(
            JointTrajectory, self._param("trajectory_topic"), self._on_trajectory, qos.JOINT_COMMAND_QOS
        )
        self.create_subscription(String, self._param("start_episode_topic"), self._on_start_episode, 10)
        self.create_service(Trigger, self._param("start_episode_service"), self._on_start_episode_service)

        self._target: np.ndarray | None = None  # last position command of this episode (real_time)
        self._episode = 0
        self._running = False
        self._status: dict = {}
        self._observation = None
        self._stamp = None
        # Simulated time, published on /clock: it advances one control period per env step (and, in real time,
        # per camera tick between episodes). It starts at 1 s: a zero stamp means "unstamped" to ROS tools.
        self._sim_time_ns = SIM_TIME_START_NS
        self._use_sim_time = bool(self.get_parameter("use_sim_time").value)
        self._clock_pub = self.create_publisher(Clock, "/clock", qos.CLOCK_QOS)
        self._publish_clock()
        # The simulator is the time source: its own timers run on the steady clock, else with use_sim_time
        # they would wait for a /clock that only they publish.
        steady = RosClock(clock_type=ClockType.STEADY_TIME)
        if self._mode == "real_time":
            period = self._control_dt / float(self._param("real_time_factor"))
            self.create_timer(period, self._on_timer, clock=steady)
        else:
            self._first_observation_due: float | None = None  # monotonic time; None = already sent
            self._last_publish = 0.0
            self.create_timer(0.02, self._on_lockstep_timer, clock=steady)
        if self._param("start_episode_on_launch"):
            self.start_episode(seed=self._param("seed"), command=self._param("command") or None)

    def _param(self, name: str):
        return self.get_parameter(name).value

    def _on_env_thread(self, function, *args, **kwargs):
        return self._env_thread.submit(function, *args, **kwargs).result()

    # ----------------------------------------------------------------------------------- env

    def _make_env(self, task: str) -> None:
        import gymnasium as gym

        import vla_ros.envs  # noqa: F401  (registers the env ids)

        if task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {task!r}")
        if self._env is not None:
            self._env.close()
        self._env = gym.make(
            vla_ros.envs.ENV_IDS[task],
            image_size=int(self._param("image_size")),
            num_objects=int(self._param("num_objects")),
            split=self._param("split"),
            perturbation=self._param("perturbation") or None,
            robot=self._param("robot") or None,
        )
        self._task = task
        robot = self._env.unwrapped.robot
        self.joint_names = tuple(robot.joint_names)
        self._control_dt = float(self._env.unwrapped.control_dt)
        self._max_delta = np.asarray(self._env.unwrapped.max_delta, dtype=np.float64)

    def start_episode(self, seed: int | None = None, task: str | None = None, **options) -> dict:
        """Reset the env (switching task if asked), publish the command latched and the first observation."""
        if task is not None and task != self._task:
            self._on_env_thread(self._make_env, task)
        options = {key: value for key, value in options.items() if value is not None}
        observation, info = self._on_env_thread(self._env.reset, seed=seed, options=options)
        self._episode += 1
        self._running = True
        self._target = None
        self._status = {
            "episode": self._episode,
            "task": self._task,
            "seed": seed,
            "command": info["command"],
            "target": info["target"],
            "step": 0,
            "reward": 0.0,
            "is_success": bool(info["is_success"]),
            "terminated": False,
            "truncated": False,
            "done": False,
        }
        if self._mode == "lockstep":
            self._observation, self._stamp = observation, None
            self._first_observation_due = time.monotonic() + float(self._param("lockstep_start_delay_s"))
            self._command_pub.publish(String(data=info["command"]))
            self._status_pub.publish(String(data=json.dumps(self._status)))
        else:
            # The new scene's first frame goes out before the command: a vla_node takes the first frame
            # after a command as the episode's reference, which must never be a frame of the scene before.
            self._set_observation(observation)
            self._command_pub.publish(String(data=info["command"]))
        self.get_logger().info(f"episode {self._episode} ({self._task}, seed {seed}): {info['command']!r}")
        return dict(self._status)

    def step(self, target: np.ndarray | None) -> None:
        """Step the env towards ``target`` (None: hold position) and publish the result."""
        if not self._running:
            return
        position = self._observation["proprio"][: len(self.joint_names)]
        action = np.zeros(len(self.joint_names)) if target is None else action_from_target(
            target, position, self._max_delta
        )  # fmt: skip
        observation, reward, terminated, truncated, info = self._on_env_thread(
            self._env.step, action.astype(np.float32)
        )
        self._advance_clock()
        self._status.update(
            step=self._status["step"] + 1,
            reward=float(reward),
            is_success=bool(info["is_success"]),
            terminated=bool(terminated),
            truncated=bool(truncated),
            done=bool(terminated or truncated),
        )
        self._running = not self._status["done"]
        self._set_observation(observation)
        if self._status["done"]:
            self.get_logger().info(f"episode {self._episode} done: {self._status}")

    def _advance_clock(self) -> None:
        self._sim_time_ns += int(round(self._control_dt * 1e9))
        self._publish_clock()

    def _publish_clock(self) -> None:
        self._clock_pub.publish(Clock(clock=RosTime(nanoseconds=self._sim_time_ns).to_msg()))

    def _now_stamp(self):
        """The stamp of a new observation: simulated time with use_sim_time, else the node's clock."""
        return RosTime(nanoseconds=self._sim_time_ns) if self._use_sim_time else self.get_clock().now()

    @property
    def sim_time_ns(self) -> int:
        """Simulated time (ns) as last published on /clock."""
        return self._sim_time_ns

    def _set_observation(self, observation) -> None:
        self._observation = observation
        self._stamp = self._now_stamp()
        self._publish_observation()
        if self._view_pub is not None:  # once per new observation, never on lockstep republishes
            view = self._on_env_thread(self._env.unwrapped.render_view)
            self._view_pub.publish(numpy_to_image(view, "rgb8", self._stamp, VIEWING_CAMERA_NAME))
        self._last_publish = time.monotonic()
        self._status_pub.publish(String(data=json.dumps(self._status)))

    def _publish_observation(self) -> None:
        if self._observation is None or self._stamp is None:
            return
        n = len(self.joint_names)
        proprio = self._observation["proprio"].astype(np.float64)
        frame_id = self._param("camera_frame_id")
        self._image_pub.publish(numpy_to_image(self._observation["image"], "rgb8", self._stamp, frame_id))
        self._joint_pub.publish(
            arrays_to_joint_state(self.joint_names, proprio[:n], proprio[n:], self._stamp)
        )

    # ------------------------------------------------------------------------------ callbacks

    def _on_timer(self) -> None:
        if self._running:
            self.step(self._target)  # a controller tracks its last command until a new one comes
        else:
            # Between episodes the camera keeps running (fresh stamps), like a real one.
            self._advance_clock()
            self._stamp = self._now_stamp()
            self._publish_observation()

    def _on_lockstep_timer(self) -> None:
        now = time.monotonic()
        if self._first_observation_due is not None:
            if now >= self._first_observation_due:
                self._first_observation_due = None
                self._stamp = self._now_stamp()
                self._publish_observation()
                self._last_publish = now
        elif now - self._last_publish >= float(self._param("lockstep_republish_s")):
            self._publish_observation()  # same stamp: not a new observation
            self._last_publish = now

    def _accept_target(self, target: np.ndarray) -> None:
        if self._mode == "lockstep":
            if self._first_observation_due is None:  # else: computed from an older episode's frame
                self.step(target)
        elif self._status.get("step", 0) >= 1:  # else: computed before this episode's second frame
            self._target = target

    def _on_position_command(self, msg: Float64MultiArray) -> None:
        try:
            self._accept_target(positions_from_command_array(msg, len(self.joint_names)))
        except ValueError as error:
            self.get_logger().warning(f"ignored position command: {error}", throttle_duration_sec=2.0)

    def _on_trajectory(self, msg: JointTrajectory) -> None:
        try:
            self._accept_target(positions_from_trajectory(msg, self.joint_names, self._control_dt))
        except ValueError as error:
            self.get_logger().warning(f"ignored joint trajectory: {error}", throttle_duration_sec=2.0)

    def _on_start_episode(self, msg: String) -> None:
        try:
            request = json.loads(msg.data) if msg.data.strip() else {}
            if not isinstance(request, dict):
                raise ValueError("the request must be a JSON object")
            unknown = set(request) - {"seed", "task", *EPISODE_OPTIONS}
            if unknown:
                raise ValueError(f"unknown keys {sorted(unknown)}")
            seed = request.get("seed")
            if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
                raise ValueError(f"seed must be an integer, got {seed!r}")
            self.start_episode(**request)
        except Exception as error:  # a bad request must not take the simulator down
            self.get_logger().error(f"cannot start episode from {msg.data!r}: {error}")
            self._status_pub.publish(String(data=json.dumps({"error": str(error), "request": msg.data})))

    def _on_start_episode_service(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        try:
            status = self.start_episode(seed=int(self._param("seed")), task=self._param("task"),
                                        command=self._param("command") or None)
            response.success, response.message = True, json.dumps(status)
        except Exception as error:  # a bad parameter must not take the simulator down
            self.get_logger().error(f"cannot start episode: {error}")
            response.success, response.message = False, f"cannot start episode: {error}"
        return response

    def destroy_node(self) -> None:
        """Close the env (its renderer holds a GL context), then destroy the node."""
        if self._env is not None:
            self._on_env_thread(self._env.close)
            self._env = None
        self._env_thread.shutdown()
        super().destroy_node()


def main(args=None) -> None:
    """Run sim_node until shut down."""
    run_node(SimNode, args)


if __name__ == "__main__":
    main()
