"""vla_node: camera frames + language command + joint states -> policy -> safety gate -> joint commands.

Lifecycle (yolo_ros style):

* ``configure``: read parameters, load the robot's joint limits, create publishers, services and
  the input subscriptions. From here on inputs are validated and rejections are counted in
  ``/diagnostics`` (so a broken camera shows before activation), but nothing is acted upon.
* ``activate``: load the policy, build the safety gate, start the control thread.
* ``deactivate``: stop the control thread, free the policy (and the CUDA cache). Deactivation is a pause:
  a command from the topic stays, and re-activation resumes it (the lifecycle manager chose to); a
  FollowCommand goal ends as failed and its command is dropped. Releasing the e-stop never resumes motion.
* ``cleanup`` / ``shutdown``: destroy everything ``configure`` created.

The e-stop service (``vla/estop``) is not the lifecycle's: a companion node with an executor thread of its own
serves it from construction on (:mod:`vla_ros.ros.estop_server`), so loading a checkpoint cannot delay it.

The control loop runs at ``control_rate_hz`` (steady clock; with ``use_sim_time``, on the ROS clock that
``/clock`` drives, so a simulator slower or faster than real time gets one step per simulated period) on the newest
frame only (subscriptions keep just the latest message; nothing is queued). With ``control_trigger: frame`` it
instead runs as soon as a new frame and a joint state at least as new have arrived (at most
``control_rate_hz``): a timer at the camera's own rate drifts in phase against it, and a tick that comes
just before a frame acts on the previous frame and joint state. The command is then computed from the
pose one step back, so the arm aims behind itself and oscillates (`vla-ros demo` in real time: 2 of 6
episodes in one run on an idle machine, with every step acted on a frame 50 ms old). Each step: gate pre-check
(staleness, e-stop, command, NaN) -> decode -> policy -> gate -> publish. It runs in a thread of
its own, outside the executor: the subscription callbacks only store the newest message, so a
slow policy step never delays them, and they never delay the policy.

Every command message starts a new episode for the policy (``Policy.reset``). A policy trained with a
reference frame remembers the first frame of the episode as where the objects are (the arm hides its
target as it approaches); the node drops the frame it holds when a command arrives, so that reference
is a frame received after the command, never one of the scene before it.

Why not an executor timer: rclpy's ``MultiThreadedExecutor`` (rclpy 9.1.2) dispatches callbacks
far slower than the single-threaded one (``vla-ros bench executor``: 11x fewer ping-pong round
trips, 18 of 100 camera frames delivered), which starved the control timer under a 30 Hz camera.
The node therefore spins a ``SingleThreadedExecutor`` for its cheap callbacks and keeps the
expensive work on the control thread.
"""

from __future__ import annotations

import gc
import json
import threading
import time
from collections import deque
from dataclasses import dataclass

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.parameter import Parameter
from sensor_msgs.msg import CompressedImage, Image, JointState
from std_msgs.msg import Float64MultiArray, String
from std_srvs.srv import SetBool, Trigger
from trajectory_msgs.msg import JointTrajectory

from vla_ros.goal_tracker import Outcome, StepReport
from vla_ros.ros import qos
from vla_ros.ros.conversions import (
    NonFiniteJointStateError,
    frame_to_numpy,
    joint_state_to_arrays,
    joint_trajectory,
    numpy_to_image,
    position_command_array,
    stamp_to_seconds,
    validate_command,
    validate_compressed_image,
    validate_image,
)
from vla_ros.ros.debug_image import draw_grounding, grounding_overlay
from vla_ros.ros.diagnostics import NodeStats, diagnostic_array
from vla_ros.ros.estop_server import EstopServer
from vla_ros.ros.follow_command import FollowCommandServer, interfaces_available
from vla_ros.safety import GateDecision, GateReason, JointLimits, SafetyGate

IMAGE_TRANSPORTS = ("raw", "compressed")
OUTPUT_MODES = ("position_array", "trajectory")
BACKENDS = ("torch", "onnxruntime")
CONTROL_TRIGGERS = ("timer", "frame")

# Diagnostics counter keys for inputs rejected before they reach the policy.
REJECT_MALFORMED_IMAGE = "rejected.malformed_image"
REJECT_BAD_COMMAND = "rejected.bad_command"
REJECT_BAD_JOINT_STATE = "rejected.bad_joint_state"
REJECT_NAN_JOINT_STATE = "rejected.nan_joint_state"
HOLD_POLICY_ERROR = "hold.policy_error"
HOLD_REFUSED_COMMAND = "hold.refused_command"
CONTROL_ERROR = "control.error"


# (name, default, description) of every parameter; config/vla_node.yaml sets the same names.
PARAMETERS = (
    (
        "policy_path",
        "",
        "Policy checkpoint folder (policy.safetensors + config.json); empty = models/policy.",
    ),
    ("device", "cpu", "Torch device for the policy: 'cpu', 'cuda' or 'cuda:N'."),
    ("fp16", False, "Run the policy in half precision (GPU only)."),
    ("backend", "torch", f"Policy inference backend, one of {BACKENDS}."),
    (
        "cuda_graphs",
        True,
        "With the torch backend on CUDA, replay batch-1 inference from a captured CUDA graph (falls back to "
        "eager execution with a warning if capture fails); ignored elsewhere.",
    ),
    ("urdf_path", "", "URDF with the joint limits; empty = the package's sim/robot/vla_arm.urdf."),
    (
        "control_rate_hz",
        20.0,
        "Rate of the policy/control timer (Hz); should be 1 / the policy's control_dt, the period its "
        "step size was trained for.",
    ),
    ("output_mode", "position_array", f"Joint command message, one of {OUTPUT_MODES}."),
    # Declared by type (no value): an empty list default would make it a byte array parameter.
    (
        "output_joint_names",
        Parameter.Type.STRING_ARRAY,
        "Joint order of the position_array command (the controller's 'joints'); unset = policy order.",
    ),
    ("camera_topic", "camera/image_raw", "Camera frames (sensor_msgs/Image, best effort)."),
    ("image_transport", "raw",
     "raw: sensor_msgs/Image on camera_topic; compressed: sensor_msgs/CompressedImage (PNG or JPEG) on "
     "camera_topic + '/compressed', as image_transport names it."),
    ("command_topic", "vla/command", "Language command (std_msgs/String, latched)."),
    ("joint_states_topic", "joint_states", "Measured joint states (sensor_msgs/JointState)."),
    (
        "position_command_topic",
        "forward_position_controller/commands",
        "Float64MultiArray absolute joint positions (output_mode position_array).",
    ),
    (
        "trajectory_topic",
        "joint_trajectory_controller/joint_trajectory",
        "JointTrajectory command (output_mode trajectory).",
    ),
    ("debug_image_topic", "vla/grounding/debug_image", "Frame with the heatmap, the command and scores drawn."),
    ("heatmap_image_topic", "vla/grounding/heatmap", "The policy's camera frame with its grounding heatmap only."),
    ("grounding_scores_topic", "vla/grounding/scores", "Per-object grounding scores (JSON std_msgs/String)."),
    ("command_status_topic", "vla/command_status",
     "Whether the current command is acted on or refused, and why (JSON std_msgs/String, latched)."),
    ("max_frame_age_s", 0.5, "Hold position when the newest camera frame is older than this (s)."),
    ("max_joint_state_age_s", 0.5, "Hold position when the newest joint state is older than this (s)."),
    ("max_step", 0.0, "Extra cap on the per-step joint change (rad); 0 = velocity limit * period only."),
    ("publish_debug_image", False, "Publish the grounding debug image (and scores) each control step."),
    (
        "require_new_frame",
        False,
        "Run a control step only when a frame arrived since the last one (lockstep simulation).",
    ),
    (
        "control_trigger",
        "timer",
        f"When a control step runs, one of {CONTROL_TRIGGERS}: 'timer' every 1/control_rate_hz; 'frame' as soon "
        "as a new camera frame and a joint state at least as new have arrived, at most control_rate_hz (for a "
        "camera that runs at the control rate, e.g. the simulator).",
    ),
    ("default_goal_timeout_s", 30.0,
     "FollowCommand goals without a timeout_s end as timed out after this long (node-clock seconds)."),
    ("diagnostics_period_s", 1.0, "Period of /diagnostics reports (s)."),
    ("log_throttle_s", 2.0, "Minimum time between two log lines about the same kind of rejected input (s)."),
    ("autostart", True, "Configure and activate at start (when run without a lifecycle manager)."),
)


def hold_key(reason: GateReason) -> str:
    """Diagnostics counter key of a gate hold reason, e.g. ``hold.stale_frame``."""
    return f"hold.{reason.value}"


def _default_policy_path() -> str:
    try:
        from vla_ros.paths import share_path

        return str(share_path("models", "policy"))
    except FileNotFoundError:  # no share folder (e.g. partial install); the parameter must be set
        return ""


LOG_TEXT_LIMIT = 300  # characters of message content a log line may quote (hostile input can be megabytes)


def for_log(text: str, limit: int = LOG_TEXT_LIMIT) -> str:
    """``text`` cut to ``limit`` characters, saying how much was left out."""
    text = str(text)
    return text if len(text) <= limit else f"{text[:limit]}... [{len(text) - limit} more characters]"


def _message_key(info) -> tuple | None:
    """(publisher gid, publication sequence number) of a received message, or None where the RMW gives none."""
    if not info or info.get("publication_sequence_number") is None or not info.get("publisher_gid"):
        return None
    gid = info["publisher_gid"]
    gid = gid.get("data", gid) if isinstance(gid, dict) else gid
    return bytes(gid), int(info["publication_sequence_number"])


@dataclass
class _Stamped:
    """The latest message of an input with the time (s, node clock) it stands for."""

    value: object
    stamp: float
    received: float = 0.0  # time.perf_counter() when the callback stored it (latency breakdown)


class VlaNode(LifecycleNode):
    """Runs the VLA policy on the newest camera frame at a fixed rate and publishes joint commands."""

    def __init__(self, node_name: str = "vla_node", **kwargs) -> None:
        """Declare every parameter (with a description); nothing is loaded until configure."""
        super().__init__(node_name, **kwargs)
        for name, default, description in PARAMETERS:
            self.declare_parameter(name, default, ParameterDescriptor(description=description))
        if not self.get_parameter("policy_path").value:
            self.set_parameters([Parameter("policy_path", value=_default_policy_path())])

        self._stats = NodeStats()
        self._input_lock = threading.Lock()
        self._new_input = threading.Event()  # set by the frame and joint state callbacks
        self._control_lock = threading.Lock()
        self._diagnostics_lock = threading.Lock()
        self._configured = False
        self._frame: _Stamped | None = None
        self._joint_state: _Stamped | None = None  # (positions, velocities) in robot joint order
        self._command: str | None = None
        self._command_serial = 0
        self._recent_commands: deque = deque(maxlen=32)  # (publisher gid, sequence number) of commands seen
        self._estopped = False
        self._command_status: tuple | None = None  # (command, (state, kind, reason)) last published
        self._last_log: dict[str, float] = {}
        self._device = "cpu"
        # What configure created, destroyed on cleanup.
        self._subscriptions_made: list = []
        self._services_made: list = []
        self._timers_made: list = []
        self._publishers_made: list = []
        self._robot_limits: JointLimits | None = None
        self._policy = None
        self._gate: SafetyGate | None = None
        self._control_thread: threading.Thread | None = None
        self._stop_control_event = threading.Event()
        self._active = False
        self._goals: FollowCommandServer | None = None  # the FollowCommand action (configure creates it)
        # Import the policy stack (torch, open_clip, transformers) now: imports hold the GIL for up to 0.2 s at a
        # time, which would stall the e-stop thread if they ran during activation; loading weights does not.
        import vla_ros.policy.policy  # noqa: F401
        # e-stop on a thread of its own, in every state: activation (loading a checkpoint) cannot delay it
        self._estop_server = EstopServer(self, self._on_estop)

    # ------------------------------------------------------------------------------ parameters

    def _param(self, name: str):
        return self.get_parameter(name).value

    def _read_parameters(self) -> None:
        self._image_transport = self._param("image_transport")
        if self._image_transport not in IMAGE_TRANSPORTS:
            raise ValueError(f"image_transport must be one of {IMAGE_TRANSPORTS}, got {self._image_transport!r}")
        self._output_mode = self._param("output_mode")
        if self._output_mode not in OUTPUT_MODES:
            raise ValueError(f"output_mode must be one of {OUTPUT_MODES}, got {self._output_mode!r}")
        self._backend = self._param("backend")
        if self._backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {self._backend!r}")
        self._device = self._param("device")
        if not (self._device == "cpu" or self._device.startswith("cuda")):
            raise ValueError(f"device must be 'cpu' or 'cuda[:N]', got {self._device!r}")
        self._fp16 = bool(self._param("fp16"))
        self._cuda_graphs = bool(self._param("cuda_graphs"))
        self._control_period = 1.0 / float(self._param("control_rate_hz"))
        if not 0 < self._control_period < 10:
            raise ValueError(f"control_rate_hz must be > 0.1, got {self._param('control_rate_hz')}")
        self._max_step = float(self._param("max_step"))
        self._max_frame_age = float(self._param("max_frame_age_s"))
        self._max_joint_state_age = float(self._param("max_joint_state_age_s"))
        self._publish_debug_image = bool(self._param("publish_debug_image"))
        self._control_trigger = self._param("control_trigger")
        if self._control_trigger not in CONTROL_TRIGGERS:
            raise ValueError(f"control_trigger must be one of {CONTROL_TRIGGERS}, got {self._control_trigger!r}")
        # acting on frames means acting on each frame once, as in lockstep
        self._require_new_frame = bool(self._param("require_new_frame")) or self._control_trigger == "frame"
        self._log_throttle = float(self._param("log_throttle_s"))
        names = self.get_parameter_or("output_joint_names", Parameter("output_joint_names", value=[])).value
        self._output_joint_names = tuple(name for name in names if name)

    # ------------------------------------------------------------------------------- lifecycle

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Read parameters, load joint limits, create publishers, services and subscriptions."""
        try:
            self._read_parameters()
            from vla_ros.robot_description import load_robot_description

            urdf = self._param("urdf_path") or None
            self._robot_limits = JointLimits.from_robot(load_robot_description(urdf))
        except Exception as error:  # a failed transition must say why; rclpy would swallow it
            self.get_logger().error(f"configure failed: {for_log(str(error))}")
            return TransitionCallbackReturn.FAILURE

        if self._output_mode == "position_array":
            self._command_pub = self.create_lifecycle_publisher(
                Float64MultiArray, self._param("position_command_topic"), qos.JOINT_COMMAND_QOS
            )
        else:
            self._command_pub = self.create_lifecycle_publisher(
                JointTrajectory, self._param("trajectory_topic"), qos.JOINT_COMMAND_QOS
            )
        self._debug_image_pub = self.create_lifecycle_publisher(
            Image, self._param("debug_image_topic"), qos.DEBUG_IMAGE_QOS
        )
        self._heatmap_pub = self.create_lifecycle_publisher(
            Image, self._param("heatmap_image_topic"), qos.DEBUG_IMAGE_QOS
        )
        self._scores_pub = self.create_lifecycle_publisher(
            String, self._param("grounding_scores_topic"), qos.STATUS_QOS
        )
        self._status_pub = self.create_lifecycle_publisher(
            String, self._param("command_status_topic"), qos.COMMAND_STATUS_QOS
        )
        # Diagnostics are not lifecycle-managed: they also report while inactive.
        self._diagnostics_pub = self.create_publisher(DiagnosticArray, "/diagnostics", qos.DIAGNOSTICS_QOS)
        self._publishers_made = [self._diagnostics_pub]
        self._subscriptions_made = [
            self.create_subscription(
                Image, self._param("camera_topic"), self._on_image, qos.CAMERA_QOS
            ) if self._image_transport == "raw" else self.create_subscription(
                CompressedImage, self._param("camera_topic") + "/compressed", self._on_image, qos.CAMERA_QOS
            ),
            self.create_subscription(
                String, self._param("command_topic"), self._on_command, qos.COMMAND_QOS
            ),
            self.create_subscription(  # default-QoS publishers too; duplicates dropped in _on_command
                String, self._param("command_topic"), self._on_command, qos.COMMAND_VOLATILE_QOS
            ),
            self.create_subscription(
                JointState,
                self._param("joint_states_topic"),
                self._on_joint_state,
                qos.JOINT_STATES_QOS,
            ),
        ]
        self._services_made = [
            self.create_service(Trigger, "vla/clear_command", self._on_clear_command),
        ]
        self._timers_made = [
            self.create_timer(float(self._param("diagnostics_period_s")), self._publish_diagnostics)
        ]
        if interfaces_available():
            self._goals = FollowCommandServer(self, float(self._param("default_goal_timeout_s")))
            self._timers_made.append(self.create_timer(0.1, self._goals.check_timeout))
        else:
            self.get_logger().warning("vla_ros_interfaces is not installed: no FollowCommand action "
                                      "(scripts/setup.sh or colcon builds it); the command topic works")
        self._configured = True
        self.get_logger().info(
            f"configured: output {self._output_mode}, {1 / self._control_period:.1f} Hz, "
            f"joints {self._robot_limits.joint_names}"
        )
        return super().on_configure(state)

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Load the policy, build the safety gate and start the control thread."""
        try:
            self._policy = self._load_policy()
            self._gate = self._build_gate(self._policy)
        except Exception as error:
            self.get_logger().error(f"activate failed: {for_log(str(error))}")
            self._free_policy()
            return TransitionCallbackReturn.FAILURE
        self._gate.set_estop(self._estopped)
        self._policy.reset()
        self._policy_serial = self._command_serial
        self._last_frame_stamp = None
        self._active = True
        self._stop_control_event = threading.Event()
        self._control_thread = threading.Thread(
            target=self._control_loop, args=(self._stop_control_event,), name="vla_control", daemon=True
        )
        self._control_thread.start()
        self.get_logger().info("activated")
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Stop the control thread and free the policy."""
        self.stop_control()
        self.get_logger().info("deactivated")
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Destroy what configure created."""
        self._destroy_entities()
        return super().on_cleanup(state)

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Stop and destroy everything, from any state."""
        self.stop_control()
        self._destroy_entities()
        return super().on_shutdown(state)

    def autostart(self) -> bool:
        """Configure and activate (for running without a lifecycle manager); True on success."""
        if self.trigger_configure() != TransitionCallbackReturn.SUCCESS:
            return False
        return self.trigger_activate() == TransitionCallbackReturn.SUCCESS

    def _load_policy(self):
        from vla_ros.policy.policy import Policy  # lazy: torch and the CLIP stack load only here

        path = self._param("policy_path")
        if not path:
            raise ValueError("parameter policy_path is empty")
        kwargs = {"device": self._device, "backend": self._backend}
        if not self._cuda_graphs:
            kwargs["cuda_graphs"] = False  # else automatic: on where it applies
        if self._fp16:
            kwargs["precision"] = "fp16"
        start = time.perf_counter()
        policy = Policy.load(path, **kwargs)
        graph = ", CUDA graph" if policy.cuda_graph is not None else ""
        self.get_logger().info(
            f"loaded policy {path} on {self._device} ({self._backend}{graph}) in {time.perf_counter() - start:.2f} s"
        )
        return policy

    def _build_gate(self, policy) -> SafetyGate:
        joint_names = tuple(policy.joint_names)
        limits = self._robot_limits.reordered(joint_names)
        robot_names = self._robot_limits.joint_names
        self._policy_index = np.array([robot_names.index(name) for name in joint_names])
        output_names = self._output_joint_names or joint_names
        if sorted(output_names) != sorted(joint_names):
            raise ValueError(f"output_joint_names {output_names} are not the policy's joints {joint_names}")
        self._output_index = np.array([joint_names.index(name) for name in output_names])
        self._output_names = output_names
        control_dt = getattr(policy, "control_dt", None)
        if control_dt is not None and abs(control_dt - self._control_period) > 1e-6:
            self.get_logger().warning(
                f"control period {self._control_period:.4f} s differs from the policy's control_dt "
                f"{control_dt:.4f} s; the arm will move at a different speed than in training"
            )
        return SafetyGate(
            limits,
            control_period=self._control_period,
            max_step=self._max_step if self._max_step > 0 else None,
            max_frame_age_s=self._max_frame_age,
            max_joint_state_age_s=self._max_joint_state_age,
        )

    def stop_control(self) -> None:
        """Stop the control thread and free the policy (deactivation, shutdown, main()'s exit)."""
        self._end_goal(Outcome.FAILED, "vla_node stopped acting (deactivated or shutting down)", "node")
        thread, self._control_thread = self._control_thread, None
        self._stop_control_event.set()
        if thread is not None and thread is not threading.current_thread():
            thread.join()
        with self._control_lock:
            self._active = False
            self._free_policy()

    def _free_policy(self) -> None:
        if self._policy is None:
            return
        self._policy = None
        self._gate = None
        gc.collect()
        if self._device.startswith("cuda"):
            import torch

            torch.cuda.empty_cache()

    def _destroy_entities(self) -> None:
        with self._diagnostics_lock:  # a diagnostics report in flight must not see destroyed publishers
            self._configured = False
        for timer in self._timers_made:
            self.destroy_timer(timer)
        for subscription in self._subscriptions_made:
            self.destroy_subscription(subscription)
        for service in self._services_made:
            self.destroy_service(service)
        for publisher in self._publishers_made:
            self.destroy_publisher(publisher)
        goals, self._goals = self._goals, None
        if goals is not None:
            goals.destroy()
        self._timers_made, self._subscriptions_made, self._services_made = [], [], []
        self._publishers_made = []
        for name in ("_command_pub", "_debug_image_pub", "_heatmap_pub", "_scores_pub"):
            publisher = getattr(self, name, None)
            if publisher is not None:
                self.destroy_lifecycle_publisher(publisher)
                setattr(self, name, None)

    # ---------------------------------------------------------------------------------- inputs

    def _now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def _stamp_or_now(self, header) -> float:
        # Some drivers leave the stamp at zero; then the receive time is the best estimate.
        stamp = stamp_to_seconds(header.stamp)
        return stamp if stamp > 0 else self._now()

    def _reject(self, key: str, message: str) -> None:
        """Count a rejected input and log it, at most once per log_throttle_s per kind."""
        self._stats.count(key)
        now = time.monotonic()
        if now - self._last_log.get(key, -np.inf) >= self._log_throttle:
            self._last_log[key] = now
            self.get_logger().warning(f"{key}: {for_log(message)} (counted in /diagnostics; holding position)")

    def _on_image(self, msg: Image | CompressedImage) -> None:
        try:
            # cheap header/size checks; decoding waits for the control step
            validate_compressed_image(msg) if isinstance(msg, CompressedImage) else validate_image(msg)
        except ValueError as error:
            with self._input_lock:
                self._frame = None  # a broken camera must not leave an older frame in use
            self._reject(REJECT_MALFORMED_IMAGE, str(error))
            return
        with self._input_lock:
            self._frame = _Stamped(msg, self._stamp_or_now(msg.header), time.perf_counter())
        transport = self._now() - self._frame.stamp  # header stamp -> here: transport (and clock offset)
        if 0.0 <= transport < 10.0:
            self._stats.add_latency("transport", transport)
        self._new_input.set()

    def _on_command(self, msg: String, info: dict) -> None:
        # a latched publisher's message reaches both command subscriptions: act on it once
        key = _message_key(info)
        if key is not None:
            if key in self._recent_commands:
                return
            self._recent_commands.append(key)
        self._end_goal(Outcome.PREEMPTED, "a command arrived on the command topic", "preemption")
        _, error = self.follow(msg.data)
        if error is not None:
            self._reject(REJECT_BAD_COMMAND, error)

    def follow(self, text) -> tuple[int | None, str | None]:
        """Make ``text`` the command (a new episode for the policy): (its serial, None), or (None, why not).

        An unreadable command still replaces the current one: the operator meant to change the task, and
        continuing the old one would be wrong, so the arm holds.
        """
        try:
            command = validate_command(text)
        except ValueError as error:
            with self._input_lock:
                self._command = None
            return None, str(error)
        with self._input_lock:
            changed = command != self._command
            self._command = command
            self._command_serial += 1
            serial = self._command_serial
            if getattr(self._policy, "reference_frame", False):
                # The policy remembers the first frame of each command as where the objects are: take
                # it from a frame received after the command, not one of the scene before.
                self._frame = None
        if changed:
            self.get_logger().info(f"command: {for_log(repr(command))}")
        return serial, None

    def drop_command(self, serial: int | None = None, wait_for_step: bool = False) -> None:
        """Hold: drop the command (only if it is still command ``serial``, when given).

        ``wait_for_step`` also waits for a control step in flight, so nothing is published after this returns
        (never from the control thread itself).
        """
        with self._input_lock:
            if serial is None or serial == self._command_serial:
                self._command = None
        if wait_for_step:
            with self._control_lock:
                pass

    def now(self) -> float:
        """Node-clock time (s): simulated time under use_sim_time."""
        return self._now()

    @property
    def is_active(self) -> bool:
        """True while the policy is loaded and the control loop runs."""
        return self._active

    @property
    def has_done_signal(self) -> bool:
        """True when the loaded policy predicts that its command is fulfilled."""
        return bool(getattr(self._policy, "has_done_signal", False))

    def _end_goal(self, outcome: Outcome, reason: str, decided_by: str) -> None:
        if self._goals is not None:
            self._goals.end(outcome, reason, decided_by)

    def _on_joint_state(self, msg: JointState) -> None:
        try:
            positions, velocities = joint_state_to_arrays(msg, self._robot_limits.joint_names)
        except NonFiniteJointStateError as error:
            with self._input_lock:
                self._joint_state = None
            self._reject(REJECT_NAN_JOINT_STATE, str(error))
            return
        except ValueError as error:
            with self._input_lock:
                self._joint_state = None
            self._reject(REJECT_BAD_JOINT_STATE, str(error))
            return
        with self._input_lock:
            self._joint_state = _Stamped((positions, velocities), self._stamp_or_now(msg.header))
        self._new_input.set()

    def _on_estop(self, request: SetBool.Request, response: SetBool.Response) -> SetBool.Response:
        # runs on the e-stop server's own thread (vla_ros.ros.estop_server)
        changed = self._estopped != bool(request.data)
        self._estopped = bool(request.data)
        gate = self._gate
        if gate is not None:
            gate.set_estop(self._estopped)
        if self._estopped:
            self._end_goal(Outcome.ESTOPPED, "the e-stop was engaged", "estop")
            self._stats.count("estop.engaged")
            if changed:
                self.get_logger().warning("e-stop engaged: holding position")
            response.message = "e-stop engaged"
        else:
            # Releasing an e-stop must not restart motion by itself (ISO 13850): a new command is needed.
            with self._input_lock:
                self._command = None
            if changed:
                self.get_logger().info("e-stop released; send a new command to move")
            response.message = "e-stop released; command cleared, send a new command to move"
        response.success = True
        return response

    def _on_clear_command(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        self._end_goal(Outcome.CANCELLED, "the clear_command service cleared it", "clear_command")
        with self._input_lock:
            had = self._command
            self._command = None
        response.success = True
        response.message = f"cleared command {had!r}" if had else "no command was set"
        self.get_logger().info(response.message)
        return response

    # ---------------------------------------------------------------------------- control step

    def _control_loop(self, stop: threading.Event) -> None:
        """Run ``_control_step`` every control period (or on new inputs, see ``control_trigger``) until ``stop``."""
        period = self._control_period
        if self._control_trigger == "frame":
            self._frame_triggered_loop(stop, period)
            return
        if self.get_parameter("use_sim_time").value:
            self._ros_clock_loop(stop, period)
            return
        next_tick = time.monotonic()
        while not stop.is_set():
            self._guarded_control_step()
            next_tick += period
            delay = next_tick - time.monotonic()
            if delay < 0:
                # Overran: skip the missed ticks (never burst to catch up on old frames).
                next_tick += np.ceil(-delay / period) * period
                delay = next_tick - time.monotonic()
            stop.wait(max(0.0, delay))

    def _ros_clock_loop(self, stop: threading.Event, period: float, poll_s: float = 0.002) -> None:
        """A step every ``period`` of ROS (simulated) time; none while it stands still; restart if it jumps back."""
        next_tick = None
        while not stop.is_set():
            now = self._now()
            if next_tick is None or now < next_tick - 2 * period:  # start, or the simulator was reset
                next_tick = now
            if now >= next_tick:
                self._guarded_control_step()
                next_tick += period
                if now >= next_tick:  # overran: skip the missed ticks, as on the steady clock
                    next_tick += np.ceil((now - next_tick) / period + 1e-9) * period
            stop.wait(poll_s)

    def _frame_triggered_loop(self, stop: threading.Event, period: float) -> None:
        # a new input wakes the loop; _step acts only on a frame not acted on yet with a joint state at
        # least as new, and never sooner than half a period after the last step (a burst of frames)
        last_step = -np.inf
        while not stop.is_set():
            self._new_input.wait(timeout=period)
            self._new_input.clear()
            wait = last_step + 0.5 * period - time.monotonic()
            if wait > 0 and stop.wait(wait):
                return
            with self._input_lock:
                ready = self._is_new_observation(self._frame, self._joint_state)
            if not ready:
                continue
            last_step = time.monotonic()
            self._guarded_control_step()

    def _guarded_control_step(self) -> None:
        try:
            self._control_step()
        except Exception as error:  # the loop must outlive any one step; the gate holds meanwhile
            self._reject(CONTROL_ERROR, f"control step failed: {type(error).__name__}: {error}")

    def _control_step(self) -> None:
        # The lock makes deactivate/shutdown wait for a step in flight instead of destroying the
        # publishers under it.
        with self._control_lock:
            if self._active and self._policy is not None and self._gate is not None:
                self._step(self._policy, self._gate)

    def _step(self, policy, gate: SafetyGate) -> None:
        start = time.perf_counter()
        with self._input_lock:
            frame, joint, command = self._frame, self._joint_state, self._command
            serial = self._command_serial
        if self._require_new_frame and not self._is_new_observation(frame, joint):
            return
        now = self._now()
        joint_state = None
        if joint is not None:  # robot joint order -> policy joint order, positions then velocities
            positions, velocities = joint.value
            joint_state = np.concatenate([positions[self._policy_index], velocities[self._policy_index]])
            self._stats.set_value("joint_state_age_s", f"{now - joint.stamp:.3f}")
        if frame is not None:
            self._stats.set_value("frame_age_s", f"{now - frame.stamp:.3f}")
        stamps = (now, frame and frame.stamp, joint and joint.stamp, command is not None)
        self._stats.count("steps")
        # Validation first: the policy (the expensive part) runs only if the gate could pass a command.
        decision = gate.check_inputs(joint_state, *stamps)
        if decision is not None:
            self._goal_step(serial, policy, decision)
            self._finish_step(decision, start)
            return
        if frame.stamp != self._last_frame_stamp:  # received -> acted on: the wait for this step
            self._stats.add_latency("queued", start - frame.received)
        self._last_frame_stamp = frame.stamp
        try:
            decode_start = time.perf_counter()
            rgb = frame_to_numpy(frame.value)
            policy_start = time.perf_counter()
            self._stats.add_latency("decode", policy_start - decode_start)
            if serial != self._policy_serial:  # a new command starts a new episode for the policy
                policy.reset()
                self._policy_serial = serial
            target = policy.select_action(rgb, command, joint_state)
            self._stats.add_latency("policy", time.perf_counter() - policy_start)
            self._set_command_status(command, None, getattr(policy, "last_presence", None))
        except Exception as error:  # a failing policy must not stop the node; hold and report
            refusal = getattr(error, "refusal", None)  # Policy's CommandRefused (torch loads lazily, not here)
            if refusal is not None:  # nothing in view matches the command: hold still and say why
                self._set_command_status(command, refusal, refusal.score)
                self._goal_step(serial, policy, None, refusal_reason=refusal.reason)
                self._stats.count(HOLD_REFUSED_COMMAND)
                self._finish_step(None, start)
                return
            self._reject(HOLD_POLICY_ERROR, f"policy step failed: {type(error).__name__}: {error}")
            self._goal_step(serial, policy, None, hold="policy_error")
            self._finish_step(None, start)
            return
        gate_start = time.perf_counter()
        decision = gate.filter(target, joint_state, *stamps)
        self._stats.add_latency("gate", time.perf_counter() - gate_start)
        goal_ended = self._goal_step(serial, policy, decision, acted=True)
        publish_start = time.perf_counter()
        if decision.command is not None and not goal_ended:
            self._publish_command(decision.command)
        if self._publish_debug_image:
            self._publish_grounding(rgb, command, frame.value.header)
        self._stats.add_latency("publish", time.perf_counter() - publish_start)
        self._finish_step(decision, start)

    def _goal_step(self, serial: int, policy, decision: GateDecision | None, acted: bool = False,
                   refusal_reason: str | None = None, hold: str = "") -> bool:
        """Report a control step to the FollowCommand goal of command ``serial``; True if the goal ended."""
        goals = self._goals
        if goals is None:
            return False
        if decision is not None and decision.hold:
            hold = decision.reason.value
        scores = getattr(policy, "last_grounding", None) or {}
        rule = getattr(policy, "refusal_rule", None)
        presence = getattr(policy, "last_presence", None)
        report = StepReport(
            gate_state=f"hold: {hold}" if hold or refusal_reason else "open",
            grounded_object=max(scores, key=scores.get) if scores else "",
            grounding_score=float("nan") if presence is None else float(presence),
            refusal_threshold=float("nan") if rule is None else float(rule.threshold),
        )
        done = bool(getattr(policy, "last_done", False)) if acted else False
        return goals.on_step(serial, report, acted=acted, refusal_reason=refusal_reason, done_signal=done)

    def _set_command_status(self, command: str, refusal, presence: float | None) -> None:
        """Publish the command's status when it changes: acting, or refused with the reason."""
        status = ("refused", refusal.kind, refusal.reason) if refusal is not None else ("acting", "", "")
        if (command, status) == self._command_status:
            return
        self._command_status = (command, status)
        if refusal is not None:
            self.get_logger().warning(f"refusing command: {for_log(refusal.reason)}; holding position")
        message = {"command": command, "state": status[0], "kind": status[1], "reason": status[2],
                   "presence": None if presence is None else round(float(presence), 4)}
        self._status_pub.publish(String(data=json.dumps(message)))

    def _is_new_observation(self, frame: _Stamped | None, joint: _Stamped | None) -> bool:
        """Lockstep: a frame not acted on yet, and a joint state at least as new (same sim step)."""
        if frame is None or frame.stamp == self._last_frame_stamp:
            return False
        return joint is None or joint.stamp >= frame.stamp

    def _finish_step(self, decision: GateDecision | None, start: float) -> None:
        if decision is not None:
            self._stats.count(hold_key(decision.reason) if decision.hold else "commands_published")
            self._stats.count("clamped_to_limits", int(decision.clamped_to_limits))
            self._stats.count("rate_limited", int(decision.rate_limited))
        elapsed = time.perf_counter() - start
        self._stats.add_latency("step", elapsed)
        if elapsed > self._control_period:
            self._stats.count("deadline_misses")

    def _publish_command(self, command: np.ndarray) -> None:
        if self._output_mode == "position_array":
            self._command_pub.publish(position_command_array(command[self._output_index]))
        else:
            names = tuple(self._policy.joint_names) if self._policy is not None else self._output_names
            self._command_pub.publish(joint_trajectory(names, command, self._control_period))

    def _publish_grounding(self, rgb: np.ndarray, command: str, header) -> None:
        scores = getattr(self._policy, "last_grounding", None)
        if scores:
            self._scores_pub.publish(String(data=json.dumps({"command": command, "scores": scores})))
        overlay = grounding_overlay(self._policy, rgb)
        self._heatmap_pub.publish(numpy_to_image(overlay, "rgb8", stamp=header.stamp, frame_id=header.frame_id))
        debug = draw_grounding(overlay, command, scores)
        self._debug_image_pub.publish(
            numpy_to_image(debug, "rgb8", stamp=header.stamp, frame_id=header.frame_id)
        )

    # ----------------------------------------------------------------------------- diagnostics

    def counter(self, key: str) -> int:
        """Current value of a diagnostics counter (e.g. ``rejected.bad_command``)."""
        return self._stats.counter(key)

    def destroy_node(self) -> None:
        """Stop the control thread before the entities it publishes with are destroyed."""
        self.stop_control()
        self._estop_server.destroy()
        super().destroy_node()

    def _publish_diagnostics(self) -> None:
        with self._diagnostics_lock:
            if self._configured:
                self._report()

    def _report(self) -> None:
        with self._input_lock:
            command = self._command
        self._stats.set_value("active", self._active)
        self._stats.set_value("estop", self._estopped)
        self._stats.set_value("command", command or "")
        level, message = DiagnosticStatus.OK, "running" if self._active else "inactive"
        if self._estopped:
            level, message = DiagnosticStatus.WARN, "e-stop engaged"
        elif self._active and command is None:
            level, message = DiagnosticStatus.OK, "waiting for a command"
        elif self._active and self._command_status and self._command_status[0] == command \
                and self._command_status[1][0] == "refused":
            level, message = DiagnosticStatus.WARN, f"command refused: {self._command_status[1][2]}"
        array = diagnostic_array(
            self.get_clock().now().to_msg(),
            f"{self.get_fully_qualified_name()}: control",
            level,
            message,
            self._stats.key_values(),
        )
        self._diagnostics_pub.publish(array)


def main(args=None) -> None:
    """Run vla_node: its callbacks on a single-threaded executor, the policy on its control thread.

    rclpy's own SIGINT handler would shut the context down at once, while the control thread may be
    publishing ("publisher's context is invalid"); here SIGINT raises KeyboardInterrupt in this thread
    instead, and the control thread is stopped before the context goes.
    """
    from rclpy.signals import SignalHandlerOptions

    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    node = VlaNode()
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    try:
        if node.get_parameter("autostart").value and not node.autostart():
            node.get_logger().error("autostart failed; waiting for lifecycle transitions")
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.stop_control()  # no command after this; then the executor and the context
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()


if __name__ == "__main__":
    main()
