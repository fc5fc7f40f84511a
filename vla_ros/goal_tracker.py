"""Following one command as a goal: when it ends and why (no rclpy; vla_node's action server uses it).

A goal is one command the node acts on until an outcome decides it:

==============  =================================================================================
outcome         decided when
==============  =================================================================================
succeeded       the policy's own done signal fires (checkpoints that have one)
refused         the command cannot be read, or nothing in view matches it (the policy's refusal)
timed_out       ``timeout_s`` of node-clock time passed without a done signal
cancelled       the client cancelled it, or the clear-command service cleared it
estopped        the e-stop was engaged
preempted       a newer goal, or a command on the topic, replaced it
failed          the node could not act (deactivated, shut down, control error)
==============  =================================================================================

Every outcome but ``succeeded`` leaves the arm holding: the node drops the command. A checkpoint without a
done signal can only time out, and the result says so (``decided_by``), instead of claiming success.
"""

from __future__ import annotations

import enum
import threading
from dataclasses import dataclass, field
from typing import Callable


class Outcome(enum.IntEnum):
    """Outcome codes; the values are the FollowCommand result constants (``OUTCOME_*``)."""

    SUCCEEDED = 0
    REFUSED = 1
    TIMED_OUT = 2
    CANCELLED = 3
    ESTOPPED = 4
    PREEMPTED = 5
    FAILED = 6

    @property
    def word(self) -> str:
        """The outcome as the result's ``outcome_name``, e.g. ``timed_out``."""
        return self.name.lower()


@dataclass(frozen=True)
class GoalResult:
    """How a goal ended."""

    outcome: Outcome
    reason: str
    decided_by: str
    steps: int
    elapsed_s: float


@dataclass
class StepReport:
    """What one control step of a goal's command saw (the feedback; the goal adds its step count and time)."""

    gate_state: str
    grounded_object: str = ""
    grounding_score: float = float("nan")
    refusal_threshold: float = float("nan")


@dataclass
class CommandGoal:
    """One command followed until an outcome; thread-safe (the control thread steps it, the executor ends it)."""

    command: str
    timeout_s: float
    started: float  # node-clock seconds
    on_done: Callable[[GoalResult], None] = lambda result: None
    steps: int = 0
    result: GoalResult | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        """Refuse a timeout that is not a positive finite number of seconds."""
        if not (self.timeout_s > 0 and self.timeout_s < float("inf")):
            raise ValueError(f"goal timeout must be a positive number of seconds, got {self.timeout_s}")

    @property
    def done(self) -> bool:
        """True once an outcome is decided."""
        return self.result is not None

    def finish(self, outcome: Outcome, reason: str, decided_by: str, now: float) -> GoalResult | None:
        """Decide the outcome (the first decision wins); returns it, or ``None`` when already decided."""
        with self._lock:
            if self.result is not None:
                return None
            self.result = GoalResult(outcome, reason, decided_by, self.steps, max(0.0, now - self.started))
        self.on_done(self.result)
        return self.result

    def check_timeout(self, now: float, has_done_signal: bool) -> GoalResult | None:
        """End the goal as timed out once ``timeout_s`` has passed."""
        if self.done or now - self.started < self.timeout_s:
            return None
        why = "" if has_done_signal else "; the policy has no done signal, so a goal can only time out"
        return self.finish(Outcome.TIMED_OUT, f"no done signal within {self.timeout_s:g} s{why}", "timeout", now)

    def on_step(self, now: float, *, acted: bool, refusal_reason: str | None = None,
                done_signal: bool = False, has_done_signal: bool = False) -> GoalResult | None:
        """Account one control step of this goal's command; returns the outcome it decided, if any.

        ``acted``: the policy ran on this step (not held before it by the gate); ``refusal_reason``: the policy
        refused the command; ``done_signal``: the policy says the command is fulfilled.
        """
        if self.done:
            return None
        if acted:
            with self._lock:
                self.steps += 1
        if refusal_reason is not None:
            return self.finish(Outcome.REFUSED, refusal_reason, "refusal", now)
        if done_signal:
            return self.finish(Outcome.SUCCEEDED, "the policy's done signal fired", "done_signal", now)
        return self.check_timeout(now, has_done_signal)
