"""The scripted expert solves every task type (so the tasks are solvable); the video writer works."""

import gymnasium as gym
import numpy as np
import pytest

import vla_ros.envs  # noqa: F401  (registers the ids)
from vla_ros.envs import ENV_IDS
from vla_ros.envs.expert import ScriptedExpert
from vla_ros.envs.video import expert_frames, write_video

EPISODES = 100


def success_rate(task: str, episodes: int = EPISODES, first_seed: int = 0, reach_approach: str = "hover",
                 **kwargs) -> tuple[float, dict]:
    env = gym.make(ENV_IDS[task], render_observation=False, **kwargs)
    expert = ScriptedExpert(env, reach_approach=reach_approach)
    successes, per_direction = 0, {}
    for seed in range(first_seed, first_seed + episodes):
        _, info = env.reset(seed=seed)
        done = False
        while not done:
            _, _, terminated, truncated, info = env.step(expert.act(info))
            done = terminated or truncated
        successes += info["is_success"]
        per_direction.setdefault(info["direction"], []).append(info["is_success"])
    env.close()
    return successes / episodes, per_direction


@pytest.mark.parametrize("task", ["reach", "push"])
def test_expert_solves_the_task(task):
    rate, per_direction = success_rate(task)
    assert rate >= 0.95, rate
    if task == "push":
        assert set(per_direction) == {"left", "right", "forward", "back"}
        for direction, results in per_direction.items():
            assert np.mean(results) >= 0.9, (direction, results)


@pytest.mark.parametrize("task", ["reach", "push"])
def test_expert_solves_crowded_and_heldout_scenes(task):
    rate, _ = success_rate(task, episodes=15, first_seed=100, num_objects=3, perturbation="distractors")
    assert rate >= 0.95, rate
    rate, _ = success_rate(task, episodes=10, first_seed=200, split="heldout_combos")
    assert rate >= 0.95, rate


def test_expert_finishes_well_within_the_time_limit():
    env = gym.make(ENV_IDS["push"], render_observation=False)
    expert = ScriptedExpert(env)
    _, info = env.reset(seed=0)
    steps = 0
    while not info["is_success"]:
        _, _, _, truncated, info = env.step(expert.act(info))
        steps += 1
        assert not truncated
    assert steps < env.spec.max_episode_steps // 2
    env.close()


def test_the_cone_approach_reaches_without_an_edge_in_its_labels_and_settles_on_the_object():
    from vla_ros.envs.expert import CONE_RADIUS, HOVER_CLEARANCE

    rate, _ = success_rate("reach", episodes=40, reach_approach="cone")
    assert rate >= 0.95, rate
    rate, _ = success_rate("reach", episodes=10, first_seed=200, reach_approach="cone", split="heldout_combos")
    assert rate >= 0.95, rate
    env = gym.make(ENV_IDS["reach"], render_observation=False)
    target = np.array([0.3, 0.0, 0.027])
    labels = {}
    for approach in ("hover", "cone"):
        expert = ScriptedExpert(env, reach_approach=approach)
        labels[approach] = [expert._reach_goal(target + [apart, 0.0, HOVER_CLEARANCE], target)[0]
                            for apart in np.arange(0.0, CONE_RADIUS + 0.02, 0.001)]
    steps = {k: max(np.linalg.norm(b - a) for a, b in zip(v, v[1:])) for k, v in labels.items()}
    assert steps["hover"] > 0.04 and steps["cone"] < 0.005, steps  # hover's 5 cm step at 3 cm; the cone has none
    # run on past success, the cone expert stays inside the goal instead of leaving it
    env = gym.make(ENV_IDS["reach"], render_observation=False, terminate_on_success=False)
    expert = ScriptedExpert(env, reach_approach="cone")
    _, info = env.reset(seed=3)
    successes = []
    for _ in range(env.spec.max_episode_steps - 1):
        _, _, _, truncated, info = env.step(expert.act(info))
        successes.append(info["is_success"])
        if truncated:
            break
    first = successes.index(True)
    assert all(successes[first:]), successes
    env.close()
    with pytest.raises(ValueError, match="reach_approach"):
        ScriptedExpert(env, reach_approach="spiral")


@pytest.mark.parametrize("suffix", [".gif", ".mp4"])
def test_expert_video_is_written_in_the_demo_layout(tmp_path, suffix):
    import imageio.v2 as imageio

    from vla_ros.envs.video_layout import CAPTION_HEIGHT

    frames = expert_frames("reach", episodes=1, image_size=64)
    assert len(frames) > 15 and frames[0].shape == (480 + CAPTION_HEIGHT, 640, 3)
    path = write_video(frames, tmp_path / f"expert{suffix}")
    read_back = imageio.mimread(path, memtest=False)
    assert read_back[0].shape[:2] == (480 + CAPTION_HEIGHT, 640)
    # GIF writers merge identical consecutive frames (title card, held last frame); MP4 keeps every frame.
    assert len(read_back) == len(frames) if suffix == ".mp4" else len(read_back) >= len(frames) - 20


def test_write_video_refuses_unknown_formats():
    frame = np.full((64, 64, 3), 128, np.uint8)
    with pytest.raises(ValueError, match="unsupported"):
        write_video([frame], "out.avi")


def test_a_fingertip_off_the_push_line_slides_back_onto_it_at_table_level_and_backs_off_from_beside_it():
    from vla_ros.envs.expert import PUSH_CLEARANCE, PUSH_HEIGHT

    env = gym.make(ENV_IDS["push"], render_observation=False)
    expert = ScriptedExpert(env)
    target, direction = np.array([0.3, 0.0, 0.027]), np.array([1.0, 0.0, 0.0])
    on_line = np.array([0.3 - 0.045, 0.0, PUSH_HEIGHT])
    goal, _, phase = expert._push_goal(on_line, target, direction)
    assert phase == "push" and goal[0] > target[0]  # through the object's centre
    off_line = on_line + [0.0, 0.045, 0.0]
    goal, _, phase = expert._push_goal(off_line, target, direction)
    assert phase == "realign" and goal[2] == PUSH_HEIGHT and goal[0] <= target[0] - PUSH_CLEARANCE
    assert abs(goal[1]) < 1e-9  # back onto the line, without rising
    beside = np.array([0.3, 0.04, PUSH_HEIGHT])  # slid past the object's side
    goal, _, phase = expert._push_goal(beside, target, direction)
    assert phase == "back_off" and goal[2] == PUSH_HEIGHT and goal[0] < target[0] - PUSH_CLEARANCE
    assert goal[1] >= PUSH_CLEARANCE  # along the object's side, not across it
    goals = [expert._push_goal(on_line + [0.0, lateral, 0.0], target, direction)[0]
             for lateral in np.arange(0.0, 0.055, 0.001)]
    assert max(np.linalg.norm(b - a) for a, b in zip(goals, goals[1:])) < 0.01  # no edge in the labels
    env.close()


def test_the_expert_still_pushes_when_its_actions_are_disturbed():
    from research.push_expert_phases import noisy_expert

    env = gym.make(ENV_IDS["push"], render_observation=False)
    result = noisy_expert(env, ScriptedExpert(env), 0, 20, 0.3, np.random.default_rng(0))
    env.close()
    assert result["success"] >= 0.9, result


def test_the_labelling_expert_takes_the_reach_approach_it_is_given():
    from vla_ros.policy.envs import EXPERT_ACTION, ExpertLabelWrapper, make_env_fn, make_vec_env

    venv = make_vec_env("reach", 1, 0, vec_env="dummy", expert_labels=True, reach_approach="cone",
                        render_observation=False)
    wrapper = venv.envs[0]
    while not isinstance(wrapper, ExpertLabelWrapper):
        wrapper = wrapper.env
    assert wrapper.expert.reach_approach == "cone"
    venv.reset()
    assert venv.reset_infos[0][EXPERT_ACTION].shape == (venv.action_space.shape[0],)
    venv.close()
    with pytest.raises(ValueError, match="reach_approach"):
        make_env_fn("reach", expert_labels=True, reach_approach="spiral")
