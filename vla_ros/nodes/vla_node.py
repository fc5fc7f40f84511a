"""vla_node: camera frames + language command + joint states -> policy -> safety gate -> joint commands.

A thin ROS shell around :class:`vla_ros.controller.Controller` (inputs, command, joint maps, the control step
and its scheduling, without rclpy). Lifecycle (yolo_ros style): ``configure`` reads and checks parameters,
loads joint limits and creates publishers, services, the FollowCommand action and subscriptions (inputs are
validated and counted in ``/diagnostics`` from here on, not acted upon); ``activate`` loads the policy, binds it
to the controller and starts the control thread; ``deactivate`` stops it and frees the policy (a pause: a topic
command resumes on re-activation, a goal ends as failed); ``cleanup``/``shutdown`` destroy what configure made.
The e-stop is served from construction on by a companion node on a thread of its own
(:mod:`vla_ros.ros.estop_server`). Callbacks run on a ``SingleThreadedExecutor`` and only validate and store;
the policy runs on the control thread (rclpy 9.1.2's ``MultiThreadedExecutor`` starved callbacks:
``vla-ros bench executor``). Topics, QoS and threads: ``docs/ARCHITECTURE.md``.
"""

from __future__ import annotations

import gc
import threading
import time

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.parameter import Parameter
from sensor_msgs.msg import CompressedImage, Image, JointState
from std_msgs.msg import String
from std_srvs.srv import SetBool, Trigger

from vla_ros.controller import HOLD_POLICY_ERROR, Controller, StepResult
from vla_ros.goal_tracker import Outcome
from vla_ros.nodes.node_support import LOG_TEXT_LIMIT, declare_parameters, for_log, run_node  # noqa: F401
from vla_ros.nodes.vla_node_parameters import PARAMETERS, NodeSettings, default_policy_path, robot_limits_source
from vla_ros.ros import qos
from vla_ros.ros.collector_pauses import collection_paused, freeze_long_lived
from vla_ros.ros.conversions import frame_to_numpy, message_key
from vla_ros.ros.diagnostics import diagnostic_array, stats_key_values
from vla_ros.ros.estop_server import EstopServer
from vla_ros.ros.follow_command import FollowCommandServer, interfaces_available
from vla_ros.ros.input_callbacks import REJECT_BAD_COMMAND, InputCallbacks
from vla_ros.ros.step_publishers import StepPublishers
from vla_ros.safety import JointLimits
from vla_ros.stats import NodeStats

CONTROL_ERROR = "control.error"  # diagnostics counter: a control step raised (rejected inputs: input_callbacks)


class VlaNode(LifecycleNode):
    """Runs the VLA policy on the newest camera frame and publishes joint commands."""

    def __init__(self, node_name: str = "vla_node", **kwargs) -> None:
        """Declare every parameter (described), import the policy stack, serve the e-stop; nothing loads yet."""
        super().__init__(node_name, **kwargs)
        declare_parameters(self, PARAMETERS)
        if not self._param("policy_path"):  # the robot's shipped checkpoint
            self.set_parameters([Parameter("policy_path", value=default_policy_path(self._param("robot")))])
        self._stats = NodeStats()
        self.controller = Controller(self._stats, self.now, frame_to_numpy, control_period=0.05)
        self._diagnostics_lock = threading.Lock()
        self._configured = self._active = False
        self._made: list = []  # (destroy function, entity) that configure created
        self._out: StepPublishers | None = None  # the step's outputs (configure creates them)
        self._goals: FollowCommandServer | None = None
        self._control_thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._settings: NodeSettings | None = None  # configure reads them
        self.inputs = InputCallbacks(self.controller, self._stats, self.now, self.get_logger(),
                                     lambda: self._robot_limits.joint_names, float(self._param("log_throttle_s")))
        # Import the policy stack (torch, open_clip, transformers) now: imports hold the GIL for up to 0.2 s at a
        # time, which would stall the e-stop thread if they ran during activation; loading weights does not.
        import vla_ros.policy.policy  # noqa: F401
        # ... and keep the collector's full collections, which hold the GIL too, off those imports' objects
        freeze_long_lived()
        self._estop_server = EstopServer(self, self._on_estop)

    def _param(self, name: str):
        return self.get_parameter(name).value

    # ------------------------------------------------------------------------------- lifecycle

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Read parameters, load joint limits, create publishers, services, the action and subscriptions."""
        try:
            names = self.get_parameter_or("output_joint_names", Parameter("output_joint_names", value=[])).value
            self._settings = settings = NodeSettings.read(self._param, names)
            self._robot_limits = JointLimits.from_robot(robot_limits_source(self._param("robot"),
                                                                             self._param("urdf_path")))
        except Exception as error:  # a failed transition must say why; rclpy would swallow it
            self.get_logger().error(f"configure failed: {for_log(str(error))}")
            return TransitionCallbackReturn.FAILURE
        self.controller.control_period = settings.control_period
        self.controller.require_new_frame = settings.require_new_frame
        self.inputs.log_throttle_s = settings.log_throttle_s
        p = self._param
        self._out = StepPublishers(self, p, settings.output_mode)
        # diagnostics are not lifecycle-managed: they also report while inactive
        self._diagnostics_pub = self.create_publisher(DiagnosticArray, "/diagnostics", qos.DIAGNOSTICS_QOS)
        camera = ((Image, p("camera_topic")) if settings.image_transport == "raw"
                  else (CompressedImage, p("camera_topic") + "/compressed"))
        self._made = [(self.destroy_publisher, self._diagnostics_pub)] + [(self.destroy_subscription, s) for s in (
            self.create_subscription(*camera, self.inputs.on_image, qos.CAMERA_QOS),
            self.create_subscription(String, p("command_topic"), self._on_command, qos.COMMAND_QOS),
            # default-QoS publishers too; a message reaching both subscriptions is acted on once
            self.create_subscription(String, p("command_topic"), self._on_command, qos.COMMAND_VOLATILE_QOS),
            self.create_subscription(JointState, p("joint_states_topic"), self.inputs.on_joint_state,
                                     qos.JOINT_STATES_QOS),
        )] + [(self.destroy_service, self.create_service(Trigger, "vla/clear_command", self._on_clear_command)),
              (self.destroy_timer, self.create_timer(float(p("diagnostics_period_s")), self._publish_diagnostics))]
        if interfaces_available():
            self._goals = FollowCommandServer(self, float(p("default_goal_timeout_s")))
            self._made.append((self.destroy_timer, self.create_timer(0.1, self._goals.check_timeout)))
        else:
            self.get_logger().warning("vla_ros_interfaces is not installed: no FollowCommand action "
                                      "(scripts/setup.sh or colcon builds it); the command topic works")
        self._configured = True
        self.get_logger().info(f"configured: output {settings.output_mode}, {1 / settings.control_period:.1f} Hz, "
                               f"joints {self._robot_limits.joint_names}")
        return super().on_configure(state)

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Load the policy, bind it to the controller and start the control thread."""
        try:
            settings = self._settings
            with collection_paused():  # no collection, full ones included, while loading allocates
                policy = settings.load_policy(self._param("policy_path"), self.get_logger())
            self.controller.bind(policy, self._robot_limits, settings.output_joint_names, settings.max_step,
                                 settings.max_frame_age_s, settings.max_joint_state_age_s)
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
            args=(self._stop, self._guarded_control_step, settings.control_trigger,
                  bool(self._param("use_sim_time"))),
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
        gc.collect()  # the policy's reference cycles; objects frozen at construction are not walked
        if self._settings is not None and self._settings.device.startswith("cuda"):
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
        if self._out is not None:
            self._out.destroy()
            self._out = None

    # ---------------------------------------------------------------------------------- inputs

    def now(self) -> float:
        """Node-clock time (s): simulated time under use_sim_time."""
        return self.get_clock().now().nanoseconds * 1e-9

    def _on_command(self, msg: String, info: dict) -> None:
        if self.controller.seen(message_key(info)):  # a latched message reaches both command subscriptions
            return
        self._end_goal(Outcome.PREEMPTED, "a command arrived on the command topic", "preemption")
        _, error = self.follow(msg.data)
        if error is not None:
            self.inputs.reject(REJECT_BAD_COMMAND, error)

    def follow(self, text) -> tuple[int | None, str | None]:
        """Make ``text`` the command: (its serial, None), or (None, why not) (the FollowCommand server calls it)."""
        return self.inputs.follow(text)

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
            self.inputs.reject(CONTROL_ERROR, f"control step failed: {type(error).__name__}: {error}")

    def _publish_step(self, result: StepResult) -> None:
        policy, out = self.controller.policy, self._out
        if result.error is not None:
            self.inputs.reject(HOLD_POLICY_ERROR, result.error)
        elif result.acted or result.refusal is not None or result.done:
            out.status(result.command, result.refusal, getattr(policy, "last_presence", None), result.done)
        goal_ended = self._goals is not None and self._goals.on_step_result(result, policy)
        publish_start = time.perf_counter()
        if result.joint_command is not None and not goal_ended:
            out.joint_command(result.joint_command, self.controller.output_names, self.controller.control_period)
        if result.acted and self._param("publish_debug_image"):
            out.grounding(policy, result.command, result.rgb, result.header)
        self._stats.add_latency("publish", time.perf_counter() - publish_start)

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
            if self._configured:
                for key, value in (("active", self._active), ("estop", self.controller.estopped),
                                   ("command", self.controller.command or "")):
                    self._stats.set_value(key, value)
                warn, message = self.controller.summary(self._active,
                                                        self._out and self._out.refused_reason(self.controller.command))
                self._diagnostics_pub.publish(diagnostic_array(
                    self.get_clock().now().to_msg(), f"{self.get_fully_qualified_name()}: control",
                    DiagnosticStatus.WARN if warn else DiagnosticStatus.OK, message, stats_key_values(self._stats)))


def main(args=None) -> None:
    """Run vla_node; SIGINT stops the control thread before the context goes (no "context is invalid")."""
    def start(node: VlaNode) -> None:
        if node.get_parameter("autostart").value and not node.autostart():
            node.get_logger().error("autostart failed; waiting for lifecycle transitions")

    run_node(VlaNode, args, start=start, stop=VlaNode.stop_control, own_sigint=True)


if __name__ == "__main__":
    main()
