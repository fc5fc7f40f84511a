"""Envs hosted by Ray actors (`--vec-env ray`) give the transitions of the in-process VecEnv, for any actor
count, and a training run on them gives the same checkpoint."""

from __future__ import annotations

import numpy as np
import pytest

from vla_ros.paths import share_path
from vla_ros.policy.envs import EXPERT_ACTION, ExpertLabelWrapper, make_vec_env

pytest.importorskip("ray")


@pytest.fixture(scope="module")
def local_ray():
    from vla_ros.distributed.ray_support import ray_session

    with ray_session(num_cpus=2) as ray:
        yield ray


def _rollout(venv, steps: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    trace = [venv.reset()]
    for _ in range(steps):
        obs, rewards, dones, infos = venv.step(rng.uniform(-1, 1, (venv.num_envs, *venv.action_space.shape)))
        terminal = [info.get("terminal_observation") for info in infos]
        trace.append((obs, rewards, dones, terminal, [info[EXPERT_ACTION] for info in infos]))
    venv.close()
    return trace


def _assert_same(a, b):
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            _assert_same(a[key], b[key])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _assert_same(x, y)
    elif a is None:
        assert b is None
    else:
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("workers", [1, 2])
def test_ray_hosted_envs_step_like_the_in_process_vec_env(local_ray, workers):
    kwargs = {"image_size": 64, "max_episode_steps": 6}  # short episodes: auto-resets happen within the rollout
    reference = _rollout(make_vec_env("reach", 3, seed=5, vec_env="dummy", expert_labels=True, **kwargs), 14)
    venv = make_vec_env("reach", 3, seed=5, vec_env="ray", ray_workers=workers, expert_labels=True, **kwargs)
    assert venv.workers == workers
    assert venv.get_attr("image_size") == [64, 64, 64]
    assert venv.env_is_wrapped(ExpertLabelWrapper, indices=[2]) == [True]
    hosted = _rollout(venv, 14)
    assert any(d.any() for _, _, d, _, _ in hosted[1:])  # episodes ended and restarted on the actors
    _assert_same(reference, hosted)


@pytest.mark.slow
def test_training_on_ray_hosted_envs_gives_the_in_process_checkpoint(local_ray, tmp_path):
    from safetensors.numpy import load_file

    from vla_ros.cli import main

    budget = ["--config", str(share_path("models", "policy", "recipe.yaml")), "--clip",
              str(share_path("models", "policy", "clip")), "--num-envs", "2", "--bc-episodes", "2",
              "--dagger-rounds", "1", "--dagger-episodes", "2", "--bc-epochs", "1", "--ppo-steps", "64",
              "--n-steps", "32", "--batch-size", "32", "--n-epochs", "1", "--eval-every", "10000",
              "--eval-episodes", "2", "--checkpoint-every", "64"]
    for vec_env in ("dummy", "ray"):
        assert main(["train", *budget, "--vec-env", vec_env, "--out", str(tmp_path / vec_env)]) == 0
    for round_ in (0, 1):  # expert demonstrations, then the learner's DAgger episodes
        demos = [np.load(tmp_path / v / f"demos_{round_}.npz") for v in ("dummy", "ray")]
        for key in demos[0].files:
            np.testing.assert_array_equal(demos[0][key], demos[1][key], err_msg=f"round {round_}: {key}")
    dummy, ray = (load_file(str(tmp_path / v / "final" / "policy.safetensors")) for v in ("dummy", "ray"))
    assert dummy.keys() == ray.keys()
    for key in dummy:
        np.testing.assert_array_equal(dummy[key], ray[key], err_msg=key)
