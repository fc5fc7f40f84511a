"""One policy, several skills: the mixed reach/push env, command (FiLM) conditioning, per-task evaluation."""

from __future__ import annotations

import json

import gymnasium as gym
import numpy as np
import pytest
import torch
from policy_fixtures import make_policy_checkpoint

import vla_ros.envs  # noqa: F401  (registers the env ids)
from vla_ros.envs import ENV_IDS
from vla_ros.envs.expert import ScriptedExpert
from vla_ros.grounding.fusion import build_fusion
from vla_ros.policy.envs import checkpoint_tasks
from vla_ros.policy.network_config import NetworkConfig, NetworkConfigError


def _state_env(task: str = "mixed", **kwargs):
    return gym.make(ENV_IDS[task], render_observation=False, **kwargs)


def test_mixed_env_draws_both_tasks_with_their_own_commands():
    env = _state_env()
    tasks, directions = [], []
    for seed in range(30):
        _, info = env.reset(seed=seed)
        tasks.append(info["task"])
        directions.append(info["direction"])
        assert (info["direction"] is not None) == (info["task"] == "push")
    assert {"reach", "push"} == set(tasks)
    # the same seed gives the same episode
    assert env.reset(seed=7)[1]["command"] == env.reset(seed=7)[1]["command"]


def test_mixed_env_reads_the_task_from_the_command_or_the_option():
    env = _state_env()
    _, info = env.reset(seed=1, options={"command": "push the red cube to the left"})
    assert (info["task"], info["direction"]) == ("push", "left")
    _, info = env.reset(seed=1, options={"command": "touch the red cube"})
    assert (info["task"], info["direction"]) == ("reach", None)
    _, info = env.reset(seed=1, options={"task": "push", "direction": "back"})
    assert (info["task"], info["direction"]) == ("push", "back")
    single = _state_env("reach")
    with pytest.raises(ValueError, match="this env runs task 'reach'"):
        single.reset(seed=0, options={"task": "push"})
    with pytest.raises(ValueError, match="unknown task"):
        vla_ros.envs.tabletop.TabletopEnv(task="juggle", render_observation=False)


def test_a_reach_episode_in_the_mixed_env_ends_at_the_reach_time_limit():
    env = _state_env()
    _, info = env.reset(seed=0, options={"task": "reach"})
    steps, truncated = 0, False
    while not truncated:
        _, _, terminated, truncated, info = env.step(np.zeros(env.action_space.shape, np.float32))
        steps += 1
        assert not terminated
    assert steps == vla_ros.envs.MAX_EPISODE_STEPS["reach"]
    _, info = env.reset(seed=0, options={"task": "push"})
    for _ in range(vla_ros.envs.MAX_EPISODE_STEPS["reach"]):
        _, _, terminated, truncated, _ = env.step(np.zeros(env.action_space.shape, np.float32))
    assert not truncated and not terminated  # a push episode runs on to push's limit (the TimeLimit's)


def test_the_expert_solves_both_tasks_of_the_mixed_env():
    env = _state_env()
    expert = ScriptedExpert(env)
    outcomes = {"reach": [], "push": []}
    for seed in range(12):
        _, info = env.reset(seed=seed)
        while True:
            _, _, terminated, truncated, info = env.step(expert.act(info))
            if terminated or truncated:
                break
        outcomes[info["task"]].append(info["is_success"])
    assert outcomes["reach"] and outcomes["push"]
    assert all(outcomes["reach"]) and all(outcomes["push"]), outcomes


def test_checkpoint_tasks():
    assert checkpoint_tasks("mixed") == ("reach", "push")
    assert checkpoint_tasks("push") == ("push",)
    with pytest.raises(ValueError, match="unknown task"):
        checkpoint_tasks("juggle")


def test_command_film_is_a_validated_region_map_option():
    config = NetworkConfig(fusion="region_map", command_film=True)
    assert NetworkConfig.from_dict(config.to_dict()).command_film is True
    assert NetworkConfig.from_dict({"fusion": "region_map"}).command_film is False  # older checkpoints
    with pytest.raises(NetworkConfigError, match="command_film is an option of the region_map fusion"):
        NetworkConfig(fusion="cross_attention", command_film=True)
    with pytest.raises(NetworkConfigError, match="command_film must be true or false"):
        NetworkConfig.from_dict({"fusion": "region_map", "command_film": "yes"})
    with pytest.raises(ValueError, match="command_film is an option of the region_map fusion"):
        build_fusion("late", embed_dim=16, num_patches=4, command_film=True)


def test_film_starts_as_the_unconditioned_mlp_and_then_reads_the_command():
    torch.manual_seed(0)
    plain = build_fusion("region_map", embed_dim=16, num_patches=16, out_dim=8, hidden_dim=12)
    film = build_fusion("region_map", embed_dim=16, num_patches=16, out_dim=8, hidden_dim=12, command_film=True)
    film.load_state_dict(plain.state_dict(), strict=False)  # the same MLP; FiLM starts at zero
    glob, patches, text = torch.randn(3, 16), torch.randn(3, 16, 16), torch.randn(3, 16)
    assert torch.allclose(plain(glob, patches, text), film(glob, patches, text))
    with torch.no_grad():
        film.film.weight.normal_()
    # the map of patches all alike is flat whatever the command, so without FiLM two commands fuse alike;
    # with FiLM the command itself still changes the features (what to do where the map says nothing new)
    flat = torch.randn(1, 1, 16).expand(3, 16, 16).contiguous()
    other = torch.randn(3, 16)
    plain_change = (plain(glob, flat, text) - plain(glob, flat, other)).abs().max()
    film_change = (film(glob, flat, text) - film(glob, flat, other)).abs().max()
    assert plain_change < 1e-3 and film_change > 10 * plain_change + 1e-2, (plain_change, film_change)
    film(glob, patches, text).square().sum().backward()
    assert film.film.weight.grad.abs().sum() > 0


def test_a_mixed_checkpoint_is_evaluated_per_task(tmp_path):
    from vla_ros.cli import main

    checkpoint = make_policy_checkpoint(tmp_path, task="mixed", fusion="region_map", reference_frame=True,
                                        peak_window=1.5, command_film=True)
    config = json.loads((checkpoint / "config.json").read_text())
    assert config["task"] == "mixed" and config["network"]["command_film"] is True
    report_path = tmp_path / "report.json"
    assert main(["eval", "--checkpoint", str(checkpoint), "--episodes", "2", "--splits", "train",
                 "--ablations", "--num-envs", "1", "--seed", "10000", "--json", str(report_path)]) == 0
    report = json.loads(report_path.read_text())
    assert set(report["splits"]) == {"reach/train", "push/train"}
    assert report["scene_seed"] == 10000  # validation scenes are told apart from the evaluation's (seed 1)
    for entry in report["splits"].values():
        assert entry["episodes"] == 2
    assert 0 <= report["splits"]["push/train"]["wrong_direction_rate"] <= 1
    assert "wrong_direction_rate" not in report["splits"]["reach/train"]
    # a push episode may run to push's limit, a reach one never past reach's
    assert report["splits"]["reach/train"]["mean_length"] <= vla_ros.envs.MAX_EPISODE_STEPS["reach"]


def test_the_mixed_training_env_never_shows_a_held_out_combo_or_phrasing():
    """What a mixed policy trains on (split ``train``) holds no held-out combination or phrasing of either task."""
    import re

    env = _state_env()
    instructions = env.unwrapped.instructions

    def patterns(task, split):
        return [re.compile(re.escape(t).replace(r"\{colour\}", ".+").replace(r"\{shape\}", ".+")
                           .replace(r"\{direction\}", ".+") + "$") for t in instructions.templates[task][split]]

    train = {task: patterns(task, "train") for task in ("reach", "push")}
    seen = set()
    for seed in range(200):
        _, info = env.reset(seed=seed)
        assert (info["target"]["colour"], info["target"]["shape"]) not in instructions.heldout_combos
        assert any(p.match(info["command"]) for p in train[info["task"]]), info["command"]
        seen.add(info["task"])
    assert seen == {"reach", "push"}


def test_a_push_that_moves_the_target_off_the_commanded_direction_is_counted_wrong_way():
    from vla_ros.policy.evaluate import pushed_wrong_way

    def info(moved, direction=(0.0, 1.0), task="push"):
        start = np.array([0.4, 0.0, 0.02])
        target = start + np.array([*moved, 0.0])
        privileged = np.concatenate([np.zeros(3), target, start, [*direction, 0.0]])
        return {"task": task, "privileged": privileged}

    assert not pushed_wrong_way(info((0.0, 0.09)))  # pushed left, as commanded
    assert not pushed_wrong_way(info((0.02, 0.0)))  # nudged, under 4 cm: not a push at all
    assert pushed_wrong_way(info((0.0, -0.06)))  # pushed right when told left
    assert pushed_wrong_way(info((0.06, 0.01)))  # pushed forward when told left
    assert not pushed_wrong_way(info((0.03, 0.05)))  # 31 degrees off: still the commanded way
    assert pushed_wrong_way(info((0.0, -0.06), task="reach")) is None  # not a push episode


def test_refusal_calibration_phrasings_of_a_mixed_checkpoint_come_from_both_tasks():
    from types import SimpleNamespace

    from vla_ros.commands.calibrate_refusal import validation_phrasings
    from vla_ros.envs.instructions import load_instructions

    instructions = load_instructions()
    colours, shapes = list(instructions.colours), list(instructions.shapes)
    n = 60
    data = SimpleNamespace(images=[None] * n, target=[0] * n, shapes=np.zeros((n, 1), int),
                           colours=np.zeros((n, 1), int), shape_names=shapes, colour_names=colours)
    frames = instructions.word_splits["validation_words"].templates
    texts = validation_phrasings(data, "mixed", seed=0)
    openings = {task: {f.split("{")[0] for f in frames[task]} for task in ("reach", "push")}
    for task in ("reach", "push"):
        assert any(any(t.startswith(o) for o in openings[task] if o) for t in texts), task
