"""vla_node: camera frames + language command + joint states -> policy -> safety gate -> joint commands.

A thin ROS shell around :class:`vla_ros.controller.Controller`, which holds the inputs, the command, the joint
maps, the control step and its scheduling without rclpy. Lifecycle (yolo_ros style):

* ``configure``: read parameters, load the robot's joint limits, create publishers, services, the FollowCommand
  action and the input subscriptions. Inputs are validated and rejections counted in ``/diagnostics`` from
  here on (a broken camera shows before activation), but nothing is acted upon.
* ``activate``: load the policy, bind it to the controller (joint maps, safety gate), start the control thread.
* ``deactivate``: stop the control thread, free the policy (and the CUDA cache). Deactivation is a pause: a
  command from the topic stays, and re-activation resumes it (the lifecycle manager chose to); a FollowCommand
  goal ends as failed and its command is dropped. Releasing the e-stop never resumes motion.
* ``cleanup`` / ``shutdown``: destroy everything ``configure`` created.

The e-stop service (``vla/estop``) is not the lifecycle's: a companion node with an executor thread of its own
serves it from construction on (:mod:`vla_ros.ros.estop_server`), so loading a checkpoint cannot delay it.

Threads: the subscription, service and action callbacks run on a ``SingleThreadedExecutor`` and only validate
and store; the policy runs on a control thread of its own (``Controller.run``), so a slow step never delays the
callbacks, and they never delay the policy. rclpy 9.1.2's ``MultiThreadedExecutor`` is not used: it dispatched
callbacks far slower (``vla-ros bench executor``: 11x fewer round trips, 18 of 100 camera frames delivered).
"""

from __future__ import annotations

import gc
import json
import threading
import time

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.parameter import Parameter
from sensor_msgs.msg import CompressedImage, Image, JointState
from std_msgs.msg import Float64MultiArray, String
from std_srvs.srv import SetBool, Trigger
from trajectory_msgs.msg import JointTrajectory

from vla_ros.controller import HOLD_POLICY_ERROR, Controller, StepResult
from vla_ros.goal_tracker import Outcome, StepReport
from vla_ros.nodes.node_support import LOG_TEXT_LIMIT, declare_parameters, for_log, run_node  # noqa: F401
from vla_ros.nodes.vla_node_parameters import BACKENDS, CONTROL_TRIGGERS, IMAGE_TRANSPORTS, OUTPUT_MODES, PARAMETERS
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
from vla_ros.ros.diagnostics import diagnostic_array, stats_key_values
from vla_ros.ros.estop_server import EstopServer
from vla_ros.ros.follow_command import FollowCommandServer, interfaces_available
from vla_ros.safety import JointLimits
from vla_ros.stats import NodeStats

# Diagnostics counter keys for inputs rejected before they reach the policy.
REJECT_MALFORMED_IMAGE = "rejected.malformed_image"
REJECT_BAD_COMMAND = "rejected.bad_command"
REJECT_BAD_JOINT_STATE = "rejected.bad_joint_state"
REJECT_NAN_JOINT_STATE = "rejected.nan_joint_state"
CONTROL_ERROR = "control.error"


def _choice(value, choices: tuple, name: str):
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return value


def _message_key(info) -> tuple | None:
    """(publisher gid, publication sequence number) of a received message, or None where the RMW gives none."""
    if not info or info.get("publication_sequence_number") is None or not info.get("publisher_gid"):
        return None
    gid = info["publisher_gid"]
    gid = gid.get("data", gid) if isinstance(gid, dict) else gid
    return bytes(gid), int(info["publication_sequence_number"])


class VlaNode(LifecycleNode):
    """Runs the VLA policy on the newest camera frame and publishes joint commands."""

    def __init__(self, node_name: str = "vla_node", **kwargs) -> None:
        """Declare every parameter (described), import the policy stack, serve the e-stop; nothing loads yet."""
        super().__init__(node_name, **kwargs)
        declare_parameters(self, PARAMETERS)
        if not self._param("policy_path"):
            from vla_ros.paths import share_path

            self.set_parameters([Parameter("policy_path", value=str(share_path("models", "policy")))])
        self._stats = NodeStats()
        self.controller = Controller(self._stats, self._now, frame_to_numpy, control_period=0.05)
        self._diagnostics_lock = threading.Lock()
        self._configured = self._active = False
        self._made: list = []  # (destroy function, entity) that configure created
        self._pubs: dict = {}
        self._goals: FollowCommandServer | None = None
        self._command_status: tuple | None = None  # (command, (state, kind, reason)) last published
        self._last_log: dict[str, float] = {}
        self._control_thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._device = "cpu"
        self._log_throttle = float(self._param("log_throttle_s"))
        # Import the policy stack (torch, open_clip, transformers) now: imports hold the GIL for up to 0.2 s at a
        # time, which would stall the e-stop thread if they ran during activation; loading weights does not.
        import vla_ros.policy.policy  # noqa: F401
        self._estop_server = EstopServer(self, self._on_estop)

    def _param(self, name: str):
        return self.get_parameter(name).value

    # ------------------------------------------------------------------------------- lifecycle

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Read parameters, load joint limits, create publishers, services, the action and subscriptions."""
        try:
            transport = _choice(self._param("image_transport"), IMAGE_TRANSPORTS, "image_transport")
            self._output_mode = _choice(self._param("output_mode"), OUTPUT_MODES, "output_mode")
            self._backend = _choice(self._param("backend"), BACKENDS, "backend")
            self._trigger = _choice(self._param("control_trigger"), CONTROL_TRIGGERS, "control_trigger")
            self._device = self._param("device")
            if not (self._device == "cpu" or self._device.startswith("cuda")):
                raise ValueError(f"device must be 'cpu' or 'cuda[:N]', got {self._device!r}")
            period = 1.0 / float(self._param("control_rate_hz"))
            if not 0 < period < 10:
                raise ValueError(f"control_rate_hz must be > 0.1, got {self._param('control_rate_hz')}")
            from vla_ros.robot_description import load_robot_description

            self._robot_limits = JointLimits.from_robot(load_robot_description(self._param("urdf_path") or None))
        except Exception as error:  # a failed transition must say why; rclpy would swallow it
            self.get_logger().error(f"configure failed: {for_log(str(error))}")
            return TransitionCallbackReturn.FAILURE
        self.controller.control_period = period
        # acting on frames means acting on each frame once, as in lockstep
        self.controller.require_new_frame = bool(self._param("require_new_frame")) or self._trigger == "frame"
        self._log_throttle = float(self._param("log_throttle_s"))
        names = self.get_parameter_or("output_joint_names", Parameter("output_joint_names", value=[])).value
        self._output_joint_names = tuple(name for name in names if name)
        p = self._param
        command_msg, command_topic = ((Float64MultiArray, p("position_command_topic"))
                                      if self._output_mode == "position_array"
                                      else (JointTrajectory, p("trajectory_topic")))
        for key, msg, topic, profile in (
            ("command", command_msg, command_topic, qos.JOINT_COMMAND_QOS),
            ("debug_image", Image, p("debug_image_topic"), qos.DEBUG_IMAGE_QOS),
            ("heatmap", Image, p("heatmap_image_topic"), qos.DEBUG_IMAGE_QOS),
            ("scores", String, p("grounding_scores_topic"), qos.STATUS_QOS),
            ("status", String, p("command_status_topic"), qos.COMMAND_STATUS_QOS),
        ):
            self._pubs[key] = self.create_lifecycle_publisher(msg, topic, profile)
        # diagnostics are not lifecycle-managed: they also report while inactive
        self._diagnostics_pub = self.create_publisher(DiagnosticArray, "/diagnostics", qos.DIAGNOSTICS_QOS)
        camera = ((Image, p("camera_topic")) if transport == "raw"
                  else (CompressedImage, p("camera_topic") + "/compressed"))
        self._made = [(self.destroy_publisher, self._diagnostics_pub)] + [(self.destroy_subscription, s) for s in (
            self.create_subscription(*camera, self._on_image, qos.CAMERA_QOS),
            self.create_subscription(String, p("command_topic"), self._on_command, qos.COMMAND_QOS),
            # default-QoS publishers too; a message reaching both subscriptions is acted on once
            self.create_subscription(String, p("command_topic"), self._on_command, qos.COMMAND_VOLATILE_QOS),
            self.create_subscription(JointState, p("joint_states_topic"), self._on_joint_state, qos.JOINT_STATES_QOS),
        )] + [(self.destroy_service, self.create_service(Trigger, "vla/clear_command", self._on_clear_command)),
              (self.destroy_timer, self.create_timer(float(p("diagnostics_period_s")), self._publish_diagnostics))]
        if interfaces_available():
            self._goals = FollowCommandServer(self, float(p("default_goal_timeout_s")))
            self._made.append((self.destroy_timer, self.create_timer(0.1, self._goals.check_timeout)))
        else:
            self.get_logger().warning("vla_ros_interfaces is not installed: no FollowCommand action "
                                      "(scripts/setup.sh or colcon builds it); the command topic works")
        self._configured = True
        self.get_logger().info(f"configured: output {self._output_mode}, {1 / period:.1f} Hz, "
                               f"joints {self._robot_limits.joint_names}")
        return super().on_configure(state)

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Load the policy, bind it to the controller and start the control thread."""
        try:
            policy = self._load_policy()
            max_step = float(self._param("max_step"))
            self.controller.bind(policy, self._robot_limits, self._output_joint_names,
                                 max_step=max_step if max_step > 0 else None,
                                 max_frame_age_s=float(self._param("max_frame_age_s")),
                                 max_joint_state_age_s=float(self._param("max_joint_state_age_s")))
        except Exception as error:
            self.get_logger().error(f"activate failed: {for_log(str(error))}")
            self._free_policy()
            return TransitionCallbackReturn.FAILURE
        control_dt = getattr(policy, "control_dt", None)
        if control_dt is not None and abs(control_dt - self.controller.control_period) > 1e-6:
            self.get_logger().warning(
                f"control period {self.controller.control_period:.4f} s differs from the policy's control_dt "
                f"{control_dt:.4f} s; the arm will move at a different speed than in training")
        self._active = True
        self._stop = threading.Event()
        self._control_thread = threading.Thread(
            target=self.controller.run, name="vla_control",
            args=(self._stop, self._guarded_control_step, self._trigger, bool(self._param("use_sim_time"))),
            daemon=True)
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
        from vla_ros.policy.policy import Policy

        path = self._param("policy_path")
        if not path:
            raise ValueError("parameter policy_path is empty")
        kwargs = {"device": self._device, "backend": self._backend}
        if not self._param("cuda_graphs"):
            kwargs["cuda_graphs"] = False  # else automatic: on where it applies
        if self._param("fp16"):
            kwargs["precision"] = "fp16"
        start = time.perf_counter()
        policy = Policy.load(path, **kwargs)
        graph = ", CUDA graph" if policy.cuda_graph is not None else ""
        self.get_logger().info(f"loaded policy {path} on {self._device} ({self._backend}{graph}) in "
                               f"{time.perf_counter() - start:.2f} s")
        return policy

    def stop_control(self) -> None:
        """Stop the control thread and free the policy (deactivation, shutdown, main()'s exit)."""
        self._end_goal(Outcome.FAILED, "vla_node stopped acting (deactivated or shutting down)", "node")
        thread, self._control_thread = self._control_thread, None
        self._stop.set()
        if thread is not None and thread is not threading.current_thread():
            thread.join()
        with self.controller.step_lock:
            self._active = False
            self._free_policy()

    def _free_policy(self) -> None:
        if self.controller.policy is None:
            return
        self.controller.unbind()
        gc.collect()
        if self._device.startswith("cuda"):
            import torch

            torch.cuda.empty_cache()

    def _destroy_entities(self) -> None:
        with self._diagnostics_lock:  # a diagnostics report in flight must not see destroyed publishers
            self._configured = False
        for destroy, entity in self._made:
            destroy(entity)
        self._made = []
        goals, self._goals = self._goals, None
        if goals is not None:
            goals.destroy()
        for publisher in self._pubs.values():
            self.destroy_lifecycle_publisher(publisher)
        self._pubs = {}

    # ---------------------------------------------------------------------------------- inputs

    def _now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def now(self) -> float:
        """Node-clock time (s): simulated time under use_sim_time."""
        return self._now()

    def _reject(self, key: str, message: str) -> None:
        """Count a rejected input and log it, at most once per log_throttle_s per kind."""
        self._stats.count(key)
        now = time.monotonic()
        if now - self._last_log.get(key, float("-inf")) >= self._log_throttle:
            self._last_log[key] = now
            self.get_logger().warning(f"{key}: {for_log(message)} (counted in /diagnostics; holding position)")

    def _on_image(self, msg: Image | CompressedImage) -> None:
        try:  # cheap header/size checks; decoding waits for the control step
            validate_compressed_image(msg) if isinstance(msg, CompressedImage) else validate_image(msg)
        except ValueError as error:
            self.controller.clear_frame()
            self._reject(REJECT_MALFORMED_IMAGE, str(error))
            return
        now, stamp = self._now(), stamp_to_seconds(msg.header.stamp)
        stamp = stamp if stamp > 0 else now  # some drivers leave it at zero: the receive time is the best guess
        if 0.0 <= now - stamp < 10.0:
            self._stats.add_latency("transport", now - stamp)  # header stamp -> here (and any clock offset)
        self.controller.set_frame(msg, stamp)

    def _on_command(self, msg: String, info: dict) -> None:
        if self.controller.seen(_message_key(info)):  # a latched message reaches both command subscriptions
            return
        self._end_goal(Outcome.PREEMPTED, "a command arrived on the command topic", "preemption")
        _, error = self.follow(msg.data)
        if error is not None:
            self._reject(REJECT_BAD_COMMAND, error)

    def follow(self, text) -> tuple[int | None, str | None]:
        """Make ``text`` the command: (its serial, None), or (None, why not). An unreadable one still holds."""
        try:
            command = validate_command(text)
        except ValueError as error:  # the operator meant to change the task: continuing the old one is wrong
            self.controller.set_command(None)
            return None, str(error)
        serial, changed = self.controller.set_command(command)
        if changed:
            self.get_logger().info(f"command: {for_log(repr(command))}")
        return serial, None

    def drop_command(self, serial: int | None = None, wait_for_step: bool = False) -> None:
        """Hold: drop the command (if still command ``serial``); ``wait_for_step`` waits for a step in flight."""
        self.controller.drop_command(serial, wait_for_step)

    @property
    def is_active(self) -> bool:
        """True while the policy is loaded and the control loop runs."""
        return self._active

    @property
    def has_done_signal(self) -> bool:
        """True when the loaded policy predicts that its command is fulfilled."""
        return bool(getattr(self.controller.policy, "has_done_signal", False))

    def _end_goal(self, outcome: Outcome, reason: str, decided_by: str) -> None:
        if self._goals is not None:
            self._goals.end(outcome, reason, decided_by)

    def _on_joint_state(self, msg: JointState) -> None:
        try:
            positions, velocities = joint_state_to_arrays(msg, self._robot_limits.joint_names)
        except ValueError as error:
            self.controller.clear_joint_state()
            nan = isinstance(error, NonFiniteJointStateError)
            self._reject(REJECT_NAN_JOINT_STATE if nan else REJECT_BAD_JOINT_STATE, str(error))
            return
        stamp = stamp_to_seconds(msg.header.stamp)
        self.controller.set_joint_state(positions, velocities, stamp if stamp > 0 else self._now())

    def _on_estop(self, request: SetBool.Request, response: SetBool.Response) -> SetBool.Response:
        # runs on the e-stop server's own thread (vla_ros.ros.estop_server)
        changed = self.controller.set_estop(request.data)
        if request.data:
            self._end_goal(Outcome.ESTOPPED, "the e-stop was engaged", "estop")
            self._stats.count("estop.engaged")
            if changed:
                self.get_logger().warning("e-stop engaged: holding position")
            response.message = "e-stop engaged"
        else:  # releasing must not restart motion by itself (ISO 13850): the controller dropped the command
            if changed:
                self.get_logger().info("e-stop released; send a new command to move")
            response.message = "e-stop released; command cleared, send a new command to move"
        response.success = True
        return response

    def _on_clear_command(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        self._end_goal(Outcome.CANCELLED, "the clear_command service cleared it", "clear_command")
        had = self.controller.drop_command()
        response.success = True
        response.message = f"cleared command {had!r}" if had else "no command was set"
        self.get_logger().info(response.message)
        return response

    # ---------------------------------------------------------------------------- control step

    def _guarded_control_step(self) -> None:
        try:  # the step lock spans step and publishing: a cancel waiting on it sees nothing published after
            with self.controller.step_lock:
                if self._active:
                    result = self.controller.step()
                    if result is not None:
                        self._publish_step(result)
        except Exception as error:  # the loop must outlive any one step; the gate holds meanwhile
            self._reject(CONTROL_ERROR, f"control step failed: {type(error).__name__}: {error}")

    def _publish_step(self, result: StepResult) -> None:
        policy = self.controller.policy
        if result.error is not None:
            self._reject(HOLD_POLICY_ERROR, result.error)
        elif result.acted or result.refusal is not None:
            self._set_command_status(result.command, result.refusal, getattr(policy, "last_presence", None))
        goal_ended = self._goal_step(result, policy)
        publish_start = time.perf_counter()
        if result.joint_command is not None and not goal_ended:
            if self._output_mode == "position_array":
                self._pubs["command"].publish(position_command_array(result.joint_command))
            else:
                self._pubs["command"].publish(joint_trajectory(
                    self.controller.output_names, result.joint_command, self.controller.control_period))
        if result.acted and self._param("publish_debug_image"):
            header, scores = result.header, getattr(policy, "last_grounding", None)
            if scores:
                self._pubs["scores"].publish(String(data=json.dumps({"command": result.command,
                                                                           "scores": scores})))
            overlay = grounding_overlay(policy, result.rgb)
            for key, image in (("heatmap", overlay), ("debug_image", draw_grounding(overlay, result.command, scores))):
                self._pubs[key].publish(numpy_to_image(image, "rgb8", header.stamp, header.frame_id))
        self._stats.add_latency("publish", time.perf_counter() - publish_start)

    def _goal_step(self, result: StepResult, policy) -> bool:
        """Report the step to the FollowCommand goal of its command; True if that ended the goal."""
        if self._goals is None:
            return False
        scores = getattr(policy, "last_grounding", None) or {}
        rule, presence = getattr(policy, "refusal_rule", None), getattr(policy, "last_presence", None)
        report = StepReport(
            gate_state=f"hold: {result.hold_reason}" if result.hold_reason else "open",
            grounded_object=max(scores, key=scores.get) if scores else "",
            grounding_score=float("nan") if presence is None else float(presence),
            refusal_threshold=float("nan") if rule is None else float(rule.threshold),
        )
        done = bool(getattr(policy, "last_done", False)) if result.acted else False
        refusal = result.refusal.reason if result.refusal is not None else None
        return self._goals.on_step(result.serial, report, acted=result.acted, refusal_reason=refusal,
                                   done_signal=done)

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
        self._pubs["status"].publish(String(data=json.dumps(message)))

    # ----------------------------------------------------------------------------- diagnostics

    def counter(self, key: str) -> int:
        """Current value of a diagnostics counter (e.g. ``rejected.bad_command``)."""
        return self._stats.counter(key)

    def destroy_node(self) -> None:
        """Stop the control thread and the e-stop server before the entities they use are destroyed."""
        self.stop_control()
        self._estop_server.destroy()
        super().destroy_node()

    def _publish_diagnostics(self) -> None:
        with self._diagnostics_lock:
            if not self._configured:
                return
            command, estopped, active = self.controller.command, self.controller.estopped, self._active
            for key, value in (("active", active), ("estop", estopped), ("command", command or "")):
                self._stats.set_value(key, value)
            level, message = DiagnosticStatus.OK, "running" if active else "inactive"
            status = self._command_status
            if estopped:
                level, message = DiagnosticStatus.WARN, "e-stop engaged"
            elif active and command is None:
                message = "waiting for a command"
            elif active and status and status[0] == command and status[1][0] == "refused":
                level, message = DiagnosticStatus.WARN, f"command refused: {status[1][2]}"
            self._diagnostics_pub.publish(diagnostic_array(
                self.get_clock().now().to_msg(), f"{self.get_fully_qualified_name()}: control", level, message,
                stats_key_values(self._stats)))


def main(args=None) -> None:
    """Run vla_node; SIGINT stops the control thread before the context goes (no "context is invalid")."""
    def start(node: VlaNode) -> None:
        if node.get_parameter("autostart").value and not node.autostart():
            node.get_logger().error("autostart failed; waiting for lifecycle transitions")

    run_node(VlaNode, args, start=start, stop=VlaNode.stop_control, own_sigint=True)


if __name__ == "__main__":
    main()
