"""The tabletop env: checkers, spaces, determinism, scenes, splits, perturbations, bad configuration."""

import pickle
import re
import warnings

import gymnasium as gym
import numpy as np
import pytest
import yaml
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

import vla_ros.envs  # noqa: F401  (registers the ids)
from vla_ros.envs import ENV_IDS
from vla_ros.envs.instructions import load_instructions
from vla_ros.envs.tabletop import MIN_OBJECT_SPACING, TabletopEnv
from vla_ros.keys import COMMAND_MAX_BYTES, OBS_COMMAND, OBS_IMAGE, OBS_PROPRIO, decode_command
from vla_ros.paths import share_path

INSTRUCTIONS = load_instructions()


def make(task="reach", **kwargs):
    return gym.make(ENV_IDS[task], **kwargs)


def template_regex(template: str) -> re.Pattern:
    return re.compile("^" + re.sub(r"\\\{\w+\\\}", "(.+)", re.escape(template)) + "$")


def phrasing_of(command: str, task: str) -> str | None:
    for split, templates in INSTRUCTIONS.templates[task].items():
        if any(template_regex(t).match(command) for t in templates):
            return split
    return None


@pytest.mark.parametrize("task", ["reach", "push"])
def test_gymnasium_and_sb3_checkers_pass_without_warnings(task):
    env = make(task, render_mode="rgb_array")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            gym_check_env(env.unwrapped, skip_render_check=False)
            sb3_check_env(env)
    finally:
        env.close()


def test_registration_sets_time_limits():
    assert gym.spec(ENV_IDS["reach"]).max_episode_steps == 50
    assert gym.spec(ENV_IDS["push"]).max_episode_steps == 100


@pytest.mark.parametrize("size", [64, 96])
def test_observation_layout_and_info(size):
    env = make("push", image_size=size)
    obs, info = env.reset(seed=3)
    n = env.unwrapped.robot.num_joints
    assert obs[OBS_IMAGE].shape == (size, size, 3) and obs[OBS_IMAGE].dtype == np.uint8
    assert obs[OBS_IMAGE].std() > 5  # a real picture, not a blank frame
    assert obs[OBS_COMMAND].shape == (COMMAND_MAX_BYTES,) and obs[OBS_COMMAND].dtype == np.uint8
    assert decode_command(obs[OBS_COMMAND]) == info["command"]
    assert obs[OBS_PROPRIO].shape == (2 * n,) and obs[OBS_PROPRIO].dtype == np.float32
    assert env.action_space.shape == (n,)
    for key in ("command", "is_success", "task", "target", "objects", "ee_position", "privileged"):
        assert key in info
    assert info["task"] == "push" and info["direction"] in ("left", "right", "forward", "back")
    assert set(info["target"]) == {"colour", "shape", "index"}
    assert len(info["objects"]) == 3
    target = info["objects"][info["target"]["index"]]
    assert (target["colour"], target["shape"]) == (info["target"]["colour"], info["target"]["shape"])
    assert info["privileged"].dtype == np.float32
    assert info["privileged"].shape == (env.unwrapped.privileged_size,)
    assert env.unwrapped.scene_objects[0]["colour"] == info["objects"][0]["colour"]
    env.close()


def test_object_pixels_land_on_the_objects_colour():
    env = make("reach", image_size=96, num_objects=5)
    for seed in range(3):
        obs, info = env.reset(seed=seed)
        for obj in info["objects"]:
            u, v = obj["pixel"]
            assert 0 <= u < 96 and 0 <= v < 96
            pixel = obs[OBS_IMAGE][int(v), int(u)].astype(float) / 255
            rgb = np.array(INSTRUCTIONS.colours[obj["colour"]][:3])
            assert np.argmax(pixel) == np.argmax(rgb), (obj, pixel)
            assert np.abs(pixel - rgb).max() < 0.35, (obj, pixel)
    env.close()


def test_scenes_have_distinct_spaced_objects_in_the_training_combos():
    env = make("reach", num_objects=6)
    train = set(INSTRUCTIONS.train_combos)
    for seed in range(20):
        _, info = env.reset(seed=seed)
        combos = [(o["colour"], o["shape"]) for o in info["objects"]]
        assert len(set(combos)) == 6 and set(combos) <= train
        xy = np.array([o["position"][:2] for o in info["objects"]])
        gaps = np.linalg.norm(xy[:, None] - xy[None], axis=-1) + np.eye(6)
        assert gaps.min() >= MIN_OBJECT_SPACING - 1e-6
        assert phrasing_of(info["command"], "reach") == "train"
    env.close()


def test_same_seed_same_rollout_and_different_seed_differs():
    def rollout(seed):
        env = make("push")
        obs, info = env.reset(seed=seed)
        frames = [obs]
        actions = np.random.default_rng(0).uniform(-1, 1, (15, 5)).astype(np.float32)
        for action in actions:
            frames.append(env.step(action)[0])
        env.close()
        return info["command"], frames

    command_a, frames_a = rollout(7)
    command_b, frames_b = rollout(7)
    assert command_a == command_b
    for a, b in zip(frames_a, frames_b):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
    command_c, frames_c = rollout(8)
    assert command_c != command_a or not np.array_equal(frames_c[0][OBS_IMAGE], frames_a[0][OBS_IMAGE])


def test_pickled_env_continues_identically():
    env = make("push")
    env.reset(seed=11)
    env.step(env.action_space.sample())
    copy = pickle.loads(pickle.dumps(env))
    action = np.full(5, 0.5, np.float32)
    for _ in range(3):
        a, b = env.step(action)[0], copy.step(action)[0]
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
    env.close()
    copy.close()


def test_action_is_a_scaled_joint_delta_that_the_arm_tracks():
    env = make("reach", render_observation=False)
    env.reset(seed=0)
    sim = env.unwrapped
    np.testing.assert_allclose(sim.max_delta, sim.robot.velocity * sim.control_dt)
    assert sim.control_dt == pytest.approx(0.05)
    q0 = sim.data.qpos[sim.scene.arm_qpos_adr].copy()
    action = np.array([1.0, -1.0, 0.5, 0.0, 1.0], np.float32)
    env.step(action)
    expected = np.clip(q0 + action * sim.max_delta, sim.robot.lower, sim.robot.upper)
    np.testing.assert_allclose(sim.data.ctrl, expected)
    moved = sim.data.qpos[sim.scene.arm_qpos_adr] - q0
    commanded = action * sim.max_delta
    assert np.all(np.abs(moved - commanded) <= 0.5 * sim.max_delta), (moved, commanded)
    env.close()


def test_reach_reward_and_success_follow_the_fingertip_distance():
    env = make("reach", render_observation=False)
    _, info = env.reset(seed=0)
    target = info["objects"][info["target"]["index"]]["position"]
    distance = np.linalg.norm(info["ee_position"] - target)
    assert not info["is_success"] and distance > env.unwrapped.robot_config.reach_success_distance
    _, reward, terminated, _, info = env.step(np.zeros(5, np.float32))
    distance = np.linalg.norm(info["ee_position"] - info["objects"][info["target"]["index"]]["position"])
    assert reward == pytest.approx(-distance) and not terminated
    env.close()


def test_heldout_combo_split_targets_a_heldout_combo():
    env = make("reach", split="heldout_combos")
    for seed in range(10):
        _, info = env.reset(seed=seed)
        target = (info["target"]["colour"], info["target"]["shape"])
        assert target in INSTRUCTIONS.heldout_combos
        others = [(o["colour"], o["shape"]) for i, o in enumerate(info["objects"])
                  if i != info["target"]["index"]]
        assert not set(others) & INSTRUCTIONS.heldout_combos
        assert phrasing_of(info["command"], "reach") == "train"
    env.close()


def test_heldout_phrasing_split_and_split_option():
    env = make("push")
    for seed in range(10):
        _, info = env.reset(seed=seed, options={"split": "heldout_phrasings"})
        assert phrasing_of(info["command"], "push") == "heldout"
        assert (info["target"]["colour"], info["target"]["shape"]) not in INSTRUCTIONS.heldout_combos
    env.close()


def test_distractors_add_two_objects():
    env = make("reach", num_objects=3, perturbation="distractors")
    _, info = env.reset(seed=0)
    assert len(info["objects"]) == 5
    assert info["privileged"].shape == (12 + 3 * 5,)
    env.close()


def test_jitter_moves_the_camera_per_episode_and_plain_envs_do_not():
    jittered = make("reach", perturbation="jitter").unwrapped
    plain = make("reach").unwrapped
    cams = []
    for seed in range(3):
        jittered.reset(seed=seed)
        plain.reset(seed=seed)
        cams.append(jittered.model.cam_pos[jittered.scene.camera_id].copy())
        np.testing.assert_array_equal(plain.model.cam_pos[plain.scene.camera_id],
                                      plain._nominal_view["cam_pos"])
    assert not np.allclose(cams[0], cams[1])
    assert np.abs(cams[0] - jittered._nominal_view["cam_pos"]).max() <= 0.02 + 1e-9
    jittered.close()
    plain.close()


def test_corrupted_command_names_nothing_on_the_table_but_a_hidden_target_is_scored():
    env = make("reach", perturbation="corrupted")
    kinds = set()
    targets = set()
    for seed in range(20):
        _, info = env.reset(seed=seed)
        kinds.add(info["corruption"])
        targets.add(info["target"]["index"])
        colour, shape, _ = INSTRUCTIONS.parse(info["command"])
        on_table = {(o["colour"], o["shape"]) for o in info["objects"]}
        assert (colour, shape) not in on_table
        assert 0 <= info["target"]["index"] < 3
    assert kinds == {"absent_object", "random_string"}
    assert len(targets) > 1  # the hidden target is not always the same slot
    env.close()


def test_command_option_overrides_and_grounds_the_target():
    env = make("push")
    _, info = env.reset(seed=4)
    other = info["objects"][2]
    command = f"push the {other['colour']} {other['shape']} to the left"
    _, info = env.reset(seed=4, options={"command": command})
    assert info["command"] == command
    assert info["target"]["index"] == 2 and info["direction"] == "left"
    options = {"target": {"colour": "purple", "shape": "ball"}, "direction": "back"}
    _, info = env.reset(seed=4, options=options)
    assert (info["target"]["colour"], info["target"]["shape"]) == ("purple", "ball")
    assert info["direction"] == "back"
    env.close()


def test_render_returns_the_camera_frame_and_close_is_idempotent():
    env = make("reach", render_mode="rgb_array", image_size=64)
    obs, _ = env.reset(seed=0)
    np.testing.assert_array_equal(env.render(), obs[OBS_IMAGE])
    env.close()
    env.close()


def test_sync_vector_env_steps():
    envs = gym.vector.SyncVectorEnv([lambda: make("reach")] * 2)
    obs, _ = envs.reset(seed=[0, 1])
    assert obs[OBS_IMAGE].shape == (2, 64, 64, 3)
    obs, reward, *_ = envs.step(envs.action_space.sample())
    assert reward.shape == (2,)
    envs.close()


@pytest.mark.parametrize("kwargs, error, match", [
    ({"colours": ["red", "pink"]}, ValueError, "unknown colour"),
    ({"num_objects": 8}, ValueError, "do not fit"),
    ({"num_objects": 6, "perturbation": "distractors"}, ValueError, "do not fit"),
    ({"num_objects": 0}, ValueError, "positive int"),
    ({"image_size": 32}, ValueError, "image_size"),
    ({"image_size": 256}, ValueError, "image_size"),
    ({"image_size": 64.0}, ValueError, "image_size"),
    ({"split": "test"}, ValueError, "unknown split"),
    ({"perturbation": "fog"}, ValueError, "unknown perturbation"),
    ({"render_mode": "human"}, ValueError, "render_mode"),
    ({"colours": ["red"], "num_objects": 3}, ValueError, "training colour-shape combos"),
    ({"templates_path": "/nonexistent/instructions.yaml"}, FileNotFoundError, "instruction file"),
])
def test_bad_configuration_is_a_clear_error(kwargs, error, match):
    with pytest.raises(error, match=match):
        TabletopEnv(**kwargs)


def test_bad_reset_options_are_clear_errors():
    env = make("reach", render_observation=False)
    with pytest.raises(ValueError, match="unknown colour"):
        env.reset(seed=0, options={"target": {"colour": "pink", "shape": "cube"}})
    with pytest.raises(ValueError, match="unknown reset option"):
        env.reset(seed=0, options={"colour": "red"})
    env.close()


def _write_yaml(path, data):
    path.write_text(yaml.safe_dump(data))
    return path


def test_custom_template_file_is_used_and_validated(tmp_path):
    data = yaml.safe_load(share_path("sim", "tasks", "instructions.yaml").read_text())
    data["tasks"]["reach"]["train"] = ["poke the {colour} {shape} please"]
    data["colours"]["teal"] = [0.0, 0.6, 0.6, 1.0]
    env = make("reach", templates_path=_write_yaml(tmp_path / "ok.yaml", data), render_observation=False)
    _, info = env.reset(seed=0)
    assert info["command"].startswith("poke the ") and info["command"].endswith(" please")
    env.close()

    bad = dict(data, tasks={**data["tasks"], "push": {"train": ["push the {colour} {shape}"],
                                                       "heldout": ["x {colour} {shape} {direction}"]}})
    with pytest.raises(ValueError, match="placeholders"):
        TabletopEnv(templates_path=_write_yaml(tmp_path / "bad1.yaml", bad))
    bad = dict(data, colours={**data["colours"], "grey": [0.5, 0.5]})
    with pytest.raises(ValueError, match="colour 'grey'"):
        TabletopEnv(templates_path=_write_yaml(tmp_path / "bad2.yaml", bad))
    bad = dict(data, heldout_combos=[["pink", "cube"]])
    with pytest.raises(ValueError, match="heldout_combos"):
        TabletopEnv(templates_path=_write_yaml(tmp_path / "bad3.yaml", bad))
    bad = dict(data, shapes={"cube": {"geometry": "pyramid"}})
    with pytest.raises(ValueError, match="geometry"):
        TabletopEnv(templates_path=_write_yaml(tmp_path / "bad4.yaml", bad))


def test_without_terminate_on_success_an_episode_runs_past_its_success():
    """What a done signal is learnt and scored on: the arm goes on after success until something stops it."""
    from vla_ros.envs.expert import ScriptedExpert

    env = make("reach", render_observation=False, terminate_on_success=False)
    expert = ScriptedExpert(env.unwrapped)
    _, info = env.reset(seed=3)
    expert.reset()
    successes, steps, terminated, truncated = 0, 0, False, False
    while not (terminated or truncated):
        _, _, terminated, truncated, info = env.step(expert.act(info))
        successes += info["is_success"]
        steps += 1
    assert successes > 1 and not terminated and truncated and steps == 50
    env.close()


def _threads_after(pickled_thunk: bytes) -> int:
    import cloudpickle
    import torch

    cloudpickle.loads(pickled_thunk)().close()
    return torch.get_num_threads()


def test_an_env_made_in_the_callers_process_keeps_its_torch_threads_and_a_worker_gets_one():
    """`TrainingRun(torch_threads=2)` builds an in-process env first: that must not drop it to one thread."""
    import multiprocessing

    import cloudpickle
    import torch

    from vla_ros.policy.envs import make_env_fn, make_vec_env

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        make_vec_env("reach", 1, 0, vec_env="dummy", render_observation=False).close()
        assert torch.get_num_threads() == 2
        with multiprocessing.get_context("forkserver").Pool(1) as pool:
            # as SubprocVecEnv sends it: cloudpickled
            thunk = cloudpickle.dumps(make_env_fn("reach", render_observation=False))
            assert pool.apply(_threads_after, (thunk,)) == 1
    finally:
        torch.set_num_threads(before)
