"""Action chunks: the chunk wrapper and expert labels on the real simulator, the run-time queue, a tiny chunked run."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

from vla_ros.policy.action_chunk import ENV_STEPS, ActionChunk, ActionQueue, ChunkedActionWrapper, expert_chunk
from vla_ros.policy.envs import EXPERT_ACTION, make_env_fn
from vla_ros.policy.network_config import NetworkConfig, NetworkConfigError


def test_a_chunk_is_validated_and_splits_flat_actions():
    chunk = ActionChunk(8, 4)
    assert ActionChunk.of({"action_chunk": 8, "chunk_execute": 4}) == chunk and ActionChunk.of({}).single
    assert chunk.split(np.arange(16.0), 2).shape == (8, 2)
    with pytest.raises(ValueError, match="16 values"):
        chunk.split(np.zeros(6), 2)
    for bad in ((0, 1), (2, 3), (2.0, 1), (True, 1)):
        with pytest.raises(ValueError):
            ActionChunk(*bad)


def test_the_network_config_stores_a_validated_chunk_and_old_configs_mean_one_action():
    config = NetworkConfig(fusion="region_map", action_chunk=8, chunk_execute=4)
    assert NetworkConfig.from_dict(config.to_dict()) == config
    assert NetworkConfig.from_dict({"fusion": "late"}).action_chunk == 1  # a checkpoint from before chunks
    with pytest.raises(NetworkConfigError, match="chunk_execute must be at most action_chunk 4"):
        NetworkConfig(action_chunk=4, chunk_execute=5)
    with pytest.raises(NetworkConfigError, match="action_chunk must be in"):
        NetworkConfig.from_dict({"action_chunk": 4096})


def test_the_queue_hands_out_the_first_executed_actions_of_a_plan_then_asks_for_a_new_one():
    queue = ActionQueue(ActionChunk(3, 2), action_dim=2)
    assert queue.needs_plan
    queue.plan(np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0]))
    assert queue.pop().tolist() == [1.0, 2.0] and queue.pop().tolist() == [3.0, 4.0] and queue.needs_plan
    with pytest.raises(RuntimeError, match="plan first"):
        queue.pop()
    queue.plan(np.zeros(6))
    queue.clear()
    assert queue.needs_plan


def _twins(task="reach", seed=11):
    """The same scene twice: one env wrapped, one plain, both reset with ``seed``."""
    plain = make_env_fn(task, image_size=64)()
    wrapped = ChunkedActionWrapper(make_env_fn(task, image_size=64)(), ActionChunk(4, 3))
    return plain, wrapped, plain.reset(seed=seed), wrapped.reset(seed=seed)


def test_the_wrapper_runs_the_first_executed_actions_of_a_chunk_as_one_step():
    plain, wrapped, _, _ = _twins()
    n = plain.action_space.shape[0]
    assert wrapped.action_space.shape == (4 * n,)
    rng = np.random.default_rng(0)
    chunk = rng.uniform(-1, 1, (4, n)).astype(np.float32)
    total = 0.0
    for action in chunk[:3]:
        obs, reward, *_ = plain.step(action)
        total += reward
    chunk_obs, chunk_reward, terminated, truncated, info = wrapped.step(chunk.ravel())
    assert info[ENV_STEPS] == 3 and wrapped.unwrapped._steps == 3 and not (terminated or truncated)
    assert np.allclose(chunk_obs["proprio"], obs["proprio"]) and np.isclose(chunk_reward, total)
    assert np.array_equal(chunk_obs["image"], obs["image"])
    # the time limit inside a chunk ends it there
    limit = wrapped.env
    while not isinstance(limit, gym.wrappers.TimeLimit):
        limit = limit.env
    limit._elapsed_steps = limit._max_episode_steps - 2
    *_, truncated, info = wrapped.step(chunk.ravel())
    assert truncated and info[ENV_STEPS] == 2
    plain.close()
    wrapped.close()


@pytest.mark.parametrize("task", ["reach", "push"])
def test_expert_chunk_labels_are_what_the_expert_then_does_and_leave_the_episode_as_it_was(task):
    from vla_ros.envs.expert import ScriptedExpert

    env = make_env_fn(task, image_size=64)()
    obs, info = env.reset(seed=3)
    expert = ScriptedExpert(env)
    for _ in range(5):  # somewhere into the episode
        obs, _, _, _, info = env.step(expert.act(info))
    before = (env.unwrapped.data.qpos.copy(), env.unwrapped._steps, obs["image"].copy())
    labels = expert_chunk(env, expert, info, 6)
    assert labels.shape == (6, env.action_space.shape[0])
    assert np.array_equal(env.unwrapped.data.qpos, before[0]) and env.unwrapped._steps == before[1]
    assert env.unwrapped.render_observation and np.array_equal(env.unwrapped._image, before[2])
    for k in range(6):  # the expert, driving from here, does what the chunk said
        action = expert.act(info)
        assert np.allclose(action, labels[k], atol=1e-6), k
        _, _, terminated, _, info = env.step(action)
        if terminated:
            break
    env.close()


def test_expert_labels_are_chunks_for_a_chunked_env():
    env = make_env_fn("mixed", expert_labels=True, action_chunk=ActionChunk(5, 2), image_size=64)()
    _, info = env.reset(seed=4)
    n = env.unwrapped.action_space.shape[0]
    assert info[EXPERT_ACTION].shape == (5 * n,)
    _, _, _, _, info = env.step(info[EXPERT_ACTION])
    assert info[EXPERT_ACTION].shape == (5 * n,) and info[ENV_STEPS] == 2
    env.close()


def test_a_chunked_policy_trains_acts_one_action_per_frame_and_exports(tmp_path):
    """A real (tiny) `vla-ros train` with chunks of 4, 2 executed; the Policy vla_node runs, torch and ONNX."""
    from vla_ros.cli import main
    from vla_ros.commands.export import sample_inputs
    from vla_ros.paths import share_path
    from vla_ros.policy.evaluate import run_episodes
    from vla_ros.policy.export import export_onnx, parity_report
    from vla_ros.policy.policy import ONNX_DIR, Policy

    out = tmp_path / "run"
    assert main(["train", "--task", "reach", "--clip", str(share_path("models", "clip")), "--fusion", "region_map",
                 "--reference-frame", "--no-map-weights", "--action-chunk", "4", "--chunk-execute", "2",
                 "--bc-episodes", "2", "--dagger-rounds", "1", "--dagger-episodes", "1", "--bc-epochs", "1",
                 "--ppo-steps", "8", "--n-steps", "8", "--batch-size", "8", "--eval-every", "8",
                 "--eval-episodes", "1", "--num-envs", "1", "--vec-env", "dummy", "--fusion-dim", "32",
                 "--hidden-dim", "32", "--out", str(out)]) == 0
    policy = Policy.load(out / "final")
    n = policy.num_joints
    assert policy.network.action_space.shape == (4 * n,) and policy.action_chunk == ActionChunk(4, 2)
    assert policy.config["metrics"]["env_steps_ppo"] == 2 * 8  # decisions times the steps each runs
    from vla_ros.policy.model_card import render

    assert "predicts the next 4 actions and runs 2 of them" in render(out / "final", None)
    # one decision per two frames of a command; a new command decides at once
    decisions = []
    decide = policy.decide
    policy.decide = lambda *a, **k: decisions.append(a[1]) or decide(*a, **k)
    frames, commands, states = sample_inputs(policy, 5, seed=2)
    actions = [policy.normalized_action(frames[i], "touch the red cube", states[i]) for i in range(5)]
    assert all(a.shape == (n,) and np.all(np.abs(a) <= 1) for a in actions) and len(decisions) == 3
    plan = decide(frames[4], "touch the red cube", states[4])
    policy.normalized_action(frames[0], "touch the blue ball", states[0])
    assert len(decisions) == 4 and plan.shape == (4 * n,)
    policy.discard_plan()
    policy.normalized_action(frames[1], "touch the blue ball", states[1])
    assert len(decisions) == 5
    del policy.decide
    # evaluation runs chunks in the simulator and counts episode lengths in simulator steps
    result = run_episodes(policy.network, policy.encoder, policy.normalizer, "reach", 2, seed=1, num_envs=1,
                          vec_env="dummy")
    assert result.episodes == 2 and 1 <= result.mean_length <= 50
    files = export_onnx(policy, out / "final" / ONNX_DIR)
    report = parity_report(policy, files, frames, commands, states)
    assert report["actions_match"], report
    onnx_policy = Policy.load(out / "final", backend="onnxruntime")
    policy.reset()
    for frame, state in zip(frames[:3], states):
        assert np.allclose(policy.normalized_action(frame, commands[0], state),
                           onnx_policy.normalized_action(frame, commands[0], state), atol=1e-4)
