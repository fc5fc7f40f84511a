"""The FollowCommand action of vla_node, with a real rclpy ActionClient: goal, feedback, result, cancel, preemption.

The node runs active on the small untrained checkpoint of ``test_ros_vla_node`` (no done signal, so a goal that
is not ended otherwise times out, and the result says why); the probe streams frames and joint states.
"""

from __future__ import annotations

import time

import pytest

rclpy = pytest.importorskip("rclpy")
pytest.importorskip("vla_ros_interfaces.action", reason="vla_ros_interfaces is built by scripts/setup.sh")

import test_ros_vla_node as vla_node_tests  # noqa: E402
from action_msgs.msg import GoalStatus  # noqa: E402
from rclpy.action import ActionClient  # noqa: E402
from std_srvs.srv import SetBool  # noqa: E402
from test_ros_vla_node import COMMAND, _with_refusal  # noqa: E402
from waiting import wait_until  # noqa: E402

from vla_ros.goal_tracker import Outcome  # noqa: E402
from vla_ros_interfaces.action import FollowCommand  # noqa: E402

# the node-and-probe fixtures of the vla_node tests
make_node = vla_node_tests.make_node
policy_checkpoint = vla_node_tests.policy_checkpoint


class GoalClient:
    """An ActionClient on the probe's node that records each goal's feedback and result."""

    def __init__(self, probe):
        self.client = ActionClient(probe.node, FollowCommand, "vla/follow_command")
        assert self.client.wait_for_server(timeout_sec=10.0), "vla/follow_command not served"

    def send(self, command: str, timeout_s: float = 0.0):
        """Send a goal; returns (goal handle, feedback list, result future)."""
        feedback: list = []
        future = self.client.send_goal_async(FollowCommand.Goal(command=command, timeout_s=timeout_s),
                                             feedback_callback=lambda msg: feedback.append(msg.feedback))
        wait_until(future.done, what="goal acceptance")
        handle = future.result()
        assert handle.accepted
        return handle, feedback, handle.get_result_async()

    @staticmethod
    def result(result_future, timeout: float = 20.0):
        wait_until(result_future.done, what="goal result", timeout=timeout)
        response = result_future.result()
        return response.status, response.result


def test_a_goal_gets_feedback_moves_the_arm_and_times_out_without_a_done_signal(make_node, policy_checkpoint):
    node, probe = make_node("active", policy_path=str(policy_checkpoint))
    client = GoalClient(probe)
    _, feedback, result_future = client.send(COMMAND, timeout_s=1.5)
    status, result = client.result(result_future)
    assert status == GoalStatus.STATUS_ABORTED
    assert result.outcome == FollowCommand.Result.OUTCOME_TIMED_OUT == Outcome.TIMED_OUT
    assert result.outcome_name == "timed_out" and result.decided_by == "timeout"
    assert "no done signal" in result.reason and result.steps > 0 and result.elapsed_s >= 1.5
    assert feedback and feedback[-1].gate_state == "open" and feedback[-1].step >= 1
    assert probe.positions, "the arm moved while the goal ran"
    published = node.counter("commands_published")
    time.sleep(0.5)
    assert node.counter("commands_published") == published, "a finished goal holds the arm"
    wait_until(lambda: probe.diagnostics.get("command") == "", what="diagnostics without a command")


def test_the_done_signal_ends_a_goal_succeeded_and_holds_the_arm(make_node, policy_checkpoint, tmp_path):
    """A done head that fires on the first frame: the goal succeeds (decided by the done signal), no joint command
    is published, and the command status says done."""
    import json

    from std_msgs.msg import String
    from test_controller import _with_done_head

    from vla_ros.ros import qos

    node, probe = make_node("active", policy_path=str(_with_done_head(policy_checkpoint, tmp_path / "done", True)))
    statuses: list[dict] = []
    probe.node.create_subscription(String, "vla/command_status", lambda m: statuses.append(json.loads(m.data)),
                                   qos.COMMAND_STATUS_QOS)
    client = GoalClient(probe)
    _, _, result_future = client.send(COMMAND, timeout_s=10.0)
    status, result = client.result(result_future)
    assert status == GoalStatus.STATUS_SUCCEEDED
    assert result.outcome_name == "succeeded" and result.decided_by == "done_signal"
    wait_until(lambda: statuses and statuses[-1]["state"] == "done", what="a done status")
    assert node.counter("commands_published") == 0 and not probe.positions


def test_cancel_mid_motion_holds_at_once(make_node, policy_checkpoint):
    node, probe = make_node("active", policy_path=str(policy_checkpoint))
    client = GoalClient(probe)
    handle, _, result_future = client.send(COMMAND, timeout_s=60.0)
    wait_until(lambda: len(probe.positions) >= 3, what="joint commands of the goal")
    cancel = handle.cancel_goal_async()
    wait_until(cancel.done, what="cancel response")
    assert len(cancel.result().goals_canceling) == 1
    published = node.counter("commands_published")  # the cancel waited for a step in flight
    status, result = client.result(result_future)
    assert status == GoalStatus.STATUS_CANCELED and result.outcome == Outcome.CANCELLED
    time.sleep(0.6)  # 12 control periods
    assert node.counter("commands_published") == published, "no joint command after the cancel was accepted"
    assert len(probe.positions) == published


def test_a_new_goal_preempts_the_running_one_and_a_topic_command_preempts_a_goal(make_node, policy_checkpoint):
    node, probe = make_node("active", policy_path=str(policy_checkpoint))
    client = GoalClient(probe)
    _, _, first = client.send(COMMAND, timeout_s=60.0)
    wait_until(lambda: probe.positions, what="commands of the first goal")
    _, second_feedback, second = client.send("touch the blue ball", timeout_s=60.0)
    status, result = client.result(first)
    assert status == GoalStatus.STATUS_ABORTED and result.outcome == Outcome.PREEMPTED
    wait_until(lambda: second_feedback, what="feedback of the second goal")
    probe.send_command(COMMAND)  # the topic stays a shortcut; it replaces the goal's command
    status, result = client.result(second)
    assert result.outcome == Outcome.PREEMPTED and "topic" in result.reason
    count = len(probe.positions)
    wait_until(lambda: len(probe.positions) > count + 3, what="the topic command is followed")


def test_an_unreadable_command_and_an_absent_object_are_refused_and_nothing_moves(make_node, policy_checkpoint):
    node, probe = make_node("active", policy_path=str(_with_refusal(policy_checkpoint, 1.0)))
    client = GoalClient(probe)
    _, _, unreadable = client.send("   ")
    status, result = client.result(unreadable)
    assert status == GoalStatus.STATUS_ABORTED and result.outcome == Outcome.REFUSED
    assert result.decided_by == "validation" and "cannot be read" in result.reason
    _, _, absent = client.send("touch the purple cube")  # a threshold no region reaches
    status, result = client.result(absent)
    assert result.outcome == Outcome.REFUSED and result.decided_by == "refusal"
    assert "purple cube" in result.reason
    assert not probe.positions and node.counter("commands_published") == 0


def test_the_estop_ends_a_goal_and_an_inactive_node_fails_it(make_node, policy_checkpoint):
    node, probe = make_node("active", policy_path=str(policy_checkpoint))
    client = GoalClient(probe)
    _, _, running = client.send(COMMAND, timeout_s=60.0)
    wait_until(lambda: probe.positions, what="commands of the goal")
    probe.call(probe.estop, SetBool.Request(data=True))
    status, result = client.result(running)
    assert result.outcome == Outcome.ESTOPPED
    published = node.counter("commands_published")
    probe.call(probe.estop, SetBool.Request(data=False))
    time.sleep(0.5)
    assert node.counter("commands_published") == published, "releasing the e-stop does not resume the goal"

    idle, idle_probe = make_node("configured")
    _, _, inactive = GoalClient(idle_probe).send(COMMAND)
    status, result = GoalClient.result(inactive)
    assert result.outcome == Outcome.FAILED and "not active" in result.reason
