"""Zero-shot helpers on a real (untrained) tiny CLIP: probabilities, picking, heatmaps, drawing."""

import numpy as np
import pytest
import torch
from open_clip.loss import ClipLoss

from vla_ros.grounding import ClipEncoder
from vla_ros.grounding.regions import region_embeddings, region_weights
from vla_ros.grounding.training import multi_positive_clip_loss
from vla_ros.grounding.zero_shot import (
    draw_heatmap,
    heatmap_to_frame,
    label_probabilities,
    pick_object,
    relevance_heatmap,
)


@pytest.fixture(scope="module")
def encoder():
    return ClipEncoder.random_init(seed=0)


def frame(size=(64, 64), seed=0):
    return np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)


def test_label_probabilities_sum_to_one_and_sharpen_with_lower_temperature(encoder):
    labels = ["red cube", "blue ball", "green cylinder"]
    probs = label_probabilities(encoder, frame(), labels, temperature=0.05)
    assert probs.shape == (3,) and probs.sum() == pytest.approx(1.0, abs=1e-5)
    sharp = label_probabilities(encoder, frame(), labels, temperature=0.001)
    assert sharp.max() >= probs.max() and sharp.argmax() == probs.argmax()
    batch = label_probabilities(encoder, np.stack([frame(), frame(seed=1)]), labels)
    assert batch.shape == (2, 3)
    with pytest.raises(ValueError):
        label_probabilities(encoder, frame(), [])
    with pytest.raises(ValueError):
        label_probabilities(encoder, frame(), labels, temperature=0.0)


def test_pick_object_returns_probabilities_per_object(encoder):
    choice = pick_object(encoder, frame(), "touch the red cube", np.array([[10, 10], [40, 20], [30, 50]]))
    assert choice.probabilities.shape == (3,) and choice.probabilities.sum() == pytest.approx(1.0, abs=1e-5)
    assert choice.index == int(np.argmax(choice.similarities))
    with pytest.raises(ValueError):
        pick_object(encoder, frame(), "touch the red cube", np.zeros((0, 2)))


def test_region_pooling_is_local(encoder):
    weights = region_weights(torch.tensor([[4.0, 4.0]]), (8, 8), 64)
    assert weights.shape == (1, 64) and weights.sum().item() == pytest.approx(1.0)
    assert weights[0].argmax().item() == 0 and weights[0, 63] < 1e-6
    patches = torch.nn.functional.normalize(torch.randn(1, 64, 128), dim=-1)
    region = region_embeddings(patches, torch.tensor([[[60.0, 60.0]]]), (8, 8), 64, sigma_patches=0.1)
    torch.testing.assert_close(region[0, 0], patches[0, 63], atol=1e-4, rtol=1e-4)


def test_heatmap_is_a_distribution_over_patches(encoder):
    heat = relevance_heatmap(encoder, frame(), "the red cube")
    assert heat.shape == (8, 8) and heat.sum() == pytest.approx(1.0, abs=1e-5) and (heat >= 0).all()


def test_draw_heatmap_blends_over_the_frame(encoder):
    image = frame((120, 160))
    heat = np.zeros((8, 8), np.float32)
    heat[4, 4] = 1.0
    drawn = draw_heatmap(image, heat, alpha=0.6, encoder=encoder)
    assert drawn.shape == image.shape and drawn.dtype == np.uint8 and not np.array_equal(drawn, image)
    assert np.array_equal(draw_heatmap(image, heat, alpha=0.0), image)
    # the hot patch lands at the matching place of the source frame (centre crop undone)
    full = heatmap_to_frame(encoder, heat, image.shape)
    v, u = np.unravel_index(full.argmax(), full.shape)
    expected_u, expected_v = (4.5 * 8 + 10.5) / (64 / 120), 4.5 * 8 / (64 / 120)
    assert abs(u - expected_u) < 12 and abs(v - expected_v) < 12
    with pytest.raises(ValueError):
        draw_heatmap(image, heat, alpha=2.0)
    with pytest.raises(TypeError):
        draw_heatmap(image.astype(np.float32), heat)


def test_multi_positive_loss_equals_clip_loss_for_unique_pairs():
    torch.manual_seed(0)
    image = torch.nn.functional.normalize(torch.randn(6, 16), dim=-1)
    text = torch.nn.functional.normalize(torch.randn(6, 16), dim=-1)
    scale = torch.tensor(10.0)
    torch.testing.assert_close(multi_positive_clip_loss(image, text, torch.eye(6, dtype=torch.bool), scale),
                               ClipLoss()(image, text, scale))


def test_pick_error_kinds_sorts_wrong_picks_by_the_attribute_they_share():
    from vla_ros.grounding.data import SceneDataset
    from vla_ros.grounding.evaluation import pick_error_kinds

    # scene objects as (colour, shape); the target is slot 0 in every scene
    scenes = [[(0, 0), (0, 1), (1, 0)]] * 4
    colours = np.array([[c for c, _ in s] for s in scenes])
    shapes = np.array([[k for _, k in s] for s in scenes])
    n = len(scenes)
    dataset = SceneDataset(np.zeros((n, 8, 8, 3), np.uint8), np.zeros((n, 3, 2), np.float32),
                           np.zeros((n, 3, 3), np.float32), colours, shapes, np.zeros(n, np.int64),
                           np.array(["touch the red cube"] * n), ("red", "blue"), ("cube", "ball"), "train")
    kinds = pick_error_kinds(dataset, np.array([0, 1, 2, 1]))  # right, same colour, same shape, same colour
    assert kinds == {"same_colour": 0.5, "same_shape": 0.25, "other": 0.0}
