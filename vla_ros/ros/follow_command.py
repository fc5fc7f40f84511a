"""The FollowCommand action of vla_node: a command as a goal with feedback, cancel, preemption and an outcome.

The action (``vla_ros_interfaces/action/FollowCommand``) is served on ``vla/follow_command``. A goal sets the
node's command exactly as the command topic does; the control thread then reports each step of it
(feedback) and the outcome rules of :mod:`vla_ros.goal_tracker` decide when it ends. Ending a goal, for any
reason but preemption, drops the command: the arm holds. Cancelling waits for a control step in flight, so
no joint command is published after the cancel is accepted.

The execute callback is a coroutine that awaits the goal's outcome, so the node's single-threaded executor
keeps serving its other callbacks (e-stop included) while a goal runs.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from rclpy.action import ActionServer, CancelResponse, GoalResponse
from rclpy.task import Future

from vla_ros.goal_tracker import CommandGoal, GoalResult, Outcome, StepReport

if TYPE_CHECKING:
    from vla_ros.nodes.vla_node import VlaNode

ACTION_NAME = "vla/follow_command"


def interfaces_available() -> bool:
    """True when the vla_ros_interfaces package (built by scripts/setup.sh or colcon) can be imported."""
    try:
        import vla_ros_interfaces.action  # noqa: F401
    except ImportError:
        return False
    return True


class FollowCommandServer:
    """Serves FollowCommand for a :class:`VlaNode`; at most one goal runs, a newer one preempts it."""

    def __init__(self, node: VlaNode, default_timeout_s: float) -> None:
        """Create the action server on ``node`` (call from configure; :meth:`destroy` on cleanup)."""
        from vla_ros_interfaces.action import FollowCommand

        self._action = FollowCommand
        self._node = node
        self._default_timeout = float(default_timeout_s)
        self._goal: CommandGoal | None = None
        self._goal_handle = None
        self._goal_serial: int | None = None  # the node's command serial the goal's command got
        self._server = ActionServer(
            node, FollowCommand, ACTION_NAME, execute_callback=self._execute,
            goal_callback=lambda request: GoalResponse.ACCEPT, cancel_callback=self._on_cancel,
        )

    def destroy(self) -> None:
        """End a running goal (failed) and destroy the action server."""
        self.end(Outcome.FAILED, "vla_node was cleaned up or shut down", "node")
        self._server.destroy()

    # ------------------------------------------------------------------------- executor side

    async def _execute(self, goal_handle):
        request = goal_handle.request
        node = self._node
        now = node.now()
        timeout = float(request.timeout_s) if request.timeout_s > 0 else self._default_timeout
        finished: Future = Future(executor=node.executor)

        def on_done(result: GoalResult) -> None:
            if result.outcome != Outcome.PREEMPTED:
                # and wait for a step in flight (re-entrant on the control thread): no command after the outcome
                node.drop_command(self._goal_serial_of(goal), wait_for_step=True)
            finished.set_result(result)
            if node.executor is not None:
                node.executor.wake()  # the coroutine resumes on the executor, maybe from the control thread

        goal = CommandGoal(request.command, timeout if math.isfinite(timeout) else self._default_timeout, now,
                           on_done=on_done)
        self.end(Outcome.PREEMPTED, "a newer goal replaced it", "preemption")
        self._goal, self._goal_handle, self._goal_serial = goal, goal_handle, None
        if goal_handle.is_cancel_requested:
            goal.finish(Outcome.CANCELLED, "cancelled before it started", "cancel", now)
        elif not node.is_active:
            goal.finish(Outcome.FAILED, "vla_node is not active (activate it through its lifecycle)", "node", now)
        else:
            serial, error = node.follow(request.command)
            if error is not None:
                goal.finish(Outcome.REFUSED, f"the command cannot be read: {error}", "validation", now)
            else:
                self._goal_serial = serial
        result: GoalResult = await finished
        if self._goal is goal:
            self._goal, self._goal_handle, self._goal_serial = None, None, None
        if result.outcome == Outcome.SUCCEEDED:
            goal_handle.succeed()
        elif result.outcome == Outcome.CANCELLED and goal_handle.is_cancel_requested:
            goal_handle.canceled()
        else:
            goal_handle.abort()
        node.get_logger().info(f"goal {request.command[:80]!r}: {result.outcome.word} ({result.reason})")
        return self._action.Result(
            outcome=int(result.outcome), outcome_name=result.outcome.word, reason=result.reason,
            decided_by=result.decided_by, steps=result.steps, elapsed_s=float(result.elapsed_s),
        )

    def _goal_serial_of(self, goal: CommandGoal) -> int | None:
        return self._goal_serial if goal is self._goal else None

    def _on_cancel(self, goal_handle) -> CancelResponse:
        goal = self._goal
        if goal is None or goal_handle is not self._goal_handle:
            return CancelResponse.ACCEPT  # already finished or not started; its execute ends it
        # Finishing the goal drops its command and waits for a step in flight (on_done in _execute): nothing is
        # published once the cancel is accepted.
        goal.finish(Outcome.CANCELLED, "cancelled by the client", "cancel", self._node.now())
        return CancelResponse.ACCEPT

    def end(self, outcome: Outcome, reason: str, decided_by: str) -> None:
        """End the running goal, if any (e-stop, clear-command, a topic command, deactivation)."""
        goal = self._goal
        if goal is not None:
            goal.finish(outcome, reason, decided_by, self._node.now())

    def check_timeout(self) -> None:
        """End the running goal if its time is up (a timer calls this: a goal may time out without steps)."""
        goal = self._goal
        if goal is not None:
            goal.check_timeout(self._node.now(), self._node.has_done_signal)

    # ---------------------------------------------------------------------- control-thread side

    def on_step(self, serial: int, report: StepReport, acted: bool, refusal_reason: str | None = None,
                done_signal: bool = False) -> bool:
        """Account a control step on command ``serial``: publish feedback or decide the outcome.

        Returns True when this step ended the goal (the caller then publishes no joint command for it).
        """
        goal, goal_handle = self._goal, self._goal_handle
        if goal is None or goal_handle is None or serial != self._goal_serial:
            return False
        now = self._node.now()
        if goal.on_step(now, acted=acted, refusal_reason=refusal_reason, done_signal=done_signal,
                        has_done_signal=self._node.has_done_signal) is not None:
            return True
        if not goal.done:
            goal_handle.publish_feedback(self._action.Feedback(
                grounded_object=report.grounded_object, grounding_score=report.grounding_score,
                refusal_threshold=report.refusal_threshold, step=goal.steps, elapsed_s=now - goal.started,
                gate_state=report.gate_state,
            ))
        return goal.done

    def on_step_result(self, result, policy) -> bool:
        """Report a controller step (``vla_ros.controller.StepResult``) of ``policy``; True if it ended the goal."""
        scores = getattr(policy, "last_grounding", None) or {}
        presence, bar = getattr(policy, "last_refusal_score", None), getattr(policy, "last_refusal_bar", None)
        report = StepReport(
            gate_state=f"hold: {result.hold_reason}" if result.hold_reason else "open",
            grounded_object=max(scores, key=scores.get) if scores else "",
            grounding_score=float("nan") if presence is None else float(presence),
            refusal_threshold=float("nan") if bar is None else float(bar),  # this command's bar
        )
        done = bool(result.done)  # the controller holds from the step the done signal fired
        refusal = result.refusal.reason if result.refusal is not None else None
        return self.on_step(result.serial, report, acted=result.acted, refusal_reason=refusal, done_signal=done)
