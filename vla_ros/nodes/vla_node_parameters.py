"""Every parameter of vla_node with its default and description (``config/vla_node.yaml`` sets the same names)."""

from dataclasses import dataclass
from typing import Callable

from rclpy.parameter import Parameter

from vla_ros.controller import TRIGGERS as CONTROL_TRIGGERS
from vla_ros.robot_config import robot_name

IMAGE_TRANSPORTS = ("raw", "compressed")
OUTPUT_MODES = ("position_array", "trajectory")
BACKENDS = ("torch", "onnxruntime")

# (name, default, description) of every parameter; config/vla_node.yaml sets the same names.
PARAMETERS = (
    (
        "policy_path",
        "",
        "Policy checkpoint folder (policy.safetensors + config.json); empty = the robot's shipped checkpoint: "
        "models/policy for vla_arm, models/<robot> for the others.",
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
    (
        "robot",
        "vla_arm",
        "Robot file: a name in sim/robots (vla_arm, so101) or a path to one. Its URDF gives the joint limits, "
        "and the policy checkpoint must have been trained for this robot.",
    ),
    ("urdf_path", "", "URDF with the joint limits instead of the robot file's; empty = the robot file's URDF."),
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


@dataclass(frozen=True)
class NodeSettings:
    """vla_node's parameters read once at configure, checked: a bad value is a clear error, not a later surprise."""

    image_transport: str
    output_mode: str
    backend: str
    control_trigger: str
    device: str
    control_period: float
    require_new_frame: bool
    output_joint_names: tuple[str, ...]
    max_step: float | None
    max_frame_age_s: float
    max_joint_state_age_s: float
    log_throttle_s: float
    policy_kwargs: dict
    robot: str = "vla_arm"
    """the robot file's name (``RobotConfig.name``) that checkpoints must have been trained for"""

    @classmethod
    def read(cls, param: Callable[[str], object], output_joint_names=()) -> "NodeSettings":
        """Read and check every setting; ``param(name)`` returns a parameter's value."""
        def choice(name: str, choices: tuple):
            if param(name) not in choices:
                raise ValueError(f"{name} must be one of {choices}, got {param(name)!r}")
            return param(name)

        device = param("device")
        if not (device == "cpu" or device.startswith("cuda")):
            raise ValueError(f"device must be 'cpu' or 'cuda[:N]', got {device!r}")
        rate = float(param("control_rate_hz"))
        if not rate > 0.1:
            raise ValueError(f"control_rate_hz must be > 0.1, got {rate}")
        trigger = choice("control_trigger", CONTROL_TRIGGERS)
        backend = choice("backend", BACKENDS)
        kwargs = {"device": device, "backend": backend}
        if not param("cuda_graphs"):
            kwargs["cuda_graphs"] = False  # else automatic: on where it applies
        if param("fp16"):
            kwargs["precision"] = "fp16"
        max_step = float(param("max_step"))
        return cls(
            image_transport=choice("image_transport", IMAGE_TRANSPORTS),
            output_mode=choice("output_mode", OUTPUT_MODES),
            backend=backend, control_trigger=trigger, device=device, control_period=1.0 / rate,
            # acting on frames means acting on each frame once, as in lockstep
            require_new_frame=bool(param("require_new_frame")) or trigger == "frame",
            output_joint_names=tuple(name for name in output_joint_names if name),
            max_step=max_step if max_step > 0 else None, max_frame_age_s=float(param("max_frame_age_s")),
            max_joint_state_age_s=float(param("max_joint_state_age_s")),
            log_throttle_s=float(param("log_throttle_s")), policy_kwargs=kwargs,
            robot=robot_name(param("robot") or None),
        )

    def load_policy(self, path: str, logger):
        """Load the checkpoint at ``path`` with these settings' device, backend and precision; log how long it took."""
        import time

        from vla_ros.policy.policy import Policy

        if not path:
            raise ValueError("parameter policy_path is empty")
        start = time.perf_counter()
        policy = Policy.load(path, **self.policy_kwargs)
        trained_for = policy.config.get("robot", "vla_arm")  # checkpoints from before robot files: vla_arm
        if trained_for != self.robot:
            raise ValueError(f"checkpoint {path} was trained for robot {trained_for!r}, but this node drives "
                             f"{self.robot!r} (parameter robot)")
        graph = ", CUDA graph" if policy.cuda_graph is not None else ""
        logger.info(f"loaded policy {path} on {self.policy_kwargs['device']} ({self.policy_kwargs['backend']}{graph}) "
                    f"in {time.perf_counter() - start:.2f} s")
        return policy


def robot_limits_source(robot: str, urdf_path: str):
    """The robot description whose limits the node enforces: the robot file's URDF, or ``urdf_path`` instead."""
    from vla_ros.robot_config import load_robot
    from vla_ros.robot_description import load_robot_description

    config = load_robot(robot or None)
    if not urdf_path:
        return config.description
    return load_robot_description(urdf_path, config.description.end_effector_link, config.description.gripper_joint)


def default_policy_path(robot: str) -> str:
    """The shipped checkpoint of a robot: ``models/policy`` for vla_arm, ``models/<name>`` for the others."""
    from vla_ros.paths import share_path

    name = robot_name(robot or None)
    return str(share_path("models", "policy" if name == "vla_arm" else name))
