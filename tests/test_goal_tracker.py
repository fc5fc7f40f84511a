"""The goal outcome rules alone (no rclpy): first decision wins, timeouts, refusal, done signal."""

import math

import pytest

from vla_ros.goal_tracker import CommandGoal, Outcome


def test_outcome_codes_match_the_action_constants():
    interfaces = pytest.importorskip("vla_ros_interfaces.action", reason="built by scripts/setup.sh")
    result = interfaces.FollowCommand.Result
    for outcome in Outcome:
        assert getattr(result, f"OUTCOME_{outcome.name}") == int(outcome)


def test_steps_count_only_acted_steps_and_the_timeout_says_there_is_no_done_signal():
    ended = []
    goal = CommandGoal("reach the red cube", timeout_s=2.0, started=10.0, on_done=ended.append)
    assert goal.on_step(10.5, acted=True) is None
    assert goal.on_step(11.0, acted=False) is None
    assert goal.steps == 1 and not goal.done
    result = goal.on_step(12.0, acted=True)
    assert result.outcome == Outcome.TIMED_OUT and result.decided_by == "timeout"
    assert "no done signal" in result.reason and result.steps == 2 and result.elapsed_s == 2.0
    assert ended == [result]


def test_the_first_decision_wins():
    ended = []
    goal = CommandGoal("reach the red cube", timeout_s=5.0, started=0.0, on_done=ended.append)
    first = goal.finish(Outcome.CANCELLED, "cancelled by the client", "cancel", 1.0)
    assert goal.finish(Outcome.ESTOPPED, "e-stop", "estop", 1.1) is None
    assert goal.on_step(9.0, acted=True) is None and goal.check_timeout(9.0, False) is None
    assert goal.result is first and ended == [first] and goal.steps == 0


def test_refusal_and_done_signal_decide_the_outcome():
    refused = CommandGoal("reach the purple cube", 5.0, 0.0)
    result = refused.on_step(0.1, acted=False, refusal_reason="no object matches 'purple cube' (best 0.2 < 0.5)")
    assert result.outcome == Outcome.REFUSED and "purple cube" in result.reason
    done = CommandGoal("reach the red cube", 5.0, 0.0)
    result = done.on_step(0.1, acted=True, done_signal=True, has_done_signal=True)
    assert result.outcome == Outcome.SUCCEEDED and result.decided_by == "done_signal" and result.steps == 1


def test_a_timeout_with_a_done_signal_does_not_blame_its_absence():
    goal = CommandGoal("reach the red cube", 1.0, 0.0)
    result = goal.check_timeout(1.0, has_done_signal=True)
    assert result.outcome == Outcome.TIMED_OUT and "no done signal within 1 s" == result.reason


@pytest.mark.parametrize("timeout", [0.0, -1.0, math.nan, math.inf])
def test_a_timeout_must_be_positive_and_finite(timeout):
    with pytest.raises(ValueError, match="positive"):
        CommandGoal("reach the red cube", timeout, 0.0)
