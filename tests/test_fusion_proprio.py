"""``fusion_proprio``: the joint state enters the region_map MLP beside the map's estimates."""

from __future__ import annotations

import pytest
import torch

from vla_ros.grounding.fusion import build_fusion
from vla_ros.policy.features import FusionFeaturesExtractor, clip_feature_space
from vla_ros.policy.network_config import NetworkConfig, NetworkConfigError


def test_fusion_proprio_is_a_validated_region_map_option_and_old_configs_lack_it():
    config = NetworkConfig(fusion="region_map", fusion_proprio=True)
    assert NetworkConfig.from_dict(config.to_dict()).fusion_proprio
    assert not NetworkConfig.from_dict({"fusion": "region_map"}).fusion_proprio  # checkpoints made before it
    with pytest.raises(NetworkConfigError, match="fusion_proprio is an option of the region_map fusion"):
        NetworkConfig(fusion="cross_attention", fusion_proprio=True)
    with pytest.raises(NetworkConfigError, match="fusion_proprio"):
        NetworkConfig(fusion="region_map", fusion_proprio="yes")
    with pytest.raises(ValueError, match="proprio_dim is an option of the region_map fusion"):
        build_fusion("late", embed_dim=16, num_patches=16, proprio_dim=4)


def test_the_joint_state_changes_the_fused_features_and_must_be_given():
    torch.manual_seed(0)
    fusion = build_fusion("region_map", embed_dim=16, num_patches=16, out_dim=8, hidden_dim=12, proprio_dim=4)
    glob, patches, text, proprio = torch.randn(3, 16), torch.randn(3, 16, 16), torch.randn(3, 16), torch.randn(3, 4)
    moved = proprio.clone()
    moved[1] += 1.0
    before, after = fusion(glob, patches, text, proprio=proprio), fusion(glob, patches, text, proprio=moved)
    assert (after - before)[1].abs().max() > 1e-4 and torch.equal(after[[0, 2]], before[[0, 2]])
    with pytest.raises(ValueError, match="reads the joint state"):
        fusion(glob, patches, text)
    with pytest.raises(ValueError, match="reads the joint state"):
        fusion(glob, patches, text, proprio=torch.randn(3, 5))


def test_the_extractor_feeds_the_observations_joint_state_to_the_fusion():
    space = clip_feature_space(16, 16, 10)
    network = NetworkConfig(fusion="region_map", fusion_proprio=True, fusion_dim=8, hidden_dim=12, grid_size=(4, 4))
    extractor = FusionFeaturesExtractor(space, network)
    assert extractor.fusion.proprio_dim == 10 and extractor.features_dim == 8 + 10
    obs = {k: torch.randn(2, *s.shape) for k, s in space.spaces.items()}
    features = extractor(obs)
    obs["proprio"] = obs["proprio"] + 1.0
    assert not torch.allclose(extractor(obs)[:, :8], features[:, :8])  # the fused part, not only the appended state
