"""The fingertip locator: the training camera's projection, and a fit of the fingertip's image position."""

from __future__ import annotations

import numpy as np

from vla_ros.keys import OBS_PROPRIO
from vla_ros.policy.envs import make_vec_env
from vla_ros.policy.fingertip_locator import (
    HEIGHT_SCALE,
    camera_projection,
    fit_fingertip_locator,
    locator_errors,
    locator_targets,
)


def test_the_projection_puts_objects_where_the_env_says_they_are_in_the_image():
    project = camera_projection("reach")
    venv = make_vec_env("reach", 1, 3, vec_env="dummy")
    try:
        venv.reset()
        info = venv.reset_infos[0]
        size = venv.envs[0].unwrapped.image_size
        positions = np.array([o["position"] for o in info["objects"]])
        pixels = np.array([o["pixel"] for o in info["objects"]]) / size * 2 - 1
        np.testing.assert_allclose(project(positions), pixels, atol=1e-4)
    finally:
        venv.close()


def test_a_locator_fitted_on_joint_states_finds_the_fingertip_on_states_it_has_not_seen():
    venv = make_vec_env("reach", 1, 5, vec_env="dummy")
    rng = np.random.default_rng(0)
    proprio, fingertips = [], []
    try:
        obs = venv.reset()
        info = venv.reset_infos[0]  # of the current observation
        for _ in range(600):
            proprio.append(obs[OBS_PROPRIO][0].copy())
            fingertips.append(np.array(info["ee_position"]))
            obs, _, dones, infos = venv.step(rng.uniform(-1, 1, (1, venv.action_space.shape[0])))
            info = venv.reset_infos[0] if dones[0] else infos[0]
    finally:
        venv.close()
    targets = locator_targets(np.array(fingertips), camera_projection("reach"))
    assert np.all(np.abs(targets[:, 2] / HEIGHT_SCALE - np.array(fingertips)[:, 2]) < 1e-6)
    proprio = np.array(proprio)
    locator = fit_fingertip_locator(proprio[:500], targets[:500], steps=1500)
    errors = locator_errors(locator, proprio[500:], targets[500:])
    spread = float(np.median(np.linalg.norm(targets[500:, :2] - targets[500:, :2].mean(0), axis=1)))
    assert errors["image_median"] < 0.25 * spread, (errors, spread)
    assert errors["height_median_m"] < 0.03
