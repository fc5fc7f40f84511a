"""Imitation computes a region_map fusion's maps once per fit, and the fit is the one that computes them per batch."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from policy_fixtures import make_policy_checkpoint

from vla_ros.policy import imitation


def _network(tmp_path, **network):
    from vla_ros.policy.policy import Policy

    checkpoint = make_policy_checkpoint(tmp_path, task="mixed", fusion="region_map", reference_frame=True,
                                        peak_window=1.5, map_weights=False, **network)
    return Policy.load(checkpoint).network


def _demonstrations(network, n: int = 40) -> imitation.Demonstrations:
    rng = np.random.default_rng(0)
    obs = {k: rng.standard_normal((n, *space.shape)).astype(np.float16)
           for k, space in network.observation_space.spaces.items()}
    actions = network.action_space.shape[0]
    return imitation.Demonstrations(obs=obs, expert_actions=rng.uniform(-1, 1, (n, actions)).astype(np.float32),
                                    target_xy=rng.uniform(-1, 1, (n, 2)).astype(np.float32),
                                    returns=rng.standard_normal(n).astype(np.float32), successes=1, episodes=2,
                                    reference_xy=rng.uniform(-1, 1, (n, 2)).astype(np.float32))


@pytest.mark.parametrize("network", [dict(object_locator=True, skill_reader=True, fusion_proprio=True),
                                     dict(reference_prior=True, current_estimate=True)],
                         ids=["locator", "prior"])
def test_a_fit_on_maps_computed_once_is_the_fit_on_maps_computed_per_batch(tmp_path, monkeypatch, network):
    net = _network(tmp_path, **network)
    data = _demonstrations(net)
    assert net.features_extractor.fixed_maps
    maps = imitation.region_maps(net, data, batch_size=16)  # in three batches
    assert maps.current.shape == (len(data), net.features_extractor.fusion.num_patches)
    assert (maps.located is not None) == bool(network.get("object_locator"))
    once, per_batch = copy.deepcopy(net), copy.deepcopy(net)
    losses_once = imitation.fit(once, data, epochs=2, batch_size=8, lr=1e-3, seed=0)
    monkeypatch.setattr(imitation, "region_maps", lambda *args, **kwargs: None)
    losses_per_batch = imitation.fit(per_batch, data, epochs=2, batch_size=8, lr=1e-3, seed=0)
    assert losses_once == pytest.approx(losses_per_batch, rel=1e-4, abs=1e-7)
    for (name, a), b in zip(once.named_parameters(), per_batch.parameters()):
        assert torch.allclose(a, b, atol=1e-5), name
    assert any(not torch.equal(a, b) for a, b in zip(once.parameters(), net.parameters()))  # it did train


def test_maps_are_computed_per_batch_while_the_object_locator_trains(tmp_path):
    net = _network(tmp_path, object_locator=True)
    fusion = net.features_extractor.fusion
    fusion.object_locator.requires_grad_(True)
    assert fusion.object_locator_trains and not net.features_extractor.fixed_maps
    assert imitation.region_maps(net, _demonstrations(net, 4)) is None
    fusion.object_locator.requires_grad_(False)
    assert net.features_extractor.fixed_maps
