"""The demo video's layout and the simulator's viewing camera."""

import gymnasium as gym
import numpy as np
import pytest

from vla_ros.envs.video_layout import CAPTION_HEIGHT, compose_frame, contact_sheet, outcome_colour, title_card


def _view(height=480, width=640):
    rng = np.random.default_rng(0)
    return rng.integers(0, 255, size=(height, width, 3), dtype=np.uint8)


def test_the_caption_goes_below_the_scene_and_the_inset_keeps_the_rest_of_the_view():
    view, policy = _view(), np.full((64, 64, 3), 200, np.uint8)
    frame = compose_frame(view, policy, "push the red cube to the left", "step 3")
    assert frame.shape == (480 + CAPTION_HEIGHT, 640, 3) and frame.shape[0] % 16 == 0
    side = int(480 * 0.3)
    # the scene outside the inset is untouched: no text is drawn over it
    assert np.array_equal(frame[: 480, side + 20:], view[:, side + 20:])
    assert np.array_equal(frame[side + 20: 480], view[side + 20:])
    assert (frame[480:] != frame[480, 0]).any()  # the caption band holds text
    assert np.array_equal(compose_frame(view, None, "x")[:480], view)


def test_title_card_contact_sheet_and_outcome_colours():
    card = title_card("reach the red cube", 2, 640, 480 + CAPTION_HEIGHT)
    assert card.shape == (480 + CAPTION_HEIGHT, 640, 3) and card.std() > 0
    frame = compose_frame(_view(), None, "a")
    sheet = contact_sheet([(frame, frame, "1: a - success"), (frame, frame, "2: b - no success")])
    assert sheet.shape[1] == 2 * 320 + 6 and sheet.shape[0] > 2 * 240
    assert outcome_colour("14 steps - success") != outcome_colour("no success") != outcome_colour("step 3")
    with pytest.raises(ValueError):
        contact_sheet([])
    with pytest.raises(ValueError, match="RGB"):
        compose_frame(np.zeros((10, 10)), None, "a")


def test_the_viewing_camera_renders_only_when_asked_and_leaves_the_policy_view_alone():
    import vla_ros.envs  # noqa: F401
    from vla_ros.envs import ENV_IDS

    env = gym.make(ENV_IDS["reach"], image_size=64)
    try:
        obs, _ = env.reset(seed=1)
        obs, *_ = env.step(np.zeros(env.action_space.shape, np.float32))
        assert env.unwrapped._view_renderer is None  # nothing renders it unless a video is asked for
        view = env.unwrapped.render_view()
        assert view.shape == (480, 640, 3) and view.dtype == np.uint8 and view.std() > 5
        assert obs["image"].shape == (64, 64, 3)
        again, *_ = env.step(np.zeros(env.action_space.shape, np.float32))
        assert again["image"].shape == (64, 64, 3)
        with pytest.raises(ValueError, match="offscreen"):
            env.unwrapped.render_view(1920, 1080)
    finally:
        env.close()
