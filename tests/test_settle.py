"""Imitation episodes that run on past their first success: the expert settles inside the goal."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

import vla_ros.envs  # noqa: F401  (registers the ids)
from vla_ros.envs import ENV_IDS
from vla_ros.envs.expert import HOVER_CLEARANCE, RETRACT_MARGIN, ScriptedExpert
from vla_ros.envs.tabletop import PUSH_SUCCESS_DISTANCE
from vla_ros.policy.envs import SettleAfterSuccess, make_env_fn

SETTLE = 8


def _settled_episode(task: str, seed: int):
    """The expert's episode in a settling env: (steps at the first success, steps in all, last info, phases)."""
    env = make_env_fn(task, settle_steps=SETTLE, render_observation=False)()
    expert = ScriptedExpert(env)
    _, info = env.reset(seed=seed)
    first, steps, phases, done = None, 0, [], False
    while not done:
        action, phase = expert.act_with_phase(info)
        phases.append(phase)
        _, _, terminated, truncated, info = env.step(action)
        steps += 1
        if first is None and info["is_success"]:
            first = (steps, np.linalg.norm(info["ee_position"] - info["privileged"][3:6]))
        done = terminated or truncated
    env.close()
    return first, steps, info, phases


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_settling_reach_ends_settle_steps_after_success_at_rest_on_the_object(seed):
    (at, _), steps, info, phases = _settled_episode("reach", seed)
    assert steps == at + SETTLE and info["is_success"] and set(phases[at:]) == {"descend"}
    final = np.linalg.norm(info["ee_position"] - info["privileged"][3:6])
    # on the object's top (its centre 2.7 cm below), inside the 5 cm goal with a margin
    assert final < 0.045, final


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_settling_push_goes_on_a_little_then_rises_off_the_moved_object(seed):
    (at, _), steps, info, phases = _settled_episode("push", seed)
    assert steps == at + SETTLE and info["is_success"]
    privileged = info["privileged"]
    target, start, direction = privileged[3:6], privileged[6:9], privileged[9:12]
    progress = float((target - start)[:2] @ direction[:2])
    assert PUSH_SUCCESS_DISTANCE + RETRACT_MARGIN <= progress < PUSH_SUCCESS_DISTANCE + 0.06  # it slides on
    assert phases[-1] == "retract" and "retract" not in phases[:at]
    assert info["ee_position"][2] > target[2] + HOVER_CLEARANCE - 0.02  # risen clear of the object


def test_an_env_that_ends_at_success_never_shows_the_expert_retracting():
    env = gym.make(ENV_IDS["push"], render_observation=False)
    expert = ScriptedExpert(env)
    _, info = env.reset(seed=0)
    done, phases = False, []
    while not done:
        action, phase = expert.act_with_phase(info)
        phases.append(phase)
        _, _, terminated, truncated, info = env.step(action)
        done = terminated or truncated
    assert info["is_success"] and "retract" not in phases
    env.close()


def test_settling_needs_an_env_that_runs_on_after_success_and_a_positive_count():
    with pytest.raises(ValueError, match="terminate_on_success=False"):
        SettleAfterSuccess(gym.make(ENV_IDS["reach"], render_observation=False), 4)
    with pytest.raises(ValueError, match="at least 1"):
        SettleAfterSuccess(gym.make(ENV_IDS["reach"], render_observation=False, terminate_on_success=False), 0)
    with pytest.raises(ValueError, match=">= 0"):
        make_env_fn("reach", settle_steps=-1)
    with pytest.raises(ValueError, match="sets terminate_on_success itself"):
        make_env_fn("reach", settle_steps=4, terminate_on_success=True)


def test_bc_settle_steps_lengthens_every_demonstration_by_the_steps_past_success(tmp_path):
    """Real tiny runs: the same seed's expert episodes, with and without settling; the checkpoint records it."""
    import json

    from vla_ros.paths import share_path
    from vla_ros.policy import imitation
    from vla_ros.policy.train import TrainConfig, TrainingRun

    def demos(name, **extra):
        cfg = TrainConfig(out=str(tmp_path / name), task="reach", clip=str(share_path("models", "clip")),
                          fusion="region_map", reference_frame=True, map_weights=False, num_envs=1,
                          vec_env="dummy", bc_episodes=3, dagger_rounds=0, bc_epochs=1, ppo_steps=0,
                          eval_episodes=1, fusion_dim=32, hidden_dim=32, command="pytest", **extra)
        TrainingRun(cfg).run()
        return imitation.Demonstrations.load(tmp_path / name / "demos_0.npz")

    with pytest.raises(ValueError, match="bc_settle_steps must be >= 0"):
        TrainingRun(TrainConfig(out=str(tmp_path / "bad"), bc_settle_steps=-1))
    plain, settled = demos("plain"), demos("settled", bc_settle_steps=SETTLE)
    assert plain.successes == settled.successes == 3
    # one decision per env step (no chunks): SETTLE more per episode; the states past success are in the data
    assert len(settled) == len(plain) + 3 * SETTLE
    config = json.loads((tmp_path / "settled" / "final" / "config.json").read_text())
    assert config["training"]["config"]["bc_settle_steps"] == SETTLE
