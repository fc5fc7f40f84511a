"""Fusion modules: shapes, gradients, the gated variant's closed gate, input checks."""

import pytest
import torch

from vla_ros.grounding.fusion import FUSION_KINDS, build_fusion

B, D, P = 4, 128, 64


def inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, D, generator=g), torch.randn(B, P, D, generator=g), torch.randn(B, D, generator=g))


@pytest.mark.parametrize("kind", FUSION_KINDS)
def test_output_shape_and_out_dim(kind):
    fusion = build_fusion(kind, embed_dim=D, num_patches=P, out_dim=96)
    out = fusion(*inputs())
    assert out.shape == (B, 96) and fusion.out_dim == 96
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("kind", FUSION_KINDS)
def test_gradients_reach_every_parameter_and_input(kind):
    torch.manual_seed(0)
    fusion = build_fusion(kind, embed_dim=D, num_patches=P, out_dim=32)
    if kind == "gated":
        with torch.no_grad():
            fusion.gate.fill_(0.5)  # open the gate so the injection branch gets gradients too
    image_global, patches, text = (t.requires_grad_(True) for t in inputs())
    fusion(image_global, patches, text).square().sum().backward()
    for name, param in fusion.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name
    assert text.grad.abs().sum() > 0
    if kind != "region_map":  # reads where CLIP matches the command, not the global image embedding
        assert image_global.grad.abs().sum() > 0
    if kind != "late":
        assert patches.grad.abs().sum() > 0


def test_gated_equals_image_only_path_exactly_at_init():
    torch.manual_seed(0)
    fusion = build_fusion("gated", embed_dim=D, num_patches=P)
    image_global, patches, text = inputs()
    out = fusion(image_global, patches, text)
    assert torch.equal(out, fusion.image_only(image_global))
    # text and patches have no effect while the gate is closed...
    other_text = torch.randn(B, D)
    assert torch.equal(fusion(image_global, torch.randn(B, P, D), other_text), out)
    # ...and the gate still receives a gradient, so training can open it
    out.sum().backward()
    assert fusion.gate.grad is not None and fusion.gate.grad.abs().item() > 0


def test_cross_attention_output_depends_on_where_the_matching_patch_is():
    torch.manual_seed(0)
    fusion = build_fusion("cross_attention", embed_dim=D, num_patches=P, out_dim=16).eval()
    text = torch.nn.functional.normalize(torch.randn(1, D), dim=-1)
    background = torch.nn.functional.normalize(torch.randn(1, P, D), dim=-1) * 0.1
    left, right = background.clone(), background.clone()
    left[0, 8 * 3 + 0] = text[0] * 5
    right[0, 8 * 3 + 7] = text[0] * 5
    image_global = torch.zeros(1, D)
    out_left, out_right = fusion(image_global, left, text), fusion(image_global, right, text)
    assert not torch.allclose(out_left, out_right, atol=1e-4)


def _scene_matching_at(row: int, column: int):
    """A command (1, D) and random unit patches (1, P, D) of which the one at (row, column) is the command."""
    text = torch.nn.functional.normalize(torch.randn(1, D), dim=-1)
    patches = torch.nn.functional.normalize(torch.randn(1, P, D), dim=-1)
    patches[0, 8 * row + column] = text[0]
    return text, patches


def test_region_prior_points_the_untrained_attention_at_the_matching_region():
    torch.manual_seed(0)
    fusion = build_fusion("region", embed_dim=D, num_patches=P, out_dim=16).eval()
    text, patches = _scene_matching_at(2, 6)  # the commanded object: right, upper half
    grounded = fusion.fuse(torch.zeros(1, D), patches, text)
    x, y = grounded.xy[0].tolist()
    assert int(grounded.attention.argmax()) == 8 * 2 + 6 and x > 0 and y < 0
    plain = build_fusion("cross_attention", embed_dim=D, num_patches=P, out_dim=16).eval()
    plain.load_state_dict(fusion.state_dict(), strict=False)  # same learned weights, no prior
    plain_grounded = plain.fuse(torch.zeros(1, D), patches, text)
    assert grounded.attention[0, 8 * 2 + 6] > 5 * plain_grounded.attention[0, 8 * 2 + 6]


def _random_rotation(dim, seed=1):
    q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=torch.Generator().manual_seed(seed)))
    return q


def test_region_map_sees_only_where_clip_matches_the_command():
    torch.manual_seed(0)
    fusion = build_fusion("region_map", embed_dim=D, num_patches=P, out_dim=16).eval()
    text, patches = _scene_matching_at(5, 1)  # the commanded object: left, lower half
    out, attention, xy, _ = fusion.fuse(torch.randn(1, D), patches, text)[:4]
    assert torch.equal(out, fusion(torch.randn(1, D), patches, text))  # forward returns fuse's features
    x, y = xy[0].tolist()
    assert int(attention.argmax()) == 8 * 5 + 1 and x < 0 and y > 0
    # any other embedding of command and scene with the same similarities (here: both rotated), e.g. a
    # colour-shape combination never trained on, gives the same features; the global embedding is unused
    rotation = _random_rotation(D)
    rotated = fusion(torch.randn(1, D), patches @ rotation, text @ rotation)
    assert torch.allclose(out, rotated, atol=1e-5)
    # a cross_attention policy's learned text query has no such invariance
    plain = build_fusion("cross_attention", embed_dim=D, num_patches=P, out_dim=16).eval()
    image_global = torch.randn(1, D)
    assert not torch.allclose(plain(image_global, patches, text),
                              plain(image_global @ rotation, patches @ rotation, text @ rotation), atol=1e-3)


def test_region_map_of_a_blank_modality_is_flat_and_finite():
    fusion = build_fusion("region_map", embed_dim=D, num_patches=P, out_dim=16)
    image_global, patches, text = inputs()
    for blank_patches, blank_text in ((patches * 0, text), (patches, text * 0)):
        out, attention, xy, _ = fusion.fuse(image_global, blank_patches, blank_text)[:4]
        assert torch.isfinite(out).all()
        assert torch.allclose(attention, torch.full((B, P), 1 / P))
        assert xy.abs().max() < 1e-6


def test_late_fusion_ignores_patches():
    fusion = build_fusion("late", embed_dim=D, num_patches=P)
    image_global, patches, text = inputs()
    assert torch.equal(fusion(image_global, patches, text), fusion(image_global, patches * 0, text))


def test_bad_kind_and_shapes_raise():
    with pytest.raises(ValueError, match="unknown fusion kind"):
        build_fusion("film", embed_dim=D, num_patches=P)
    with pytest.raises(ValueError, match="square"):
        build_fusion("cross_attention", embed_dim=D, num_patches=60)
    build_fusion("cross_attention", embed_dim=D, num_patches=60, grid_size=(6, 10))
    fusion = build_fusion("cross_attention", embed_dim=D, num_patches=P)
    image_global, patches, text = inputs()
    with pytest.raises(ValueError, match="image_patches"):
        fusion(image_global, patches[:, :10], text)
    with pytest.raises(ValueError, match="text"):
        fusion(image_global, patches, text[:2])


def test_region_map_peak_estimate_stays_on_the_stronger_of_two_matches():
    torch.manual_seed(0)
    text = torch.nn.functional.normalize(torch.randn(1, D), dim=-1)
    patches = torch.nn.functional.normalize(torch.randn(1, P, D), dim=-1) * 0.1
    patches[0, 8 * 3 + 1] = text[0]  # the commanded object: row 3, column 1
    patches[0, 8 * 3 + 6] = 0.8 * text[0] + 0.6 * patches[0, 0] * 10  # a half match: row 3, column 6
    mean_only = build_fusion("region_map", embed_dim=D, num_patches=P, out_dim=16).eval()
    with_peak = build_fusion("region_map", embed_dim=D, num_patches=P, out_dim=16, peak_window=1.5).eval()
    mean_xy = mean_only.fuse(torch.zeros(1, D), patches, text).xy
    out, _, peak_xy, _ = with_peak.fuse(torch.zeros(1, D), patches, text)[:4]
    target_x = (1 + 0.5) / 8 * 2 - 1
    assert abs(peak_xy[0, 0] - target_x) < abs(mean_xy[0, 0] - target_x) - 0.1
    assert out.shape == (1, 16)
    with pytest.raises(ValueError, match="region_map"):
        build_fusion("cross_attention", embed_dim=D, num_patches=P, peak_window=1.5)


def test_region_map_reference_prior_keeps_the_estimate_on_a_covered_target():
    torch.manual_seed(0)
    text = torch.nn.functional.normalize(torch.randn(1, D), dim=-1)
    background = torch.nn.functional.normalize(torch.randn(1, P, D), dim=-1) * 0.1
    reference, current = background.clone(), background.clone()
    reference[0, 8 * 4 + 2] = text[0]  # the target before the arm moved in: row 4, column 2
    reference[0, 8 * 4 + 6] = 0.6 * text[0] + 0.8 * background[0, 1] * 10  # a weaker match: row 4, column 6
    current[0, 8 * 4 + 6] = reference[0, 8 * 4 + 6]  # the arm now covers the target
    kwargs = dict(embed_dim=D, num_patches=P, out_dim=16, peak_window=1.5, reference_frame=True)
    plain = build_fusion("region_map", **kwargs).eval()
    with_prior = build_fusion("region_map", reference_prior=True, **kwargs).eval()
    image_global = torch.zeros(1, D)
    plain_out = plain.fuse(image_global, current, text, reference)
    target_x = (2 + 0.5) / 8 * 2 - 1
    assert plain_out.xy[0, 0] > 0.3  # alone, the current map jumps to the other match
    with torch.no_grad():
        with_prior.reference_prior.fill_(0.0)  # the learned weight: 0 is the plain map...
    prior_out = with_prior.fuse(image_global, current, text, reference)
    assert torch.allclose(prior_out.xy, plain_out.xy)
    with torch.no_grad():
        with_prior.reference_prior.fill_(3.0)  # ...a weight training can reach keeps the covered target
    prior_out = with_prior.fuse(image_global, current, text, reference)
    assert abs(prior_out.xy[0, 0] - target_x) < 0.1
    assert torch.allclose(prior_out.reference_xy, plain_out.reference_xy)
    with pytest.raises(ValueError, match="reference_frame"):
        build_fusion("region_map", embed_dim=D, num_patches=P, reference_prior=True)


def test_region_map_without_map_weights_feeds_the_mlp_only_position_estimates():
    torch.manual_seed(0)
    kwargs = dict(embed_dim=D, num_patches=P, out_dim=16, peak_window=1.5, reference_frame=True)
    fusion = build_fusion("region_map", map_weights=False, **kwargs).eval()
    assert fusion.mlp[0].in_features == 2 * (2 + 2)  # mean and peak position, current and reference frame
    image_global, text = torch.randn(B, D), torch.randn(B, D)
    patches, reference = torch.randn(B, P, D), torch.randn(B, P, D)
    with torch.no_grad():
        out, _, xy, reference_xy = fusion.fuse(image_global, patches, text, reference)[:4]
        mean = torch.softmax(fusion.logits(patches, text), -1) @ fusion.coordinates
        reference_mean = torch.softmax(fusion.logits(reference, text), -1) @ fusion.coordinates
        expected = fusion.mlp(torch.cat([mean, xy, reference_mean, reference_xy], -1))
    assert torch.allclose(out, expected, atol=1e-6)
    with pytest.raises(ValueError, match="region_map"):
        build_fusion("cross_attention", embed_dim=D, num_patches=P, map_weights=False)


def test_region_map_text_features_give_the_mlp_the_command_beyond_its_map():
    torch.manual_seed(0)
    kwargs = dict(embed_dim=D, num_patches=P, out_dim=16, peak_window=1.5, reference_frame=True, map_weights=False)
    fusion = build_fusion("region_map", text_features=3, **kwargs).eval()
    assert fusion.mlp[0].in_features == 2 * (2 + 2) + 3
    image_global, patches, reference = torch.randn(B, D), torch.randn(B, P, D), torch.randn(B, P, D)
    text = torch.randn(B, D)
    # the map and the projection both read the text's direction only; the map of a blank image is flat
    # whatever the command, so there the command reaches the output through the projection alone
    with torch.no_grad():
        assert torch.allclose(fusion(image_global, patches, text, reference),
                              fusion(image_global, patches, 5 * text, reference), atol=1e-5)
        blank = torch.zeros(B, P, D)
        a = fusion(image_global, blank, text, blank)
        b = fusion(image_global, blank, torch.randn(B, D), blank)
        assert not torch.allclose(a, b, atol=1e-4)
        plain = build_fusion("region_map", **kwargs).eval()
        assert torch.allclose(plain(image_global, blank, text, blank), plain(image_global, blank, -text, blank))
    with pytest.raises(ValueError, match="region_map"):
        build_fusion("cross_attention", embed_dim=D, num_patches=P, text_features=3)
    with pytest.raises(ValueError, match=">= 0"):
        build_fusion("region_map", embed_dim=D, num_patches=P, text_features=-1)


def test_region_map_current_estimate_follows_a_moved_target_that_the_prior_holds_back():
    torch.manual_seed(0)
    text = torch.nn.functional.normalize(torch.randn(1, D), dim=-1)
    background = torch.nn.functional.normalize(torch.randn(1, P, D), dim=-1) * 0.1
    reference, current = background.clone(), background.clone()
    reference[0, 8 * 4 + 2] = text[0]  # where the target started: row 4, column 2
    current[0, 8 * 4 + 5] = 0.8 * text[0]  # pushed to column 5, where it matches a little less (half covered)
    kwargs = dict(embed_dim=D, num_patches=P, out_dim=16, peak_window=1.5, reference_frame=True,
                  reference_prior=True, map_weights=False)
    held = build_fusion("region_map", **kwargs).eval()
    both = build_fusion("region_map", current_estimate=True, **kwargs).eval()
    assert both.mlp[0].in_features == held.mlp[0].in_features + 4  # mean and peak of the frame itself
    with torch.no_grad():
        for fusion in (held, both):
            fusion.reference_prior.fill_(2.0)  # about what training learns
        moved_x = (5 + 0.5) / 8 * 2 - 1
        out = both.fuse(torch.zeros(1, D), current, text, reference)
        assert out.xy[0, 0] < moved_x - 0.3  # the prior holds the estimate near the start ...
        assert abs(out.current_xy[0, 0] - moved_x) < 0.1  # ... the frame's own estimate follows the push
        assert torch.equal(out.xy, held.fuse(torch.zeros(1, D), current, text, reference).xy)
        alone = held.fuse(torch.zeros(1, D), current, text, reference)
        assert alone.current_xy is None  # the MLP does not read it ...
        assert torch.equal(alone.frame_xy, out.current_xy)  # ... but heads fitted later (done) can
    with pytest.raises(ValueError, match="reference_prior"):
        build_fusion("region_map", embed_dim=D, num_patches=P, reference_frame=True, current_estimate=True)
    with pytest.raises(ValueError, match="region_map"):
        build_fusion("cross_attention", embed_dim=D, num_patches=P, current_estimate=True)
