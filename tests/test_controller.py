"""vla_node's control logic without rclpy: a real (small, untrained) policy, real safety gate, a test clock."""

from __future__ import annotations

import sys
import threading
import time

import numpy as np
import pytest
from policy_fixtures import ROBOT, make_policy_checkpoint

from vla_ros.controller import Controller
from vla_ros.safety import GateReason, JointLimits
from vla_ros.stats import NodeStats

LIMITS = JointLimits.from_robot(ROBOT)
HOME = (ROBOT.lower + ROBOT.upper) / 2
N = len(ROBOT.joint_names)
FRAME = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)


def test_the_controller_never_imports_rclpy():
    import subprocess

    code = "import sys, vla_ros.controller, vla_ros.goal_tracker, vla_ros.stats; print('rclpy' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() \
        == "False"


@pytest.fixture(scope="module")
def policy_path(tmp_path_factory):
    return make_policy_checkpoint(tmp_path_factory.mktemp("controller_policy"), fusion="late")


class Clock:
    def __init__(self, t: float = 100.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


def make_controller(policy_path, clock=None, output_joint_names=(), **kwargs):
    from vla_ros.policy.policy import Policy

    clock = clock or Clock()
    controller = Controller(NodeStats(), clock, decode=lambda frame: frame, control_period=0.05, **kwargs)
    controller.bind(Policy.load(policy_path), LIMITS, output_joint_names)
    return controller, clock


def feed(controller, clock, frame=FRAME, positions=HOME):
    controller.set_frame(frame, clock())
    controller.set_joint_state(positions.copy(), np.zeros(N), clock())


def test_no_policy_no_step():
    controller = Controller(NodeStats(), Clock(), decode=lambda f: f, control_period=0.05)
    controller.set_command("touch the red cube")
    assert controller.step() is None


def test_a_step_gives_a_joint_command_within_limits(policy_path):
    controller, clock = make_controller(policy_path)
    feed(controller, clock)
    serial, changed = controller.set_command("touch the red cube")
    result = controller.step()
    assert result.serial == serial and changed and result.acted and result.hold_reason == ""
    command = result.joint_command
    assert command.shape == (N,) and np.all(command >= ROBOT.lower) and np.all(command <= ROBOT.upper)
    # at most one control period of velocity away from where the arm is
    assert np.all(np.abs(command - HOME) <= ROBOT.velocity * 0.05 + 1e-9)
    assert controller.stats.counter("commands_published") == 1


@pytest.mark.parametrize("case, reason", [
    ("no_command", GateReason.NO_COMMAND), ("no_frame", GateReason.NO_FRAME),
    ("stale_frame", GateReason.STALE_FRAME), ("estop", GateReason.ESTOP),
])
def test_holds_run_no_policy(policy_path, case, reason):
    controller, clock = make_controller(policy_path)
    feed(controller, clock)
    if case != "no_command":
        controller.set_command("touch the red cube")
    if case == "no_frame":
        controller.clear_frame()
    if case == "stale_frame":
        clock.t += 1.0
        controller.set_joint_state(HOME.copy(), np.zeros(N), clock())
    if case == "estop":
        controller.set_estop(True)
    result = controller.step()
    assert result.decision.hold and result.decision.reason == reason and not result.acted
    assert result.joint_command is None and controller.stats.counter(f"hold.{reason.value}") == 1


def test_estop_release_drops_the_command(policy_path):
    controller, clock = make_controller(policy_path)
    controller.set_command("touch the red cube")
    assert controller.set_estop(True) and not controller.set_estop(True)
    assert controller.command == "touch the red cube"
    controller.set_estop(False)
    assert controller.command is None and controller.gate.check_inputs(None, 0, 0, 0, True).reason != GateReason.ESTOP


def test_lockstep_acts_once_per_frame_and_only_with_a_joint_state_as_new(policy_path):
    controller, clock = make_controller(policy_path, require_new_frame=True)
    controller.set_command("touch the red cube")
    feed(controller, clock)
    assert controller.step().acted
    assert controller.step() is None  # the same frame again
    clock.t += 0.05
    controller.set_frame(FRAME, clock())  # a new frame, the joint state still from the previous step
    assert controller.step() is None
    controller.set_joint_state(HOME.copy(), np.zeros(N), clock())
    assert controller.step().acted


def test_commands_serials_and_dropping_only_ones_own(policy_path):
    controller, _ = make_controller(policy_path)
    first, changed = controller.set_command("touch the red cube")
    assert changed and controller.set_command("touch the red cube") == (first + 1, False)
    controller.drop_command(serial=first)  # an older serial: the newer command stays
    assert controller.command == "touch the red cube"
    assert controller.drop_command(serial=first + 1) == "touch the red cube" and controller.command is None
    assert not controller.seen(("gid", 1)) and controller.seen(("gid", 1)) and not controller.seen(None)


def test_output_joint_order_and_a_wrong_one(policy_path):
    from vla_ros.policy.policy import Policy

    names = tuple(reversed(ROBOT.joint_names))
    controller, clock = make_controller(policy_path, output_joint_names=names)
    feed(controller, clock)
    controller.set_command("touch the red cube")
    result = controller.step()
    assert np.array_equal(result.joint_command, result.decision.command[::-1])
    with pytest.raises(ValueError, match="output_joint_names"):
        controller.bind(Policy.load(policy_path), LIMITS, ("base_yaw",))


def test_a_refused_command_holds_and_says_why(policy_path, tmp_path):
    import json
    import shutil

    refusing = tmp_path / "refusing"
    shutil.copytree(policy_path, refusing, symlinks=True)
    config = json.loads((refusing / "config.json").read_text())
    config["refusal"] = {"threshold": 1.0, "sigma_patches": 0.75}  # a presence no region reaches
    (refusing / "config.json").write_text(json.dumps(config))
    shutil.copytree(policy_path.parent / "clip", tmp_path / "clip")  # its CLIP path is relative
    controller, clock = make_controller(refusing)
    feed(controller, clock)
    controller.set_command("touch the purple cube")
    result = controller.step()
    assert result.refusal is not None and "purple cube" in result.refusal.reason
    assert result.hold_reason == "refused_command" and result.joint_command is None and not result.acted


def test_timer_on_the_simulated_clock_steps_once_per_simulated_period(policy_path):
    controller, clock = make_controller(policy_path)
    steps, stop = [], threading.Event()

    def on_step():
        steps.append(clock())
        if len(steps) >= 5:
            stop.set()

    def advance():  # simulated time moves 10 ms per millisecond polled, and stands still at the end
        while not stop.is_set():
            clock.t += 0.01
            stop.wait(0.001)

    mover = threading.Thread(target=advance)
    mover.start()
    controller.run(stop, on_step, trigger="timer", clock_paced=True, poll_s=0.0005)
    mover.join()
    gaps = np.diff(steps)
    assert len(steps) >= 5 and np.all(gaps >= 0.05 - 1e-9) and np.all(gaps < 0.05 + 0.03)


def test_frame_trigger_steps_on_new_frames_only(policy_path):
    controller, clock = make_controller(policy_path, require_new_frame=True)
    stop, calls = threading.Event(), []
    thread = threading.Thread(target=controller.run, args=(stop, lambda: calls.append(controller.step())),
                              kwargs={"trigger": "frame"})
    controller.set_command("touch the red cube")
    thread.start()
    try:
        for k in range(1, 4):
            clock.t += 0.05
            feed(controller, clock)
            deadline = time.monotonic() + 10
            while sum(c is not None and c.acted for c in calls) < k and time.monotonic() < deadline:
                time.sleep(0.005)
        time.sleep(0.2)  # no new frame: no further step
    finally:
        stop.set()
        thread.join()
    assert [c is not None and c.acted for c in calls] == [True, True, True]


def test_the_diagnostics_summary_names_the_most_important_state(policy_path):
    controller, _ = make_controller(policy_path)
    assert controller.summary(active=False) == (False, "inactive")
    assert controller.summary(active=True) == (False, "waiting for a command")
    controller.set_command("touch the purple cube")
    assert controller.summary(active=True) == (False, "running")
    assert controller.summary(active=True, refused_reason="no object matches") == (
        True, "command refused: no object matches")
    controller.set_estop(True)
    assert controller.summary(active=True, refused_reason="no object matches") == (True, "e-stop engaged")


def _with_done_head(policy_path, folder, fire: bool, threshold: float = 0.5):
    """A copy of the policy checkpoint with a done head whose output bias makes it always (or never) fire."""
    import shutil

    import torch

    from vla_ros.commands.train_done import save_done_head
    from vla_ros.policy.done_head import DoneConfig, DoneHead, done_input_dim
    from vla_ros.policy.policy import Policy

    shutil.copytree(policy_path, folder, symlinks=True)
    if not (folder.parent / "clip").exists():
        shutil.copytree(policy_path.parent / "clip", folder.parent / "clip")  # its CLIP path is relative
    features_dim = done_input_dim(Policy.load(policy_path).network)
    head = DoneHead(features_dim, hidden=8)
    with torch.no_grad():
        head.net[-1].weight.zero_()
        head.net[-1].bias.fill_(20.0 if fire else -20.0)
    save_done_head(folder, head, DoneConfig(features_dim=features_dim, threshold=threshold, hidden=8))
    return folder


def test_the_done_signal_holds_the_arm_until_a_new_command(policy_path, tmp_path):
    controller, clock = make_controller(_with_done_head(policy_path, tmp_path / "done", fire=True))
    assert controller.policy.has_done_signal
    feed(controller, clock)
    controller.set_command("touch the red cube")
    first = controller.step()
    assert first.acted and first.done and first.joint_command is None and first.hold_reason == "command_done"
    clock.t += 0.05
    feed(controller, clock)
    held = controller.step()  # the same command: held without running the policy
    assert held.done and not held.acted and held.joint_command is None
    controller.set_command("touch the blue ball")
    clock.t += 0.05
    feed(controller, clock)
    again = controller.step()
    assert again.acted and again.done  # a new command runs the policy again (this head always fires)
    assert controller.stats.counter("hold.command_done") == 3


def test_a_done_signal_that_does_not_fire_lets_commands_flow(policy_path, tmp_path):
    controller, clock = make_controller(_with_done_head(policy_path, tmp_path / "never", fire=False))
    feed(controller, clock)
    controller.set_command("touch the red cube")
    result = controller.step()
    assert result.acted and not result.done and result.joint_command is not None
    assert controller.policy.last_done_probability < 1e-6


def test_a_hostile_done_head_is_refused_naming_the_file(policy_path, tmp_path):
    import json

    from safetensors.torch import load_file, save_file

    from vla_ros.policy.checkpoint import CheckpointError
    from vla_ros.policy.policy import Policy

    folder = _with_done_head(policy_path, tmp_path / "hostile", fire=True)
    weights = load_file(str(folder / "done_head.safetensors"))
    weights["net.0.weight"][0, 0] = float("nan")
    save_file(weights, str(folder / "done_head.safetensors"))
    with pytest.raises(CheckpointError, match="done_head.safetensors: the done head has NaN"):
        Policy.load(folder)
    config = json.loads((folder / "config.json").read_text())
    for field, value in (("threshold", 1.5), ("features_dim", 10 ** 9), ("hidden", "64")):
        bad = {**config, "done": {**config["done"], field: value}}
        (folder / "config.json").write_text(json.dumps(bad))
        with pytest.raises(CheckpointError, match=f"config.json: done.{field}"):
            Policy.load(folder)
